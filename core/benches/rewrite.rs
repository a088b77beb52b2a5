//! Criterion benchmark of the TCP rewriter on an established connection: how many frames (and
//! bytes) per second one core rewrites, for minimum-size (64-byte) and MTU-size (1514-byte)
//! frames, in both directions, with and without SACK blocks, and with 10,000 other connections
//! in the table so the lookup is not a one-entry map.
//!
//! Each iteration rewrites the same buffer in place (the sequence numbers drift by the offset
//! every time, which is still a full rewrite). Results and the machine are in
//! docs/benchmarks.md; run with `cargo bench -p colo-core --bench rewrite`.

use colo_core::packet::SeqNum;
use colo_core::packet::build::{TcpFrame, sack_option};
use colo_core::packet::tcp_flags::{ACK, PSH, SYN};
use colo_core::rewrite::{Rewriter, RewriterConfig, Verdict};
use colo_core::time::Instant;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

const CLIENT_ISN: u32 = 12_345;
const PVM_ISN: u32 = 1_000_000;
const SVM_ISN: u32 = 3_000_000_000;

fn guest() -> IpAddr {
    "10.0.0.2".parse().unwrap()
}

fn client(i: u16) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1))
}

fn frame(
    inbound: bool,
    peer: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    opts: &[u8],
    len: usize,
) -> Vec<u8> {
    let payload = vec![0x5a; len];
    let (src, dst, sp, dp) = if inbound {
        (client(peer), guest(), 10_000 + peer, 80)
    } else {
        (guest(), client(peer), 80, 10_000 + peer)
    };
    TcpFrame {
        seq: SeqNum(seq),
        ack: SeqNum(ack),
        flags,
        options: opts,
        payload: &payload,
        ..TcpFrame::new(src, dst, sp, dp)
    }
    .build()
}

/// A rewriter with `extra` idle connections plus connection 0, whose offset is learned.
fn established(extra: u16) -> Rewriter {
    let mut rw = Rewriter::new(RewriterConfig::default());
    let t = Instant::ZERO;
    for peer in (1..=extra).chain([0]) {
        rw.rewrite_inbound(t, &mut frame(true, peer, CLIENT_ISN, 0, SYN, &[], 0));
        rw.rewrite_outbound(
            t,
            &mut frame(false, peer, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[], 0),
        );
        rw.rewrite_inbound(
            t,
            &mut frame(true, peer, CLIENT_ISN + 1, PVM_ISN + 1, ACK, &[], 0),
        );
    }
    assert_eq!(rw.stats().offsets_learned, u64::from(extra) + 1);
    rw
}

fn bench_rewrite(c: &mut Criterion) {
    let sack = sack_option(&[
        (SeqNum(PVM_ISN + 3000), SeqNum(PVM_ISN + 4000)),
        (SeqNum(PVM_ISN + 5000), SeqNum(PVM_ISN + 6000)),
        (SeqNum(PVM_ISN + 7000), SeqNum(PVM_ISN + 8000)),
    ]);
    // 14 Ethernet + 20 IPv4 + 20 TCP = 54 header bytes; 64 and 1514 are the frame sizes without
    // the FCS, the smallest Ethernet frame and the largest at a 1500-byte MTU.
    let header = 54;
    let cases: [(&str, bool, &[u8], usize, u16); 6] = [
        ("outbound_seq/64B", false, &[], 64, 0),
        ("outbound_seq/1514B", false, &[], 1514, 0),
        ("inbound_ack/64B", true, &[], 64, 0),
        ("inbound_ack/1514B", true, &[], 1514, 0),
        ("inbound_ack_3sack/1514B", true, &sack, 1514, 0),
        ("outbound_seq_10k_conns/1514B", false, &[], 1514, 10_000),
    ];
    let mut group = c.benchmark_group("rewrite");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (name, inbound, opts, size, extra) in cases {
        let mut rw = established(extra);
        let len = size - header - opts.len();
        let (seq, ack) = if inbound {
            (CLIENT_ISN + 1, PVM_ISN + 1)
        } else {
            (SVM_ISN.wrapping_add(1), CLIENT_ISN + 1)
        };
        let mut f = frame(inbound, 0, seq, ack, ACK | PSH, opts, len);
        assert_eq!(f.len(), size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let v = if inbound {
                    rw.rewrite_inbound(Instant::ZERO, black_box(&mut f))
                } else {
                    rw.rewrite_outbound(Instant::ZERO, black_box(&mut f))
                };
                debug_assert_eq!(v, Verdict::Rewritten);
                v
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_rewrite);
criterion_main!(benches);
