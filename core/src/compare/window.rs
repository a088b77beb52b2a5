//! The window clamp: a primary TCP segment never opens the client's send window beyond what
//! the secondary has opened on the same connection.
//!
//! Why: the client sends as far as the released window's right edge (ACK number plus the
//! advertised window, scaled). Its segments are mirrored to both guests; if the primary's
//! window update leaves while the secondary's socket buffer is still full (its window 0), the
//! secondary drops what the client then sends, its ACK stays behind, the min-ACK guard holds
//! every later primary ACK, and the client stalls on its retransmission timer (traced in
//! docs/benchmarks.md, item 4: 1-73 % of the lone VM's client -> guest throughput). So every
//! ACK-carrying primary segment the comparator releases while comparing has its right edge
//! clamped to min(primary's, secondary's latest), the window field rewritten with an RFC 1624
//! incremental checksum update (`checksum::update16`; the field sits at an even offset of the
//! TCP header). A pure window update whose clamped form would tell the client nothing new (its
//! ACK and clamped right edge not beyond what was already released) while unclamped it would
//! open the window is held instead (`holds`), until the secondary's own update arrives (the
//! flow is advanced on every secondary frame), a checkpoint, or `compare_timeout`. Releasing
//! it clamped would make it a duplicate ACK (three of them trigger a spurious fast
//! retransmit), and nothing would announce the window once the secondary opened it.
//!
//! Window scaling (RFC 7323): each side's shift comes from the window-scale option of its own
//! SYN or SYN-ACK (none: 0); windows on SYN segments are never scaled. The comparator sees only
//! the guests' side of the handshake: when the guest answered (SYN-ACK), scaling is in effect
//! exactly when the option is present; when the guest opened (SYN), the client's answer is not
//! seen and scaling is assumed in effect. With equal shifts on both guests (the same guest,
//! the usual case) the clamped edge stays at or below the secondary's true edge either way,
//! because the released ACK is at or below the secondary's (the min-ACK guard). The
//! clamped window is rounded down to the primary's scale unit. RST segments are not touched
//! (their window means nothing). The secondary's edge is the one its latest segment advertised
//! (segments whose ACK is older than one it already sent excepted): a receiver rounding its
//! window down to its scale unit may move the edge back by less than one unit, and the
//! clamp follows it, so the released edge is at or below what the secondary accepts now. Its
//! segments arrive rewritten into
//! primary sequence numbering, but ACK numbers and windows are in the client's space, which
//! both guests share, so no translation is involved.
//!
//! Invariant kept: while the secondary's edge is known, no ACK-carrying primary segment
//! (RST excepted) released through the comparing paths advertises a right edge beyond it; a
//! clamp changes only the window field and the TCP checksum (which stays exactly as valid as
//! it was). A checkpoint makes the secondary the primary's copy: its edge becomes the
//! primary's. With the secondary unknown (no ACK from it yet on the flow) nothing is clamped.

use super::flow::SegmentSeq;
use crate::packet::checksum::update16;
use crate::packet::tcp_options::{TcpOption, TcpOptions};
use crate::packet::{SeqNum, TcpInfo, tcp_flags};

/// Offset of the acknowledgment number within the TCP header.
const ACK_AT: usize = 8;
/// Offset of the flag byte within the TCP header.
const FLAGS_AT: usize = 13;
/// Offset of the window within the TCP header.
const WINDOW_AT: usize = 14;
/// Offset of the checksum within the TCP header.
const CHECKSUM_AT: usize = 16;
/// Length of the fixed TCP header.
const FIXED_LEN: usize = 20;
/// Largest shift RFC 7323 allows (a larger one is used as 14).
const MAX_SHIFT: u8 = 14;

