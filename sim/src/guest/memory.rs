//! Dirty-page bookkeeping of a simulated guest: which guest pages changed since the host last
//! harvested them.
//!
//! It owns the dirty set and the page layout the guest's activities map to, and keeps one
//! invariant: a page reported dirty stays reported until harvested, and a harvest returns
//! sorted, non-overlapping, coalesced [`PageRange`]s and clears the set (the contract of KVM's
//! `KVM_GET_DIRTY_LOG`, which clears and re-protects: deps-spike.md section 4). Frames a device
//! writes into guest memory count too (the VMM-side bitmap of architecture.md), which is why
//! received frames dirty RX-ring pages.
//!
//! The dirty set is host bookkeeping, not guest state: it is not part of a checkpoint and a
//! restored guest starts with an empty set (QEMU COLO clears both sides' logs at a checkpoint).

use std::collections::BTreeSet;

use colo_core::ids::PageRange;

/// Bytes in one guest page (the wire's page size: one definition for core, runtime and sim).
pub use colo_core::wire::PAGE_SIZE;

/// Pages of the simulated RX descriptor ring and buffers (one page per received frame, cycling).
pub const RX_RING_PAGES: u64 = 16;
/// Pages of the TX ring (one per transmitted frame, cycling), right after the RX ring.
pub const TX_RING_PAGES: u64 = 16;
/// First page of the application's heap (the key-value store), after both rings.
pub const HEAP_FIRST_PAGE: u64 = RX_RING_PAGES + TX_RING_PAGES;
/// Pages of the application's heap; a key lives on page `hash(key) % HEAP_PAGES`.
pub const HEAP_PAGES: u64 = 256;

// The regions must not overlap: a page's owner is what makes dirty counts meaningful.
const _: () = assert!(HEAP_FIRST_PAGE >= RX_RING_PAGES + TX_RING_PAGES);

/// The guest's dirty-page set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyLog {
    memory_pages: u64,
    dirty: BTreeSet<u64>,
    marked: u64,
}

impl DirtyLog {
    /// A clean log for a guest with `memory_pages` pages (at least the fixed layout above).
    pub fn new(memory_pages: u64) -> DirtyLog {
        DirtyLog {
            memory_pages: memory_pages.max(HEAP_FIRST_PAGE + HEAP_PAGES),
            dirty: BTreeSet::new(),
            marked: 0,
        }
    }

    /// Guest memory size in pages.
    pub fn memory_pages(&self) -> u64 {
        self.memory_pages
    }

    /// Marks a page dirty (page numbers wrap at the memory size).
    pub fn mark(&mut self, page: u64) {
        self.marked += 1;
        self.dirty.insert(page % self.memory_pages);
    }

    /// Pages dirty now.
    pub fn dirty_pages(&self) -> u64 {
        self.dirty.len() as u64
    }

    /// Page writes observed since boot (a page written twice counts twice).
    pub fn marks(&self) -> u64 {
        self.marked
    }

    /// Returns the dirty pages as coalesced ranges and clears the set.
    pub fn harvest(&mut self) -> Vec<PageRange> {
        let mut ranges: Vec<PageRange> = Vec::new();
        for page in std::mem::take(&mut self.dirty) {
            match ranges.last_mut() {
                Some(r) if r.first + r.count == page => r.count += 1,
                _ => ranges.push(PageRange {
                    first: page,
                    count: 1,
                }),
            }
        }
        ranges
    }

    /// Forgets every dirty page (after a restore).
    pub fn clear(&mut self) {
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harvest_coalesces_and_clears() {
        let mut log = DirtyLog::new(1024);
        for p in [5, 3, 4, 10, 11, 300, 4] {
            log.mark(p);
        }
        assert_eq!(log.dirty_pages(), 6);
        let ranges = log.harvest();
        let pairs: Vec<(u64, u64)> = ranges.iter().map(|r| (r.first, r.count)).collect();
        assert_eq!(pairs, vec![(3, 3), (10, 2), (300, 1)]);
        assert_eq!(log.dirty_pages(), 0);
        assert!(log.harvest().is_empty());
        assert_eq!(log.marks(), 7);
    }

    #[test]
    fn pages_wrap_at_memory_size() {
        let mut log = DirtyLog::new(1024);
        log.mark(1024 + 2);
        assert_eq!(log.harvest()[0].first, 2);
    }
}
