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
//! How, without copying every released payload: the bytes are kept in a queue of chunks, each
//! a buffer's tail `buf[from..]`. When a pair matched on arrival the secondary's frame carries
//! the very bytes released (they were compared equal), so a large enough payload is kept by
//! *adopting* that frame's buffer (no copy; the buffer goes to the spare pool once evicted
//! instead of at once). Small payloads, and releases without a secondary twin at hand (the
//! general path, checkpoint flushes), are copied into the last chunk's spare capacity or a
//! history-owned buffer, reused once evicted.
//!
//! Invariant kept: the chunks, concatenated, hold the contiguous range `[start, start + len)`
//! of bytes released on the flow (matched, or flushed by a checkpoint), at most `bound` bytes,
//! the newest kept, and no chunk is empty; a gap (a release that does not continue it)
//! restarts it at the new range, so a byte it returns is always the byte released at that
//! sequence number. Which bytes are kept depends only on the recorded ranges, never on whether
//! they were copied or adopted (a property test holds it to a plain byte ring).

use super::flow::Spare;
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

/// Payloads shorter than this are copied, not adopted: a small payload would pin a whole
/// frame buffer (and a chunk record) for a few bytes.
const ADOPT_MIN: usize = 512;

/// A buffer is adopted only if its capacity is at most twice the bytes kept plus this much
/// (the frame's headers and allocator rounding), so adopted memory stays near the bytes kept.
const ADOPT_SLACK: usize = 256;

/// Capacity of a buffer the history allocates to copy payloads into.
const COPY_CHUNK: usize = 512;

/// History-owned copy buffers kept for reuse once evicted; more go to the spare pool.
const FREE_MAX: usize = 2;

/// A run of kept bytes: `buf[from..]`.
#[derive(Debug)]
struct Chunk {
    buf: Vec<u8>,
    from: usize,
    /// Allocated by the history to copy into (reused after eviction); otherwise an adopted
    /// secondary frame buffer, handed to the spare pool when evicted.
    owned: bool,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.from..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.from
    }
}

/// The last released bytes of a flow (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Sequence number of the first kept byte.
    start: SeqNum,
    /// Bytes kept (the chunks' lengths summed).
    len: usize,
    chunks: VecDeque<Chunk>,
    /// Emptied copy buffers for the next copy chunk.
    free: Vec<Vec<u8>>,
}

impl History {
    fn end(&self) -> SeqNum {
        self.start.wrapping_add(self.len as u32)
    }

    /// Forgets everything; the next release starts the history at its own sequence number.
    /// The buffers are recycled (copy buffers kept, adopted ones to `spare`).
    pub(crate) fn clear(&mut self, spare: &mut Spare) {
        while let Some(chunk) = self.chunks.pop_front() {
            self.recycle(chunk, spare);
        }
        self.len = 0;
    }

    fn recycle(&mut self, chunk: Chunk, spare: &mut Spare) {
        if chunk.owned && self.free.len() < FREE_MAX {
            let mut buf = chunk.buf;
            buf.clear();
            self.free.push(buf);
        } else {
            spare.keep(chunk.buf);
        }
    }

    /// Records released bytes `payload` starting at `seq`, keeping at most `bound` bytes, by
    /// copying them. Bytes before the current end are already recorded and skipped; a range
    /// starting after the end (a gap) restarts the history.
    #[inline]
    pub(crate) fn record(&mut self, seq: SeqNum, payload: &[u8], bound: usize, spare: &mut Spare) {
        if let Some(new) = self.make_room(seq, payload, bound, spare) {
            self.append_copy(new);
        }
    }

    /// Like [`record`](Self::record), but `donor[donor_body]` holds the same bytes as the end
    /// of `payload` (the secondary's copy of a matched segment): if the bytes to keep are
    /// large enough and lie within it, the donor buffer is kept instead of copying; else the
    /// bytes are copied and the donor goes to `spare`. Either way the kept bytes are the same.
    #[inline]
    pub(crate) fn record_adopting(
        &mut self,
        seq: SeqNum,
        payload: &[u8],
        bound: usize,
        mut donor: Vec<u8>,
        donor_body: core::ops::Range<usize>,
        spare: &mut Spare,
    ) {
        let Some(new) = self.make_room(seq, payload, bound, spare) else {
            spare.keep(donor);
            return;
        };
        let n = new.len();
        let fits = n >= ADOPT_MIN
            && n <= donor_body.len()
            && donor_body.end <= donor.len()
            && donor.capacity() <= 2 * n + ADOPT_SLACK;
        if !fits {
            self.append_copy(new);
            spare.keep(donor);
            return;
        }
        donor.truncate(donor_body.end);
        let from = donor_body.end - n;
        debug_assert_eq!(&donor[from..], new, "a donor carries the recorded bytes");
        self.chunks.push_back(Chunk {
            buf: donor,
            from,
            owned: false,
        });
        self.len += n;
    }

