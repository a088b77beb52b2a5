//! The messages of colo's peer protocol (primary <-> secondary) and of the arbiter protocol
//! (node <-> arbiter), as plain serde types.
//!
//! This file owns the vocabulary only: which messages exist, what each field means, which
//! direction a message travels and whether it is followed by a bulk payload. It keeps two
//! invariants. First, every replication message carries the [`Epoch`] it belongs to and every
//! failover, fencing or re-protection message carries its [`Term`], so a receiver can always
//! discard what belongs to a past epoch or term (QEMU's COLO has no such tags: it relies on the
//! migration stream being one ordered session; colo's link survives checkpoints and failovers).
//! Second, bulk bytes (guest pages, device state, disk data, Ethernet frames) never live inside a
//! message: a message is a small header, and [`Message::bulk_rule`] states exactly how many bulk
//! bytes must follow it, so the codec can reject a frame whose bulk does not fit its header.
//!
//! Compatibility: the encoding is bincode's, so the order of variants and fields is the wire
//! format. New variants go at the end of [`Message`]; changing or reordering anything else needs
//! a new [`PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

use super::zero::ZeroPages;
use crate::ids::{CheckpointReason, ClusterId, Epoch, NicId, NodeId, PageRange, Role, Term};

/// The protocol version this build speaks. It travels in every frame header (so a peer speaking
/// another version is detected before its message is decoded) and in [`Message::Hello`].
pub const PROTOCOL_VERSION: u16 = 7;

/// The guest page size the page-carrying messages use: [`Message::PageBatch`] and
/// [`Message::SyncPages`] carry exactly `PAGE_SIZE` bytes per page of their ranges that their
/// [`ZeroPages`] map does not mark zero. x86 dirty
/// logging (KVM's `KVM_GET_DIRTY_LOG`) tracks 4 KiB pages even when the guest uses huge pages.
pub const PAGE_SIZE: u64 = 4096;

/// Pages per [`Message::PageBatch`] / [`Message::SyncPages`] frame a sender streams: 4 MiB of
/// bulk, well under the default 16 MiB bulk limit ([`crate::wire::Limits`]), and few enough
/// ranges to stay under the 64 KiB message limit (a range encodes in at most ~20 bytes, so even
/// 1024 single-page ranges fit). The runtime's page writer and the simulator's VM both batch by
/// it, so a simulated checkpoint has the real one's frame count.
pub const PAGES_PER_BATCH: u64 = 1024;

/// Identifies one forwarded disk write, so its [`Message::DiskAck`] can be matched to it.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct WriteId(pub u64);

/// Why a [`Message::HelloReject`] refused a peer. The rejecting node closes the link after it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum HelloRejectReason {
    /// The peer's `protocol_version` is not one this node speaks (`supported` is ours).
    VersionMismatch {
        /// The version the rejecting node speaks.
        supported: u16,
    },
    /// The peer belongs to another protected-VM pair.
    ClusterMismatch {
        /// The rejecting node's cluster.
        expected: ClusterId,
    },
    /// Both ends claim the same role (two primaries, or two secondaries).
    RoleConflict {
        /// The role the rejecting node holds.
        ours: Role,
    },
    /// The peer's term is older than the rejecting node's: it missed a failover and must not
    /// act on its old role (fencing).
    StaleTerm {
        /// The rejecting node's current term.
        current: Term,
    },
    /// The peer describes another VM (memory, vCPUs, boot image, devices): pairing it would
    /// build a corrupt replica.
    VmMismatch {
        /// The rejecting node's VM fingerprint.
        expected: u64,
    },
}

