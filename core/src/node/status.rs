//! What an operator sees of a [`Node`]: [`NodeStatus`] (QEMU's `query-colo-status`: mode, last
//! mode, reason; COLO_EXIT's reason `request | error`) and the node's own counters
//! ([`NodeStats`]).
//!
//! Invariant kept: the status is a pure read of the machines' state; asking for it changes
//! nothing, so a runtime may poll it at any rate.

use super::{Node, Phase, Side};
use crate::failover::{FailoverReason, Mode};
use crate::heartbeat::PeerState;
use crate::ids::{Epoch, NodeId, Role, Term};
use crate::time::Instant;

/// The node's mode, combining its lifecycle and the failover mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeMode {
    /// Created, not started.
    Idle,
    /// Handshake in progress.
    Connecting,
    /// Secondary receiving the initial or re-protection copy.
    Syncing,
    /// Replicating with the peer (QEMU: "primary" / "secondary").
    Paired,
    /// Peer gone; acquiring the new term's lease.
    TakingOver,
    /// Running alone (QEMU: "none" after failover).
    Solo,
    /// Alone, syncing a new secondary.
    Reprotecting,
    /// Fenced: another node holds the current term.
    Deposed,
    /// Shut down.
    Stopped,
}

/// The operator's view of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The mode.
    pub mode: NodeMode,
    /// The role held in `term`.
    pub role: Role,
    /// The current term.
    pub term: Term,
    /// Primary: the last completed checkpoint; secondary: the last applied one.
    pub epoch: Epoch,
    /// What the heartbeat believes about the peer (`None` while no peer is watched).
    pub peer: Option<PeerState>,
    /// The peer of the current pairing.
    pub peer_id: Option<NodeId>,
    /// Why the last failover happened.
    pub last_failover_reason: Option<FailoverReason>,
    /// QEMU COLO_EXIT's classification of that reason: `true` for "request", `false` for
    /// "error", `None` if no failover happened.
    pub last_exit_was_request: Option<bool>,
    /// Whether the fencing lease is held right now.
    pub lease_held: bool,
    /// Frames held because release is not allowed right now.
    pub held_frames: u64,
}

/// The node's own counters (each sub-machine keeps its own too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Peer messages handed in.
    pub peer_received: u64,
    /// Peer messages sent.
    pub peer_sent: u64,
    /// Peer messages refused as protocol errors.
    pub protocol_errors: u64,
    /// Peer messages of an older term, or replication messages after a failover: ignored.
    pub stale_messages: u64,
    /// Secondary output of an epoch older than the last released checkpoint: dropped (it came
    /// from SVM state that checkpoint replaced).
    pub stale_secondary_output: u64,
    /// Inputs before [`Command::Start`](super::Command::Start).
    pub ignored_before_start: u64,
    /// Inputs after [`Command::Shutdown`](super::Command::Shutdown).
    pub ignored_after_stop: u64,
    /// Commands that do not apply to this node's role or mode.
    pub commands_ignored: u64,
    /// Client frames that reached a paired secondary (the primary owns the link): ignored.
    pub client_frames_on_secondary: u64,
    /// Frames released to clients.
    pub released: u64,
    /// Frames put on hold because release was not allowed.
    pub held: u64,
    /// Frames held beyond `solo_hold_frames` (kept; the guest is paused when possible).
    pub held_over_bound: u64,
    /// Frames a deposed node refused to release (fencing).
    pub fenced_frames: u64,
    /// Failover triggers refused because this node's VM is no copy yet.
    pub takeovers_refused: u64,
    /// Checkpointer messages not sent because the node no longer replicates.
    pub sends_suppressed: u64,
    /// Hellos ignored (not accepting a secondary now).
    pub hellos_ignored: u64,
    /// VM completions nobody waited for.
    pub stray_vm_completions: u64,
    /// Peer links that came back after a drop while paired (each one restarts the epoch in
    /// flight, if any, on the new link).
    pub link_resets: u64,
    /// Heartbeats answered by the peer's echo (a heartbeat goes out only on an idle link).
    pub heartbeat_round_trips: u64,
    /// The last heartbeat's round trip: sent to echo received, on this node's clock.
    pub last_heartbeat_round_trip: crate::time::Duration,
    /// Guest TCP segments the client had not acknowledged, sent again by a secondary at its
    /// takeover (`crate::rewrite::resend`).
    pub resent_at_takeover: u64,
}

impl Node {
    /// The operator's view at `now`.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let f = self.failover.status(now);
        let mode = match self.phase {
            Phase::Idle => NodeMode::Idle,
            Phase::Connecting => NodeMode::Connecting,
            Phase::Syncing => NodeMode::Syncing,
            Phase::Stopped => NodeMode::Stopped,
            Phase::Running => match f.mode {
                Mode::Paired => NodeMode::Paired,
                Mode::TakingOver => NodeMode::TakingOver,
                Mode::Solo => NodeMode::Solo,
                Mode::Reprotecting => NodeMode::Reprotecting,
                Mode::Deposed => NodeMode::Deposed,
            },
        };
        let mode = if f.mode == Mode::Deposed {
            NodeMode::Deposed
        } else {
            mode
        };
        NodeStatus {
            mode,
            role: f.role,
            term: f.term,
            epoch: self.current_epoch(),
            peer: self.heartbeat_active().then(|| self.heartbeat.state()),
            peer_id: self.peer,
            last_failover_reason: f.last_failover_reason,
            last_exit_was_request: f.last_failover_reason.map(FailoverReason::is_request),
            lease_held: f.lease_held,
            held_frames: self.hold.len() as u64,
        }
    }

    /// Whether re-protection is armed: a solo node took [`Command::Reprotect`](super::Command)
    /// and no newcomer paired yet (an arming is forgotten once the node leaves Solo).
    pub fn reprotect_armed(&self) -> bool {
        self.reprotect_armed && self.status(self.now).mode == NodeMode::Solo
    }

    /// The periodic checkpoint interval in force: the primary side's (as last set by
    /// [`Command::SetCheckpointInterval`](super::Command)), or the configured one on a
    /// secondary (which does not checkpoint on its own).
    pub fn checkpoint_interval(&self) -> crate::time::Duration {
        match &self.side {
            Side::Primary(p) => p.checkpoint_interval(),
            Side::Secondary(_) => self.config.checkpoint.checkpoint_interval,
        }
    }

    /// Whether the node is primary-side (comparator) rather than secondary-side (rewriter).
    pub fn is_primary_side(&self) -> bool {
        matches!(self.side, Side::Primary(_))
    }
}
