//! Checker 6, no silent loss: every frame colo held was released or deliberately superseded
//! (and counted), or went down with its host's crash.
//!
//! A frame may also be released at most once. Frames still held when the trace ends are reported
//! if they were held at or before `stale_before` (the runner passes the start of the liveness
//! phase: by the end of it every frame held during the faults must have left); `None` reports
//! every frame still held.

use std::collections::BTreeMap;

use colo_core::time::Instant;

use crate::swarm::Host;
use crate::trace::{FrameId, Trace, TraceEvent, Violation};

/// This checker's name.
pub const NAME: &str = "no_silent_loss";

/// Counts of how held frames ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounts {
    /// Released.
    pub released: u64,
    /// Superseded deliberately.
    pub superseded: u64,
    /// Lost with a crashed host.
    pub crashed: u64,
    /// Still held.
    pub held: u64,
}

/// Follows every held frame to its end; returns the counts and the violations.
pub fn account(trace: &Trace, stale_before: Option<Instant>) -> (LossCounts, Vec<Violation>) {
    let mut out = Vec::new();
    let mut counts = LossCounts::default();
    let mut held: BTreeMap<FrameId, (Host, Instant)> = BTreeMap::new();
    let mut done: BTreeMap<FrameId, ()> = BTreeMap::new();
    let mut last = Instant::ZERO;
    for e in &trace.events {
        last = e.at();
        match e {
            TraceEvent::Held {
                frame, host, at, ..
            } => {
                held.insert(*frame, (*host, *at));
            }
            TraceEvent::Released { at, frame, .. } | TraceEvent::Superseded { at, frame, .. } => {
                if held.remove(frame).is_some() {
                    done.insert(*frame, ());
                    if matches!(e, TraceEvent::Released { .. }) {
                        counts.released += 1;
                    } else {
                        counts.superseded += 1;
                    }
                } else {
                    let what = if done.contains_key(frame) {
                        format!("{frame:?} left colo twice")
                    } else {
                        format!("{frame:?} left colo without having been held")
                    };
                    out.push(Violation {
                        checker: NAME,
                        at: *at,
                        what,
                    });
                }
            }
            TraceEvent::Crash { host, .. } => {
                let before = held.len();
                held.retain(|_, (h, _)| h != host);
                counts.crashed += (before - held.len()) as u64;
            }
            _ => {}
        }
    }
    counts.held = held.len() as u64;
    for (frame, (host, at)) in held {
        if stale_before.is_none_or(|s| at <= s) {
            out.push(Violation {
                checker: NAME,
                at: last,
                what: format!("{frame:?} held by {host} was never released nor superseded"),
            });
        }
    }
    (counts, out)
}

/// The violations of [`account`].
pub fn check(trace: &Trace, stale_before: Option<Instant>) -> Vec<Violation> {
    account(trace, stale_before).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Origin;
    use colo_core::ids::{Epoch, Term};
    use colo_core::time::Instant;

    fn held(at: u64, id: u64) -> TraceEvent {
        TraceEvent::Held {
            at: Instant::from_millis(at),
            host: Host::A,
            frame: FrameId(id),
            epoch: Epoch(1),
        }
    }

    fn released(at: u64, id: u64) -> TraceEvent {
        TraceEvent::Released {
            at: Instant::from_millis(at),
            host: Host::A,
            term: Term(1),
            epoch: Epoch(1),
            frame: FrameId(id),
            digest: 0,
            origin: Origin::Covered,
        }
    }

    #[test]
    fn every_held_frame_accounted_for_passes_and_is_counted() {
        let mut t = Trace::new();
        t.push(held(1, 1));
        t.push(held(1, 2));
        t.push(held(1, 3));
        t.push(released(2, 1));
        t.push(TraceEvent::Superseded {
            at: Instant::from_millis(2),
            host: Host::A,
            frame: FrameId(2),
            reason: "test",
        });
        t.push(TraceEvent::Crash {
            at: Instant::from_millis(3),
            host: Host::A,
        });
        let (c, v) = account(&t, None);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((c.released, c.superseded, c.crashed, c.held), (1, 1, 1, 0));
    }

    #[test]
    fn a_frame_forgotten_or_released_twice_is_caught() {
        let mut t = Trace::new();
        t.push(held(1, 1));
        t.push(held(1, 2));
        t.push(released(2, 1));
        let early = Some(Instant::ZERO);
        assert!(check(&t, early).is_empty(), "held recently: not yet lost");
        assert_eq!(check(&t, None).len(), 1);
        t.push(released(3, 1));
        assert_eq!(check(&t, early).len(), 1);
    }
}