/// Why a checkpoint transfer was abandoned ([`Message::CheckpointAbort`]). The partial epoch is
/// discarded by the secondary; the next checkpoint starts from a fresh request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum AbortReason {
    /// A step of the checkpoint did not finish within its deadline.
    Timeout,
    /// The VM could not be paused, saved or loaded.
    VmFailure,
    /// A disk overlay operation failed.
    DiskFailure,
    /// The sender received a message that does not fit the checkpoint in progress.
    Protocol,
    /// The node is shutting down.
    Shutdown,
    /// The peer link broke and came back while the epoch was in flight: frames of it may be
    /// lost, so the primary abandons it and checkpoints again on the new link.
    LinkReset,
}

/// The outcome of a forwarded disk write on the secondary ([`Message::DiskAck`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DiskResult {
    /// Written to the parent image (after copy-before-write into the hidden overlay).
    Written,
    /// The write lies outside the secondary's disk.
    OutOfRange,
    /// The secondary's storage failed the write.
    IoError,
}

/// Why a node ends the link in order ([`Message::Goodbye`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// An operator stopped the node.
    Shutdown,
    /// The sender failed over and now runs alone; the receiver must stop acting on its role.
    FailedOver,
    /// The sender lost its lease and stops releasing output.
    Fenced,
    /// The sender saw a protocol violation and resets the link.
    ProtocolError,
}

/// Which way a message travels. "Primary" and "secondary" are roles in the current term: after
/// a failover and re-protection the hosts swap roles, the directions stay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// Primary to secondary.
    PrimaryToSecondary,
    /// Secondary to primary.
    SecondaryToPrimary,
    /// Either peer may send it.
    Either,
    /// A node to the arbiter.
    NodeToArbiter,
    /// The arbiter to a node.
    ArbiterToNode,
}

/// How many bulk bytes must follow a message in its frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BulkRule {
    /// No bulk payload: the frame's bulk length must be 0.
    None,
    /// Any length up to the receiver's `max_bulk_len` (frames, device state).
    Any,
    /// Exactly this many bytes (pages times [`PAGE_SIZE`], or a disk write's `len`). `None`
    /// when the header's own arithmetic overflows, which no bulk length can satisfy.
    Exact(Option<u64>),
}

impl BulkRule {
    /// Whether a bulk payload of `len` bytes fits this rule.
    pub fn allows(self, len: u64) -> bool {
        match self {
            BulkRule::None => len == 0,
            BulkRule::Any => true,
            BulkRule::Exact(expected) => expected == Some(len),
        }
    }
}

