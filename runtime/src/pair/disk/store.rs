//! [`DiskStore`]: a host's disk files executing colo-core's [`DiskCommand`]s for real — the
//! primary's image alone, or the secondary's parent image with its hidden and active overlays
//! (colo-reference.md, "Block replication") — plus the bytes in flight: the data of guest
//! writes and forwarded peer writes (staged until their commands ran) and the buffers of guest
//! reads (filled by `Read` commands, taken when the core completes the request).
//!
//! The core decides which layer holds each block and serialises commands per block
//! (`colo_core::disk`, "Ordering contract"); this store only moves bytes, as colo-sim's
//! `LayeredDisk` does over byte vectors. Invariant: a command that fails (an OS error, data
//! never staged, a range outside the disk, a layer this host does not have) returns a
//! [`DiskIoError`] for the core and changes no index, never a panic; the secondary's view
//! ([`DiskStore::view_read`]: active, then hidden, then parent, per block) is what the SVM
//! reads through the core.

use super::volume::Volume;
use crate::vmm::disk::image::{ImageError, OverlayImage, RawImage};
use colo_core::disk::{DataSource, DiskCommand, DiskIoError, GuestIoId, Layer};
use colo_core::wire::message::WriteId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A guest read being assembled.
#[derive(Debug)]
struct ReadBuffer {
    offset: u64,
    bytes: Vec<u8>,
}

/// One host's disk files.
#[derive(Debug)]
pub struct DiskStore {
    /// The VM's disks end to end (one image for a one-disk VM).
    parent: Volume,
    /// Hidden and active, on the secondary only.
    overlays: Option<(OverlayImage, OverlayImage)>,
    guest_writes: BTreeMap<GuestIoId, (u64, Vec<u8>)>,
    peer_writes: BTreeMap<WriteId, (u64, Vec<u8>)>,
    reads: BTreeMap<GuestIoId, ReadBuffer>,
    /// The last failure, kept for the operator (the core only gets its kind).
    last_error: Option<String>,
}

impl DiskStore {
    /// The primary's store: its own image at `image` (created sparse if missing).
    pub fn primary(image: &Path, size: u64) -> Result<DiskStore, ImageError> {
        Ok(DiskStore::new(
            Volume::single(RawImage::open(image, size)?),
            None,
        ))
    }

    /// The primary's store of a VM with several disks: its images, in device order.
    pub fn primary_volume(disks: &[(PathBuf, u64)]) -> Result<DiskStore, ImageError> {
        Ok(DiskStore::new(Volume::open(disks)?, None))
    }

    /// The secondary's store: the parent image at `parent` and fresh, empty overlays at
    /// `hidden` and `active`, in blocks of `block_size` (the core's `DiskConfig`).
    pub fn secondary(
        parent: &Path,
        hidden: &Path,
        active: &Path,
        size: u64,
        block_size: u64,
    ) -> Result<DiskStore, ImageError> {
        DiskStore::secondary_volume(&[(parent.to_path_buf(), size)], hidden, active, block_size)
    }

    /// The secondary's store of a VM with several disks: the parent images in device order,
    /// and one hidden and one active overlay over the whole volume.
    pub fn secondary_volume(
        parents: &[(PathBuf, u64)],
        hidden: &Path,
        active: &Path,
        block_size: u64,
    ) -> Result<DiskStore, ImageError> {
        let parent = Volume::open(parents)?;
        let size = parent.size();
        let hidden = OverlayImage::create(hidden, size, block_size)?;
        let active = OverlayImage::create(active, size, block_size)?;
        Ok(DiskStore::new(parent, Some((hidden, active))))
    }

    fn new(parent: Volume, overlays: Option<(OverlayImage, OverlayImage)>) -> DiskStore {
        DiskStore {
            parent,
            overlays,
            guest_writes: BTreeMap::new(),
            peer_writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            last_error: None,
        }
    }

    /// Disk size in bytes.
    pub fn size(&self) -> u64 {
        self.parent.size()
    }

    /// The parent images (the primary's disks, or the secondary's bases), end to end.
    pub fn parent(&self) -> &Volume {
        &self.parent
    }

    /// Blocks held by the hidden and active overlays (0, 0 on the primary).
    pub fn overlay_blocks(&self) -> (usize, usize) {
        self.overlays
            .as_ref()
            .map_or((0, 0), |(h, a)| (h.blocks().count(), a.blocks().count()))
    }

    /// The last command failure, described.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The bytes of guest write `io`, which starts at `offset`, until [`Self::finish_guest`].
    pub fn stage_guest_write(&mut self, io: GuestIoId, offset: u64, data: Vec<u8>) {
        self.guest_writes.insert(io, (offset, data));
    }

    /// The bytes of guest write `io`, if staged (the primary forwards them as the bulk of a
    /// `DiskWrite`).
    pub fn guest_write(&self, io: GuestIoId) -> Option<&[u8]> {
        self.guest_writes.get(&io).map(|(_, d)| d.as_slice())
    }

    /// The bulk of forwarded write `id`, which starts at `offset`, until [`Self::finish_peer`].
    pub fn stage_peer_write(&mut self, id: WriteId, offset: u64, data: Vec<u8>) {
        self.peer_writes.insert(id, (offset, data));
    }

    /// Guest read `io` of `len` bytes at `offset` starts: its buffer, zeroed.
    pub fn begin_read(&mut self, io: GuestIoId, offset: u64, len: u64) {
        self.reads.insert(
            io,
            ReadBuffer {
                offset,
                bytes: vec![0; len as usize],
            },
        );
    }

