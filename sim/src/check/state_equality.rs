//! Checker 3, state equality: after each applied checkpoint, the SVM's guest state and disk equal
//! the PVM's at that epoch's pause.
//!
//! The platform records `Paused(e)` with the PVM's `Guest::state_hash` (every socket's full TCP
//! state, the application, the disk) and `disk_hash`, and `Applied(e)` with the SVM's after the
//! load; they must be equal. An `Applied(e)` with no `Paused(e)` is also reported: the SVM loaded
//! a state the primary never paused in.
//!
//! The SVM's view of the network is part of its state: once it holds the PVM's TCP state it
//! numbers its bytes like the PVM, so the secondary's sequence translation (QEMU
//! filter-rewriter, reset at every checkpoint) must be the identity for every connection. The
//! Node engine records it as `Translation(e)` when the load is ordered; one with a skewed
//! connection is reported (a stale offset would shift every later segment of the SVM, and a
//! survivor's segments to the clients).
//!
//! The simulated SVM loads the PVM's snapshot whole, so a page the primary leaves out of a
//! checkpoint cannot change its state here as it would in the real runtime's RAM cache. The
//! host therefore records `PagesOrdered(e)` with the pages its VM collected since the last
//! completed checkpoint that `e`'s `SendPages` does not carry (an attempt that aborted after
//! the collection cleared the dirty log owes its pages to the retry); any is reported.

use std::collections::BTreeMap;

use crate::trace::{Trace, TraceEvent, Violation};

/// This checker's name.
pub const NAME: &str = "state_equality";

/// Checks every apply in `trace` against its pause.
pub fn check(trace: &Trace) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut paused = BTreeMap::new();
    for e in &trace.events {
        match e {
            TraceEvent::Paused {
                epoch,
                state_hash,
                disk_hash,
                ..
            } => {
                paused.insert(*epoch, (*state_hash, *disk_hash));
            }
            TraceEvent::Translation { at, epoch, skewed } if *skewed > 0 => {
                out.push(Violation {
                    checker: NAME,
                    at: *at,
                    what: format!(
                        "epoch {}: the SVM holds the PVM's TCP state but {skewed} connection(s) \
                         still translate with a non-zero sequence offset",
                        epoch.0
                    ),
                });
            }
            TraceEvent::PagesOrdered { at, epoch, missing } if *missing > 0 => {
                out.push(Violation {
                    checker: NAME,
                    at: *at,
                    what: format!(
                        "epoch {}: the primary sends its pages without {missing} page(s) collected \
                         since the last completed checkpoint, which the SVM then never receives",
                        epoch.0
                    ),
                });
            }
            TraceEvent::Applied {
                at,
                epoch,
                state_hash,
                disk_hash,
                ..
            } => match paused.get(epoch) {
                None => out.push(Violation {
                    checker: NAME,
                    at: *at,
                    what: format!("epoch {} applied but the PVM never paused for it", epoch.0),
                }),
                Some((s, d)) => {
                    if s != state_hash {
                        out.push(Violation {
                            checker: NAME,
                            at: *at,
                            what: format!(
                                "epoch {}: SVM state {state_hash:#x} != PVM state at pause {s:#x}",
                                epoch.0
                            ),
                        });
                    }
                    if d != disk_hash {
                        out.push(Violation {
                            checker: NAME,
                            at: *at,
                            what: format!(
                                "epoch {}: SVM disk {disk_hash:#x} != PVM disk at pause {d:#x}",
                                epoch.0
                            ),
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
    use crate::guest::Guest;
    use crate::rng::SimRng;
    use crate::world::{World, WorldSpec};
    use colo_core::ids::Epoch;
    use colo_core::time::Instant;

    fn paused(g: &Guest, at: u64) -> TraceEvent {
        TraceEvent::Paused {
            at: Instant::from_millis(at),
            epoch: Epoch(1),
            state_hash: g.state_hash(),
            disk_hash: g.disk_hash(),
        }
    }

    fn applied(g: &Guest, at: u64) -> TraceEvent {
        TraceEvent::Applied {
            at: Instant::from_millis(at),
            epoch: Epoch(1),
            state_hash: g.state_hash(),
            disk_hash: g.disk_hash(),
            pages_applied: 0,
            pages_expected: 0,
        }
    }

    #[test]
    fn restored_guest_matches_its_pause_and_a_stale_one_is_caught() {
        let mut world = World::new(4, &WorldSpec::default());
        let answered = |w: &World, n: usize| {
            w.clients
                .iter()
                .map(|c| c.history().completed())
                .sum::<usize>()
                >= n
        };
        world.run_until(Instant::from_millis(5_000), |w| answered(w, 4));
        let stale = world.guest.checkpoint();
        world.run_until(Instant::from_millis(10_000), |w| answered(w, 12));
        let snap = world.guest.checkpoint();
        let pvm = &world.guest;
        let good = Guest::from_snapshot(&snap, SimRng::new(2));
        let mut t = Trace::new();
        t.push(paused(pvm, 1));
        t.push(applied(&good, 2));
        assert!(check(&t).is_empty(), "{:?}", check(&t));

        // Planted bug: the SVM loaded the older snapshot.
        let bad = Guest::from_snapshot(&stale, SimRng::new(2));
        let mut t = Trace::new();
        t.push(paused(pvm, 1));
        t.push(applied(&bad, 2));
        let v = check(&t);
        assert!(v.iter().any(|v| v.what.contains("SVM state")), "{v:?}");
    }

    #[test]
    fn different_hashes_and_unknown_epochs_are_caught() {
        let mut t = Trace::new();
        t.push(TraceEvent::Paused {
            at: Instant::ZERO,
            epoch: Epoch(1),
            state_hash: 1,
            disk_hash: 2,
        });
        t.push(TraceEvent::Applied {
            at: Instant::from_millis(1),
            epoch: Epoch(1),
            state_hash: 1,
            disk_hash: 3,
            pages_applied: 0,
            pages_expected: 0,
        });
        t.push(TraceEvent::Applied {
            at: Instant::from_millis(2),
            epoch: Epoch(2),
            state_hash: 1,
            disk_hash: 2,
            pages_applied: 0,
            pages_expected: 0,
        });
        let v = check(&t);
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn a_skewed_translation_after_a_load_is_caught() {
        let translation = |at, skewed| TraceEvent::Translation {
            at: Instant::from_millis(at),
            epoch: Epoch(3),
            skewed,
        };
        let mut t = Trace::new();
        t.push(translation(1, 0));
        assert!(check(&t).is_empty());
        t.push(translation(2, 2));
        let v = check(&t);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("2 connection(s)"), "{v:?}");
    }

    #[test]
    fn pages_left_out_of_a_checkpoint_are_caught() {
        let ordered = |at, missing| TraceEvent::PagesOrdered {
            at: Instant::from_millis(at),
            epoch: Epoch(4),
            missing,
        };
        let mut t = Trace::new();
        t.push(ordered(1, 0));
        assert!(check(&t).is_empty());
        t.push(ordered(2, 3));
        let v = check(&t);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("without 3 page(s)"), "{v:?}");
    }
}
