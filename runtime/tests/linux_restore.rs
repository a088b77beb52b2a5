//! A real Linux kernel's state survives a save and a restore in another process: Debian's
//! cloud kernel (the vmlinux scripts/setup-guest-assets.sh extracts) boots under `colo run`
//! until `--save-after` pauses it and writes its state, and `colo restore` continues the same
//! boot from that file (both through the real `colo` binary).
//!
//! Under this machine's kvm_pvm the kernel's ring-0 code runs in KVM's instruction emulator:
//! its boot log reaches `Memory:` after ~35 s of guest time and the kernel stops at its int3
//! self-test after ~60-90 s of wall time (docs/vmm.md). The save is placed inside that window;
//! the restored console must continue it (common::linux::check_continuation: later lines in
//! order, nothing repeated, no panic, no clock step the wall clock does not explain).

mod common;

use common::linux::{self, SeenLine};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Wall time into the boot when the state is saved: past "Linux version" (~15-20 s here) and
/// well before the kernel stops (~60-90 s), wherever the boot is on a loaded machine.
const SAVE_AFTER_MS: &str = "40000";
/// Upper bound for each process: the boot stops by itself well before this.
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// Runs `colo args...`, returning its stdout lines (stamped when read) and its stderr.
fn colo(args: &[&str]) -> (Vec<SeenLine>, String, Option<i32>) {
    let started = Instant::now();
    let mut child = Command::new(common::procs::COLO)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting colo");
    let (tx, rx) = mpsc::channel();
    linux::stamp_lines(child.stdout.take().expect("piped"), tx);
    let mut stderr = child.stderr.take().expect("piped");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let lines = linux::collect(&rx, RUN_LIMIT);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT + Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("colo {args:?} did not finish in {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (lines, err.join().unwrap_or_default(), status.code())
}

#[test]
fn restored_linux_continues_its_boot_log_without_repeats_or_clock_jumps() {
    let test = "restored_linux_continues_its_boot_log_without_repeats_or_clock_jumps";
    if !common::kvm_available(test) {
        return;
    }
    let Some(kernel) = linux::vmlinux(test) else {
        return;
    };
    let state =
        std::env::temp_dir().join(format!("colo-linux-restore-{}.state", std::process::id()));
    let state_arg = state.to_string_lossy().into_owned();
    let kernel_arg = kernel.to_string_lossy().into_owned();

    let (mut before, err, code) = colo(&[
        "run",
        "--guest",
        &kernel_arg,
        "--kind",
        "linux",
        "--memory",
        linux::MEMORY_MIB,
        "--cmdline",
        linux::CMDLINE,
        "--save-after",
        SAVE_AFTER_MS,
        "--state-out",
        &state_arg,
    ]);
    assert_eq!(code, Some(0), "the first run did not save: {err}");
    assert!(err.contains("state saved"), "{err}");

    let (mut after, err, code) = colo(&["restore", "--state", &state_arg, "--timeout", "120"]);
    let _ = std::fs::remove_file(&state);
    // The boot ends where the emulator cannot go on (exit 2, an emulation failure) or, on a
    // faster host, at the timeout (exit 0).
    assert!(
        matches!(code, Some(0 | 2)),
        "the restore failed ({code:?}): {err}"
    );
    assert!(
        !after.iter().any(|l| l.text.contains("Linux version")),
        "the restored VM booted again"
    );
    linux::join_cut(&mut before, &mut after);
    let seen = linux::check_continuation(&before, &after).unwrap_or_else(|why| panic!("{why}"));
    eprintln!(
        "restore: {} kernel lines after the cut, milestones {:?}, printk step {:.3} s over {:.3} s of wall time; restore stderr: {}",
        seen.lines_after,
        seen.milestones_after,
        seen.clock_step,
        seen.wall_step,
        err.trim()
    );
    assert!(
        seen.milestones_after.len() >= 2,
        "the restored boot reached too few milestones: {:?}",
        seen.milestones_after
    );
}

/// The continuity check itself, on made-up logs: it accepts a continued boot and rejects a
/// repeated line, a milestone out of order, a clock going backwards and a clock jump.
#[test]
fn continuity_check_rejects_repeats_reordering_and_clock_jumps() {
    let t0 = Instant::now();
    let line = |wall_ms: u64, text: &str| SeenLine {
        at: t0 + Duration::from_millis(wall_ms),
        text: text.to_string(),
        complete: true,
    };
    let before = vec![
        line(0, "[    0.000000] Linux version 6.1"),
        line(100, "[    0.100000] Hypervisor detected: KVM"),
        line(2_000, "[    2.000000] Kernel command line: x"),
    ];
    let good = vec![
        line(9_000, "[    8.500000] Memory: 1K/2K available"),
        line(9_500, "[    9.400000] SLUB: HWalign=64"),
    ];
    let seen = linux::check_continuation(&before, &good).expect("a continued boot");
    assert_eq!(seen.milestones_after, ["Memory: ", "SLUB: "]);
    assert!((seen.clock_step - 6.5).abs() < 1e-9);
    let rejected = |after: Vec<SeenLine>| linux::check_continuation(&before, &after).is_err();
    assert!(rejected(vec![line(
        9_000,
        "[    2.000000] Kernel command line: x"
    )]));
    assert!(rejected(vec![line(
        9_000,
        "[    8.500000] Hypervisor detected: KVM"
    )]));
    assert!(rejected(vec![line(9_000, "[    1.500000] Memory: 1K")]));
    assert!(rejected(vec![line(9_000, "[   60.000000] Memory: 1K")]));
    assert!(rejected(vec![line(
        9_000,
        "[    8.500000] Kernel panic - not syncing"
    )]));
}
