//! Tests of the checkpoint protocol, one per rule, on the two-checkpointer harness in
//! [`pair`]; the random-interleaving proptest is in [`interleavings`].

mod interleavings;
mod pair;

use super::*;
use crate::ids::{CheckpointReason, Epoch};
use crate::time::Duration;
use crate::wire::message::{AbortReason, Message, PAGE_SIZE};
use pair::{DEVICE_STATE_LEN, Pair, cfg, ms};

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
    // Four pages, one of them zero (the harness marks every second page of a range): the
    // event counts the four pages and the bytes of the three that travelled.
    let bytes = 3 * PAGE_SIZE + DEVICE_STATE_LEN;
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
            zero: crate::wire::ZeroPages::none(0),
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
fn a_newcomer_that_discards_its_first_epoch_keeps_its_empty_vm_paused() {
    // Before its first apply the SVM holds no guest (the copy brought memory, not device
    // state): a runtime cannot resume it, so the discard leaves it paused; the first
    // checkpoint that applies resumes it as usual.
    let mut s = SecondaryCheckpointer::before_first_apply(cfg(), Epoch(0), ms(0)).unwrap();
    let req = |e| Message::CheckpointRequest {
        epoch: Epoch(e),
        reason: CheckpointReason::Periodic,
    };
    let resumes = |s: &mut SecondaryCheckpointer| {
        std::iter::from_fn(|| s.poll_output())
            .filter(|o| matches!(o, CheckpointOutput::Vm(VmCommand::Resume)))
            .count()
    };
    s.handle_message(ms(0), &req(1), 0);
    s.handle_vm_done(ms(0), VmCompletion::Paused);
    let abort = Message::CheckpointAbort {
        epoch: Epoch(1),
        reason: AbortReason::VmFailure,
    };
    s.handle_message(ms(1), &abort, 0);
    s.handle_vm_done(ms(2), VmCompletion::Discarded { epoch: Epoch(1) });
    assert_eq!(s.phase(), SecondaryPhase::Running);
    assert_eq!(resumes(&mut s), 0, "no Resume of a VM with nothing applied");
    assert_eq!(s.applied(), Epoch(0));

    // The same abort on a secondary whose VM holds a checkpoint resumes it.
    let mut s = SecondaryCheckpointer::new(cfg(), Epoch(0), ms(0)).unwrap();
    s.handle_message(ms(0), &req(1), 0);
    s.handle_vm_done(ms(0), VmCompletion::Paused);
    s.handle_message(ms(1), &abort, 0);
    s.handle_vm_done(ms(2), VmCompletion::Discarded { epoch: Epoch(1) });
    assert_eq!(s.phase(), SecondaryPhase::Resuming);
    assert_eq!(resumes(&mut s), 1);
}

#[test]
fn unrelated_messages_are_ignored() {
    let mut t = Pair::new();
    t.s.handle_message(
        ms(0),
        &Message::MirroredFrame {
            epoch: Epoch(9),
            nic: crate::ids::NicId(0),
        },
        60,
    );
    t.p.handle_message(ms(0), &Message::Ack { seq: 1 });
    t.drain();
    assert!(t.p_events.is_empty() && t.s_events.is_empty());
}

fn pages(first: u64, count: u64) -> crate::ids::PageRange {
    crate::ids::PageRange { first, count }
}

/// Runs checkpoint `t.p.epoch()` up to the primary's `CheckpointSent` (pages and device state
/// streamed, nothing received yet).
fn run_until_sent(t: &mut Pair) {
    t.p.handle_trigger(t.now, CheckpointReason::Forced);
    t.drain();
    for _ in 0..100 {
        if t.p.phase() == PrimaryPhase::AwaitingReceived {
            return;
        }
        if !t.pvm.is_empty() {
            t.run_pvm();
        } else if !t.svm.is_empty() {
            t.run_svm();
        } else if !t.s2p.is_empty() {
            t.deliver_s2p(0);
        } else if !t.p2s.is_empty() {
            t.deliver_p2s(0);
        }
    }
    panic!("never reached AwaitingReceived: {:?}", t.p.phase());
}