/// One message of the peer or arbiter protocol.
///
/// Variants are grouped as in `docs/protocol.md`: handshake, liveness, frames, checkpoint,
/// disk, failover and re-protection, arbiter. Messages documented "+ bulk" are followed in
/// their frame by the bulk payload described; the codec hands it out as a borrowed slice.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    // ---- Handshake -------------------------------------------------------------------------
    /// First message on a new link, sent by the connecting node.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// The protected-VM pair the sender belongs to.
        cluster_id: ClusterId,
        /// The sender's identity.
        node_id: NodeId,
        /// The role the sender holds in `term`.
        role: Role,
        /// The sender's current term.
        term: Term,
        /// The last checkpoint epoch the sender applied (secondary) or saw loaded (primary).
        last_applied_epoch: Epoch,
        /// A digest of the VM the sender protects (the runtime's VM description); 0 when the
        /// sender does not say. Two non-zero fingerprints that differ refuse the pairing.
        vm_fingerprint: u64,
    },
    /// The answer to an acceptable [`Message::Hello`]: the accepting node's own view.
    HelloAccept {
        /// The accepting node's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// The accepting node's cluster (equal to the Hello's).
        cluster_id: ClusterId,
        /// The accepting node's identity.
        node_id: NodeId,
        /// The role the accepting node holds in `term`.
        role: Role,
        /// The accepting node's current term (at least the Hello's).
        term: Term,
        /// The last checkpoint epoch the accepting node applied or saw loaded.
        last_applied_epoch: Epoch,
    },
    /// The answer to an unacceptable [`Message::Hello`]; the link is closed after it.
    HelloReject {
        /// Why the peer was refused.
        reason: HelloRejectReason,
        /// The rejecting node's current term.
        term: Term,
    },

    // ---- Liveness ----------------------------------------------------------------------------
    /// Periodic liveness probe (either direction). QEMU has no heartbeat; colo detects a lost
    /// peer after a configured number of missed heartbeats.
    Heartbeat {
        /// The sender's current term.
        term: Term,
        /// Sender-local probe counter, echoed back in [`Message::HeartbeatEcho`].
        seq: u64,
        /// The sender's current checkpoint epoch.
        epoch: Epoch,
    },
    /// The answer to a [`Message::Heartbeat`], for round-trip measurement.
    HeartbeatEcho {
        /// The echoing node's current term.
        term: Term,
        /// The `seq` of the heartbeat being answered.
        seq: u64,
        /// The echoing node's current checkpoint epoch.
        epoch: Epoch,
    },
    /// A generic acknowledgement of a sender-numbered message, where a protocol step needs one.
    Ack {
        /// The number being acknowledged.
        seq: u64,
    },

    // ---- Frames -------------------------------------------------------------------------------
    /// P -> S, + bulk: one whole Ethernet frame from a client, mirrored so the SVM sees the
    /// same input as the PVM (QEMU's filter-mirror).
    MirroredFrame {
        /// The primary's epoch when it mirrored the frame.
        epoch: Epoch,
        /// The guest NIC the frame is for.
        nic: NicId,
    },
    /// S -> P, + bulk: one whole Ethernet frame the SVM sent, after TCP rewrite, for the
    /// comparator (QEMU's filter-redirector).
    SecondaryOutput {
        /// The last epoch the secondary had applied when the SVM produced the frame. The
        /// primary drops output of an epoch older than its last loaded checkpoint: it came from
        /// SVM state that checkpoint replaced, and comparing it would cause a spurious
        /// miscompare.
        epoch: Epoch,
    },

    // ---- Checkpoint -------------------------------------------------------------------------
    /// P -> S: start checkpoint `epoch`; the secondary pauses its SVM and answers
    /// [`Message::CheckpointReady`] (QEMU: COLO_MESSAGE_CHECKPOINT_REQUEST).
    CheckpointRequest {
        /// The checkpoint being started.
        epoch: Epoch,
        /// Why the primary takes it.
        reason: CheckpointReason,
    },
    /// S -> P: the SVM is paused for `epoch`; the primary may pause and send state
    /// (QEMU: COLO_MESSAGE_CHECKPOINT_REPLY).
    CheckpointReady {
        /// The checkpoint being prepared.
        epoch: Epoch,
    },
    /// P -> S, + bulk: dirty pages of `epoch`, exactly [`PAGE_SIZE`] bytes per page of
    /// `ranges` that `zero` does not mark, in range order. Pages land in the secondary's RAM
    /// cache, never straight in SVM memory (QEMU's colo_cache).
    PageBatch {
        /// The checkpoint the pages belong to.
        epoch: Epoch,
        /// Batch number within the epoch, from 0, consecutive.
        batch: u32,
        /// The pages in this batch.
        ranges: Vec<PageRange>,
        /// Which pages of `ranges` (counted in order) are all-zero and not in the bulk.
        zero: ZeroPages,
    },
    /// P -> S, + bulk: the PVM's saved device state for `epoch` (vCPUs, irqchip, timers,
    /// devices), an opaque blob to the codec.
    DeviceState {
        /// The checkpoint the state belongs to.
        epoch: Epoch,
    },
    /// P -> S: everything of `epoch` has been sent (QEMU: COLO_MESSAGE_VMSTATE_SIZE, which
    /// lets the secondary check it received the whole state).
    CheckpointSent {
        /// The checkpoint that was sent.
        epoch: Epoch,
        /// Number of [`Message::PageBatch`] messages sent for the epoch.
        batches: u32,
        /// Total pages sent.
        pages: u64,
        /// Total bulk bytes sent (pages and device state).
        bytes: u64,
    },
    /// S -> P: the whole of `epoch` is in the secondary's cache. Only now may the primary
    /// release output held for `epoch` (QEMU: COLO_MESSAGE_VMSTATE_RECEIVED).
    CheckpointReceived {
        /// The checkpoint that was received.
        epoch: Epoch,
    },
    /// S -> P: `epoch` has been applied and the SVM resumed (QEMU: COLO_MESSAGE_VMSTATE_LOADED).
    CheckpointLoaded {
        /// The checkpoint that was applied.
        epoch: Epoch,
    },
    /// Either way: checkpoint `epoch` is abandoned; the secondary discards the partial epoch.
    CheckpointAbort {
        /// The checkpoint abandoned.
        epoch: Epoch,
        /// Why.
        reason: AbortReason,
    },

    // ---- Disk --------------------------------------------------------------------------------
    /// P -> S, + bulk: a guest write the primary forwards before completing it to the guest;
    /// exactly `len` bulk bytes of data.
    DiskWrite {
        /// The epoch the write was issued in.
        epoch: Epoch,
        /// The primary's id for the write.
        write_id: WriteId,
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes (equal to the bulk length).
        len: u32,
    },
    /// S -> P: the outcome of a [`Message::DiskWrite`].
    DiskAck {
        /// The write being acknowledged.
        write_id: WriteId,
        /// Its outcome.
        result: DiskResult,
    },

    // ---- Failover and re-protection ----------------------------------------------------------
    /// Either way: the sender stops the link in order.
    Goodbye {
        /// The sender's current term.
        term: Term,
        /// Why.
        reason: GoodbyeReason,
    },
    /// Either way: `node_id` took over and starts `term` (after failover or re-protection).
    TermAnnounce {
        /// The new term.
        term: Term,
        /// The node that runs the VM in it.
        node_id: NodeId,
    },
    /// P -> S: re-protection begins; a full memory and disk copy of this size follows.
    SyncStart {
        /// The term the re-protection belongs to.
        term: Term,
        /// Guest memory to copy, in bytes.
        memory_bytes: u64,
        /// Disk to copy, in bytes.
        disk_bytes: u64,
    },
    /// S -> P: how much of the re-protection copy the secondary has stored (flow control and
    /// operator progress).
    SyncProgress {
        /// The term the re-protection belongs to.
        term: Term,
        /// Guest memory bytes stored.
        memory_bytes_done: u64,
        /// Disk bytes stored.
        disk_bytes_done: u64,
    },
    /// P -> S: re-protection copy finished; replication resumes with checkpoint `epoch`.
    SyncDone {
        /// The term the re-protection belongs to.
        term: Term,
        /// The epoch replication resumes at.
        epoch: Epoch,
    },

    // ---- Arbiter -----------------------------------------------------------------------------
    /// Node -> arbiter: grant or renew the lease of `term` for `duration_ms`. A node releases
    /// output without its peer only while it holds this lease (fencing).
    LeaseRequest {
        /// The term the lease is for.
        term: Term,
        /// The requesting node.
        node_id: NodeId,
        /// Requested lease length in milliseconds.
        duration_ms: u64,
    },
    /// Arbiter -> node: the lease is granted, counting from the arbiter's receipt.
    LeaseGrant {
        /// The term the lease is for.
        term: Term,
        /// The holder.
        node_id: NodeId,
        /// Granted length in milliseconds (at most the requested one).
        valid_for_ms: u64,
    },
    /// Arbiter -> node: the lease is refused; another node holds it or a newer term exists.
    LeaseDenied {
        /// The term that was asked for.
        term: Term,
        /// The node holding the lease now.
        holder: NodeId,
        /// The arbiter's current term.
        current_term: Term,
    },

    // ---- Re-protection bulk (added after the table above; keep new variants last) -------------
    /// P -> S, + bulk: guest pages of the re-protection copy, [`PAGE_SIZE`] bytes per page
    /// that `zero` does not mark.
    SyncPages {
        /// The term the re-protection belongs to.
        term: Term,
        /// Batch number, from 0, consecutive.
        batch: u32,
        /// The pages in this batch.
        ranges: Vec<PageRange>,
        /// Which pages of `ranges` (counted in order) are all-zero and not in the bulk.
        zero: ZeroPages,
    },
    /// P -> S, + bulk: a chunk of the re-protection disk copy, exactly `len` bytes.
    SyncDisk {
        /// The term the re-protection belongs to.
        term: Term,
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes (equal to the bulk length).
        len: u32,
    },
    /// P -> S: part of the primary's client-facing TCP translation (a primary that took over
    /// translates its guest's sequence numbers into the ones its clients hold). Sent in parts
    /// of at most [`crate::rewrite::TRANSLATED_CONNS_PER_MESSAGE`] connections before a
    /// checkpoint request whenever it changed (and after every new link); the secondary
    /// replaces what it held when the `last` part arrives and composes it with its own
    /// rewriter if it takes over (`crate::rewrite::ClientTranslation`).
    ClientTranslation {
        /// Part number, from 0, consecutive; part 0 starts a new snapshot.
        part: u32,
        /// The snapshot is complete with this part.
        last: bool,
        /// Connections with a non-zero client-facing offset, in key order.
        conns: Vec<crate::rewrite::TranslatedConn>,
    },
}

