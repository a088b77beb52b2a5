//! Criterion benchmark of the comparator against a plain memcmp of the same payload bytes.
//!
//! Three workloads, each a batch of primary/secondary frame pairs fed alternately (primary
//! first) into a fresh comparator, with every output drained: identical MTU-sized TCP streams
//! (1460-byte payloads), 64-byte TCP frames (10-byte payloads) and MTU-sized UDP datagrams
//! (1472-byte payloads, compared with their UDP header). Each workload has a `memcmp` baseline
//! in the same run: `==` over exactly the byte ranges the comparator compares, in the same
//! frames. Throughput is reported in compared payload bytes, so the two lines of a workload
//! divide into the ratio docs/benchmarks.md records. A third line, `classify_only`, times just
//! the classification of both frames of every pair (work the comparator does once per frame).
//! `comparator_long_lived` does the `comparator` work with one comparator kept across batches
//! (sequence numbers running on), the steady state of a real run, where the fresh comparator of
//! `comparator` pays for first touches of its queues in every batch.
//!
//! Frames are built (and cloned for each iteration) outside the timed region; dropping what the
//! routine returns (released frames, the comparator with its pool of spare secondary buffers,
//! which a runtime reuses through `take_spare_buffer` instead of freeing) is outside it too.
//!
//! Before the timed benches, `steady_state_allocates_nothing` checks the claim that the
//! comparator allocates nothing per frame: a long-lived comparator is fed identical MTU TCP
//! streams (either side first) with frame buffers recycled the way a runtime would (released
//! primary frames and `take_spare_buffer` secondary buffers refilled, a new buffer allocated
//! only when none is at hand: the retransmission history keeps up to 64 KiB of matched
//! secondary buffers before it hands them back), and a counting global allocator must see
//! zero allocations after warm-up. It panics otherwise.

use colo_core::compare::testkit::{self, Headers};
use colo_core::compare::{Comparator, CompareConfig, CompareOutput};
use colo_core::packet::{Kind, classify};
use colo_core::time::Instant;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::ops::Range;

const PAIRS: usize = 128;

/// The system allocator, counting allocations made by the thread that set `COUNTING`.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the thread-locals touched are const-initialized `Cell`s without destructors, so
// accessing them neither allocates nor recurses. (Unsafe code in this bench binary only:
// colo-core itself forbids it.)
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// Feeds `rounds` batches of identical MTU TCP pairs, with sequence numbers running on, to one
/// long-lived comparator, refilling recycled buffers, and panics if any allocation happens after
/// the first batch.
fn steady_state_allocates_nothing() {
    let mut cmp = Comparator::new(CompareConfig::default()).expect("valid config");
    let h = Headers::default();
    let s_headers = Headers {
        ttl: 63,
        window: 4096,
        ..h
    };
    let payload: Vec<u8> = (0..1460).map(|b| (b * 7) as u8).collect();
    let flags = colo_core::packet::tcp_flags::ACK;
    let template_p = testkit::tcp(&h, 1, 1, flags, &payload);
    let template_s = testkit::tcp(&s_headers, 1, 1, flags, &payload);
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(1024);
    pool.extend((0..8).map(|_| Vec::with_capacity(2048)));
    let mut seq = 1u32;
    let mut now = 0u64;
    let mut round = |cmp: &mut Comparator, pool: &mut Vec<Vec<u8>>| {
        for i in 0..PAIRS {
            now += 1;
            let at = Instant::from_millis(now);
            // An empty pool allocates (as a runtime receiving a frame would), and counts.
            let mut p = pool.pop().unwrap_or_else(|| Vec::with_capacity(2048));
            let mut s = pool.pop().unwrap_or_else(|| Vec::with_capacity(2048));
            for (buffer, template) in [(&mut p, &template_p), (&mut s, &template_s)] {
                buffer.clear();
                buffer.extend_from_slice(template);
                // TCP sequence number at offset 14 + 20 + 4 (untagged IPv4, no options).
                buffer[38..42].copy_from_slice(&seq.to_be_bytes());
            }
            seq = seq.wrapping_add(1460);
            if i % 2 == 0 {
                cmp.handle_primary(at, p);
                cmp.handle_secondary(at, s);
            } else {
                cmp.handle_secondary(at, s);
                cmp.handle_primary(at, p);
            }
            while let Some(out) = cmp.poll_output() {
                match out {
                    CompareOutput::Release(frame) => pool.push(frame),
                    other => panic!("identical streams produced {other:?}"),
                }
            }
            pool.extend(std::iter::from_fn(|| cmp.take_spare_buffer()));
        }
    };
    round(&mut cmp, &mut pool);
    let allocations = allocations_in(|| {
        for _ in 0..32 {
            round(&mut cmp, &mut pool);
        }
    });
    assert_eq!(
        allocations,
        0,
        "the comparator allocated in steady state ({allocations} allocations over {} pairs)",
        32 * PAIRS
    );
    assert_eq!(cmp.stats().released_matched, cmp.stats().primary_frames);
    println!("steady state: 0 allocations over {} pairs", 32 * PAIRS);
}

