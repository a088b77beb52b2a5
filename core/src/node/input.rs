//! Everything the runtime hands a [`Node`](super::Node): one [`Input`] enum, so the whole inbound
//! side of the contract fits on one screen (str0m's style).
//!
//! Invariant kept: no input can make the node panic except time going backwards; a peer's
//! message is validated by the node (direction, bulk, term, epoch) and a bad one becomes an
//! [`Event::ProtocolError`](super::Event::ProtocolError).

use crate::checkpoint::VmCompletion;
use crate::disk::{DiskIoError, GuestIoId, OpId};
use crate::failover::{LeaseReply, LeaseRequestId};
use crate::ids::NicId;
use crate::time::Duration;
use crate::wire::Message;

/// One thing that happened, for [`Node::handle`](super::Node::handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A whole Ethernet frame from the client network, on the tap of guest NIC `nic`.
    ClientFrame {
        /// The NIC whose client link it came in on.
        nic: NicId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A whole Ethernet frame the local VM sent.
    GuestFrame(Vec<u8>),
    /// A decoded peer message. The runtime runs [`crate::wire::FrameDecoder`] on the peer link;
    /// see [`PeerBulk`] for what it does with the frame's bulk bytes.
    Peer {
        /// The message.
        message: Message,
        /// Its bulk payload, or what became of it.
        bulk: PeerBulk,
    },
    /// The peer link went up or down. Only informative: the heartbeat decides when a peer is
    /// lost (a link can flap without the peer dying; a peer can die with the link up).
    PeerLink(LinkState),
    /// A dial the node ordered was refused: the peer's host answered that nothing listens at
    /// its address (TCP's connection refused). After the peer closed the link this means its
    /// process is gone, and a paired node counts it lost at once instead of after the
    /// closed-link grace; otherwise it changes nothing (core/src/heartbeat.rs).
    PeerDialRefused,
    /// Bytes from the peer arrived on the link although no whole frame did yet: a large frame
    /// (a page batch, the initial copy) is crawling over a slow or lossy link. Only liveness:
    /// the heartbeat counts it as traffic while it watches a peer, nothing else changes. A
    /// runtime reports it at most once per check of its socket, never more often than it
    /// checks its timers.
    PeerActivity,
    /// The runtime finished a [`VmCommand`](crate::checkpoint::VmCommand).
    VmDone(VmCompletion),
    /// The guest issued a disk request.
    GuestDisk(GuestDiskRequest),
    /// The runtime finished a [`DiskCommand`](crate::disk::DiskCommand).
    DiskDone {
        /// The command's id, as the node issued it.
        op: OpId,
        /// Its outcome.
        result: Result<(), DiskIoError>,
    },
    /// The runtime finished streaming the re-protection copy ordered by
    /// [`SyncCommand::SendAll`](super::SyncCommand::SendAll): every `SyncPages` and `SyncDisk`
    /// frame is on the link.
    SyncSent {
        /// Memory bytes sent.
        memory_bytes: u64,
        /// Disk bytes sent.
        disk_bytes: u64,
    },
    /// An operator's or API command.
    Command(Command),
    /// The arbiter answered a [`LeaseRequest`](crate::failover::LeaseRequest).
    Arbiter {
        /// The request's id.
        id: LeaseRequestId,
        /// The answer.
        reply: LeaseReply,
    },
    /// The instant returned by [`Node::poll_timeout`](super::Node::poll_timeout) has come (a
    /// spurious or early call is a no-op).
    Timeout,
}

/// The bulk part of a peer frame, as the runtime hands it over.
///
/// Why this split: page, device-state and disk bulk is large and belongs in the RAM cache or a
/// disk image, which the runtime owns; copying it through the core would cost a memcpy per
/// checkpoint page for nothing, since the core only needs its length. Mirrored and secondary
/// frames are small and the core needs their bytes (rewriter, comparator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerBulk {
    /// The frame had no bulk.
    None,
    /// The bulk bytes themselves: required for `MirroredFrame` and `SecondaryOutput`.
    Frame(Vec<u8>),
    /// The runtime already stored `len` bulk bytes (pages into the RAM cache, device state,
    /// a forwarded disk write's data, a re-protection chunk).
    Stored {
        /// Bulk length.
        len: u64,
    },
}

impl PeerBulk {
    /// The bulk length.
    pub fn len(&self) -> u64 {
        match self {
            PeerBulk::None => 0,
            PeerBulk::Frame(f) => f.len() as u64,
            PeerBulk::Stored { len } => *len,
        }
    }

    /// Whether there are no bulk bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// State of the peer link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Connected.
    Up,
    /// Disconnected: the path failed or went silent (a write or read timeout, an unreachable
    /// host, a corrupt frame), or this side ended it.
    Down,
    /// Disconnected by the peer's end: an end of stream or a reset (its process exited, its
    /// kernel closed the socket, or it closed the link itself). A live peer comes back on a
    /// new link at once, so a paired node gives it only `closed_link_grace` before it counts
    /// the peer lost (`core/src/heartbeat.rs`).
    PeerClosed,
}

/// A guest disk request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestDiskRequest {
    /// Read `len` bytes at `offset`. Only a node that resolves overlays (a secondary, or a
    /// former secondary running solo) needs to see reads; on a primary the runtime reads its
    /// own image directly, and a read handed in is completed at once with no command (counted).
    Read {
        /// The runtime's id for the request.
        io: GuestIoId,
        /// Disk offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Write `len` bytes at `offset`; the node completes it with
    /// [`Output::GuestDiskDone`](super::Output::GuestDiskDone).
    Write {
        /// The runtime's id for the request (it keeps the bytes).
        io: GuestIoId,
        /// Disk offset.
        offset: u64,
        /// Length.
        len: u32,
    },
}

/// An operator's or API command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start protection. A secondary sends its `Hello`; a primary waits for one. Both VMs must
    /// be created paused; the primary's is resumed once the initial copy is done.
    Start,
    /// Take a checkpoint now (primary, paired).
    ForceCheckpoint,
    /// Change the periodic checkpoint interval (primary); takes effect through a checkpoint,
    /// like QEMU's `x-checkpoint-delay`.
    SetCheckpointInterval(Duration),
    /// Stop depending on the peer now (QEMU's `x-colo-lost-heartbeat`, rarely needed: the
    /// heartbeat does it on its own).
    Failover,
    /// A solo node accepts the next secondary's `Hello` and re-protects with it.
    Reprotect,
    /// Stop: say goodbye to the peer and ignore every later input.
    Shutdown,
}
