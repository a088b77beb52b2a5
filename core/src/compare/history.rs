//! The released-stream history of one TCP flow: the last bytes the client received from the
//! primary, by sequence number, so a primary retransmission can be checked against what was
//! released instead of passing uncompared.
//!
//! Why: a retransmission's bytes lie below the flow's release point, where the secondary's
//! copies were consumed long ago. Released uncompared, a retransmission carrying different
//! bytes (a diverged primary) would reach the client unchecked; the client keeps the first
//! copy it received, but the primary's guest state no longer matches what the client was
//! told, so the difference is a divergence like any other and must cost a checkpoint.
//!
//! Invariant kept: the history holds the contiguous range `[start, start + len)` of bytes
//! released on the flow (matched, or flushed by a checkpoint), at most `bound` bytes, the
//! newest kept; a gap (a release that does not continue it) restarts it at the new range, so
//! a byte it returns is always the byte released at that sequence number.

use crate::packet::SeqNum;
use std::collections::VecDeque;

/// What [`History::check`] found for a retransmitted range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Every byte of the range that the history holds is equal, and it holds the whole range.
    Equal,
    /// The byte at this offset into the checked range differs from the released one.
    Differs(usize),
    /// Part of the range lies outside the history (older than its bound, or never recorded):
    /// it cannot be checked.
    Unknown,
}

/// The last released bytes of a flow (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct History {
    start: SeqNum,
    bytes: VecDeque<u8>,
}

impl History {
    fn end(&self) -> SeqNum {
        self.start.wrapping_add(self.bytes.len() as u32)
    }

    /// Forgets everything; the next release starts the history at its own sequence number.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Records released bytes `payload` starting at `seq`, keeping at most `bound` bytes.
    /// Bytes before the current end are already recorded and skipped; a range starting after
    /// the end (a gap) restarts the history.
    #[inline]
    pub(crate) fn record(&mut self, seq: SeqNum, payload: &[u8], bound: usize) {
        if payload.is_empty() {
            return;
        }
        let end = self.end();
        let skip = if self.bytes.is_empty() || end.before(seq) || seq.before(self.start) {
            self.bytes.clear();
            self.start = seq;
            0
        } else {
            end.diff(seq) as usize
        };
        let Some(new) = payload.get(skip..) else {
            return;
        };
        let new = if new.len() > bound {
            &new[new.len() - bound..]
        } else {
            new
        };
        let over = (self.bytes.len() + new.len()).saturating_sub(bound);
        if over >= self.bytes.len() {
            let from = seq.wrapping_add((payload.len() - new.len()) as u32);
            self.bytes.clear();
            self.start = from;
        } else if over > 0 {
            self.bytes.drain(..over);
            self.start = self.start.wrapping_add(over as u32);
        }
        self.bytes.extend(new);
    }

    /// Compares `payload` at `seq` with the released bytes at the same sequence numbers.
    pub(crate) fn check(&self, seq: SeqNum, payload: &[u8]) -> Check {
        if payload.is_empty() {
            return Check::Equal;
        }
        let seg_end = seq.wrapping_add(payload.len() as u32);
        if self.bytes.is_empty() || seq.before(self.start) || self.end().before(seg_end) {
            return Check::Unknown;
        }
        let from = seq.diff(self.start) as usize;
        // Retransmissions are rare: a byte-wise walk over the ring is enough.
        match self
            .bytes
            .range(from..from + payload.len())
            .zip(payload)
            .position(|(x, y)| x != y)
        {
            Some(i) => Check::Differs(i),
            None => Check::Equal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_bytes_are_checked_by_sequence_number() {
        let mut h = History::default();
        h.record(SeqNum(100), b"hello", 64);
        h.record(SeqNum(105), b" world", 64);
        assert_eq!(h.check(SeqNum(102), b"llo w"), Check::Equal);
        assert_eq!(h.check(SeqNum(102), b"llo_w"), Check::Differs(3));
        assert_eq!(h.check(SeqNum(99), b"xh"), Check::Unknown);
        assert_eq!(h.check(SeqNum(110), b"dd"), Check::Unknown);
    }

    #[test]
    fn overlapping_records_keep_the_first_copy_and_gaps_restart() {
        let mut h = History::default();
        h.record(SeqNum(0), b"abcd", 64);
        h.record(SeqNum(2), b"XXef", 64);
        assert_eq!(h.check(SeqNum(0), b"abcdef"), Check::Equal);
        h.record(SeqNum(10), b"gh", 64);
        assert_eq!(h.check(SeqNum(0), b"ab"), Check::Unknown);
        assert_eq!(h.check(SeqNum(10), b"gh"), Check::Equal);
    }

    #[test]
    fn the_bound_keeps_the_newest_bytes_across_wraparound() {
        let mut h = History::default();
        let base = SeqNum(u32::MAX - 3);
        h.record(base, b"012345", 4);
        assert_eq!(h.check(base.wrapping_add(2), b"2345"), Check::Equal);
        assert_eq!(h.check(base.wrapping_add(1), b"1"), Check::Unknown);
        h.record(base.wrapping_add(6), b"67", 4);
        assert_eq!(h.check(base.wrapping_add(4), b"4567"), Check::Equal);
        assert_eq!(h.check(base.wrapping_add(3), b"3"), Check::Unknown);
    }
}
