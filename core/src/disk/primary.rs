//! The primary's half of block replication: [`PrimaryDisk`] writes each guest write to the
//! local image and forwards it to the secondary, and completes it to the guest only when both
//! have finished (QEMU's replication driver under a quorum child: the write returns when both
//! children did). That order is what makes output commit cover the disk: output that depends
//! on a write is produced after the write completed, hence after the secondary has it.
//!
//! Invariant kept: while forwarding, no guest write completes before the secondary's
//! acknowledgement; after a primary failover (solo), pending acknowledgements are waived and
//! nothing more is forwarded. Reads go straight to the local image (the runtime does them
//! without the core; the primary has no overlays).
//!
//! ```text
//! Forwarding --link reset--> Forwarding   [forward every unacknowledged write again]
//! Forwarding --failover (secondary lost)--> Solo
//! ```

use std::collections::BTreeMap;

use super::{
    DataSource, DiskCommand, DiskConfig, DiskConfigError, DiskEvent, DiskIoError, DiskOutput,
    GuestIoError, GuestIoId, Layer, OpId,
};
use crate::ids::Epoch;
use crate::wire::message::{DiskResult, WriteId};

/// Whether writes are still mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimaryDiskPhase {
    /// Every write goes to the local image and to the secondary.
    Forwarding,
    /// The secondary is gone: local writes only.
    Solo,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimaryDiskStats {
    /// Guest writes accepted.
    pub writes: u64,
    /// Writes forwarded to the secondary.
    pub forwarded: u64,
    /// Writes forwarded again after a link reset (their acknowledgement was outstanding).
    pub reforwarded: u64,
    /// Acknowledgements received.
    pub acks: u64,
    /// Acknowledgements for writes not pending (duplicates, or after failover): ignored.
    pub stray_acks: u64,
    /// Secondary write failures.
    pub peer_failures: u64,
    /// Local write failures.
    pub local_failures: u64,
}

/// A guest write waiting for its local write and/or its acknowledgement.
#[derive(Debug)]
struct Pending {
    io: GuestIoId,
    local: Option<OpId>,
    local_result: Result<(), DiskIoError>,
    peer: Option<WriteId>,
    /// What was forwarded, to forward it again after a link reset.
    epoch: Epoch,
    offset: u64,
    len: u32,
}

/// The primary's block replication machine.
#[derive(Debug)]
pub struct PrimaryDisk {
    config: DiskConfig,
    phase: PrimaryDiskPhase,
    next_op: u64,
    next_write: u64,
    /// Pending guest writes by io id.
    pending: BTreeMap<GuestIoId, Pending>,
    by_op: BTreeMap<OpId, GuestIoId>,
    by_write: BTreeMap<WriteId, GuestIoId>,
    out: Vec<DiskOutput>,
    stats: PrimaryDiskStats,
}

impl PrimaryDisk {
    /// A forwarding primary.
    pub fn new(config: DiskConfig) -> Result<PrimaryDisk, DiskConfigError> {
        config.validate()?;
        Ok(PrimaryDisk {
            config,
            phase: PrimaryDiskPhase::Forwarding,
            next_op: 1,
            next_write: 1,
            pending: BTreeMap::new(),
            by_op: BTreeMap::new(),
            by_write: BTreeMap::new(),
            out: Vec::new(),
            stats: PrimaryDiskStats::default(),
        })
    }

    /// Whether writes are still mirrored.
    pub fn phase(&self) -> PrimaryDiskPhase {
        self.phase
    }

    /// Counters.
    pub fn stats(&self) -> PrimaryDiskStats {
        self.stats
    }

