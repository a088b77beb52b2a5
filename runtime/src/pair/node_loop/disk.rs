//! `GuestDisk`: the node loop's side of block replication. It owns this host's disk files
//! ([`DiskStore`]: the primary's image, or the secondary's parent with hidden and active
//! overlays), turns the guest's virtio-blk requests into `Input::GuestDisk`, executes the
//! node's `DiskCommand`s on the files, stages the bytes of guest writes (forwarded to the peer
//! as a `DiskWrite` bulk, never through the core) and of forwarded writes, and completes the
//! guest's requests on `Output::GuestDiskDone`.
//!
//! A VM with several disks has one virtio-blk device per disk; the core replicates one block
//! space, their concatenation ([`crate::pair::disk::Volume`]): a request of device `i` at offset `o`
//! is the volume's offset `base(i) + o`, and its completion goes back to device `i`.
//!
//! The device's backend ([`BlkBridge`]) only posts requests into the loop's channel, tagged
//! with its device index and the VM generation: an applied checkpoint replaces the secondary's device state, so a
//! request or completion of the VM that was there before belongs to nobody now and is dropped
//! (counted in `stale`). Invariant: every guest request the loop accepted is completed exactly
//! once to the generation that issued it, with the node's outcome; I/O errors go to the node
//! as `DiskIoError` and are logged with the file's error, never swallowed. Reads go through the
//! node too (a primary-side node issues a plain `Read` of its image, a secondary resolves the
//! overlays), so a survivor that becomes primary again reads right without the loop knowing
//! its side; flushes go straight to the files (`fdatasync` of the image).

use super::LoopEvent;
use crate::pair::disk::{DiskStore, ImageError};
use crate::vmm::devices::virtio::blk::{
    BlkCompletion, BlkDevice, BlkIoError, BlkOp, BlkRequest, BlkRequestId, BlockBackend,
};
use colo_core::disk::{DiskCommand, GuestIoId};
use colo_core::node::{GuestDiskRequest, Input};
use colo_core::wire::message::WriteId;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use tracing::{error, warn};

/// The guest disk of a replicated node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFiles {
    /// The primary's raw image, or the secondary's parent image. The secondary's overlays are
    /// this path with `.hidden` and `.active` appended (created empty at start).
    pub image: PathBuf,
    /// Disk size in bytes (a multiple of 512).
    pub size: u64,
    /// The VM's block device serving this disk (read-only disks are not replicated and have
    /// no entry, so this can differ from the position in the list).
    pub device: usize,
}

impl DiskFiles {
    /// The secondary's overlay paths.
    pub fn overlays(&self) -> (PathBuf, PathBuf) {
        let with = |suffix: &str| {
            let mut p = self.image.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        (with(".hidden"), with(".active"))
    }
}

/// Counters of the loop's disk work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskLoopStats {
    /// Guest writes handed to the node.
    pub guest_writes: u64,
    /// Guest reads served (directly or through the node).
    pub guest_reads: u64,
    /// Bytes of guest writes forwarded to the peer.
    pub forwarded_bytes: u64,
    /// Forwarded writes received from the peer.
    pub peer_writes: u64,
    /// Disk commands executed.
    pub commands: u64,
    /// Disk commands that failed.
    pub command_errors: u64,
    /// Requests or completions of a VM generation that no longer exists.
    pub stale: u64,
}

/// The virtio-blk backend of a replicated VM: posts every request into the loop.
#[derive(Debug)]
pub struct BlkBridge {
    tx: mpsc::Sender<LoopEvent>,
    generation: Arc<AtomicU64>,
    /// Which of the VM's block devices this backend serves.
    disk: usize,
}

impl BlockBackend for BlkBridge {
    fn submit(&mut self, request: BlkRequest) -> Option<BlkCompletion> {
        let generation = self.generation.load(Ordering::SeqCst);
        match self.tx.send(LoopEvent::GuestBlk {
            disk: self.disk,
            generation,
            request,
        }) {
            Ok(()) => None,
            // The loop is gone: nothing will ever complete the request.
            Err(_) => Some(Err(BlkIoError("node loop stopped".into()))),
        }
    }
}

/// What the loop remembers of a request it handed to the node.
#[derive(Debug)]
struct Pending {
    generation: u64,
    disk: usize,
    id: BlkRequestId,
}

/// The loop's disk.
#[derive(Debug)]
pub(super) struct GuestDisk {
    store: DiskStore,
    /// The device of each replicated disk, in volume order.
    devices: Vec<Arc<Mutex<BlkDevice>>>,
    generation: Arc<AtomicU64>,
    next_io: u64,
    pending: BTreeMap<GuestIoId, Pending>,
    stats: DiskLoopStats,
    name: &'static str,
}

