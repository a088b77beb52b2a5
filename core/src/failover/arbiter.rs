//! The arbiter's side of the fencing lease: [`Arbiter`] is the rule an embedded witness runs
//! (and the rule an external service such as an etcd lease must implement equivalently).
//!
//! Invariant kept: at any instant of the arbiter's clock at most one (term, holder) lease is
//! unexpired, and terms only grow. A request for a newer term is granted only once the current
//! lease has expired on the arbiter's clock (or its holder is the requester); a request for the
//! current term is granted only to its holder (renewal); a request for an older term is denied.
//! Each lease counts from the arbiter's receipt of the request, which is after the holder sent
//! it, so the holder's own expiry estimate ([`super::Lease`]) always ends first.
//!
//! A restarted arbiter must start from its persisted (term, holder) record
//! ([`Arbiter::restored`]), never vacant: the runtime writes the record to stable storage
//! before it sends a grant of a new term.
//!
//! ```text
//! Vacant --request(t > current)--> Leased{t, holder, until}
//! (restart) --restored(t, holder)--> Leased{t, holder, now + max_lease}
//! Leased --renewal by holder--> Leased{until extended}
//! Leased --request(t' > t) after `until` (or by holder)--> Leased{t', requester}
//! ```

use crate::ids::{NodeId, Term};
use crate::time::{Duration, Instant};

use super::lease::LeaseReply;

/// The arbiter's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArbiterPhase {
    /// No term was ever granted.
    Vacant,
    /// `holder` was granted `term`; the lease runs until `until` on the arbiter's clock (it may
    /// already have expired: the term stays current until a newer one is granted).
    Leased {
        /// The current term.
        term: Term,
        /// Its holder.
        holder: NodeId,
        /// Expiry on the arbiter's clock.
        until: Instant,
    },
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArbiterStats {
    /// Grants of a new term.
    pub new_terms: u64,
    /// Renewals by the holder.
    pub renewals: u64,
    /// Refusals.
    pub denials: u64,
}

/// The lease arbiter (embedded witness). Sans-IO: the runtime delivers requests with the
/// arbiter host's `now` and sends back the reply.
#[derive(Debug)]
pub struct Arbiter {
    phase: ArbiterPhase,
    max_lease: Duration,
    stats: ArbiterStats,
    now: Instant,
}

impl Arbiter {
    /// An arbiter that grants at most `max_lease` per request.
    pub fn new(max_lease: Duration, now: Instant) -> Arbiter {
        Arbiter {
            phase: ArbiterPhase::Vacant,
            max_lease,
            stats: ArbiterStats::default(),
            now,
        }
    }

    /// An arbiter started again from its persisted record: `holder` was the last to be granted
    /// `term`. How long that lease still runs is unknown (the previous incarnation's clock is
    /// gone), so it is taken to run a whole `max_lease` from `now`: nobody else may take a newer
    /// term before then, the holder may renew it, and a request for `term` or an older one
    /// from anyone else is denied, as before the restart. Without this a restarted arbiter
    /// would grant the current term to whichever node asked first: two writers in one term.
    pub fn restored(max_lease: Duration, now: Instant, term: Term, holder: NodeId) -> Arbiter {
        Arbiter {
            phase: ArbiterPhase::Leased {
                term,
                holder,
                until: now + max_lease,
            },
            max_lease,
            stats: ArbiterStats::default(),
            now,
        }
    }

    /// The term and holder to persist before a grant is sent (`None` while vacant).
    pub fn record(&self) -> Option<(Term, NodeId)> {
        match self.phase {
            ArbiterPhase::Vacant => None,
            ArbiterPhase::Leased { term, holder, .. } => Some((term, holder)),
        }
    }

    /// The record.
    pub fn phase(&self) -> ArbiterPhase {
        self.phase
    }

    /// Counters.
    pub fn stats(&self) -> ArbiterStats {
        self.stats
    }

    /// Decide a request received at `now`.
    pub fn handle_request(
        &mut self,
        now: Instant,
        term: Term,
        node_id: NodeId,
        duration: Duration,
    ) -> LeaseReply {
        assert!(
            now >= self.now,
            "time went backwards: the caller must pass a monotone `now` ({now:?} < {:?})",
            self.now
        );
        self.now = now;
        let valid_for = duration.min(self.max_lease);
        let grant = |arb: &mut Arbiter, renewal: bool| {
            arb.phase = ArbiterPhase::Leased {
                term,
                holder: node_id,
                until: now + valid_for,
            };
            if renewal {
                arb.stats.renewals += 1;
            } else {
                arb.stats.new_terms += 1;
            }
            LeaseReply::Granted { valid_for }
        };
        match self.phase {
            // Vacant --request--> Leased
            ArbiterPhase::Vacant => grant(self, false),
            ArbiterPhase::Leased {
                term: current,
                holder,
                until,
            } => {
                if term == current && holder == node_id {
                    // Leased --renewal by holder--> Leased (extended). A renewal never
                    // shortens a lease already granted.
                    let reply = grant(self, true);
                    if let ArbiterPhase::Leased { until: new, .. } = &mut self.phase {
                        *new = (*new).max(until);
                    }
                    reply
                } else if term > current && (holder == node_id || now >= until) {
                    // Leased --newer term, old lease over (or same holder)--> Leased{new}
                    grant(self, false)
                } else {
                    // Older term, someone else's current term, or a newer term while the old
                    // lease still runs: the requester tells these apart by `current_term`.
                    self.stats.denials += 1;
                    LeaseReply::Denied {
                        holder,
                        current_term: current,
                    }
                }
            }
        }
    }
}
