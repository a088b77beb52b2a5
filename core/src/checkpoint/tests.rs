//! Tests of the checkpoint protocol: a primary and a secondary checkpointer wired through
//! in-memory message queues and fake VMs that execute commands when told. One test per rule,
//! then a proptest over random interleavings (delivery order, duplicates, drops, VM completion
//! order, triggers, failovers) checking output commit and atomic checkpoint by name.

use super::*;
use crate::ids::{CheckpointReason, Epoch, PageRange};
use crate::time::{Duration, Instant};
use crate::wire::message::{AbortReason, Message, PAGE_SIZE};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn cfg() -> CheckpointConfig {
    CheckpointConfig {
        checkpoint_interval: Duration::from_millis(1000),
        checkpoint_phase_timeout: Duration::from_millis(300),
        checkpoint_retry_delay: Duration::from_millis(10),
    }
}

const DEVICE_STATE_LEN: u64 = 100;

/// Two checkpointers, two fake VMs and the link between them.
struct Pair {
    p: PrimaryCheckpointer,
    s: SecondaryCheckpointer,
    now: Instant,
    p2s: VecDeque<(Message, u64)>,
    s2p: VecDeque<Message>,
    pvm: VecDeque<VmCommand>,
    svm: VecDeque<CheckpointOutput>,
    /// Dirty pages the fake PVM reports at the next collection.
    dirty: Vec<PageRange>,
    released: Vec<Epoch>,
    p_events: Vec<CheckpointEvent>,
    s_events: Vec<CheckpointEvent>,
    // Checker state.
    received_sent: BTreeSet<Epoch>,
    batches_sent: BTreeMap<Epoch, u32>,
    batches_delivered: BTreeMap<Epoch, BTreeSet<u32>>,
    device_delivered: BTreeSet<Epoch>,
    applied: Vec<Epoch>,
    violations: Vec<String>,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            p: PrimaryCheckpointer::new(cfg(), Epoch(0), ms(0)).unwrap(),
            s: SecondaryCheckpointer::new(cfg(), Epoch(0), ms(0)).unwrap(),
            now: ms(0),
            p2s: VecDeque::new(),
            s2p: VecDeque::new(),
            pvm: VecDeque::new(),
            svm: VecDeque::new(),
            dirty: vec![
                PageRange { first: 0, count: 3 },
                PageRange {
                    first: 10,
                    count: 1,
                },
            ],
            released: Vec::new(),
            p_events: Vec::new(),
            s_events: Vec::new(),
            received_sent: BTreeSet::new(),
            batches_sent: BTreeMap::new(),
            batches_delivered: BTreeMap::new(),
            device_delivered: BTreeSet::new(),
            applied: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Drains both machines' outputs into queues, checking invariants as they appear.
    fn drain(&mut self) {
        while let Some(o) = self.p.poll_output() {
            match o {
                CheckpointOutput::Send(m) => self.p2s.push_back((m, 0)),
                CheckpointOutput::Vm(c) => self.pvm.push_back(c),
                CheckpointOutput::ReleaseOutput { epoch } => {
                    // Output commit: only after the secondary confirmed receipt of `epoch`.
                    if !self.received_sent.contains(&epoch) {
                        self.violations
                            .push(format!("output commit: released {epoch:?} before received"));
                    }
                    self.released.push(epoch);
                }
                CheckpointOutput::Event(e) => self.p_events.push(e),
                other => self.violations.push(format!("primary emitted {other:?}")),
            }
        }
        while let Some(o) = self.s.poll_output() {
            match o {
                CheckpointOutput::Send(m) => {
                    if let Message::CheckpointReceived { epoch } = m {
                        self.received_sent.insert(epoch);
                    }
                    self.s2p.push_back(m);
                }
                CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { epoch }) => {
                    // Atomic checkpoint: every batch and the device state of `epoch` arrived.
                    let sent = self.batches_sent.get(&epoch).copied().unwrap_or(0);
                    let got = self
                        .batches_delivered
                        .get(&epoch)
                        .cloned()
                        .unwrap_or_default();
                    if (0..sent).any(|b| !got.contains(&b))
                        || !self.device_delivered.contains(&epoch)
                    {
                        self.violations
                            .push(format!("atomic checkpoint: applying partial {epoch:?}"));
                    }
                    self.applied.push(epoch);
                    self.svm
                        .push_back(CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { epoch }));
                }
                CheckpointOutput::Event(e) => self.s_events.push(e),
                CheckpointOutput::ReleaseOutput { .. } => {
                    self.violations.push("secondary released output".into())
                }
                other => self.svm.push_back(other),
            }
        }
    }

    fn deliver_p2s(&mut self, i: usize) {
        if let Some((m, bulk)) = self.p2s.remove(i) {
            match &m {
                Message::PageBatch { epoch, batch, .. } => {
                    self.batches_delivered
                        .entry(*epoch)
                        .or_default()
                        .insert(*batch);
                }
                Message::DeviceState { epoch } => {
                    self.device_delivered.insert(*epoch);
                }
                _ => {}
            }
            self.s.handle_message(self.now, &m, bulk);
            self.drain();
        }
    }

    fn deliver_s2p(&mut self, i: usize) {
        if let Some(m) = self.s2p.remove(i) {
            self.p.handle_message(self.now, &m);
            self.drain();
        }
    }

    /// The fake PVM executes its oldest command.
    fn run_pvm(&mut self) {
        let Some(c) = self.pvm.pop_front() else {
            return;
        };
        let done = match c {
            VmCommand::Pause => VmCompletion::Paused,
            VmCommand::Resume => VmCompletion::Resumed,
            VmCommand::CollectDirty { epoch } => VmCompletion::DirtyCollected {
                epoch,
                ranges: self.dirty.clone(),
            },
            VmCommand::SendPages { epoch, ranges } => {
                let mut pages = 0;
                for (batch, r) in ranges.iter().enumerate() {
                    let batch = batch as u32;
                    self.p2s.push_back((
                        Message::PageBatch {
                            epoch,
                            batch,
                            ranges: vec![*r],
                        },
                        r.count * PAGE_SIZE,
                    ));
                    pages += r.count;
                }
                self.batches_sent.insert(epoch, ranges.len() as u32);
                VmCompletion::PagesSent {
                    epoch,
                    batches: ranges.len() as u32,
                    pages,
                    bytes: pages * PAGE_SIZE,
                }
            }
            VmCommand::SaveDeviceState { epoch } => {
                self.p2s
                    .push_back((Message::DeviceState { epoch }, DEVICE_STATE_LEN));
                VmCompletion::DeviceStateSent {
                    epoch,
                    bytes: DEVICE_STATE_LEN,
                }
            }
            other => {
                self.violations.push(format!("primary VM got {other:?}"));
                return;
            }
        };
        self.p.handle_vm_done(self.now, done);
        self.drain();
    }

    /// The fake SVM (and disk) executes its oldest command.
    fn run_svm(&mut self) {
        let Some(c) = self.svm.pop_front() else {
            return;
        };
        match c {
            CheckpointOutput::Vm(c) => {
                let done = match c {
                    VmCommand::Pause => VmCompletion::Paused,
                    VmCommand::Resume => VmCompletion::Resumed,
                    VmCommand::ApplyCheckpoint { epoch } => VmCompletion::Applied { epoch },
                    VmCommand::DiscardPartial { epoch } => VmCompletion::Discarded { epoch },
                    other => {
                        self.violations.push(format!("secondary VM got {other:?}"));
                        return;
                    }
                };
                self.s.handle_vm_done(self.now, done);
            }
            CheckpointOutput::ResetDisk { epoch } => self.s.handle_disk_reset(self.now, epoch),
            CheckpointOutput::ResetRewriter { .. } => {}
            other => self
                .violations
                .push(format!("secondary queue got {other:?}")),
        }
        self.drain();
    }

    /// Runs everything in order until quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            if !self.pvm.is_empty() {
                self.run_pvm();
            } else if !self.svm.is_empty() {
                self.run_svm();
            } else if !self.p2s.is_empty() {
                self.deliver_p2s(0);
            } else if !self.s2p.is_empty() {
                self.deliver_s2p(0);
            } else {
                return;
            }
        }
        panic!("did not settle");
    }

    fn advance(&mut self, to: Instant) {
        self.now = to;
        self.p.handle_timeout(to);
        self.s.handle_timeout(to);
        self.drain();
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let mut c = cfg();
    c.checkpoint_interval = Duration::ZERO;
    assert_eq!(
        PrimaryCheckpointer::new(c, Epoch(0), ms(0)).unwrap_err(),
        CheckpointConfigError::ZeroInterval
    );
    let mut c = cfg();
    c.checkpoint_phase_timeout = Duration::ZERO;
    assert_eq!(
        SecondaryCheckpointer::new(c, Epoch(0), ms(0)).unwrap_err(),
        CheckpointConfigError::ZeroPhaseTimeout
    );
}