impl GuestDisk {
    /// Opens the files of every replicated disk and attaches the backend of its device
    /// (`disks[i].device`, capacity `disks[i].size`); disk `i` is extent `i` of the volume.
    pub(super) fn open(
        disks: &[DiskFiles],
        primary: bool,
        block_size: u64,
        devices: &[Arc<Mutex<BlkDevice>>],
        tx: mpsc::Sender<LoopEvent>,
        name: &'static str,
    ) -> Result<GuestDisk, ImageError> {
        let files: Vec<(PathBuf, u64)> = disks.iter().map(|d| (d.image.clone(), d.size)).collect();
        let store = match disks.first() {
            Some(first) if !primary => {
                let (hidden, active) = first.overlays();
                DiskStore::secondary_volume(&files, &hidden, &active, block_size)?
            }
            _ => DiskStore::primary_volume(&files)?,
        };
        let generation = Arc::new(AtomicU64::new(0));
        let mut attached = Vec::with_capacity(disks.len());
        for (disk, files) in disks.iter().enumerate() {
            let device = devices.get(files.device).ok_or_else(|| ImageError::Io {
                path: files.image.clone(),
                what: "attach",
                source: std::io::Error::other(format!(
                    "the VM has no block device {}",
                    files.device
                )),
            })?;
            device.lock().set_backend(
                Box::new(BlkBridge {
                    tx: tx.clone(),
                    generation: generation.clone(),
                    disk,
                }),
                files.size,
            );
            attached.push(device.clone());
        }
        Ok(GuestDisk {
            store,
            devices: attached,
            generation,
            next_io: 1,
            pending: BTreeMap::new(),
            stats: DiskLoopStats::default(),
            name,
        })
    }

    /// The disks of a node loop with `config` (none without `config.disks`).
    pub(super) fn for_loop(
        config: &super::NodeLoopConfig,
        machine: &crate::vmm::machine::Machine,
        tx: mpsc::Sender<LoopEvent>,
    ) -> Result<Option<GuestDisk>, ImageError> {
        if config.disks.is_empty() {
            return Ok(None);
        }
        let primary = config.role == super::Role::Primary;
        let name = if primary { "primary" } else { "secondary" };
        let block_size = config.node.disk.block_size;
        GuestDisk::open(&config.disks, primary, block_size, machine.blks(), tx, name).map(Some)
    }

    /// Counters.
    pub(super) fn stats(&self) -> DiskLoopStats {
        self.stats
    }

    /// The store (for digests in logs and tests).
    pub(super) fn store(&self) -> &DiskStore {
        &self.store
    }