/// The name of a [`Message`] variant without its fields, for logs, errors and statistics.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[allow(missing_docs)]
pub enum MessageKind {
    Hello,
    HelloAccept,
    HelloReject,
    Heartbeat,
    HeartbeatEcho,
    Ack,
    MirroredFrame,
    SecondaryOutput,
    CheckpointRequest,
    CheckpointReady,
    PageBatch,
    DeviceState,
    CheckpointSent,
    CheckpointReceived,
    CheckpointLoaded,
    CheckpointAbort,
    DiskWrite,
    DiskAck,
    Goodbye,
    TermAnnounce,
    SyncStart,
    SyncProgress,
    SyncDone,
    LeaseRequest,
    LeaseGrant,
    LeaseDenied,
    SyncPages,
    SyncDisk,
    ClientTranslation,
}

impl MessageKind {
    /// Every kind, in wire order (the order of [`Message`]'s variants).
    pub const ALL: [MessageKind; 29] = [
        MessageKind::Hello,
        MessageKind::HelloAccept,
        MessageKind::HelloReject,
        MessageKind::Heartbeat,
        MessageKind::HeartbeatEcho,
        MessageKind::Ack,
        MessageKind::MirroredFrame,
        MessageKind::SecondaryOutput,
        MessageKind::CheckpointRequest,
        MessageKind::CheckpointReady,
        MessageKind::PageBatch,
        MessageKind::DeviceState,
        MessageKind::CheckpointSent,
        MessageKind::CheckpointReceived,
        MessageKind::CheckpointLoaded,
        MessageKind::CheckpointAbort,
        MessageKind::DiskWrite,
        MessageKind::DiskAck,
        MessageKind::Goodbye,
        MessageKind::TermAnnounce,
        MessageKind::SyncStart,
        MessageKind::SyncProgress,
        MessageKind::SyncDone,
        MessageKind::LeaseRequest,
        MessageKind::LeaseGrant,
        MessageKind::LeaseDenied,
        MessageKind::SyncPages,
        MessageKind::SyncDisk,
        MessageKind::ClientTranslation,
    ];

