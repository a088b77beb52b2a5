//! The checkers, one module each, named as in issue 4. Each consumes the run's [`Trace`] (and,
//! for the client-side ones, the clients' `History`s) and returns every [`Violation`] it finds,
//! in trace order; none of them panics on a bad trace, since a bad trace is exactly what they
//! exist to report.
//!
//! Invariant kept: a checker is a pure function of what it is given, so a violation replays with
//! its seed. [`check_safety`] runs every safety checker; [`liveness::check`] is separate because
//! it judges only the liveness phase, and the runner reports its failures with their own exit
//! code.

pub mod atomic_checkpoint;
pub mod liveness;
pub mod no_silent_loss;
pub mod output_commit;
pub mod single_writer;
pub mod state_equality;
pub mod tcp_continuity;

use colo_core::time::Instant;

use crate::client::History;
use crate::trace::{Trace, Violation};

/// Every safety checker over one run, in a fixed order (`stale_before`: see
/// [`no_silent_loss`]).
pub fn check_safety(
    trace: &Trace,
    histories: &[&History],
    stale_before: Option<Instant>,
) -> Vec<Violation> {
    let mut v = Vec::new();
    v.extend(output_commit::check(trace));
    v.extend(atomic_checkpoint::check(trace));
    v.extend(state_equality::check(trace));
    v.extend(tcp_continuity::check(histories));
    v.extend(single_writer::check(trace));
    v.extend(no_silent_loss::check(trace, stale_before));
    v
}
