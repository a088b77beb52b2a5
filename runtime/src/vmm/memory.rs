//! Guest memory: creation, dirty-page tables and page-range copies.
//!
//! Memory is a `GuestMemoryMmap` whose bitmap (`AtomicBitmap`) records every write the VMM
//! itself makes through vm-memory (loaders, virtio-net DMA); KVM's dirty log
//! records the vCPUs' writes. A page is dirty for a checkpoint if either says so
//! (architecture.md, "Checkpoint in the real runtime"). Invariant: a [`DirtyPages`] table is
//! sorted, its ranges never overlap or touch (adjacent runs are merged), and every range lies
//! inside guest RAM.

use crate::vmm::layout::PAGE_SIZE;
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
        append_bitmap_runs(&mut table.ranges, bitmap, first_page, pages);
        table
    }

    /// Adds the pages set in `bitmap` (same format as [`DirtyPages::from_bitmap`]).
    pub fn add_bitmap(&mut self, bitmap: &[u64], first_page: u64, pages: u64) {
        if self
            .ranges
            .last()
            .is_none_or(|last| last.end() <= first_page)
        {
            // The bitmap's pages all lie at or after the table's end (one memory region after
            // another): its runs append in order, no merge needed.
            append_bitmap_runs(&mut self.ranges, bitmap, first_page, pages);
        } else {
            let mut runs = Vec::new();
            append_bitmap_runs(&mut runs, bitmap, first_page, pages);
            self.union(&runs);
        }
    }

    /// Inserts a run, keeping the table sorted and coalesced: O(1) at the table's end (the
    /// usual case: harvests produce runs in order), a binary search and one splice elsewhere.
    pub fn push_run(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        let run = PageRange { first, count };
        let end = run.end();
        match self.ranges.last_mut() {
            None => return self.ranges.push(run),
            Some(last) if first > last.end() => return self.ranges.push(run),
            Some(last) if first >= last.first => {
                last.count = last.end().max(end) - last.first;
                return;
            }
            Some(_) => {}
        }
        // Runs [lo, hi) overlap or touch the new one; they and it become one run.
        let lo = self.ranges.partition_point(|r| r.end() < first);
        let hi = self.ranges.partition_point(|r| r.first <= end);
        if lo == hi {
            self.ranges.insert(lo, run);
            return;
        }
        let merged_first = first.min(self.ranges[lo].first);
        let merged_end = end.max(self.ranges[hi - 1].end());
        self.ranges[lo] = PageRange {
            first: merged_first,
            count: merged_end - merged_first,
        };
        self.ranges.drain(lo + 1..hi);
    }

    /// Adds every run of `other` (in any order; overlaps allowed) in one linear merge when
    /// `other` is sorted by first page, which every table and harvest is (the core's
    /// [`PageRange::union`], the same arithmetic the primary checkpointer carries pages with).
    pub fn union(&mut self, other: &[PageRange]) {
        PageRange::union(&mut self.ranges, other);
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

/// Appends `run` to `out`, whose runs are sorted and coalesced and start at or before `run`.
fn push_sorted(out: &mut Vec<PageRange>, run: PageRange) {
    if run.count == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if run.first <= last.end() => {
            last.count = last.end().max(run.end()) - last.first;
        }
        _ => out.push(run),
    }
}