    /// Which way messages of this kind travel (the table in `docs/protocol.md`).
    pub fn direction(self) -> Direction {
        use MessageKind as K;
        match self {
            K::Hello | K::HelloAccept | K::HelloReject => Direction::Either,
            K::Heartbeat | K::HeartbeatEcho | K::Ack => Direction::Either,
            K::MirroredFrame => Direction::PrimaryToSecondary,
            K::SecondaryOutput => Direction::SecondaryToPrimary,
            K::CheckpointRequest | K::PageBatch | K::DeviceState | K::CheckpointSent => {
                Direction::PrimaryToSecondary
            }
            K::CheckpointReady | K::CheckpointReceived | K::CheckpointLoaded => {
                Direction::SecondaryToPrimary
            }
            K::CheckpointAbort => Direction::Either,
            K::DiskWrite => Direction::PrimaryToSecondary,
            K::DiskAck => Direction::SecondaryToPrimary,
            K::Goodbye | K::TermAnnounce => Direction::Either,
            K::SyncStart | K::SyncDone | K::SyncPages | K::SyncDisk => {
                Direction::PrimaryToSecondary
            }
            K::SyncProgress => Direction::SecondaryToPrimary,
            K::ClientTranslation => Direction::PrimaryToSecondary,
            K::LeaseRequest => Direction::NodeToArbiter,
            K::LeaseGrant | K::LeaseDenied => Direction::ArbiterToNode,
        }
    }

