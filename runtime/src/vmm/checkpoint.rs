//! The VMM's half of a checkpoint on the secondary: the RAM cache that received pages land in
//! (QEMU's `colo_cache`) and the apply that turns a paused SVM into the PVM's checkpoint.
//!
//! Pages streamed by the primary never touch SVM memory on arrival: they land in the
//! [`RamCache`] and are marked received (a page the frame's zero map marks is stored as zeros:
//! the primary sends no bytes for it). [`apply_checkpoint`] then copies, while the SVM is
//! paused, every page dirtied by either side since the last apply (received into the cache, or
//! written by the SVM itself) from the cache into SVM memory, and loads the device state.
//!
//! Invariant kept: after a successful apply, SVM memory equals the cache equals the PVM's
//! memory at the checkpoint's pause (the atomic-checkpoint invariant, architecture.md
//! "Checkpoint in the real runtime"). A failed apply leaves the SVM a copy of no checkpoint
//! (the SVM's own dirty log was already read): the node must never run it as one, which the
//! core ensures (a secondary whose apply failed gives up its state and stops). A refused
//! store (ranges outside memory, a zero map that does not fit, wrong length) stores nothing.

use crate::vmm::layout::PAGE_SIZE;
use crate::vmm::machine::{Machine, MachineError};
use crate::vmm::memory::DirtyPages;
use crate::vmm::persist::DeviceState;
use colo_core::ids::PageRange;
use colo_core::wire::{ZeroMapFault, ZeroPages, is_zero_page};
use vm_memory::{Bytes, GuestAddress};

/// Pages the peer sent that the cache refuses (the peer's fault: nothing is stored).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// A range reaches beyond guest memory (or overflows).
    #[error("page range {first}+{count} outside the {pages}-page guest memory")]
    OutsideMemory {
        /// First page of the range.
        first: u64,
        /// Pages in the range.
        count: u64,
        /// Pages of guest memory.
        pages: u64,
    },
    /// The zero-page map does not fit the ranges' page count.
    #[error("zero-page map for {pages} pages: {fault}")]
    ZeroMap {
        /// Pages the ranges cover.
        pages: u64,
        /// What is wrong with the map.
        fault: ZeroMapFault,
    },
    /// The bulk's length does not match the ranges' pages that are not zero pages.
    #[error("{got} bulk bytes for ranges carrying {expected}")]
    WrongLength {
        /// Bytes the ranges cover.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
}

/// Why an apply failed (the SVM is then not a copy of any checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Reading or clearing the SVM's dirty log, or restoring its devices.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// Copying a range from the cache into SVM memory.
    #[error("writing page range {range:?} into SVM memory: {why}")]
    Copy {
        /// The range being copied.
        range: PageRange,
        /// The memory error.
        why: String,
    },
}

/// The secondary's copy of guest memory as of the newest pages received, plus which pages
/// changed since the last apply.
#[derive(Debug)]
pub struct RamCache {
    bytes: Vec<u8>,
    /// One bit per page received since the last apply (KVM dirty-log bitmap layout).
    received: Vec<u64>,
    pages: u64,
}

