//! The node's disk machines across role changes: the current [`PrimaryDisk`] or [`SecondaryDisk`]
//! plus the generations it replaced that still have commands in flight.
//!
//! Why generations: a re-protection or a takeover replaces the disk machine (a forwarding
//! primary disk for the new pair, a fresh overlay set for a new secondary), while commands the
//! old one issued are still executing. Each machine numbers its commands and forwarded writes
//! from 1, so the node tags every [`OpId`] and [`WriteId`] with the generation in the top 16
//! bits, and routes a completion back to the machine that issued it.
//!
//! Invariant kept: every completion reaches the machine that issued its command, or is
//! reported as [`DiskEvent::UnknownCompletion`]; a retired machine is dropped only once it has
//! nothing in flight.

use super::NodeConfigError;
use crate::disk::{
    DiskCommand, DiskConfig, DiskEvent, DiskIoError, DiskOutput, GuestIoError, GuestIoId, Layer,
    OpId, PrimaryDisk, SecondaryDisk,
};
use crate::ids::{Epoch, Role};
use crate::wire::{DiskResult, WriteId};
use std::collections::BTreeMap;

const GEN_SHIFT: u32 = 48;
const LOCAL_MASK: u64 = (1 << GEN_SHIFT) - 1;
/// Generation tag of reads the node issues itself (a primary's guest reads).
const DIRECT_GEN: u64 = 0xffff;

#[derive(Debug)]
enum Machine {
    Primary(PrimaryDisk),
    Secondary(SecondaryDisk),
}

impl Machine {
    fn in_flight(&self) -> usize {
        match self {
            Machine::Primary(d) => d.in_flight(),
            Machine::Secondary(d) => d.in_flight(),
        }
    }

    fn handle_op_done(&mut self, op: OpId, result: Result<(), DiskIoError>) {
        match self {
            Machine::Primary(d) => d.handle_op_done(op, result),
            Machine::Secondary(d) => d.handle_op_done(op, result),
        }
    }

    fn poll_output(&mut self) -> Option<DiskOutput> {
        match self {
            Machine::Primary(d) => d.poll_output(),
            Machine::Secondary(d) => d.poll_output(),
        }
    }
}

/// The current disk machine and the retiring ones.
#[derive(Debug)]
pub(super) struct Disks {
    config: DiskConfig,
    generation: u64,
    current: Machine,
    retired: Vec<(u64, Machine)>,
    /// Guest reads on a primary, issued straight to its image.
    direct: BTreeMap<u64, GuestIoId>,
    next_direct: u64,
    out: crate::outbox::Outbox<DiskOutput>,
}

fn tag(generation: u64, id: u64) -> u64 {
    (generation << GEN_SHIFT) | (id & LOCAL_MASK)
}

fn retag(cmd: DiskCommand, generation: u64) -> DiskCommand {
    let t = |op: OpId| OpId(tag(generation, op.0));
    match cmd {
        DiskCommand::Read {
            op,
            io,
            layer,
            offset,
            len,
        } => DiskCommand::Read {
            op: t(op),
            io,
            layer,
            offset,
            len,
        },
        DiskCommand::Write {
            op,
            layer,
            offset,
            len,
            data,
        } => DiskCommand::Write {
            op: t(op),
            layer,
            offset,
            len,
            // A peer source names the wire's write id, under which the runtime stored the
            // bulk: never retagged.
            data,
        },
        DiskCommand::CopyBlock {
            op,
            from,
            to,
            block,
            offset,
            len,
        } => DiskCommand::CopyBlock {
            op: t(op),
            from,
            to,
            block,
            offset,
            len,
        },
        DiskCommand::ResetOverlays { op } => DiskCommand::ResetOverlays { op: t(op) },
    }
}

impl Disks {
    /// A primary starts solo (nothing to forward to before the pairing's copy, which covers
    /// every earlier write); a secondary starts with empty overlays.
    pub(super) fn new(config: &super::NodeConfig, role: Role) -> Result<Disks, NodeConfigError> {
        let current = match role {
            Role::Primary => {
                let mut d = PrimaryDisk::new(config.disk)?;
                d.handle_failover();
                Machine::Primary(d)
            }
            Role::Secondary => Machine::Secondary(SecondaryDisk::new(config.disk, Epoch(0))?),
        };
        Ok(Disks {
            config: config.disk,
            generation: 1,
            current,
            retired: Vec::new(),
            direct: BTreeMap::new(),
            next_direct: 1,
            out: crate::outbox::Outbox::default(),
        })
    }

    /// Retires the current machine (its pending outputs were collected by the caller).
    fn replace(&mut self, next: Machine) {
        let old = std::mem::replace(&mut self.current, next);
        self.retired.push((self.generation, old));
        self.generation = (self.generation + 1) % DIRECT_GEN;
        self.retired.retain(|(_, m)| m.in_flight() > 0);
    }

    /// A new pairing starts with this node as primary: forward every write from now on.
    pub(super) fn start_forwarding(&mut self) {
        self.collect();
        let d = PrimaryDisk::new(self.config).expect("config validated at Node::new");
        self.replace(Machine::Primary(d));
    }

    /// A new pairing starts with this node as secondary whose SVM reflects `applied`.
    pub(super) fn start_secondary(&mut self, applied: Epoch) {
        self.collect();
        let d = SecondaryDisk::new(self.config, applied).expect("config validated at Node::new");
        self.replace(Machine::Secondary(d));
    }

