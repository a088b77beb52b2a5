//! The primary's side of the checkpoint protocol: when to checkpoint (periodic, on demand from
//! the comparator, forced, interval change) and the request -> pause -> transfer -> received
//! -> loaded -> resume sequence (QEMU migration/colo.c, `colo_do_checkpoint_transaction`).
//!
//! Invariant kept: [`CheckpointOutput::ReleaseOutput`] for epoch `e` is emitted only in
//! `AwaitingReceived(e)` on `CheckpointReceived(e)`. Triggers during a checkpoint coalesce into
//! it: the PVM produces no output between its pause and its resume, and output produced before
//! the pause is covered by the checkpoint in progress.
//!
//! Carried-over pages: a collection reads and clears the dirty log, so the pages collected for
//! an attempt that then aborts are dirty nowhere but here. The checkpointer keeps the union of
//! every range collected since the last completed checkpoint (`unconfirmed`) and orders
//! [`VmCommand::SendPages`] with all of it, so a retry carries what the aborted attempts
//! collected; a completed checkpoint (`CheckpointDone`) forgets them. The runtime sends exactly
//! the ranges ordered.
//!
//! ```text
//! Idle --interval / trigger--> Requested(e)            [send CheckpointRequest(e)]
//! Requested --Ready(e)--> Pausing(e)                   [vm Pause]
//! Pausing --Paused--> Transferring(e)                  [vm CollectDirty, SaveDeviceState]
//! Transferring --pages + device state sent--> AwaitingReceived(e)   [send CheckpointSent(e)]
//! AwaitingReceived --Received(e)--> AwaitingLoaded(e)  [ReleaseOutput(e)]
//! AwaitingLoaded --Loaded(e)--> Resuming(e)            [vm Resume]
//! Resuming --Resumed--> Idle (interval re-armed)       [event CheckpointDone]
//! any before AwaitingLoaded --abort / VM failure / protocol error / link reset-->
//!                                                       Resuming --> Idle (retry)
//! any --failover--> (resume if paused) --> Solo        [event ReadyForTakeover]
//! ```

use super::{
    CheckpointConfig, CheckpointConfigError, CheckpointEvent, CheckpointOutput, CheckpointStats,
    Outbox, StuckPhase, VmCommand, VmCompletion, advance,
};
use crate::ids::{CheckpointReason, Epoch, PageRange};
use crate::time::{Duration, Instant};
use crate::wire::message::{AbortReason, Message, MessageKind};

/// Where the primary's checkpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimaryPhase {
    /// Running; the next checkpoint is due at `next_at`.
    Idle {
        /// When the periodic (or retry) checkpoint is due.
        next_at: Instant,
    },
    /// `CheckpointRequest(e)` sent; waiting for `CheckpointReady(e)`.
    Requested,
    /// Pause ordered; waiting for the VM.
    Pausing,
    /// Dirty pages and device state being sent.
    Transferring,
    /// `CheckpointSent(e)` sent; waiting for `CheckpointReceived(e)`.
    AwaitingReceived,
    /// Output of `e` released; waiting for `CheckpointLoaded(e)`.
    AwaitingLoaded,
    /// Resume ordered; waiting for the VM.
    Resuming,
    /// The secondary is gone: no more checkpoints.
    Solo,
}

/// What to do once the VM has resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterResume {
    Done,
    Retry,
    Failover,
}

/// The primary's checkpointer.
#[derive(Debug)]
pub struct PrimaryCheckpointer {
    config: CheckpointConfig,
    phase: PrimaryPhase,
    /// The epoch in progress, or the next one when idle.
    epoch: Epoch,
    /// The last completed checkpoint.
    done: Epoch,
    reason: CheckpointReason,
    /// Reason of the next attempt when a retry is scheduled.
    retry_reason: Option<CheckpointReason>,
    /// When the current phase began (for the stuck timer).
    since: Instant,
    /// When the PVM pause was ordered, while it is paused (or pausing).
    paused_at: Option<Instant>,
    dirty_collected: bool,
    /// Every range collected since the last completed checkpoint, sorted and coalesced (see
    /// the module doc, "Carried-over pages").
    unconfirmed: Vec<PageRange>,
    pages_sent: Option<(u32, u64, u64)>,
    device_sent: Option<u64>,
    after_resume: AfterResume,
    stuck_reported: bool,
    out: Outbox,
    stats: CheckpointStats,
    now: Instant,
}

