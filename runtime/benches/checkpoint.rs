//! The VMM's checkpoint costs on real KVM with the test guest (`cargo bench -p colo-runtime
//! --bench checkpoint`): pause -> capture -> resume for 0, 100, 1,000 and 10,000 dirty pages
//! with the median of each part printed per group (pause, harvest, device state, page copy,
//! resume, and the capture's minor page faults), apply on a receiving VM, the memcpy
//! baselines of the same bytes in the same run (pages scattered over 128 MiB; and contiguous
//! pages another thread has just written, as a guest's are), bitmap -> page-run conversion and
//! merging of scattered runs (`dirty_table`, no KVM), and the dirty-log harvest over the whole
//! memory, and the peer link's page path (`peer_send_pages`: 273 pages, the pause goal's
//! size, and 16 MiB of guest pages from guest memory through `PeerWriter::send_pages`,
//! loopback TCP, a reader thread's decoder and the RAM cache's store, plain and with the
//! authenticated link's MAC on both ends; pages with data, half of them zero, all zero; and the
//! memcpy of the same pages in the same run). Results and their reading:
//! docs/benchmarks.md, "VMM".
//!
//! The guest rewrites a working set of N pages every step; before each timed checkpoint it
//! runs one full step and is left running, so the timed pause stops a vCPU inside KVM_RUN and
//! each incremental carries the N pages plus the page the counter's stack and console buffer
//! touch. Without /dev/kvm the KVM groups are skipped with a message.

use colo_runtime::vmm::guest::counter_cmdline;
use colo_runtime::vmm::memory::DirtyPages;
use colo_runtime::{CheckpointKind, ConsoleOutput, Machine, MachineConfig};
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
    guest_machine_with(pages, 1)
}

fn guest_machine_with(pages: u64, vcpus: u8) -> Machine {
    let image =
        std::fs::read(colo_runtime::vmm::guest::test_guest_path()).expect("test guest built");
    let mut m = Machine::new(
        MachineConfig {
            mem_mib: MEM_MIB,
            vcpus,
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
    let gpa = colo_runtime::vmm::layout::GUEST_WORKSET_BASE + (pages - 1) * PAGE as u64;
    m.memory()
        .read_obj::<u64>(GuestAddress(gpa))
        .expect("working set inside RAM")
}

/// Resumes the guest and lets it run until it has completed at least one whole step after the
/// resume (so all `pages` working-set pages are dirty again); the guest is left running.
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
}

/// One pause -> capture -> resume, split into its parts (all measured in the same iteration).
#[derive(Clone, Copy, Debug, Default)]
struct Parts {
    /// `Machine::pause`: kick, exit from KVM_RUN, hand-off to the controller.
    pause: Duration,
    /// Dirty-log harvest (KVM log + VMM bitmap) into page ranges.
    harvest: Duration,
    /// vCPU, irqchip, PIT, clock, console, serial and net state.
    devices: Duration,
    /// Page copy into the recycled buffer.
    copy: Duration,
    /// The capture's remaining work (checks, moves).
    capture_rest: Duration,
    /// `Machine::resume`.
    resume: Duration,
    /// The whole pause -> capture -> resume.
    total: Duration,
    /// Minor page faults the capturing thread took during the capture.
    faults: u64,
    /// Pages carried.
    pages: u64,
}

/// Minor page faults of the calling thread so far (getrusage, RUSAGE_THREAD).
fn minor_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointed-to, properly sized and aligned
    // buffer and touches nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    // SAFETY: getrusage returned 0, so it initialised the struct (and zeroed() already had).
    let usage = unsafe { usage.assume_init() };
    usage.ru_minflt as u64
}