    /// Guest writes not yet completed. A checkpoint's pause waits for zero (QEMU drains all
    /// block I/O in `vm_stop`), so every write of epoch `e` is on the secondary before `e` is.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The guest wrote `len` bytes at `offset` during `epoch`.
    pub fn handle_guest_write(&mut self, io: GuestIoId, epoch: Epoch, offset: u64, len: u32) {
        self.stats.writes += 1;
        if self.config.blocks(offset, u64::from(len)).is_none() {
            self.out.push(DiskOutput::GuestDone {
                io,
                result: Err(GuestIoError::OutOfRange),
            });
            return;
        }
        let op = OpId(self.next_op);
        self.next_op += 1;
        self.out.push(DiskOutput::Command(DiskCommand::Write {
            op,
            layer: Layer::Parent,
            offset,
            len: u64::from(len),
            data: DataSource::Guest(io),
        }));
        self.by_op.insert(op, io);
        let peer = match self.phase {
            PrimaryDiskPhase::Forwarding => {
                let write_id = WriteId(self.next_write);
                self.next_write += 1;
                self.stats.forwarded += 1;
                self.out.push(DiskOutput::Forward {
                    write_id,
                    epoch,
                    offset,
                    len,
                    io,
                });
                self.by_write.insert(write_id, io);
                Some(write_id)
            }
            PrimaryDiskPhase::Solo => None,
        };
        self.pending.insert(
            io,
            Pending {
                io,
                local: Some(op),
                local_result: Ok(()),
                peer,
                epoch,
                offset,
                len,
            },
        );
    }

    /// The runtime finished local command `op`.
    pub fn handle_op_done(&mut self, op: OpId, result: Result<(), DiskIoError>) {
        let Some(io) = self.by_op.remove(&op) else {
            self.out
                .push(DiskOutput::Event(DiskEvent::UnknownCompletion { op }));
            return;
        };
        if let Some(p) = self.pending.get_mut(&io) {
            p.local = None;
            if result.is_err() {
                self.stats.local_failures += 1;
            }
            p.local_result = result;
        }
        self.try_complete(io);
    }

    /// The secondary acknowledged forwarded write `write_id`.
    pub fn handle_peer_ack(&mut self, write_id: WriteId, result: DiskResult) {
        let Some(io) = self.by_write.remove(&write_id) else {
            self.stats.stray_acks += 1;
            return;
        };
        self.stats.acks += 1;
        if result != DiskResult::Written {
            // The secondary's disk stopped mirroring ours. The guest's write still succeeded
            // locally; the node fails the secondary over on this event.
            self.stats.peer_failures += 1;
            self.out.push(DiskOutput::Event(DiskEvent::PeerWriteFailed {
                write_id,
                result,
            }));
        }
        if let Some(p) = self.pending.get_mut(&io) {
            p.peer = None;
        }
        self.try_complete(io);
    }

    /// The peer link came back after a drop: a forwarded write or its acknowledgement may
    /// have been lost with the old connection, and the guest's write would wait for it
    /// forever. Every write still waiting for its acknowledgement is forwarded again, in the
    /// order of the first forwarding, with the same id. The secondary applying one twice is
    /// harmless: the same bytes land in the same place, its copy-before-write saves a block's
    /// old contents once per epoch, and every later write to that block is re-sent after it.
    pub fn handle_link_reset(&mut self) {
        if self.phase != PrimaryDiskPhase::Forwarding {
            return;
        }
        let mut again: Vec<(WriteId, &Pending)> = self
            .pending
            .values()
            .filter_map(|p| p.peer.map(|w| (w, p)))
            .collect();
        again.sort_by_key(|(w, _)| *w);
        for (write_id, p) in again {
            self.stats.reforwarded += 1;
            self.out.push(DiskOutput::Forward {
                write_id,
                epoch: p.epoch,
                offset: p.offset,
                len: p.len,
                io: p.io,
            });
        }
    }

    /// The secondary is gone: stop forwarding and stop waiting for acknowledgements.
    pub fn handle_failover(&mut self) {
        // Forwarding --failover--> Solo
        self.phase = PrimaryDiskPhase::Solo;
        self.by_write.clear();
        let ios: Vec<GuestIoId> = self.pending.keys().copied().collect();
        for io in ios {
            if let Some(p) = self.pending.get_mut(&io) {
                p.peer = None;
            }
            self.try_complete(io);
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<DiskOutput> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    fn try_complete(&mut self, io: GuestIoId) {
        let done = self
            .pending
            .get(&io)
            .is_some_and(|p| p.local.is_none() && p.peer.is_none());
        if done && let Some(p) = self.pending.remove(&io) {
            self.out.push(DiskOutput::GuestDone {
                io: p.io,
                result: p.local_result.map_err(GuestIoError::Local),
            });
        }
    }
}
