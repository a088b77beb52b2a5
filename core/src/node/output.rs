//! Everything a [`Node`](super::Node) asks of the runtime: one [`Output`] enum, and the
//! [`Event`]s it reports (milestones, faults, failover), so the outbound side of the contract
//! fits on one screen.
//!
//! Invariant kept: [`Output::ToClient`] is emitted only under the output-commit rule
//! (architecture.md invariant 1) and the single-writer rule (invariant 5); every frame the node
//! will not release now is either held (and counted) or reported by an event, never dropped
//! silently.

use crate::checkpoint::{CheckpointEvent, VmCommand};
use crate::compare::MiscompareWhy;
use crate::disk::{DiskCommand, DiskEvent, GuestIoError, GuestIoId};
use crate::failover::{FailoverReason, LeaseRequest};
use crate::heartbeat::HeartbeatEvent;
use crate::ids::{Epoch, NicId, NodeId, Role, Term};
use crate::packet::FlowKey;
use crate::wire::{HelloRejectReason, Message, MessageKind};
use core::fmt;

use super::{Command, LinkCommand};

/// One thing for the runtime to do, from [`Node::poll_output`](super::Node::poll_output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this frame to the client network.
    ToClient(Vec<u8>),
    /// Send this pure TCP ACK to the client network: a window update the primary's comparator
    /// built after a clamp, once the secondary opened its window
    /// ([`CompareOutput::WindowUpdate`](crate::compare::CompareOutput::WindowUpdate)). It is
    /// no guest output (no payload, an ACK number the client already has), so it needs no
    /// output commit; emitted only while paired, as the primary. The runtime sends it like
    /// [`Output::ToClient`].
    WindowUpdate(Vec<u8>),
    /// Deliver this frame to the local VM's NIC `nic`. (Frames for clients carry no NIC: the
    /// runtime sends a guest frame out of the tap of the NIC whose MAC is its source.)
    ///
    /// Executor duty: a frame is written into the guest only while its VM runs (a checkpoint
    /// must never see a half-delivered frame); while the VM is paused the executor holds the
    /// frames of each NIC, in order, at most [`GUEST_HOLD_FRAMES_PER_NIC`] of them (a newer
    /// frame pushes out the oldest, which is counted, as a full NIC queue would), and delivers
    /// them when the VM runs again. A halted VM ([`Output::Halt`]) receives nothing.
    ToGuest {
        /// The NIC.
        nic: NicId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Send this message to the peer (encode it with [`crate::wire::encode`] and its bulk).
    ToPeer {
        /// The message.
        message: Message,
        /// Where its bulk bytes come from.
        bulk: OutBulk,
    },
    /// Execute a VM command; report with [`Input::VmDone`](super::Input::VmDone).
    Vm(VmCommand),
    /// Execute a disk command; report with [`Input::DiskDone`](super::Input::DiskDone).
    Disk(DiskCommand),
    /// Complete a guest disk request.
    GuestDiskDone {
        /// The request.
        io: GuestIoId,
        /// Its outcome.
        result: Result<(), GuestIoError>,
    },
    /// Re-protection bulk the runtime streams itself.
    Sync(SyncCommand),
    /// Send this lease request to the arbiter; report with
    /// [`Input::Arbiter`](super::Input::Arbiter).
    Arbiter(LeaseRequest),
    /// This former secondary now owns the client link in `term`: announce it (gratuitous ARP /
    /// unsolicited neighbour advertisement for the VM's addresses, RARP of its MACs), so that
    /// client frames come here. Emitted once per takeover, right after [`Event::FailedOver`].
    ClaimClientLink {
        /// The term.
        term: Term,
    },
    /// Dial, stop dialling, accept or close the peer link ([`LinkCommand`]): the node decides,
    /// the executor keeps only the mechanics (address, connect timeout, retry pacing,
    /// generations).
    Link(LinkCommand),
    /// Stop the VM for good and end the node's service: it orders nothing more. The event that
    /// says why ([`Event::Deposed`], [`Event::Stopped`] or [`Event::HandshakeRejected`]) comes
    /// just before, for the log.
    Halt(HaltReason),
    /// The guest's console output (the executor's output gate): a secondary's console is held
    /// from its start, because what its guest prints is speculative until it takes over.
    Console(ConsoleCommand),
    /// Something to log, count or act on.
    Event(Event),
}