impl PrimaryCheckpointer {
    /// A primary whose last completed checkpoint is `done`; the first periodic checkpoint is
    /// due one interval after `now`.
    pub fn new(
        config: CheckpointConfig,
        done: Epoch,
        now: Instant,
    ) -> Result<PrimaryCheckpointer, CheckpointConfigError> {
        config.validate()?;
        Ok(PrimaryCheckpointer {
            config,
            phase: PrimaryPhase::Idle {
                next_at: now + config.checkpoint_interval,
            },
            epoch: done.next(),
            done,
            reason: CheckpointReason::Periodic,
            retry_reason: None,
            since: now,
            paused_at: None,
            dirty_collected: false,
            unconfirmed: Vec::new(),
            pages_sent: None,
            device_sent: None,
            after_resume: AfterResume::Done,
            stuck_reported: false,
            out: Outbox::default(),
            stats: CheckpointStats::default(),
            now,
        })
    }

    /// Where the checkpoint stands.
    pub fn phase(&self) -> PrimaryPhase {
        self.phase
    }

    /// The epoch in progress (or the next one when idle).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The last completed checkpoint.
    pub fn last_done(&self) -> Epoch {
        self.done
    }

    /// Counters.
    pub fn stats(&self) -> CheckpointStats {
        self.stats
    }

    /// The configuration in force.
    pub fn config(&self) -> &CheckpointConfig {
        &self.config
    }

    /// The pages collected since the last completed checkpoint, which the next
    /// [`VmCommand::SendPages`] carries (sorted, coalesced).
    pub fn unconfirmed_pages(&self) -> &[PageRange] {
        &self.unconfirmed
    }

    /// Ask for a checkpoint (comparator: miscompare, compare timeout, queue or table full;
    /// operator: forced). Starts one when idle; otherwise it coalesces into the one pending.
    pub fn handle_trigger(&mut self, now: Instant, reason: CheckpointReason) {
        advance(&mut self.now, now);
        match self.phase {
            PrimaryPhase::Idle { .. } => self.start(now, reason),
            PrimaryPhase::Solo => {}
            _ => self.stats.coalesced_triggers += 1,
        }
    }

    /// Change the periodic interval. Like QEMU's `x-checkpoint-delay`, a change takes effect
    /// through an immediate checkpoint, after which the new interval is armed.
    pub fn handle_set_interval(&mut self, now: Instant, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        self.config.checkpoint_interval = interval;
        self.handle_trigger(now, CheckpointReason::IntervalChanged);
    }