#[test]
fn periodic_checkpoint_runs_the_whole_protocol_and_reports_it() {
    let mut t = Pair::new();
    assert_eq!(t.p.poll_timeout(), Some(ms(1000)));
    t.advance(ms(1000));
    t.settle();
    assert!(t.violations.is_empty(), "{:?}", t.violations);
    assert_eq!(t.released, vec![Epoch(1)]);
    assert_eq!(t.applied, vec![Epoch(1)]);
    let bytes = 4 * PAGE_SIZE + DEVICE_STATE_LEN;
    assert_eq!(
        t.p_events,
        vec![CheckpointEvent::CheckpointDone {
            epoch: Epoch(1),
            reason: CheckpointReason::Periodic,
            pause: Duration::ZERO,
            pages: 4,
            bytes
        }]
    );
    assert!(matches!(
        t.s_events[..],
        [CheckpointEvent::CheckpointApplied {
            epoch: Epoch(1),
            pages: 4,
            ..
        }]
    ));
    assert_eq!(t.s.applied(), Epoch(1));
    assert_eq!(t.p.last_done(), Epoch(1));
}

#[test]
fn secondary_orders_apply_disk_reset_and_rewriter_reset_together() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    // Run until the secondary has queued its apply work, then look at the queue.
    while !t
        .svm
        .iter()
        .any(|c| matches!(c, CheckpointOutput::ResetDisk { .. }))
    {
        if !t.pvm.is_empty() {
            t.run_pvm();
        } else if !t.p2s.is_empty() {
            t.deliver_p2s(0);
        } else if !t.s2p.is_empty() {
            t.deliver_s2p(0);
        } else {
            t.run_svm();
        }
    }
    let kinds: Vec<_> = t.svm.iter().cloned().collect();
    assert_eq!(
        kinds,
        vec![
            CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { epoch: Epoch(1) }),
            CheckpointOutput::ResetDisk { epoch: Epoch(1) },
            CheckpointOutput::ResetRewriter { epoch: Epoch(1) },
        ]
    );
    assert_eq!(t.s.phase(), SecondaryPhase::Applying);
}

