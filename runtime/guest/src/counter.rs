//! The counter workload: at step s it rewrites every page of the working set with content
//! that depends only on (seed, s, page), checks what the previous step left there, and prints
//! progress every `print_every` steps.
//!
//! Invariant kept (and checked by the guest itself): at the start of step s, word 0 of every
//! working-set page holds s - 1. A restore that lost or mixed up memory therefore makes the
//! guest panic instead of silently continuing, and two VMs at the same step hold
//! byte-identical working sets, so their memory hashes are comparable. With
//! `colo.disk_slots=N` each step also writes and checks one 4 KiB slot of the virtio-blk disk
//! (`disk::StepDisk`; of each of the `colo.disks=D` disks from `colo.disk_index` on), so a
//! replicated pair's disks change between checkpoints too.

use crate::abi;
use crate::config::Config;
use crate::println;

const WORDS_PER_PAGE: usize = (abi::PAGE_SIZE / 8) as usize;

/// splitmix64: cheap, deterministic, well mixed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn run(config: &Config, mem_size: u64) -> ! {
    let base = abi::WORKSET_BASE;
    let need = base + config.pages * abi::PAGE_SIZE;
    if need > mem_size {
        panic!(
            "working set of {} pages needs {need:#x} bytes of memory, the VM has {mem_size:#x}",
            config.pages
        );
    }
    println!(
        "colo-guest: counter workload, pages {}, steps {}, print_every {}, seed {}",
        config.pages, config.steps, config.print_every, config.seed
    );
    // With disks, each step also writes and checks one slot of each (see `disk`): devices
    // `disk_index` .. `disk_index + disks`, each with its own seed.
    let mut disks: alloc::vec::Vec<crate::disk::StepDisk> = if config.disk_slots > 0 {
        (0..config.disks)
            .map(|d| {
                crate::disk::StepDisk::new(
                    config.seed + 1000 * d,
                    config.disk_slots,
                    config.disk_index + d,
                )
            })
            .collect()
    } else {
        alloc::vec::Vec::new()
    };
    let mut step: u64 = 0;
    loop {
        step += 1;
        let mut checksum = 0u64;
        for page in 0..config.pages {
            let ptr = (base + page * abi::PAGE_SIZE) as *mut u64;
            // SAFETY: the page lies inside guest RAM (checked above), is identity-mapped with
            // the U bit, and belongs to nobody but this workload.
            let words = unsafe { core::slice::from_raw_parts_mut(ptr, WORDS_PER_PAGE) };
            if words[0] != step - 1 {
                panic!(
                    "working-set page {page} holds step {}, expected {}",
                    words[0],
                    step - 1
                );
            }
            let mut x = mix(config.seed ^ (step << 20) ^ page);
            words[0] = step;
            for word in words.iter_mut().skip(1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *word = x;
            }
            checksum = checksum.wrapping_add(mix(x ^ page));
        }
        for d in &mut disks {
            d.step(step);
        }
        for i in 0..config.spin {
            core::hint::black_box(i);
        }
        if step.is_multiple_of(config.print_every) {
            println!("colo-guest: step {step} checksum {checksum:016x}");
        }
        if config.steps != 0 && step >= config.steps {
            println!("colo-guest: done after {step} steps");
            crate::console::exit(0);
        }
    }
}
