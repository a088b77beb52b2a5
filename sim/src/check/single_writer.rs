//! Checker 5, single writer: at most one host releases client output per term, and a host
//! releasing solo holds an unexpired arbiter lease of that term at the instant of release.
//!
//! The lease rule is colo's fencing (core/src/failover: "a node may release solo only under an
//! unexpired lease of its term"): without it, a primary cut from the secondary and a secondary
//! that took over could both release in overlapping windows (split brain).

use std::collections::BTreeMap;

use colo_core::ids::Term;
use colo_core::time::Instant;

use crate::swarm::Host;
use crate::trace::{Origin, Trace, TraceEvent, Violation};

/// This checker's name.
pub const NAME: &str = "single_writer";

/// Checks every release in `trace`.
pub fn check(trace: &Trace) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut writer: BTreeMap<Term, Host> = BTreeMap::new();
    let mut leases: BTreeMap<(Host, Term), Instant> = BTreeMap::new();
    for e in &trace.events {
        match e {
            TraceEvent::Lease {
                host, term, until, ..
            } => {
                let u = leases.entry((*host, *term)).or_insert(*until);
                *u = (*u).max(*until);
            }
            TraceEvent::Released {
                at,
                host,
                term,
                frame,
                origin,
                ..
            } => {
                let first = *writer.entry(*term).or_insert(*host);
                if first != *host {
                    out.push(Violation {
                        checker: NAME,
                        at: *at,
                        what: format!(
                            "{host} released {frame:?} in term {} where {first} already released",
                            term.0
                        ),
                    });
                }
                if *origin == Origin::Solo
                    && leases
                        .get(&(*host, *term))
                        .is_none_or(|until| *until <= *at)
                {
                    out.push(Violation {
                        checker: NAME,
                        at: *at,
                        what: format!(
                            "{host} released {frame:?} solo in term {} without an unexpired lease",
                            term.0
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::FrameId;
    use colo_core::ids::Epoch;

    fn release(at: u64, host: Host, term: u64, origin: Origin) -> TraceEvent {
        TraceEvent::Released {
            at: Instant::from_millis(at),
            host,
            term: Term(term),
            epoch: Epoch(1),
            frame: FrameId(at),
            digest: 0,
            origin,
        }
    }

    #[test]
    fn two_writers_in_one_term_are_caught() {
        let mut t = Trace::new();
        t.push(release(1, Host::A, 1, Origin::Covered));
        t.push(release(2, Host::B, 2, Origin::Covered));
        assert!(check(&t).is_empty());
        t.push(release(3, Host::A, 2, Origin::Covered));
        assert_eq!(check(&t).len(), 1);
    }

    #[test]
    fn solo_release_needs_an_unexpired_lease_of_its_term() {
        let mut t = Trace::new();
        t.push(TraceEvent::Lease {
            at: Instant::ZERO,
            host: Host::B,
            term: Term(2),
            until: Instant::from_millis(10),
        });
        t.push(release(5, Host::B, 2, Origin::Solo));
        assert!(check(&t).is_empty());
        t.push(release(11, Host::B, 2, Origin::Solo));
        assert_eq!(check(&t).len(), 1, "expired lease");
        let mut t = Trace::new();
        t.push(release(1, Host::B, 3, Origin::Solo));
        assert_eq!(check(&t).len(), 1, "no lease at all");
    }
}
