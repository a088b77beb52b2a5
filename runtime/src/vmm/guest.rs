//! Where colo's test guest is: `build.rs` builds `runtime/guest` on every build of this crate
//! and records the ELF's path, so tests, benchmarks and the CLI always run the guest that
//! matches the source tree.

use std::path::Path;

/// Path of the test guest ELF built by this crate's build script.
pub fn test_guest_path() -> &'static Path {
    Path::new(env!("COLO_TEST_GUEST"))
}

/// A test-guest command line running the counter workload.
///
/// `pages`: working-set pages rewritten per step; `steps`: stop after this many (0 = never);
/// `print_every`: progress line period; `spin`: busy-loop iterations per step.
pub fn counter_cmdline(pages: u64, steps: u64, print_every: u64, spin: u64) -> String {
    format!(
        "colo.workload=counter colo.pages={pages} colo.steps={steps} colo.print_every={print_every} colo.spin={spin}"
    )
}

/// A test-guest command line running the disk-writer workload: one 4 KiB slot of the
/// virtio-blk disk written, read back and checked per step over `slots` slots (the disk needs
/// `slots * 4096` bytes), every slot checked and the disk flushed every `print_every` steps.
pub fn disk_writer_cmdline(slots: u64, steps: u64, print_every: u64, spin: u64) -> String {
    format!(
        "colo.workload=disk-writer colo.pages={slots} colo.steps={steps} colo.print_every={print_every} colo.spin={spin}"
    )
}

/// A test-guest command line running the idle workload: halt, wake on interrupts routed from
/// IOAPIC input `gsi`, exit after `wakes` wake-ups (0 = never).
pub fn idle_cmdline(gsi: u32, wakes: u64) -> String {
    format!("colo.workload=idle colo.irq={gsi} colo.steps={wakes}")
}

/// A test-guest command line running the net-server workload: smoltcp over virtio-net at
/// `cidr` (`10.0.0.2/24`), serving the kv line protocol on TCP `port`; `tsc_khz` is the
/// guest's clock ([`crate::Machine::tsc_khz`]).
pub fn net_server_cmdline(cidr: &str, port: u16, tsc_khz: u32) -> String {
    format!("colo.workload=net-server colo.ip={cidr} colo.port={port} colo.tsc_khz={tsc_khz}")
}
