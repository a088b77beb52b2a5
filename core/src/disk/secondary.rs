//! The secondary's half of block replication: [`SecondaryDisk`] keeps which blocks the hidden
//! and active overlays hold and turns every request into disk commands.
//!
//! QEMU's scheme (colo-reference.md, "Block replication"; QEMU block/replication.c): a write
//! forwarded by the primary goes to the parent image after the block's old contents were copied
//! into the hidden overlay (copy-before-write, once per block per epoch); SVM writes go to the
//! active overlay; SVM reads see active, then hidden, then parent. A checkpoint empties both
//! overlays (the SVM now has the PVM's state, the parent is the PVM's disk). A failover merges
//! hidden, then active, into the parent, undoing the dead primary's writes since the last
//! checkpoint and keeping the SVM's.
//!
//! Invariants kept: each request is a job of at most two stages (copies, then the write or
//! reads) planned against the overlay maps when it starts; jobs touching a common block run one
//! after another in arrival order, and a reset or merge is a barrier that waits for every
//! earlier job and holds every later one. So the overlay maps always describe the images, and
//! the runtime may run outstanding commands in any order.
//!
//! ```text
//! Replicating --checkpoint(e)--> Replicating (barrier: reset overlays)
//! Replicating --failover--> Merging (barrier: copy hidden/active blocks to parent, reset)
//! Merging --merge done--> Solo (every request goes to the parent)
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{
    DataSource, DiskCommand, DiskConfig, DiskConfigError, DiskEvent, DiskIoError, DiskOutput,
    GuestIoError, GuestIoId, Layer, OpId,
};
use crate::ids::Epoch;
use crate::wire::message::{DiskResult, WriteId};