impl RamCache {
    /// A zeroed cache of `mem_bytes` (a zeroed allocation is mapped lazily by the OS: pages
    /// cost nothing until written, so a primary's unused cache is free).
    pub fn new(mem_bytes: u64) -> RamCache {
        let pages = mem_bytes / PAGE_SIZE;
        RamCache {
            bytes: vec![0u8; mem_bytes as usize],
            received: vec![0u64; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// Stores the pages of `ranges` and marks them: those `zero` marks as zeros, the others
    /// from `data` (their bytes, concatenated in order). Ranges outside guest memory, a map
    /// that does not fit the ranges or a length mismatch are the peer's fault: an error,
    /// nothing stored.
    pub fn store(
        &mut self,
        ranges: &[PageRange],
        zero: &ZeroPages,
        data: &[u8],
    ) -> Result<(), CacheError> {
        let mut pages = 0u64;
        for r in ranges {
            if r.first
                .checked_add(r.count)
                .is_none_or(|end| end > self.pages)
            {
                return Err(CacheError::OutsideMemory {
                    first: r.first,
                    count: r.count,
                    pages: self.pages,
                });
            }
            // No overflow: every range lies inside memory, so their sum fits a u64 for any
            // realistic count of ranges (and saturates otherwise, failing the map check).
            pages = pages.saturating_add(r.count);
        }
        let zero_pages = zero
            .check(pages)
            .map_err(|fault| CacheError::ZeroMap { pages, fault })?;
        let expected = (pages - zero_pages) * PAGE_SIZE;
        if expected != data.len() as u64 {
            return Err(CacheError::WrongLength {
                expected,
                got: data.len() as u64,
            });
        }
        let page_len = PAGE_SIZE as usize;
        let (mut index, mut at) = (0u64, 0usize);
        for r in ranges {
            for page in r.first..r.end() {
                let start = (page * PAGE_SIZE) as usize;
                let into = &mut self.bytes[start..start + page_len];
                if zero.is_zero(index) {
                    // Reading an untouched page of the lazily mapped cache costs no memory;
                    // writing it would allocate one for nothing.
                    if !is_zero_page(into) {
                        into.fill(0);
                    }
                } else {
                    into.copy_from_slice(&data[at..at + page_len]);
                    at += page_len;
                }
                self.received[(page / 64) as usize] |= 1 << (page % 64);
                index += 1;
            }
        }
        Ok(())
    }

    /// Pages received since the last apply.
    pub fn received(&self) -> DirtyPages {
        DirtyPages::from_bitmap(&self.received, 0, self.pages)
    }

    /// Copies `ranges` from the cache into `machine`'s memory.
    fn copy_into(&self, machine: &Machine, ranges: &[PageRange]) -> Result<(), ApplyError> {
        for &range in ranges {
            let start = range.first * PAGE_SIZE;
            let len = (range.count * PAGE_SIZE) as usize;
            let copy_error = |why: String| ApplyError::Copy { range, why };
            let from = self
                .bytes
                .get(start as usize..start as usize + len)
                .ok_or_else(|| copy_error("outside the RAM cache".to_string()))?;
            machine
                .memory()
                .write_slice(from, GuestAddress(start))
                .map_err(|e| copy_error(e.to_string()))?;
        }
        Ok(())
    }

    fn clear_received(&mut self) {
        self.received.iter_mut().for_each(|w| *w = 0);
    }
}

/// What one apply cost, for the logs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyStats {
    /// Pages copied cache -> SVM (received or SVM-dirtied).
    pub pages_copied: u64,
}

/// Makes the paused `machine` the checkpoint held by `cache` and `state`: cache -> SVM for
/// every page dirtied by either side since the last apply, then the device state. The
/// received marks are cleared only once everything succeeded.
pub fn apply_checkpoint(
    machine: &mut Machine,
    cache: &mut RamCache,
    state: &DeviceState,
) -> Result<ApplyStats, ApplyError> {
    // Pages the SVM wrote since the last apply: they must be reverted to the PVM's copy.
    let mut pages = machine.take_dirty()?;
    pages.union(cache.received().ranges());
    cache.copy_into(machine, pages.ranges())?;
    machine.restore_devices(state)?;
    // The copy above marked the VMM bitmap: this VM now is the checkpoint, so forget it.
    machine.take_dirty()?;
    cache.clear_received();
    Ok(ApplyStats {
        pages_copied: pages.pages(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, count: u64) -> PageRange {
        PageRange { first, count }
    }

    #[test]
    fn cache_stores_pages_and_marks_them_received() {
        let mut cache = RamCache::new(64 * PAGE_SIZE);
        let data: Vec<u8> = (0..3 * PAGE_SIZE)
            .map(|i| (i / PAGE_SIZE) as u8 + 1)
            .collect();
        cache
            .store(&[range(2, 1), range(60, 2)], &ZeroPages::none(3), &data)
            .expect("in range");
        assert_eq!(cache.received().ranges(), &[range(2, 1), range(60, 2)]);
        let at = |page: u64| cache.bytes[(page * PAGE_SIZE) as usize];
        assert_eq!((at(2), at(60), at(61), at(3)), (1, 2, 3, 0));
        cache.clear_received();
        assert!(cache.received().ranges().is_empty());
        assert_eq!(
            cache.bytes[(61 * PAGE_SIZE) as usize],
            3,
            "clearing the marks keeps the pages"
        );
    }

    #[test]
    fn cache_refuses_pages_outside_memory_or_of_the_wrong_length() {
        let mut cache = RamCache::new(64 * PAGE_SIZE);
        let page = vec![9u8; PAGE_SIZE as usize];
        assert_eq!(
            cache.store(&[range(64, 1)], &ZeroPages::none(1), &page),
            Err(CacheError::OutsideMemory {
                first: 64,
                count: 1,
                pages: 64
            })
        );
        assert!(matches!(
            cache.store(&[range(u64::MAX, 2)], &ZeroPages::none(2), &page),
            Err(CacheError::OutsideMemory { .. })
        ));
        assert_eq!(
            cache.store(&[range(0, 2)], &ZeroPages::none(2), &page),
            Err(CacheError::WrongLength {
                expected: 2 * PAGE_SIZE,
                got: PAGE_SIZE
            })
        );
        assert_eq!(
            cache.store(&[range(0, 2)], &ZeroPages::none(9), &page),
            Err(CacheError::ZeroMap {
                pages: 2,
                fault: ZeroMapFault::Length {
                    map_bytes: 2,
                    expected_bytes: 1
                }
            })
        );
        // The map marks page 1 zero: the bulk must carry page 0 only.
        let one_zero = ZeroPages::from_flags([false, true]);
        assert_eq!(
            cache.store(
                &[range(0, 2)],
                &one_zero,
                &[page.clone(), page.clone()].concat()
            ),
            Err(CacheError::WrongLength {
                expected: PAGE_SIZE,
                got: 2 * PAGE_SIZE
            })
        );
        assert!(
            cache.received().ranges().is_empty(),
            "a refused batch stores nothing"
        );
        assert!(cache.bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn zero_pages_are_stored_as_zeros_and_marked_without_bulk() {
        let mut cache = RamCache::new(16 * PAGE_SIZE);
        let old = vec![0xeeu8; (4 * PAGE_SIZE) as usize];
        cache
            .store(&[range(4, 4)], &ZeroPages::none(4), &old)
            .expect("in range");
        cache.clear_received();
        // Pages 4..8 held data; now 5 and 6 become zero, 4 and 7 get new data, and page 12
        // (never written) is sent as a zero page too.
        let data: Vec<u8> = [vec![1u8; PAGE_SIZE as usize], vec![2u8; PAGE_SIZE as usize]].concat();
        let zero = ZeroPages::from_flags([false, true, true, false, true]);
        cache
            .store(&[range(4, 4), range(12, 1)], &zero, &data)
            .expect("in range");
        let page = |p: u64| &cache.bytes[(p * PAGE_SIZE) as usize..((p + 1) * PAGE_SIZE) as usize];
        assert!(page(4).iter().all(|&b| b == 1));
        assert!(page(5).iter().all(|&b| b == 0) && page(6).iter().all(|&b| b == 0));
        assert!(page(7).iter().all(|&b| b == 2));
        assert!(page(12).iter().all(|&b| b == 0));
        assert_eq!(
            cache.received().ranges(),
            &[range(4, 4), range(12, 1)],
            "zero pages are received pages: the apply copies them into the SVM"
        );
    }
}