#[test]
fn output_is_released_only_when_received_arrives() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Miscompare);
    t.drain();
    // Everything but the secondary's messages back.
    for _ in 0..100 {
        if !t.pvm.is_empty() {
            t.run_pvm();
        } else if !t.svm.is_empty() {
            t.run_svm();
        } else if !t.p2s.is_empty() {
            t.deliver_p2s(0);
        } else if matches!(t.s2p.front(), Some(Message::CheckpointReady { .. })) {
            t.deliver_s2p(0);
        } else {
            break;
        }
    }
    assert_eq!(t.p.phase(), PrimaryPhase::AwaitingReceived);
    assert!(t.released.is_empty());
    assert!(matches!(
        t.s2p.front(),
        Some(Message::CheckpointReceived { epoch: Epoch(1) })
    ));
    t.deliver_s2p(0);
    assert_eq!(t.released, vec![Epoch(1)]);
}

#[test]
fn interval_is_rearmed_after_each_checkpoint() {
    let mut t = Pair::new();
    t.advance(ms(300));
    t.p.handle_trigger(ms(300), CheckpointReason::Miscompare);
    t.drain();
    t.settle();
    assert_eq!(
        t.p.poll_timeout(),
        Some(ms(1300)),
        "re-armed from completion"
    );
}

#[test]
fn changing_the_interval_triggers_a_checkpoint() {
    let mut t = Pair::new();
    t.now = ms(5);
    t.p.handle_set_interval(ms(5), Duration::from_millis(200));
    t.drain();
    t.settle();
    assert!(matches!(
        t.p_events[..],
        [CheckpointEvent::CheckpointDone {
            reason: CheckpointReason::IntervalChanged,
            ..
        }]
    ));
    assert_eq!(t.p.poll_timeout(), Some(ms(205)));
}

#[test]
fn triggers_during_a_checkpoint_coalesce_into_it() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Miscompare);
    t.p.handle_trigger(ms(0), CheckpointReason::Miscompare);
    t.p.handle_trigger(ms(0), CheckpointReason::QueueFull);
    t.drain();
    t.settle();
    assert_eq!(t.p.stats().coalesced_triggers, 2);
    assert_eq!(t.p.stats().checkpoints, 1);
    assert_eq!(t.applied, vec![Epoch(1)]);
}

