//! The holder's side of the fencing lease: [`Lease`] asks the arbiter for the lease of a term,
//! renews it, and answers the one question that matters for split brain: "may this node release
//! output without its peer right now?" ([`Lease::may_release`]).
//!
//! Invariant kept: `may_release(now)` is true only before the local expiry of a granted lease,
//! where the local expiry is measured on this node's own clock from the moment the *request*
//! was sent (which precedes the arbiter's grant) minus `lease_safety_margin` (which absorbs clock
//! rate drift between holder and arbiter). The arbiter counts the same lease from its receipt of
//! the request, so the holder always stops believing in a lease before the arbiter does; the
//! arbiter only grants a newer term once the old lease has expired on its clock. Hence two
//! holders never overlap (docs/failover.md gives the full argument).
//!
//! Replies are matched to requests by [`LeaseRequestId`]: a reply for an unknown id (a
//! duplicate, or one for a request that was forgotten) is ignored and counted, because its grant
//! time cannot be bounded from below.
//!
//! ```text
//! Idle --acquire(t)--> Acquiring{t} --grant--> Held{t} --local expiry--> Acquiring{t} (lapsed)
//!                          |                     |  --grant (renewal)--> Held{t}
//!                          +--denied(newer term)-+--------------------> Deposed (terminal)
//! any --release--> Idle
//! ```

use std::collections::BTreeMap;

use crate::ids::{NodeId, Term};
use crate::time::{Duration, Instant};
use thiserror::Error;

/// Timing of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease is asked for. Renewal starts halfway through the usable part.
    pub lease_duration: Duration,
    /// Subtracted from every grant on the holder's clock: covers clock rate drift between holder
    /// and arbiter over one lease (1000 ppm of drift over 2 s is 2 ms; the default is generous).
    pub lease_safety_margin: Duration,
    /// How long to wait for a reply before asking again.
    pub lease_request_timeout: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease_duration: Duration::from_secs(2),
            lease_safety_margin: Duration::from_millis(100),
            lease_request_timeout: Duration::from_millis(200),
        }
    }
}

/// A lease configuration that cannot keep the fencing promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum LeaseConfigError {
    /// The margin swallows the whole lease: no grant would ever be usable.
    #[error("lease_safety_margin must be shorter than lease_duration")]
    MarginTooLarge,
    /// A zero request timeout would re-send requests in a busy loop.
    #[error("lease_request_timeout must be greater than zero")]
    ZeroRequestTimeout,
}

impl LeaseConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.lease_safety_margin >= self.lease_duration {
            return Err(LeaseConfigError::MarginTooLarge);
        }
        if self.lease_request_timeout.is_zero() {
            return Err(LeaseConfigError::ZeroRequestTimeout);
        }
        Ok(())
    }
}

/// Correlates an arbiter reply with the request it answers (the runtime's arbiter client keeps
/// the pairing: one RPC per request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseRequestId(pub u64);

/// A request the runtime must send to the arbiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Echoed by the runtime in the reply.
    pub id: LeaseRequestId,
    /// The term the lease is for.
    pub term: Term,
    /// The requesting node.
    pub node_id: NodeId,
    /// The lease length asked for.
    pub duration: Duration,
}

/// The arbiter's answer, as the runtime reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseReply {
    /// Granted for `valid_for`, counted from the arbiter's receipt of the request.
    Granted {
        /// Length of the grant.
        valid_for: Duration,
    },
    /// Refused.
    Denied {
        /// Who holds the lease now.
        holder: NodeId,
        /// The arbiter's current term.
        current_term: Term,
    },
}

/// Where the lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeasePhase {
    /// No lease wanted (paired operation: the peer's confirmation is the release condition).
    Idle,
    /// Asking for the lease of `term`; nothing may be released solo.
    Acquiring {
        /// The term asked for.
        term: Term,
        /// Whether a lease of this term was held before and lapsed.
        lapsed: bool,
    },
    /// Holding the lease of `term` until `expires_at` on this node's clock.
    Held {
        /// The term held.
        term: Term,
        /// Local expiry (request send time + grant - safety margin).
        expires_at: Instant,
    },
    /// The arbiter gave `term` (or a newer one) to someone else. Terminal: this node's state is
    /// behind the holder's, so it must never run solo again without re-protection.
    Deposed {
        /// The term this node asked for.
        term: Term,
        /// The holder the arbiter named.
        holder: NodeId,
        /// The arbiter's current term.
        current_term: Term,
    },
}