    /// A short, stable name for logs.
    pub fn as_str(self) -> &'static str {
        use MessageKind as K;
        match self {
            K::Hello => "hello",
            K::HelloAccept => "hello-accept",
            K::HelloReject => "hello-reject",
            K::Heartbeat => "heartbeat",
            K::HeartbeatEcho => "heartbeat-echo",
            K::Ack => "ack",
            K::MirroredFrame => "mirrored-frame",
            K::SecondaryOutput => "secondary-output",
            K::CheckpointRequest => "checkpoint-request",
            K::CheckpointReady => "checkpoint-ready",
            K::PageBatch => "page-batch",
            K::DeviceState => "device-state",
            K::CheckpointSent => "checkpoint-sent",
            K::CheckpointReceived => "checkpoint-received",
            K::CheckpointLoaded => "checkpoint-loaded",
            K::CheckpointAbort => "checkpoint-abort",
            K::DiskWrite => "disk-write",
            K::DiskAck => "disk-ack",
            K::Goodbye => "goodbye",
            K::TermAnnounce => "term-announce",
            K::SyncStart => "sync-start",
            K::SyncProgress => "sync-progress",
            K::SyncDone => "sync-done",
            K::LeaseRequest => "lease-request",
            K::LeaseGrant => "lease-grant",
            K::LeaseDenied => "lease-denied",
            K::SyncPages => "sync-pages",
            K::SyncDisk => "sync-disk",
            K::ClientTranslation => "client-translation",
        }
    }
}

impl core::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pages `ranges` cover, `None` on overflow (a lying header).
pub fn pages_in(ranges: &[PageRange]) -> Option<u64> {
    ranges
        .iter()
        .try_fold(0u64, |pages, r| pages.checked_add(r.count))
}

/// Bytes of bulk the pages of `ranges` that `zero` does not mark occupy; `None` on overflow or
/// a map that does not fit the ranges (a lying header).
fn pages_bulk_len(ranges: &[PageRange], zero: &ZeroPages) -> Option<u64> {
    let pages = pages_in(ranges)?;
    let zero = zero.check(pages).ok()?;
    (pages - zero).checked_mul(PAGE_SIZE)
}

