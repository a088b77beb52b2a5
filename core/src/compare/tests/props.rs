//! Property tests of the TCP stream comparison (proptest).
//!
//! (1) Identical streams under arbitrary, different segmentation and interleaving: no
//! checkpoint, every primary frame released exactly once, in stream order.
//! (1b) The same with a SYN first and both sides' segments reordered: release in stream order.
//! (2) Streams differing in one byte: the checkpoint request comes before any released frame
//! containing the differing byte (a model tracks which byte every released frame carries).

use super::*;
use crate::packet::{Kind, classify};
use proptest::prelude::*;

/// Cuts `len` bytes into segments at the given (unsorted, possibly repeated) points.
fn segments(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % len).filter(|&c| c > 0).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Payload sequence range of a released frame (relative to `isn`).
fn stream_range(frame: &[u8], isn: u32) -> (usize, usize) {
    let c = classify(frame).expect("released frames are well-formed");
    let Kind::Tcp(info) = c.kind else {
        panic!("only TCP frames were sent")
    };
    let start = info.seq.0.wrapping_sub(isn) as usize;
    (start, start + info.payload_len())
}

/// Feeds both sides in the given interleaving; returns every output.
fn run(
    c: &mut Comparator,
    isn: u32,
    primary: &[u8],
    secondary: &[u8],
    p_segs: &[(usize, usize)],
    s_segs: &[(usize, usize)],
    order: &[bool],
) -> Vec<CompareOutput> {
    let (mut pi, mut si, mut now) = (0, 0, 0u64);
    let mut out = Vec::new();
    let mut choose = order.iter().copied().cycle();
    while pi < p_segs.len() || si < s_segs.len() {
        now += 1;
        let primary_turn = si == s_segs.len() || (pi < p_segs.len() && choose.next() == Some(true));
        if primary_turn {
            let (s, e) = p_segs[pi];
            pi += 1;
            c.handle_primary(t(now), data(isn.wrapping_add(s as u32), &primary[s..e]));
        } else {
            let (s, e) = s_segs[si];
            si += 1;
            c.handle_secondary(t(now), data(isn.wrapping_add(s as u32), &secondary[s..e]));
        }
        out.extend(settle(c));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn identical_streams_release_every_byte_once_in_order(
        payload in prop::collection::vec(any::<u8>(), 1..3000),
        p_cuts in prop::collection::vec(any::<usize>(), 0..12),
        s_cuts in prop::collection::vec(any::<usize>(), 0..12),
        order in prop::collection::vec(any::<bool>(), 1..16),
        isn in any::<u32>(),
    ) {
        let mut c = comparator();
        let p_segs = segments(payload.len(), &p_cuts);
        let s_segs = segments(payload.len(), &s_cuts);
        let out = run(&mut c, isn, &payload, &payload, &p_segs, &s_segs, &order);
        prop_assert!(requests(&out).is_empty());
        let released: Vec<(usize, usize)> =
            releases(&out).iter().map(|f| stream_range(f, isn)).collect();
        prop_assert_eq!(released, p_segs);
        prop_assert_eq!(c.stats().released_matched, c.stats().primary_frames);
        prop_assert_eq!(c.stats().held_secondary, 0);
    }

    #[test]
    fn a_differing_byte_is_never_released_before_the_checkpoint_request(
        payload in prop::collection::vec(any::<u8>(), 1..3000),
        flip_at in any::<usize>(),
        flip in 1..=255u8,
        p_cuts in prop::collection::vec(any::<usize>(), 0..12),
        s_cuts in prop::collection::vec(any::<usize>(), 0..12),
        order in prop::collection::vec(any::<bool>(), 1..16),
        isn in any::<u32>(),
    ) {
        let k = flip_at % payload.len();
        let mut other = payload.clone();
        other[k] ^= flip;
        let mut c = comparator();
        let p_segs = segments(payload.len(), &p_cuts);
        let s_segs = segments(payload.len(), &s_cuts);
        let mut out = run(&mut c, isn, &payload, &other, &p_segs, &s_segs, &order);
        let mut requested = false;
        for o in &out {
            match o {
                CompareOutput::CheckpointRequest(_) => requested = true,
                CompareOutput::Release(f) if !requested => {
                    let (s, e) = stream_range(f, isn);
                    prop_assert!(!(s..e).contains(&k), "byte {} released before the request", k);
                }
                _ => {}
            }
        }
        prop_assert!(requested, "all bytes arrived, the difference must be found");
        prop_assert_eq!(c.stats().miscompares, 1);
        // The checkpoint then releases the rest, each frame exactly once.
        c.checkpoint_done(t(1_000_000));
        out.extend(settle(&mut c));
        let mut released: Vec<(usize, usize)> =
            releases(&out).iter().map(|f| stream_range(f, isn)).collect();
        released.sort_unstable();
        prop_assert_eq!(released, p_segs);
    }

    #[test]
    fn reordered_segments_after_a_syn_are_released_in_stream_order(
        payload in prop::collection::vec(any::<u8>(), 1..2000),
        p_cuts in prop::collection::vec(any::<usize>(), 0..10),
        s_cuts in prop::collection::vec(any::<usize>(), 0..10),
        p_keys in prop::collection::vec(any::<u16>(), 11),
        s_keys in prop::collection::vec(any::<u16>(), 11),
        order in prop::collection::vec(any::<bool>(), 1..16),
        isn in any::<u32>(),
    ) {
        let mut c = comparator();
        let h = Headers::default();
        let syn_ack = testkit::tcp(&h, isn.wrapping_sub(1), 1, crate::packet::tcp_flags::SYN | crate::packet::tcp_flags::ACK, &[]);
        c.handle_primary(t(0), syn_ack.clone());
        // The secondary's SYN-ACK opens the min-ACK guard for the primary's.
        c.handle_secondary(t(0), syn_ack);
        prop_assert_eq!(releases(&settle(&mut c)).len(), 1);
        let p_segs = segments(payload.len(), &p_cuts);
        let s_segs = segments(payload.len(), &s_cuts);
        let shuffle = |segs: &[(usize, usize)], keys: &[u16]| {
            let mut v: Vec<_> = segs.iter().copied().enumerate().collect();
            v.sort_by_key(|(i, _)| (keys[*i % keys.len()], *i));
            v.into_iter().map(|(_, s)| s).collect::<Vec<_>>()
        };
        let p_sent = shuffle(&p_segs, &p_keys);
        let s_sent = shuffle(&s_segs, &s_keys);
        let out = run(&mut c, isn, &payload, &payload, &p_sent, &s_sent, &order);
        prop_assert!(requests(&out).is_empty());
        let released: Vec<(usize, usize)> =
            releases(&out).iter().map(|f| stream_range(f, isn)).collect();
        prop_assert_eq!(released, p_segs);
        prop_assert_eq!(c.stats().held_secondary, 0);
    }
}
