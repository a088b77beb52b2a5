//! Criterion benchmarks of the wire codec: small control messages (latency per frame), mirrored
//! Ethernet frames through the streaming decoder (frames per second), and a full 16 MiB page
//! batch (throughput, dominated by CRC32C and the bulk copy), plain and sealed with the
//! authenticated link's MAC (the BLAKE3 keyed hash over the frame: the cost of authentication
//! on the page path).
//!
//! Run: `cargo bench -p colo-core --bench wire`.

use std::hint::black_box;

use colo_core::ids::{Epoch, NicId, PageRange, Term};
use colo_core::wire::{
    FrameDecoder, FrameMac, Limits, Message, PAGE_SIZE, ZeroPages, decode, decode_sealed, encode,
    encode_head, encode_head_sealed, encode_sealed,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn heartbeat() -> Message {
    Message::Heartbeat {
        term: Term(3),
        seq: 123_456,
        epoch: Epoch(9_876),
    }
}

fn control_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire/control");
    let message = heartbeat();
    let mut out = Vec::with_capacity(64);
    group.bench_function("encode_heartbeat", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&message), &[], &mut out).unwrap()
        })
    });
    let frame = {
        let mut f = Vec::new();
        encode(&message, &[], &mut f).unwrap();
        f
    };
    let limits = Limits::default();
    group.bench_function("decode_heartbeat", |b| {
        b.iter(|| {
            decode(black_box(&frame), &limits)
                .unwrap()
                .unwrap()
                .consumed
        })
    });
    group.finish();
}

fn mirrored_frames(c: &mut Criterion) {
    // 1000 full-size (1514-byte) Ethernet frames, pushed in 64 KiB reads as a socket would.
    const FRAMES: usize = 1000;
    let ethernet = vec![0xabu8; 1514];
    let mut stream = Vec::new();
    for i in 0..FRAMES {
        let message = Message::MirroredFrame {
            epoch: Epoch(i as u64),
            nic: NicId(0),
        };
        encode(&message, &ethernet, &mut stream).unwrap();
    }
    let mut group = c.benchmark_group("wire/mirrored_frames");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("stream_decode_1514B_x1000", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new(Limits::default());
            let mut rest = &stream[..];
            let mut bytes = 0;
            while !rest.is_empty() {
                let n = decoder.push(&rest[..rest.len().min(64 * 1024)]);
                rest = &rest[n..];
                while let Some(frame) = decoder.poll_frame().unwrap() {
                    bytes += frame.bulk.len();
                }
            }
            assert_eq!(bytes, FRAMES * 1514);
        })
    });
    let mut out = Vec::with_capacity(stream.len());
    group.bench_function("encode_1514B_x1000", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..FRAMES {
                let message = Message::MirroredFrame {
                    epoch: Epoch(i as u64),
                    nic: NicId(0),
                };
                encode(&message, black_box(&ethernet), &mut out).unwrap();
            }
        })
    });
    group.finish();
}

fn page_batch(c: &mut Criterion) {
    // 4096 scattered pages (every other page), the largest batch the default limits accept.
    let ranges: Vec<PageRange> = (0..4096u64)
        .map(|i| PageRange {
            first: i * 2,
            count: 1,
        })
        .collect();
    let message = Message::PageBatch {
        epoch: Epoch(1),
        batch: 0,
        ranges,
        zero: ZeroPages::none(4096),
    };
    let bulk = vec![0x5au8; (4096 * PAGE_SIZE) as usize];
    let mut frame = Vec::new();
    encode(&message, &bulk, &mut frame).unwrap();
    let mut group = c.benchmark_group("wire/page_batch_16MiB");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.sample_size(20);
    let mut out = Vec::with_capacity(frame.len());
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&message), &bulk, &mut out).unwrap()
        })
    });
    let limits = Limits::default();
    group.bench_function("decode", |b| {
        b.iter(|| {
            decode(black_box(&frame), &limits)
                .unwrap()
                .unwrap()
                .bulk
                .len()
        })
    });
    // The runtime's sending path: header and message encoded, the bulk fed to the tail in
    // 256 KiB chunks as `PeerWriter::send_pages` streams it from guest memory (no copy).
    group.bench_function("stream_head_and_tail", |b| {
        b.iter(|| {
            out.clear();
            let mut tail = encode_head(black_box(&message), bulk.len(), &mut out).unwrap();
            for chunk in bulk.chunks(256 * 1024) {
                tail.update(chunk);
            }
            tail.finish().len()
        })
    });
    let key = [0x42u8; 32];
    let mut mac = FrameMac::new(key);
    group.bench_function("stream_head_and_tail_sealed", |b| {
        b.iter(|| {
            out.clear();
            let mut tail =
                encode_head_sealed(black_box(&message), bulk.len(), &mut out, &mut mac).unwrap();
            for chunk in bulk.chunks(256 * 1024) {
                tail.update(chunk);
            }
            tail.finish().len()
        })
    });
    group.bench_function("encode_sealed", |b| {
        b.iter(|| {
            out.clear();
            encode_sealed(black_box(&message), &bulk, &mut out, &mut mac).unwrap()
        })
    });
    let mut sealed = Vec::new();
    encode_sealed(&message, &bulk, &mut sealed, &mut FrameMac::new(key)).unwrap();
    group.bench_function("decode_sealed", |b| {
        b.iter(|| {
            // Frame 0 every time: a fresh receiving MAC per iteration (its cost is a copy of
            // 32 bytes and a counter).
            let mut rx = FrameMac::new(key);
            decode_sealed(black_box(&sealed), &limits, &mut rx)
                .unwrap()
                .unwrap()
                .bulk
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, control_messages, mirrored_frames, page_batch);
criterion_main!(benches);