/// How many frames for one guest NIC an executor holds while the VM is paused
/// ([`Output::ToGuest`]): the one bound of the real runtime and the simulator.
pub const GUEST_HOLD_FRAMES_PER_NIC: usize = 256;

/// What to do with the guest console output the executor holds ([`Output::Console`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// The SVM just became the checkpoint (emitted on its `Applied` completion, before the
    /// checkpointer resumes it): what its guest printed since the last apply was rolled back
    /// with it, so drop it.
    Discard,
    /// This former secondary took over: its guest's output is real from now on, starting with
    /// what it printed since the last apply; release it and stop holding. Emitted once per
    /// takeover, right after [`Event::FailedOver`].
    Release,
}

/// Why a node halts its VM ([`Output::Halt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltReason {
    /// The other node holds the current term: this node never releases again (fencing).
    Deposed,
    /// The node stopped on [`Command::Shutdown`](super::Command::Shutdown): an orderly end.
    Stopped,
    /// The node's own VM failed a command or left a checkpoint step stuck while paired: it
    /// said goodbye so that its peer takes over, and stopped. A failure of this host, not an
    /// orderly end: a supervisor should restart the node (it comes back as a newcomer and is
    /// re-protected), so a runtime exits with a failure status.
    VmFailed,
    /// The primary refused this connecting node ([`Event::HandshakeRejected`] just before):
    /// its VM description differs from the primary's, which no retry can change; an operator
    /// must start it with the same VM.
    Refused(HelloRejectReason),
}

/// Why the node refused a command ([`Event::CommandRefused`]). The `Display` text is written
/// for an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandRefusal {
    /// `Start` on a node that started already.
    AlreadyStarted,
    /// `ForceCheckpoint` on a secondary, or on a primary that is not paired.
    NotPaired,
    /// `SetCheckpointInterval` on a secondary: the interval is the primary's.
    NotPrimary,
    /// `SetCheckpointInterval` of zero (it would checkpoint continuously).
    ZeroInterval,
    /// `Failover` on a node that depends on no peer (solo, taking over, deposed, idle).
    NoPeerToLeave,
    /// `Failover` on a node that cannot serve alone: it never started, or (a secondary) its VM
    /// is no copy of the primary's yet (no checkpoint of this pairing applied).
    NoCopyYet,
    /// `Reprotect` on a node that is not running solo.
    NotSolo,
}

impl fmt::Display for CommandRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandRefusal::AlreadyStarted => "the node started already",
            CommandRefusal::NotPaired => "a checkpoint needs a paired primary",
            CommandRefusal::NotPrimary => "the checkpoint interval is the primary's",
            CommandRefusal::ZeroInterval => "a zero checkpoint interval is refused",
            CommandRefusal::NoPeerToLeave => "failover needs a node that depends on a peer",
            CommandRefusal::NoCopyYet => {
                "the node cannot serve alone: its VM is no copy of the primary's yet, or it never started"
            }
            CommandRefusal::NotSolo => "re-protection needs a node running solo",
        })
    }
}

/// The bulk payload of an outbound peer message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutBulk {
    /// None.
    None,
    /// These bytes (mirrored or secondary frames).
    Frame(Vec<u8>),
    /// The data of guest write `io`, which the runtime holds (a forwarded `DiskWrite`).
    GuestWrite(GuestIoId),
}

/// Bulk transfers the runtime performs itself, because their bytes never pass the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncCommand {
    /// Stream the whole guest memory and disk to the peer as `SyncPages` and `SyncDisk` frames
    /// of `term` while the guest keeps running (re-sending what the guest dirties meanwhile),
    /// and from the moment of this command track pages the guest dirties, so that the first
    /// checkpoint after `SyncDone` carries them; report [`Input::SyncSent`](super::Input).
    SendAll {
        /// The re-protection's term.
        term: Term,
    },
}

/// A protocol violation by the peer (reported, never a panic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// The message travels the other way for our role (or is an arbiter message).
    WrongDirection,
    /// The bulk length does not fit the message, or the core needs the bytes and got none.
    BadBulk {
        /// Length received.
        len: u64,
    },
    /// The message cannot come in this phase of the node (for instance a checkpoint message
    /// before the handshake).
    UnexpectedInPhase,
    /// The checkpointer refused it (out of order for the epoch in progress).
    Checkpoint {
        /// The epoch in progress.
        epoch: Epoch,
        /// The message's epoch.
        message_epoch: Epoch,
    },
    /// The re-protection copy's totals do not match what `SyncStart` announced.
    SyncMismatch,
}

