//! The replicated pair with two vCPUs, on real KVM over loopback (`colo arbiter`, `colo
//! primary --vcpus 2` and `colo secondary --vcpus 2` as child processes): the test guest's
//! smp-counter runs on both vCPUs of the primary, the secondary's memory equals the primary's
//! at every checkpoint's pause (crc32c of all RAM, per epoch), and after a SIGKILL of the
//! primary the survivor's guest continues on both vCPUs with its own per-page checks passing.

mod common;

use colo_runtime::pair::events::Milestone;
use common::procs::{Output, Procs, args, free_addr};
use std::collections::BTreeMap;
use std::time::Duration;

/// The per-vCPU steps of a guest progress line (`colo-guest: step N ... cpu-steps S0 S1`).
fn cpu_steps(line: &str) -> Option<Vec<u64>> {
    let (_, rest) = line.split_once(" cpu-steps ")?;
    rest.split_whitespace().map(|n| n.parse().ok()).collect()
}

#[test]
fn two_vcpu_pair_is_equal_at_every_epoch_and_the_survivor_runs_both_vcpus() {
    if !common::kvm_available(
        "two_vcpu_pair_is_equal_at_every_epoch_and_the_survivor_runs_both_vcpus",
    ) {
        return;
    }
    let (arbiter, peer) = (free_addr(), free_addr());
    let vm = [
        "--vcpus",
        "2",
        "--memory",
        "64",
        "--cmdline",
        "colo.workload=smp-counter",
        "--pages",
        "16",
        "--print-every",
        "5000",
        "--checkpoint-interval-ms",
        "200",
        "--digests",
        // Digests are computed inside the pause, slowly in a debug build on a loaded
        // machine: a patient heartbeat (2 s) keeps that from looking like a dead peer.
        "--heartbeat-misses",
        "20",
    ];
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let mut primary_args = args(&["primary", "--listen", &peer, "--arbiter", &arbiter]);
    primary_args.extend(args(&vm));
    let p = procs.spawn(&primary_args);
    let mut secondary_args = args(&["secondary", "--peer", &peer, "--arbiter", &arbiter]);
    secondary_args.extend(args(&vm));
    let s = procs.spawn(&secondary_args);

    // Equal memory at every compared epoch, while the primary's AP counts too.
    let mut paused: BTreeMap<u64, String> = BTreeMap::new();
    let mut primary_ap = Vec::new();
    let mut compared = 0;
    while compared < 4 || primary_ap.len() < 2 {
        let (who, output) = procs.wait_output(Duration::from_secs(30), |w, o| match o {
            Output::Text(l) => w == p && l.contains(" cpu-steps "),
            Output::Event(r) => {
                (w == p && matches!(r.milestone, Milestone::Paused { .. }))
                    || (w == s && matches!(r.milestone, Milestone::Applied { .. }))
            }
        });
        let record = match output {
            Output::Text(line) => {
                let steps = cpu_steps(&line).unwrap_or_else(|| panic!("{line}"));
                assert_eq!(steps.len(), 2, "{line}");
                primary_ap.push(steps[1]);
                continue;
            }
            Output::Event(record) => record,
        };
        let (epoch, digest) = match record.milestone {
            Milestone::Paused { epoch, digest, .. } | Milestone::Applied { epoch, digest, .. } => {
                (epoch, digest.expect("digests are on"))
            }
            other => unreachable!("{other:?}"),
        };
        if who == p {
            paused.insert(epoch, digest);
        } else {
            let want = paused
                .get(&epoch)
                .expect("the primary pauses before the secondary applies");
            assert_eq!(
                &digest,
                want,
                "epoch {epoch}: the secondary's memory after apply differs from the primary's\n{}",
                procs.log.join("\n")
            );
            compared += 1;
        }
    }
    assert!(
        primary_ap.windows(2).all(|w| w[1] > w[0]),
        "the primary's AP did not progress: {primary_ap:?}"
    );

    procs.kill(p);
    let term = procs.wait_milestone(Duration::from_secs(20), s, |m| match m {
        Milestone::FailedOver { term, .. } => Some(*term),
        _ => None,
    });
    assert_eq!(term, 2);
    // The survivor's guest: both vCPUs' counters keep rising (wait_for fails on a PANIC,
    // which either vCPU raises on a page that is not what its previous step wrote).
    let mut last: Option<Vec<u64>> = None;
    for _ in 0..3 {
        let line = procs.wait_for(Duration::from_secs(30), |w, l| {
            w == s && l.contains(" cpu-steps ")
        });
        let steps = cpu_steps(&line).expect("a progress line");
        assert_eq!(steps.len(), 2, "{line}");
        if let Some(before) = &last {
            assert!(
                steps[0] > before[0] && steps[1] > before[1],
                "the survivor's vCPUs stalled: {before:?} then {steps:?}"
            );
        }
        last = Some(steps);
    }
}