    /// Guest request `io` is complete: its read bytes (if it was a read) and no more staging.
    pub fn finish_guest(&mut self, io: GuestIoId) -> Option<Vec<u8>> {
        self.guest_writes.remove(&io);
        self.reads.remove(&io).map(|r| r.bytes)
    }

    /// Forwarded write `id` is acknowledged: drop its bytes.
    pub fn finish_peer(&mut self, id: WriteId) {
        self.peer_writes.remove(&id);
    }

    /// Flushes the parent image (the data the guest was told is written).
    pub fn flush(&self) -> Result<(), ImageError> {
        self.parent.flush()
    }

    /// Executes one command; the result is what the runtime reports to the core
    /// (`Input::DiskDone`).
    pub fn execute(&mut self, cmd: DiskCommand) -> Result<(), DiskIoError> {
        match self.run(cmd) {
            Ok(()) => Ok(()),
            Err(Failure::Image(e)) => {
                let kind = e.as_disk_io();
                self.last_error = Some(e.to_string());
                Err(kind)
            }
            Err(Failure::Plain(what)) => {
                self.last_error = Some(format!("{cmd:?}: {what}"));
                Err(DiskIoError::Io)
            }
        }
    }

    fn run(&mut self, cmd: DiskCommand) -> Result<(), Failure> {
        match cmd {
            DiskCommand::Read {
                io,
                layer,
                offset,
                len,
                ..
            } => {
                let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| "length")?];
                self.read_layer(layer, offset, &mut bytes)?;
                let buf = self.reads.get_mut(&io).ok_or("no read buffer")?;
                let from = offset.checked_sub(buf.offset).ok_or("before the request")?;
                let dest = usize::try_from(from)
                    .ok()
                    .and_then(|f| buf.bytes.get_mut(f..f.checked_add(bytes.len())?))
                    .ok_or("past the request")?;
                dest.copy_from_slice(&bytes);
                Ok(())
            }
            DiskCommand::Write {
                layer,
                offset,
                len,
                data,
                ..
            } => {
                let (start, bytes) = match data {
                    DataSource::Guest(io) => self.guest_writes.get(&io),
                    DataSource::Peer(id) => self.peer_writes.get(&id),
                }
                .ok_or("data never staged")?;
                let from = offset.checked_sub(*start).ok_or("before the data")?;
                let piece = usize::try_from(from)
                    .ok()
                    .and_then(|f| bytes.get(f..f.checked_add(usize::try_from(len).ok()?)?))
                    .ok_or("past the data")?
                    .to_vec();
                self.write_layer(layer, offset, &piece)
            }
            DiskCommand::CopyBlock {
                from,
                to,
                offset,
                len,
                ..
            } => {
                let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| "length")?];
                self.read_layer(from, offset, &mut bytes)?;
                self.write_layer(to, offset, &bytes)
            }
            DiskCommand::ResetOverlays { .. } => {
                let (hidden, active) = self.overlays.as_mut().ok_or("no overlays")?;
                hidden.reset()?;
                active.reset()?;
                Ok(())
            }
        }
    }

    fn read_layer(&self, layer: Layer, offset: u64, buf: &mut [u8]) -> Result<(), Failure> {
        match (layer, &self.overlays) {
            (Layer::Parent, _) => self.parent.read_at(offset, buf)?,
            (Layer::Hidden, Some((h, _))) => h.read_at(offset, buf)?,
            (Layer::Active, Some((_, a))) => a.read_at(offset, buf)?,
            _ => return Err("no overlays".into()),
        }
        Ok(())
    }

    fn write_layer(&mut self, layer: Layer, offset: u64, data: &[u8]) -> Result<(), Failure> {
        match (layer, &mut self.overlays) {
            (Layer::Parent, _) => self.parent.write_at(offset, data)?,
            (Layer::Hidden, Some((h, _))) => h.write_at(offset, data)?,
            (Layer::Active, Some((_, a))) => a.write_at(offset, data)?,
            _ => return Err("no overlays".into()),
        }
        Ok(())
    }

    /// The disk as this host's VM sees it: on the secondary, per block, the active overlay if
    /// it holds the block, else the hidden one, else the parent; on the primary, its image.
    pub fn view_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let Some((hidden, active)) = &self.overlays else {
            return self.parent.read_at(offset, buf);
        };
        self.parent.read_at(offset, buf)?; // checks the range once
        let block_size = OverlayImage::block_size(hidden);
        let mut at = 0usize;
        while at < buf.len() {
            let pos = offset + at as u64;
            let block = pos / block_size;
            let n = (((block + 1) * block_size - pos) as usize).min(buf.len() - at);
            let piece = &mut buf[at..at + n];
            if active.holds(block) {
                active.read_at(pos, piece)?;
            } else if hidden.holds(block) {
                hidden.read_at(pos, piece)?;
            }
            at += n;
        }
        Ok(())
    }

    /// crc32c of [`Self::view_read`] over the whole disk.
    pub fn view_digest(&self) -> Result<u32, ImageError> {
        crate::vmm::disk::image::digest_of(self.size(), |at, buf| self.view_read(at, buf))
    }
}

/// Why a command failed, before it is reduced to a [`DiskIoError`].
enum Failure {
    Image(ImageError),
    Plain(&'static str),
}

impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Failure {
        Failure::Image(e)
    }
}

impl From<&'static str> for Failure {
    fn from(what: &'static str) -> Failure {
        Failure::Plain(what)
    }
}
