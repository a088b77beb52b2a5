//! The checkpoint protocol, both roles: [`PrimaryCheckpointer`] decides when to checkpoint and
//! drives request, pause, transfer, release and resume; [`SecondaryCheckpointer`] pauses the
//! SVM, counts what arrives into its RAM cache, and applies a whole epoch or none of it.
//! The node holds the one its role needs.
//!
//! QEMU's order is kept (colo-reference.md, "Checkpoint protocol"; QEMU migration/colo.c):
//! request -> ready (S paused) -> P pauses, saves device state, streams dirty pages -> sent ->
//! S has everything in its cache -> received (only now does P release output held for the
//! epoch) -> S copies pages dirtied by either side from cache, loads device state, empties disk
//! overlays, resets TCP offsets, resumes -> loaded -> P resumes. Bulk bytes never pass through
//! here: the machine orders [`VmCommand`]s and the runtime reports [`VmCompletion`]s.
//!
//! Invariants kept: (output commit) [`CheckpointOutput::ReleaseOutput`] for epoch `e` is emitted
//! only after `CheckpointReceived(e)` arrived; (atomic checkpoint) the secondary orders
//! [`VmCommand::ApplyCheckpoint`] for `e` only after every batch and the device state of `e`
//! arrived and matched `CheckpointSent(e)`'s totals, and a failover during a transfer discards
//! the partial epoch while a failover during an apply finishes it first. Every message carries
//! its epoch: older epochs are stale (ignored, counted), repeats are duplicates (ignored,
//! counted), anything else out of order is a protocol-error event; nothing panics on peer input.
//!
//! Epoch numbers name checkpoint attempts and only grow: an aborted epoch is never reused (the
//! next attempt takes the next number), so a straggler of an aborted attempt is always stale.

mod primary;
mod secondary;
#[cfg(test)]
mod tests;

pub use primary::{PrimaryCheckpointer, PrimaryPhase};
pub use secondary::{SecondaryCheckpointer, SecondaryPhase};

use crate::ids::{CheckpointReason, Epoch, PageRange};
use crate::time::{Duration, Instant};
use crate::wire::message::{AbortReason, Message, MessageKind};
use thiserror::Error;

/// Tuning of the checkpoint protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Periodic checkpoint interval, re-armed after every checkpoint (QEMU's
    /// `x-checkpoint-delay`, default 20 s; colo defaults lower because on-demand checkpoints
    /// are coalesced and a shorter interval bounds how much state one checkpoint carries).
    pub checkpoint_interval: Duration,
    /// A phase that waits longer than this on the peer or the VM is stuck: the machine reports
    /// it and the node takes the failover path.
    pub checkpoint_phase_timeout: Duration,
    /// Delay before retrying after an aborted attempt (avoids a hot loop on a failing VM).
    pub checkpoint_retry_delay: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_phase_timeout: Duration::from_secs(3),
            checkpoint_retry_delay: Duration::from_millis(100),
        }
    }
}

/// A checkpoint configuration that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum CheckpointConfigError {
    /// A zero interval would checkpoint continuously.
    #[error("checkpoint_interval must be greater than zero")]
    ZeroInterval,
    /// A zero phase timeout would declare every phase stuck.
    #[error("checkpoint_phase_timeout must be greater than zero")]
    ZeroPhaseTimeout,
}

impl CheckpointConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), CheckpointConfigError> {
        if self.checkpoint_interval.is_zero() {
            return Err(CheckpointConfigError::ZeroInterval);
        }
        if self.checkpoint_phase_timeout.is_zero() {
            return Err(CheckpointConfigError::ZeroPhaseTimeout);
        }
        Ok(())
    }
}

