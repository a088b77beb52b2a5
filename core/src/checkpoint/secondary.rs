//! The secondary's side of the checkpoint protocol: pause on request, count every batch and
//! the device state of the epoch into the RAM cache, confirm receipt, apply the whole epoch
//! (memory, device state, disk overlays, TCP offsets), resume, confirm loading (QEMU
//! migration/colo.c, `colo_incoming_process_checkpoint`).
//!
//! Invariant kept (atomic checkpoint): `ApplyCheckpoint(e)` is ordered only after batches
//! `0..n` and the device state of `e` arrived and `CheckpointSent(e)` confirmed `n`, the page
//! count and the byte count. A failover while the epoch is incomplete discards it; a failover
//! once `CheckpointReceived(e)` was sent finishes the apply first (the primary may already have
//! released output that only state `e` explains).
//!
//! The runtime stores a `PageBatch`'s or `DeviceState`'s bulk in the RAM cache before it hands
//! the decoded message to the core, so "arrived" here means "in the cache".
//!
//! ```text
//! Running --Request(e)--> Pausing(e)                      [vm Pause]
//! Pausing --Paused--> Receiving(e)                        [send Ready(e)]
//! Receiving --batches, device state, Sent(e) matching--> Applying(e)
//!                   [send Received(e); vm ApplyCheckpoint(e); ResetDisk(e); ResetRewriter(e)]
//! Applying --Applied(e) + disk reset(e)--> Resuming(e)    [vm Resume]
//! Resuming --Resumed--> Running (applied = e)             [send Loaded(e)]
//! Pausing/Receiving --abort / mismatch / failover--> Discarding(e) [vm DiscardPartial(e)]
//! Applying --abort--> Applying (counted stale: the primary's retry covers it again)
//! Running (applied e) --link reset--> Running           [send Loaded(e) again]
//! Discarding --Discarded--> Resuming --> Running, or Solo after a failover
//! Discarding --Discarded, no checkpoint applied yet--> Running  [no vm Resume: nothing to run]
//! Applying --failover--> (finish apply) --> Resuming --> Solo
//! ```

use super::{
    CheckpointConfig, CheckpointConfigError, CheckpointEvent, CheckpointOutput, CheckpointStats,
    Outbox, StuckPhase, VmCommand, VmCommandKind, VmCompletion, advance,
};
use crate::ids::{CheckpointReason, Epoch};
use crate::time::{Duration, Instant};
use crate::wire::message::{AbortReason, Message, pages_in};

/// Where the secondary's checkpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondaryPhase {
    /// The SVM runs; waiting for a request.
    Running,
    /// Pause ordered for the requested epoch.
    Pausing,
    /// `CheckpointReady` sent; pages and device state arriving.
    Receiving,
    /// `CheckpointReceived` sent; apply and disk reset ordered.
    Applying,
    /// The partial epoch is being discarded.
    Discarding,
    /// Resume ordered.
    Resuming,
    /// The primary is gone and the SVM runs alone.
    Solo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    Running,
    Loaded,
    Failover,
}

/// The secondary's checkpointer.
#[derive(Debug)]
pub struct SecondaryCheckpointer {
    config: CheckpointConfig,
    phase: SecondaryPhase,
    /// The epoch in progress (meaningful outside Running/Solo).
    epoch: Epoch,
    /// The last applied checkpoint.
    applied: Epoch,
    /// The highest epoch ever requested: a request must exceed it.
    highest: Epoch,
    since: Instant,
    paused_at: Option<Instant>,
    batches: u32,
    pages: u64,
    bytes: u64,
    device_state: bool,
    vm_applied: bool,
    disk_reset: bool,
    after: After,
    /// Set by a failover that arrives while the epoch must be finished first.
    failover_pending: bool,
    /// The SVM holds a guest: the state of `applied` (false for a pairing's newcomer until
    /// its first apply: its VM has no device state, and a runtime cannot resume it).
    holds_guest: bool,
    /// A request that arrived while an aborted epoch was still being discarded.
    deferred_request: Option<(Epoch, CheckpointReason)>,
    stuck_reported: bool,
    out: Outbox,
    stats: CheckpointStats,
    now: Instant,
}

