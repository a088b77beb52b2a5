//! Checker 2, atomic checkpoint: no partially applied epoch.
//!
//! An `Applied(e)` is legitimate only if the secondary had `Received(e)` (every batch and the
//! device state, matched against `CheckpointSent(e)`'s totals) and was not told to discard `e`
//! first, if it applied exactly the pages the primary said it sent, and if epochs are applied in
//! increasing order (an older epoch applied after a newer one is a rollback of the SVM). This is
//! colo-core's checkpoint invariant seen from outside (core/src/checkpoint/mod.rs).

use std::collections::BTreeSet;

use colo_core::ids::Epoch;

use crate::trace::{Trace, TraceEvent, Violation};

/// This checker's name.
pub const NAME: &str = "atomic_checkpoint";

/// Checks every apply in `trace`.
pub fn check(trace: &Trace) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut received = BTreeSet::new();
    let mut discarded = BTreeSet::new();
    let mut last_applied: Option<Epoch> = None;
    for e in &trace.events {
        match e {
            TraceEvent::Received { epoch, .. } => {
                received.insert(*epoch);
            }
            TraceEvent::Discarded { epoch, .. } => {
                discarded.insert(*epoch);
            }
            TraceEvent::Reprotected { .. } => {
                received.clear();
                discarded.clear();
            }
            TraceEvent::Applied {
                at,
                epoch,
                pages_applied,
                pages_expected,
                ..
            } => {
                let mut bad = |what: String| {
                    out.push(Violation {
                        checker: NAME,
                        at: *at,
                        what,
                    })
                };
                if !received.contains(epoch) {
                    bad(format!("epoch {} applied before it was received", epoch.0));
                }
                if discarded.contains(epoch) {
                    bad(format!("epoch {} applied after it was discarded", epoch.0));
                }
                if pages_applied != pages_expected {
                    bad(format!(
                        "epoch {} applied {pages_applied} of {pages_expected} pages",
                        epoch.0
                    ));
                }
                if last_applied.is_some_and(|l| l >= *epoch) {
                    bad(format!(
                        "epoch {} applied after epoch {}",
                        epoch.0,
                        last_applied.map_or(0, |l| l.0)
                    ));
                }
                last_applied = Some(*epoch);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_core::time::Instant;

    fn applied(at: u64, epoch: u64, pages: u64, expected: u64) -> TraceEvent {
        TraceEvent::Applied {
            at: Instant::from_millis(at),
            epoch: Epoch(epoch),
            state_hash: 1,
            disk_hash: 2,
            pages_applied: pages,
            pages_expected: expected,
        }
    }

    fn received(at: u64, epoch: u64) -> TraceEvent {
        TraceEvent::Received {
            at: Instant::from_millis(at),
            epoch: Epoch(epoch),
        }
    }

    #[test]
    fn whole_epochs_in_order_pass() {
        let mut t = Trace::new();
        t.push(received(1, 1));
        t.push(applied(2, 1, 10, 10));
        t.push(received(3, 2));
        t.push(applied(4, 2, 3, 3));
        assert!(check(&t).is_empty());
    }

    #[test]
    fn partial_epoch_is_caught() {
        let mut t = Trace::new();
        t.push(received(1, 1));
        t.push(applied(2, 1, 9, 10));
        let v = check(&t);
        assert_eq!(v.len(), 1);
        assert!(v[0].what.contains("9 of 10"));
    }

    #[test]
    fn apply_without_receive_or_after_discard_or_out_of_order_is_caught() {
        let mut t = Trace::new();
        t.push(applied(1, 1, 1, 1));
        assert_eq!(check(&t).len(), 1);
        let mut t = Trace::new();
        t.push(received(1, 1));
        t.push(TraceEvent::Discarded {
            at: Instant::from_millis(2),
            epoch: Epoch(1),
        });
        t.push(applied(3, 1, 1, 1));
        assert_eq!(check(&t).len(), 1);
        let mut t = Trace::new();
        t.push(received(1, 2));
        t.push(applied(2, 2, 1, 1));
        t.push(received(3, 1));
        t.push(applied(4, 1, 1, 1));
        assert_eq!(check(&t).len(), 1);
    }

    #[test]
    fn a_re_protected_secondary_may_apply_an_epoch_its_predecessor_discarded_but_must_receive_it() {
        let discard_then_restart = |t: &mut Trace| {
            t.push(received(1, 5));
            t.push(TraceEvent::Discarded {
                at: Instant::from_millis(2),
                epoch: Epoch(6),
            });
            t.push(TraceEvent::Reprotected {
                at: Instant::from_millis(3),
                host: crate::swarm::Host::B,
                epoch: Epoch(6),
            });
        };
        let mut t = Trace::new();
        discard_then_restart(&mut t);
        t.push(received(4, 6));
        t.push(applied(5, 6, 1, 1));
        assert!(check(&t).is_empty(), "{:?}", check(&t));
        // The old pairing's receipt of epoch 5 does not count for the newcomer.
        let mut t = Trace::new();
        discard_then_restart(&mut t);
        t.push(applied(5, 5, 1, 1));
        assert_eq!(check(&t).len(), 1);
    }
}