    /// A peer message arrived; only `CheckpointReady`, `CheckpointReceived`,
    /// `CheckpointLoaded` and `CheckpointAbort` concern the primary.
    pub fn handle_message(&mut self, now: Instant, message: &Message) {
        advance(&mut self.now, now);
        let (rank, m_epoch) = match *message {
            Message::CheckpointReady { epoch } => (0, epoch),
            Message::CheckpointReceived { epoch } => (1, epoch),
            Message::CheckpointLoaded { epoch } => (2, epoch),
            Message::CheckpointAbort { epoch, .. } => (3, epoch),
            _ => return,
        };
        if self.phase == PrimaryPhase::Solo {
            // The peer was failed over; whatever it still sends is from a past term.
            self.stats.stale_messages += 1;
            return;
        }
        let in_progress = !matches!(self.phase, PrimaryPhase::Idle { .. } | PrimaryPhase::Solo);
        if m_epoch < self.epoch || (!in_progress && m_epoch <= self.done) {
            self.stats.stale_messages += 1;
            return;
        }
        if !in_progress || m_epoch > self.epoch {
            return self.protocol_error(now, message.kind(), m_epoch);
        }
        // The rank the phase waits for; lower ranks are repeats of what was handled.
        let expected = match self.phase {
            PrimaryPhase::Requested => 0,
            PrimaryPhase::Pausing | PrimaryPhase::Transferring => 1,
            PrimaryPhase::AwaitingReceived => 1,
            PrimaryPhase::AwaitingLoaded => 2,
            _ => 3,
        };
        let premature = matches!(
            self.phase,
            PrimaryPhase::Pausing | PrimaryPhase::Transferring
        );
        if rank == 3 {
            // The secondary abandoned the attempt; possible only before it sent Received.
            return if expected <= 1 && self.phase != PrimaryPhase::Resuming {
                self.abort(now, AbortReason::Protocol, false)
            } else if self.phase == PrimaryPhase::Resuming {
                self.stats.duplicate_messages += 1;
            } else {
                self.protocol_error(now, message.kind(), m_epoch)
            };
        }
        if rank < expected || (rank == 0 && premature) {
            self.stats.duplicate_messages += 1;
            return;
        }
        if rank > expected || premature {
            return self.protocol_error(now, message.kind(), m_epoch);
        }
        match self.phase {
            PrimaryPhase::Requested => {
                // Requested --Ready(e)--> Pausing
                self.paused_at = Some(now);
                self.enter(now, PrimaryPhase::Pausing);
                self.out.vm(VmCommand::Pause);
            }
            PrimaryPhase::AwaitingReceived => {
                // AwaitingReceived --Received(e)--> AwaitingLoaded: output commit point.
                self.out
                    .push(CheckpointOutput::ReleaseOutput { epoch: self.epoch });
                self.enter(now, PrimaryPhase::AwaitingLoaded);
            }
            PrimaryPhase::AwaitingLoaded => {
                // AwaitingLoaded --Loaded(e)--> Resuming
                self.after_resume = AfterResume::Done;
                self.enter(now, PrimaryPhase::Resuming);
                self.out.vm(VmCommand::Resume);
            }
            _ => {}
        }
    }

    /// The runtime finished a VM command.
    pub fn handle_vm_done(&mut self, now: Instant, done: VmCompletion) {
        advance(&mut self.now, now);
        let e = self.epoch;
        match (self.phase, done) {
            (PrimaryPhase::Pausing, VmCompletion::Paused) => {
                // Pausing --Paused--> Transferring
                self.dirty_collected = false;
                self.pages_sent = None;
                self.device_sent = None;
                self.enter(now, PrimaryPhase::Transferring);
                self.out.vm(VmCommand::CollectDirty { epoch: e });
                self.out.vm(VmCommand::SaveDeviceState { epoch: e });
            }
            (PrimaryPhase::Transferring, VmCompletion::DirtyCollected { epoch, ranges })
                if epoch == e && !self.dirty_collected =>
            {
                // The fresh harvest joins what aborted attempts collected; all of it goes.
                self.dirty_collected = true;
                PageRange::union(&mut self.unconfirmed, &ranges);
                self.out.vm(VmCommand::SendPages {
                    epoch: e,
                    ranges: self.unconfirmed.clone(),
                });
            }
            (
                PrimaryPhase::Transferring,
                VmCompletion::PagesSent {
                    epoch,
                    batches,
                    pages,
                    bytes,
                },
            ) if epoch == e && self.dirty_collected && self.pages_sent.is_none() => {
                self.pages_sent = Some((batches, pages, bytes));
                self.maybe_sent(now);
            }
            (PrimaryPhase::Transferring, VmCompletion::DeviceStateSent { epoch, bytes })
                if epoch == e && self.device_sent.is_none() =>
            {
                self.device_sent = Some(bytes);
                self.maybe_sent(now);
            }
            (PrimaryPhase::Resuming, VmCompletion::Resumed) => self.on_resumed(now),
            (PrimaryPhase::Resuming, VmCompletion::Paused) => {
                // The pause that an abort overtook; the Resume queued behind it follows.
            }
            (phase, VmCompletion::Failed { command }) => {
                self.out
                    .event(CheckpointEvent::VmFailed { epoch: e, command });
                match phase {
                    PrimaryPhase::Pausing | PrimaryPhase::Transferring => {
                        self.abort(now, AbortReason::VmFailure, true);
                    }
                    // A failed resume leaves the PVM paused: the node leaves the pair on the
                    // `VmFailed` event (`Node::on_vm_command_failed`), nothing is retried.
                    _ => self.stats.stray_completions += 1,
                }
            }
            _ => self.stats.stray_completions += 1,
        }
    }

