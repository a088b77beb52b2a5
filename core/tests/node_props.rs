//! Property tests over random fault schedules on the two-node harness. Every run checks, by
//! name, on every output: `output_commit` (a paired primary releases only matched or covered
//! frames), `atomic_checkpoint` (an epoch is applied only whole and never after a discard),
//! `single_writer` (per term one releasing host, solo release only under the lease),
//! `disk_ack_before_completion` (a paired primary completes a guest write only after the
//! secondary's ack) and `timeout_armed` (a node that waits on time has a deadline). Faults
//! include crashes, link cuts, lost and reordered peer messages, client loss and reordering,
//! arbiter outages, divergence and commands. After the faults stop, `no_silent_loss`: every
//! client request is answered by a surviving writer.

mod pair;

use colo_core::node::NodeMode;
use colo_core::time::Duration;
use pair::{Knobs, Pair};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Crash(usize),
    Cut,
    Heal,
    ArbiterDown(usize),
    ArbiterUp(usize),
    Diverge(u64),
    ForceCheckpoint,
    Failover(usize),
    DropPeer(u32),
    ReorderPeer(u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        1 => (0usize..2).prop_map(Fault::Crash),
        2 => Just(Fault::Cut),
        2 => Just(Fault::Heal),
        1 => (0usize..2).prop_map(Fault::ArbiterDown),
        2 => (0usize..2).prop_map(Fault::ArbiterUp),
        2 => (1u64..10).prop_map(Fault::Diverge),
        2 => Just(Fault::ForceCheckpoint),
        1 => (0usize..2).prop_map(Fault::Failover),
        1 => (1u32..4).prop_map(Fault::DropPeer),
        1 => (1u64..20).prop_map(Fault::ReorderPeer),
    ]
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        50u64..3000,
        0u64..2000,
        0u64..8,
        100u64..2000,
        any::<bool>(),
    )
        .prop_map(|(peer_us, jitter_us, loss, vm_us, disk)| Knobs {
            peer_delay: Duration::from_micros(peer_us),
            client_jitter: Duration::from_micros(jitter_us),
            client_loss: loss,
            vm_delay: Duration::from_micros(vm_us),
            disk_writes: disk,
            ..Knobs::default()
        })
}

fn apply(p: &mut Pair, f: Fault) {
    use colo_core::node::{Command, Input};
    match f {
        Fault::Crash(h) => p.crash(h),
        Fault::Cut => p.link_cut = true,
        Fault::Heal => p.link_cut = false,
        Fault::ArbiterDown(h) => p.arbiter_reachable[h] = false,
        Fault::ArbiterUp(h) => p.arbiter_reachable[h] = true,
        Fault::Diverge(n) => p.hosts[1].guest.diverge_every = Some(n),
        Fault::ForceCheckpoint => p.input(0, Input::Command(Command::ForceCheckpoint)),
        Fault::Failover(h) => p.input(h, Input::Command(Command::Failover)),
        Fault::DropPeer(n) => p.peer_drop = n,
        Fault::ReorderPeer(ms) => p.peer_reorder = Some(Duration::from_millis(ms)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_random_faults(
        seed in any::<u64>(),
        knobs in knobs(),
        faults in proptest::collection::vec((0u64..3000, fault()), 0..6),
    ) {
        let mut faults = faults;
        faults.sort_by_key(|(t, _)| *t);
        let mut p = Pair::new(seed, knobs);
        p.run_for(Duration::from_millis(100));
        p.requests_enabled = true;
        let start = p.now;
        // Safety phase: faults at their times; the harness's checkers assert on every output.
        for (t, f) in faults {
            p.run_until(start + Duration::from_millis(t));
            apply(&mut p, f);
        }
        p.run_until(start + Duration::from_millis(3000));
        // Liveness phase: heal everything but crashes; a surviving writer must answer all.
        p.link_cut = false;
        p.arbiter_reachable = [true, true];
        p.run_for(Duration::from_secs(5));
        let sent = p.next_request;
        p.run_for(Duration::from_secs(3));
        let writer = (0..2).any(|h| {
            p.hosts[h].alive
                && p.client_target == h
                && matches!(p.mode(h), NodeMode::Solo)
                || (p.hosts[h].alive
                    && p.client_target == h
                    && p.mode(h) == NodeMode::Paired
                    && p.hosts[h].node.is_primary_side()
                    && p.hosts[1 - h].alive
                    && !p.link_cut)
        });
        if std::env::var_os("PAIR_SUMMARY").is_some() {
            let alive = [p.hosts[0].alive, p.hosts[1].alive];
            eprintln!("writer={writer} modes={:?}/{:?} alive={alive:?}", p.mode(0), p.mode(1));
        }
        if writer {
            let missing: Vec<u64> = (0..sent).filter(|k| !p.answered.contains(k)).collect();
            prop_assert!(
                missing.is_empty(),
                "no_silent_loss: unanswered {:?}\n{}",
                missing,
                p.summary()
            );
        }
    }
}
