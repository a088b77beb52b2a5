//! Identifiers and units shared by every machine and by the wire protocol.
//!
//! They are newtypes so an epoch can never be passed where a term is expected. The invariant
//! kept here: epochs and terms only ever grow (`next()` saturates rather than wrapping, so a
//! counter can never appear to go backwards).

use core::fmt;
use serde::{Deserialize, Serialize};

/// One of the VM's network interfaces, in device order (0: the first). Client frames carry the
/// NIC they came in on, so the secondary's guest receives each on the same NIC as the primary's.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct NicId(pub u8);

/// A checkpoint epoch. Epoch `e` names the checkpoint that closes the `e`-th interval of
/// execution; output the primary produced during that interval is covered by checkpoint `e`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A failover term. Each failover or re-protection starts a new, larger term; at most one node
/// releases client output in a term (fencing).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Term(pub u64);

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A host's identity inside a cluster (chosen by the operator or derived from its address).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

/// The identity of a protected-VM pair; peers of different clusters refuse each other.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct ClusterId(pub u64);

/// The role a node plays for the protected VM.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Role {
    /// Runs the PVM, serves clients, compares output.
    Primary,
    /// Runs the SVM, receives checkpoints, rewrites TCP sequence numbers.
    Secondary,
}

/// A run of guest-physical pages: `count` pages starting at page frame number `first`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct PageRange {
    /// First page frame number (guest-physical address / page size).
    pub first: u64,
    /// Number of pages in the run.
    pub count: u64,
}

impl PageRange {
    /// One past the last page of the run (saturating).
    pub fn end(&self) -> u64 {
        self.first.saturating_add(self.count)
    }

    /// Adds every run of `other` (in any order; overlaps and empty runs allowed) to `runs`,
    /// which is sorted by first page and coalesced (no two runs overlap or touch) and stays
    /// so: one linear merge when `other` is sorted, which every dirty-log harvest is.
    pub fn union(runs: &mut Vec<PageRange>, other: &[PageRange]) {
        if !other.is_sorted_by_key(|r| r.first) {
            let mut sorted = other.to_vec();
            sorted.sort_unstable();
            return PageRange::union(runs, &sorted);
        }
        if other.is_empty() {
            return;
        }
        let mut out: Vec<PageRange> = Vec::with_capacity(runs.len() + other.len());
        let (mut i, mut j) = (0, 0);
        loop {
            let next = match (runs.get(i), other.get(j)) {
                (Some(a), Some(b)) if a.first <= b.first => {
                    i += 1;
                    *a
                }
                (_, Some(b)) => {
                    j += 1;
                    *b
                }
                (Some(a), None) => {
                    i += 1;
                    *a
                }
                (None, None) => break,
            };
            // `next` starts at or after every run in `out`: extend the last one or append.
            if next.count == 0 {
                continue;
            }
            match out.last_mut() {
                Some(last) if next.first <= last.end() => {
                    last.count = last.end().max(next.end()) - last.first;
                }
                _ => out.push(next),
            }
        }
        *runs = out;
    }
}

/// Why a checkpoint was taken. Reported in events and carried on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum CheckpointReason {
    /// The periodic checkpoint interval elapsed.
    Periodic,
    /// Primary and secondary output differed.
    Miscompare,
    /// A queued packet waited longer than `compare_timeout` for its counterpart.
    CompareTimeout,
    /// A comparator queue reached its bound (QEMU drops here; colo checkpoints).
    QueueFull,
    /// The comparator's flow table reached its bound (QEMU clears it; colo checkpoints).
    FlowTableFull,
    /// An operator or API command forced one.
    Forced,
    /// The checkpoint interval was changed while running.
    IntervalChanged,
}

impl CheckpointReason {
    /// A short, stable name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointReason::Periodic => "periodic",
            CheckpointReason::Miscompare => "miscompare",
            CheckpointReason::CompareTimeout => "compare-timeout",
            CheckpointReason::QueueFull => "queue-full",
            CheckpointReason::FlowTableFull => "flow-table-full",
            CheckpointReason::Forced => "forced",
            CheckpointReason::IntervalChanged => "interval-changed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_never_wrap_backwards() {
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
        assert_eq!(Term(7).next(), Term(8));
        assert_eq!(
            PageRange {
                first: u64::MAX,
                count: 4
            }
            .end(),
            u64::MAX
        );
    }

    fn run(first: u64, count: u64) -> PageRange {
        PageRange { first, count }
    }

    #[test]
    fn page_union_merges_overlapping_and_touching_runs_and_drops_empty_ones() {
        let mut runs = vec![run(0, 2), run(10, 1)];
        PageRange::union(&mut runs, &[run(2, 1), run(5, 0), run(9, 3), run(20, 1)]);
        assert_eq!(runs, vec![run(0, 3), run(9, 3), run(20, 1)]);
        // Unsorted input, one run spanning several.
        PageRange::union(&mut runs, &[run(30, 1), run(1, 25)]);
        assert_eq!(runs, vec![run(0, 26), run(30, 1)]);
        // Nothing added changes nothing.
        PageRange::union(&mut runs, &[]);
        assert_eq!(runs, vec![run(0, 26), run(30, 1)]);
    }

    #[test]
    fn page_union_is_the_set_union_of_pages() {
        // Every combination of two small tables against a bit set of their pages.
        let tables: [&[PageRange]; 5] = [
            &[],
            &[run(0, 1)],
            &[run(1, 2), run(6, 1)],
            &[run(0, 8)],
            &[run(3, 1), run(5, 2)],
        ];
        for a in tables {
            for b in tables {
                let mut runs = Vec::new();
                PageRange::union(&mut runs, a);
                PageRange::union(&mut runs, b);
                let mut expected = [false; 8];
                for r in a.iter().chain(b) {
                    (r.first..r.end()).for_each(|p| expected[p as usize] = true);
                }
                let mut got = [false; 8];
                for r in &runs {
                    (r.first..r.end()).for_each(|p| got[p as usize] = true);
                }
                assert_eq!(got, expected, "{a:?} + {b:?}");
                assert!(
                    runs.windows(2).all(|w| w[0].end() < w[1].first),
                    "sorted, disjoint, not touching: {runs:?}"
                );
            }
        }
    }
}
