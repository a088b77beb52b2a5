//! The replicated pair with a real Linux kernel: `colo arbiter`, `colo primary` and `colo
//! secondary` on loopback boot Debian's vmlinux (the same VM description on both nodes) with
//! periodic checkpoints; the primary is killed mid-boot and the survivor's console continues
//! the boot from the last checkpoint it applied.
//!
//! What is proven: while paired, the secondary prints none of its guest's (speculative) console
//! output; after the failover its console continues the primary's: later boot lines, in order,
//! no line the primary printed before the last applied checkpoint printed again, no panic, and
//! a printk clock that neither goes backwards nor jumps (common::linux::check_continuation).
//! Under this machine's kvm_pvm both kernels run in KVM's emulator on a shared 2-core machine,
//! so the kill is early in the boot (docs/vmm.md, "Debian's kernel under kvm_pvm").

mod common;

use colo_runtime::pair::events::Milestone;
use common::linux::{self, SeenLine};
use common::procs::{Procs, args, free_addr};
use std::time::Duration;

/// The primary's console line after which the primary is killed (~20-35 s into the pair's
/// boot here), once the secondary has applied a checkpoint after it. The boot prints a line
/// every few hundred ms for the next ~10 s, so the survivor's guest prints some of them between
/// its last apply and the takeover: the held output the takeover releases is real boot log.
const KILL_AFTER_LINE: &str = "Hypervisor detected: KVM";
const APPLIED_AFTER_LINE: usize = 1;
/// The survivor's console line that ends the test: three milestones past the kill point.
const SURVIVOR_REACHES: &str = "Kernel command line: ";
const CHECKPOINT_INTERVAL_MS: &str = "1000";

fn kernel_line(line: &str) -> bool {
    linux::printk_time(line).is_some()
}

