//! TCP stream alignment: payload bytes compared by sequence number, across segment boundaries.
//!
//! QEMU (`colo_compare_tcp`/`colo_mark_tcp_pkt` in net/colo-compare.c) walks the two queues
//! head to head with a per-packet `offset`, so it only copes with boundaries that drift by
//! whole packets. colo treats each side as a byte stream instead:
//!
//! - `committed` is the stream position below which every primary byte has already been
//!   released (matched, retransmitted, or covered by a checkpoint). It starts at the primary's
//!   ISN + 1 when its SYN (or SYN-ACK) is seen, otherwise at the lower of the two sides' first
//!   held data byte once both sides hold data.
//! - Each held primary segment has a `verified` cursor: its bytes before the cursor are equal
//!   to secondary bytes at the same sequence numbers (or lie below `committed`). The cursor
//!   advances over *any* queued secondary segment covering it, so segmentation, coalescing and
//!   re-segmentation on either side do not matter; the first unequal byte is a miscompare.
//! - A primary segment is released when it is fully verified, starts at or below `committed`
//!   (no hole before it: release stays in stream order, so a hole can never be mistaken for a
//!   retransmission later), and passes the min-ACK guard below. `committed` then moves to its
//!   end and secondary segments that end at or below `committed` are consumed.
//!
//! The min-ACK guard (QEMU: "secondary guest hasn't ack the data, don't send out this packet"):
//! a matched primary segment carrying ACK is released only if its ACK is at or below
//! min(highest ACK seen from the primary, highest ACK seen from the secondary) on this flow,
//! so the client is never told that data arrived which the secondary has not acknowledged
//! (after a failover the secondary would not have it). QEMU applies the guard only when the
//! primary segment ends inside a longer secondary one; colo applies it to every matched data
//! segment (it is the same danger whatever the segmentation). Zero-payload segments are not
//! guarded, as in QEMU (a pure ACK is released at once).
//!
//! Invariant kept: a primary payload byte at or above `committed` is released only after it
//! was found equal to a secondary byte with the same sequence number.

use super::MiscompareWhy;
use super::MismatchReason;
use super::flow::{Flow, SegmentSeq, Sink, first_difference};
use crate::packet::{SeqNum, TcpInfo, tcp_flags};

/// Per-flow stream state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpStream {
    /// Primary bytes before this sequence number have all been released.
    pub(crate) committed: Option<SeqNum>,
    /// Highest ACK number seen on any primary segment of the flow.
    pub(crate) primary_max_ack: Option<SeqNum>,
    /// Highest ACK number seen on any secondary segment of the flow (dropped ones included).
    pub(crate) secondary_max_ack: Option<SeqNum>,
}

/// Why a segment is not queued for comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// No payload (SYN, FIN, RST, pure ACK): primary released uncompared, secondary dropped.
    ZeroPayload,
    /// Every payload byte lies below `committed`: primary released uncompared (the client has
    /// seen these bytes already), secondary dropped.
    Retransmit,
}

fn raise(max: &mut Option<SeqNum>, ack: SeqNum) {
    *max = Some(match *max {
        Some(m) => m.max_seq(ack),
        None => ack,
    });
}

/// The sequence range of a segment's payload (a SYN's own sequence number is not payload).
fn payload_range(info: &TcpInfo) -> SegmentSeq {
    let seq = if info.has(tcp_flags::SYN) {
        info.seq.wrapping_add(1)
    } else {
        info.seq
    };
    SegmentSeq {
        seq,
        end: seq.wrapping_add(info.payload_len() as u32),
        ack: info.has(tcp_flags::ACK).then_some(info.ack),
        verified: seq,
    }
}

impl TcpStream {
    /// Records a primary segment; returns its range if it must be held for comparison.
    pub(crate) fn on_primary(&mut self, info: &TcpInfo) -> Result<SegmentSeq, Pass> {
        let seg = payload_range(info);
        if let Some(ack) = seg.ack {
            raise(&mut self.primary_max_ack, ack);
        }
        if info.has(tcp_flags::SYN) {
            // The primary's ISN is authoritative: the secondary's segments reach us already
            // rewritten into primary numbering (by the secondary's rewriter).
            self.committed = Some(seg.seq);
        }
        self.classify(seg)
    }

    /// Records a secondary segment; returns its range if it must be held for comparison.
    pub(crate) fn on_secondary(&mut self, info: &TcpInfo) -> Result<SegmentSeq, Pass> {
        let seg = payload_range(info);
        if let Some(ack) = seg.ack {
            raise(&mut self.secondary_max_ack, ack);
        }
        self.classify(seg)
    }

