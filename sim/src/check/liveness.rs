//! Checker 7, liveness: after the faults stop, checkpoints complete and every client makes
//! progress within a stated bound.
//!
//! Bounds ([`LivenessBounds`]): a checkpoint completes within `checkpoint_within` of
//! `FaultsStopped` (when checkpoints are expected at all), and every client that had work left
//! completes at least one more request within `progress_within`, and finishes its workload by
//! the end of the run if `require_finish` holds. A run with no `FaultsStopped` event is reported
//! (the runner never reached the liveness phase).

use colo_core::time::{Duration, Instant};

use crate::client::History;
use crate::trace::{Trace, TraceEvent, Violation};

/// This checker's name.
pub const NAME: &str = "liveness";

/// The stated bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessBounds {
    /// A checkpoint completes within this of the faults stopping.
    pub checkpoint_within: Option<Duration>,
    /// Every unfinished client completes a request within this of the faults stopping.
    pub progress_within: Duration,
    /// Every client finished its workload by the end of the run.
    pub require_finish: bool,
}

/// Checks the liveness phase of `trace` and the clients' histories.
pub fn check(trace: &Trace, histories: &[&History], bounds: LivenessBounds) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(stopped) = trace.events.iter().find_map(|e| match e {
        TraceEvent::FaultsStopped { at } => Some(*at),
        _ => None,
    }) else {
        return vec![Violation {
            checker: NAME,
            at: trace.events.last().map_or(Instant::ZERO, TraceEvent::at),
            what: "the run never reached its liveness phase".to_owned(),
        }];
    };
    if let Some(within) = bounds.checkpoint_within {
        let done = trace.events.iter().any(|e| {
            matches!(e, TraceEvent::CheckpointDone { at, .. }
                if *at >= stopped && *at <= stopped + within)
        });
        if !done {
            out.push(Violation {
                checker: NAME,
                at: stopped + within,
                what: format!("no checkpoint completed within {within:?} after faults stopped"),
            });
        }
    }
    for (i, h) in histories.iter().enumerate() {
        let finished_before = h
            .ops
            .iter()
            .all(|op| op.completion.as_ref().is_some_and(|c| c.at < stopped));
        if finished_before && !h.ops.is_empty() {
            continue;
        }
        let deadline = stopped + bounds.progress_within;
        let progressed = h.ops.iter().any(|op| {
            op.completion
                .as_ref()
                .is_some_and(|c| c.at >= stopped && c.at <= deadline)
        });
        if !progressed {
            out.push(Violation {
                checker: NAME,
                at: deadline,
                what: format!(
                    "client {i} completed no request within {:?} after faults stopped",
                    bounds.progress_within
                ),
            });
        }
        if bounds.require_finish && h.pending() > 0 {
            out.push(Violation {
                checker: NAME,
                at: deadline,
                what: format!(
                    "client {i} has {} requests unanswered at the end",
                    h.pending()
                ),
            });
        }
    }
    out
}
