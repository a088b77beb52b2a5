//! Differential test of the TCP fast path (`compare::fast`): the same random inputs fed to a
//! comparator with the fast path and to one running only the general path must produce the
//! same outputs in the same order, the same counters, the same phase and the same next
//! deadline, after every single input.
//!
//! The inputs are seeded (xorshift64*), so every `cargo test` replays the same cases. They are
//! built to reach both paths often: two TCP flows whose sides mostly send the same segments
//! in lock-step (either side first), mixed with what makes the fast path step aside or the
//! general path take over: re-segmentation, reordering, retransmissions, pure ACKs and ACKs
//! running ahead of the other side, SYN, FIN and RST, flipped bytes (miscompares), a UDP flow,
//! time advances with timeouts, checkpoints, failover and re-attachment, and a small queue
//! bound.

use super::*;
use crate::packet::tcp_flags::{ACK, FIN, RST, SYN};

/// Seeded xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Payload byte at sequence number `x` of flow `f`: both sides derive the same stream.
fn stream_byte(f: usize, x: u32) -> u8 {
    (x.wrapping_mul(29) ^ (f as u32).wrapping_mul(0x5b)) as u8
}

/// One side of one TCP flow: where it is in the shared segment plan and its ACK number.
#[derive(Clone, Copy, Default)]
struct Cursor {
    next: usize,
    ack: u32,
}

/// A TCP flow: the segment plan both sides follow (start offset, length) and their cursors.
struct TcpFlow {
    headers: Headers,
    isn: u32,
    plan: Vec<(u32, u32)>,
    sides: [Cursor; 2],
}

impl TcpFlow {
    fn new(rng: &mut Rng, port: u16) -> TcpFlow {
        let mut plan = Vec::new();
        let mut at = 0u32;
        for _ in 0..400 {
            let len = match rng.below(4) {
                0 => 1 + rng.below(8) as u32,
                1 => 1460,
                _ => 1 + rng.below(300) as u32,
            };
            plan.push((at, len));
            at += len;
        }
        TcpFlow {
            headers: Headers {
                src_port: port,
                ..Headers::default()
            },
            isn: rng.next() as u32,
            plan,
            sides: [Cursor::default(); 2],
        }
    }

    /// The next frame of side `side` (0 primary, 1 secondary), with the usual lock-step
    /// segment most of the time and a perturbation otherwise.
    fn frame(&mut self, rng: &mut Rng, f: usize, side: usize) -> Vec<u8> {
        let cursor = &mut self.sides[side];
        // The ACK follows the plan position, so sides in lock-step acknowledge the same; a
        // side that skipped or lags acknowledges more or less, and now and then one runs ahead.
        if rng.chance(3) {
            cursor.ack = cursor.ack.wrapping_add(1);
        }
        let ack = cursor.ack.wrapping_add(cursor.next as u32 / 4);
        let kind = rng.below(1000);
        let flags_only = |flags: u8, seq: u32| testkit::tcp(&self.headers, seq, ack, flags, &[]);
        let (start, len) = self.plan[cursor.next % self.plan.len()];
        let seq = self.isn.wrapping_add(start);
        match kind {
            0..=49 => return flags_only(ACK, seq),
            50..=59 => return flags_only(FIN | ACK, seq),
            60..=64 => return flags_only(RST, seq),
            65..=67 => return flags_only(SYN | ACK, self.isn.wrapping_sub(1)),
            68..=69 => return flags_only(SYN, self.isn.wrapping_sub(1)),
            _ => {}
        }
        let (start, len) = match kind {
            // Retransmit an earlier planned segment.
            70..=109 if cursor.next > 0 => {
                self.plan[rng.below(cursor.next as u64) as usize % self.plan.len()]
            }
            // Skip one segment ahead (reordering; the skipped one may come later).
            110..=139 => {
                cursor.next += 1;
                self.plan[cursor.next % self.plan.len()]
            }
            // Split the planned segment: send its first part only.
            140..=159 if len > 1 => {
                let cut = 1 + rng.below(u64::from(len) - 1) as u32;
                let k = cursor.next % self.plan.len();
                self.plan[k] = (start + cut, len - cut);
                (start, cut)
            }
            _ => {
                cursor.next += 1;
                (start, len)
            }
        };
        let mut payload: Vec<u8> = (start..start + len)
            .map(|x| stream_byte(f, self.isn.wrapping_add(x)))
            .collect();
        if side == 1 && rng.below(400) == 0 {
            let i = rng.below(payload.len() as u64) as usize;
            payload[i] ^= 1 + rng.below(255) as u8;
        }
        testkit::tcp(
            &self.headers,
            self.isn.wrapping_add(start),
            ack,
            ACK,
            &payload,
        )
    }
}

/// Feeds one input to both comparators and checks they agree.
fn both(a: &mut Comparator, b: &mut Comparator, feed: impl Fn(&mut Comparator)) {
    feed(a);
    feed(b);
    let (out_a, out_b) = (settle(a), settle(b));
    assert_eq!(out_a, out_b, "outputs differ");
    assert_eq!(a.stats(), b.stats(), "counters differ");
    assert_eq!(a.phase(), b.phase(), "phases differ");
    assert_eq!(a.poll_timeout(), b.poll_timeout(), "deadlines differ");
}

