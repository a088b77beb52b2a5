//! The VMM's checkpoint costs on real KVM with the test guest (`cargo bench -p colo-runtime
//! --bench checkpoint`): pause -> capture -> resume for 0, 100, 1,000 and 10,000 dirty pages,
//! apply on a receiving VM, a plain memcpy of the same number of pages (the physical limit, in
//! the same run), and the dirty-log harvest over the whole memory.
//!
//! The guest rewrites a working set of N pages every step; between captures it runs long
//! enough for at least one full step, so each incremental carries the N pages plus the few the
//! counter's stack and console buffer touch (the mean is printed per group). Without /dev/kvm
//! the KVM groups are skipped with a message.

use colo_runtime::guest::counter_cmdline;
use colo_runtime::{CaptureStats, CheckpointKind, ConsoleOutput, Machine, MachineConfig};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const MEM_MIB: u64 = 128;
const PAGE: usize = 4096;
const SIZES: [u64; 4] = [0, 100, 1_000, 10_000];

fn kvm_present() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn guest_machine(pages: u64) -> Machine {
    let image = std::fs::read(colo_runtime::guest::test_guest_path()).expect("test guest built");
    let mut m = Machine::new(
        MachineConfig {
            mem_mib: MEM_MIB,
            vcpus: 1,
        },
        ConsoleOutput::Null,
    )
    .expect("VM");
    m.load_test_guest(&image, &counter_cmdline(pages, 0, 1_000_000_000, 0))
        .expect("load");
    m
}

/// The guest's step counter: word 0 of its last working-set page (runtime/guest/src/counter.rs).
fn guest_step(m: &Machine, pages: u64) -> u64 {
    let gpa = colo_runtime::layout::GUEST_WORKSET_BASE + (pages - 1) * PAGE as u64;
    m.memory()
        .read_obj::<u64>(GuestAddress(gpa))
        .expect("working set inside RAM")
}

/// Resumes the guest and lets it run until it has completed at least one whole step after the
/// resume (so all `pages` working-set pages are dirty again), then pauses it.
fn run_one_full_step(m: &mut Machine, pages: u64) {
    m.resume();
    if pages == 0 {
        std::thread::sleep(Duration::from_millis(2));
    } else {
        let start = guest_step(m, pages);
        let deadline = Instant::now() + Duration::from_secs(10);
        while guest_step(m, pages) < start + 2 {
            assert!(Instant::now() < deadline, "guest made no progress");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    m.pause();
}

fn mean(stats: &[CaptureStats]) -> (u64, Duration, Duration, Duration) {
    let n = stats.len().max(1) as u32;
    let pages = stats.iter().map(|s| s.pages).sum::<u64>() / u64::from(n);
    let sum = |f: fn(&CaptureStats) -> Duration| stats.iter().map(f).sum::<Duration>() / n;
    (
        pages,
        sum(|s| s.harvest),
        sum(|s| s.devices),
        sum(|s| s.copy),
    )
}

fn pause_capture_resume(c: &mut Criterion) {
    let mut group = c.benchmark_group("pause_capture_resume");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    for &pages in &SIZES {
        let mut m = guest_machine(pages);
        run_one_full_step(&mut m, pages);
        m.capture(CheckpointKind::Full).expect("base");
        let mut stats = Vec::new();
        group.throughput(Throughput::Bytes(pages * PAGE as u64));
        group.bench_function(BenchmarkId::from_parameter(pages), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Run one full step, then time pause -> capture -> resume from a running
                    // guest (the resume's cost is included; the guest runs on afterwards).
                    run_one_full_step(&mut m, pages);
                    m.resume();
                    let t = Instant::now();
                    m.pause();
                    let (cp, s) = m.capture(CheckpointKind::Incremental).expect("capture");
                    m.resume();
                    total += t.elapsed();
                    m.pause();
                    stats.push(s);
                    m.recycle(black_box(cp));
                }
                total
            })
        });
        let (p, harvest, devices, copy) = mean(&stats);
        eprintln!(
            "pause_capture_resume/{pages}: mean {p} pages per capture; harvest {harvest:?}, device state {devices:?}, page copy {copy:?}"
        );
    }
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    for &pages in &SIZES {
        let mut source = guest_machine(pages);
        run_one_full_step(&mut source, pages);
        let (base, _) = source.capture(CheckpointKind::Full).expect("base");
        run_one_full_step(&mut source, pages);
        let (inc, _) = source
            .capture(CheckpointKind::Incremental)
            .expect("incremental");
        eprintln!(
            "apply/{pages}: the incremental carries {} pages",
            inc.pages.len() / PAGE
        );
        let mut target = Machine::from_checkpoint(&base, ConsoleOutput::Null).expect("target");
        let mut next = 1;
        group.throughput(Throughput::Bytes(pages * PAGE as u64));
        group.bench_function(BenchmarkId::from_parameter(pages), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut cp = inc.clone();
                    cp.sequence = next;
                    next += 1;
                    let t = Instant::now();
                    target.apply(&cp).expect("apply");
                    total += t.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

fn memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    // Same shape as a capture: pages scattered over a 128 MiB "guest", copied into one buffer.
    let src = vec![0x5au8; (MEM_MIB as usize) << 20];
    for &pages in &SIZES {
        let mut dst = vec![0u8; (pages as usize).max(1) * PAGE];
        let stride = ((MEM_MIB as usize) << 20) / PAGE / (pages as usize).max(1);
        group.throughput(Throughput::Bytes(pages * PAGE as u64));
        group.bench_function(BenchmarkId::from_parameter(pages), |b| {
            b.iter(|| {
                for i in 0..pages as usize {
                    let at = i * stride * PAGE;
                    dst[i * PAGE..(i + 1) * PAGE].copy_from_slice(&src[at..at + PAGE]);
                }
                black_box(&dst);
            })
        });
    }
    group.finish();
}

fn harvest(c: &mut Criterion) {
    let mut group = c.benchmark_group("harvest_whole_memory");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    let mut m = guest_machine(10_000);
    m.capture(CheckpointKind::Full).expect("base");
    group.bench_function("clean", |b| {
        b.iter(|| black_box(m.take_dirty().expect("harvest")))
    });
    group.bench_function("10000_dirty", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run_one_full_step(&mut m, 10_000);
                let t = Instant::now();
                black_box(m.take_dirty().expect("harvest"));
                total += t.elapsed();
            }
            total
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    memcpy(&mut c);
    if kvm_present() {
        pause_capture_resume(&mut c);
        apply(&mut c);
        harvest(&mut c);
    } else {
        eprintln!("SKIPPED the KVM benchmarks: /dev/kvm cannot be opened");
    }
    c.final_summary();
}