    /// The peer link came back after a drop while paired. Frames of the epoch in flight may
    /// have been lost with the old connection (a request, pages, `Ready`, `Received`): an
    /// attempt not yet received is abandoned and retried on the new link, its pages carried
    /// into the retry (they stay in [`PrimaryCheckpointer::unconfirmed_pages`]). After
    /// `Received` nothing is abandoned: the secondary applies the epoch and says `Loaded`
    /// again on the new link (`SecondaryCheckpointer::handle_link_reset`).
    pub fn handle_link_reset(&mut self, now: Instant) {
        advance(&mut self.now, now);
        match self.phase {
            // Requested/Pausing/Transferring/AwaitingReceived --link reset--> abort, retry
            PrimaryPhase::Requested
            | PrimaryPhase::Pausing
            | PrimaryPhase::Transferring
            | PrimaryPhase::AwaitingReceived => self.abort(now, AbortReason::LinkReset, true),
            PrimaryPhase::Idle { .. }
            | PrimaryPhase::AwaitingLoaded
            | PrimaryPhase::Resuming
            | PrimaryPhase::Solo => {}
        }
    }

    /// The secondary is gone (primary failover): abandon any attempt, resume the PVM if it is
    /// paused, then run solo. Output held for an epoch not yet received is not released here:
    /// the failover machine releases it once this node holds the lease.
    pub fn handle_failover(&mut self, now: Instant) {
        advance(&mut self.now, now);
        match self.phase {
            PrimaryPhase::Solo => {}
            PrimaryPhase::Idle { .. } | PrimaryPhase::Requested => self.go_solo(),
            PrimaryPhase::Resuming => self.after_resume = AfterResume::Failover,
            PrimaryPhase::Pausing
            | PrimaryPhase::Transferring
            | PrimaryPhase::AwaitingReceived
            | PrimaryPhase::AwaitingLoaded => {
                // any paused --failover--> Resuming --> Solo
                self.after_resume = AfterResume::Failover;
                self.enter(now, PrimaryPhase::Resuming);
                self.out.vm(VmCommand::Resume);
            }
        }
    }

