//! Fuzz body for the `rewrite` target: a script of frames and events, decoded from the input,
//! drives one [`Rewriter`].
//!
//! Input encoding (so seeds can be written by hand): byte 0 sets the table capacity (`b % 8`);
//! then each step starts with an opcode byte `op` and a time-advance byte:
//! - `op % 8` in 0..=4: a TCP frame from a template, 7 more bytes: `shape` (bit 0 inbound, bit 1
//!   IPv6, bit 2 VLAN 5, bits 3-4 which of four peers, bit 5 SACK option, bit 6 SACK at an odd
//!   offset), `flags`, `seq`, `ack`, `len` (payload bytes, `% 64`), `xor`, `at`. `seq` and `ack`
//!   pick one of four ISNs (`b % 4`) plus `b / 4`, so handshakes line up; SACK edges are the ack
//!   plus small steps. A non-zero `xor` flips bits at `at` after the checksums are filled, making
//!   a damaged frame.
//! - 5: `reset_offsets()`; 6: `enter_failover()`;
//! - 7: a raw frame: a direction byte, a length byte, then that many bytes.
//!
//! Asserted: no panic; the frame length never changes; a frame passed or left unchanged keeps
//! every byte; a rewritten frame changes only its TCP header; a frame whose checksums verified
//! still verifies; each frame is counted exactly once and the table never exceeds its capacity.

use crate::packet::build::TcpFrame;
use crate::packet::checksum::{L4Checksum, ipv4_header_range, verify_ipv4_header, verify_l4};
use crate::packet::{Kind, SeqNum, classify};
use crate::rewrite::{Rewriter, RewriterConfig, RewriterStats, Verdict};
use crate::time::Instant;
use core::net::IpAddr;

/// Four ISNs far apart (two near the wrap) that every seq and ack is built from.
const ISNS: [u32; 4] = [1_000, 0x8000_0000, 0xffff_ff00, 0x1234_5678];

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    drive(data);
}

/// Runs one input and returns the rewriter's final counters (`None` for an empty input).
fn drive(data: &[u8]) -> Option<RewriterStats> {
    let (&first, mut rest) = data.split_first()?;
    let capacity = usize::from(first % 8);
    let mut rw = Rewriter::new(RewriterConfig {
        connections_max: capacity,
    });
    let mut now = 0u64;
    let mut frames = 0u64;
    while let [op, advance, tail @ ..] = rest {
        rest = tail;
        now += u64::from(*advance) * 1_000;
        let t = Instant::from_nanos(now);
        match op % 8 {
            5 => rw.reset_offsets(),
            6 => rw.enter_failover(),
            7 => {
                let [dir, len, tail @ ..] = rest else { break };
                let n = usize::from(*len).min(tail.len());
                let mut frame = tail[..n].to_vec();
                rest = &tail[n..];
                feed(&mut rw, t, &mut frame, dir & 1 == 1);
                frames += 1;
            }
            _ => {
                let [shape, flags, seq, ack, len, xor, at, tail @ ..] = rest else {
                    break;
                };
                rest = tail;
                let (mut frame, inbound) = template(*shape, *flags, *seq, *ack, *len);
                if *xor != 0 {
                    let i = usize::from(*at) % frame.len();
                    frame[i] ^= xor;
                }
                feed(&mut rw, t, &mut frame, inbound);
                frames += 1;
            }
        }
        check_stats(&rw.stats(), frames);
        assert!(rw.connections() <= capacity, "table above its capacity");
    }
    Some(rw.stats())
}

fn value(b: u8) -> u32 {
    ISNS[usize::from(b % 4)].wrapping_add(u32::from(b / 4))
}

fn template(shape: u8, flags: u8, seq: u8, ack: u8, len: u8) -> (Vec<u8>, bool) {
    let inbound = shape & 1 != 0;
    let v6 = shape & 2 != 0;
    let peer = (shape >> 3) & 3;
    let (guest, remote): (IpAddr, IpAddr) = if v6 {
        (
            "fd00::2".parse().expect("literal"),
            IpAddr::V6(core::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                u16::from(peer),
            )),
        )
    } else {
        (
            "10.0.0.2".parse().expect("literal"),
            IpAddr::V4(core::net::Ipv4Addr::new(192, 0, 2, peer)),
        )
    };
    let ack_v = value(ack);
    let mut options = Vec::new();
    if shape & 0x20 != 0 {
        if shape & 0x40 == 0 {
            options.extend_from_slice(&[1, 1]);
        } else {
            options.push(1);
        }
        options.extend_from_slice(&[5, 18]);
        for step in [10u32, 20, 40, 80] {
            options.extend_from_slice(&ack_v.wrapping_add(step).to_be_bytes());
        }
    }
    let payload = vec![0xa5; usize::from(len % 64)];
    let (src, dst, sp, dp) = if inbound {
        (remote, guest, 40_000 + u16::from(peer), 80)
    } else {
        (guest, remote, 80, 40_000 + u16::from(peer))
    };
    let frame = TcpFrame {
        vlan: (shape & 4 != 0).then_some(5),
        seq: SeqNum(value(seq)),
        ack: SeqNum(ack_v),
        flags: flags & 0x3f,
        options: &options,
        payload: &payload,
        ..TcpFrame::new(src, dst, sp, dp)
    }
    .build();
    (frame, inbound)
}

