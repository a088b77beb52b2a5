//! `LayeredDisk`: the simulated storage a host's runtime keeps for colo-core's disk machines —
//! the parent image and the hidden and active overlays (QEMU block/replication.c) — executing
//! [`DiskCommand`]s byte for byte, with injectable write errors.
//!
//! The core decides which layer holds a block and serialises commands per block; this model only
//! moves bytes: `Read` copies from the named layer into the guest request's read buffer, `Write`
//! stores data staged for a guest write ([`LayeredDisk::stage_guest_write`]) or a forwarded
//! peer write ([`LayeredDisk::stage_peer_write`]), `CopyBlock` copies a range between layers,
//! `ResetOverlays` empties hidden and active. Invariant kept: a command that fails (an injected
//! `Io` error, or a write whose data was never staged) changes nothing, so the core's view of the
//! layers stays true.

use std::collections::BTreeMap;

use colo_core::disk::{DataSource, DiskCommand, DiskIoError, GuestIoId, Layer};
use colo_core::wire::message::WriteId;

use crate::rng::SimRng;

/// Counters of the disk model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskModelStats {
    /// Commands executed.
    pub commands: u64,
    /// Writes (and copies) failed by injection.
    pub injected_errors: u64,
}

/// Three layers of one disk and the data in flight.
#[derive(Clone, Debug)]
pub struct LayeredDisk {
    parent: Vec<u8>,
    hidden: Vec<u8>,
    active: Vec<u8>,
    guest_data: BTreeMap<GuestIoId, (u64, Vec<u8>)>,
    peer_data: BTreeMap<WriteId, (u64, Vec<u8>)>,
    reads: BTreeMap<GuestIoId, BTreeMap<u64, Vec<u8>>>,
    rng: SimRng,
    write_error_ppm: u32,
    stats: DiskModelStats,
}