/// Pause, capture an incremental checkpoint, resume; the guest is left running.
fn timed_checkpoint(m: &mut Machine) -> (Parts, colo_runtime::Checkpoint) {
    let faults = minor_faults();
    let t0 = Instant::now();
    m.pause();
    let t1 = Instant::now();
    let (cp, s) = m.capture(CheckpointKind::Incremental).expect("capture");
    let t2 = Instant::now();
    m.resume();
    let t3 = Instant::now();
    let faults = minor_faults() - faults;
    let capture = t2 - t1;
    let parts = Parts {
        pause: t1 - t0,
        harvest: s.harvest,
        devices: s.devices,
        copy: s.copy,
        capture_rest: capture.saturating_sub(s.harvest + s.devices + s.copy),
        resume: t3 - t2,
        total: t3 - t0,
        faults,
        pages: s.pages,
    };
    (parts, cp)
}

/// Median of one part over the iterations (robust against the shared machine's stalls).
fn median_of(parts: &[Parts], f: fn(&Parts) -> Duration) -> Duration {
    let mut v: Vec<Duration> = parts.iter().map(f).collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn print_breakdown(name: &str, parts: &[Parts]) {
    let n = parts.len().max(1) as u64;
    let med = |f: fn(&Parts) -> Duration| median_of(parts, f);
    eprintln!(
        "{name}: {} iterations, mean {} pages, {} minor faults per capture; medians: total {:?} = pause {:?} + harvest {:?} + device state {:?} + page copy {:?} + capture rest {:?} + resume {:?}",
        parts.len(),
        parts.iter().map(|p| p.pages).sum::<u64>() / n,
        parts.iter().map(|p| p.faults).sum::<u64>() / n,
        med(|p| p.total),
        med(|p| p.pause),
        med(|p| p.harvest),
        med(|p| p.devices),
        med(|p| p.copy),
        med(|p| p.capture_rest),
        med(|p| p.resume),
    );
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
        m.pause();
        m.capture(CheckpointKind::Full).expect("base");
        let mut parts = Vec::new();
        group.throughput(Throughput::Bytes(pages * PAGE as u64));
        group.bench_function(BenchmarkId::from_parameter(pages), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Let the guest complete one full step and keep running, then time pause
                    // -> capture -> resume of a guest that is running in KVM_RUN (the
                    // resume's cost is included; the guest runs on afterwards).
                    run_one_full_step(&mut m, pages);
                    let (p, cp) = timed_checkpoint(&mut m);
                    total += p.total;
                    parts.push(p);
                    m.pause();
                    m.recycle(black_box(cp));
                }
                total
            })
        });
        print_breakdown(&format!("pause_capture_resume/{pages}"), &parts);
    }
    group.finish();
}

/// `Machine::pause` alone, of a guest running its counter, with 1 and 2 vCPUs (the APs wait
/// for SIPI inside KVM_RUN, so each must be kicked out of it as well).
fn pause_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("pause_vcpus");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    for vcpus in [1u8, 2] {
        let mut m = guest_machine_with(100, vcpus);
        group.bench_function(BenchmarkId::from_parameter(vcpus), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    run_one_full_step(&mut m, 100);
                    let t = Instant::now();
                    m.pause();
                    total += t.elapsed();
                }
                total
            })
        });
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
        source.pause();
        let (base, _) = source.capture(CheckpointKind::Full).expect("base");
        run_one_full_step(&mut source, pages);
        source.pause();
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

/// The memcpy baseline with a source like a checkpoint's: N contiguous pages that another
/// thread (on the other core, as the vCPU thread is) wrote just before the copy, so their
/// cache lines sit modified in that core's caches; the copy time alone is measured.
fn memcpy_after_remote_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy_after_remote_write");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    let mut src = vec![0x5au8; (MEM_MIB as usize) << 20];
    for &pages in &SIZES[1..] {
        let len = pages as usize * PAGE;
        let mut dst = vec![0u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(pages), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let area = &mut src[16 << 20..(16 << 20) + len];
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            for page in area.chunks_mut(PAGE) {
                                page[..8].copy_from_slice(&i.to_le_bytes());
                                page[8..].fill(i as u8);
                            }
                        });
                    });
                    let t = Instant::now();
                    dst.copy_from_slice(&src[16 << 20..(16 << 20) + len]);
                    total += t.elapsed();
                    black_box(&dst);
                }
                total
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
                m.pause();
                let t = Instant::now();
                black_box(m.take_dirty().expect("harvest"));
                total += t.elapsed();
            }
            total
        })
    });
    group.finish();
}