/// Per-flow window state (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Windows {
    /// The primary's window scale shift (from its SYN or SYN-ACK).
    primary_shift: u8,
    /// The secondary's window scale shift.
    secondary_shift: u8,
    /// The right edge the primary advertised last.
    primary_edge: Option<SeqNum>,
    /// The ACK number behind `primary_edge`.
    primary_ack: Option<SeqNum>,
    /// The right edge the secondary advertised last (dropped segments included), or the
    /// primary's as of the last checkpoint.
    secondary_edge: Option<SeqNum>,
    /// The ACK number behind `secondary_edge`.
    secondary_ack: Option<SeqNum>,
    /// Highest right edge released to the client (after clamping).
    released_edge: Option<SeqNum>,
    /// Highest ACK number released to the client.
    released_ack: Option<SeqNum>,
}

/// The window-scale shift a SYN or SYN-ACK announces in `frame` (`info` describes it), 0 if
/// none or if the options are malformed.
fn shift_of(frame: &[u8], info: &TcpInfo) -> u8 {
    let start = info.l4_offset + FIXED_LEN;
    let end = info.l4_offset + info.header_len;
    let Some(options) = frame.get(start..end) else {
        return 0;
    };
    TcpOptions::new(options)
        .filter_map(Result::ok)
        .find_map(|(_, option)| match option {
            TcpOption::WindowScale(shift) => Some(shift.min(MAX_SHIFT)),
            _ => None,
        })
        .unwrap_or(0)
}

/// The right edge a segment advertises: ACK number plus the window, scaled unless on a SYN.
/// `None` for a segment without ACK, and for an RST.
fn edge(flags: u8, ack: SeqNum, window: u16, shift: u8) -> Option<SeqNum> {
    if flags & tcp_flags::ACK == 0 || flags & tcp_flags::RST != 0 {
        return None;
    }
    let shift = if flags & tcp_flags::SYN != 0 {
        0
    } else {
        shift
    };
    Some(ack.wrapping_add(u32::from(window) << shift))
}

fn raise(max: &mut Option<SeqNum>, to: SeqNum) {
    *max = Some(max.map_or(to, |m| m.max_seq(to)));
}

/// Moves a side's edge to what its latest segment advertises, unless that segment's ACK is
/// older than one the side already sent (a stale segment says nothing about the present).
fn follow(edge: &mut Option<SeqNum>, ack: &mut Option<SeqNum>, info: &TcpInfo, shift: u8) {
    let Some(e) = self::edge(info.flags, info.ack, info.window, shift) else {
        return;
    };
    if ack.is_some_and(|a| info.ack.before(a)) {
        return;
    }
    *ack = Some(info.ack);
    *edge = Some(e);
}

impl Windows {
    /// Records a primary segment (`frame` is the whole frame `info` describes).
    pub(crate) fn on_primary(&mut self, frame: &[u8], info: &TcpInfo) {
        if info.has(tcp_flags::SYN) {
            self.primary_shift = shift_of(frame, info);
            self.primary_edge = None;
            self.primary_ack = None;
            self.released_edge = None;
            self.released_ack = None;
        }
        follow(
            &mut self.primary_edge,
            &mut self.primary_ack,
            info,
            self.primary_shift,
        );
    }

    /// Records a secondary segment.
    pub(crate) fn on_secondary(&mut self, frame: &[u8], info: &TcpInfo) {
        if info.has(tcp_flags::SYN) {
            self.secondary_shift = shift_of(frame, info);
            self.secondary_edge = None;
            self.secondary_ack = None;
        }
        follow(
            &mut self.secondary_edge,
            &mut self.secondary_ack,
            info,
            self.secondary_shift,
        );
    }

    /// A checkpoint completed: the secondary is the primary's copy.
    pub(crate) fn on_checkpoint(&mut self) {
        self.secondary_edge = self.primary_edge;
        self.secondary_ack = self.primary_ack;
        self.secondary_shift = self.primary_shift;
    }

    /// The right edge a held primary segment advertises unclamped.
    fn own_edge(&self, seg: &SegmentSeq) -> Option<SeqNum> {
        edge(
            seg.control | seg.ack.map_or(0, |_| tcp_flags::ACK),
            seg.ack?,
            seg.window,
            self.primary_shift,
        )
    }

