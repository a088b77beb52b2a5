//! Time as the core sees it: an opaque, monotonic nanosecond count chosen by the runtime.
//!
//! The core never reads a clock. Every input carries `now`, and every machine compares it with
//! deadlines it computed earlier. The invariant kept here: `Instant` arithmetic saturates instead
//! of overflowing or panicking, so a hostile or buggy duration can never crash a machine.

use core::fmt;
use core::ops::{Add, AddAssign};
pub use core::time::Duration;
use serde::{Deserialize, Serialize};

/// A point in time, in nanoseconds since an origin the runtime picked (its start, usually).
///
/// Only differences between two `Instant`s of the same runtime mean anything.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// An instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// An instant `millis` milliseconds after the origin (saturating).
    pub const fn from_millis(millis: u64) -> Instant {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t+{}.{:09}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        let end = Instant::from_nanos(u64::MAX - 1);
        assert_eq!(end + Duration::from_secs(10), Instant::from_nanos(u64::MAX));
        assert_eq!(Instant::ZERO.saturating_duration_since(end), Duration::ZERO);
        assert_eq!(Instant::ZERO + Duration::MAX, Instant::from_nanos(u64::MAX));
    }

    #[test]
    fn duration_since_measures_forward_time() {
        let a = Instant::from_millis(5);
        let b = a + Duration::from_micros(1500);
        assert_eq!(b.saturating_duration_since(a), Duration::from_micros(1500));
        assert_eq!(format!("{b:?}"), "t+0.006500000s");
    }
}