/// Turning dirty bitmaps into page ranges without KVM: 1,000 scattered dirty pages (every
/// 32nd page of 128 MiB, so 1,000 separate runs) from one bitmap, and the same merged into a
/// table of another 1,000 scattered runs (the KVM log united with the VMM bitmap, or the
/// pair's carried-over pages united with a new harvest).
fn dirty_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("dirty_table");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    let pages = (MEM_MIB << 20) / PAGE as u64;
    let scattered = |offset: u64| {
        let mut bitmap = vec![0u64; pages.div_ceil(64) as usize];
        for i in 0..1_000u64 {
            let page = i * 32 + offset;
            bitmap[(page / 64) as usize] |= 1 << (page % 64);
        }
        bitmap
    };
    let (a, b) = (scattered(0), scattered(16));
    group.bench_function("from_bitmap_1000_runs", |bench| {
        bench.iter(|| black_box(DirtyPages::from_bitmap(black_box(&a), 0, pages)))
    });
    group.bench_function("merge_1000_runs_into_1000", |bench| {
        bench.iter(|| {
            let mut table = DirtyPages::from_bitmap(black_box(&a), 0, pages);
            table.add_bitmap(black_box(&b), 0, pages);
            black_box(table)
        })
    });
    group.finish();
}

/// One loopback link for `peer_send_pages`: the writer, and a reader thread that decodes every
/// frame, stores page batches into a [`RamCache`](colo_runtime::vmm::checkpoint::RamCache) as
/// the secondary does, and reports the bulk bytes of each checkpoint when its
/// `CheckpointSent` arrives.
struct BenchLink {
    writer: colo_runtime::pair::peer::PeerWriter,
    done: std::sync::mpsc::Receiver<u64>,
}

impl BenchLink {
    fn open(sealed: bool) -> BenchLink {
        use colo_core::wire::auth::{Nonces, session};
        use colo_core::wire::{FrameDecoder, Limits, LinkSide, Message};
        use colo_runtime::pair::peer::{PeerReader, PeerWriter};
        use std::net::{TcpListener, TcpStream};

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let nonces = Nonces {
            connector: [1; 32],
            acceptor: [2; 32],
        };
        let key = [7u8; 32];
        let (tx_session, rx_session) = (
            session(&key, LinkSide::Connector, &nonces),
            session(&key, LinkSide::Acceptor, &nonces),
        );
        let (writer, decoder) = if sealed {
            (
                PeerWriter::sealed(client, tx_session.send),
                FrameDecoder::sealed(Limits::default(), rx_session.receive),
            )
        } else {
            (
                PeerWriter::new(client),
                FrameDecoder::new(Limits::default()),
            )
        };
        let (done_tx, done) = std::sync::mpsc::channel();
        let mut bytes = 0u64;
        let mut cache = colo_runtime::vmm::checkpoint::RamCache::new(MEM_MIB << 20);
        let on_frame = move |m: Message, bulk: &[u8]| {
            if let Message::PageBatch { ranges, zero, .. } = &m {
                cache
                    .store(ranges, zero, bulk)
                    .expect("pages inside memory");
                bytes += bulk.len() as u64;
            }
            if matches!(m, Message::CheckpointSent { .. }) {
                let _ = done_tx.send(std::mem::take(&mut bytes));
            }
            true
        };
        PeerReader::spawn(server, decoder, on_frame, |_| {}).unwrap();
        BenchLink { writer, done }
    }

    /// Sends `pages` of `mem` as one checkpoint and waits until the reader had all of it.
    fn checkpoint(
        &mut self,
        mem: &colo_runtime::vmm::memory::GuestMemory,
        pages: &[colo_core::ids::PageRange],
    ) {
        use colo_core::ids::Epoch;
        use colo_core::wire::Message;
        let sent = self
            .writer
            .send_pages(mem, pages, |batch, ranges, zero| Message::PageBatch {
                epoch: Epoch(1),
                batch,
                ranges,
                zero,
            })
            .unwrap();
        self.writer
            .send(
                &Message::CheckpointSent {
                    epoch: Epoch(1),
                    batches: sent.batches,
                    pages: sent.pages,
                    bytes: sent.bytes,
                },
                &[],
            )
            .unwrap();
        assert_eq!(self.done.recv().unwrap(), sent.bytes);
    }
}

