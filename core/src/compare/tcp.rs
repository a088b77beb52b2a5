//! TCP stream alignment: payload bytes compared by sequence number, across segment boundaries.
//!
//! QEMU (`colo_compare_tcp`/`colo_mark_tcp_pkt` in net/colo-compare.c) walks the two queues
//! head to head with a per-packet `offset`. colo treats each side as a byte stream instead:
//!
//! - `released` is the stream position below which the client already has every primary byte
//!   (released as matched, or covered by a checkpoint), down to `floor` (`None`: no lower
//!   bound). A primary SYN (or SYN-ACK) sets `released` to ISN + 1 with no floor; a checkpoint
//!   moves it to the end of what it flushed, with no floor (the checkpoint covers everything
//!   the primary sent before it). A flow picked up mid-stream has no `released` until its first
//!   release, whose start becomes the floor: bytes below it were never seen and are compared.
//! - `next` is the release cursor: `released` once known, before that the lower of the two
//!   sides' first held byte. Primary segments are released in stream order, never past a hole
//!   at `next`, so a hole can never later pass for a retransmission.
//! - Each held primary segment has a `verified` cursor: its bytes before it are equal to
//!   secondary bytes at the same sequence numbers, or lie in `[floor, released)`. The cursor
//!   advances over *any* queued secondary segment covering it, so segmentation, coalescing and
//!   re-segmentation on either side do not matter; the first unequal byte is a miscompare.
//! - A primary segment is released when fully verified, starting at or before `next`, and
//!   passing the min-ACK guard. Secondary segments ending at or before `released` are consumed.
//!
//! Rules at arrival (QEMU: `seq == seq_end` and `seq_end <= compare_seq` cases): a segment
//! without payload (SYN, FIN, RST, pure ACK) is not compared; neither is a segment whose
//! payload lies entirely in `[floor, released)` (a retransmission). A secondary one is dropped.
//! A primary one is released uncompared, but not necessarily at once (see the guard below): it
//! is released on arrival only if nothing of its flow is held and the guard allows its ACK;
//! otherwise it is held (`uncompared`, nothing to verify) behind what is queued and released in
//! queue order as soon as the guard allows it.
//!
//! The min-ACK guard (QEMU: "secondary guest hasn't ack the data, don't send out this packet"):
//! a primary segment carrying ACK, *with or without payload*, is released only if its ACK is at
//! or below min(highest ACK seen from the primary, highest ACK seen from the secondary) on this
//! flow, so the client is never told that data arrived which the secondary has not
//! acknowledged. After a failover the secondary would not have it and the client, its bytes
//! acknowledged, would never resend them (a pure ACK stalls the connection; a SYN-ACK for a SYN
//! the secondary never saw makes the secondary reset the client). The secondary's ACKs are in
//! the client's sequence space, which both guests share: no rewrite is involved.
//! QEMU applies the guard only to data segments ending inside a longer secondary segment and
//! releases zero-payload segments at once; colo guards every ACK-carrying primary segment
//! (pure ACK, SYN-ACK, FIN+ACK, data, retransmission), found by the simulator (seeds 188, 290,
//! 1057 under `colo-sim --node`). Exempt from the guard, though still kept in stream order:
//! segments without the ACK flag (the guest's own SYN opening a connection acknowledges
//! nothing) and RST (the client checks an RST's ACK field only for acceptability in SYN-SENT,
//! RFC 9293 3.10.7.3, never as an acknowledgment of data; a reset connection needs nothing from
//! the secondary after a failover, the client no longer has it either). Held segments are freed by the secondary's next ACK, by `compare_timeout`
//! (-> checkpoint -> `checkpoint_done`, which releases them and sets the secondary's highest
//! ACK to the primary's) or by `release_all`.
//!
//! Stream order: the primary queue is kept in sequence order (stable for equal numbers) and
//! released strictly from its front, so a held uncompared segment is never overtaken by a later
//! segment of its flow at the same or a higher sequence number, and a segment without payload
//! arriving while anything of its flow is held waits behind it (a FIN no longer overtakes held
//! data). Only a late segment from earlier in the stream can be queued ahead of it.
//!
//! Control flags (issue 14): a primary segment carrying SYN, FIN or RST is held, whatever its
//! payload, until the secondary sent the same flag at the same position ([`Controls`],
//! [`TcpStream::control`]); a FIN or RST the secondary placed otherwise is a miscompare. A
//! retransmission's bytes are checked against the flow's released bytes (`super::history`)
//! by the caller on arrival.
//!
//! Invariants kept: a primary payload byte is released only if it was found equal to a
//! secondary byte with the same sequence number, or lies in `[floor, released)` (and equals
//! the released byte there, when the history still has it), or a checkpoint covers it; a
//! primary segment carrying ACK (RST excepted) is released only if the secondary acknowledged
//! as far, or a checkpoint covers it, or the secondary is gone; a primary SYN, FIN or RST only
//! if the secondary sent the same flag at the same position, or a checkpoint covers it, or
//! the secondary is gone.

