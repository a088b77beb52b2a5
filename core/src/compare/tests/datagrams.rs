//! Tests of datagram matching across reordering (issue 14): each secondary datagram is paired
//! with any held primary datagram of its flow, and paired frames leave in the primary's order;
//! only a primary datagram left unpaired for a whole reorder window is a miscompare.

use super::*;
use proptest::prelude::*;

/// A UDP datagram on the default flow whose IPv4 identification (not compared) is `tag`, so
/// equal bodies still make distinct primary frames.
fn udp(body: &[u8], tag: u16) -> Vec<u8> {
    let mut f = testkit::udp(&Headers::default(), body);
    f[18..20].copy_from_slice(&tag.to_be_bytes());
    f
}

/// A comparator with another `datagram_reorder_window` than the default (8).
fn with_window(window: usize) -> Comparator {
    Comparator::new(CompareConfig {
        datagram_reorder_window: window,
        ..CompareConfig::default()
    })
    .expect("valid config")
}

/// The case: the primary's copies are queued first, the secondary's come reordered.
#[test]
fn secondary_datagrams_in_another_order_match_without_a_checkpoint() {
    let mut c = comparator();
    let (a, b, x) = (udp(b"a", 1), udp(b"b", 2), udp(b"x", 3));
    for f in [&a, &b, &x] {
        c.handle_primary(t(0), f.clone());
    }
    c.handle_secondary(t(1), udp(b"x", 9));
    c.handle_secondary(t(1), udp(b"b", 9));
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "a still waits, and b, x wait behind it"
    );
    c.handle_secondary(t(2), udp(b"a", 9));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![a, b, x]);
    assert!(requests(&out).is_empty());
    assert_eq!(c.stats().secondary_matched, 3);
}

#[test]
fn a_secondary_running_ahead_in_another_order_matches_on_the_primary_arrival() {
    let mut c = comparator();
    c.handle_secondary(t(0), udp(b"2", 9));
    c.handle_secondary(t(0), udp(b"1", 9));
    let (one, two) = (udp(b"1", 1), udp(b"2", 2));
    c.handle_primary(t(1), one.clone());
    c.handle_primary(t(1), two.clone());
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![one, two]);
    assert!(requests(&out).is_empty());
}

#[test]
fn a_datagram_without_a_twin_is_a_miscompare_once_the_window_is_full() {
    let mut c = with_window(2);
    let lost = udp(b"primary only", 1);
    c.handle_primary(t(0), lost.clone());
    c.handle_primary(t(0), udp(b"b", 2));
    c.handle_secondary(t(1), udp(b"b", 9));
    assert!(
        requests(&settle(&mut c)).is_empty(),
        "one frame of the window"
    );
    c.handle_secondary(t(2), udp(b"secondary only", 9));
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    c.checkpoint_done(t(3));
    assert_eq!(releases(&settle(&mut c)).len(), 2);
}

#[test]
fn with_a_window_of_one_a_differing_datagram_is_a_miscompare_at_once() {
    let mut c = with_window(1);
    c.handle_primary(t(0), udp(b"query 1", 1));
    c.handle_secondary(t(0), udp(b"query 2", 9));
    assert_eq!(
        requests(&settle(&mut c)),
        vec![CheckpointReason::Miscompare]
    );
}

#[test]
fn a_lone_differing_datagram_inside_the_window_is_caught_by_the_compare_timeout() {
    let mut c = with_window(8);
    c.handle_primary(t(0), udp(b"query 1", 1));
    c.handle_secondary(t(0), udp(b"query 2", 9));
    assert!(requests(&settle(&mut c)).is_empty());
    c.handle_timeout(t(3000));
    assert_eq!(
        requests(&settle(&mut c)),
        vec![CheckpointReason::CompareTimeout]
    );
}

/// A permutation of `0..n` in which no element moves by `window` places or more: element
/// `i` is sorted by `i + jitter[i] % window`.
fn within_window(n: usize, window: usize, jitter: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (i + jitter[i % jitter.len()] % window, i));
    order
}

proptest! {
    /// Any reordering of the secondary's datagrams within the window, with repeated bodies and
    /// any arrival interleaving of the two sides: no checkpoint, and every primary datagram
    /// released exactly once, in the primary's order.
    #[test]
    fn datagrams_reordered_within_the_window_all_match_in_primary_order(
        bodies in proptest::collection::vec(0u8..4, 1..40),
        window in 1usize..6,
        jitter in proptest::collection::vec(0usize..64, 1..40),
        interleave in proptest::collection::vec(any::<bool>(), 1..80),
    ) {
        let mut c = with_window(window);
        let n = bodies.len();
        let primary: Vec<Vec<u8>> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| udp(&[*b, 0xaa], i as u16))
            .collect();
        let secondary: Vec<Vec<u8>> = within_window(n, window, &jitter)
            .into_iter()
            .map(|i| udp(&[bodies[i], 0xaa], 0xffff))
            .collect();
        let (mut pi, mut si, mut now) = (0, 0, 0);
        let mut out = Vec::new();
        let mut pick = interleave.iter().copied().cycle();
        while pi < n || si < n {
            now += 1;
            if si == n || (pi < n && pick.next() == Some(true)) {
                c.handle_primary(t(now), primary[pi].clone());
                pi += 1;
            } else {
                c.handle_secondary(t(now), secondary[si].clone());
                si += 1;
            }
            out.extend(settle(&mut c));
        }
        prop_assert!(requests(&out).is_empty(), "{:?}", out);
        prop_assert_eq!(releases(&out), primary);
        prop_assert_eq!(c.stats().held_secondary, 0);
    }
}
