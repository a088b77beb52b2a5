//! The runtime's one clock: a monotonic clock read as colo-core time (`colo_core::time::Instant`,
//! nanoseconds since the clock started), shared by the node loop and the arbiter.
//!
//! Invariant kept: the time it hands out never goes backwards (std's monotonic `Instant`),
//! which colo-core's machines require of every `now` they are fed.

use colo_core::time::Instant;
use std::time::Duration;

/// A monotonic clock as colo-core time, counted from the clock's creation.
#[derive(Clone, Copy, Debug)]
pub struct MonoClock(std::time::Instant);

impl MonoClock {
    /// Starts the clock at [`Instant::ZERO`].
    pub fn start() -> MonoClock {
        MonoClock(std::time::Instant::now())
    }

    /// Now, in colo-core time.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// The std instant of a colo-core instant of this clock.
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.0 + Duration::from_nanos(at.as_nanos())
    }
}