use super::MiscompareWhy;
use super::MismatchReason;
use super::flow::{Flow, Held, SegmentSeq, Sink, first_difference};
use super::window::Windows;
use crate::packet::{SeqNum, TcpInfo, tcp_flags};
use std::collections::VecDeque;

/// Per-flow stream state (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpStream {
    /// The client has every primary byte in `[floor, released)`.
    pub(crate) released: Option<SeqNum>,
    /// Lower bound of `released`'s range; `None`: unbounded.
    pub(crate) floor: Option<SeqNum>,
    /// Release cursor.
    pub(crate) next: Option<SeqNum>,
    /// Highest ACK number seen on any primary segment of the flow.
    pub(crate) primary_max_ack: Option<SeqNum>,
    /// Highest ACK number seen on any secondary segment of the flow (dropped ones included).
    pub(crate) secondary_max_ack: Option<SeqNum>,
    /// The control flags (SYN, FIN, RST) the primary sent, where (see [`Controls`]).
    pub(crate) primary_controls: Controls,
    /// The control flags the secondary sent (dropped segments included), or the primary's as
    /// of the last checkpoint (the secondary is then its copy).
    pub(crate) secondary_controls: Controls,
    /// The window clamp's state (`super::window`).
    pub(crate) windows: Windows,
    /// Planted bug (feature `canaries`, `NodeCanary::ReleaseControlUnguarded`): control
    /// segments leave without the secondary's flags and without the min-ACK guard.
    #[cfg(feature = "canaries")]
    pub(crate) unguarded_control: bool,
}

/// RST positions remembered per side: a guest answers each unacceptable client segment with
/// its own RST, so a few may be in flight at once.
const RST_RING: usize = 4;

/// The control flags one side of a flow sent, and where in the stream.
///
/// Positions are in primary numbering (the secondary's segments arrive rewritten): a FIN or
/// an RST sits at the end of its segment's payload. A SYN's sequence number is the sender's
/// own ISN, which the secondary's rewriter cannot map before the handshake completes (it
/// learns the offset from it), so a SYN is identified by its kind and, for a SYN-ACK, by the
/// client ISN it acknowledges (the client's sequence space is shared by both guests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Controls {
    /// Where the FIN of the current connection is.
    fin: Option<SeqNum>,
    /// The last RST positions, newest last.
    rst: [Option<SeqNum>; RST_RING],
    /// The SYN of the current connection: `Some(None)` a SYN, `Some(Some(ack))` a SYN-ACK.
    syn: Option<Option<SeqNum>>,
}

impl Controls {
    fn record(&mut self, flags: u8, seg: &SegmentSeq) {
        if flags & tcp_flags::SYN != 0 {
            // A new connection: the old one's close no longer says anything.
            *self = Controls {
                syn: Some(seg.ack),
                ..Controls::default()
            };
        }
        if flags & tcp_flags::FIN != 0 {
            self.fin = Some(seg.end);
        }
        if flags & tcp_flags::RST != 0 && !self.has_rst(seg.end) {
            self.rst.rotate_left(1);
            self.rst[RST_RING - 1] = Some(seg.end);
        }
        if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 && flags & tcp_flags::SYN == 0 {
            // The connection is closing: a later SYN is a new one, matched by a new SYN.
            self.syn = None;
        }
    }

    fn has_rst(&self, at: SeqNum) -> bool {
        self.rst.contains(&Some(at))
    }
}

/// Whether a held primary segment's control flags may leave (see [`TcpStream::control`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ControlMatch {
    /// No control flag, or the secondary sent each one at the same position.
    Matched,
    /// The secondary has not sent them (yet): the segment waits (deadline: `compare_timeout`).
    Waiting,
    /// The secondary ended the stream elsewhere or otherwise: a miscompare.
    Differs,
}

