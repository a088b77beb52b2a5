//! The Linux-guest tests' shared part: where Debian's uncompressed kernel is (and the
//! skip-or-fail rule when it is missing), the command line that gets it furthest under this
//! machine's kvm_pvm (docs/vmm.md, "Debian's kernel under kvm_pvm"), console lines stamped
//! with the wall time the test saw them, and the one continuity check both the restore and the
//! failover tests apply: a console that continues a boot from a cut point repeats nothing from
//! before the cut, keeps the boot's milestones in order, shows no panic or oops, and its printk
//! clock never goes backwards nor runs ahead of the wall clock; and the VM the loader's serial
//! tests boot.
#![allow(dead_code)] // each test binary uses a different subset

use colo_runtime::vmm::devices::console::OutputCapture;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The command line measured to print Debian's boot log furthest and fastest here: the serial
/// console from the start (earlyprintk), printk timestamps, one CPU, no KASLR, the CPUID
/// features and xsave whose instructions KVM's emulator lacks switched off (deps-spike.md
/// section 5), no mitigations, watchdog, audit or PCI probing.
pub const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 printk.time=1 nokaslr \
nosmp noxsave clearcpuid=cx16,popcnt,movbe,bmi1,bmi2,rdrand,rdseed,fsgsbase,rdpid,sse4_2,aes,\
pclmulqdq,avx,avx2,avx512f,sha_ni,adx mitigations=off nowatchdog audit=0 pci=off";

/// Guest RAM for the Linux tests (MiB): the kernel image needs ~33 MiB; more only slows the
/// boot (struct-page init is emulated) and the state transfers.
pub const MEMORY_MIB: &str = "64";

/// Boot-log lines that every boot prints once, in this order, up to where the kernel stops
/// here (the alternatives' int3 self-test right after the FPU line).
pub const MILESTONES: &[&str] = &[
    "Linux version ",
    "Command line: ",
    "Hypervisor detected: KVM",
    "Booting paravirtualized kernel on KVM",
    "setup_percpu: ",
    "Kernel command line: ",
    "Memory: ",
    "SLUB: ",
    "ftrace: allocating ",
    "ftrace: allocated ",
    "rcu: Preemptible hierarchical RCU implementation.",
    "NR_IRQS: ",
    "Console: colour dummy device",
    "x86/fpu: x87 FPU will use FXSAVE",
];

/// Debian's vmlinux (COLO_LINUX_VMLINUX, else assets/linux/vmlinux), or `None` when it is
/// missing and COLO_REQUIRE_LINUX_KERNEL is not 1 (the test is then skipped with a message).
pub fn vmlinux(test: &str) -> Option<PathBuf> {
    let path = match std::env::var_os("COLO_LINUX_VMLINUX") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/linux/vmlinux"),
    };
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("COLO_REQUIRE_LINUX_KERNEL").as_deref() == Ok("1") {
        panic!(
            "{test}: {} is required (COLO_REQUIRE_LINUX_KERNEL=1); run scripts/setup-guest-assets.sh",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: no kernel at {}; run scripts/setup-guest-assets.sh",
        path.display()
    );
    None
}

/// One line of a child's output and the moment its first byte reached the test.
#[derive(Clone, Debug)]
pub struct SeenLine {
    /// When the test read the line's first byte: never before the kernel stamped the line,
    /// possibly long after (the console can print a message together with the next one).
    pub at: Instant,
    /// The text, without the newline.
    pub text: String,
    /// False for a last line that ended without a newline (cut by a save).
    pub complete: bool,
}

/// Reads `pipe` on a thread, sending each line stamped with the time its first byte was read.
pub fn stamp_lines(mut pipe: impl Read + Send + 'static, tx: mpsc::Sender<SeenLine>) {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        let mut line = Vec::new();
        let mut first = Instant::now();
        let send = |line: &mut Vec<u8>, at: Instant, complete: bool| {
            let text = String::from_utf8_lossy(line).into_owned();
            line.clear();
            tx.send(SeenLine { at, text, complete }).is_ok()
        };
        loop {
            let n = match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    if !line.is_empty() {
                        send(&mut line, first, false);
                    }
                    return;
                }
                Ok(n) => n,
            };
            let now = Instant::now();
            for &byte in &chunk[..n] {
                if line.is_empty() {
                    first = now;
                }
                if byte == b'\n' {
                    if !send(&mut line, first, true) {
                        return;
                    }
                } else {
                    line.push(byte);
                }
            }
        }
    });
}

/// The printk timestamp of a `[ sss.uuuuuu] ...` line, in seconds.
pub fn printk_time(line: &str) -> Option<f64> {
    let rest = line.strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    stamp.trim().parse().ok()
}

/// Words that mean the kernel broke.
const FAILURES: &[&str] = &[
    "Kernel panic",
    "Oops",
    "BUG:",
    "general protection fault",
    "invalid opcode",
    "Call Trace",
    "RIP: 0010",
];

/// What [`check_continuation`] measured.
#[derive(Debug)]
pub struct Continuation {
    /// Kernel lines after the cut.
    pub lines_after: usize,
    /// Milestones after the cut.
    pub milestones_after: Vec<&'static str>,
    /// printk time from the last line before the cut to the first after it (s).
    pub clock_step: f64,
    /// Wall time between the test reading those two lines (s).
    pub wall_step: f64,
}

