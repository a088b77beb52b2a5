//! The arbiter host: colo-core's [`Arbiter`] behind the simulated network, answering lease
//! requests from the hosts that reach it.
//!
//! Invariant kept: the arbiter only sees requests that crossed the (possibly partitioned)
//! host-arbiter link; the platform reports every grant as a `Lease` trace event with the
//! instant it expires, which is what the single-writer checker judges solo releases against.

use colo_core::failover::{Arbiter, LeaseReply};
use colo_core::ids::{NodeId, Term};
use colo_core::time::{Duration, Instant};

use crate::swarm::Host;
use crate::trace::TraceEvent;

/// The simulated arbiter host.
#[derive(Debug)]
pub struct ArbiterNode {
    arbiter: Arbiter,
}

/// The node id a host uses towards the arbiter.
pub fn node_id(host: Host) -> NodeId {
    match host {
        Host::A => NodeId(1),
        Host::B => NodeId(2),
    }
}

impl ArbiterNode {
    /// An arbiter granting at most `max_lease`.
    pub fn new(max_lease: Duration, now: Instant) -> ArbiterNode {
        ArbiterNode {
            arbiter: Arbiter::new(max_lease, now),
        }
    }

    /// `host` asks for the lease of `term` for `duration`; returns the reply and, when granted,
    /// the trace event recording the grant.
    pub fn handle_request(
        &mut self,
        now: Instant,
        host: Host,
        term: Term,
        duration: Duration,
    ) -> (LeaseReply, Option<TraceEvent>) {
        let reply = self
            .arbiter
            .handle_request(now, term, node_id(host), duration);
        let event = match reply {
            LeaseReply::Granted { valid_for } => Some(TraceEvent::Lease {
                at: now,
                host,
                term,
                until: now + valid_for,
            }),
            _ => None,
        };
        (reply, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_term_is_leased_to_one_host_at_a_time() {
        let mut a = ArbiterNode::new(Duration::from_secs(1), Instant::ZERO);
        let (r, ev) = a.handle_request(Instant::ZERO, Host::B, Term(2), Duration::from_secs(5));
        assert!(
            matches!(r, LeaseReply::Granted { valid_for } if valid_for == Duration::from_secs(1))
        );
        assert!(matches!(ev, Some(TraceEvent::Lease { host: Host::B, .. })));
        let (r, ev) = a.handle_request(
            Instant::from_millis(10),
            Host::A,
            Term(2),
            Duration::from_secs(1),
        );
        assert!(!matches!(r, LeaseReply::Granted { .. }));
        assert!(ev.is_none());
    }
}