struct Workload {
    name: &'static str,
    primary: Vec<Vec<u8>>,
    secondary: Vec<Vec<u8>>,
    /// The compared byte range of each frame.
    ranges: Vec<Range<usize>>,
    bytes: u64,
    /// TCP stream bytes per batch (0 for datagrams): how far a long-lived comparator's
    /// sequence numbers move on per batch.
    stream_len: u32,
}

fn compared_range(frame: &[u8]) -> Range<usize> {
    match classify(frame).expect("bench frames are well-formed").kind {
        Kind::Tcp(info) => info.payload_start..info.payload_end,
        Kind::Ip { payload, .. } => payload,
        Kind::Link => 0..frame.len(),
    }
}

fn tcp_workload(name: &'static str, payload_len: usize) -> Workload {
    let mut primary = Vec::with_capacity(PAIRS);
    let mut secondary = Vec::with_capacity(PAIRS);
    let h = Headers::default();
    let s_headers = Headers {
        ttl: 63,
        window: 4096,
        ..h
    };
    for i in 0..PAIRS {
        let seq = 1 + (i * payload_len) as u32;
        let payload: Vec<u8> = (0..payload_len).map(|b| (b * 7 + i) as u8).collect();
        let flags = colo_core::packet::tcp_flags::ACK;
        primary.push(testkit::tcp(&h, seq, 1, flags, &payload));
        secondary.push(testkit::tcp(&s_headers, seq, 1, flags, &payload));
    }
    finish(name, primary, secondary)
}

fn udp_workload(name: &'static str, payload_len: usize) -> Workload {
    let h = Headers::default();
    let s_headers = Headers { ttl: 63, ..h };
    let mut primary = Vec::with_capacity(PAIRS);
    let mut secondary = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let payload: Vec<u8> = (0..payload_len).map(|b| (b * 13 + i) as u8).collect();
        primary.push(testkit::udp(&h, &payload));
        secondary.push(testkit::udp(&s_headers, &payload));
    }
    finish(name, primary, secondary)
}

fn finish(name: &'static str, primary: Vec<Vec<u8>>, secondary: Vec<Vec<u8>>) -> Workload {
    let ranges: Vec<_> = primary.iter().map(|f| compared_range(f)).collect();
    let bytes = ranges.iter().map(|r| r.len() as u64).sum();
    let tcp = matches!(
        classify(&primary[0])
            .expect("bench frames are well-formed")
            .kind,
        Kind::Tcp(_)
    );
    Workload {
        name,
        primary,
        secondary,
        ranges,
        bytes,
        stream_len: if tcp { bytes as u32 } else { 0 },
    }
}

/// `frames` with their TCP sequence numbers moved on by `shift` (untagged IPv4 without
/// options; datagrams are copied unchanged when `tcp` is false).
fn shifted(frames: &[Vec<u8>], shift: u32, tcp: bool) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if tcp {
                let seq = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
                f[38..42].copy_from_slice(&seq.wrapping_add(shift).to_be_bytes());
            }
            f
        })
        .collect()
}