impl SecondaryCheckpointer {
    /// A secondary whose SVM reflects checkpoint `applied`.
    pub fn new(
        config: CheckpointConfig,
        applied: Epoch,
        now: Instant,
    ) -> Result<SecondaryCheckpointer, CheckpointConfigError> {
        Self::with_guest(config, applied, now, true)
    }

    /// A pairing's secondary before its first checkpoint: its VM holds no guest yet (the
    /// copy brought memory, not device state), so an epoch it discards leaves the VM paused
    /// instead of resuming it; the next checkpoint is `applied + 1`.
    pub fn before_first_apply(
        config: CheckpointConfig,
        applied: Epoch,
        now: Instant,
    ) -> Result<SecondaryCheckpointer, CheckpointConfigError> {
        Self::with_guest(config, applied, now, false)
    }

    fn with_guest(
        config: CheckpointConfig,
        applied: Epoch,
        now: Instant,
        holds_guest: bool,
    ) -> Result<SecondaryCheckpointer, CheckpointConfigError> {
        config.validate()?;
        Ok(SecondaryCheckpointer {
            config,
            phase: SecondaryPhase::Running,
            epoch: applied,
            applied,
            highest: applied,
            since: now,
            paused_at: None,
            batches: 0,
            pages: 0,
            bytes: 0,
            device_state: false,
            vm_applied: false,
            disk_reset: false,
            after: After::Running,
            failover_pending: false,
            holds_guest,
            deferred_request: None,
            stuck_reported: false,
            out: Outbox::default(),
            stats: CheckpointStats::default(),
            now,
        })
    }

    /// Where the checkpoint stands.
    pub fn phase(&self) -> SecondaryPhase {
        self.phase
    }

    /// The last applied checkpoint.
    pub fn applied(&self) -> Epoch {
        self.applied
    }

    /// Counters.
    pub fn stats(&self) -> CheckpointStats {
        self.stats
    }

