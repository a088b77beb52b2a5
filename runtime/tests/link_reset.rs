//! A replication link that breaks inside checkpoints and comes back before the heartbeat's
//! detection time (issue 11, "link blip"), on real KVM over a loopback proxy that cuts both
//! directions while both nodes live: the secondary dials again, the primary accepts, the epoch
//! that was in flight is abandoned (its send failed, or colo-core's `handle_link_reset` found
//! it unconfirmed) and retried on the new link, and the pair goes on in its term with no
//! failover. The guest rewrites
//! 8 MiB continuously so that each checkpoint carries thousands of pages and a cut right after
//! the primary pauses lands inside the transfer.

mod common;

use common::procs::{Procs, args, field, free_addr};
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
    procs.wait_for(Duration::from_secs(60), |w, l| {
        w == p && l.starts_with("primary: checkpoint-done epoch=2 ")
    });
    let cuts = 6;
    for _ in 0..cuts {
        // The primary just paused for a checkpoint: its pages are about to cross, or crossing.
        procs.wait_for(Duration::from_secs(30), |w, l| {
            w == p && l.starts_with("primary: paused epoch=")
        });
        proxy.cut();
        procs.wait_for(Duration::from_secs(10), |w, l| {
            w == s && l == "secondary: reconnected"
        });
    }
    // Checkpoints go on over the last connection, in term 1, with no failover anywhere.
    let mut last = 0;
    for _ in 0..3 {
        let line = procs.wait_for(Duration::from_secs(30), |w, l| {
            (w == s && l.starts_with("secondary: checkpoint-applied "))
                || l.contains("failed-over")
                || l.contains("takeover-started")
                || l.contains("CheckpointStuck")
        });
        assert!(
            line.contains("checkpoint-applied"),
            "a link drop inside a checkpoint ended in a failover: {line}\n{}",
            procs.log.join("\n")
        );
        last = field(&line, "epoch").unwrap().parse::<u64>().unwrap();
    }
    // A cut inside a transfer fails the primary's send (the epoch is aborted as a failed VM
    // command); one after the pages left is found by the link reset (LinkReset). Either way
    // the epoch is retried on the new link.
    let restarted = procs
        .seen
        .iter()
        .filter(|(w, _, l)| *w == p && l.contains("CheckpointAborted"))
        .count();
    assert!(
        restarted >= 1,
        "no cut landed inside a checkpoint ({cuts} cuts, last epoch {last}):\n{}",
        procs.log.join("\n")
    );
    eprintln!("{restarted} of {cuts} cuts restarted an epoch in flight; last epoch {last}");
}
