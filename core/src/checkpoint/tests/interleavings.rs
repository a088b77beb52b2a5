//! Random interleavings of the checkpoint protocol: delivery order (mostly in order, as on
//! TCP, sometimes reordered), duplicates, rare drops and failovers, VM completion order,
//! triggers and timeouts. Checks output commit and atomic checkpoint by name.

use super::super::*;
use super::pair::Pair;
use crate::ids::CheckpointReason;
use crate::time::Duration;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    DeliverP2S(usize),
    DeliverS2P(usize),
    DuplicateP2S(usize),
    DuplicateS2P(usize),
    DropP2S(usize),
    RunPvm,
    RunSvm,
    Trigger,
    Wait(u64),
    FailoverPrimary,
    FailoverSecondary,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Mostly in order (the link is TCP), sometimes reordered.
        10 => prop_oneof![9 => Just(0usize), 1 => any::<usize>()].prop_map(Step::DeliverP2S),
        8 => prop_oneof![9 => Just(0usize), 1 => any::<usize>()].prop_map(Step::DeliverS2P),
        1 => any::<usize>().prop_map(Step::DuplicateP2S),
        1 => any::<usize>().prop_map(Step::DuplicateS2P),
        8 => Just(Step::RunPvm),
        8 => Just(Step::RunSvm),
        2 => Just(Step::Trigger),
        2 => (1u64..400).prop_map(Step::Wait),
    ]
}

/// Rare faults placed at a chosen step: (step index, fault).
fn faults() -> impl Strategy<Value = Vec<(usize, Step)>> {
    proptest::collection::vec(
        (
            0usize..250,
            prop_oneof![
                2 => any::<usize>().prop_map(Step::DropP2S),
                1 => Just(Step::FailoverPrimary),
                1 => Just(Step::FailoverSecondary),
            ],
        ),
        0..3,
    )
}

proptest! {
    /// Output commit (no release of epoch e before CheckpointReceived(e)) and atomic
    /// checkpoint (no apply of a partial epoch) hold under any interleaving of deliveries,
    /// duplicates, drops, VM completions, triggers, timeouts and failovers; nothing panics,
    /// and `poll_timeout` is `Some` whenever a phase waits.
    #[test]
    fn output_commit_and_atomic_checkpoint_hold(
        steps in proptest::collection::vec(step(), 1..250),
        faults in faults(),
    ) {
        let mut t = Pair::new();
        let mut steps = steps;
        for (at, f) in faults {
            let at = at.min(steps.len());
            steps.insert(at, f);
        }
        for s in steps {
            match s {
                Step::DeliverP2S(i) => if !t.p2s.is_empty() { let n = t.p2s.len(); t.deliver_p2s(i % n) },
                Step::DeliverS2P(i) => if !t.s2p.is_empty() { let n = t.s2p.len(); t.deliver_s2p(i % n) },
                Step::DuplicateP2S(i) => if !t.p2s.is_empty() {
                    let m = t.p2s[i % t.p2s.len()].clone();
                    t.p2s.push_back(m);
                },
                Step::DuplicateS2P(i) => if !t.s2p.is_empty() {
                    let m = t.s2p[i % t.s2p.len()].clone();
                    t.s2p.push_back(m);
                },
                Step::DropP2S(i) => if !t.p2s.is_empty() { let n = t.p2s.len(); t.p2s.remove(i % n); },
                Step::RunPvm => t.run_pvm(),
                Step::RunSvm => t.run_svm(),
                Step::Trigger => { t.p.handle_trigger(t.now, CheckpointReason::Miscompare); t.drain(); }
                Step::Wait(d) => { let to = t.now + Duration::from_millis(d); t.advance(to); }
                Step::FailoverPrimary => { t.p.handle_failover(t.now); t.drain(); }
                Step::FailoverSecondary => { t.s.handle_failover(t.now); t.drain(); }
            }
            prop_assert!(t.violations.is_empty(), "{:?}", t.violations);
            let p_waits = !matches!(t.p.phase(), PrimaryPhase::Solo);
            let s_waits = !matches!(t.s.phase(), SecondaryPhase::Running | SecondaryPhase::Solo);
            let p_stuck = t.p_events.iter().any(|e| matches!(e, CheckpointEvent::Stuck { .. }));
            let s_stuck = t.s_events.iter().any(|e| matches!(e, CheckpointEvent::Stuck { .. }));
            if p_waits && !p_stuck { prop_assert!(t.p.poll_timeout().is_some()); }
            if s_waits && !s_stuck { prop_assert!(t.s.poll_timeout().is_some()); }
        }
        // Every epoch released was applied or is being applied by the secondary.
        for e in &t.released {
            prop_assert!(t.received_sent.contains(e));
        }
    }
}