    /// A peer message arrived; `bulk_len` is its frame's bulk length (already in the cache).
    pub fn handle_message(&mut self, now: Instant, message: &Message, bulk_len: u64) {
        advance(&mut self.now, now);
        let m_epoch = match *message {
            Message::CheckpointRequest { epoch, .. }
            | Message::PageBatch { epoch, .. }
            | Message::DeviceState { epoch }
            | Message::CheckpointSent { epoch, .. }
            | Message::CheckpointAbort { epoch, .. } => epoch,
            _ => return,
        };
        let idle = matches!(self.phase, SecondaryPhase::Running | SecondaryPhase::Solo);
        if self.phase == SecondaryPhase::Solo
            || (idle && m_epoch <= self.highest)
            || (!idle && m_epoch < self.epoch)
        {
            self.stats.stale_messages += 1;
            return;
        }
        if !idle && m_epoch > self.epoch {
            if let Message::CheckpointRequest { epoch, reason } = *message {
                // The primary only asks again once it finished or abandoned our epoch (an
                // abort crossed our messages, or it gave up on us): finish or discard ours,
                // then serve the new request.
                self.deferred_request = Some((epoch, reason));
                if matches!(
                    self.phase,
                    SecondaryPhase::Pausing | SecondaryPhase::Receiving
                ) {
                    self.discard(now, After::Running, AbortReason::Protocol, false);
                }
                return;
            }
            if let Message::CheckpointAbort { .. } = *message {
                // The primary abandoned an epoch whose request never reached this node (lost
                // with a broken link, `handle_link_reset`): nothing of it exists here.
                self.stats.stale_messages += 1;
                return;
            }
            return self.protocol_error(now, message, m_epoch);
        }
        let aborted = matches!(
            self.phase,
            SecondaryPhase::Discarding | SecondaryPhase::Resuming
        ) && self.after != After::Loaded;
        if aborted && !matches!(message, Message::CheckpointRequest { .. }) {
            // Stragglers of the epoch being discarded.
            self.stats.stale_messages += 1;
            return;
        }
        // From here: idle with a newer epoch, or busy with the current one.
        match (self.phase, message) {
            (SecondaryPhase::Running, Message::CheckpointRequest { epoch, .. }) => {
                // Running --Request(e)--> Pausing
                self.epoch = *epoch;
                self.highest = *epoch;
                self.batches = 0;
                self.pages = 0;
                self.bytes = 0;
                self.device_state = false;
                self.vm_applied = false;
                self.disk_reset = false;
                self.paused_at = Some(now);
                self.enter(now, SecondaryPhase::Pausing);
                self.out.vm(VmCommand::Pause);
            }
            (SecondaryPhase::Running, Message::CheckpointAbort { .. }) => {
                // An abort of an epoch whose request was lost with a broken link.
                self.stats.stale_messages += 1;
            }
            (SecondaryPhase::Running, _) => self.protocol_error(now, message, m_epoch),
            (_, Message::CheckpointRequest { .. }) => self.stats.duplicate_messages += 1,
            (SecondaryPhase::Receiving, Message::PageBatch { batch, ranges, .. }) => {
                if *batch < self.batches {
                    self.stats.duplicate_messages += 1;
                } else if *batch > self.batches {
                    self.protocol_error(now, message, m_epoch);
                } else {
                    let pages = pages_in(ranges).unwrap_or(u64::MAX);
                    // Pages the zero map marks are counted but carry no bulk.
                    if !message.bulk_rule().allows(bulk_len) {
                        return self.protocol_error(now, message, m_epoch);
                    }
                    self.batches += 1;
                    self.pages = self.pages.saturating_add(pages);
                    self.bytes = self.bytes.saturating_add(bulk_len);
                }
            }
            (SecondaryPhase::Receiving, Message::DeviceState { .. }) => {
                if self.device_state {
                    self.stats.duplicate_messages += 1;
                } else {
                    self.device_state = true;
                    self.bytes = self.bytes.saturating_add(bulk_len);
                }
            }
            (
                SecondaryPhase::Receiving,
                Message::CheckpointSent {
                    batches,
                    pages,
                    bytes,
                    ..
                },
            ) => {
                if (*batches, *pages, *bytes) != (self.batches, self.pages, self.bytes)
                    || !self.device_state
                {
                    // Something of the epoch is missing or extra: never apply it.
                    return self.protocol_error(now, message, m_epoch);
                }
                // Receiving --complete--> Applying
                self.out
                    .send(Message::CheckpointReceived { epoch: self.epoch });
                self.enter(now, SecondaryPhase::Applying);
                self.out
                    .vm(VmCommand::ApplyCheckpoint { epoch: self.epoch });
                self.out
                    .push(CheckpointOutput::ResetDisk { epoch: self.epoch });
                self.out
                    .push(CheckpointOutput::ResetRewriter { epoch: self.epoch });
            }
            (
                SecondaryPhase::Applying,
                Message::PageBatch { .. }
                | Message::DeviceState { .. }
                | Message::CheckpointSent { .. },
            ) => self.stats.duplicate_messages += 1,
            (
                SecondaryPhase::Resuming,
                Message::PageBatch { .. }
                | Message::DeviceState { .. }
                | Message::CheckpointSent { .. },
            ) if self.after == After::Loaded => self.stats.duplicate_messages += 1,
            (
                SecondaryPhase::Pausing | SecondaryPhase::Receiving,
                Message::CheckpointAbort { reason, .. },
            ) => {
                self.discard(now, After::Running, *reason, false);
            }
            (SecondaryPhase::Applying, Message::CheckpointAbort { .. }) => {
                // The primary gave up on an epoch this node already received whole (its
                // `Received` was lost with a broken link): the apply goes on, and the
                // primary's retry, a newer epoch carrying the same pages, covers it again.
                self.stats.stale_messages += 1;
            }
            (SecondaryPhase::Resuming, Message::CheckpointAbort { .. })
                if self.after == After::Loaded =>
            {
                self.stats.stale_messages += 1;
            }
            _ => self.protocol_error(now, message, m_epoch),
        }
    }

    /// The disk replicator emptied its overlays for `epoch`.
    pub fn handle_disk_reset(&mut self, now: Instant, epoch: Epoch) {
        advance(&mut self.now, now);
        if self.phase == SecondaryPhase::Applying && epoch == self.epoch && !self.disk_reset {
            self.disk_reset = true;
            self.maybe_applied(now);
        } else {
            self.stats.stray_completions += 1;
        }
    }