/// Guest pages over loopback TCP from guest memory to a decoding reader thread that stores them
/// into a RAM cache, plain and sealed (BLAKE3 keyed MAC hashed as the pages stream, verified
/// before delivery): the pause goal's ~273 pages (1.1 MB), and 16 MiB with every page holding
/// data, with every second page zero and with every page zero (zero pages travel as a bit in
/// the frame's map); each group with the memcpy of the same pages in the same run.
fn peer_send_pages(c: &mut Criterion) {
    use colo_core::ids::PageRange;

    const PAGES: u64 = 4096;
    /// The pause goal's checkpoint: ~273 pages (1.1 MB), what `colo bench` carries per `NONCE`.
    const PAUSE_PAGES: usize = 273;
    let mem = colo_runtime::vmm::memory::create(MEM_MIB << 20).expect("guest memory");
    // Every other page of the first 32 MiB, with distinct bytes; the same pattern 32 MiB up
    // with every second page of it left zero, and 64 MiB up with all of them zero.
    let ranges_at = |base: u64| -> Vec<PageRange> {
        (0..PAGES)
            .map(|i| PageRange {
                first: base + i * 2,
                count: 1,
            })
            .collect()
    };
    let (data, half, zero) = (ranges_at(0), ranges_at(8192), ranges_at(16384));
    for (i, r) in data.iter().chain(half.iter().step_by(2)).enumerate() {
        mem.write_slice(&[i as u8 | 1; PAGE], GuestAddress(r.first * PAGE as u64))
            .unwrap();
    }
    let mut links = [BenchLink::open(false), BenchLink::open(true)];
    let link_name = |sealed: usize| if sealed == 1 { "sealed" } else { "plain" };
    let mut copy = vec![0u8; (PAGES as usize) * PAGE];
    let mut memcpy_of = |bench: &mut criterion::Bencher<'_>, pages: &[PageRange]| {
        bench.iter(|| {
            for (r, to) in pages.iter().zip(copy.chunks_exact_mut(PAGE)) {
                mem.read_slice(to, GuestAddress(r.first * PAGE as u64))
                    .unwrap();
            }
            black_box(&copy);
        })
    };

    // The pause's size: 273 scattered data pages, each case the same pages.
    let small = &data[..PAUSE_PAGES];
    let mut group = c.benchmark_group("peer_send_pages_273");
    group.throughput(Throughput::Bytes((PAUSE_PAGES * PAGE) as u64));
    group.sample_size(50);
    group.bench_function("memcpy", |bench| memcpy_of(bench, small));
    for (i, link) in links.iter_mut().enumerate() {
        group.bench_function(link_name(i), |bench| {
            bench.iter(|| link.checkpoint(&mem, small))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("peer_send_pages_16MiB");
    group.throughput(Throughput::Bytes(PAGES * PAGE as u64));
    group.sample_size(20);
    group.bench_function("memcpy", |bench| memcpy_of(bench, &data));
    for (i, link) in links.iter_mut().enumerate() {
        for (pages, what) in [(&data, ""), (&half, "_half_zero"), (&zero, "_all_zero")] {
            group.bench_function(format!("{}{what}", link_name(i)), |bench| {
                bench.iter(|| link.checkpoint(&mem, pages))
            });
        }
    }
    group.finish();
    for link in links {
        link.writer.close();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    memcpy(&mut c);
    memcpy_after_remote_write(&mut c);
    dirty_table(&mut c);
    peer_send_pages(&mut c);
    if kvm_present() {
        pause_capture_resume(&mut c);
        pause_only(&mut c);
        apply(&mut c);
        harvest(&mut c);
    } else {
        eprintln!("SKIPPED the KVM benchmarks: /dev/kvm cannot be opened");
    }
    c.final_summary();
}