/// A comparator whose TCP flow (if `tcp`) was opened by a SYN-ACK on both sides (ISN 0, data
/// from 1, as the bench frames are built): the flow then has no `floor`. A flow first seen
/// mid-stream keeps the first matched byte as its floor, and 2 GiB later (modular sequence
/// comparison) its secondary segments would no longer count as released (docs/comparator.md,
/// "Known limits").
fn opened_comparator(tcp: bool) -> Comparator {
    let mut cmp = Comparator::new(CompareConfig::default()).expect("valid config");
    if tcp {
        let syn_ack = colo_core::packet::tcp_flags::SYN | colo_core::packet::tcp_flags::ACK;
        let open = testkit::tcp(&Headers::default(), 0, 1, syn_ack, &[]);
        cmp.handle_primary(Instant::from_millis(1), open.clone());
        cmp.handle_secondary(Instant::from_millis(1), open);
        while cmp.poll_output().is_some() {}
    }
    cmp
}

/// Feeds the pairs (primary first) and drains every output into `released`.
fn feed(
    cmp: &mut Comparator,
    primary: Vec<Vec<u8>>,
    secondary: Vec<Vec<u8>>,
    released: &mut Vec<CompareOutput>,
) {
    let now = Instant::from_millis(1);
    for (p, s) in primary.into_iter().zip(secondary) {
        cmp.handle_primary(now, p);
        cmp.handle_secondary(now, s);
        while let Some(out) = cmp.poll_output() {
            released.push(out);
        }
    }
    assert!(matches!(released.last(), Some(CompareOutput::Release(_))));
}

/// Low quantiles of single batches, for a machine shared with other work (set
/// `COLO_BENCH_QUANTILES` to a number of rounds, e.g. 3000): each round times one batch of the
/// `comparator`, `comparator_long_lived` and `memcmp` lines, one after the other, each on its
/// own (setup and drops outside the clock). A batch takes tens of microseconds, far less than
/// a scheduler time slice, so most batches run without being preempted and the low quantiles
/// (minimum, 10th percentile) show the code's own cost even when the load average swings,
/// where criterion's means move with the load. Prints one line per workload.
#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a benchmark reads the wall clock; the comparator it times never does"
)]
fn quantiles(w: &Workload, rounds: usize) {
    let tcp = w.stream_len > 0;
    let mut long_lived = opened_comparator(tcp);
    let mut times: [Vec<f64>; 3] = Default::default();
    let clock = std::time::Instant::now;
    for round in 0..rounds {
        let mut cmp = Comparator::new(CompareConfig::default()).expect("valid config");
        let (p, s) = (w.primary.clone(), w.secondary.clone());
        let mut released = Vec::with_capacity(2 * PAIRS);
        let t0 = clock();
        feed(&mut cmp, p, s, &mut released);
        times[0].push(t0.elapsed().as_secs_f64() * 1e6);
        drop((cmp, released));

        while long_lived.take_spare_buffer().is_some() {}
        let shift = (round as u32).wrapping_mul(w.stream_len);
        let (p, s) = (
            shifted(&w.primary, shift, tcp),
            shifted(&w.secondary, shift, tcp),
        );
        let mut released = Vec::with_capacity(2 * PAIRS);
        let t0 = clock();
        feed(&mut long_lived, p, s, &mut released);
        times[1].push(t0.elapsed().as_secs_f64() * 1e6);
        drop(released);

        let t0 = clock();
        let mut equal = 0usize;
        for ((p, s), r) in w.primary.iter().zip(&w.secondary).zip(&w.ranges) {
            equal += usize::from(black_box(&p[r.clone()]) == black_box(&s[r.clone()]));
        }
        times[2].push(t0.elapsed().as_secs_f64() * 1e6);
        assert_eq!(equal, PAIRS);
    }
    let stats = long_lived.stats();
    assert_eq!(
        stats.checkpoint_requests, 0,
        "identical streams never checkpoint"
    );
    let mut line = format!(
        "{}: us per {PAIRS} pairs, min / p10 / p50 over {rounds}:",
        w.name
    );
    let mut p10 = [0.0; 3];
    for (i, (name, t)) in ["comparator", "long_lived", "memcmp"]
        .iter()
        .zip(&mut times)
        .enumerate()
    {
        t.sort_by(f64::total_cmp);
        let at = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
        p10[i] = at(0.1);
        line += &format!(" {name} {:.2} / {:.2} / {:.2};", at(0.0), at(0.1), at(0.5));
    }
    line += &format!(
        " memcmp/comparator at p10: fresh {:.0}%, long-lived {:.0}%",
        100.0 * p10[2] / p10[0],
        100.0 * p10[2] / p10[1]
    );
    println!("{line}");
}

