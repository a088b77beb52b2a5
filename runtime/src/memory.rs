//! Guest memory: creation, dirty-page tables and page-range copies.
//!
//! Memory is a `GuestMemoryMmap` whose bitmap (`AtomicBitmap`) records every write the VMM
//! itself makes through vm-memory (loaders, virtio-net DMA); KVM's dirty log
//! records the vCPUs' writes. A page is dirty for a checkpoint if either says so
//! (architecture.md, "Checkpoint in the real runtime"). Invariant: a [`DirtyPages`] table is
//! sorted, its ranges never overlap or touch (adjacent runs are merged), and every range lies
//! inside guest RAM.

use crate::layout::PAGE_SIZE;
use colo_core::ids::PageRange;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory with a bitmap of VMM-side writes.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Memory errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping the guest RAM failed.
    #[error("cannot map {bytes} bytes of guest RAM: {source}")]
    Map {
        /// Requested size.
        bytes: u64,
        /// vm-memory's reason.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// A page range lies outside guest RAM.
    #[error("page range {first:#x}+{count} lies outside guest RAM")]
    OutOfRange {
        /// First page frame number.
        first: u64,
        /// Number of pages.
        count: u64,
    },
    /// The data does not match the ranges' size.
    #[error("page data holds {got} bytes, the ranges need {expected}")]
    SizeMismatch {
        /// Bytes the ranges cover.
        expected: u64,
        /// Bytes provided.
        got: u64,
    },
}

/// Maps `bytes` of guest RAM at guest-physical address 0.
pub fn create(bytes: u64) -> Result<GuestMemory, MemoryError> {
    GuestMemory::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(|source| MemoryError::Map { bytes, source })
}

/// Total guest RAM in bytes.
pub fn size(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// A sorted table of dirty page runs (see the module invariant).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyPages {
    ranges: Vec<PageRange>,
}

impl DirtyPages {
    /// Every page of `mem` (for a full checkpoint).
    pub fn all(mem: &GuestMemory) -> DirtyPages {
        let mut table = DirtyPages::default();
        for region in mem.iter() {
            let first = region.start_addr().0 / PAGE_SIZE;
            table.push_run(first, region.len() / PAGE_SIZE);
        }
        table
    }

    /// Builds the table from a bitmap with one bit per page (bit i of word w = page
    /// `first_page + 64 w + i`), the format of both KVM_GET_DIRTY_LOG and vm-memory's
    /// `AtomicBitmap`. Bits past `pages` are ignored.
    pub fn from_bitmap(bitmap: &[u64], first_page: u64, pages: u64) -> DirtyPages {
        let mut table = DirtyPages::default();
        table.add_bitmap(bitmap, first_page, pages);
        table
    }

    /// Adds the pages set in `bitmap` (same format as [`DirtyPages::from_bitmap`]).
    pub fn add_bitmap(&mut self, bitmap: &[u64], first_page: u64, pages: u64) {
        let mut merged: Vec<PageRange> = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        for (w, &word) in bitmap.iter().enumerate() {
            if word == 0 {
                if let Some((start, count)) = run.take() {
                    merged.push(PageRange {
                        first: start,
                        count,
                    });
                }
                continue;
            }
            for bit in 0..64u64 {
                let index = w as u64 * 64 + bit;
                if index >= pages {
                    break;
                }
                let page = first_page + index;
                if word & (1 << bit) != 0 {
                    run = match run {
                        Some((start, count)) => Some((start, count + 1)),
                        None => Some((page, 1)),
                    };
                } else if let Some((start, count)) = run.take() {
                    merged.push(PageRange {
                        first: start,
                        count,
                    });
                }
            }
        }
        if let Some((start, count)) = run {
            merged.push(PageRange {
                first: start,
                count,
            });
        }
        for r in merged {
            self.push_run(r.first, r.count);
        }
    }

    /// Inserts a run, keeping the table sorted and coalesced.
    pub fn push_run(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.ranges.push(PageRange { first, count });
        self.ranges.sort_unstable();
        let mut out: Vec<PageRange> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match out.last_mut() {
                Some(last) if r.first <= last.end() => {
                    let end = last.end().max(r.end());
                    last.count = end - last.first;
                }
                _ => out.push(r),
            }
        }
        self.ranges = out;
    }

    /// The runs, sorted.
    pub fn ranges(&self) -> &[PageRange] {
        &self.ranges
    }

    /// Number of dirty pages.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.count).sum()
    }

    /// Bytes the dirty pages hold.
    pub fn bytes(&self) -> u64 {
        self.pages() * PAGE_SIZE
    }
}

/// Copies the pages of `table` out of `mem`, concatenated in table order.
pub fn read_pages(mem: &GuestMemory, table: &[PageRange]) -> Result<Vec<u8>, MemoryError> {
    let mut out = Vec::new();
    read_pages_into(mem, table, &mut out)?;
    Ok(out)
}