/// A change worth reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease of `term` is held (first grant, or after a lapse).
    Acquired {
        /// The term.
        term: Term,
        /// Local expiry.
        expires_at: Instant,
    },
    /// The lease of `term` expired locally before a renewal arrived: stop releasing.
    Lapsed {
        /// The term.
        term: Term,
    },
    /// The arbiter gave the term to another node.
    Deposed {
        /// The term asked for.
        term: Term,
        /// The holder.
        holder: NodeId,
        /// The arbiter's current term.
        current_term: Term,
    },
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Requests sent.
    pub requests: u64,
    /// Grants accepted.
    pub grants: u64,
    /// Denials that only mean "busy, retry" (an older term's lease is still running).
    pub busy_denials: u64,
    /// Replies whose id was unknown (duplicates, forgotten requests): ignored.
    pub unknown_replies: u64,
    /// Grants too short to outlast the safety margin: ignored.
    pub useless_grants: u64,
    /// Local expiries.
    pub lapses: u64,
}

/// How many unanswered requests are remembered; older ones are forgotten (their late replies
/// are then ignored, which is always safe).
const MAX_OUTSTANDING: usize = 8;

/// The holder side of the fencing lease.
#[derive(Debug)]
pub struct Lease {
    config: LeaseConfig,
    node_id: NodeId,
    phase: LeasePhase,
    /// Unanswered requests of the current term: id -> send time.
    outstanding: BTreeMap<LeaseRequestId, Instant>,
    next_id: u64,
    /// When to send the next request (acquire retry or renewal).
    next_request_at: Option<Instant>,
    pending_requests: Vec<LeaseRequest>,
    events: Vec<LeaseEvent>,
    stats: LeaseStats,
    now: Instant,
}

impl Lease {
    /// A lease holder for `node_id`, idle.
    pub fn new(
        config: LeaseConfig,
        node_id: NodeId,
        now: Instant,
    ) -> Result<Lease, LeaseConfigError> {
        config.validate()?;
        Ok(Lease {
            config,
            node_id,
            phase: LeasePhase::Idle,
            outstanding: BTreeMap::new(),
            next_id: 1,
            next_request_at: None,
            pending_requests: Vec::new(),
            events: Vec::new(),
            stats: LeaseStats::default(),
            now,
        })
    }

    /// Where the lease stands.
    pub fn phase(&self) -> LeasePhase {
        self.phase
    }

    /// Counters.
    pub fn stats(&self) -> LeaseStats {
        self.stats
    }

    /// Whether this node may release output without its peer at `now`.
    pub fn may_release(&self, now: Instant) -> bool {
        matches!(self.phase, LeasePhase::Held { expires_at, .. } if now < expires_at)
    }

    /// Start asking for the lease of `term` (a takeover). Ignored once deposed, or if a lease
    /// of this term or a newer one is already wanted.
    pub fn handle_acquire(&mut self, now: Instant, term: Term) {
        self.advance(now);
        let current = match self.phase {
            LeasePhase::Deposed { .. } => return,
            LeasePhase::Idle => None,
            LeasePhase::Acquiring { term, .. } | LeasePhase::Held { term, .. } => Some(term),
        };
        if current.is_some_and(|t| t >= term) {
            return;
        }
        // Idle/Acquiring/Held(older) --acquire(t)--> Acquiring{t}
        self.phase = LeasePhase::Acquiring {
            term,
            lapsed: false,
        };
        self.outstanding.clear();
        self.send_request(now);
    }

    /// Stop wanting the lease (paired again after re-protection, or shutting down). Unanswered
    /// requests are forgotten, so a late grant cannot revive it.
    pub fn handle_release(&mut self, now: Instant) {
        self.advance(now);
        if matches!(self.phase, LeasePhase::Deposed { .. }) {
            return;
        }
        // any --release--> Idle
        self.phase = LeasePhase::Idle;
        self.outstanding.clear();
        self.next_request_at = None;
    }

