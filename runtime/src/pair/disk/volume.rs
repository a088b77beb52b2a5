//! [`Volume`]: a VM's guest disks laid end to end as one replicated block space. colo-core
//! replicates one disk address space (`DiskConfig::disk_size`); a VM with several virtio-blk
//! devices gives the core their concatenation, disk `i` starting at [`Volume::base`]`(i)`, and
//! every host keeps one raw image file per disk. A block of the core's overlay granularity may
//! straddle two disks (sizes are only sector-aligned): that is harmless because every read and
//! write here is split at file boundaries, so nothing above this file needs to know.
//!
//! Invariant: byte `base(i) + o` of the volume is byte `o` of disk `i`'s file and nothing else;
//! a range that leaves the volume is an [`ImageError::OutOfRange`] naming the first file,
//! never a partial I/O.

use crate::vmm::disk::image::{ImageError, RawImage};
use std::path::{Path, PathBuf};

/// One disk of a volume: its image file and where it starts in the volume.
#[derive(Debug)]
struct Extent {
    base: u64,
    image: RawImage,
}

/// Several raw images as one address space (see the module doc).
#[derive(Debug)]
pub struct Volume {
    extents: Vec<Extent>,
    size: u64,
}

impl Volume {
    /// Opens every `(path, size)` with [`RawImage::open`] (created sparse if missing, a shorter
    /// one extended, a longer one refused), in volume order.
    pub fn open(disks: &[(PathBuf, u64)]) -> Result<Volume, ImageError> {
        let mut extents = Vec::with_capacity(disks.len());
        let mut base = 0u64;
        for (path, size) in disks {
            let image = RawImage::open(path, *size)?;
            extents.push(Extent { base, image });
            base = base.checked_add(*size).ok_or(ImageError::OutOfRange {
                path: path.clone(),
                offset: base,
                len: *size,
                size: u64::MAX,
            })?;
        }
        Ok(Volume {
            extents,
            size: base,
        })
    }

    /// A volume of one image.
    pub fn single(image: RawImage) -> Volume {
        let size = image.size();
        Volume {
            extents: vec![Extent { base: 0, image }],
            size,
        }
    }

    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of disks.
    pub fn disks(&self) -> usize {
        self.extents.len()
    }

    /// Where disk `index` starts in the volume.
    pub fn base(&self, index: usize) -> Option<u64> {
        self.extents.get(index).map(|e| e.base)
    }

    /// The first disk's path (the volume's name in errors and overlay file names).
    pub fn path(&self) -> &Path {
        self.extents
            .first()
            .map_or(Path::new(""), |e| e.image.path())
    }

    /// Disk `index`'s image.
    pub fn image(&self, index: usize) -> Option<&RawImage> {
        self.extents.get(index).map(|e| &e.image)
    }

    /// Calls `each(extent, offset in its file, range of the caller's buffer)` for every piece
    /// of `[offset, offset + len)`, after checking the whole range lies inside the volume.
    fn split(
        &self,
        offset: u64,
        len: u64,
        mut each: impl FnMut(&RawImage, u64, std::ops::Range<usize>) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(ImageError::OutOfRange {
                path: self.path().to_path_buf(),
                offset,
                len,
                size: self.size,
            });
        }
        let end = offset + len;
        let mut at = offset;
        for extent in &self.extents {
            let extent_end = extent.base + extent.image.size();
            if at >= end {
                break;
            }
            if at >= extent_end {
                continue;
            }
            let piece_end = end.min(extent_end);
            let from = (at - offset) as usize;
            let to = (piece_end - offset) as usize;
            each(&extent.image, at - extent.base, from..to)?;
            at = piece_end;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let len = buf.len() as u64;
        self.split(offset, len, |image, at, range| {
            image.read_at(at, &mut buf[range])
        })
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.split(offset, data.len() as u64, |image, at, range| {
            image.write_at(at, &data[range])
        })
    }

    /// Makes every completed write of every file durable.
    pub fn flush(&self) -> Result<(), ImageError> {
        self.extents.iter().try_for_each(|e| e.image.flush())
    }

    /// crc32c of the whole volume (the disks' bytes in order).
    pub fn digest(&self) -> Result<u32, ImageError> {
        crate::vmm::disk::image::digest_of(self.size, |at, buf| self.read_at(at, buf))
    }
}
