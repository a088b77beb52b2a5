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
}
