//! Shared helpers of the KVM integration tests: the skip-or-fail rule for /dev/kvm and a
//! ready-to-run test-guest machine.
#![allow(dead_code)] // each test binary uses a different subset

pub mod linux;
pub mod procs;
pub mod proxy;
pub mod two_hosts;

use colo_runtime::vmm::devices::console::OutputCapture;
use colo_runtime::{ConsoleOutput, Machine, MachineConfig};

/// True if /dev/kvm can be used. Without it the test is skipped with a message, unless
/// COLO_REQUIRE_KVM=1 (set by .ci/run), in which case it fails: CI can never pass by skipping.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("COLO_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!(
                    "{test}: /dev/kvm is required (COLO_REQUIRE_KVM=1) but cannot be opened: {e}"
                );
            }
            eprintln!(
                "SKIPPED {test}: /dev/kvm cannot be opened ({e}); set COLO_REQUIRE_KVM=1 to make this a failure"
            );
            false
        }
    }
}

/// The test guest ELF.
pub fn guest_image() -> Vec<u8> {
    std::fs::read(colo_runtime::vmm::guest::test_guest_path())
        .expect("the build script built the test guest")
}

/// A paused machine with the test guest loaded, its console captured.
pub fn guest_machine(mem_mib: u64, cmdline: &str) -> (Machine, OutputCapture) {
    let capture = OutputCapture::new();
    let mut machine = Machine::new(
        MachineConfig { mem_mib, vcpus: 1 },
        ConsoleOutput::Capture(capture.clone()),
    )
    .expect("creating a VM");
    machine
        .load_test_guest(&guest_image(), cmdline)
        .expect("loading the test guest");
    (machine, capture)
}

/// The step numbers of the guest's progress lines, in order.
pub fn steps(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("colo-guest: step "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The counter guest's step number: word 0 of its last working-set page.
pub fn guest_step(machine: &Machine, pages: u64) -> u64 {
    use vm_memory::{Bytes, GuestAddress};
    let gpa = colo_runtime::vmm::layout::GUEST_WORKSET_BASE
        + (pages - 1) * colo_runtime::vmm::layout::PAGE_SIZE;
    machine
        .memory()
        .read_obj::<u64>(GuestAddress(gpa))
        .expect("working set inside RAM")
}

/// Resumes the counter guest until it has completed at least one whole step after the
/// resume (all `pages` working-set pages rewritten), then pauses it. Waiting on the guest's
/// own progress, not on a sleep, keeps the tests deterministic on a loaded machine.
pub fn run_one_full_step(machine: &mut Machine, pages: u64) {
    let start = guest_step(machine, pages);
    machine.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while guest_step(machine, pages) < start + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest made no progress in 20 s"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    machine.pause();
}

/// A control-socket path no other test uses (temp dir, this process, a counter).
pub fn control_path() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir()
        .join(format!("colo-test-{}-{n}.sock", std::process::id()))
        .to_string_lossy()
        .into_owned()
}

/// True if network namespaces and taps can be used (root, the `ip` tool and /dev/net/tun).
/// Without them the test is skipped with a message, unless COLO_REQUIRE_NET=1 makes it a
/// failure.
pub fn net_available(test: &str) -> bool {
    let ip = std::process::Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok();
    // Namespaces, taps and bridges need CAP_NET_ADMIN: only root is assumed to have it.
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                == Some("0")
        })
        .unwrap_or(false);
    if ip && tun && root {
        return true;
    }
    let why = format!("ip tool usable: {ip}, /dev/net/tun usable: {tun}, root: {root}");
    if std::env::var("COLO_REQUIRE_NET").as_deref() == Ok("1") {
        panic!("{test}: network namespaces are required (COLO_REQUIRE_NET=1): {why}");
    }
    eprintln!("SKIPPED {test}: {why}; set COLO_REQUIRE_NET=1 to make this a failure");
    false
}

/// A namespace name unique to this process and call (at most 15 bytes are not needed for
/// namespaces, but the name stays short and recognisable: `colo-<pid>-<n>`).
pub fn unique_netns_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "colo-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
