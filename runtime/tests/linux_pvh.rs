//! The PVH entry on real KVM: Debian's cloud vmlinux (assets/linux/vmlinux, extracted from the
//! bzImage by scripts/setup-guest-assets.sh, never committed) carries the
//! XEN_ELFNOTE_PHYS32_ENTRY note, so `Machine::load_linux` enters it in 32-bit protected mode
//! with EBX = hvm_start_info; the kernel must find its command line there (it enables the
//! early 16550 console from it) and print its banner, "Linux version", over the 16550.
//!
//! Under kvm_pvm the kernel's ring-0 code runs in KVM's instruction emulator, so the test
//! stops at the banner; it is bounded by a 150 s wait.

mod common;

use std::time::{Duration, Instant};

/// The bound on the wait (COLO_PVH_WAIT_SECS overrides it for manual runs).
fn wait_secs() -> u64 {
    std::env::var("COLO_PVH_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

#[test]
fn debian_vmlinux_booted_through_pvh_prints_its_banner_over_the_16550() {
    if !common::kvm_available("debian_vmlinux_booted_through_pvh_prints_its_banner") {
        return;
    }
    let Some(path) = common::linux::vmlinux("debian_vmlinux_booted_through_pvh_prints_its_banner")
    else {
        return;
    };
    let kernel = std::fs::read(&path).expect("reading the vmlinux");
    let (mut machine, capture) = common::linux::serial_boot_vm(&kernel);
    let start = Instant::now();
    machine.resume();
    let (text, ok) = capture.wait_until(Duration::from_secs(wait_secs()), |t| {
        t.contains("Linux version")
    });
    let elapsed = start.elapsed();
    let stop = machine.wait_for_stop(Duration::ZERO);
    machine.pause();
    let state = machine.save_devices().expect("vCPU state");
    let (regs, sregs) = (state.vcpus[0].regs, state.vcpus[0].sregs);
    eprintln!(
        "vCPU 0: rip {:#x} rsp {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs.l {}",
        regs.rip, regs.rsp, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, sregs.cs.l
    );
    eprintln!(
        "banner after {elapsed:?}; serial: {:?}",
        &text[..text.len().min(400)]
    );
    assert!(
        ok,
        "no banner in time (stop: {stop:?}); serial so far: {text:?}"
    );
}