/// What happened, for logs, metrics and the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake succeeded; the initial (or re-protection) copy follows.
    Paired {
        /// The peer.
        peer: NodeId,
        /// The pair's term.
        term: Term,
        /// This node's role in it.
        role: Role,
    },
    /// A `Hello` was refused (by us: `by_peer` false; by the peer: true).
    HandshakeRejected {
        /// Why.
        reason: HelloRejectReason,
        /// Who refused.
        by_peer: bool,
    },
    /// A checkpoint milestone or fault, as the checkpointer reported it: `CheckpointDone`
    /// (primary: the secondary loaded it, the primary resumed), `CheckpointApplied`
    /// (secondary: applied, the SVM runs again), `Aborted` (retried later), `Stuck` (the
    /// failover path follows) or `VmFailed`. Never `ProtocolError` (reported as
    /// [`Event::ProtocolError`]) nor `ReadyForTakeover` (the node acts on it instead).
    Checkpoint(CheckpointEvent),
    /// The two VMs' output differed (a checkpoint follows).
    Miscompare {
        /// The flow.
        flow: FlowKey,
        /// Where and how.
        why: MiscompareWhy,
    },
    /// The peer's liveness as the heartbeat sees it: `PeerSuspect` (silent for a while),
    /// `PeerRecovered` (it spoke again before being declared lost) or `PeerLost` (failover
    /// follows).
    Peer(HeartbeatEvent),
    /// This node stopped depending on its peer and asks the arbiter for `term`.
    TakeoverStarted {
        /// The term acquired.
        term: Term,
        /// The role held before.
        from: Role,
        /// Why.
        reason: FailoverReason,
    },
    /// The takeover is complete: this node runs solo in `term` and releases output.
    FailedOver {
        /// The term.
        term: Term,
        /// Why the failover happened.
        reason: FailoverReason,
    },
    /// The lease lapsed: output is held until it is renewed.
    ReleaseSuspended {
        /// The term.
        term: Term,
    },
    /// The lease is back after a lapse: held output is released.
    ReleaseResumed {
        /// The term.
        term: Term,
        /// Frames released from the hold.
        released: u64,
    },
    /// The solo hold reached its bound: the guest is paused until output can be released.
    Backpressure {
        /// Frames held.
        held: u64,
    },
    /// The other node holds the current term: this node never releases again (fencing). An
    /// [`Output::Halt`] follows; the VM is to be re-protected from the holder.
    Deposed {
        /// This node's term.
        term: Term,
        /// The holder, if known.
        holder: Option<NodeId>,
        /// The newest term known.
        current_term: Term,
        /// Held output discarded because releasing it would make two writers.
        discarded: u64,
    },
    /// A peer message was refused.
    ProtocolError {
        /// The message's kind.
        kind: MessageKind,
        /// What was wrong.
        violation: ProtocolViolation,
    },
    /// A disk replication milestone or fault.
    Disk(DiskEvent),
    /// Re-protection copy started.
    SyncStarted {
        /// The term.
        term: Term,
        /// Memory bytes to copy.
        memory_bytes: u64,
        /// Disk bytes to copy.
        disk_bytes: u64,
    },
    /// Re-protection copy progress (both sides report it).
    SyncProgress {
        /// The term.
        term: Term,
        /// Memory bytes stored by the secondary.
        memory_bytes_done: u64,
        /// Disk bytes stored by the secondary.
        disk_bytes_done: u64,
    },
    /// Re-protection copy done; replication resumes with checkpoint `epoch`.
    Reprotected {
        /// The term.
        term: Term,
        /// The first checkpoint of the new pair.
        epoch: Epoch,
    },
    /// The re-protection failed (the new secondary was lost); the node stays solo.
    ReprotectFailed {
        /// The term.
        term: Term,
    },
    /// The node stopped ([`Command::Shutdown`](super::Command::Shutdown), or its own VM stuck
    /// while paired); an [`Output::Halt`] follows.
    Stopped,
    /// An [`Input::Command`](super::Input::Command) was refused; nothing changed. A command
    /// that is not refused was taken: this event is the whole answer to "did the node take
    /// it?" (an operator interface replies from it, the simulator counts it).
    CommandRefused {
        /// The command.
        command: Command,
        /// Why.
        why: CommandRefusal,
    },
}