    /// The runtime finished a VM command.
    pub fn handle_vm_done(&mut self, now: Instant, done: VmCompletion) {
        advance(&mut self.now, now);
        match (self.phase, done) {
            (SecondaryPhase::Pausing, VmCompletion::Paused) => {
                // Pausing --Paused--> Receiving
                self.enter(now, SecondaryPhase::Receiving);
                self.out
                    .send(Message::CheckpointReady { epoch: self.epoch });
            }
            (SecondaryPhase::Applying, VmCompletion::Applied { epoch })
                if epoch == self.epoch && !self.vm_applied =>
            {
                self.vm_applied = true;
                self.maybe_applied(now);
            }
            (SecondaryPhase::Discarding, VmCompletion::Discarded { epoch })
                if epoch == self.epoch =>
            {
                if self.holds_guest {
                    self.resume(now, self.after);
                } else {
                    // Discarding --Discarded, nothing applied yet--> Running: the VM stays
                    // paused until a checkpoint gives it a guest.
                    self.on_resumed(now);
                }
            }
            (SecondaryPhase::Discarding, VmCompletion::Paused) => {
                // The pause an abort overtook; the discard and resume follow it.
            }
            (SecondaryPhase::Resuming, VmCompletion::Resumed) => self.on_resumed(now),
            (phase, VmCompletion::Failed { command }) => {
                self.out.event(CheckpointEvent::VmFailed {
                    epoch: self.epoch,
                    command,
                });
                match (phase, command) {
                    (SecondaryPhase::Pausing, VmCommandKind::Pause) => {
                        // Not paused: abandon the attempt; the primary retries.
                        self.stats.aborts += 1;
                        self.out.send(Message::CheckpointAbort {
                            epoch: self.epoch,
                            reason: AbortReason::VmFailure,
                        });
                        self.out.event(CheckpointEvent::Aborted {
                            epoch: self.epoch,
                            reason: AbortReason::VmFailure,
                        });
                        self.paused_at = None;
                        self.finish_idle(now);
                    }
                    (SecondaryPhase::Discarding, VmCommandKind::DiscardPartial) => {
                        // The cache still holds the last applied state plus part of this
                        // epoch; it is never applied, so resuming is still safe.
                        self.resume(now, self.after);
                    }
                    // A failed apply or resume leaves the SVM unusable: the node leaves the
                    // pair and gives up its state on the `VmFailed` event
                    // (`Node::on_vm_command_failed`), nothing is retried.
                    _ => self.stats.stray_completions += 1,
                }
            }
            _ => self.stats.stray_completions += 1,
        }
    }

    /// The peer link came back after a drop while paired. The last `Loaded` may have been
    /// lost with the old connection, leaving the primary waiting for it with its VM paused:
    /// a node that is running an applied epoch says `Loaded` for it again (a primary that
    /// had it already counts a duplicate). An epoch still arriving is left to the primary,
    /// which abandons it on the new link (`PrimaryCheckpointer::handle_link_reset`); one
    /// being applied sends its `Loaded` when done, on whatever link is up then.
    pub fn handle_link_reset(&mut self, now: Instant) {
        advance(&mut self.now, now);
        // Running (applied e) --link reset--> Running   [send Loaded(e) again]
        if self.phase == SecondaryPhase::Running && self.applied > Epoch(0) {
            self.out.send(Message::CheckpointLoaded {
                epoch: self.applied,
            });
        }
    }

    /// The primary is gone (secondary failover): discard an incomplete epoch, finish one whose
    /// receipt was confirmed, resume, then report [`CheckpointEvent::ReadyForTakeover`].
    pub fn handle_failover(&mut self, now: Instant) {
        advance(&mut self.now, now);
        match self.phase {
            SecondaryPhase::Running => self.go_solo(),
            SecondaryPhase::Solo => {}
            // Pausing/Receiving --failover--> Discarding --> Resuming --> Solo
            SecondaryPhase::Pausing | SecondaryPhase::Receiving => {
                self.discard(now, After::Failover, AbortReason::Shutdown, false)
            }
            // Applying --failover--> (finish the apply) --> Resuming --> Solo
            SecondaryPhase::Applying => self.failover_pending = true,
            SecondaryPhase::Discarding | SecondaryPhase::Resuming => {
                if self.after == After::Loaded {
                    self.failover_pending = true;
                } else {
                    self.after = After::Failover;
                }
            }
        }
    }