#[test]
fn survivor_console_continues_the_linux_boot_from_the_last_checkpoint() {
    let test = "survivor_console_continues_the_linux_boot_from_the_last_checkpoint";
    if !common::kvm_available(test) {
        return;
    }
    let Some(kernel) = linux::vmlinux(test) else {
        return;
    };
    let kernel = kernel.to_string_lossy().into_owned();
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    // The same VM description on both nodes. A patient heartbeat (2 s): two emulated kernels
    // share two cores with whatever else runs here.
    let vm = [
        "--kernel",
        &kernel,
        "--cmdline",
        linux::CMDLINE,
        "--memory",
        linux::MEMORY_MIB,
        "--heartbeat-misses",
        "20",
        "--run-for",
        "400",
    ];
    let mut pa = args(&["primary", "--listen", &peer, "--arbiter", &arbiter]);
    pa.extend(args(&vm));
    pa.extend(args(&["--checkpoint-interval-ms", CHECKPOINT_INTERVAL_MS]));
    let p = procs.spawn(&pa);
    let mut sa = args(&["secondary", "--peer", &peer, "--arbiter", &arbiter]);
    sa.extend(args(&vm));
    let s = procs.spawn(&sa);

    // Paired, the kill line on the primary's console, then a few applies after it.
    procs.wait_for(Duration::from_secs(150), |w, l| {
        w == p && l.contains(KILL_AFTER_LINE)
    });
    for _ in 0..APPLIED_AFTER_LINE {
        procs.wait_until(Duration::from_secs(60), s, |m| {
            matches!(m, Milestone::Applied { .. })
        });
    }
    procs.kill(p);
    let released = procs.wait_milestone(Duration::from_secs(60), s, |m| match m {
        Milestone::ConsoleReleased { bytes } => Some(format!("console-released bytes={bytes}")),
        _ => None,
    });
    procs.wait_for(Duration::from_secs(150), |w, l| {
        w == s && l.contains(SURVIVOR_REACHES)
    });

    // The cut: the last checkpoint the secondary applied, i.e. the primary's pause for it.
    // Text lines and records of one child are read in the order written, each stamped when
    // read (one reader thread per child): a record's stamp splits that child's lines.
    let seen = procs.seen.clone();
    let events = procs.events.clone();
    let at_of = |who: usize, want: &dyn Fn(&Milestone) -> bool| {
        events
            .iter()
            .filter(|(w, _, r)| *w == who && want(&r.milestone))
            .map(|(_, at, r)| (*at, r.milestone.clone()))
            .collect::<Vec<_>>()
    };
    let last_applied = at_of(s, &|m| matches!(m, Milestone::Applied { .. }))
        .into_iter()
        .filter_map(|(_, m)| match m {
            Milestone::Applied { epoch, .. } => Some(epoch),
            _ => None,
        })
        .next_back()
        .expect("the secondary applied checkpoints");
    let paused_at = at_of(
        p,
        &|m| matches!(m, Milestone::Paused { epoch, .. } if *epoch == last_applied),
    )
    .first()
    .map(|(at, _)| *at)
    .unwrap_or_else(|| panic!("no pause of epoch {last_applied}\n{}", procs.log.join("\n")));
    let stamped = |(_, at, text): &(usize, std::time::Instant, String)| SeenLine {
        at: *at,
        text: text.clone(),
        complete: true,
    };
    let before: Vec<SeenLine> = seen
        .iter()
        .filter(|(w, at, l)| *w == p && *at < paused_at && kernel_line(l))
        .map(stamped)
        .collect();
    // The survivor writes its held output right after this record (then `console-released`).
    let failed_over_at = at_of(s, &|m| matches!(m, Milestone::FailedOver { .. }))
        .first()
        .map(|(at, _)| *at)
        .expect("a failover precedes console-released");
    let speculative: Vec<&String> = seen
        .iter()
        .filter(|(w, at, l)| *w == s && *at < failed_over_at && kernel_line(l))
        .map(|(_, _, l)| l)
        .collect();
    assert!(
        speculative.is_empty(),
        "the paired secondary printed guest output: {speculative:?}"
    );
    let after: Vec<SeenLine> = seen
        .iter()
        .filter(|(w, at, l)| *w == s && *at >= failed_over_at && kernel_line(l))
        .map(stamped)
        .collect();
    let dropped: u64 = at_of(s, &|_| true)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Milestone::ConsoleDiscarded { bytes } => Some(bytes),
            _ => None,
        })
        .sum();
    let continuation =
        linux::check_continuation(&before, &after).unwrap_or_else(|why| panic!("{why}"));

    // Figures: the checkpoints' pauses and sizes while the kernel booted.
    let mut pauses: Vec<(u64, u64)> = at_of(p, &|_| true)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Milestone::CheckpointDone {
                pause_us, pages, ..
            } => Some((pause_us, pages)),
            _ => None,
        })
        .collect();
    let checkpoints = pauses.len();
    let first = pauses.first().copied().unwrap_or_default();
    pauses.sort_unstable();
    let median = pauses.get(checkpoints / 2).copied().unwrap_or_default();
    let max_pages = pauses.iter().map(|&(_, n)| n).max().unwrap_or_default();
    eprintln!(
        "pair: {checkpoints} checkpoints (first {} us at {} pages, median pause {} us at {} pages, longest {} us, most pages {max_pages}); \
         last applied epoch {last_applied}; {} bytes of speculative console dropped, {released}; \
         survivor: {} kernel lines, milestones {:?}, printk step {:.3} s over {:.3} s of wall time",
        first.0,
        first.1,
        median.0,
        median.1,
        pauses.last().map(|p| p.0).unwrap_or_default(),
        dropped,
        continuation.lines_after,
        continuation.milestones_after,
        continuation.clock_step,
        continuation.wall_step,
    );
    assert!(
        continuation.milestones_after.len() >= 2,
        "the survivor reached too few milestones: {:?}",
        continuation.milestones_after
    );
}
