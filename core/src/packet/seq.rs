//! TCP sequence numbers: 32-bit values compared modulo 2^32 (RFC 9293 section 3.4).
//!
//! Invariant kept: all arithmetic wraps and every ordering is the RFC's "serial number" order,
//! valid while the two numbers are less than 2^31 apart.

use core::cmp::Ordering;
use core::fmt;
use serde::{Deserialize, Serialize};

/// A TCP sequence or acknowledgment number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// `self + n`, wrapping.
    #[inline]
    pub fn wrapping_add(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(n))
    }

    /// The signed distance from `other` to `self` (positive if `self` is after `other`).
    #[inline]
    pub fn diff(self, other: SeqNum) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// The offset that maps `from` onto `to`: `from.wrapping_add(offset) == to`.
    #[inline]
    pub fn offset_to(from: SeqNum, to: SeqNum) -> u32 {
        to.0.wrapping_sub(from.0)
    }

    /// Serial-number order: `Less` if `self` comes before `other`.
    #[inline]
    pub fn cmp_seq(self, other: SeqNum) -> Ordering {
        self.diff(other).cmp(&0)
    }

    /// True if `self` comes strictly before `other`.
    #[inline]
    pub fn before(self, other: SeqNum) -> bool {
        self.diff(other) < 0
    }

    /// True if `self` comes at or after `other`.
    #[inline]
    pub fn at_or_after(self, other: SeqNum) -> bool {
        self.diff(other) >= 0
    }

    /// The later of the two in serial-number order.
    #[inline]
    pub fn max_seq(self, other: SeqNum) -> SeqNum {
        if self.before(other) { other } else { self }
    }

    /// The earlier of the two in serial-number order.
    #[inline]
    pub fn min_seq(self, other: SeqNum) -> SeqNum {
        if self.before(other) { self } else { other }
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_wraps_around_zero() {
        let near_end = SeqNum(u32::MAX - 10);
        let wrapped = near_end.wrapping_add(20);
        assert_eq!(wrapped, SeqNum(9));
        assert!(near_end.before(wrapped));
        assert!(wrapped.at_or_after(near_end));
        assert_eq!(wrapped.diff(near_end), 20);
        assert_eq!(near_end.max_seq(wrapped), wrapped);
        assert_eq!(near_end.min_seq(wrapped), near_end);
    }

    #[test]
    fn offset_maps_one_numbering_onto_another() {
        let (a, b) = (SeqNum(4_000_000_000), SeqNum(17));
        let off = SeqNum::offset_to(a, b);
        assert_eq!(a.wrapping_add(off), b);
        assert_eq!(b.wrapping_add(off.wrapping_neg()), a);
    }
}