#[test]
fn stale_and_duplicate_messages_are_counted_not_errors() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.settle();
    // Replays of epoch 1 after it completed: stale on both sides.
    t.s.handle_message(
        ms(0),
        &Message::CheckpointRequest {
            epoch: Epoch(1),
            reason: CheckpointReason::Forced,
        },
        0,
    );
    t.p.handle_message(ms(0), &Message::CheckpointReceived { epoch: Epoch(1) });
    assert_eq!(t.s.stats().stale_messages, 1);
    assert_eq!(t.p.stats().stale_messages, 1);
    // A duplicate Ready while the primary transfers.
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.deliver_p2s(0);
    t.run_svm();
    t.deliver_s2p(0);
    t.p.handle_message(ms(0), &Message::CheckpointReady { epoch: Epoch(2) });
    assert_eq!(t.p.stats().duplicate_messages, 1);
    assert_eq!(t.p.stats().protocol_errors + t.s.stats().protocol_errors, 0);
    t.drain();
    t.settle();
    assert_eq!(t.applied, vec![Epoch(1), Epoch(2)]);
}

#[test]
fn batch_gap_is_a_protocol_error_and_the_epoch_is_discarded() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.deliver_p2s(0);
    t.run_svm();
    t.deliver_s2p(0);
    t.run_pvm(); // paused
    t.run_pvm(); // dirty collected -> SendPages queued
    t.run_pvm(); // device state sent
    t.run_pvm(); // pages sent
    // Deliver batch 1 before batch 0.
    let i = t
        .p2s
        .iter()
        .position(|(m, _)| matches!(m, Message::PageBatch { batch: 1, .. }))
        .unwrap();
    t.deliver_p2s(i);
    assert!(matches!(
        t.s_events[..],
        [
            CheckpointEvent::ProtocolError { .. },
            CheckpointEvent::Aborted {
                reason: AbortReason::Protocol,
                ..
            }
        ]
    ));
    t.settle();
    assert!(t.applied.is_empty(), "a partial epoch is never applied");
    assert!(t.released.is_empty());
    assert!(
        t.p_events
            .iter()
            .any(|e| matches!(e, CheckpointEvent::Aborted { .. }))
    );
    // The primary retries with a new epoch, which goes through.
    t.advance(ms(20));
    t.settle();
    assert_eq!(t.applied, vec![Epoch(2)]);
    assert!(t.violations.is_empty(), "{:?}", t.violations);
}

#[test]
fn totals_that_do_not_match_are_never_applied() {
    let mut s = SecondaryCheckpointer::new(cfg(), Epoch(0), ms(0)).unwrap();
    let req = Message::CheckpointRequest {
        epoch: Epoch(1),
        reason: CheckpointReason::Forced,
    };
    s.handle_message(ms(0), &req, 0);
    s.handle_vm_done(ms(0), VmCompletion::Paused);
    s.handle_message(ms(0), &Message::DeviceState { epoch: Epoch(1) }, 10);
    s.handle_message(
        ms(0),
        &Message::CheckpointSent {
            epoch: Epoch(1),
            batches: 1,
            pages: 1,
            bytes: PAGE_SIZE + 10,
        },
        0,
    );
    let outs: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { .. })))
    );
    assert!(
        outs.contains(&CheckpointOutput::Vm(VmCommand::DiscardPartial {
            epoch: Epoch(1)
        }))
    );
    assert_eq!(s.phase(), SecondaryPhase::Discarding);
}

#[test]
fn failover_during_transfer_discards_the_partial_epoch() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.deliver_p2s(0);
    t.run_svm();
    assert_eq!(t.s.phase(), SecondaryPhase::Receiving);
    t.now = ms(1);
    t.s.handle_failover(ms(1));
    t.drain();
    t.p2s.clear(); // the primary is dead
    while !t.svm.is_empty() {
        t.run_svm();
    }
    assert!(t.applied.is_empty());
    assert_eq!(t.s.phase(), SecondaryPhase::Solo);
    assert_eq!(
        t.s_events.last(),
        Some(&CheckpointEvent::ReadyForTakeover { applied: Epoch(0) })
    );
}

#[test]
fn failover_during_apply_finishes_the_apply_first() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    while t.s.phase() != SecondaryPhase::Applying {
        if !t.pvm.is_empty() {
            t.run_pvm();
        } else if !t.p2s.is_empty() {
            t.deliver_p2s(0);
        } else if !t.svm.is_empty() {
            t.run_svm();
        } else {
            t.deliver_s2p(0);
        }
    }
    t.now = ms(1);
    t.s.handle_failover(ms(1));
    t.drain();
    assert_eq!(t.s.phase(), SecondaryPhase::Applying);
    while !t.svm.is_empty() {
        t.run_svm();
    }
    assert_eq!(t.s.phase(), SecondaryPhase::Solo);
    assert_eq!(t.s.applied(), Epoch(1));
    assert_eq!(
        t.s_events.last(),
        Some(&CheckpointEvent::ReadyForTakeover { applied: Epoch(1) })
    );
    assert!(
        !t.s2p
            .iter()
            .any(|m| matches!(m, Message::CheckpointLoaded { .. })),
        "no Loaded to a dead primary"
    );
}