    /// The arbiter answered request `id`.
    pub fn handle_reply(&mut self, now: Instant, id: LeaseRequestId, reply: LeaseReply) {
        self.advance(now);
        let Some(sent_at) = self.outstanding.remove(&id) else {
            self.stats.unknown_replies += 1;
            return;
        };
        let term = match self.phase {
            LeasePhase::Acquiring { term, .. } | LeasePhase::Held { term, .. } => term,
            LeasePhase::Idle | LeasePhase::Deposed { .. } => {
                self.stats.unknown_replies += 1;
                return;
            }
        };
        match reply {
            LeaseReply::Granted { valid_for } => {
                // Counted from the send time: the arbiter received the request after that.
                let usable = valid_for
                    .min(self.config.lease_duration)
                    .saturating_sub(self.config.lease_safety_margin);
                if usable.is_zero() {
                    self.stats.useless_grants += 1;
                    return;
                }
                let expires_at = sent_at + usable;
                if expires_at <= now {
                    // Answered too late to be of use; the retry timer keeps asking.
                    self.stats.useless_grants += 1;
                    return;
                }
                self.stats.grants += 1;
                let was_held = match self.phase {
                    LeasePhase::Held {
                        expires_at: old, ..
                    } => Some(old),
                    _ => None,
                };
                let expires_at = was_held.map_or(expires_at, |old| old.max(expires_at));
                // Acquiring --grant--> Held ; Held --grant--> Held (extended)
                self.phase = LeasePhase::Held { term, expires_at };
                if was_held.is_none() {
                    self.events.push(LeaseEvent::Acquired { term, expires_at });
                }
                // Renew halfway through what is left, so one lost renewal still leaves time.
                let remaining = expires_at.saturating_duration_since(now);
                self.next_request_at = Some(now + remaining / 2);
            }
            LeaseReply::Denied {
                holder,
                current_term,
            } => {
                if current_term >= term {
                    // Someone else has this term or a newer one: deposed, for good.
                    // Acquiring/Held --denied(newer or equal term)--> Deposed
                    self.phase = LeasePhase::Deposed {
                        term,
                        holder,
                        current_term,
                    };
                    self.outstanding.clear();
                    self.next_request_at = None;
                    self.events.push(LeaseEvent::Deposed {
                        term,
                        holder,
                        current_term,
                    });
                } else {
                    // An older term's lease still runs (its holder stopped renewing when it
                    // paired up): retry when the request timer fires.
                    self.stats.busy_denials += 1;
                }
            }
        }
    }

    /// A deadline may have passed. Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if let LeasePhase::Held { term, expires_at } = self.phase
            && now >= expires_at
        {
            // Held --local expiry--> Acquiring{lapsed}
            self.phase = LeasePhase::Acquiring { term, lapsed: true };
            self.stats.lapses += 1;
            self.events.push(LeaseEvent::Lapsed { term });
        }
        if self.next_request_at.is_some_and(|at| now >= at) {
            self.send_request(now);
        }
    }

    /// The next request to hand to the arbiter.
    pub fn poll_request(&mut self) -> Option<LeaseRequest> {
        if self.pending_requests.is_empty() {
            None
        } else {
            Some(self.pending_requests.remove(0))
        }
    }

    /// The next change to report.
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The next deadline: a request to (re)send or a local expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = match self.phase {
            LeasePhase::Held { expires_at, .. } => Some(expires_at),
            _ => None,
        };
        match (expiry, self.next_request_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn send_request(&mut self, now: Instant) {
        let term = match self.phase {
            LeasePhase::Acquiring { term, .. } | LeasePhase::Held { term, .. } => term,
            LeasePhase::Idle | LeasePhase::Deposed { .. } => return,
        };
        let id = LeaseRequestId(self.next_id);
        self.next_id += 1;
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_first();
        }
        self.outstanding.insert(id, now);
        self.pending_requests.push(LeaseRequest {
            id,
            term,
            node_id: self.node_id,
            duration: self.config.lease_duration,
        });
        self.stats.requests += 1;
        self.next_request_at = Some(now + self.config.lease_request_timeout);
    }

    fn advance(&mut self, now: Instant) {
        assert!(
            now >= self.now,
            "time went backwards: the caller must pass a monotone `now` ({now:?} < {:?})",
            self.now
        );
        self.now = now;
    }
}
