//! The Linux loader on real KVM: Debian's cloud kernel (fetched by
//! scripts/setup-guest-assets.sh, never committed) prints its first bytes over the 16550.
//!
//! Under this machine's kvm_pvm a stock kernel's ring-0 code runs in KVM's instruction
//! emulator, so only the start of the boot is checked (deps-spike.md section 5: the
//! decompressor's first bytes after ~2 s); on hardware KVM the same path boots fully. Debian's
//! kernel is built without CONFIG_X86_VERBOSE_BOOTUP, so its decompressor prints nothing by
//! default; `nokaslr` makes it print "KASLR disabled" (arch/x86/boot/compressed/kaslr.c) as
//! soon as it has parsed the command line and set up the early serial console, which proves
//! the zero page, the command line, the 64-bit entry and the 16550 path together.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn kernel_path() -> PathBuf {
    match std::env::var_os("COLO_LINUX_KERNEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/linux/vmlinuz"),
    }
}

#[test]
fn debian_cloud_kernel_prints_over_the_16550() {
    if !common::kvm_available("debian_cloud_kernel_prints_over_the_16550") {
        return;
    }
    let path = kernel_path();
    let Ok(kernel) = std::fs::read(&path) else {
        if std::env::var("COLO_REQUIRE_LINUX_KERNEL").as_deref() == Ok("1") {
            panic!(
                "{} is required (COLO_REQUIRE_LINUX_KERNEL=1); run scripts/setup-guest-assets.sh",
                path.display()
            );
        }
        eprintln!(
            "SKIPPED debian_cloud_kernel_prints_over_the_16550: no kernel at {}; run scripts/setup-guest-assets.sh",
            path.display()
        );
        return;
    };
    let (mut machine, capture) = common::linux::serial_boot_vm(&kernel);
    let start = Instant::now();
    machine.resume();
    let (text, ok) = capture.wait_until(Duration::from_secs(30), |t| t.contains("KASLR disabled"));
    let elapsed = start.elapsed();
    let stop = machine.wait_for_stop(Duration::ZERO);
    machine.pause();
    eprintln!("first serial output after {elapsed:?}: {text:?}");
    assert!(
        ok,
        "no decompressor output within 30 s (stop: {stop:?}); serial so far: {text:?}"
    );
}