#[test]
fn primary_failover_resumes_a_paused_pvm() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.deliver_p2s(0);
    t.run_svm();
    t.deliver_s2p(0);
    t.run_pvm(); // paused
    assert_eq!(t.p.phase(), PrimaryPhase::Transferring);
    t.now = ms(1);
    t.p.handle_failover(ms(1));
    t.drain();
    t.pvm.retain(|c| matches!(c, VmCommand::Resume));
    t.run_pvm();
    assert_eq!(t.p.phase(), PrimaryPhase::Solo);
    assert!(
        t.released.is_empty(),
        "the lease, not the checkpointer, releases now"
    );
    assert_eq!(
        t.p_events.last(),
        Some(&CheckpointEvent::ReadyForTakeover { applied: Epoch(0) })
    );
}

#[test]
fn a_stuck_phase_is_reported_once() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.p2s.clear(); // the request is lost
    assert_eq!(t.p.poll_timeout(), Some(ms(300)));
    t.advance(ms(300));
    t.advance(ms(900));
    assert_eq!(
        t.p_events,
        vec![CheckpointEvent::Stuck {
            epoch: Epoch(1),
            phase: StuckPhase::AwaitingPeer
        }]
    );
    assert_eq!(t.p.poll_timeout(), None);
}

#[test]
fn svm_pause_failure_aborts_and_the_primary_retries() {
    let mut t = Pair::new();
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.deliver_p2s(0);
    t.svm.clear();
    t.s.handle_vm_done(
        ms(0),
        VmCompletion::Failed {
            command: VmCommandKind::Pause,
        },
    );
    t.drain();
    t.settle();
    assert_eq!(t.p.stats().aborts, 1);
    assert!(matches!(t.p.phase(), PrimaryPhase::Idle { .. }));
    t.advance(ms(10));
    t.settle();
    assert_eq!(t.applied, vec![Epoch(2)], "retried under a fresh epoch");
}

#[test]
fn a_retry_during_our_discard_is_served_afterwards_and_stragglers_are_stale() {
    let mut s = SecondaryCheckpointer::new(cfg(), Epoch(0), ms(0)).unwrap();
    let req = |e| Message::CheckpointRequest {
        epoch: Epoch(e),
        reason: CheckpointReason::Miscompare,
    };
    s.handle_message(ms(0), &req(1), 0);
    s.handle_vm_done(ms(0), VmCompletion::Paused);
    s.handle_message(
        ms(0),
        &Message::CheckpointAbort {
            epoch: Epoch(1),
            reason: AbortReason::VmFailure,
        },
        0,
    );
    assert_eq!(s.phase(), SecondaryPhase::Discarding);
    s.handle_message(ms(1), &req(2), 0);
    s.handle_message(
        ms(1),
        &Message::PageBatch {
            epoch: Epoch(1),
            batch: 0,
            ranges: vec![],
        },
        0,
    );
    assert_eq!(s.stats().stale_messages, 1);
    assert_eq!(s.stats().protocol_errors, 0);
    s.handle_vm_done(ms(2), VmCompletion::Discarded { epoch: Epoch(1) });
    s.handle_vm_done(ms(3), VmCompletion::Resumed);
    assert_eq!(s.phase(), SecondaryPhase::Pausing, "the retry is served");
    let outs: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
    assert_eq!(
        outs.iter()
            .filter(|o| matches!(o, CheckpointOutput::Vm(VmCommand::Pause)))
            .count(),
        2
    );
    assert!(
        outs.contains(&CheckpointOutput::Event(CheckpointEvent::Aborted {
            epoch: Epoch(1),
            reason: AbortReason::VmFailure
        }))
    );
}

#[test]
fn unrelated_messages_are_ignored() {
    let mut t = Pair::new();
    t.s.handle_message(ms(0), &Message::MirroredFrame { epoch: Epoch(9) }, 60);
    t.p.handle_message(ms(0), &Message::Ack { seq: 1 });
    t.drain();
    assert!(t.p_events.is_empty() && t.s_events.is_empty());
}

// ---- random interleavings ---------------------------------------------------------------------

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
