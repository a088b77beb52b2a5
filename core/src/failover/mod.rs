//! Failover and fencing: [`Failover`] decides when this node stops depending on its peer, which
//! term it then runs in, and whether it may release output alone; it owns the holder side of
//! the arbiter lease ([`Lease`]) and ships the arbiter's rule ([`Arbiter`]) for the embedded
//! witness.
//!
//! QEMU needs an operator's `x-colo-lost-heartbeat` and has no fencing (colo-reference.md,
//! "Failover"). colo fails over on its own when the heartbeat declares the peer lost, when a
//! checkpoint phase is stuck, when the peer says goodbye, or on command, and fences by term: a
//! node releases output without its peer's confirmation only while it holds the current term's
//! lease. While both nodes are paired no lease is needed at all (release is confirmed by the
//! peer), so an arbiter outage never stops healthy replication.
//!
//! Invariant kept (single writer, architecture.md invariant 5): [`Failover::may_release_solo`]
//! is true only in [`Mode::Solo`] while [`Lease::may_release`] holds, and a node never leaves
//! [`Mode::Deposed`]. docs/failover.md has the protocol and the safety argument.
//!
//! ```text
//! Paired --peer lost / stuck / goodbye / command--> TakingOver{t+1}   (lease requested)
//! TakingOver --lease granted--> Solo{t+1}           (release alone while the lease holds)
//! TakingOver/Solo --denied (term taken) / newer term announced--> Deposed (terminal)
//! Solo --reprotect--> Reprotecting --sync done--> Paired (lease released, this node primary)
//! Reprotecting --sync failed--> Solo
//! ```

mod arbiter;
mod lease;
#[cfg(test)]
mod tests;

pub use arbiter::{Arbiter, ArbiterPhase, ArbiterStats};
pub use lease::{
    Lease, LeaseConfig, LeaseConfigError, LeaseEvent, LeasePhase, LeaseReply, LeaseRequest,
    LeaseRequestId, LeaseStats,
};

use crate::ids::{NodeId, Role, Term};
use crate::time::Instant;

/// Why a node stopped depending on its peer (QEMU's COLO_EXIT reason is request|error; colo
/// says which error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailoverReason {
    /// An operator or API command asked for it (QEMU: "request").
    Requested,
    /// The heartbeat declared the peer lost.
    PeerLost,
    /// The paired secondary said `Hello` again after the pairing's first checkpoint: it was
    /// restarted and lost its state, however quickly it came back (its hellos must not pass
    /// for the old incarnation's liveness).
    PeerRestarted,
    /// A checkpoint phase did not finish within its deadline.
    CheckpointStuck,
    /// The peer ended the link in order (shutdown).
    PeerGoodbye,
    /// The peer broke the protocol beyond recovery.
    ProtocolError,
    /// The secondary failed a forwarded disk write: its disk no longer mirrors the primary's,
    /// so it cannot take over and the primary runs alone.
    PeerDiskFailed,
}

impl FailoverReason {
    /// QEMU's COLO_EXIT classification: `request` for an operator's, `error` for the rest.
    pub fn is_request(self) -> bool {
        self == FailoverReason::Requested
    }
}

/// The failover mode of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Replicating with the peer; output is released on the peer's confirmation.
    Paired,
    /// The peer is gone; the lease of the new term is being acquired. Nothing is released
    /// without the peer yet (the primary holds its queued output, the secondary does not claim
    /// the client link).
    TakingOver,
    /// Running alone in the current term; output is released while the lease holds.
    Solo,
    /// Alone, and attaching a new secondary (full sync in progress); releasing as in Solo.
    Reprotecting,
    /// The arbiter gave the term to the other node, or the peer announced a newer term. Never
    /// releases again; the VM here must be stopped and re-protected from the holder.
    Deposed,
}

