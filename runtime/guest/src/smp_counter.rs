//! The smp-counter workload: every CPU the MADT lists runs the counter on its own slice of
//! the working set. At step s, CPU v checks that each of its `pages` pages still holds
//! exactly what its step s - 1 wrote (every word), then rewrites it with content that depends
//! only on (seed, s, v, page), and publishes s in `smp::CPUS[v].step`. CPU 0 prints every
//! CPU's step every `print_every` of its own steps.
//!
//! Invariant kept (and checked by each CPU itself): at the start of CPU v's step s, its slice
//! is byte for byte the content of (seed, s - 1, v), all zeros for s = 1. A checkpoint that
//! lost, mixed up or tore a page of ANY CPU therefore makes that CPU panic, and two VMs paused
//! with the same per-CPU steps hold identical working sets (comparable memory digests).
//! CPU v's slice starts at `abi::WORKSET_BASE + v * pages` pages, so a page is written by
//! exactly one CPU.

use crate::abi;
use crate::config::Config;
use crate::smp::{self, CPUS};
use core::sync::atomic::{AtomicU64, Ordering};

const WORDS_PER_PAGE: usize = (abi::PAGE_SIZE / 8) as usize;

/// The knobs the APs need, published by CPU 0 before it starts them.
static PAGES: AtomicU64 = AtomicU64::new(0);
static SEED: AtomicU64 = AtomicU64::new(0);
static SPIN: AtomicU64 = AtomicU64::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);

/// splitmix64, as the counter workload.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// The first word of the sequence filling (step, cpu, page).
fn start(seed: u64, step: u64, cpu: u64, page: u64) -> u64 {
    mix(seed ^ (step << 20) ^ page ^ (cpu << 48))
}

/// One step of CPU `cpu`: check step - 1's content, write step's; returns a checksum.
fn step_once(cpu: u64, step: u64) -> u64 {
    let (pages, seed) = (PAGES.load(Ordering::Relaxed), SEED.load(Ordering::Relaxed));
    let mut checksum = 0u64;
    for page in 0..pages {
        let addr = abi::WORKSET_BASE + (cpu * pages + page) * abi::PAGE_SIZE;
        // SAFETY: CPU 0 checked that every CPU's slice lies inside RAM; the page is
        // identity-mapped with the U bit and written by no other CPU.
        let words = unsafe { core::slice::from_raw_parts_mut(addr as *mut u64, WORDS_PER_PAGE) };
        let prev = step - 1;
        if words[0] != prev {
            panic!(
                "cpu {cpu} page {page} holds step {}, expected {prev}",
                words[0]
            );
        }
        let mut old = if prev == 0 {
            0
        } else {
            start(seed, prev, cpu, page)
        };
        let mut new = start(seed, step, cpu, page);
        words[0] = step;
        for (i, word) in words.iter_mut().enumerate().skip(1) {
            if prev != 0 {
                old = xorshift(old);
            }
            if *word != old {
                panic!("cpu {cpu} page {page} word {i} is not what step {prev} wrote");
            }
            new = xorshift(new);
            *word = new;
        }
        checksum = checksum.wrapping_add(mix(new ^ page));
    }
    for i in 0..SPIN.load(Ordering::Relaxed) {
        core::hint::black_box(i);
    }
    CPUS[cpu as usize].step.store(step, Ordering::Release);
    checksum
}

/// What every AP runs.
extern "C" fn ap_main(cpu: u64) -> ! {
    let steps = STEPS.load(Ordering::Relaxed);
    let mut step = 0;
    while steps == 0 || step < steps {
        step += 1;
        step_once(cpu, step);
    }
    // Done: halt for good (no interrupt is routed to an AP).
    loop {
        crate::irq::halt_until_interrupt(crate::irq::count());
    }
}

pub fn run(config: &Config, mem_size: u64) -> ! {
    let ids = smp::madt_apic_ids();
    let cpus = ids.len().clamp(1, abi::MAX_CPUS) as u64;
    let need = abi::WORKSET_BASE + cpus * config.pages * abi::PAGE_SIZE;
    if need > mem_size {
        panic!(
            "{cpus} CPUs x {} pages need {need:#x} bytes of memory, the VM has {mem_size:#x}",
            config.pages
        );
    }
    PAGES.store(config.pages, Ordering::Relaxed);
    SEED.store(config.seed, Ordering::Relaxed);
    SPIN.store(config.spin, Ordering::Relaxed);
    STEPS.store(config.steps, Ordering::Relaxed);
    crate::println!(
        "colo-guest: smp-counter workload, MADT APIC ids {ids:?}, pages {} per cpu, steps {}, print_every {}, seed {}",
        config.pages,
        config.steps,
        config.print_every,
        config.seed
    );
    // Generous: a start takes a few hundred emulated instructions and a few exits.
    let spin_limit = config.tsc_khz.saturating_mul(20_000);
    let (started, ticks) = smp::start_aps(&ids, ap_main, spin_limit);
    crate::println!(
        "colo-guest: {started} cpus online, slowest AP start {} us",
        ticks / (config.tsc_khz / 1000).max(1)
    );
    let mut step = 0u64;
    loop {
        step += 1;
        let checksum = step_once(0, step);
        if step.is_multiple_of(config.print_every) {
            let mut line = crate::console::Line::new();
            use core::fmt::Write;
            let _ = write!(
                line,
                "colo-guest: step {step} checksum {checksum:016x} cpu-steps"
            );
            for slot in &CPUS[..started] {
                let _ = write!(line, " {}", slot.step.load(Ordering::Acquire));
            }
            let _ = writeln!(line);
            line.flush();
        }
        if config.steps != 0 && step >= config.steps {
            // Wait for the APs to finish theirs, so "done" means every CPU is done.
            while CPUS[1..started]
                .iter()
                .any(|s| s.step.load(Ordering::Acquire) < config.steps)
            {
                core::hint::spin_loop();
            }
            crate::println!("colo-guest: done after {step} steps on {started} cpus");
            crate::console::exit(0);
        }
    }
}
