//! Block replication, metadata and ordering only: [`PrimaryDisk`] forwards every guest write to
//! the secondary and completes it to the guest only after both the local write and the
//! secondary's acknowledgement; [`SecondaryDisk`] keeps QEMU's parent / hidden / active overlay
//! scheme (colo-reference.md, "Block replication") and tells the runtime which layer to read,
//! which block to copy and where to write. The runtime moves the bytes and reports completions.
//!
//! Invariants kept: on the secondary, the SVM's view (active, then hidden, then parent) always
//! equals the disk as of the last applied checkpoint plus the SVM's own writes since; the parent
//! image always equals the primary's disk once every forwarded write is acknowledged. A
//! checkpoint empties both overlays; a failover merges them into the parent (hidden then active),
//! so the parent becomes the SVM's view. Every failure becomes an event or an error completion,
//! never a panic. The proptest in `tests.rs` checks the first invariant against a byte model.
//!
//! Ordering contract with the runtime: commands the core has issued and not yet seen complete
//! never touch a common block (the core serialises jobs per block), so the runtime may execute
//! outstanding commands in any order and in parallel.

mod primary;
mod secondary;
#[cfg(test)]
mod tests;

pub use primary::{PrimaryDisk, PrimaryDiskPhase, PrimaryDiskStats};
pub use secondary::{SecondaryDisk, SecondaryDiskPhase, SecondaryDiskStats};

use crate::ids::Epoch;
use crate::wire::message::{DiskResult, WriteId};
use thiserror::Error;

/// Geometry of the replicated disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Copy-before-write and overlay granularity in bytes (a power of two). QEMU's
    /// block-replication inherits the overlay image's cluster size (qcow2: 64 KiB).
    pub block_size: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            disk_size: 0,
            block_size: 64 * 1024,
        }
    }
}

/// A disk geometry that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DiskConfigError {
    /// The block size is zero or not a power of two.
    #[error("block_size must be a power of two, got {0}")]
    BadBlockSize(u64),
}

impl DiskConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), DiskConfigError> {
        if !self.block_size.is_power_of_two() {
            return Err(DiskConfigError::BadBlockSize(self.block_size));
        }
        Ok(())
    }

    /// The blocks `[first, end)` that bytes `[offset, offset+len)` touch, or `None` if the range
    /// leaves the disk.
    pub(crate) fn blocks(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let end = offset.checked_add(len)?;
        if end > self.disk_size {
            return None;
        }
        if len == 0 {
            return Some((0, 0));
        }
        Some((offset / self.block_size, end.div_ceil(self.block_size)))
    }

    /// Byte range of block `b`, clipped to the disk.
    pub(crate) fn block_range(&self, b: u64) -> (u64, u64) {
        let start = b * self.block_size;
        let end = (start + self.block_size).min(self.disk_size);
        (start, end - start)
    }
}

/// A guest I/O request, numbered by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestIoId(pub u64);

/// A disk command, numbered by the core; the runtime reports its completion with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// One of the secondary's three images (the primary only has `Parent`, its own image).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// The base image: the primary's disk as forwarded.
    Parent,
    /// Old parent contents saved before a primary write overwrote them (this epoch).
    Hidden,
    /// The SVM's own writes (this epoch).
    Active,
}

/// Where the bytes of a write come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataSource {
    /// The guest's request buffer.
    Guest(GuestIoId),
    /// The bulk payload of a forwarded [`crate::wire::message::Message::DiskWrite`].
    Peer(WriteId),
}

/// What the runtime must do with the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskCommand {
    /// Read `len` bytes at `offset` of `layer` into guest request `io` (at `offset` minus the
    /// request's own offset).
    Read {
        /// Command id.
        op: OpId,
        /// The guest request the bytes belong to.
        io: GuestIoId,
        /// Layer to read.
        layer: Layer,
        /// Disk offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Write `len` bytes at `offset` of `layer` from `data` (at `offset` minus its request's).
    Write {
        /// Command id.
        op: OpId,
        /// Layer written.
        layer: Layer,
        /// Disk offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The bytes.
        data: DataSource,
    },
    /// Copy block `block` (`offset`, `len`) from one layer to another.
    CopyBlock {
        /// Command id.
        op: OpId,
        /// Source layer.
        from: Layer,
        /// Destination layer.
        to: Layer,
        /// Block number.
        block: u64,
        /// Its byte offset.
        offset: u64,
        /// Its length (the last block may be short).
        len: u64,
    },
    /// Empty the hidden and active overlays.
    ResetOverlays {
        /// Command id.
        op: OpId,
    },
}

impl DiskCommand {
    /// The command's id.
    pub fn op(&self) -> OpId {
        match *self {
            DiskCommand::Read { op, .. }
            | DiskCommand::Write { op, .. }
            | DiskCommand::CopyBlock { op, .. }
            | DiskCommand::ResetOverlays { op } => op,
        }
    }
}

/// Why a disk command failed (reported by the runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DiskIoError {
    /// The storage returned an error.
    #[error("storage I/O error")]
    Io,
    /// No space left for an overlay.
    #[error("no space left")]
    NoSpace,
}

/// Why a guest request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum GuestIoError {
    /// The request leaves the disk.
    #[error("request outside the disk")]
    OutOfRange,
    /// A local disk command failed.
    #[error("local disk: {0}")]
    Local(DiskIoError),
}

/// What the node must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOutput {
    /// Execute a disk command.
    Command(DiskCommand),
    /// Complete a guest request.
    GuestDone {
        /// The request.
        io: GuestIoId,
        /// Its outcome.
        result: Result<(), GuestIoError>,
    },
    /// Primary: forward this write to the secondary (a `DiskWrite` with the guest's bytes).
    Forward {
        /// The write's wire id.
        write_id: WriteId,
        /// The epoch it was issued in.
        epoch: Epoch,
        /// Disk offset.
        offset: u64,
        /// Length.
        len: u32,
        /// The guest request holding the bytes.
        io: GuestIoId,
    },
    /// Secondary: acknowledge a forwarded write to the primary.
    Ack {
        /// The write.
        write_id: WriteId,
        /// Its outcome.
        result: DiskResult,
    },
    /// Something went wrong that the node must know about.
    Event(DiskEvent),
}

/// Failures and milestones of block replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskEvent {
    /// Primary: the secondary failed a forwarded write; its disk no longer mirrors ours
    /// (the node treats the secondary as failed).
    PeerWriteFailed {
        /// The write.
        write_id: WriteId,
        /// The secondary's outcome.
        result: DiskResult,
    },
    /// Secondary: a copy-before-write or an overlay write failed.
    OverlayFailed {
        /// The failing command.
        op: OpId,
        /// The error.
        error: DiskIoError,
    },
    /// Secondary: the overlays were emptied for checkpoint `epoch`.
    OverlaysReset {
        /// The checkpoint.
        epoch: Epoch,
    },
    /// Secondary: emptying or merging the overlays failed; the disk view is unknown.
    ResetFailed {
        /// The error.
        error: DiskIoError,
    },
    /// Secondary: failover merged the overlays into the parent; the parent is the disk now.
    Merged {
        /// Blocks copied into the parent.
        blocks: u64,
    },
    /// Secondary: a forwarded write arrived for an epoch already applied (the primary did not
    /// drain before the checkpoint). Applied to the parent anyway, so the parent keeps
    /// mirroring the primary's disk; the SVM view is not affected.
    LateWrite {
        /// The write.
        write_id: WriteId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A completion named a command the core is not waiting for (ignored).
    UnknownCompletion {
        /// The id.
        op: OpId,
    },
}