    /// A deadline may have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        advance(&mut self.now, now);
        match self.phase {
            PrimaryPhase::Idle { next_at } if now >= next_at => {
                let reason = self
                    .retry_reason
                    .take()
                    .unwrap_or(CheckpointReason::Periodic);
                self.start(now, reason);
            }
            PrimaryPhase::Idle { .. } | PrimaryPhase::Solo => {}
            phase => {
                if !self.stuck_reported && now >= self.since + self.config.checkpoint_phase_timeout
                {
                    self.stuck_reported = true;
                    self.stats.stuck += 1;
                    let waits = match phase {
                        PrimaryPhase::Requested
                        | PrimaryPhase::AwaitingReceived
                        | PrimaryPhase::AwaitingLoaded => StuckPhase::AwaitingPeer,
                        _ => StuckPhase::AwaitingVm,
                    };
                    self.out.event(CheckpointEvent::Stuck {
                        epoch: self.epoch,
                        phase: waits,
                    });
                }
            }
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<CheckpointOutput> {
        self.out.pop()
    }

    /// The next deadline: the periodic checkpoint when idle, the stuck timer otherwise.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            PrimaryPhase::Idle { next_at } => Some(next_at),
            PrimaryPhase::Solo => None,
            _ if self.stuck_reported => None,
            _ => Some(self.since + self.config.checkpoint_phase_timeout),
        }
    }

    fn start(&mut self, now: Instant, reason: CheckpointReason) {
        // Idle --interval / trigger--> Requested
        self.reason = reason;
        self.retry_reason = None;
        self.enter(now, PrimaryPhase::Requested);
        self.out.send(Message::CheckpointRequest {
            epoch: self.epoch,
            reason,
        });
    }

    fn maybe_sent(&mut self, now: Instant) {
        if let (Some((batches, pages, page_bytes)), Some(dev)) = (self.pages_sent, self.device_sent)
        {
            // Transferring --all sent--> AwaitingReceived
            self.out.send(Message::CheckpointSent {
                epoch: self.epoch,
                batches,
                pages,
                bytes: page_bytes.saturating_add(dev),
            });
            self.enter(now, PrimaryPhase::AwaitingReceived);
        }
    }

    fn on_resumed(&mut self, now: Instant) {
        let pause = self
            .paused_at
            .take()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.stats.pause_nanos = self
            .stats
            .pause_nanos
            .saturating_add(u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX));
        match self.after_resume {
            AfterResume::Done => {
                // Resuming --Resumed--> Idle (interval re-armed after every checkpoint)
                let (_, pages, page_bytes) = self.pages_sent.unwrap_or_default();
                let bytes = page_bytes.saturating_add(self.device_sent.unwrap_or(0));
                self.stats.checkpoints += 1;
                self.stats.pages = self.stats.pages.saturating_add(pages);
                self.stats.bytes = self.stats.bytes.saturating_add(bytes);
                self.out.event(CheckpointEvent::CheckpointDone {
                    epoch: self.epoch,
                    reason: self.reason,
                    pause,
                    pages,
                    bytes,
                });
                // The secondary holds every collected page now.
                self.unconfirmed.clear();
                self.done = self.epoch;
                self.epoch = self.epoch.next();
                let next_at = now + self.config.checkpoint_interval;
                self.enter(now, PrimaryPhase::Idle { next_at });
            }
            AfterResume::Retry => {
                self.epoch = self.epoch.next();
                let next_at = now + self.config.checkpoint_retry_delay;
                self.enter(now, PrimaryPhase::Idle { next_at });
            }
            AfterResume::Failover => {
                self.epoch = self.epoch.next();
                self.go_solo();
            }
        }
    }

    /// Abandon the attempt in progress (only before `Received`): tell the peer unless it
    /// started the abort, resume the PVM if paused, retry after `checkpoint_retry_delay`.
    fn abort(&mut self, now: Instant, reason: AbortReason, tell_peer: bool) {
        let e = self.epoch;
        self.stats.aborts += 1;
        if tell_peer {
            self.out.send(Message::CheckpointAbort { epoch: e, reason });
        }
        self.out
            .event(CheckpointEvent::Aborted { epoch: e, reason });
        self.retry_reason = Some(self.reason);
        if self.phase == PrimaryPhase::Requested {
            // Requested --abort--> Idle (nothing was paused)
            self.epoch = e.next();
            let next_at = now + self.config.checkpoint_retry_delay;
            self.enter(now, PrimaryPhase::Idle { next_at });
        } else {
            // Pausing/Transferring/AwaitingReceived --abort--> Resuming --> Idle
            self.after_resume = AfterResume::Retry;
            self.enter(now, PrimaryPhase::Resuming);
            self.out.vm(VmCommand::Resume);
        }
    }

    fn protocol_error(&mut self, now: Instant, kind: MessageKind, message_epoch: Epoch) {
        self.stats.protocol_errors += 1;
        self.out.event(CheckpointEvent::ProtocolError {
            epoch: self.epoch,
            kind,
            message_epoch,
        });
        // Before Received the attempt can be abandoned cleanly; after it the secondary is
        // applying and only the stuck timer can end the wait.
        if matches!(
            self.phase,
            PrimaryPhase::Requested
                | PrimaryPhase::Pausing
                | PrimaryPhase::Transferring
                | PrimaryPhase::AwaitingReceived
        ) {
            self.abort(now, AbortReason::Protocol, true);
        }
    }

    fn go_solo(&mut self) {
        // any --failover--> Solo
        self.phase = PrimaryPhase::Solo;
        self.out
            .event(CheckpointEvent::ReadyForTakeover { applied: self.done });
    }

    fn enter(&mut self, now: Instant, phase: PrimaryPhase) {
        self.phase = phase;
        self.since = now;
        self.stuck_reported = false;
    }
}
