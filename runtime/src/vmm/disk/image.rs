//! Disk images as files: [`RawImage`] (a raw image of a fixed size: the primary's disk, the
//! secondary's parent) and [`OverlayImage`] (a sparse, block-granular overlay: the secondary's
//! hidden and active images, QEMU block/replication.c's qcow2 overlays reduced to what colo
//! needs).
//!
//! Invariant: every byte range is checked against the image size before the file is touched,
//! and every OS error is returned (typed, with the path), never swallowed. An overlay's index
//! (the blocks it holds) changes only after the bytes are written, so a failed write leaves
//! the index true; a block never written reads as zeros without touching the file. A reset
//! drops the index and punches the file back to a hole (truncate to zero, then to the size),
//! so an emptied overlay takes no space.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An image file operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The OS refused.
    #[error("disk image {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A range outside the image.
    #[error("disk image {path}: {offset:#x}+{len} lies outside its {size} bytes")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Image size.
        size: u64,
    },
    /// An existing image is larger than the disk size asked for.
    #[error("disk image {path} holds {found} bytes, more than the disk size {size}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        found: u64,
        /// The disk size.
        size: u64,
    },
}

impl ImageError {
    /// The failure as the core's disk machines see it (`ENOSPC` is `NoSpace`).
    pub fn as_disk_io(&self) -> colo_core::disk::DiskIoError {
        match self {
            ImageError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                colo_core::disk::DiskIoError::NoSpace
            }
            _ => colo_core::disk::DiskIoError::Io,
        }
    }
}

/// A raw image of `size` bytes.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
}

/// An I/O error of operation `what` on the image at `path`.
fn io_error_at<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

impl RawImage {
    /// Opens `path`, creating it (sparse, zero) if missing and extending a shorter one with a
    /// hole; an existing image larger than `size` is refused (it would lose data).
    pub fn open(path: &Path, size: u64) -> Result<RawImage, ImageError> {
        let io = |what| io_error_at(path, what);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("open"))?;
        let found = file.metadata().map_err(io("stat"))?.len();
        if found > size {
            return Err(ImageError::TooLarge {
                path: path.to_path_buf(),
                found,
                size,
            });
        }
        if found < size {
            file.set_len(size).map_err(io("extend"))?;
        }
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    /// Opens an existing image for reading only (a read-only guest disk); its size is the
    /// file's, which must be a positive whole number of 512-byte sectors.
    pub fn open_read_only(path: &Path) -> Result<RawImage, ImageError> {
        let io = |what| io_error_at(path, what);
        let file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(io("open"))?;
        let size = file.metadata().map_err(io("stat"))?.len();
        if size == 0 || size % 512 != 0 {
            return Err(ImageError::Io {
                path: path.to_path_buf(),
                what: "size",
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{size} bytes is not a positive whole number of 512-byte sectors"),
                ),
            });
        }
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    /// The image's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        if offset.checked_add(len).is_some_and(|end| end <= self.size) {
            Ok(())
        } else {
            Err(ImageError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size: self.size,
            })
        }
    }

    fn io_error(&self, what: &'static str) -> impl FnOnce(io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.check(offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(self.io_error("read"))
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.check(offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(self.io_error("write"))
    }

    /// Makes every completed write durable (`fdatasync`).
    pub fn flush(&self) -> Result<(), ImageError> {
        self.file.sync_data().map_err(self.io_error("fdatasync"))
    }

    /// Drops every byte: the file becomes one hole of `size` bytes.
    fn punch_all(&self) -> Result<(), ImageError> {
        self.file.set_len(0).map_err(self.io_error("truncate"))?;
        self.file
            .set_len(self.size)
            .map_err(self.io_error("extend"))
    }

    /// crc32c of the whole image (to compare disks across hosts and processes).
    pub fn digest(&self) -> Result<u32, ImageError> {
        digest_of(self.size, |at, buf| self.read_at(at, buf))
    }
}

/// crc32c of `size` bytes read by `read(offset, buf)` in 1 MiB pieces (images, volumes and
/// the secondary's overlay view are all digested this way).
pub(crate) fn digest_of(
    size: u64,
    read: impl Fn(u64, &mut [u8]) -> Result<(), ImageError>,
) -> Result<u32, ImageError> {
    let mut crc = 0u32;
    let mut buf = vec![0u8; (1usize << 20).min(size as usize)];
    let mut at = 0;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        read(at, &mut buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    Ok(crc)
}

/// A sparse overlay: a file the size of the disk and the set of blocks written into it.
#[derive(Debug)]
pub struct OverlayImage {
    image: RawImage,
    block_size: u64,
    present: BTreeSet<u64>,
}

impl OverlayImage {
    /// Creates (or empties) the overlay at `path` for a disk of `size` bytes in blocks of
    /// `block_size` (a power of two, the core's `DiskConfig::block_size`). An overlay never
    /// outlives its process: whatever the file held is dropped.
    pub fn create(path: &Path, size: u64, block_size: u64) -> Result<OverlayImage, ImageError> {
        assert!(
            block_size.is_power_of_two(),
            "overlay block size must be a power of two (the caller validated DiskConfig)"
        );
        let image = RawImage::open(path, size).or_else(|e| match e {
            // A stale overlay of another size: start from an empty file.
            ImageError::TooLarge { .. } => {
                std::fs::remove_file(path).map_err(|source| ImageError::Io {
                    path: path.to_path_buf(),
                    what: "remove",
                    source,
                })?;
                RawImage::open(path, size)
            }
            e => Err(e),
        })?;
        image.punch_all()?;
        Ok(OverlayImage {
            image,
            block_size,
            present: BTreeSet::new(),
        })
    }

    /// The overlay's granularity.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Whether block `b` holds data.
    pub fn holds(&self, b: u64) -> bool {
        self.present.contains(&b)
    }

    /// The blocks that hold data, ascending.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.present.iter().copied()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.image.path()
    }

    /// Reads `buf.len()` bytes at `offset`; blocks never written read as zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.image.check(offset, buf.len() as u64)?;
        let mut at = 0usize;
        while at < buf.len() {
            let pos = offset + at as u64;
            let block = pos / self.block_size;
            let in_block = ((block + 1) * self.block_size - pos) as usize;
            let n = in_block.min(buf.len() - at);
            if self.holds(block) {
                self.image.read_at(pos, &mut buf[at..at + n])?;
            } else {
                buf[at..at + n].fill(0);
            }
            at += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` and marks the blocks it touches as held.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.image.write_at(offset, data)?;
        if !data.is_empty() {
            let first = offset / self.block_size;
            let last = (offset + data.len() as u64 - 1) / self.block_size;
            self.present.extend(first..=last);
        }
        Ok(())
    }

    /// Empties the overlay (a checkpoint, or after a merge).
    pub fn reset(&mut self) -> Result<(), ImageError> {
        // Index first: if the truncation fails, reads still see zeros for every block, which
        // is what an empty overlay holds.
        self.present.clear();
        self.image.punch_all()
    }

    /// Bytes the file occupies on disk (`st_blocks`), for tests and the demo summary.
    pub fn allocated(&self) -> Result<u64, ImageError> {
        use std::os::unix::fs::MetadataExt;
        let meta = self
            .image
            .file
            .metadata()
            .map_err(self.image.io_error("stat"))?;
        Ok(meta.blocks() * 512)
    }
}