    /// The peer link came back after a drop (see `PrimaryDisk::handle_link_reset`).
    pub(super) fn handle_link_reset(&mut self) {
        if let Machine::Primary(d) = &mut self.current {
            d.handle_link_reset();
        }
    }

    /// The peer is gone: a primary stops forwarding; a secondary merges its overlays.
    pub(super) fn handle_failover(&mut self) {
        match &mut self.current {
            Machine::Primary(d) => d.handle_failover(),
            Machine::Secondary(d) => d.handle_failover(),
        }
    }

    /// Checkpoint `epoch` is being applied on a secondary: empty the overlays.
    pub(super) fn handle_checkpoint(&mut self, epoch: Epoch) {
        if let Machine::Secondary(d) = &mut self.current {
            d.handle_checkpoint(epoch);
        }
    }

    /// A guest write.
    pub(super) fn handle_guest_write(
        &mut self,
        io: GuestIoId,
        epoch: Epoch,
        offset: u64,
        len: u32,
    ) {
        match &mut self.current {
            Machine::Primary(d) => d.handle_guest_write(io, epoch, offset, len),
            Machine::Secondary(d) => d.handle_guest_write(io, offset, u64::from(len)),
        }
    }

    /// A guest read: resolved through the overlays on a secondary, issued straight to the
    /// image on a primary.
    pub(super) fn handle_guest_read(&mut self, io: GuestIoId, offset: u64, len: u64) {
        match &mut self.current {
            Machine::Secondary(d) => d.handle_guest_read(io, offset, len),
            Machine::Primary(_) => {
                if offset
                    .checked_add(len)
                    .is_none_or(|end| end > self.config.disk_size)
                {
                    self.out.push(DiskOutput::GuestDone {
                        io,
                        result: Err(GuestIoError::OutOfRange),
                    });
                    return;
                }
                let op = self.next_direct;
                self.next_direct = (self.next_direct + 1) & LOCAL_MASK;
                self.direct.insert(op, io);
                self.out.push(DiskOutput::Command(DiskCommand::Read {
                    op: OpId(tag(DIRECT_GEN, op)),
                    io,
                    layer: Layer::Parent,
                    offset,
                    len,
                }));
            }
        }
    }

    /// The primary forwarded a write (secondary).
    pub(super) fn handle_peer_write(&mut self, id: WriteId, epoch: Epoch, offset: u64, len: u32) {
        if let Machine::Secondary(d) = &mut self.current {
            // The primary's id, generation tag included, travels back in the ack unchanged.
            d.handle_peer_write(id, epoch, offset, len);
        }
    }

    /// The secondary acknowledged a forwarded write (primary).
    pub(super) fn handle_peer_ack(&mut self, id: WriteId, result: DiskResult) {
        let generation = id.0 >> GEN_SHIFT;
        if generation != self.generation {
            return;
        }
        if let Machine::Primary(d) = &mut self.current {
            d.handle_peer_ack(WriteId(id.0 & LOCAL_MASK), result);
        }
    }

    /// The runtime finished command `op`.
    pub(super) fn handle_op_done(&mut self, op: OpId, result: Result<(), DiskIoError>) {
        let generation = op.0 >> GEN_SHIFT;
        let local = OpId(op.0 & LOCAL_MASK);
        if generation == DIRECT_GEN {
            match self.direct.remove(&local.0) {
                Some(io) => self.out.push(DiskOutput::GuestDone {
                    io,
                    result: result.map_err(GuestIoError::Local),
                }),
                None => self
                    .out
                    .push(DiskOutput::Event(DiskEvent::UnknownCompletion { op })),
            }
            return;
        }
        if generation == self.generation {
            self.current.handle_op_done(local, result);
            return;
        }
        match self.retired.iter_mut().find(|(g, _)| *g == generation) {
            Some((_, m)) => m.handle_op_done(local, result),
            None => self
                .out
                .push(DiskOutput::Event(DiskEvent::UnknownCompletion { op })),
        }
    }

    /// Moves every machine's outputs, tagged, into the node's queue.
    fn collect(&mut self) {
        while let Some(o) = self.current.poll_output() {
            let o = self.tag_output(self.generation, o);
            self.out.push(o);
        }
        let mut retired = std::mem::take(&mut self.retired);
        for (g, m) in &mut retired {
            while let Some(o) = m.poll_output() {
                let o = self.tag_output(*g, o);
                self.out.push(o);
            }
        }
        retired.retain(|(_, m)| m.in_flight() > 0);
        self.retired = retired;
    }

    fn tag_output(&self, generation: u64, o: DiskOutput) -> DiskOutput {
        match o {
            DiskOutput::Command(c) => DiskOutput::Command(retag(c, generation)),
            DiskOutput::Forward {
                write_id,
                epoch,
                offset,
                len,
                io,
            } => DiskOutput::Forward {
                write_id: WriteId(tag(generation, write_id.0)),
                epoch,
                offset,
                len,
                io,
            },
            DiskOutput::Ack { write_id, result } => DiskOutput::Ack {
                // Acks carry the primary's id back unchanged.
                write_id,
                result,
            },
            DiskOutput::Event(DiskEvent::UnknownCompletion { op }) => {
                DiskOutput::Event(DiskEvent::UnknownCompletion {
                    op: OpId(tag(generation, op.0)),
                })
            }
            other => other,
        }
    }

    /// The next output, op ids tagged with their generation.
    pub(super) fn poll_output(&mut self) -> Option<DiskOutput> {
        if self.out.is_empty() {
            self.collect();
        }
        self.out.pop()
    }
}