/// Why a segment is not queued for comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// No payload (SYN, FIN, RST, pure ACK): primary released uncompared, secondary dropped.
    ZeroPayload,
    /// Every payload byte was already released: primary released uncompared (the client has
    /// these bytes already), secondary dropped.
    Retransmit,
}

fn raise(max: &mut Option<SeqNum>, ack: SeqNum) {
    *max = Some(match *max {
        Some(m) => m.max_seq(ack),
        None => ack,
    });
}

/// The sequence range of a segment's payload (a SYN's own sequence number is not payload).
pub(crate) fn payload_range(info: &TcpInfo) -> SegmentSeq {
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
        uncompared: false,
        control: info.flags & CONTROL_FLAGS,
        window: info.window,
        l4: u16::try_from(info.l4_offset).unwrap_or(u16::MAX),
    }
}

/// The held form of a primary segment that needs no comparison (see [`Pass`]): nothing to
/// verify; its ACK guarded unless it is an RST (see the module doc).
pub(crate) fn uncompared_segment(info: &TcpInfo) -> SegmentSeq {
    let seg = payload_range(info);
    SegmentSeq {
        ack: if info.has(tcp_flags::RST) {
            None
        } else {
            seg.ack
        },
        verified: seg.end,
        uncompared: true,
        ..seg
    }
}

/// The TCP flags that change the connection's state at the client and are held until the
/// secondary produced the same (see [`TcpStream::control`]).
pub(crate) const CONTROL_FLAGS: u8 = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;

impl TcpStream {
    /// Records a primary segment; returns its range if it must be held for comparison.
    pub(crate) fn on_primary(&mut self, info: &TcpInfo) -> Result<SegmentSeq, Pass> {
        let seg = payload_range(info);
        if let Some(ack) = seg.ack {
            raise(&mut self.primary_max_ack, ack);
        }
        if seg.control != 0 {
            self.primary_controls.record(seg.control, &seg);
        }
        if info.has(tcp_flags::SYN) {
            // The primary's ISN is authoritative: the secondary's segments reach us already
            // rewritten into primary numbering (by the secondary's rewriter). A SYN on a flow
            // that already has state starts a new connection on the same 5-tuple: the caller
            // restarts the verification of held segments (`restart_verification`).
            self.released = Some(seg.seq);
            self.next = Some(seg.seq);
            self.floor = None;
        }
        if seg.seq == seg.end {
            Err(Pass::ZeroPayload)
        } else if self.already_released(seg.seq, seg.end) {
            Err(Pass::Retransmit)
        } else {
            Ok(seg)
        }
    }

    /// Records a secondary segment; returns its range if it must be held for comparison.
    pub(crate) fn on_secondary(&mut self, info: &TcpInfo) -> Result<SegmentSeq, Pass> {
        let seg = payload_range(info);
        if let Some(ack) = seg.ack {
            raise(&mut self.secondary_max_ack, ack);
        }
        if seg.control != 0 {
            self.secondary_controls.record(seg.control, &seg);
        }
        if seg.seq == seg.end {
            Err(Pass::ZeroPayload)
        } else if self.already_released(seg.seq, seg.end) {
            Err(Pass::Retransmit)
        } else {
            Ok(seg)
        }
    }

    /// The part of `[seq, end)` the client already has (in `[floor, released)`), if any: a
    /// retransmission, whole or partial, whose bytes must equal the released ones.
    pub(crate) fn released_part(&self, seq: SeqNum, end: SeqNum) -> Option<(SeqNum, SeqNum)> {
        let released = self.released?;
        let lo = match self.floor {
            Some(f) if seq.before(f) => f,
            _ => seq,
        };
        let hi = if released.before(end) { released } else { end };
        lo.before(hi).then_some((lo, hi))
    }

    /// True if the client already has every byte of `[seq, end)`.
    pub(crate) fn already_released(&self, seq: SeqNum, end: SeqNum) -> bool {
        let Some(released) = self.released else {
            return false;
        };
        !released.before(end) && self.floor.is_none_or(|f| seq.at_or_after(f))
    }

