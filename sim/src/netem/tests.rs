//! Behaviour of the network emulator: each fault alone, then determinism of the whole trace.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn drain(net: &mut Netem<&'static str>, now: Instant) -> Vec<Delivery<&'static str>> {
    std::iter::from_fn(|| net.poll_deliver(now)).collect()
}

fn numbered(i: u32) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

#[test]
fn frame_arrives_after_link_delay_not_before() {
    let mut net = Netem::new(SimRng::new(1), LinkConfig::with_delay(ms(5)));
    net.send(at(0), "a", "b", vec![1, 2, 3]);
    assert_eq!(net.poll_timeout(), Some(at(5)));
    assert!(net.poll_deliver(at(4)).is_none());
    let d = net.poll_deliver(at(5)).expect("due at 5 ms");
    assert_eq!(
        (d.from, d.to, d.at, d.frame),
        ("a", "b", at(5), vec![1, 2, 3])
    );
    assert_eq!(net.poll_timeout(), None);
}

#[test]
fn without_jitter_frames_keep_their_order() {
    let mut net = Netem::new(SimRng::new(1), LinkConfig::with_delay(ms(1)));
    for i in 0..50 {
        net.send(at(0), "a", "b", numbered(i));
    }
    let got: Vec<_> = drain(&mut net, at(1))
        .into_iter()
        .map(|d| d.frame)
        .collect();
    assert_eq!(got, (0..50).map(numbered).collect::<Vec<_>>());
}

#[test]
fn loss_drops_about_its_share_and_counts_it() {
    let cfg = LinkConfig {
        loss_ppm: 200_000,
        ..LinkConfig::PERFECT
    };
    let mut net = Netem::new(SimRng::new(2), cfg);
    for i in 0..10_000 {
        net.send(at(0), "a", "b", numbered(i));
    }
    let delivered = drain(&mut net, at(0)).len() as u64;
    let s = net.stats();
    assert_eq!(delivered + s.lost, 10_000);
    assert!((1_700..2_300).contains(&s.lost), "20% loss, got {}", s.lost);
}

#[test]
fn duplication_delivers_some_frames_twice() {
    let cfg = LinkConfig {
        duplicate_ppm: 100_000,
        ..LinkConfig::PERFECT
    };
    let mut net = Netem::new(SimRng::new(3), cfg);
    for i in 0..1000 {
        net.send(at(0), "a", "b", numbered(i));
    }
    let got = drain(&mut net, at(0));
    let s = net.stats();
    assert_eq!(got.len() as u64, 1000 + s.duplicated);
    assert!(s.duplicated > 50);
    let mut frames: Vec<_> = got.into_iter().map(|d| d.frame).collect();
    frames.sort();
    frames.dedup();
    assert_eq!(frames.len(), 1000, "every original arrives at least once");
}

#[test]
fn reordering_lets_later_frames_overtake() {
    let cfg = LinkConfig {
        delay: ms(1),
        reorder_ppm: 250_000,
        reorder_delay: ms(10),
        ..LinkConfig::PERFECT
    };
    let mut net = Netem::new(SimRng::new(4), cfg);
    for i in 0..200 {
        net.send(at(u64::from(i)), "a", "b", numbered(i));
    }
    let got: Vec<_> = drain(&mut net, at(1000))
        .into_iter()
        .map(|d| d.frame)
        .collect();
    assert_eq!(got.len(), 200);
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(
        inversions > 10,
        "expected reordering, got {inversions} inversions"
    );
    assert!(net.stats().reordered > 0);
}

#[test]
fn jitter_spreads_arrivals_within_its_bound() {
    let cfg = LinkConfig {
        delay: ms(2),
        jitter: ms(3),
        ..LinkConfig::PERFECT
    };
    let mut net = Netem::new(SimRng::new(5), cfg);
    for i in 0..500 {
        net.send(at(0), "a", "b", numbered(i));
    }
    let arrivals: Vec<_> = drain(&mut net, at(100)).into_iter().map(|d| d.at).collect();
    assert!(arrivals.iter().all(|t| *t >= at(2) && *t <= at(5)));
    assert!(arrivals.iter().any(|t| *t > at(4)));
}