    /// A deadline may have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        advance(&mut self.now, now);
        if matches!(self.phase, SecondaryPhase::Running | SecondaryPhase::Solo)
            || self.stuck_reported
            || now < self.since + self.config.checkpoint_phase_timeout
        {
            return;
        }
        self.stuck_reported = true;
        self.stats.stuck += 1;
        let phase = if self.phase == SecondaryPhase::Receiving {
            StuckPhase::AwaitingPeer
        } else {
            StuckPhase::AwaitingVm
        };
        self.out.event(CheckpointEvent::Stuck {
            epoch: self.epoch,
            phase,
        });
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<CheckpointOutput> {
        self.out.pop()
    }

    /// The whole of an epoch arrived and was confirmed (`CheckpointReceived` sent): it is being
    /// applied, or the VM is resuming after its apply. A takeover now finishes it first, so
    /// the SVM holds that epoch's state even if it is the pairing's first.
    pub fn completing_an_epoch(&self) -> bool {
        self.phase == SecondaryPhase::Applying
            || (self.phase == SecondaryPhase::Resuming && self.after == After::Loaded)
    }

    /// The stuck timer of a waiting phase.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            SecondaryPhase::Running | SecondaryPhase::Solo => None,
            _ if self.stuck_reported => None,
            _ => Some(self.since + self.config.checkpoint_phase_timeout),
        }
    }

    fn maybe_applied(&mut self, now: Instant) {
        if self.vm_applied && self.disk_reset {
            // Applying --Applied + disk reset--> Resuming
            self.applied = self.epoch;
            self.holds_guest = true;
            self.resume(now, After::Loaded);
        }
    }

    fn resume(&mut self, now: Instant, after: After) {
        self.after = after;
        self.enter(now, SecondaryPhase::Resuming);
        self.out.vm(VmCommand::Resume);
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
        if self.after == After::Loaded {
            self.stats.checkpoints += 1;
            self.stats.pages = self.stats.pages.saturating_add(self.pages);
            self.stats.bytes = self.stats.bytes.saturating_add(self.bytes);
            if !self.failover_pending {
                self.out
                    .send(Message::CheckpointLoaded { epoch: self.epoch });
            }
            self.out.event(CheckpointEvent::CheckpointApplied {
                epoch: self.epoch,
                pause,
                pages: self.pages,
                bytes: self.bytes,
            });
        }
        if self.after == After::Failover || self.failover_pending {
            self.go_solo();
        } else {
            // Resuming --Resumed--> Running
            self.finish_idle(now);
        }
    }

    /// Discard the partial epoch for `reason`, telling the primary if this side decided it.
    fn discard(&mut self, now: Instant, after: After, reason: AbortReason, tell_peer: bool) {
        self.stats.aborts += 1;
        if tell_peer {
            self.out.send(Message::CheckpointAbort {
                epoch: self.epoch,
                reason,
            });
        }
        self.out.event(CheckpointEvent::Aborted {
            epoch: self.epoch,
            reason,
        });
        self.after = after;
        self.enter(now, SecondaryPhase::Discarding);
        self.out.vm(VmCommand::DiscardPartial { epoch: self.epoch });
    }

    fn protocol_error(&mut self, now: Instant, message: &Message, message_epoch: Epoch) {
        self.stats.protocol_errors += 1;
        self.out.event(CheckpointEvent::ProtocolError {
            epoch: self.epoch,
            kind: message.kind(),
            message_epoch,
        });
        // An incomplete epoch is abandoned (and the primary told); once Received was sent
        // the epoch is finished regardless.
        if matches!(
            self.phase,
            SecondaryPhase::Pausing | SecondaryPhase::Receiving
        ) {
            self.discard(now, After::Running, AbortReason::Protocol, true);
        }
    }

    fn finish_idle(&mut self, now: Instant) {
        self.enter(now, SecondaryPhase::Running);
        if let Some((epoch, reason)) = self.deferred_request.take() {
            self.handle_message(now, &Message::CheckpointRequest { epoch, reason }, 0);
        }
    }

    fn go_solo(&mut self) {
        // any --failover, VM consistent and running--> Solo
        self.phase = SecondaryPhase::Solo;
        self.deferred_request = None;
        self.out.event(CheckpointEvent::ReadyForTakeover {
            applied: self.applied,
        });
    }

    fn enter(&mut self, now: Instant, phase: SecondaryPhase) {
        self.phase = phase;
        self.since = now;
        self.stuck_reported = false;
    }
}
