//! Platform models of a colo host: what a real host's runtime does with the core's commands,
//! simulated. [`vm::SimVm`] executes `VmCommand`s against a [`crate::guest::Guest`] (pause and
//! resume latency, dirty-page harvest, page and device-state frames with realistic byte counts
//! priced on the replication link's bandwidth, the secondary's RAM cache, atomic apply) and
//! reports `VmCompletion`s; [`disk::LayeredDisk`] executes `DiskCommand`s over the parent image
//! and the hidden and active overlays with injectable write errors. (The arbiter is colo-core's
//! own `Arbiter`, driven by the fabric, [`crate::fabric`].)
//!
//! Invariant kept: a platform model never decides anything colo-core decides; it executes
//! commands and reports completions and trace events, so a checker that fails points at the
//! core (or at a canary planted here on purpose, see [`Canary`]).

pub mod disk;
pub mod vm;

use colo_core::node::NodeCanary;
use colo_core::wire::Message;

use crate::guest::GuestSnapshot;

/// One message on the replication link between the hosts, with its bulk. Bulk bytes are not
/// materialised: `bulk_len` is what a real runtime would stream (pages × 4096, device state),
/// and the guest state itself travels as `snapshot` on the `DeviceState` frame (the simulated
/// guest checkpoints by replay, see docs/simulation.md).
#[derive(Clone, Debug)]
pub struct ReplFrame {
    /// The message.
    pub message: Message,
    /// Length of the bulk that follows it on the wire.
    pub bulk_len: u64,
    /// The guest state (only on `DeviceState`).
    pub snapshot: Option<GuestSnapshot>,
}

/// A known bug the platform plants on purpose, to prove a checker catches it
/// (`colo-sim --canary NAME`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Canary {
    /// The primary releases held output when it *sent* the checkpoint, before the secondary
    /// reported it received (output commit).
    ReleaseBeforeReceived,
    /// The secondary VM applies an epoch with its last page batch missing (atomic checkpoint).
    ApplyPartialEpoch,
    /// The secondary ignores the rewriter reset a checkpoint orders, so its rewriter keeps the
    /// pre-checkpoint sequence offsets although the SVM now numbers its bytes like the PVM
    /// (state equality, from the `Translation` event).
    SkipRewriterReset,
    /// The survivor of a failover releases output before the arbiter granted its lease
    /// (single writer).
    ReleaseWithoutLease,
    /// The primary's comparator releases TCP segments carrying SYN, FIN or RST as QEMU does,
    /// without waiting for the secondary's same flag at the same position nor for the min-ACK
    /// guard (output commit, issue 14).
    ReleaseControlUnguarded,
}

impl Canary {
    /// Every canary, in `--list-canaries` order.
    pub const ALL: [Canary; 5] = [
        Canary::ReleaseBeforeReceived,
        Canary::SkipRewriterReset,
        Canary::ApplyPartialEpoch,
        Canary::ReleaseWithoutLease,
        Canary::ReleaseControlUnguarded,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Canary::ReleaseBeforeReceived => "release-before-received",
            Canary::SkipRewriterReset => "skip-rewriter-reset",
            Canary::ApplyPartialEpoch => "apply-partial-epoch",
            Canary::ReleaseWithoutLease => "release-without-lease",
            Canary::ReleaseControlUnguarded => "release-control-unguarded",
        }
    }

    /// The canary called `name`.
    pub fn from_name(name: &str) -> Option<Canary> {
        Canary::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Where the Node engine plants it: in colo-core's `Node` (the hooks of
    /// core/src/node/canary.rs, cargo feature `canaries`), or `None` for the one that only
    /// the VM platform can plant (`apply-partial-epoch`: a lost page batch is the VM's bug).
    pub fn node_canary(self) -> Option<NodeCanary> {
        match self {
            Canary::ReleaseBeforeReceived => Some(NodeCanary::ReleaseBeforeReceived),
            Canary::SkipRewriterReset => Some(NodeCanary::SkipRewriterReset),
            Canary::ReleaseWithoutLease => Some(NodeCanary::ReleaseWithoutLease),
            Canary::ReleaseControlUnguarded => Some(NodeCanary::ReleaseControlUnguarded),
            Canary::ApplyPartialEpoch => None,
        }
    }

    /// Whether it only shows after a failover, so its seed gets one
    /// ([`crate::runner::options_for`]).
    pub fn needs_failover(self) -> bool {
        self == Canary::ReleaseWithoutLease
    }

    /// The checker that must catch it.
    pub fn caught_by(self) -> &'static str {
        match self {
            Canary::ReleaseBeforeReceived => crate::check::output_commit::NAME,
            Canary::SkipRewriterReset => crate::check::state_equality::NAME,
            Canary::ApplyPartialEpoch => crate::check::atomic_checkpoint::NAME,
            Canary::ReleaseWithoutLease => crate::check::single_writer::NAME,
            Canary::ReleaseControlUnguarded => crate::check::output_commit::NAME,
        }
    }
}