/// Where replication stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondaryDiskPhase {
    /// Overlays in use; primary writes go to the parent after copy-before-write.
    Replicating,
    /// Failover: the overlays are being merged into the parent.
    Merging,
    /// The parent is the disk; no overlays, no primary.
    Solo,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondaryDiskStats {
    /// Forwarded writes received.
    pub peer_writes: u64,
    /// Copy-before-write copies into the hidden overlay.
    pub cbw_copies: u64,
    /// Copies into the active overlay (partial SVM writes of a block not yet there).
    pub active_copies: u64,
    /// SVM reads and writes.
    pub guest_requests: u64,
    /// Overlay resets at checkpoints.
    pub resets: u64,
    /// Forwarded writes dropped because the node failed over.
    pub writes_after_failover: u64,
    /// Failed commands.
    pub failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobKind {
    PeerWrite {
        write_id: WriteId,
        offset: u64,
        len: u64,
    },
    GuestRead {
        io: GuestIoId,
        offset: u64,
        len: u64,
    },
    GuestWrite {
        io: GuestIoId,
        offset: u64,
        len: u64,
    },
    Reset {
        epoch: Epoch,
    },
    Merge,
}

#[derive(Debug)]
struct Job {
    kind: JobKind,
    /// Blocks claimed, `[first, end)`; barriers claim everything.
    blocks: (u64, u64),
    started: bool,
    pending: BTreeSet<OpId>,
    /// Commands to issue once `pending` is empty (the second stage).
    next: Vec<DiskCommand>,
    /// Overlay marks this job made before its data was in place (undone if a copy fails).
    marked: Vec<(Layer, u64)>,
    error: Option<DiskIoError>,
    merged_blocks: u64,
}

/// The secondary's block replication machine.
#[derive(Debug)]
pub struct SecondaryDisk {
    config: DiskConfig,
    phase: SecondaryDiskPhase,
    hidden: BTreeSet<u64>,
    active: BTreeSet<u64>,
    applied: Epoch,
    next_op: u64,
    next_job: u64,
    jobs: BTreeMap<u64, Job>,
    waiting: VecDeque<u64>,
    by_op: BTreeMap<OpId, u64>,
    out: Vec<DiskOutput>,
    stats: SecondaryDiskStats,
}

impl SecondaryDisk {
    /// A replicating secondary whose parent equals the primary's disk as of `applied`.
    pub fn new(config: DiskConfig, applied: Epoch) -> Result<SecondaryDisk, DiskConfigError> {
        config.validate()?;
        Ok(SecondaryDisk {
            config,
            phase: SecondaryDiskPhase::Replicating,
            hidden: BTreeSet::new(),
            active: BTreeSet::new(),
            applied,
            next_op: 1,
            next_job: 1,
            jobs: BTreeMap::new(),
            waiting: VecDeque::new(),
            by_op: BTreeMap::new(),
            out: Vec::new(),
            stats: SecondaryDiskStats::default(),
        })
    }

    /// Where replication stands.
    pub fn phase(&self) -> SecondaryDiskPhase {
        self.phase
    }

    /// Counters.
    pub fn stats(&self) -> SecondaryDiskStats {
        self.stats
    }

    /// Blocks held by the hidden overlay.
    pub fn hidden_blocks(&self) -> usize {
        self.hidden.len()
    }

    /// Blocks held by the active overlay.
    pub fn active_blocks(&self) -> usize {
        self.active.len()
    }

    /// Requests not yet finished (started or waiting).
    pub fn in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// Where the SVM's view of block `b` lives right now.
    pub fn resolve(&self, b: u64) -> Layer {
        if self.active.contains(&b) {
            Layer::Active
        } else if self.hidden.contains(&b) {
            Layer::Hidden
        } else {
            Layer::Parent
        }
    }

    /// The primary forwarded a write of `len` bytes at `offset`, issued in `epoch`.
    pub fn handle_peer_write(&mut self, write_id: WriteId, epoch: Epoch, offset: u64, len: u32) {
        if self.phase != SecondaryDiskPhase::Replicating {
            // The primary is gone (or fenced); its writes since the last checkpoint are being
            // undone by the merge, so a straggler must not land in the parent.
            self.stats.writes_after_failover += 1;
            return;
        }
        self.stats.peer_writes += 1;
        let len = u64::from(len);
        let Some(blocks) = self.config.blocks(offset, len) else {
            self.out.push(DiskOutput::Ack {
                write_id,
                result: DiskResult::OutOfRange,
            });
            return;
        };
        if epoch <= self.applied {
            self.out
                .push(DiskOutput::Event(DiskEvent::LateWrite { write_id, epoch }));
        }
        self.submit(
            JobKind::PeerWrite {
                write_id,
                offset,
                len,
            },
            blocks,
        );
    }

    /// The SVM reads `len` bytes at `offset`.
    pub fn handle_guest_read(&mut self, io: GuestIoId, offset: u64, len: u64) {
        self.stats.guest_requests += 1;
        match self.config.blocks(offset, len) {
            None => self.out.push(DiskOutput::GuestDone {
                io,
                result: Err(GuestIoError::OutOfRange),
            }),
            Some(blocks) => self.submit(JobKind::GuestRead { io, offset, len }, blocks),
        }
    }

    /// The SVM writes `len` bytes at `offset`.
    pub fn handle_guest_write(&mut self, io: GuestIoId, offset: u64, len: u64) {
        self.stats.guest_requests += 1;
        match self.config.blocks(offset, len) {
            None => self.out.push(DiskOutput::GuestDone {
                io,
                result: Err(GuestIoError::OutOfRange),
            }),
            Some(blocks) => self.submit(JobKind::GuestWrite { io, offset, len }, blocks),
        }
    }

    /// Checkpoint `epoch` is being applied: empty both overlays once every earlier request is
    /// done. [`DiskEvent::OverlaysReset`] reports completion.
    pub fn handle_checkpoint(&mut self, epoch: Epoch) {
        if self.phase != SecondaryDiskPhase::Replicating {
            return;
        }
        self.applied = self.applied.max(epoch);
        self.submit(JobKind::Reset { epoch }, (0, u64::MAX));
    }

    /// Failover: merge hidden then active into the parent, then run on the parent alone.
    /// [`DiskEvent::Merged`] reports completion.
    pub fn handle_failover(&mut self) {
        if self.phase != SecondaryDiskPhase::Replicating {
            return;
        }
        // Replicating --failover--> Merging
        self.phase = SecondaryDiskPhase::Merging;
        self.submit(JobKind::Merge, (0, u64::MAX));
    }

    /// The runtime finished command `op`.
    pub fn handle_op_done(&mut self, op: OpId, result: Result<(), DiskIoError>) {
        let Some(job_id) = self.by_op.remove(&op) else {
            self.out
                .push(DiskOutput::Event(DiskEvent::UnknownCompletion { op }));
            return;
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.pending.remove(&op);
        if let Err(error) = result {
            self.stats.failures += 1;
            if job.error.is_none() {
                job.error = Some(error);
                if !matches!(job.kind, JobKind::Reset { .. } | JobKind::Merge) {
                    self.out
                        .push(DiskOutput::Event(DiskEvent::OverlayFailed { op, error }));
                }
            }
        }
        if !job.pending.is_empty() {
            return;
        }
        if job.error.is_none() && !job.next.is_empty() {
            // Stage one done: issue stage two.
            job.marked.clear();
            let next = std::mem::take(&mut job.next);
            for cmd in next {
                self.issue(job_id, cmd);
            }
            return;
        }
        self.finish(job_id);
        self.try_start();
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<DiskOutput> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    fn submit(&mut self, kind: JobKind, blocks: (u64, u64)) {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            id,
            Job {
                kind,
                blocks,
                started: false,
                pending: BTreeSet::new(),
                next: Vec::new(),
                marked: Vec::new(),
                error: None,
                merged_blocks: 0,
            },
        );
        self.waiting.push_back(id);
        self.try_start();
    }

    /// Starts every waiting job whose blocks meet neither a running job nor an earlier waiting
    /// one (arrival order per block; barriers claim all blocks).
    fn try_start(&mut self) {
        let overlaps = |a: (u64, u64), b: (u64, u64)| a.0 < b.1 && b.0 < a.1;
        loop {
            let mut claimed: Vec<(u64, u64)> = self
                .jobs
                .values()
                .filter(|j| j.started)
                .map(|j| j.blocks)
                .collect();
            let mut still_waiting = VecDeque::new();
            let mut done_at_once = Vec::new();
            while let Some(id) = self.waiting.pop_front() {
                let Some(blocks) = self.jobs.get(&id).map(|j| j.blocks) else {
                    continue;
                };
                // An empty range (zero-length request) conflicts with nothing; a barrier's
                // range conflicts with everything.
                let empty = blocks.0 >= blocks.1;
                if !empty && claimed.iter().any(|&c| overlaps(c, blocks)) {
                    claimed.push(blocks);
                    still_waiting.push_back(id);
                    continue;
                }
                claimed.push(blocks);
                if self.start(id) {
                    done_at_once.push(id);
                }
            }
            self.waiting = still_waiting;
            if done_at_once.is_empty() {
                return;
            }
            // Jobs with nothing to issue finished at once; their blocks are free again.
            for id in done_at_once {
                self.finish(id);
            }
        }
    }

    /// Plans and issues job `id`'s first stage; true if it had nothing to issue (done).
    fn start(&mut self, id: u64) -> bool {
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        job.started = true;
        let kind = job.kind;
        let mut first = Vec::new();
        let mut second = Vec::new();
        let mut marked = Vec::new();
        let bs = self.config.block_size;
        match kind {
            JobKind::PeerWrite {
                write_id,
                offset,
                len,
            } => {
                let (b0, b1) = job.blocks;
                for b in b0..b1 {
                    if self.hidden.insert(b) {
                        // Copy-before-write, once per block per epoch.
                        let (o, l) = self.config.block_range(b);
                        first.push(self.copy(Layer::Parent, Layer::Hidden, b, o, l));
                        marked.push((Layer::Hidden, b));
                        self.stats.cbw_copies += 1;
                    }
                }
                if len > 0 {
                    second.push(DiskCommand::Write {
                        op: OpId(0),
                        layer: Layer::Parent,
                        offset,
                        len,
                        data: DataSource::Peer(write_id),
                    });
                }
            }
            JobKind::GuestRead { io, offset, len } => {
                let (b0, b1) = job.blocks;
                let mut seg: Option<(Layer, u64, u64)> = None;
                for b in b0..b1 {
                    let layer = if self.phase == SecondaryDiskPhase::Solo {
                        Layer::Parent
                    } else {
                        self.resolve(b)
                    };
                    let start = (b * bs).max(offset);
                    let end = ((b + 1) * bs).min(offset + len);
                    seg = match seg {
                        Some((l, s, e)) if l == layer && e == start => Some((l, s, end)),
                        Some((l, s, e)) => {
                            first.push(read(io, l, s, e - s));
                            Some((layer, start, end))
                        }
                        None => Some((layer, start, end)),
                    };
                }
                if let Some((l, s, e)) = seg {
                    first.push(read(io, l, s, e - s));
                }
            }
            JobKind::GuestWrite { io, offset, len } => {
                let solo = self.phase == SecondaryDiskPhase::Solo;
                let (b0, b1) = job.blocks;
                if !solo {
                    for b in b0..b1 {
                        if self.active.contains(&b) {
                            continue;
                        }
                        let (o, l) = self.config.block_range(b);
                        let covered = offset <= o && offset + len >= o + l;
                        if !covered {
                            // Copy-on-write into the active overlay: the unwritten part of the
                            // block must keep the SVM's current view.
                            let from = self.resolve(b);
                            first.push(self.copy(from, Layer::Active, b, o, l));
                            self.stats.active_copies += 1;
                        }
                        self.active.insert(b);
                        marked.push((Layer::Active, b));
                    }
                }
                let write = DiskCommand::Write {
                    op: OpId(0),
                    layer: if solo { Layer::Parent } else { Layer::Active },
                    offset,
                    len,
                    data: DataSource::Guest(io),
                };
                if len > 0 {
                    second.push(write);
                }
            }
            JobKind::Reset { .. } => first.push(DiskCommand::ResetOverlays { op: OpId(0) }),
            JobKind::Merge => {
                // Hidden then active into the parent: a block in both takes the active copy,
                // which is what applying hidden first and active second leaves behind.
                let blocks: BTreeSet<u64> = self.hidden.union(&self.active).copied().collect();
                for &b in &blocks {
                    let from = if self.active.contains(&b) {
                        Layer::Active
                    } else {
                        Layer::Hidden
                    };
                    let (o, l) = self.config.block_range(b);
                    first.push(self.copy(from, Layer::Parent, b, o, l));
                }
                second.push(DiskCommand::ResetOverlays { op: OpId(0) });
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.merged_blocks = blocks.len() as u64;
                }
            }
        }
        if first.is_empty() {
            // No copies needed: the first stage is the final one, and its marks are final.
            first = second;
            second = Vec::new();
            marked.clear();
        }
        if let Some(job) = self.jobs.get_mut(&id) {
            job.marked = marked;
        }
        if let Some(job) = self.jobs.get_mut(&id) {
            job.next = second;
        }
        if first.is_empty() {
            return true;
        }
        for cmd in first {
            self.issue(id, cmd);
        }
        false
    }

    fn copy(&self, from: Layer, to: Layer, block: u64, offset: u64, len: u64) -> DiskCommand {
        DiskCommand::CopyBlock {
            op: OpId(0),
            from,
            to,
            block,
            offset,
            len,
        }
    }

    /// Gives `cmd` a fresh id, records it for `job` and hands it to the runtime.
    fn issue(&mut self, job: u64, cmd: DiskCommand) {
        let op = OpId(self.next_op);
        self.next_op += 1;
        let cmd = match cmd {
            DiskCommand::Read {
                io,
                layer,
                offset,
                len,
                ..
            } => DiskCommand::Read {
                op,
                io,
                layer,
                offset,
                len,
            },
            DiskCommand::Write {
                layer,
                offset,
                len,
                data,
                ..
            } => DiskCommand::Write {
                op,
                layer,
                offset,
                len,
                data,
            },
            DiskCommand::CopyBlock {
                from,
                to,
                block,
                offset,
                len,
                ..
            } => DiskCommand::CopyBlock {
                op,
                from,
                to,
                block,
                offset,
                len,
            },
            DiskCommand::ResetOverlays { .. } => DiskCommand::ResetOverlays { op },
        };
        if let Some(j) = self.jobs.get_mut(&job) {
            j.pending.insert(op);
        }
        self.by_op.insert(op, job);
        self.out.push(DiskOutput::Command(cmd));
    }

    fn finish(&mut self, id: u64) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        // A failed copy leaves its overlay block without valid data: forget the mark so reads
        // fall back to the layer below, which still holds the block's view.
        let marks = if job.error.is_some() {
            &job.marked[..]
        } else {
            &[]
        };
        for (layer, b) in marks {
            match layer {
                Layer::Hidden => self.hidden.remove(b),
                Layer::Active => self.active.remove(b),
                Layer::Parent => false,
            };
        }
        let err = job.error;
        match job.kind {
            JobKind::PeerWrite { write_id, .. } => self.out.push(DiskOutput::Ack {
                write_id,
                result: if err.is_some() {
                    DiskResult::IoError
                } else {
                    DiskResult::Written
                },
            }),
            JobKind::GuestRead { io, .. } | JobKind::GuestWrite { io, .. } => {
                self.out.push(DiskOutput::GuestDone {
                    io,
                    result: err.map_or(Ok(()), |e| Err(GuestIoError::Local(e))),
                });
            }
            JobKind::Reset { epoch } => match err {
                None => {
                    self.hidden.clear();
                    self.active.clear();
                    self.stats.resets += 1;
                    self.out
                        .push(DiskOutput::Event(DiskEvent::OverlaysReset { epoch }));
                }
                Some(error) => self
                    .out
                    .push(DiskOutput::Event(DiskEvent::ResetFailed { error })),
            },
            JobKind::Merge => {
                // Merging --merge done--> Solo (even on failure: there is no primary to go
                // back to; the error tells the operator the disk needs checking).
                self.phase = SecondaryDiskPhase::Solo;
                self.hidden.clear();
                self.active.clear();
                match err {
                    None => self.out.push(DiskOutput::Event(DiskEvent::Merged {
                        blocks: job.merged_blocks,
                    })),
                    Some(error) => self
                        .out
                        .push(DiskOutput::Event(DiskEvent::ResetFailed { error })),
                }
            }
        }
    }
}

fn read(io: GuestIoId, layer: Layer, offset: u64, len: u64) -> DiskCommand {
    DiskCommand::Read {
        op: OpId(0),
        io,
        layer,
        offset,
        len,
    }
}