#[test]
fn symmetric_partition_cuts_both_ways_and_heals() {
    let mut net = Netem::new(SimRng::new(6), LinkConfig::with_delay(ms(1)));
    net.partition("a", "b");
    net.send(at(0), "a", "b", vec![1]);
    net.send(at(0), "b", "a", vec![2]);
    net.send(at(0), "a", "c", vec![3]);
    let got = drain(&mut net, at(10));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].to, "c");
    assert_eq!(net.stats().cut, 2);
    net.heal(&"a", &"b");
    net.send(at(10), "b", "a", vec![4]);
    assert_eq!(drain(&mut net, at(20)).len(), 1);
}

#[test]
fn one_way_partition_cuts_only_its_direction() {
    let mut net = Netem::new(SimRng::new(7), LinkConfig::PERFECT);
    net.partition_one_way("a", "b");
    net.send(at(0), "a", "b", vec![1]);
    net.send(at(0), "b", "a", vec![2]);
    let got = drain(&mut net, at(0));
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].from, got[0].to), ("b", "a"));
}

#[test]
fn partition_drops_frames_already_in_flight() {
    let mut net = Netem::new(SimRng::new(8), LinkConfig::with_delay(ms(5)));
    net.send(at(0), "a", "b", vec![1]);
    net.partition("a", "b");
    assert!(drain(&mut net, at(10)).is_empty());
    assert_eq!(net.stats().cut, 1);
    assert_eq!(net.in_flight(), 0);
}

#[test]
fn clog_holds_frames_and_unclog_releases_them_in_order() {
    let mut net = Netem::new(SimRng::new(9), LinkConfig::with_delay(ms(2)));
    net.send(at(0), "a", "b", numbered(0)); // in flight when the clog starts
    net.clog("a", "b");
    for i in 1..5 {
        net.send(at(1), "a", "b", numbered(i));
    }
    assert!(
        drain(&mut net, at(50)).is_empty(),
        "a clog holds, never drops"
    );
    assert_eq!(net.in_flight(), 5);
    assert_eq!(net.poll_timeout(), None, "held frames wait for unclog");
    net.unclog(at(50), &"a", &"b");
    let got = drain(&mut net, at(52));
    assert_eq!(
        got.iter().map(|d| d.frame.clone()).collect::<Vec<_>>(),
        (0..5).map(numbered).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|d| d.at == at(52)));
}

#[test]
fn per_link_config_overrides_the_default() {
    let mut net = Netem::new(SimRng::new(10), LinkConfig::with_delay(ms(1)));
    net.set_link("a", "b", LinkConfig::with_delay(ms(7)));
    net.send(at(0), "a", "b", vec![1]);
    net.send(at(0), "b", "a", vec![2]);
    let first = net.poll_deliver(at(1)).expect("b->a uses the default");
    assert_eq!(first.to, "a");
    assert!(net.poll_deliver(at(6)).is_none());
    assert_eq!(net.poll_deliver(at(7)).map(|d| d.to), Some("b"));
}

/// Runs a fixed workload through a lossy, jittery, duplicating, reordering network and returns
/// the trace hash and the full delivery list.
fn workload(seed: u64) -> (u64, Vec<Delivery<&'static str>>) {
    let cfg = LinkConfig {
        delay: ms(1),
        jitter: ms(4),
        loss_ppm: 50_000,
        duplicate_ppm: 30_000,
        reorder_ppm: 50_000,
        reorder_delay: ms(3),
    };
    let mut net = Netem::new(SimRng::new(seed), cfg);
    let mut out = Vec::new();
    let ends = ["a", "b", "c"];
    for i in 0..600u32 {
        let now = at(u64::from(i / 3));
        let from = ends[(i % 3) as usize];
        let to = ends[((i + 1) % 3) as usize];
        net.send(now, from, to, numbered(i));
        if i == 300 {
            net.partition_one_way("a", "b");
        }
        out.extend(std::iter::from_fn(|| net.poll_deliver(now)));
    }
    out.extend(drain(&mut net, at(10_000)));
    (net.trace_hash(), out)
}

#[test]
fn same_seed_gives_byte_identical_delivery_trace() {
    let (h1, t1) = workload(77);
    let (h2, t2) = workload(77);
    assert_eq!(t1, t2);
    assert_eq!(h1, h2);
    let (h3, _) = workload(78);
    assert_ne!(h1, h3, "a different seed gives a different trace");
}

#[test]
#[should_panic(expected = "time went backwards")]
fn time_going_backwards_is_a_caller_bug() {
    let mut net: Netem<&str> = Netem::new(SimRng::new(1), LinkConfig::PERFECT);
    net.send(at(5), "a", "b", vec![]);
    let _ = net.poll_deliver(at(4));
}