impl LayeredDisk {
    /// A zeroed disk of `size` bytes whose writes fail with probability `write_error_ppm`.
    pub fn new(size: u64, write_error_ppm: u32, rng: SimRng) -> LayeredDisk {
        let n = usize::try_from(size).expect("simulated disk fits in memory");
        LayeredDisk {
            parent: vec![0; n],
            hidden: vec![0; n],
            active: vec![0; n],
            guest_data: BTreeMap::new(),
            peer_data: BTreeMap::new(),
            reads: BTreeMap::new(),
            rng,
            write_error_ppm,
            stats: DiskModelStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> DiskModelStats {
        self.stats
    }

    /// The data of guest write `io`, which starts at `offset`.
    pub fn stage_guest_write(&mut self, io: GuestIoId, offset: u64, data: Vec<u8>) {
        self.guest_data.insert(io, (offset, data));
    }

    /// The bulk of forwarded write `id`, which starts at `offset`.
    pub fn stage_peer_write(&mut self, id: WriteId, offset: u64, data: Vec<u8>) {
        self.peer_data.insert(id, (offset, data));
    }

    /// The staged bytes of guest write `io` at `offset..offset + len` (what a primary forwards
    /// with `Message::DiskWrite`); empty if nothing of it is staged (the receiver's write then
    /// fails, as a lost bulk would).
    pub fn guest_write_bytes(&self, io: GuestIoId, offset: u64, len: u32) -> Vec<u8> {
        self.guest_data
            .get(&io)
            .and_then(|(start, bytes)| {
                let from = usize::try_from(offset.checked_sub(*start)?).ok()?;
                bytes.get(from..from + len as usize)
            })
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Forgets the staged data of a finished guest write.
    pub fn finish_guest_write(&mut self, io: GuestIoId) {
        self.guest_data.remove(&io);
    }

    /// The bytes read for guest read `io` (offset `offset`, `len` bytes), assembled from every
    /// `Read` command executed for it; `None` if some part was never read.
    pub fn take_read(&mut self, io: GuestIoId, offset: u64, len: u64) -> Option<Vec<u8>> {
        let pieces = self.reads.remove(&io)?;
        let mut out = Vec::with_capacity(len as usize);
        let mut at = offset;
        for (o, bytes) in pieces {
            if o != at {
                return None;
            }
            at += bytes.len() as u64;
            out.extend_from_slice(&bytes);
        }
        (at == offset + len).then_some(out)
    }

    /// The bytes of `layer` at `offset..offset + len` (for checks).
    pub fn layer_bytes(&self, layer: Layer, offset: u64, len: u64) -> &[u8] {
        let (a, b) = (offset as usize, (offset + len) as usize);
        &self.layer(layer)[a..b]
    }

    fn layer(&self, l: Layer) -> &Vec<u8> {
        match l {
            Layer::Parent => &self.parent,
            Layer::Hidden => &self.hidden,
            Layer::Active => &self.active,
        }
    }

    fn layer_mut(&mut self, l: Layer) -> &mut Vec<u8> {
        match l {
            Layer::Parent => &mut self.parent,
            Layer::Hidden => &mut self.hidden,
            Layer::Active => &mut self.active,
        }
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.parent.len() as u64)
    }

    /// Executes one command; the result is what the runtime reports to the core.
    pub fn execute(&mut self, cmd: DiskCommand) -> Result<(), DiskIoError> {
        self.stats.commands += 1;
        match cmd {
            DiskCommand::Read {
                io,
                layer,
                offset,
                len,
                ..
            } => {
                if !self.in_range(offset, len) {
                    return Err(DiskIoError::Io);
                }
                let bytes = self.layer_bytes(layer, offset, len).to_vec();
                self.reads.entry(io).or_default().insert(offset, bytes);
                Ok(())
            }
            DiskCommand::Write {
                layer,
                offset,
                len,
                data,
                ..
            } => {
                let src = match data {
                    DataSource::Guest(io) => self.guest_data.get(&io),
                    DataSource::Peer(id) => self.peer_data.get(&id),
                };
                let Some((start, bytes)) = src else {
                    return Err(DiskIoError::Io);
                };
                let from = offset.checked_sub(*start).ok_or(DiskIoError::Io)? as usize;
                let Some(piece) = bytes.get(from..from + len as usize) else {
                    return Err(DiskIoError::Io);
                };
                let piece = piece.to_vec();
                if !self.in_range(offset, len) {
                    return Err(DiskIoError::Io);
                }
                if self.rng.chance_ppm(self.write_error_ppm) {
                    self.stats.injected_errors += 1;
                    return Err(DiskIoError::Io);
                }
                let o = offset as usize;
                self.layer_mut(layer)[o..o + piece.len()].copy_from_slice(&piece);
                Ok(())
            }
            DiskCommand::CopyBlock {
                from,
                to,
                offset,
                len,
                ..
            } => {
                if !self.in_range(offset, len) {
                    return Err(DiskIoError::Io);
                }
                if self.rng.chance_ppm(self.write_error_ppm) {
                    self.stats.injected_errors += 1;
                    return Err(DiskIoError::Io);
                }
                let bytes = self.layer_bytes(from, offset, len).to_vec();
                let o = offset as usize;
                self.layer_mut(to)[o..o + bytes.len()].copy_from_slice(&bytes);
                Ok(())
            }
            DiskCommand::ResetOverlays { .. } => {
                self.hidden.fill(0);
                self.active.fill(0);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_core::disk::{DiskConfig, DiskOutput, SecondaryDisk};
    use colo_core::ids::Epoch;

    const SIZE: u64 = 256 * 1024;
    const BLOCK: u64 = 64 * 1024;

    /// Runs the secondary machine's commands on the disk until quiet; returns guest completions
    /// and acknowledgements.
    fn drain(m: &mut SecondaryDisk, d: &mut LayeredDisk) -> Vec<DiskOutput> {
        let mut done = Vec::new();
        while let Some(o) = m.poll_output() {
            match o {
                DiskOutput::Command(c) => {
                    let r = d.execute(c);
                    m.handle_op_done(c.op(), r);
                }
                other => done.push(other),
            }
        }
        done
    }

    fn read(m: &mut SecondaryDisk, d: &mut LayeredDisk, io: u64, off: u64, len: u64) -> Vec<u8> {
        m.handle_guest_read(GuestIoId(io), off, len);
        let done = drain(m, d);
        assert!(
            done.iter()
                .any(|o| matches!(o, DiskOutput::GuestDone { result: Ok(()), .. })),
            "{done:?}"
        );
        d.take_read(GuestIoId(io), off, len).expect("whole read")
    }

    #[test]
    fn svm_view_is_its_own_writes_over_the_last_checkpoint_and_failover_keeps_it() {
        let cfg = DiskConfig {
            disk_size: SIZE,
            block_size: BLOCK,
        };
        let mut m = SecondaryDisk::new(cfg, Epoch(0)).expect("valid");
        let mut d = LayeredDisk::new(SIZE, 0, SimRng::new(1));
        // The primary forwards a write to block 0; the SVM writes block 1 itself.
        d.stage_peer_write(WriteId(1), 100, vec![0xaa; 50]);
        m.handle_peer_write(WriteId(1), Epoch(1), 100, 50);
        drain(&mut m, &mut d);
        assert_eq!(d.layer_bytes(Layer::Parent, 100, 50), &[0xaa; 50][..]);
        d.stage_guest_write(GuestIoId(7), BLOCK + 10, vec![0x55; 20]);
        m.handle_guest_write(GuestIoId(7), BLOCK + 10, 20);
        drain(&mut m, &mut d);
        // The SVM still sees the old contents where the primary wrote (copy-before-write into
        // hidden) and its own write where it wrote.
        assert_eq!(read(&mut m, &mut d, 8, 100, 50), vec![0; 50]);
        assert_eq!(read(&mut m, &mut d, 9, BLOCK + 10, 20), vec![0x55; 20]);
        // Failover: the merge makes the parent the SVM's view.
        m.handle_failover();
        drain(&mut m, &mut d);
        assert_eq!(d.layer_bytes(Layer::Parent, 100, 50), &[0; 50][..]);
        assert_eq!(
            d.layer_bytes(Layer::Parent, BLOCK + 10, 20),
            &[0x55; 20][..]
        );
    }

    #[test]
    fn a_checkpoint_makes_the_svm_see_the_primarys_disk() {
        let cfg = DiskConfig {
            disk_size: SIZE,
            block_size: BLOCK,
        };
        let mut m = SecondaryDisk::new(cfg, Epoch(0)).expect("valid");
        let mut d = LayeredDisk::new(SIZE, 0, SimRng::new(2));
        d.stage_peer_write(WriteId(1), 0, vec![3; 8]);
        m.handle_peer_write(WriteId(1), Epoch(1), 0, 8);
        drain(&mut m, &mut d);
        m.handle_checkpoint(Epoch(1));
        drain(&mut m, &mut d);
        assert_eq!(read(&mut m, &mut d, 1, 0, 8), vec![3; 8]);
    }

    #[test]
    fn injected_write_errors_become_error_completions_and_change_nothing() {
        let cfg = DiskConfig {
            disk_size: SIZE,
            block_size: BLOCK,
        };
        let mut m = SecondaryDisk::new(cfg, Epoch(0)).expect("valid");
        let mut d = LayeredDisk::new(SIZE, 1_000_000, SimRng::new(3));
        d.stage_guest_write(GuestIoId(1), 0, vec![9; 16]);
        m.handle_guest_write(GuestIoId(1), 0, 16);
        let done = drain(&mut m, &mut d);
        assert!(
            done.iter()
                .any(|o| matches!(o, DiskOutput::GuestDone { result: Err(_), .. })),
            "{done:?}"
        );
        assert!(d.stats().injected_errors > 0);
        assert_eq!(d.layer_bytes(Layer::Active, 0, 16), &[0; 16][..]);
    }
}