/// What the runtime must do with the local VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmCommand {
    /// Stop the vCPUs and drain in-flight device I/O (QEMU's `vm_stop` drains block I/O).
    Pause,
    /// Start the vCPUs again.
    Resume,
    /// Primary: read and clear the dirty logs (KVM's and the VMM's own bitmap) for `epoch`.
    CollectDirty {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// Primary: stream these pages to the secondary as `PageBatch` frames of `epoch`. The
    /// ranges are every page collected since the last completed checkpoint (the fresh harvest
    /// and what aborted attempts collected): send exactly these, keep nothing back.
    SendPages {
        /// The checkpoint.
        epoch: Epoch,
        /// The pages.
        ranges: Vec<PageRange>,
    },
    /// Primary: save the device state and send it as the `DeviceState` frame of `epoch`.
    SaveDeviceState {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// Secondary: copy every page dirtied by either side from the RAM cache into SVM memory,
    /// then load the received device state.
    ApplyCheckpoint {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// Secondary: forget what arrived for `epoch` (the cache keeps the last applied state).
    DiscardPartial {
        /// The checkpoint abandoned.
        epoch: Epoch,
    },
}

/// A VM command the runtime finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmCompletion {
    /// `Pause` done.
    Paused,
    /// `Resume` done.
    Resumed,
    /// `CollectDirty` done: the dirty pages.
    DirtyCollected {
        /// The checkpoint.
        epoch: Epoch,
        /// Pages dirtied since the last collection (this harvest only: the primary
        /// checkpointer adds the pages of aborted attempts itself).
        ranges: Vec<PageRange>,
    },
    /// `SendPages` done.
    PagesSent {
        /// The checkpoint.
        epoch: Epoch,
        /// `PageBatch` frames sent.
        batches: u32,
        /// Pages sent.
        pages: u64,
        /// Bulk bytes sent.
        bytes: u64,
    },
    /// `SaveDeviceState` done (saved and sent).
    DeviceStateSent {
        /// The checkpoint.
        epoch: Epoch,
        /// Its size.
        bytes: u64,
    },
    /// `ApplyCheckpoint` done.
    Applied {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// `DiscardPartial` done.
    Discarded {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// A command failed.
    Failed {
        /// Which command.
        command: VmCommandKind,
    },
}

impl VmCommand {
    /// The command's name, as a failure or an event reports it.
    pub fn kind(&self) -> VmCommandKind {
        match self {
            VmCommand::Pause => VmCommandKind::Pause,
            VmCommand::Resume => VmCommandKind::Resume,
            VmCommand::CollectDirty { .. } => VmCommandKind::CollectDirty,
            VmCommand::SendPages { .. } => VmCommandKind::SendPages,
            VmCommand::SaveDeviceState { .. } => VmCommandKind::SaveDeviceState,
            VmCommand::ApplyCheckpoint { .. } => VmCommandKind::ApplyCheckpoint,
            VmCommand::DiscardPartial { .. } => VmCommandKind::DiscardPartial,
        }
    }
}

/// The name of a [`VmCommand`], for failures and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum VmCommandKind {
    Pause,
    Resume,
    CollectDirty,
    SendPages,
    SaveDeviceState,
    ApplyCheckpoint,
    DiscardPartial,
}

/// What the node must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointOutput {
    /// Send this message to the peer.
    Send(Message),
    /// Execute this VM command.
    Vm(VmCommand),
    /// Primary: the secondary has the whole of `epoch`; release every output held for epochs
    /// up to it (the comparator's queued primary frames).
    ReleaseOutput {
        /// The checkpoint received.
        epoch: Epoch,
    },
    /// Secondary: empty the disk overlays for `epoch` and report with
    /// [`SecondaryCheckpointer::handle_disk_reset`].
    ResetDisk {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// Secondary: reset the TCP rewriter's offsets (the SVM now has the PVM's TCP state).
    ResetRewriter {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// Report this.
    Event(CheckpointEvent),
}

/// The phases a stuck timer can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StuckPhase {
    /// Waiting for the peer's answer to a request.
    AwaitingPeer,
    /// Waiting for the local VM.
    AwaitingVm,
}

/// Milestones and faults of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointEvent {
    /// Primary: checkpoint `epoch` is complete (S loaded, P resumed).
    CheckpointDone {
        /// The checkpoint.
        epoch: Epoch,
        /// Why it was taken.
        reason: CheckpointReason,
        /// How long the PVM was paused.
        pause: Duration,
        /// Pages sent.
        pages: u64,
        /// Bulk bytes sent (pages and device state).
        bytes: u64,
    },
    /// Secondary: checkpoint `epoch` is applied and the SVM runs again.
    CheckpointApplied {
        /// The checkpoint.
        epoch: Epoch,
        /// How long the SVM was paused.
        pause: Duration,
        /// Pages received.
        pages: u64,
        /// Bulk bytes received.
        bytes: u64,
    },
    /// An attempt was abandoned; the partial epoch is discarded.
    Aborted {
        /// The checkpoint.
        epoch: Epoch,
        /// Why.
        reason: AbortReason,
    },
    /// A message that cannot come at this point of the protocol (never a stale or duplicate
    /// one: those are only counted).
    ProtocolError {
        /// The epoch in progress (or last finished).
        epoch: Epoch,
        /// The message.
        kind: MessageKind,
        /// Its epoch.
        message_epoch: Epoch,
    },
    /// A phase waited longer than `checkpoint_phase_timeout`: the node takes the failover
    /// path (the machine itself stops checkpointing).
    Stuck {
        /// The checkpoint.
        epoch: Epoch,
        /// What it waited for.
        phase: StuckPhase,
    },
    /// A VM command failed.
    VmFailed {
        /// The checkpoint.
        epoch: Epoch,
        /// The command.
        command: VmCommandKind,
    },
    /// After a failover, the local VM is consistent and running: the node may take over.
    /// `applied` is the last checkpoint the VM state reflects (secondary), or the last
    /// completed one (primary).
    ReadyForTakeover {
        /// The last applied/completed checkpoint.
        applied: Epoch,
    },
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints completed (primary) or applied (secondary).
    pub checkpoints: u64,
    /// Triggers absorbed by a checkpoint already pending or in progress.
    pub coalesced_triggers: u64,
    /// Messages of an older epoch: ignored.
    pub stale_messages: u64,
    /// Repeats of a message already handled for this epoch: ignored.
    pub duplicate_messages: u64,
    /// Out-of-order messages reported as protocol errors.
    pub protocol_errors: u64,
    /// Attempts abandoned.
    pub aborts: u64,
    /// Phases that timed out.
    pub stuck: u64,
    /// VM completions that did not match the phase: ignored.
    pub stray_completions: u64,
    /// Pages transferred.
    pub pages: u64,
    /// Bulk bytes transferred.
    pub bytes: u64,
    /// Total pause time, in nanoseconds.
    pub pause_nanos: u64,
}

/// The checkpointers' shorthands for queueing (FIFO: order is part of the protocol).
type Outbox = crate::outbox::Outbox<CheckpointOutput>;

impl Outbox {
    fn send(&mut self, m: Message) {
        self.push(CheckpointOutput::Send(m));
    }
    fn vm(&mut self, c: VmCommand) {
        self.push(CheckpointOutput::Vm(c));
    }
    fn event(&mut self, e: CheckpointEvent) {
        self.push(CheckpointOutput::Event(e));
    }
}

fn advance(last: &mut Instant, now: Instant) {
    assert!(
        now >= *last,
        "time went backwards: the caller must pass a monotone `now` ({now:?} < {last:?})"
    );
    *last = now;
}