    /// A checkpoint completed. Every primary byte the primary sent before it is covered, and
    /// the secondary is now a copy of the primary, so both sides continue from the primary's
    /// stream position and the secondary has acknowledged what the primary has.
    pub(crate) fn on_checkpoint(&mut self, flushed_end: Option<SeqNum>) {
        let position = match (self.released, flushed_end) {
            (Some(r), Some(e)) => Some(r.max_seq(e)),
            (r, e) => r.or(e),
        };
        if position.is_some() {
            self.released = position;
            self.next = position;
            self.floor = None;
        }
        self.secondary_max_ack = self.primary_max_ack;
        self.secondary_controls = self.primary_controls;
        self.windows.on_checkpoint();
    }

    /// The control-flag rule: a primary segment carrying SYN, FIN or RST leaves only once the
    /// secondary sent the same flag at the same position ([`Controls`]), or a checkpoint
    /// covered it (`on_checkpoint`). A FIN where the secondary's FIN (or an RST) sits
    /// elsewhere, or an RST where the secondary sent a FIN instead, differs.
    #[inline]
    pub(crate) fn control(&self, seg: &SegmentSeq) -> ControlMatch {
        if seg.control == 0 {
            return ControlMatch::Matched;
        }
        #[cfg(feature = "canaries")]
        if self.unguarded_control {
            return ControlMatch::Matched;
        }
        let s = &self.secondary_controls;
        let mut waiting = false;
        if seg.control & tcp_flags::FIN != 0 {
            match s.fin {
                Some(at) if at == seg.end => {}
                Some(_) => return ControlMatch::Differs,
                None if s.has_rst(seg.end) => return ControlMatch::Differs,
                None => waiting = true,
            }
        }
        if seg.control & tcp_flags::RST != 0 && !s.has_rst(seg.end) {
            if seg.control & tcp_flags::FIN == 0 && s.fin == Some(seg.end) {
                return ControlMatch::Differs;
            }
            waiting = true;
        }
        if seg.control & tcp_flags::SYN != 0 && s.syn != Some(seg.ack) {
            waiting = true;
        }
        if waiting {
            ControlMatch::Waiting
        } else {
            ControlMatch::Matched
        }
    }

    /// True if the min-ACK guard and the control-flag rule both let `seg` leave now.
    #[inline]
    pub(crate) fn may_leave(&self, seg: &SegmentSeq) -> bool {
        self.guard_allows(seg) && self.control(seg) == ControlMatch::Matched
    }

    /// The min-ACK guard for a held segment (the canary exempts control segments from it, as
    /// QEMU does).
    #[inline]
    pub(crate) fn guard_allows(&self, seg: &SegmentSeq) -> bool {
        #[cfg(feature = "canaries")]
        if self.unguarded_control && seg.control != 0 {
            return true;
        }
        self.ack_allows(seg.ack) && !(seg.uncompared && self.windows.holds(seg))
    }

    /// The min-ACK guard (see the module doc): true if a primary segment acknowledging `ack`
    /// (`None`: no ACK flag, or exempt) may reach the client.
    pub(crate) fn ack_allows(&self, ack: Option<SeqNum>) -> bool {
        let Some(ack) = ack else { return true };
        match (self.primary_max_ack, self.secondary_max_ack) {
            (Some(p), Some(s)) => !p.min_seq(s).before(ack),
            _ => false,
        }
    }

    /// Moves `verified` over bytes the client already has.
    pub(super) fn skip_released(&self, seg: &mut SegmentSeq) {
        if let Some(released) = self.released
            && seg.verified.before(released)
            && self.floor.is_none_or(|f| seg.verified.at_or_after(f))
        {
            seg.verified = if released.before(seg.end) {
                released
            } else {
                seg.end
            };
        }
    }

    /// `(released, floor)` after releasing a primary segment.
    #[inline]
    pub(super) fn after_release(&self, seg: &SegmentSeq) -> (SeqNum, Option<SeqNum>) {
        match self.released {
            Some(r) => {
                // A segment from below the floor that reaches it extends the range down.
                let floor = match self.floor {
                    Some(f) if seg.seq.before(f) && seg.end.at_or_after(f) => Some(seg.seq),
                    floor => floor,
                };
                (r.max_seq(seg.end), floor)
            }
            None => (seg.end, Some(seg.seq)),
        }
    }

    /// Notes the release of a primary segment.
    pub(super) fn on_release(&mut self, seg: &SegmentSeq) {
        let (released, floor) = self.after_release(seg);
        self.released = Some(released);
        self.floor = floor;
        self.next = self.released;
    }
}