fn bench(c: &mut Criterion) {
    steady_state_allocates_nothing();
    let workloads = [
        tcp_workload("tcp_mtu", 1460),
        tcp_workload("tcp_64byte_frames", 10),
        udp_workload("udp_mtu", 1472),
    ];
    if let Some(rounds) = std::env::var("COLO_BENCH_QUANTILES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&r| r > 0)
    {
        for w in &workloads {
            quantiles(w, rounds);
        }
    }
    for w in &workloads {
        let mut group = c.benchmark_group(w.name);
        group.throughput(Throughput::Bytes(w.bytes));

        group.bench_function("comparator", |b| {
            b.iter_batched(
                || {
                    (
                        Comparator::new(CompareConfig::default()).expect("valid config"),
                        w.primary.clone(),
                        w.secondary.clone(),
                        Vec::with_capacity(2 * PAIRS),
                    )
                },
                |(mut cmp, primary, secondary, mut released)| {
                    feed(&mut cmp, primary, secondary, &mut released);
                    (cmp, released)
                },
                BatchSize::PerIteration,
            )
        });

        // The steady state of a real run: one long-lived comparator across batches (its queues,
        // arrival ring, output queue and spare pool already warm), TCP sequence numbers running
        // on from batch to batch. Same frames and work per batch as `comparator`.
        let tcp = w.stream_len > 0;
        let long_lived = RefCell::new(opened_comparator(tcp));
        let batch = Cell::new(0u32);
        group.bench_function("comparator_long_lived", |b| {
            b.iter_batched(
                || {
                    // Outside the timed region: drop the spare buffers the runtime would reuse
                    // (so the pool never fills and frees in the timed region) and move the
                    // stream on by one batch.
                    let mut cmp = long_lived.borrow_mut();
                    while cmp.take_spare_buffer().is_some() {}
                    let shift = batch.get().wrapping_mul(w.stream_len);
                    batch.set(batch.get().wrapping_add(1));
                    (
                        shifted(&w.primary, shift, tcp),
                        shifted(&w.secondary, shift, tcp),
                        Vec::with_capacity(2 * PAIRS),
                    )
                },
                |(primary, secondary, mut released)| {
                    feed(
                        &mut long_lived.borrow_mut(),
                        primary,
                        secondary,
                        &mut released,
                    );
                    released
                },
                BatchSize::PerIteration,
            )
        });
        let stats = long_lived.borrow().stats().clone();
        // Every data frame matched; the opening SYN-ACK (TCP) was released uncompared.
        assert_eq!(
            stats.released_matched + stats.released_uncompared,
            stats.primary_frames,
            "every long-lived batch matched in full"
        );
        assert_eq!(stats.checkpoint_requests, 0);

        group.bench_function("memcmp", |b| {
            b.iter(|| {
                let mut equal = 0usize;
                for ((p, s), r) in w.primary.iter().zip(&w.secondary).zip(&w.ranges) {
                    equal += usize::from(black_box(&p[r.clone()]) == black_box(&s[r.clone()]));
                }
                assert_eq!(equal, PAIRS);
                equal
            })
        });
        // Not a baseline: the cost of classifying both frames of every pair, which the
        // comparator pays once per frame, to show how much of its time the parser takes.
        group.bench_function("classify_only", |b| {
            b.iter(|| {
                let mut tcp = 0usize;
                for (p, s) in w.primary.iter().zip(&w.secondary) {
                    for f in [p, s] {
                        let c = classify(black_box(f)).expect("well-formed");
                        tcp += usize::from(matches!(c.kind, Kind::Tcp(_)));
                        black_box(&c);
                    }
                }
                tcp
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(60)
        .measurement_time(std::time::Duration::from_secs(4))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