/// What the node must do, in the order reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailoverEvent {
    /// Stop depending on the peer now. A former primary stops mirroring and disk forwarding and
    /// keeps holding output; a former secondary discards a partial epoch (or finishes an apply
    /// in progress), merges its disk overlays (hidden, then active) and keeps its rewriter.
    TakeoverStarted {
        /// The term being acquired.
        term: Term,
        /// The role this node had before.
        from: Role,
        /// Why.
        reason: FailoverReason,
    },
    /// The lease of `term` is held: release output alone (a former primary flushes what it
    /// held; a former secondary now claims the client link, e.g. with a gratuitous ARP).
    SoloGranted {
        /// The term.
        term: Term,
    },
    /// The lease lapsed: stop releasing output (hold it) until it is renewed.
    ReleaseSuspended {
        /// The term.
        term: Term,
    },
    /// Never release again.
    Deposed {
        /// This node's term.
        term: Term,
        /// The node that holds the current term, if known.
        holder: Option<NodeId>,
        /// The newest term known.
        current_term: Term,
    },
    /// A new secondary is in sync; replication resumes with this node as primary.
    Reprotected {
        /// The term.
        term: Term,
    },
}

/// The status an operator sees (QEMU's query-colo-status: mode, last mode, reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverStatus {
    /// Current mode.
    pub mode: Mode,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Why the last failover happened, if one did.
    pub last_failover_reason: Option<FailoverReason>,
    /// Whether the lease is held right now.
    pub lease_held: bool,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailoverStats {
    /// Takeovers started.
    pub takeovers: u64,
    /// Failover triggers ignored because one was already under way or the mode forbids it.
    pub ignored_triggers: u64,
    /// Lease lapses while solo.
    pub suspensions: u64,
    /// Re-protections completed.
    pub reprotections: u64,
}

/// The failover and fencing machine of one node.
#[derive(Debug)]
pub struct Failover {
    node_id: NodeId,
    role: Role,
    term: Term,
    mode: Mode,
    last_reason: Option<FailoverReason>,
    lease: Lease,
    events: Vec<FailoverEvent>,
    stats: FailoverStats,
}

