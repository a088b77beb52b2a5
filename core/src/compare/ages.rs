//! The arrival ring: when each held frame arrived, in arrival order, for `compare_timeout`.
//!
//! Every held frame (primary or secondary, any flow) gets the next [`FrameId`] and a slot at the
//! back of a ring. Releasing or dropping the frame empties its slot; empty slots at the front are
//! popped. Because `now` never goes backwards, slot order is arrival order, so the first live
//! slot is the oldest held frame and its arrival plus `compare_timeout` is the earliest
//! comparison deadline over all flows: found in O(1) amortized, with no periodic scan (QEMU scans
//! every connection every `expired_scan_cycle`, 1000 ms).
//!
//! Invariant kept: the ring's front slot is live (or the ring is empty), and `fired` (the first
//! id that has not yet timed out) is either past the ring or points at a live slot, so the next
//! deadline is read without scanning released frames. A frame fires at most once.

use crate::time::{Duration, Instant};
use std::collections::VecDeque;

/// Arrival number of a held frame, unique over the comparator's lifetime.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FrameId(pub u64);

#[derive(Debug, Default)]
pub(crate) struct Ages {
    /// Id of the ring's front slot.
    base: u64,
    /// Arrival time per held frame; `None` once released or dropped.
    slots: VecDeque<Option<Instant>>,
    /// First id that has not yet been reported as timed out.
    fired: u64,
}

impl Ages {
    pub(crate) fn with_capacity(capacity: usize) -> Ages {
        Ages {
            base: 0,
            slots: VecDeque::with_capacity(capacity),
            fired: 0,
        }
    }

    fn end(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// Registers a newly held frame.
    pub(crate) fn hold(&mut self, now: Instant) -> FrameId {
        let id = self.end();
        self.slots.push_back(Some(now));
        FrameId(id)
    }

    /// The frame left the comparator (released or dropped).
    #[inline]
    pub(crate) fn forget(&mut self, id: FrameId) {
        let Some(at) = id.0.checked_sub(self.base) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(at as usize) {
            *slot = None;
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        self.fired = self.fired.max(self.base);
        self.skip_dead_fired();
    }

    fn skip_dead_fired(&mut self) {
        while self.fired < self.end() && self.slots[(self.fired - self.base) as usize].is_none() {
            self.fired += 1;
        }
    }

    /// Every held frame left at once (checkpoint or release_all).
    pub(crate) fn clear(&mut self) {
        self.base = self.end();
        self.slots.clear();
        self.fired = self.base;
    }

    /// Deadline of the oldest frame that has not yet timed out.
    pub(crate) fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.fired >= self.end() {
            return None;
        }
        self.slots[(self.fired - self.base) as usize].map(|arrival| arrival + timeout)
    }

    /// Marks every frame whose deadline is at or before `now` as timed out; returns how many.
    pub(crate) fn expire(&mut self, now: Instant, timeout: Duration) -> u64 {
        let mut expired = 0;
        while let Some(deadline) = self.next_deadline(timeout) {
            if deadline > now {
                break;
            }
            expired += 1;
            self.fired += 1;
            self.skip_dead_fired();
        }
        expired
    }

    /// Frames held now.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_live_frame_sets_the_deadline() {
        let timeout = Duration::from_secs(3);
        let mut ages = Ages::default();
        let a = ages.hold(Instant::from_millis(10));
        let b = ages.hold(Instant::from_millis(20));
        assert_eq!(
            ages.next_deadline(timeout),
            Some(Instant::from_millis(3010))
        );
        ages.forget(a);
        assert_eq!(
            ages.next_deadline(timeout),
            Some(Instant::from_millis(3020))
        );
        ages.forget(b);
        assert_eq!(ages.next_deadline(timeout), None);
        assert_eq!(ages.live(), 0);
    }

    #[test]
    fn each_frame_times_out_once() {
        let timeout = Duration::from_secs(1);
        let mut ages = Ages::default();
        let a = ages.hold(Instant::from_millis(0));
        let b = ages.hold(Instant::from_millis(500));
        let c = ages.hold(Instant::from_millis(900));
        ages.forget(b);
        assert_eq!(ages.expire(Instant::from_millis(999), timeout), 0);
        assert_eq!(ages.expire(Instant::from_millis(1000), timeout), 1);
        assert_eq!(ages.expire(Instant::from_millis(1000), timeout), 0);
        assert_eq!(
            ages.next_deadline(timeout),
            Some(Instant::from_millis(1900))
        );
        // Forgetting a frame that already fired does not move the deadline backwards.
        ages.forget(a);
        assert_eq!(
            ages.next_deadline(timeout),
            Some(Instant::from_millis(1900))
        );
        assert_eq!(ages.expire(Instant::from_millis(5000), timeout), 1);
        assert_eq!(ages.next_deadline(timeout), None);
        ages.forget(c);
        assert_eq!(ages.live(), 0);
    }
}