    /// True if `seg` is a pure window update that must wait for the secondary's (see the
    /// module doc): no payload, no control flag, its ACK and its clamped right edge nothing
    /// the client does not have, while its own right edge is beyond the secondary's.
    pub(crate) fn holds(&self, seg: &SegmentSeq) -> bool {
        if seg.seq != seg.end || seg.control != 0 {
            return false;
        }
        let (Some(ack), Some(own), Some(limit)) =
            (seg.ack, self.own_edge(seg), self.secondary_edge)
        else {
            return false;
        };
        if !limit.before(own) {
            return false;
        }
        let clamped = limit.max_seq(ack);
        let new_ack = self.released_ack.is_none_or(|r| r.before(ack));
        let new_edge = self.released_edge.is_none_or(|r| r.before(clamped));
        !new_ack && !new_edge
    }

    /// The window field of a pure ACK for `ack` (the ACK the client was last told) that would
    /// announce min(primary's edge, secondary's edge), rounded down to the primary's scale
    /// unit, if that edge is beyond the released one (`super::window_update`); `None` if it
    /// tells the client nothing new or either edge is unknown.
    pub(crate) fn owed_window(&self, ack: SeqNum) -> Option<u16> {
        let limit = self.primary_edge?.min_seq(self.secondary_edge?);
        let released = self.released_edge?;
        if self.released_ack != Some(ack) || limit.before(ack) {
            return None;
        }
        let room = SeqNum::offset_to(ack, limit) >> self.primary_shift;
        let window = u16::try_from(room).unwrap_or(u16::MAX);
        let edge = ack.wrapping_add(u32::from(window) << self.primary_shift);
        released.before(edge).then_some(window)
    }

    /// A window update for `ack` with window field `window` was released.
    pub(crate) fn note_update(&mut self, ack: SeqNum, window: u16) {
        raise(
            &mut self.released_edge,
            ack.wrapping_add(u32::from(window) << self.primary_shift),
        );
    }

    /// Clamps the window of a primary segment about to be released (`seg` describes it) and
    /// notes what the client now has. Returns true if the window was lowered.
    pub(crate) fn clamp(&mut self, frame: &mut [u8], seg: &SegmentSeq) -> bool {
        let l4 = usize::from(seg.l4);
        let Some(header) = frame.get(l4..l4 + FIXED_LEN) else {
            return false;
        };
        let flags = header[FLAGS_AT];
        let ack = SeqNum(u32::from_be_bytes([
            header[ACK_AT],
            header[ACK_AT + 1],
            header[ACK_AT + 2],
            header[ACK_AT + 3],
        ]));
        let window = u16::from_be_bytes([header[WINDOW_AT], header[WINDOW_AT + 1]]);
        let Some(own) = edge(flags, ack, window, self.primary_shift) else {
            return false;
        };
        let mut released = own;
        let mut lowered = false;
        if let Some(limit) = self.secondary_edge
            && limit.before(own)
        {
            let shift = if flags & tcp_flags::SYN != 0 {
                0
            } else {
                self.primary_shift
            };
            // `limit` before `ack` cannot happen while the min-ACK guard holds (the
            // secondary's edge is at or past its ACK, which is at or past this one); a
            // zero window is the safe answer if it does.
            let room = if limit.before(ack) {
                0
            } else {
                SeqNum::offset_to(ack, limit)
            };
            // Below `window << shift` since `limit` is before `own`, so it fits 16 bits.
            let narrowed = u16::try_from(room >> shift).unwrap_or(window);
            let checksum = u16::from_be_bytes([header[CHECKSUM_AT], header[CHECKSUM_AT + 1]]);
            let checksum = update16(checksum, window, narrowed);
            frame[l4 + WINDOW_AT..l4 + WINDOW_AT + 2].copy_from_slice(&narrowed.to_be_bytes());
            frame[l4 + CHECKSUM_AT..l4 + CHECKSUM_AT + 2].copy_from_slice(&checksum.to_be_bytes());
            released = ack.wrapping_add(u32::from(narrowed) << shift);
            lowered = true;
        }
        raise(&mut self.released_edge, released);
        raise(&mut self.released_ack, ack);
        lowered
    }
}