/// How far the printk clock may run ahead of the wall clock (see `check_continuation`): the
/// clock's offset is learnt from lines printed promptly, and a line's first byte reaches the
/// test some time after its stamp (its bytes go out one emulated UART write at a time, then
/// through a pipe; ~0.1 s for a long line here). One second bounds that with margin on a loaded
/// machine, while a clock that lost its state jumps by far more (the guest TSC and kvmclock
/// count from the host's boot: minutes at least).
pub const CLOCK_SLACK_S: f64 = 1.0;

/// Checks that `after` (kernel console lines, other lines ignored) continues the boot whose
/// console up to the cut was `before`; a violation is described, with both logs.
pub fn check_continuation(before: &[SeenLine], after: &[SeenLine]) -> Result<Continuation, String> {
    // `ensure!(condition, format...)`: the violation as this function's error.
    macro_rules! ensure {
        ($cond:expr, $($why:tt)+) => {
            let holds: bool = $cond;
            if !holds {
                return Err(format!($($why)+));
            }
        };
    }
    let dump = || {
        let show = |ls: &[SeenLine]| {
            ls.iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "--- before the cut:\n{}\n--- after the cut:\n{}",
            show(before),
            show(after)
        )
    };
    let kernel = |ls: &[SeenLine]| -> Vec<(SeenLine, f64)> {
        ls.iter()
            .filter_map(|l| printk_time(&l.text).map(|t| (l.clone(), t)))
            .collect()
    };
    let (b, a) = (kernel(before), kernel(after));
    ensure!(!b.is_empty(), "no kernel line before the cut\n{}", dump());
    ensure!(!a.is_empty(), "no kernel line after the cut\n{}", dump());
    for (line, _) in &a {
        ensure!(
            !FAILURES.iter().any(|f| line.text.contains(f)),
            "the kernel failed after the cut: {}\n{}",
            line.text,
            dump()
        );
        ensure!(
            !b.iter().any(|(l, _)| l.text == line.text),
            "a line from before the cut was printed again: {}\n{}",
            line.text,
            dump()
        );
    }
    // Milestones: each at most once over both logs, in the boot's order.
    let all: Vec<&(SeenLine, f64)> = b.iter().chain(a.iter()).collect();
    let mut last_index = None;
    let mut milestones_after = Vec::new();
    for (position, (line, _)) in all.iter().enumerate() {
        let Some(index) = MILESTONES.iter().position(|m| line.text.contains(m)) else {
            continue;
        };
        ensure!(
            last_index.is_none_or(|l| index > l),
            "milestone {:?} out of order or repeated\n{}",
            MILESTONES[index],
            dump()
        );
        last_index = Some(index);
        if position >= b.len() {
            milestones_after.push(MILESTONES[index]);
        }
    }
    // The printk clock: never backwards, and never ahead of the wall clock. A line's stamp is
    // its printk time, which is no later than the moment its first byte reached the test, so
    // (stamp - read time) is the clock's offset from the wall clock less that line's delay:
    // it may drop (a delayed line) but never rise above the largest offset seen so far by more
    // than the slack. A clock that jumped forward across the cut would.
    let origin = all[0].0.at;
    let mut max_offset = f64::NEG_INFINITY;
    for pair in all.windows(2) {
        let ((l0, t0), (l1, t1)) = (pair[0], pair[1]);
        ensure!(
            t1 >= t0,
            "printk time went backwards: {} then {}\n{}",
            l0.text,
            l1.text,
            dump()
        );
    }
    for (line, t) in &all {
        let offset = t - line.at.saturating_duration_since(origin).as_secs_f64();
        ensure!(
            max_offset.is_infinite() || offset <= max_offset + CLOCK_SLACK_S,
            "printk time ran {:.3} s ahead of the wall clock at: {}\n{}",
            offset - max_offset,
            line.text,
            dump()
        );
        max_offset = max_offset.max(offset);
    }
    let ((lb, tb), (la, ta)) = (&b[b.len() - 1], &a[0]);
    Ok(Continuation {
        lines_after: a.len(),
        milestones_after,
        clock_step: ta - tb,
        wall_step: la.at.saturating_duration_since(lb.at).as_secs_f64(),
    })
}

/// Joins a line cut by the save (the last of `before`, without its newline) with its rest
/// (the first of `after`), so the boot log reads as one.
pub fn join_cut(before: &mut [SeenLine], after: &mut Vec<SeenLine>) {
    if before.last().is_some_and(|l| !l.complete) && !after.is_empty() {
        let rest = after.remove(0);
        let cut = before.last_mut().expect("checked above");
        cut.text.push_str(&rest.text);
        cut.complete = rest.complete;
    }
}

/// Collects lines from `rx` until the sender side closes or `timeout` passes.
pub fn collect(rx: &mpsc::Receiver<SeenLine>, timeout: Duration) -> Vec<SeenLine> {
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => return lines,
        }
    }
}

/// A paused 256 MiB, one-vCPU VM with `kernel` loaded on the early-serial command line the
/// loader tests use, its console captured.
pub fn serial_boot_vm(kernel: &[u8]) -> (colo_runtime::Machine, OutputCapture) {
    let capture = OutputCapture::new();
    let mut machine = colo_runtime::Machine::new(
        colo_runtime::MachineConfig {
            mem_mib: 256,
            vcpus: 1,
        },
        colo_runtime::ConsoleOutput::Capture(capture.clone()),
    )
    .unwrap();
    machine
        .load_linux(
            kernel,
            "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr",
            None,
        )
        .unwrap();
    (machine, capture)
}
