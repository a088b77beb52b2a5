//! The node's configuration: the sub-machines' configurations plus the knobs only the node
//! has (identity, guest memory size, the solo hold bound, the re-protection progress step).
//!
//! Invariant kept: a [`NodeConfig`] that passed [`NodeConfig::validate`] builds every
//! sub-machine without error, so [`Node::new`](super::Node::new) can only fail on the
//! configuration, never half-way through building the node.

use crate::checkpoint::{CheckpointConfig, CheckpointConfigError};
use crate::compare::{CompareConfig, CompareConfigError};
use crate::disk::{DiskConfig, DiskConfigError};
use crate::failover::{LeaseConfig, LeaseConfigError};
use crate::heartbeat::{HeartbeatConfig, HeartbeatConfigError};
use crate::ids::{ClusterId, NodeId, Term};
use crate::rewrite::RewriterConfig;
use thiserror::Error;

/// Everything a [`Node`](super::Node) needs to know before it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's identity (distinct from the peer's; the arbiter leases to it).
    pub node_id: NodeId,
    /// The protected-VM pair this node belongs to; a peer of another cluster is refused.
    pub cluster_id: ClusterId,
    /// The term the node starts in (both nodes of a new pair start in the same one).
    pub initial_term: Term,
    /// A digest of the VM this node protects (memory, vCPUs, boot image, devices), sent in the
    /// secondary's `Hello` and checked by the primary: a secondary described for another VM is
    /// refused (`HelloRejectReason::VmMismatch`). 0: not checked (the simulator's VMs).
    pub vm_fingerprint: u64,
    /// Guest memory size in bytes: the memory part of a re-protection copy (`SyncStart`).
    pub guest_memory_bytes: u64,
    /// Checkpoint protocol timing.
    pub checkpoint: CheckpointConfig,
    /// Comparator bounds and timeouts (primary).
    pub compare: CompareConfig,
    /// Rewriter table size (secondary).
    pub rewriter: RewriterConfig,
    /// Heartbeat interval and misses.
    pub heartbeat: HeartbeatConfig,
    /// Fencing lease timing.
    pub lease: LeaseConfig,
    /// Disk geometry.
    pub disk: DiskConfig,
    /// Client frames a solo node holds while it may not release (no lease yet, or a lapsed
    /// one). Past this bound the node pauses its guest (backpressure) and keeps every frame:
    /// nothing is ever dropped to honour the bound (invariant 6, no silent loss).
    pub solo_hold_frames: usize,
    /// A re-protection secondary reports progress each time this many more bytes are stored.
    pub sync_progress_step: u64,
    /// A bug to plant on purpose (simulator only; see [`NodeCanary`](super::NodeCanary)).
    #[cfg(feature = "canaries")]
    pub canary: Option<super::NodeCanary>,
}

impl NodeConfig {
    /// A configuration with every default, for node `node_id` of cluster `cluster_id`.
    pub fn new(node_id: NodeId, cluster_id: ClusterId) -> NodeConfig {
        NodeConfig {
            node_id,
            cluster_id,
            initial_term: Term(1),
            vm_fingerprint: 0,
            // 1 GiB: a small guest; the runtime sets the real size.
            guest_memory_bytes: 1 << 30,
            checkpoint: CheckpointConfig::default(),
            compare: CompareConfig::default(),
            rewriter: RewriterConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            lease: LeaseConfig::default(),
            disk: DiskConfig::default(),
            // Same order as the comparator's per-flow queue bound (QEMU's max_queue_size).
            solo_hold_frames: 1024,
            // 64 MiB: a few progress reports per second on a 10 Gbit/s link.
            sync_progress_step: 64 << 20,
            #[cfg(feature = "canaries")]
            canary: None,
        }
    }

    /// Checks every part; the first error found is returned.
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        self.checkpoint.validate()?;
        self.compare.validate()?;
        self.heartbeat.validate()?;
        self.lease.validate()?;
        self.disk.validate()?;
        if self.solo_hold_frames == 0 {
            return Err(NodeConfigError::ZeroSoloHold);
        }
        if self.sync_progress_step == 0 {
            return Err(NodeConfigError::ZeroSyncProgressStep);
        }
        if self.initial_term == Term(0) {
            return Err(NodeConfigError::ZeroTerm);
        }
        // A lease must outlive a heartbeat interval, or a solo node spends its life renewing.
        if self.lease.lease_duration <= self.heartbeat.heartbeat_interval {
            return Err(NodeConfigError::LeaseShorterThanHeartbeat);
        }
        Ok(())
    }
}

/// Why a [`NodeConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum NodeConfigError {
    /// The checkpoint part is invalid.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointConfigError),
    /// The comparator part is invalid.
    #[error("compare: {0}")]
    Compare(#[from] CompareConfigError),
    /// The heartbeat part is invalid.
    #[error("heartbeat: {0}")]
    Heartbeat(#[from] HeartbeatConfigError),
    /// The lease part is invalid.
    #[error("lease: {0}")]
    Lease(#[from] LeaseConfigError),
    /// The disk part is invalid.
    #[error("disk: {0}")]
    Disk(#[from] DiskConfigError),
    /// A zero hold bound would pause the guest on its first solo frame.
    #[error("solo_hold_frames must be at least 1")]
    ZeroSoloHold,
    /// A zero step would report progress on every byte.
    #[error("sync_progress_step must be greater than zero")]
    ZeroSyncProgressStep,
    /// Term 0 is the "no term" of a node that never paired; pairs start at 1.
    #[error("initial_term must be at least 1")]
    ZeroTerm,
    /// The lease would expire between two heartbeats.
    #[error("lease_duration must be longer than heartbeat_interval")]
    LeaseShorterThanHeartbeat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Duration;

    #[test]
    fn defaults_validate() {
        NodeConfig::new(NodeId(1), ClusterId(7)).validate().unwrap();
    }

    #[test]
    fn sub_machine_errors_surface_typed() {
        let mut c = NodeConfig::new(NodeId(1), ClusterId(7));
        c.heartbeat.heartbeat_misses_max = 0;
        assert_eq!(
            c.validate(),
            Err(NodeConfigError::Heartbeat(HeartbeatConfigError::ZeroMisses))
        );
        let mut c = NodeConfig::new(NodeId(1), ClusterId(7));
        c.checkpoint.checkpoint_interval = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(NodeConfigError::Checkpoint(
                CheckpointConfigError::ZeroInterval
            ))
        );
    }

    #[test]
    fn node_level_bounds_are_checked() {
        let mut c = NodeConfig::new(NodeId(1), ClusterId(7));
        c.solo_hold_frames = 0;
        assert_eq!(c.validate(), Err(NodeConfigError::ZeroSoloHold));
        let mut c = NodeConfig::new(NodeId(1), ClusterId(7));
        c.lease.lease_duration = Duration::from_millis(100);
        c.lease.lease_safety_margin = Duration::from_millis(10);
        assert_eq!(
            c.validate(),
            Err(NodeConfigError::LeaseShorterThanHeartbeat)
        );
        let mut c = NodeConfig::new(NodeId(1), ClusterId(7));
        c.initial_term = Term(0);
        assert_eq!(c.validate(), Err(NodeConfigError::ZeroTerm));
    }
}