/// True if every checksum the frame carries (IPv4 header, TCP) verifies and it is TCP.
fn tcp_checksums_verify(frame: &[u8]) -> bool {
    let Ok(c) = classify(frame) else { return false };
    let ip_ok = ipv4_header_range(frame).is_none_or(|r| verify_ipv4_header(&frame[r]));
    matches!(c.kind, Kind::Tcp(_)) && ip_ok && verify_l4(frame, &c) == L4Checksum::Valid
}

fn feed(rw: &mut Rewriter, now: Instant, frame: &mut [u8], inbound: bool) {
    let before = frame.to_vec();
    let valid = tcp_checksums_verify(&before);
    let verdict = if inbound {
        rw.rewrite_inbound(now, frame)
    } else {
        rw.rewrite_outbound(now, frame)
    };
    assert_eq!(frame.len(), before.len(), "frame length changed");
    match verdict {
        Verdict::Rewritten => {
            let Ok(c) = classify(&before) else {
                panic!("rewrote a frame it could not classify")
            };
            let Kind::Tcp(t) = c.kind else {
                panic!("rewrote a non-TCP frame")
            };
            assert_eq!(
                frame[..t.l4_offset],
                before[..t.l4_offset],
                "IP header changed"
            );
            assert_eq!(
                frame[t.payload_start..],
                before[t.payload_start..],
                "payload changed"
            );
            if valid {
                assert!(
                    tcp_checksums_verify(frame),
                    "rewrite broke a valid checksum"
                );
            }
        }
        Verdict::Unchanged | Verdict::Passed(_) => {
            assert_eq!(*frame, *before, "frame changed without a rewrite verdict");
        }
    }
}

fn check_stats(s: &RewriterStats, frames: u64) {
    let counted = s.rewritten
        + s.unchanged
        + s.passed_not_tcp
        + s.passed_malformed
        + s.passed_untracked
        + s.passed_failover;
    assert_eq!(counted, frames, "a frame was not counted exactly once");
    assert!(s.closed + s.aborted + s.evicted <= s.opened + s.reopened);
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! seed {
        ($name:literal) => {
            drive(include_bytes!(concat!(
                "../../../fuzz/seeds/rewrite/",
                $name
            )))
            .unwrap()
        };
    }

    #[test]
    fn seeds_reach_the_paths_they_are_named_after() {
        let s = seed!("client_handshake_data");
        assert_eq!((s.opened, s.offsets_learned, s.rewritten), (1, 1, 3));
        let s = seed!("client_handshake_sack_v6_vlan");
        assert_eq!(s.sack_edges_rewritten, 8);
        let s = seed!("guest_handshake_close");
        assert_eq!((s.offsets_learned, s.closed), (1, 1));
        let s = seed!("reset_then_failover");
        assert_eq!((s.resets, s.passed_failover), (1, 1));
        assert_eq!(s.passed_untracked, 1);
        let s = seed!("table_full_evicts");
        assert_eq!((s.opened, s.evicted, s.passed_untracked), (4, 2, 1));
        let s = seed!("rst_and_damaged");
        assert_eq!((s.aborted, s.passed_untracked), (1, 2));
        let s = seed!("early_client_ack");
        assert_eq!((s.offsets_learned, s.rewritten), (1, 2));
        let s = seed!("raw_frames");
        assert_eq!((s.passed_not_tcp, s.passed_malformed), (1, 2));
    }

    #[test]
    fn empty_and_short_inputs_do_nothing() {
        assert_eq!(drive(&[]), None);
        assert_eq!(drive(&[3]), Some(RewriterStats::default()));
        assert_eq!(drive(&[3, 0, 1, 2]), Some(RewriterStats::default()));
    }
}
