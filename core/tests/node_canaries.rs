//! The Node's canary hooks (cargo feature `canaries`, core/src/node/canary.rs) break exactly the
//! rule they name, as the Pair harness's own checkers see it: a planted
//! `ReleaseBeforeReceived` trips output commit, a planted `ReleaseWithoutLease` trips single
//! writer, and a planted `SkipRewriterReset` leaves the secondary's rewriter as the checkpoint
//! found it. Without the feature this file compiles to nothing (the hooks do not exist).
#![cfg(feature = "canaries")]

mod pair;

use colo_core::checkpoint::CheckpointEvent;
use colo_core::node::{Event, NodeCanary, NodeMode};
use colo_core::time::Duration;
use pair::{Knobs, Pair, config};

fn planted(seed: u64, host: usize, canary: NodeCanary) -> Pair {
    let mut a = config(1);
    let mut b = config(2);
    if host == 0 {
        a.canary = Some(canary);
    } else {
        b.canary = Some(canary);
    }
    let mut p = Pair::with_configs(seed, Knobs::default(), a, b);
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.mode(0), NodeMode::Paired, "{}", p.summary());
    p.requests_enabled = true;
    p
}

#[test]
fn without_a_canary_the_same_runs_keep_every_rule() {
    let mut p = Pair::new(2, Knobs::default());
    p.run_for(Duration::from_millis(100));
    p.requests_enabled = true;
    p.hosts[1].guest.diverge_every = Some(7);
    p.run_for(Duration::from_secs(1));
    let mut p = Pair::new(3, Knobs::default());
    p.run_for(Duration::from_millis(300));
    p.requests_enabled = true;
    p.run_for(Duration::from_millis(300));
    p.arbiter_reachable = [true, false];
    p.crash(0);
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.mode(1), NodeMode::TakingOver, "{}", p.summary());
}

#[test]
#[should_panic(expected = "output_commit")]
fn release_before_received_breaks_output_commit() {
    let mut p = planted(2, 0, NodeCanary::ReleaseBeforeReceived);
    // A diverging secondary: output waits for checkpoints, which the canary releases early.
    p.hosts[1].guest.diverge_every = Some(7);
    p.run_for(Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "single_writer")]
fn release_without_lease_breaks_single_writer() {
    let mut p = planted(3, 1, NodeCanary::ReleaseWithoutLease);
    p.run_for(Duration::from_millis(300));
    // The survivor cannot reach the arbiter: it must hold everything, the canary releases.
    p.arbiter_reachable = [true, false];
    p.crash(0);
    p.run_for(Duration::from_secs(2));
}

#[test]
fn skip_rewriter_reset_keeps_the_offsets_a_checkpoint_must_clear() {
    let mut p = planted(4, 1, NodeCanary::SkipRewriterReset);
    p.run_for(Duration::from_millis(600));
    let applied = p.count_events(1, |e| {
        matches!(
            e,
            Event::Checkpoint(CheckpointEvent::CheckpointApplied { .. })
        )
    });
    assert!(applied > 1, "{}", p.summary());
    let stats = p.hosts[1].node.rewriter().expect("secondary").stats();
    assert_eq!(stats.resets, 0, "the planted node reset its rewriter");
    // The same run without the canary resets at every applied checkpoint.
    let mut p = Pair::new(4, Knobs::default());
    p.run_for(Duration::from_millis(100));
    p.requests_enabled = true;
    p.run_for(Duration::from_millis(600));
    let applied = p.count_events(1, |e| {
        matches!(
            e,
            Event::Checkpoint(CheckpointEvent::CheckpointApplied { .. })
        )
    });
    let stats = p.hosts[1].node.rewriter().expect("secondary").stats();
    assert!(
        stats.resets >= applied as u64 && applied > 1,
        "{}",
        p.summary()
    );
}