fn run_case(seed: u64) -> (CompareStats, u64) {
    let mut rng = Rng(seed | 1);
    let config = CompareConfig {
        max_queue_frames: if rng.chance(10) { 3 } else { 1024 },
        ..CompareConfig::default()
    };
    let mut fast = Comparator::new(config.clone()).expect("valid config");
    let mut general = Comparator::new(config)
        .expect("valid config")
        .without_fast_path();
    let mut flows = [TcpFlow::new(&mut rng, 80), TcpFlow::new(&mut rng, 81)];
    let mut udp_sent = std::collections::VecDeque::new();
    let mut now = 0u64;
    // Which side a lock-step pair starts with, per case: both orders reach the fast path.
    let primary_first = rng.chance(50);
    for _ in 0..400 {
        now += rng.below(40);
        let at = t(now);
        match rng.below(100) {
            0..=79 => {
                // A lock-step pair on one flow, sometimes with only one side sending.
                let f = rng.below(2) as usize;
                let order: &[usize] = match (primary_first, rng.below(10)) {
                    (_, 0) => &[0],
                    (_, 1) => &[1],
                    (true, _) => &[0, 1],
                    (false, _) => &[1, 0],
                };
                for &side in order {
                    let frame = flows[f].frame(&mut rng, f, side);
                    both(&mut fast, &mut general, |c| {
                        if side == 0 {
                            c.handle_primary(at, frame.clone());
                        } else {
                            c.handle_secondary(at, frame.clone());
                        }
                    });
                }
            }
            80..=84 => {
                // Datagrams: the secondary mostly mirrors what the primary sent.
                let secondary = rng.chance(50);
                let mut body = vec![rng.below(3) as u8; 1 + rng.below(20) as usize];
                if secondary && !rng.chance(5) {
                    body = udp_sent.pop_front().unwrap_or(body);
                } else if !secondary {
                    udp_sent.push_back(body.clone());
                }
                let frame = testkit::udp(&Headers::default(), &body);
                both(&mut fast, &mut general, |c| {
                    if secondary {
                        c.handle_secondary(at, frame.clone());
                    } else {
                        c.handle_primary(at, frame.clone());
                    }
                });
            }
            85..=91 => {
                let span = if rng.chance(50) { 100 } else { 4000 };
                now += rng.below(span);
                let at = t(now);
                both(&mut fast, &mut general, |c| c.handle_timeout(at));
            }
            92..=96 => both(&mut fast, &mut general, |c| c.checkpoint_done(at)),
            97 => both(&mut fast, &mut general, |c| c.release_all(at)),
            _ => both(&mut fast, &mut general, |c| c.attach_secondary(at)),
        }
    }
    assert_eq!(general.fast_hits(), 0);
    (fast.stats().clone(), fast.fast_hits())
}

#[test]
fn fast_path_matches_the_general_path_on_random_streams() {
    let mut total = CompareStats::default();
    let mut fast_hits = 0;
    for seed in 0..400u64 {
        let (stats, hits) = run_case(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        fast_hits += hits;
        total.released_matched += stats.released_matched;
        total.miscompares += stats.miscompares;
        total.released_by_checkpoint += stats.released_by_checkpoint;
        total.timeouts += stats.timeouts;
        total.queue_full_events += stats.queue_full_events;
        total.secondary_dropped_retransmit += stats.secondary_dropped_retransmit;
    }
    // The cases must exercise what they claim to: the fast path, matches, differences,
    // checkpoints, timeouts, full queues and retransmissions all happen.
    assert!(fast_hits > 10_000, "fast path taken {fast_hits} times");
    assert!(total.released_matched > 5_000, "{total:?}");
    assert!(total.miscompares > 100, "{total:?}");
    assert!(total.released_by_checkpoint > 1_000, "{total:?}");
    assert!(total.timeouts > 100, "{total:?}");
    assert!(total.queue_full_events > 10, "{total:?}");
    assert!(total.secondary_dropped_retransmit > 1_000, "{total:?}");
}

mod summary {
    use super::super::*;
    use crate::compare::fast::tcp4_summary;
    use crate::packet::{FlowKey, Kind, classify};
    use core::net::{IpAddr, Ipv4Addr};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whenever the fixed-offset reader accepts a frame, the general classifier reads the
        /// same TCP fields and the flow key of the same addresses and ports; frames built
        /// well-formed in the common layout are accepted.
        #[test]
        fn tcp4_summary_agrees_with_classify(
            payload in prop::collection::vec(any::<u8>(), 0..80),
            seq in any::<u32>(),
            ack in any::<u32>(),
            flags in any::<u8>(),
            vlan in prop::option::of(0u16..4095),
            edits in prop::collection::vec((0usize..70, any::<u8>()), 0..4),
            cut in 0usize..100,
        ) {
            let h = Headers { vlan, ..Headers::default() };
            let mut frame = testkit::tcp(&h, seq, ack, flags, &payload);
            let pristine = frame.clone();
            for (at, b) in &edits {
                if let Some(x) = frame.get_mut(*at) {
                    *x = *b;
                }
            }
            if cut < 10 {
                frame.truncate(frame.len().saturating_sub(cut * 7));
            }
            if let Some((raw, info)) = tcp4_summary(&frame) {
                let c = classify(&frame).expect("accepted frames classify");
                prop_assert_eq!(c.kind, Kind::Tcp(info));
                let addr = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                let key = FlowKey::Ip {
                    vlan: None,
                    src: addr(&raw[0..4]),
                    dst: addr(&raw[4..8]),
                    src_port: u16::from_be_bytes([raw[8], raw[9]]),
                    dst_port: u16::from_be_bytes([raw[10], raw[11]]),
                    protocol: crate::packet::IPPROTO_TCP,
                };
                prop_assert_eq!(c.key, key);
            }
            if vlan.is_none() {
                prop_assert!(tcp4_summary(&pristine).is_some());
            }
        }
    }
}