/// Like [`read_pages`], into `out` (resized to fit). Reusing one buffer across checkpoints
/// avoids a first-touch page fault per destination page, which measured as the largest part
/// of a capture's copy on this machine (docs/benchmarks.md).
pub fn read_pages_into(
    mem: &GuestMemory,
    table: &[PageRange],
    out: &mut Vec<u8>,
) -> Result<(), MemoryError> {
    let total: u64 = table.iter().map(|r| r.count * PAGE_SIZE).sum();
    out.resize(total as usize, 0);
    let mut at = 0usize;
    for r in table {
        let len = (r.count * PAGE_SIZE) as usize;
        mem.read_slice(&mut out[at..at + len], GuestAddress(r.first * PAGE_SIZE))
            .map_err(|_| MemoryError::OutOfRange {
                first: r.first,
                count: r.count,
            })?;
        at += len;
    }
    Ok(())
}

/// Writes `data` (pages concatenated in table order) into `mem`.
pub fn write_pages(mem: &GuestMemory, table: &[PageRange], data: &[u8]) -> Result<(), MemoryError> {
    let expected: u64 = table.iter().map(|r| r.count * PAGE_SIZE).sum();
    if expected != data.len() as u64 {
        return Err(MemoryError::SizeMismatch {
            expected,
            got: data.len() as u64,
        });
    }
    let mut at = 0usize;
    for r in table {
        let len = (r.count * PAGE_SIZE) as usize;
        mem.write_slice(&data[at..at + len], GuestAddress(r.first * PAGE_SIZE))
            .map_err(|_| MemoryError::OutOfRange {
                first: r.first,
                count: r.count,
            })?;
        at += len;
    }
    Ok(())
}

/// Digest of all guest RAM (crc32c, hardware accelerated): equal memories give equal
/// digests; used to compare VMs across processes.
pub fn digest(mem: &GuestMemory) -> u32 {
    let mut crc = 0u32;
    let mut buf = vec![0u8; 1 << 20];
    for region in mem.iter() {
        let mut addr = region.start_addr().0;
        let end = addr + region.len();
        while addr < end {
            let len = ((end - addr) as usize).min(buf.len());
            mem.read_slice(&mut buf[..len], GuestAddress(addr))
                .expect("reading inside a region of guest RAM");
            crc = crc32c::crc32c_append(crc, &buf[..len]);
            addr += len as u64;
        }
    }
    crc
}

/// The VMM-side dirty bitmap of every region, cleared as it is read.
pub fn take_vmm_dirty(mem: &GuestMemory) -> DirtyPages {
    let mut table = DirtyPages::default();
    for region in mem.iter() {
        let bitmap = region.get_mmap().bitmap().get_and_reset();
        table.add_bitmap(
            &bitmap,
            region.start_addr().0 / PAGE_SIZE,
            region.len() / PAGE_SIZE,
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_runs_become_coalesced_ranges() {
        // pages 0,1,2 ; 5 ; 63,64,65 (crossing a word boundary)
        let bitmap = [0b100111u64 | (1 << 63), 0b11];
        let table = DirtyPages::from_bitmap(&bitmap, 0, 128);
        assert_eq!(
            table.ranges(),
            &[
                PageRange { first: 0, count: 3 },
                PageRange { first: 5, count: 1 },
                PageRange {
                    first: 63,
                    count: 3
                }
            ]
        );
        assert_eq!(table.pages(), 7);
    }

    #[test]
    fn bits_past_the_region_are_ignored() {
        let table = DirtyPages::from_bitmap(&[u64::MAX], 10, 4);
        assert_eq!(
            table.ranges(),
            &[PageRange {
                first: 10,
                count: 4
            }]
        );
    }

    #[test]
    fn merging_two_sources_keeps_table_sorted_and_disjoint() {
        let mut table = DirtyPages::from_bitmap(&[0b1010], 0, 64);
        table.add_bitmap(&[0b0101], 0, 64);
        table.push_run(100, 2);
        table.push_run(101, 5);
        assert_eq!(
            table.ranges(),
            &[
                PageRange { first: 0, count: 4 },
                PageRange {
                    first: 100,
                    count: 6
                }
            ]
        );
    }

    #[test]
    fn pages_round_trip_between_memories() {
        let a = create(1 << 20).unwrap();
        let b = create(1 << 20).unwrap();
        a.write_slice(&[7u8; 4096], GuestAddress(3 * PAGE_SIZE))
            .unwrap();
        a.write_slice(&[9u8; 10], GuestAddress(10 * PAGE_SIZE + 5))
            .unwrap();
        let dirty = take_vmm_dirty(&a);
        assert_eq!(
            dirty.ranges(),
            &[
                PageRange { first: 3, count: 1 },
                PageRange {
                    first: 10,
                    count: 1
                }
            ]
        );
        assert!(
            take_vmm_dirty(&a).ranges().is_empty(),
            "reading the bitmap clears it"
        );
        let data = read_pages(&a, dirty.ranges()).unwrap();
        write_pages(&b, dirty.ranges(), &data).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert!(matches!(
            write_pages(&b, dirty.ranges(), &data[..100]),
            Err(MemoryError::SizeMismatch { .. })
        ));
        assert!(matches!(
            read_pages(
                &a,
                &[PageRange {
                    first: 1000,
                    count: 1
                }]
            ),
            Err(MemoryError::OutOfRange { .. })
        ));
    }
}