/// A primary SYN reset the stream: bytes verified under the old release point must be checked
/// again under the new one (a SYN with another ISN is a new connection on the same 5-tuple).
/// That includes held retransmissions: "already released" was judged under the old release
/// point, so they become ordinary compared segments. Held segments without payload stay
/// uncompared (no bytes to check).
pub(crate) fn restart_verification(primary: &mut VecDeque<Held>) {
    for held in primary.iter_mut() {
        if let Some(seg) = held.tcp.as_mut()
            && seg.seq != seg.end
        {
            seg.verified = seg.seq;
            seg.uncompared = false;
        }
    }
}

/// True if `seg` has a payload byte at sequence number `at`.
fn covers(seg: &SegmentSeq, at: SeqNum) -> bool {
    at.at_or_after(seg.seq) && at.before(seg.end)
}

/// Inserts a segment keeping the queue sorted by sequence number (stable for equal numbers).
/// Segments nearly always arrive in order, so the search starts from the back.
#[inline]
pub(crate) fn insert_sorted(queue: &mut VecDeque<Held>, held: Held) {
    let seq = held.tcp.map(|s| s.seq).unwrap_or_default();
    let in_order = queue
        .back()
        .is_none_or(|last| !seq.before(last.tcp.map(|s| s.seq).unwrap_or_default()));
    if in_order {
        queue.push_back(held);
        return;
    }
    let mut at = queue.len();
    while at > 0 {
        let prev = queue[at - 1].tcp.map(|s| s.seq).unwrap_or_default();
        if !seq.before(prev) {
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
        history,
        history_bound,
        update,
        ..
    } = flow;
    if tcp.next.is_none() {
        // The release cursor starts at the lower of the two sides' first compared byte; held
        // uncompared segments have no bytes to place.
        let p = primary.iter().find_map(|h| h.tcp.filter(|t| !t.uncompared));
        if let (Some(p), Some(s)) = (p, secondary.front().and_then(|h| h.tcp)) {
            tcp.next = Some(p.seq.min_seq(s.seq));
        }
    }
    let mut found = None;
    'verify: for p in primary.iter_mut() {
        let Some(seg) = p.tcp.as_mut().filter(|t| !t.uncompared) else {
            continue;
        };
        tcp.skip_released(seg);
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
                tcp.skip_released(seg);
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

    // Release from the front only, so nothing overtakes a held segment of the flow.
    while let Some(seg) = primary.front().and_then(|p| p.tcp) {
        if !tcp.guard_allows(&seg) {
            break;
        }
        match tcp.control(&seg) {
            ControlMatch::Matched => {}
            ControlMatch::Waiting => break,
            ControlMatch::Differs => {
                found = found.or(Some(MiscompareWhy {
                    offset: seg.end.diff(seg.seq) as usize,
                    reason: MismatchReason::TcpControl {
                        seq: seg.end,
                        flags: seg.control,
                    },
                }));
                break;
            }
        }
        if seg.uncompared {
            if let Some(mut p) = primary.pop_front() {
                sink.clamp(&mut tcp.windows, update, &mut p.frame, &seg);
                sink.release_uncompared(p);
            }
            continue;
        }
        let in_order = tcp.next.is_some_and(|n| !n.before(seg.seq));
        if seg.verified.before(seg.end) || !in_order {
            break;
        }
        tcp.on_release(&seg);
        if let Some(mut p) = primary.pop_front() {
            history.record(seg.seq, p.body(), *history_bound, sink.spare);
            sink.clamp(&mut tcp.windows, update, &mut p.frame, &seg);
            sink.release_matched(p);
        }
    }

    // Consume secondary segments the client now has from the primary. The queue is sorted by
    // sequence number, so only segments starting before `released` can qualify.
    if let Some(released) = tcp.released {
        let mut i = 0;
        while let Some(seg) = secondary.get(i).and_then(|s| s.tcp) {
            if !seg.seq.before(released) {
                break;
            }
            if tcp.already_released(seg.seq, seg.end) {
                let consumed = if i == 0 {
                    secondary.pop_front()
                } else {
                    secondary.remove(i)
                };
                if let Some(s) = consumed {
                    sink.secondary_matched(s);
                }
            } else {
                i += 1;
            }
        }
    }
    found
}