    /// Called before a checkpoint is applied to this VM: what the old VM asked for is stale.
    pub(super) fn new_generation(&mut self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn complete(&self, disk: usize, id: BlkRequestId, completion: BlkCompletion) {
        if let Some(device) = self.devices.get(disk) {
            device.lock().complete(id, completion);
        }
    }

    /// A guest request from device `disk`; returns the input for the node, if it needs one.
    pub(super) fn on_request(
        &mut self,
        disk: usize,
        generation: u64,
        request: BlkRequest,
    ) -> Option<Input> {
        if generation != self.generation.load(Ordering::SeqCst) {
            self.stats.stale += 1;
            return None;
        }
        let err = |e: ImageError| BlkIoError(e.to_string());
        // The device checked the range against its own capacity: inside disk `disk`.
        let Some(base) = self.store.parent().base(disk) else {
            self.complete(
                disk,
                request.id,
                Err(BlkIoError(format!("no disk {disk} in this node's volume"))),
            );
            return None;
        };
        match request.op {
            BlkOp::Flush => {
                self.complete(
                    disk,
                    request.id,
                    self.store.flush().map(|()| Vec::new()).map_err(err),
                );
                None
            }
            BlkOp::Read { offset, len } => {
                self.stats.guest_reads += 1;
                let offset = base + offset;
                let io = self.track(generation, disk, request.id);
                self.store.begin_read(io, offset, len);
                Some(Input::GuestDisk(GuestDiskRequest::Read { io, offset, len }))
            }
            BlkOp::Write { offset, data } => {
                self.stats.guest_writes += 1;
                let offset = base + offset;
                let io = self.track(generation, disk, request.id);
                // The device caps a request at 4 MiB, so the length fits the wire's u32.
                let len = data.len() as u32;
                self.store.stage_guest_write(io, offset, data);
                Some(Input::GuestDisk(GuestDiskRequest::Write {
                    io,
                    offset,
                    len,
                }))
            }
        }
    }

    fn track(&mut self, generation: u64, disk: usize, id: BlkRequestId) -> GuestIoId {
        let io = GuestIoId(self.next_io);
        self.next_io += 1;
        self.pending.insert(
            io,
            Pending {
                generation,
                disk,
                id,
            },
        );
        io
    }

    /// `Output::GuestDiskDone`.
    pub(super) fn on_guest_done(
        &mut self,
        io: GuestIoId,
        result: Result<(), colo_core::disk::GuestIoError>,
    ) {
        let bytes = self.store.finish_guest(io);
        let Some(p) = self.pending.remove(&io) else {
            error!(
                role = self.name,
                "error: completion of unknown guest disk request {io:?}"
            );
            return;
        };
        if p.generation != self.generation.load(Ordering::SeqCst) {
            self.stats.stale += 1;
            return;
        }
        let completion = match result {
            Ok(()) => Ok(bytes.unwrap_or_default()),
            Err(e) => {
                warn!(role = self.name, "guest disk request {io:?} failed: {e}");
                Err(BlkIoError(e.to_string()))
            }
        };
        self.complete(p.disk, p.id, completion);
    }

    /// `Output::Disk`: runs the command on the files; the node's `DiskDone` input.
    pub(super) fn on_command(&mut self, command: DiskCommand) -> Input {
        self.stats.commands += 1;
        let result = self.store.execute(command);
        if result.is_err() {
            self.stats.command_errors += 1;
            error!(
                role = self.name,
                "error: disk command {command:?} failed: {}",
                self.store.last_error().unwrap_or("?")
            );
        }
        Input::DiskDone {
            op: command.op(),
            result,
        }
    }

    /// The bytes of guest write `io` for a forwarded `DiskWrite`.
    pub(super) fn forward_bulk(&mut self, io: GuestIoId) -> Option<Vec<u8>> {
        let bytes = self.store.guest_write(io)?.to_vec();
        self.stats.forwarded_bytes += bytes.len() as u64;
        Some(bytes)
    }

    /// A forwarded write's bulk arrived: kept until the node acknowledges the write.
    pub(super) fn on_peer_write(&mut self, id: WriteId, offset: u64, bytes: Vec<u8>) {
        self.stats.peer_writes += 1;
        self.store.stage_peer_write(id, offset, bytes);
    }

    /// Primary, initial copy: streams the whole image as `SyncDisk` frames of `term`; returns
    /// the bytes sent.
    pub(super) fn send_image(
        &self,
        writer: &mut crate::pair::peer::PeerWriter,
        term: colo_core::ids::Term,
        progress: &crate::pair::progress::SyncProgress,
    ) -> Result<u64, SyncSendError> {
        const CHUNK: u64 = 1 << 20;
        let size = self.store.size();
        let mut buf = vec![0u8; CHUNK.min(size) as usize];
        let mut offset = 0;
        while offset < size {
            let n = CHUNK.min(size - offset) as usize;
            self.store
                .parent()
                .read_at(offset, &mut buf[..n])
                .map_err(SyncSendError::DiskRead)?;
            let message = colo_core::wire::message::Message::SyncDisk {
                term,
                offset,
                len: n as u32,
            };
            writer.send(&message, &buf[..n])?;
            progress.advance(n as u64);
            offset += n as u64;
        }
        Ok(size)
    }

    /// The size of the disk space (all disks), as the initial copy sends it.
    pub(super) fn image_size(&self) -> u64 {
        self.store.size()
    }

    /// Secondary, initial copy: a piece of the primary's image for the parent.
    pub(super) fn on_sync_disk(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ImageError> {
        self.store.parent().write_at(offset, bytes)
    }

    /// The node acknowledged forwarded write `id`.
    pub(super) fn on_ack_sent(&mut self, id: WriteId) {
        self.store.finish_peer(id);
    }
}

/// Why the initial copy or a re-protection copy could not be sent.
#[derive(Debug, thiserror::Error)]
pub(super) enum SyncSendError {
    /// The peer link failed under the copy.
    #[error(transparent)]
    Link(#[from] crate::pair::peer::LinkClosed),
    /// The primary's own disk image could not be read for the copy.
    #[error("reading the disk image for the copy: {0}")]
    DiskRead(ImageError),
}

impl SyncSendError {
    /// Whether the peer's end closed the link (`LinkClosed::closed_by_peer`).
    pub(super) fn closed_by_peer(&self) -> bool {
        matches!(self, SyncSendError::Link(l) if l.closed_by_peer())
    }
}
