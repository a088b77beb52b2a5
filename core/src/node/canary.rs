//! Planted bugs for the simulator (cargo feature `canaries`, off by default; colo-sim turns it
//! on): a [`NodeCanary`] set in [`NodeConfig::canary`](super::NodeConfig) makes the node break
//! one of its own rules on purpose, so `colo-sim --node --canary NAME` proves that the checker
//! guarding that rule catches a bug *of the Node*, not of a platform stand-in.
//!
//! Invariant kept: without the feature none of this is compiled (the enum, the config field and
//! every hook are `#[cfg(feature = "canaries")]`), and with the feature but no canary set the
//! node behaves exactly as the production build: each hook is one `if self.canary(..)` at the
//! decision point it subverts (primary.rs, solo.rs, secondary.rs; the comparator's own hook,
//! `Comparator::plant_unguarded_control`, is set where primary.rs creates it).

use super::Node;

/// A known bug the node plants on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeCanary {
    /// The primary releases the output held for epoch `e` when its checkpointer *sends*
    /// `CheckpointSent(e)`, instead of at `ReleaseOutput(e)`, which the checkpointer emits only
    /// once the secondary reported `CheckpointReceived(e)` (output commit, architecture.md
    /// invariant 1). Caught by the simulator's `output_commit` checker.
    ReleaseBeforeReceived,
    /// A survivor passes the solo gate while it is taking over, before the arbiter granted the
    /// new term's lease (and after a lapse), and claims the client link at once (single
    /// writer, invariant 5). Caught by `single_writer`.
    ReleaseWithoutLease,
    /// The secondary keeps its rewriter's sequence offsets when a checkpoint was loaded, instead
    /// of zeroing them (QEMU filter-rewriter resets its connection offsets at checkpoint): the
    /// SVM now numbers its bytes like the PVM, so the stale offset shifts every later segment.
    SkipRewriterReset,
    /// The primary's comparator releases TCP segments carrying SYN, FIN or RST as QEMU does,
    /// held neither until the secondary sent the same flag at the same position (issue 14)
    /// nor by the min-ACK guard: a client may see the connection closed or reset while the
    /// secondary's guest still has it open. Caught by `output_commit` (its control-flag rule).
    ReleaseControlUnguarded,
}

impl Node {
    /// Whether `c` is planted in this node.
    pub(super) fn canary(&self, c: NodeCanary) -> bool {
        self.config.canary == Some(c)
    }
}