    /// The recording rule shared by both entry points: restarts the history on a gap, evicts
    /// the oldest bytes so that the new ones fit in `bound`, and returns the part of `payload`
    /// to append (`None` if nothing of it is new).
    fn make_room<'p>(
        &mut self,
        seq: SeqNum,
        payload: &'p [u8],
        bound: usize,
        spare: &mut Spare,
    ) -> Option<&'p [u8]> {
        if payload.is_empty() {
            return None;
        }
        let end = self.end();
        let skip = if self.len == 0 || end.before(seq) || seq.before(self.start) {
            self.clear(spare);
            self.start = seq;
            0
        } else {
            end.diff(seq) as usize
        };
        let new = payload.get(skip..)?;
        let new = if new.len() > bound {
            &new[new.len() - bound..]
        } else {
            new
        };
        let over = (self.len + new.len()).saturating_sub(bound);
        if over >= self.len {
            self.clear(spare);
            self.start = seq.wrapping_add((payload.len() - new.len()) as u32);
        } else if over > 0 {
            self.evict(over, spare);
        }
        (!new.is_empty()).then_some(new)
    }

    /// Drops the oldest `n` bytes (fewer than `len`).
    fn evict(&mut self, n: usize, spare: &mut Spare) {
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let have = front.len();
            if have > left {
                front.from += left;
                break;
            }
            left -= have;
            if let Some(chunk) = self.chunks.pop_front() {
                self.recycle(chunk, spare);
            }
        }
        self.start = self.start.wrapping_add(n as u32);
        self.len -= n;
    }

    /// Appends `new` by copying: into the last chunk if its buffer has room, else into a new
    /// history-owned buffer (a reused one if any).
    fn append_copy(&mut self, new: &[u8]) {
        let n = new.len();
        match self.chunks.back_mut() {
            Some(tail) if tail.buf.capacity() - tail.buf.len() >= n => {
                tail.buf.extend_from_slice(new);
            }
            _ => {
                let mut buf = self.free.pop().unwrap_or_default();
                buf.reserve(n.max(COPY_CHUNK));
                buf.extend_from_slice(new);
                self.chunks.push_back(Chunk {
                    buf,
                    from: 0,
                    owned: true,
                });
            }
        }
        self.len += n;
    }

    /// Compares `payload` at `seq` with the released bytes at the same sequence numbers.
    pub(crate) fn check(&self, seq: SeqNum, payload: &[u8]) -> Check {
        if payload.is_empty() {
            return Check::Equal;
        }
        let seg_end = seq.wrapping_add(payload.len() as u32);
        if self.len == 0 || seq.before(self.start) || self.end().before(seg_end) {
            return Check::Unknown;
        }
        let mut skip = seq.diff(self.start) as usize;
        let mut done = 0;
        for chunk in &self.chunks {
            let bytes = chunk.bytes();
            let Some(part) = bytes.get(skip..).filter(|p| !p.is_empty()) else {
                skip -= bytes.len();
                continue;
            };
            skip = 0;
            let n = part.len().min(payload.len() - done);
            let (kept, given) = (&part[..n], &payload[done..done + n]);
            if kept != given {
                let i = super::flow::first_difference(kept, given);
                return Check::Differs(done + i);
            }
            done += n;
            if done == payload.len() {
                return Check::Equal;
            }
        }
        // Unreachable while `len` sums the chunks: the range was inside `[start, end)`.
        Check::Unknown
    }

    /// The first kept byte's sequence number and the kept bytes in order (tests only).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> (SeqNum, Vec<u8>) {
        let bytes: Vec<u8> = self
            .chunks
            .iter()
            .flat_map(|c| c.bytes())
            .copied()
            .collect();
        assert_eq!(bytes.len(), self.len);
        assert!(self.chunks.iter().all(|c| c.len() > 0), "no empty chunk");
        (self.start, bytes)
    }
}