impl Message {
    /// The kind of this message.
    pub fn kind(&self) -> MessageKind {
        use MessageKind as K;
        match self {
            Message::Hello { .. } => K::Hello,
            Message::HelloAccept { .. } => K::HelloAccept,
            Message::HelloReject { .. } => K::HelloReject,
            Message::Heartbeat { .. } => K::Heartbeat,
            Message::HeartbeatEcho { .. } => K::HeartbeatEcho,
            Message::Ack { .. } => K::Ack,
            Message::MirroredFrame { .. } => K::MirroredFrame,
            Message::SecondaryOutput { .. } => K::SecondaryOutput,
            Message::CheckpointRequest { .. } => K::CheckpointRequest,
            Message::CheckpointReady { .. } => K::CheckpointReady,
            Message::PageBatch { .. } => K::PageBatch,
            Message::DeviceState { .. } => K::DeviceState,
            Message::CheckpointSent { .. } => K::CheckpointSent,
            Message::CheckpointReceived { .. } => K::CheckpointReceived,
            Message::CheckpointLoaded { .. } => K::CheckpointLoaded,
            Message::CheckpointAbort { .. } => K::CheckpointAbort,
            Message::DiskWrite { .. } => K::DiskWrite,
            Message::DiskAck { .. } => K::DiskAck,
            Message::Goodbye { .. } => K::Goodbye,
            Message::TermAnnounce { .. } => K::TermAnnounce,
            Message::SyncStart { .. } => K::SyncStart,
            Message::SyncProgress { .. } => K::SyncProgress,
            Message::SyncDone { .. } => K::SyncDone,
            Message::LeaseRequest { .. } => K::LeaseRequest,
            Message::LeaseGrant { .. } => K::LeaseGrant,
            Message::LeaseDenied { .. } => K::LeaseDenied,
            Message::SyncPages { .. } => K::SyncPages,
            Message::SyncDisk { .. } => K::SyncDisk,
            Message::ClientTranslation { .. } => K::ClientTranslation,
        }
    }

    /// How many bulk bytes must follow this message in its frame.
    pub fn bulk_rule(&self) -> BulkRule {
        match self {
            Message::MirroredFrame { .. }
            | Message::SecondaryOutput { .. }
            | Message::DeviceState { .. } => BulkRule::Any,
            Message::PageBatch { ranges, zero, .. } | Message::SyncPages { ranges, zero, .. } => {
                BulkRule::Exact(pages_bulk_len(ranges, zero))
            }
            Message::DiskWrite { len, .. } | Message::SyncDisk { len, .. } => {
                BulkRule::Exact(Some(u64::from(*len)))
            }
            _ => BulkRule::None,
        }
    }

    /// The ranges and zero map of a page-carrying message ([`Message::PageBatch`],
    /// [`Message::SyncPages`]).
    pub fn pages(&self) -> Option<(&[PageRange], &ZeroPages)> {
        match self {
            Message::PageBatch { ranges, zero, .. } | Message::SyncPages { ranges, zero, .. } => {
                Some((ranges, zero))
            }
            _ => None,
        }
    }

    /// The checkpoint epoch a replication message belongs to, if it is one.
    pub fn epoch(&self) -> Option<Epoch> {
        match self {
            Message::Heartbeat { epoch, .. }
            | Message::HeartbeatEcho { epoch, .. }
            | Message::MirroredFrame { epoch, .. }
            | Message::SecondaryOutput { epoch }
            | Message::CheckpointRequest { epoch, .. }
            | Message::CheckpointReady { epoch }
            | Message::PageBatch { epoch, .. }
            | Message::DeviceState { epoch }
            | Message::CheckpointSent { epoch, .. }
            | Message::CheckpointReceived { epoch }
            | Message::CheckpointLoaded { epoch }
            | Message::CheckpointAbort { epoch, .. }
            | Message::DiskWrite { epoch, .. }
            | Message::SyncDone { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// The term a handshake, liveness, failover, fencing or re-protection message carries.
    pub fn term(&self) -> Option<Term> {
        match self {
            Message::Hello { term, .. }
            | Message::HelloAccept { term, .. }
            | Message::HelloReject { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatEcho { term, .. }
            | Message::Goodbye { term, .. }
            | Message::TermAnnounce { term, .. }
            | Message::SyncStart { term, .. }
            | Message::SyncProgress { term, .. }
            | Message::SyncDone { term, .. }
            | Message::LeaseRequest { term, .. }
            | Message::LeaseGrant { term, .. }
            | Message::LeaseDenied { term, .. }
            | Message::SyncPages { term, .. }
            | Message::SyncDisk { term, .. } => Some(*term),
            _ => None,
        }
    }
}