impl Failover {
    /// A paired node with `role` in `term`.
    pub fn new(
        config: LeaseConfig,
        node_id: NodeId,
        role: Role,
        term: Term,
        now: Instant,
    ) -> Result<Failover, LeaseConfigError> {
        Ok(Failover {
            node_id,
            role,
            term,
            mode: Mode::Paired,
            last_reason: None,
            lease: Lease::new(config, node_id, now)?,
            events: Vec::new(),
            stats: FailoverStats::default(),
        })
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The lease holder (for its phase and counters).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Counters.
    pub fn stats(&self) -> FailoverStats {
        self.stats
    }

    /// The operator's view.
    pub fn status(&self, now: Instant) -> FailoverStatus {
        FailoverStatus {
            mode: self.mode,
            role: self.role,
            term: self.term,
            last_failover_reason: self.last_reason,
            lease_held: self.lease.may_release(now),
        }
    }

    /// Whether this node may release output without its peer's confirmation at `now`.
    pub fn may_release_solo(&self, now: Instant) -> bool {
        matches!(self.mode, Mode::Solo | Mode::Reprotecting) && self.lease.may_release(now)
    }

    /// Whether this node still acts on its peer's replication messages (checkpoints, disk
    /// writes, secondary output): only while paired.
    pub fn is_paired(&self) -> bool {
        self.mode == Mode::Paired
    }

    /// Stop depending on the peer for `reason`. Only a paired node can start a takeover; other
    /// modes count the trigger and ignore it.
    pub fn handle_trigger(&mut self, now: Instant, reason: FailoverReason) {
        if self.mode != Mode::Paired {
            self.stats.ignored_triggers += 1;
            return;
        }
        // Paired --trigger--> TakingOver{t+1}
        let from = self.role;
        self.term = self.term.next();
        self.mode = Mode::TakingOver;
        self.role = Role::Primary;
        self.last_reason = Some(reason);
        self.stats.takeovers += 1;
        self.events.push(FailoverEvent::TakeoverStarted {
            term: self.term,
            from,
            reason,
        });
        self.lease.handle_acquire(now, self.term);
        self.drain_lease();
    }

    /// The peer (or a Hello reply) announced `term` held by `holder`. A newer term than ours
    /// means someone else took over: deposed.
    pub fn handle_peer_term(&mut self, now: Instant, term: Term, holder: Option<NodeId>) {
        if term <= self.term || self.mode == Mode::Deposed || holder == Some(self.node_id) {
            return;
        }
        // any --newer term announced--> Deposed (and stop asking for a lease nobody will grant)
        self.lease.handle_release(now);
        self.depose(holder, term);
    }

    /// The arbiter answered lease request `id`.
    pub fn handle_lease_reply(&mut self, now: Instant, id: LeaseRequestId, reply: LeaseReply) {
        self.lease.handle_reply(now, id, reply);
        self.drain_lease();
    }

    /// Re-protection started: a new secondary is being synced. Only from Solo.
    pub fn handle_reprotect_start(&mut self, now: Instant) -> bool {
        let _ = now;
        if self.mode != Mode::Solo {
            self.stats.ignored_triggers += 1;
            return false;
        }
        // Solo --reprotect--> Reprotecting
        self.mode = Mode::Reprotecting;
        true
    }

    /// Re-protection ended. On success the pair replicates again with this node as primary
    /// and the lease is released (paired release needs no lease); on failure back to Solo.
    pub fn handle_reprotect_done(&mut self, now: Instant, success: bool) {
        if self.mode != Mode::Reprotecting {
            self.stats.ignored_triggers += 1;
            return;
        }
        if success {
            // Reprotecting --sync done--> Paired
            self.mode = Mode::Paired;
            self.role = Role::Primary;
            self.lease.handle_release(now);
            self.stats.reprotections += 1;
            self.events
                .push(FailoverEvent::Reprotected { term: self.term });
        } else {
            // Reprotecting --sync failed--> Solo
            self.mode = Mode::Solo;
        }
    }

    /// A deadline may have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.lease.handle_timeout(now);
        self.drain_lease();
    }

    /// The next lease request to hand to the arbiter.
    pub fn poll_lease_request(&mut self) -> Option<LeaseRequest> {
        self.lease.poll_request()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<FailoverEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The next deadline (the lease's).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lease.poll_timeout()
    }

    fn drain_lease(&mut self) {
        while let Some(ev) = self.lease.poll_event() {
            match ev {
                LeaseEvent::Acquired { term, .. } if term == self.term => match self.mode {
                    Mode::TakingOver => {
                        // TakingOver --lease granted--> Solo
                        self.mode = Mode::Solo;
                        self.events.push(FailoverEvent::SoloGranted { term });
                    }
                    Mode::Solo | Mode::Reprotecting => {
                        // Lease back after a lapse: release again.
                        self.events.push(FailoverEvent::SoloGranted { term });
                    }
                    Mode::Paired | Mode::Deposed => {}
                },
                LeaseEvent::Acquired { .. } => {}
                LeaseEvent::Lapsed { term } => {
                    if matches!(self.mode, Mode::Solo | Mode::Reprotecting) {
                        self.stats.suspensions += 1;
                        self.events.push(FailoverEvent::ReleaseSuspended { term });
                    }
                }
                LeaseEvent::Deposed {
                    holder,
                    current_term,
                    ..
                } => self.depose(Some(holder), current_term),
            }
        }
    }

    fn depose(&mut self, holder: Option<NodeId>, current_term: Term) {
        if self.mode == Mode::Deposed {
            return;
        }
        self.mode = Mode::Deposed;
        self.events.push(FailoverEvent::Deposed {
            term: self.term,
            holder,
            current_term,
        });
    }
}