    fn classify(&self, seg: SegmentSeq) -> Result<SegmentSeq, Pass> {
        if seg.seq == seg.end {
            return Err(Pass::ZeroPayload);
        }
        match self.committed {
            Some(c) if !c.before(seg.end) => Err(Pass::Retransmit),
            _ => Ok(seg),
        }
    }

    /// A checkpoint completed. Every primary byte up to `flushed_end` was released by it, and
    /// the secondary is now a copy of the primary, so both sides continue from the primary's
    /// stream position and the secondary has acknowledged what the primary has.
    pub(crate) fn on_checkpoint(&mut self, flushed_end: Option<SeqNum>) {
        if let Some(end) = flushed_end {
            self.committed = Some(match self.committed {
                Some(c) => c.max_seq(end),
                None => end,
            });
        }
        self.secondary_max_ack = self.primary_max_ack;
    }

    /// The min-ACK guard (see the module doc).
    fn ack_allows(&self, ack: Option<SeqNum>) -> bool {
        let Some(ack) = ack else { return true };
        match (self.primary_max_ack, self.secondary_max_ack) {
            (Some(p), Some(s)) => !p.min_seq(s).before(ack),
            _ => false,
        }
    }
}

/// True if `held` (a secondary segment) has a payload byte at sequence number `at`.
fn covers(seg: &SegmentSeq, at: SeqNum) -> bool {
    at.at_or_after(seg.seq) && at.before(seg.end)
}

/// Inserts a segment keeping the queue sorted by sequence number (stable for equal numbers).
/// Segments nearly always arrive in order, so the search starts from the back.
pub(crate) fn insert_sorted(
    queue: &mut std::collections::VecDeque<super::flow::Held>,
    held: super::flow::Held,
) {
    let seq = held.tcp.map(|s| s.seq).unwrap_or_default();
    let mut at = queue.len();
    while at > 0 {
        let prev = queue[at - 1].tcp.map(|s| s.seq).unwrap_or_default();
        if prev.before(seq) || prev == seq {
            break;
        }
        at -= 1;
    }
    queue.insert(at, held);
}

/// Compares and releases what it can on a TCP flow (see the module doc).
pub(crate) fn advance(flow: &mut Flow, sink: &mut Sink<'_>) -> Option<MiscompareWhy> {
    let Flow {
        primary,
        secondary,
        tcp,
        ..
    } = flow;
    let mut committed = match tcp.committed {
        Some(c) => c,
        None => {
            let (Some(p), Some(s)) = (primary.front(), secondary.front()) else {
                return None;
            };
            let (Some(p), Some(s)) = (p.tcp, s.tcp) else {
                return None;
            };
            p.seq.min_seq(s.seq)
        }
    };

    let mut found = None;
    'verify: for p in primary.iter_mut() {
        let Some(seg) = p.tcp.as_mut() else { continue };
        if seg.verified.before(committed) {
            seg.verified = if committed.before(seg.end) {
                committed
            } else {
                seg.end
            };
        }
        while seg.verified.before(seg.end) {
            let at = seg.verified;
            let Some((twin, twin_seg)) = secondary
                .iter()
                .find_map(|s| s.tcp.filter(|t| covers(t, at)).map(|t| (s, t)))
            else {
                // Nothing to compare against yet; later segments need later bytes, stop here.
                break 'verify;
            };
            let until = seg.end.min_seq(twin_seg.end);
            let n = until.diff(at) as usize;
            let p_from = p.body_start + at.diff(seg.seq) as usize;
            let s_from = twin.body_start + at.diff(twin_seg.seq) as usize;
            let mine = &p.frame[p_from..p_from + n];
            let theirs = &twin.frame[s_from..s_from + n];
            if mine == theirs {
                seg.verified = until;
            } else {
                let i = first_difference(mine, theirs);
                found = Some(MiscompareWhy {
                    offset: at.diff(seg.seq) as usize + i,
                    reason: MismatchReason::TcpPayload {
                        seq: at.wrapping_add(i as u32),
                    },
                });
                break 'verify;
            }
        }
    }

    while let Some(seg) = primary.front().and_then(|p| p.tcp) {
        let ready =
            !seg.verified.before(seg.end) && !committed.before(seg.seq) && tcp.ack_allows(seg.ack);
        if !ready {
            break;
        }
        committed = committed.max_seq(seg.end);
        if let Some(p) = primary.pop_front() {
            sink.release_matched(p);
        }
    }
    tcp.committed = Some(committed);

    while let Some(seg) = secondary.front().and_then(|s| s.tcp) {
        if committed.before(seg.end) {
            break;
        }
        if let Some(s) = secondary.pop_front() {
            sink.secondary_matched(s);
        }
    }
    found
}
