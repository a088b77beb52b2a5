//! Checker 1, output commit: every byte a client received was produced by a guest state that
//! still exists.
//!
//! A released frame is legitimate in exactly three ways (colo-reference.md, "Output commit";
//! QEMU COLO releases on compare match or after a checkpoint): `Matched` — the secondary
//! produced an identical frame before the release, not used by another match (both VMs reached
//! a state that produced it, so a failover to the SVM keeps it; epochs are not compared because
//! the two checkpointers count an epoch done at different instants); `Covered` — the secondary had
//! *received* (not merely been sent) a checkpoint of an epoch at or after the one the frame was
//! produced in, before the release; `Solo` — the releasing host runs alone (its own state is the
//! only one; single_writer judges its lease). Anything else is reported.

use std::collections::{BTreeMap, BTreeSet};

use colo_core::ids::Epoch;

use crate::trace::{Origin, Trace, TraceEvent, Violation};

/// This checker's name.
pub const NAME: &str = "output_commit";

/// Checks every release in `trace`.
pub fn check(trace: &Trace) -> Vec<Violation> {
    let mut out = Vec::new();
    // Highest epoch the secondary has received so far.
    let mut received: Option<Epoch> = None;
    // Secondary frames seen (digest -> count not yet matched).
    let mut svm: BTreeMap<u64, u32> = BTreeMap::new();
    let mut solo_hosts = BTreeSet::new();
    for e in &trace.events {
        match e {
            TraceEvent::Received { epoch, .. } => {
                received = Some(received.map_or(*epoch, |r| r.max(*epoch)));
            }
            TraceEvent::SvmOutput { digest, .. } => {
                *svm.entry(*digest).or_default() += 1;
            }
            TraceEvent::TermStarted { host, solo, .. } => {
                if *solo {
                    solo_hosts.insert(*host);
                } else {
                    solo_hosts.remove(host);
                }
            }
            TraceEvent::Released {
                at,
                host,
                epoch,
                frame,
                origin,
                ..
            } => match origin {
                Origin::Covered => {
                    if received.is_none_or(|r| r < *epoch) {
                        out.push(Violation {
                            checker: NAME,
                            at: *at,
                            what: format!(
                                "{host} released {frame:?} of epoch {} but the secondary had \
                                 received only up to {received:?}",
                                epoch.0
                            ),
                        });
                    }
                }
                Origin::Matched { svm_digest } => {
                    let slot = svm.get_mut(svm_digest).filter(|n| **n > 0);
                    match slot {
                        Some(n) => *n -= 1,
                        None => out.push(Violation {
                            checker: NAME,
                            at: *at,
                            what: format!(
                                "{host} released {frame:?} (epoch {}) as matched, but the secondary \
                                 produced no unmatched frame {svm_digest:#x} before",
                                epoch.0
                            ),
                        }),
                    }
                }
                // No new payload byte: nothing for this checker to trace back to a state.
                // A stream match was verified byte by byte by the harness that emitted it.
                Origin::Uncompared | Origin::MatchedStream => {}
                Origin::Solo => {
                    if !solo_hosts.contains(host) {
                        out.push(Violation {
                            checker: NAME,
                            at: *at,
                            what: format!("{host} released {frame:?} solo while paired"),
                        });
                    }
                }
            },
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::Host;
    use crate::trace::FrameId;
    use colo_core::ids::Term;
    use colo_core::time::Instant;

    fn release(at: u64, epoch: u64, origin: Origin) -> TraceEvent {
        TraceEvent::Released {
            at: Instant::from_millis(at),
            host: Host::A,
            term: Term(1),
            epoch: Epoch(epoch),
            frame: FrameId(at),
            digest: 7,
            origin,
        }
    }

    #[test]
    fn release_after_received_passes() {
        let mut t = Trace::new();
        t.push(TraceEvent::Received {
            at: Instant::from_millis(1),
            epoch: Epoch(2),
        });
        t.push(release(2, 2, Origin::Covered));
        assert!(check(&t).is_empty());
    }

    #[test]
    fn release_before_received_is_caught() {
        let mut t = Trace::new();
        t.push(release(1, 2, Origin::Covered));
        t.push(TraceEvent::Received {
            at: Instant::from_millis(2),
            epoch: Epoch(2),
        });
        let v = check(&t);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].checker, NAME);
    }

    #[test]
    fn a_match_needs_an_earlier_secondary_frame_and_consumes_it() {
        let mut t = Trace::new();
        t.push(TraceEvent::SvmOutput {
            at: Instant::from_millis(1),
            epoch: Epoch(1),
            digest: 9,
        });
        t.push(release(2, 1, Origin::Matched { svm_digest: 9 }));
        assert!(check(&t).is_empty());
        // A second release against the same single secondary frame is not matched.
        t.push(release(3, 1, Origin::Matched { svm_digest: 9 }));
        assert_eq!(check(&t).len(), 1);
    }

    #[test]
    fn solo_release_while_paired_is_caught() {
        let mut t = Trace::new();
        t.push(TraceEvent::TermStarted {
            at: Instant::ZERO,
            host: Host::A,
            term: Term(1),
            solo: false,
        });
        t.push(release(1, 1, Origin::Solo));
        assert_eq!(check(&t).len(), 1);
    }
}
