//! The disk-writer workload: at step s it writes one 4 KiB slot of the disk (slot s mod
//! `slots`) with content that depends only on (seed, s, slot), reads it back, and checks that
//! the slot written at step s - 1 still holds that step's content; every `print_every` steps it
//! checks every slot written so far, flushes and prints a progress line.
//!
//! Invariant kept (and checked by the guest itself): each slot holds the content of the last
//! step that wrote it. A disk that lost a write the guest saw completed, or kept one from a
//! future the VM never lived (a dead primary's write after the last checkpoint), makes the
//! guest panic instead of silently continuing; two VMs at the same step see identical disks.

use crate::config::Config;
use crate::println;
use crate::virtio_blk::{MAX_BYTES, SECTOR, VirtioBlk};

const SLOT_SECTORS: u64 = (MAX_BYTES / SECTOR) as u64;

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The content step `step` writes into `slot`: word 0 is the step, then a stream.
fn content(seed: u64, step: u64, slot: u64, out: &mut [u8; MAX_BYTES]) {
    let mut x = mix(seed ^ (step << 20) ^ slot);
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        let word = if i == 0 {
            step
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

/// The last step at or before `step` that wrote `slot` (0 if none).
fn last_writer(step: u64, slot: u64, slots: u64) -> u64 {
    if step == 0 {
        return 0;
    }
    let back = (step % slots + slots - slot) % slots;
    step.saturating_sub(back)
}

/// Checks that `slot` holds what its last writer up to `step` wrote; returns that step.
fn check(
    disk: &mut VirtioBlk,
    seed: u64,
    slots: u64,
    step: u64,
    slot: u64,
    bufs: &mut ([u8; MAX_BYTES], [u8; MAX_BYTES]),
) -> u64 {
    let writer = last_writer(step, slot, slots);
    if writer == 0 {
        return 0;
    }
    let (want, got) = bufs;
    content(seed, writer, slot, want);
    if let Err(e) = disk.read(slot * SLOT_SECTORS, got) {
        panic!("disk read of slot {slot} failed: {e:?}");
    }
    if got != want {
        let found = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
        panic!("disk slot {slot} holds step {found}, expected step {writer}");
    }
    writer
}

/// The counter's disk companion: one slot written and checked per counter step.
pub struct StepDisk {
    disk: VirtioBlk,
    seed: u64,
    slots: u64,
    bufs: ([u8; MAX_BYTES], [u8; MAX_BYTES]),
}

impl StepDisk {
    /// Brings the device up for `slots` slots (panics if it cannot: the VMM was told to
    /// attach a disk).
    pub fn new(seed: u64, slots: u64, index: u64) -> StepDisk {
        let disk = VirtioBlk::init(index).unwrap_or_else(|e| panic!("virtio-blk: {e:?}"));
        if disk.capacity() < slots * SLOT_SECTORS {
            panic!(
                "disk of {} sectors is smaller than {slots} slots",
                disk.capacity()
            );
        }
        StepDisk {
            disk,
            seed,
            slots,
            bufs: ([0u8; MAX_BYTES], [0u8; MAX_BYTES]),
        }
    }

    /// Step `step`: writes its slot, checks it and the previous step's.
    pub fn step(&mut self, step: u64) {
        let slot = step % self.slots;
        content(self.seed, step, slot, &mut self.bufs.0);
        if let Err(e) = self.disk.write(slot * SLOT_SECTORS, &self.bufs.0) {
            panic!("disk write at step {step} failed: {e:?}");
        }
        let (seed, slots) = (self.seed, self.slots);
        check(&mut self.disk, seed, slots, step, slot, &mut self.bufs);
        check(
            &mut self.disk,
            seed,
            slots,
            step,
            (step - 1) % slots,
            &mut self.bufs,
        );
    }
}

pub fn run(config: &Config) -> ! {
    let mut disk = match VirtioBlk::init(config.disk_index) {
        Ok(d) => d,
        Err(e) => panic!("virtio-blk: {e:?}"),
    };
    let slots = config.pages.max(1);
    if disk.capacity() < slots * SLOT_SECTORS {
        panic!(
            "disk of {} sectors is smaller than {slots} slots of {SLOT_SECTORS}",
            disk.capacity()
        );
    }
    println!(
        "colo-guest: disk-writer workload, slots {slots}, steps {}, print_every {}, seed {}",
        config.steps, config.print_every, config.seed
    );
    let mut bufs = ([0u8; MAX_BYTES], [0u8; MAX_BYTES]);
    let seed = config.seed;
    let mut step: u64 = 0;
    loop {
        step += 1;
        let slot = step % slots;
        content(seed, step, slot, &mut bufs.0);
        if let Err(e) = disk.write(slot * SLOT_SECTORS, &bufs.0) {
            panic!("disk write at step {step} failed: {e:?}");
        }
        check(&mut disk, seed, slots, step, slot, &mut bufs);
        check(&mut disk, seed, slots, step, (step - 1) % slots, &mut bufs);
        for i in 0..config.spin {
            core::hint::black_box(i);
        }
        if step.is_multiple_of(config.print_every) {
            let mut sum = 0u64;
            for s in 0..slots {
                sum = sum.wrapping_add(mix(check(&mut disk, seed, slots, step, s, &mut bufs) ^ s));
            }
            if let Err(e) = disk.flush() {
                panic!("disk flush failed: {e:?}");
            }
            println!("colo-guest: disk step {step} checksum {sum:016x}");
        }
        if config.steps != 0 && step >= config.steps {
            println!("colo-guest: done after {step} steps");
            crate::console::exit(0);
        }
    }
}
