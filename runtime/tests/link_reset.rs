//! A replication link that breaks inside checkpoints and comes back before the heartbeat's
//! detection time (issue 11, "link blip"), on real KVM over a loopback proxy that cuts both
//! directions while both nodes live: the secondary dials again, the primary accepts, the epoch
//! that was in flight is abandoned (its send failed, or colo-core's `handle_link_reset` found
//! it unconfirmed) and retried on the new link, and the pair goes on in its term with no
//! failover. The guest rewrites
//! 8 MiB continuously so that each checkpoint carries thousands of pages and a cut right after
//! the primary pauses lands inside the transfer.

mod common;

use colo_runtime::pair::events::Milestone;
use common::procs::{Procs, args, free_addr};
use common::proxy::Proxy;
use std::time::Duration;

#[test]
fn link_drops_inside_checkpoints_restart_the_epoch_without_a_failover() {
    let test = "link_drops_inside_checkpoints_restart_the_epoch_without_a_failover";
    if !common::kvm_available(test) {
        return;
    }
    let (arbiter, back) = (free_addr(), free_addr());
    let proxy = Proxy::start(back.clone());
    let vm = [
        "--checkpoint-interval-ms",
        "200",
        "--heartbeat-misses",
        "10",
        "--cmdline",
        "colo.pages=2048",
    ];
    let mut procs = Procs::new();
    procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    let mut p = args(&["primary", "--listen", &back, "--arbiter", &arbiter]);
    p.extend(args(&vm));
    let p = procs.spawn(&p);
    let mut s = args(&["secondary", "--peer", &proxy.front, "--arbiter", &arbiter]);
    s.extend(args(&vm));
    let s = procs.spawn(&s);
    procs.wait_until(Duration::from_secs(60), p, |m| {
        matches!(m, Milestone::CheckpointDone { epoch: 2, .. })
    });
    let cuts = 6;
    for _ in 0..cuts {
        // The primary just paused for a checkpoint: its pages are about to cross, or crossing.
        procs.wait_until(Duration::from_secs(30), p, |m| {
            matches!(m, Milestone::Paused { .. })
        });
        proxy.cut();
        procs.wait_for(Duration::from_secs(10), |w, l| {
            w == s && l == "secondary: reconnected"
        });
    }
    // Checkpoints go on over the last connection, in term 1, with no failover anywhere.
    let mut last = 0;
    for _ in 0..3 {
        let (_, record) = procs.wait_event(Duration::from_secs(30), |w, r| {
            (w == s && matches!(r.milestone, Milestone::CheckpointApplied { .. }))
                || matches!(
                    r.milestone,
                    Milestone::FailedOver { .. }
                        | Milestone::TakeoverStarted { .. }
                        | Milestone::CheckpointStuck { .. }
                )
        });
        let Milestone::CheckpointApplied { epoch, .. } = record.milestone else {
            panic!(
                "a link drop inside a checkpoint ended in a failover: {record:?}\n{}",
                procs.log.join("\n")
            );
        };
        last = epoch;
    }
    // A cut inside a transfer fails the primary's send (the epoch is aborted as a failed VM
    // command); one after the pages left is found by the link reset (LinkReset). Either way
    // the epoch is retried on the new link.
    let restarted = procs
        .events
        .iter()
        .filter(|(w, _, r)| *w == p && matches!(r.milestone, Milestone::CheckpointAborted { .. }))
        .count();
    assert!(
        restarted >= 1,
        "no cut landed inside a checkpoint ({cuts} cuts, last epoch {last}):\n{}",
        procs.log.join("\n")
    );
    eprintln!("{restarted} of {cuts} cuts restarted an epoch in flight; last epoch {last}");
}