#[test]
fn pages_of_an_attempt_lost_with_the_link_are_carried_into_the_retry() {
    let mut t = Pair::new();
    t.dirty = vec![pages(0, 3), pages(10, 1)];
    run_until_sent(&mut t);
    assert_eq!(t.pages_ordered[&Epoch(1)], vec![pages(0, 3), pages(10, 1)]);
    // The connection drops with the pages and `CheckpointSent` of epoch 1 in flight.
    t.p2s.clear();
    t.s2p.clear();
    t.p.handle_link_reset(t.now);
    t.s.handle_link_reset(t.now);
    t.drain();
    t.settle();
    assert_eq!(t.p.stats().aborts, 1);
    assert_eq!(
        t.p.unconfirmed_pages(),
        &[pages(0, 3), pages(10, 1)],
        "the aborted attempt's pages are still owed"
    );
    // The retry's own harvest overlaps one of them and adds one.
    t.dirty = vec![pages(2, 2), pages(20, 1)];
    t.advance(ms(10));
    t.settle();
    assert_eq!(t.applied, vec![Epoch(2)]);
    assert_eq!(
        t.pages_ordered[&Epoch(2)],
        vec![pages(0, 4), pages(10, 1), pages(20, 1)],
        "the retry sends its harvest and everything the aborted attempt collected"
    );
    assert!(t.violations.is_empty(), "{:?}", t.violations);
}

#[test]
fn a_completed_checkpoint_forgets_the_pages_it_carried() {
    let mut t = Pair::new();
    t.dirty = vec![pages(0, 3)];
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    t.settle();
    assert_eq!(t.applied, vec![Epoch(1)]);
    assert!(t.p.unconfirmed_pages().is_empty(), "confirmed by Loaded");
    t.dirty = vec![pages(40, 2)];
    t.advance(ms(1));
    t.p.handle_trigger(ms(1), CheckpointReason::Forced);
    t.drain();
    t.settle();
    assert_eq!(t.applied, vec![Epoch(1), Epoch(2)]);
    assert_eq!(
        t.pages_ordered[&Epoch(2)],
        vec![pages(40, 2)],
        "only what was dirtied since checkpoint 1"
    );
}

#[test]
fn pages_of_an_attempt_whose_vm_command_failed_are_carried_into_the_retry() {
    let mut t = Pair::new();
    t.dirty = vec![pages(5, 1)];
    t.p.handle_trigger(ms(0), CheckpointReason::Forced);
    t.drain();
    // Up to the PVM's pause: collection and device-state save are queued.
    while !matches!(t.p.phase(), PrimaryPhase::Transferring) {
        if !t.pvm.is_empty() {
            t.run_pvm();
        } else if !t.svm.is_empty() {
            t.run_svm();
        } else if !t.s2p.is_empty() {
            t.deliver_s2p(0);
        } else {
            t.deliver_p2s(0);
        }
    }
    t.run_pvm(); // CollectDirty: the log is read and cleared.
    // Saving the device state fails: the attempt aborts after the pages were collected.
    t.pvm.retain(|c| {
        !matches!(
            c,
            VmCommand::SaveDeviceState { .. } | VmCommand::SendPages { .. }
        )
    });
    t.p.handle_vm_done(
        t.now,
        VmCompletion::Failed {
            command: VmCommandKind::SaveDeviceState,
        },
    );
    t.drain();
    t.settle();
    assert_eq!(t.p.stats().aborts, 1);
    t.dirty = vec![pages(6, 1)];
    t.advance(ms(10));
    t.settle();
    assert_eq!(t.applied, vec![Epoch(2)]);
    assert_eq!(t.pages_ordered[&Epoch(2)], vec![pages(5, 2)]);
}