/// Appends the runs of set bits of `bitmap` (see [`DirtyPages::from_bitmap`]) to `out`, a word
/// at a time: a clean word costs one comparison, a run of dirty pages one `trailing_zeros` and
/// one `trailing_ones` per word it spans (not one test per page).
fn append_bitmap_runs(out: &mut Vec<PageRange>, bitmap: &[u64], first_page: u64, pages: u64) {
    for (w, &word) in bitmap.iter().enumerate() {
        let base = w as u64 * 64;
        if base >= pages {
            break;
        }
        let mut word = if pages - base < 64 {
            word & ((1u64 << (pages - base)) - 1)
        } else {
            word
        };
        while word != 0 {
            let start = u64::from(word.trailing_zeros());
            let ones = u64::from((word >> start).trailing_ones());
            push_sorted(
                out,
                PageRange {
                    first: first_page + base + start,
                    count: ones,
                },
            );
            if start + ones >= 64 {
                break;
            }
            word &= !(((1u64 << ones) - 1) << start);
        }
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

/// Both dirty sources of every region, cleared as they are read: `kvm_log(slot, bytes)` reads
/// (and clears) KVM's dirty log of memory slot `slot` (one slot per region, in region order,
/// as `KvmVm::register_memory` registers them); the VMM's bitmap of the same region is ORed
/// into it word by word (same layout: one bit per page from the region's start), and the
/// union is turned into runs once. One log read per slot, one pass over each bitmap.
pub fn take_dirty<E>(
    mem: &GuestMemory,
    mut kvm_log: impl FnMut(u32, u64) -> Result<Vec<u64>, E>,
) -> Result<DirtyPages, E> {
    let mut table = DirtyPages::default();
    for (slot, region) in mem.iter().enumerate() {
        let mut bitmap = kvm_log(slot as u32, region.len())?;
        let vmm = region.get_mmap().bitmap().get_and_reset();
        if vmm.len() > bitmap.len() {
            bitmap.resize(vmm.len(), 0);
        }
        for (word, v) in bitmap.iter_mut().zip(&vmm) {
            *word |= v;
        }
        table.add_bitmap(
            &bitmap,
            region.start_addr().0 / PAGE_SIZE,
            region.len() / PAGE_SIZE,
        );
    }
    Ok(table)
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

    /// The table as the set of its pages, and a check of the module invariant.
    fn page_set(table: &DirtyPages) -> std::collections::BTreeSet<u64> {
        for pair in table.ranges().windows(2) {
            assert!(
                pair[0].end() < pair[1].first,
                "runs sorted, disjoint and not touching: {pair:?}"
            );
        }
        assert!(table.ranges().iter().all(|r| r.count > 0));
        table
            .ranges()
            .iter()
            .flat_map(|r| r.first..r.end())
            .collect()
    }

    #[test]
    fn out_of_order_runs_merge_with_every_run_they_touch() {
        let mut table = DirtyPages::default();
        table.push_run(10, 2);
        table.push_run(20, 2);
        table.push_run(30, 2);
        table.push_run(0, 1);
        table.push_run(12, 18); // touches 10..12 and 30..32, swallows 20..22
        assert_eq!(
            table.ranges(),
            &[
                PageRange { first: 0, count: 1 },
                PageRange {
                    first: 10,
                    count: 22
                }
            ]
        );
        table.push_run(5, 1); // between runs, touching none
        table.push_run(1, 4); // touches 0..1 and 5..6
        assert_eq!(
            table.ranges(),
            &[
                PageRange { first: 0, count: 6 },
                PageRange {
                    first: 10,
                    count: 22
                }
            ]
        );
    }

    #[test]
    fn bitmap_union_and_push_agree_with_a_page_set() {
        // Deterministic pseudo-random bitmaps and runs (an LCG), checked against the set of
        // pages they name: the word-at-a-time bitmap scan, the linear union and push_run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 11
        };
        for round in 0..200 {
            let pages = 1 + next() % 700;
            let words = pages.div_ceil(64) as usize;
            // Dense, sparse and all-ones words, so runs cross word boundaries.
            let bitmap: Vec<u64> = (0..words)
                .map(|_| match next() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    2 => next() & next(),
                    _ => next() | (next() << 53),
                })
                .collect();
            let mut expected: std::collections::BTreeSet<u64> = (0..pages)
                .filter(|&p| bitmap[(p / 64) as usize] & (1 << (p % 64)) != 0)
                .map(|p| p + 1000)
                .collect();
            let mut table = DirtyPages::from_bitmap(&bitmap, 1000, pages);
            assert_eq!(page_set(&table), expected, "round {round}: from_bitmap");
            let mut other = Vec::new();
            for _ in 0..next() % 20 {
                let (first, count) = (900 + next() % 900, next() % 40);
                other.push(PageRange { first, count });
                expected.extend(first..first + count);
            }
            if round % 2 == 0 {
                table.union(&other);
            } else {
                for r in &other {
                    table.push_run(r.first, r.count);
                }
            }
            assert_eq!(
                page_set(&table),
                expected,
                "round {round}: union / push_run"
            );
            let second: Vec<u64> = (0..words).map(|_| next() & next() & next()).collect();
            table.add_bitmap(&second, 950, pages);
            expected.extend(
                (0..pages)
                    .filter(|&p| second[(p / 64) as usize] & (1 << (p % 64)) != 0)
                    .map(|p| p + 950),
            );
            assert_eq!(page_set(&table), expected, "round {round}: add_bitmap");
        }
    }

    #[test]
    fn harvest_unites_the_kvm_log_with_the_vmm_bitmap_and_clears_it() {
        let mem = create(1 << 20).unwrap();
        mem.write_slice(&[1u8; 8], GuestAddress(3 * PAGE_SIZE))
            .unwrap();
        mem.write_slice(&[1u8; 8], GuestAddress(70 * PAGE_SIZE))
            .unwrap();
        let mut slots = Vec::new();
        let dirty = take_dirty(&mem, |slot, bytes| -> Result<Vec<u64>, ()> {
            slots.push((slot, bytes));
            // KVM saw pages 4 (next to the VMM's 3) and 64..66.
            let mut log = vec![0u64; (bytes / PAGE_SIZE).div_ceil(64) as usize];
            log[0] |= 1 << 4;
            log[1] |= 0b11;
            Ok(log)
        })
        .unwrap();
        assert_eq!(slots, [(0, 1 << 20)], "one log read per memory slot");
        assert_eq!(
            dirty.ranges(),
            &[
                PageRange { first: 3, count: 2 },
                PageRange {
                    first: 64,
                    count: 2
                },
                PageRange {
                    first: 70,
                    count: 1
                }
            ]
        );
        assert!(
            take_vmm_dirty(&mem).ranges().is_empty(),
            "the harvest cleared the VMM bitmap"
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
