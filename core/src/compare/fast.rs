//! The TCP fast path: a segment that completes a pair on arrival is compared in place and the
//! pair leaves at once, without queueing the arriving frame, giving it an arrival slot or
//! running the general stream walk of [`super::tcp::advance`].
//!
//! The common case on identical streams is lock-step: one side's segment waits alone in its
//! flow, the other side's copy of the same bytes arrives, they are equal, the primary segment is
//! released and the secondary one consumed. The general path does this by pushing the arriving
//! frame into its queue (an arrival slot, a `Held` record moved into a `VecDeque`), walking the
//! verification cursor, the release loop and the consumption loop, and popping both records
//! again. Here the arriving frame is compared with the waiting one's payload directly.
//!
//! Invariant kept: the fast path changes nothing the general path would not change in the same
//! way. It runs only in states where the outcome of `tcp::advance` is fully determined by one
//! comparison (the conditions below), checks every condition *before* mutating anything but the
//! idempotent `skip_released` the general walk performs first as well, and falls back to the
//! general path (which then finds the same state) on anything else, a difference included.
//! Outputs, counters, stream state and GC schedule are therefore identical; the only internal
//! difference is that the arriving frame never takes an arrival slot (it would have been freed
//! within the same call, which no deadline can observe). `tests/differential.rs` checks this
//! against the general path on random streams.
//!
//! Conditions (all required): the comparator is `Comparing` (a pending checkpoint counts held
//! frames in `held_while_pending`), the flow has not diverged, the arriving segment needs
//! comparison, the release cursor is known, the other side holds exactly one segment and the
//! arriving side nothing; the waiting segment's unverified bytes are exactly the arriving
//! segment's range (primary `verified` = secondary `seq`, same `end`); the primary segment is
//! compared (not held uncompared), in stream order (`next` at or past its start) and allowed by
//! the min-ACK guard; and after its release the secondary segment lies in `[floor, released)`,
//! so the general consumption loop would take it.

use super::flow::{Flow, SegmentSeq, Sink};
use super::tcp::TcpStream;
use crate::packet::{ETHERTYPE_IPV4, IPPROTO_TCP, SeqNum, TcpInfo};
use core::ops::Range;

/// True if the general path would release the fully verified primary segment `seg` now and
/// then consume the secondary segment `twin` (the caller then applies `on_release`). Reads the
/// stream state instead of copying it: the copy stalled on the stores `on_secondary` had just
/// made to it.
#[inline]
fn release_consumes(tcp: &TcpStream, seg: &SegmentSeq, twin: &SegmentSeq) -> bool {
    if seg.uncompared
        || seg.verified != twin.seq
        || seg.end != twin.end
        || !tcp.may_leave(seg)
        || tcp.next.is_none_or(|n| n.before(seg.seq))
    {
        return false;
    }
    // `TcpStream::already_released` of `twin`, under the state after the release.
    let (released, floor) = tcp.after_release(seg);
    !released.before(twin.end) && floor.is_none_or(|f| twin.seq.at_or_after(f))
}

/// A secondary segment `twin` (payload `frame[body]`) arrived on a flow holding one primary
/// segment and no secondary one. If they complete the pair and are equal, releases the primary
/// segment through `sink`, counts the secondary frame as matched (never queued) and keeps its
/// buffer as the released bytes' history (`History::record_adopting`), and returns `Ok`.
/// Returns the frame back, having changed nothing the general path would not, in every other
/// case.
#[inline]
pub(super) fn secondary_completes_pair(
    flow: &mut Flow,
    twin: &SegmentSeq,
    frame: Vec<u8>,
    body: Range<usize>,
    sink: &mut Sink<'_>,
) -> Result<(), Vec<u8>> {
    if flow.primary.len() != 1 || !flow.secondary.is_empty() {
        return Err(frame);
    }
    let Flow {
        primary,
        tcp,
        history,
        history_bound,
        update,
        ..
    } = flow;
    let Some(p) = primary.front_mut() else {
        return Err(frame);
    };
    let Some(seg) = p.tcp.as_mut() else {
        return Err(frame);
    };
    if seg.uncompared {
        return Err(frame);
    }
    // The general walk starts every primary segment with this (idempotent) step.
    tcp.skip_released(seg);
    if !release_consumes(tcp, seg, twin) {
        return Err(frame);
    }
    let from = p.body_start + seg.verified.diff(seg.seq) as usize;
    let (Some(mine), Some(theirs)) = (
        p.frame.get(from..from + body.len()),
        frame.get(body.clone()),
    ) else {
        return Err(frame);
    };
    if mine != theirs {
        return Err(frame);
    }
    seg.verified = seg.end;
    tcp.on_release(seg);
    let seg = *seg;
    sink.secondary_matched_unheld();
    if let Some(mut p) = primary.pop_front() {
        // `frame[body]` equals the end of the primary payload (the part not released before).
        history.record_adopting(seg.seq, p.body(), *history_bound, frame, body, sink.spare);
        sink.clamp(&mut tcp.windows, update, &mut p.frame, &seg);
        sink.release_matched(p);
    }
    Ok(())
}

/// A primary segment `seg` (payload `mine`, after `on_primary`) arrived on a flow holding one
/// secondary segment and no primary one. If they complete the pair and are equal, consumes the
/// secondary segment through `sink` and returns true: the caller then releases the primary frame
/// at once, without queueing it. Returns false, having changed nothing, in every other case.
#[inline]
pub(super) fn primary_completes_pair(
    flow: &mut Flow,
    mut seg: SegmentSeq,
    mine: &[u8],
    sink: &mut Sink<'_>,
) -> bool {
    if flow.secondary.len() != 1 || !flow.primary.is_empty() {
        return false;
    }
    let Some(twin) = flow.secondary.front() else {
        return false;
    };
    let Some(twin_seg) = twin.tcp else {
        return false;
    };
    flow.tcp.skip_released(&mut seg);
    if !release_consumes(&flow.tcp, &seg, &twin_seg) {
        return false;
    }
    let from = seg.verified.diff(seg.seq) as usize;
    let theirs = twin.body();
    if mine.get(from..) != Some(theirs) {
        return false;
    }
    flow.tcp.on_release(&seg);
    if let Some(twin) = flow.secondary.pop_front() {
        sink.forget_secondary_matched(&twin);
        let body = twin.body_start..twin.body_end;
        // The twin's body equals the end of `mine` (the part not released before).
        flow.history.record_adopting(
            seg.seq,
            mine,
            flow.history_bound,
            twin.frame,
            body,
            sink.spare,
        );
    }
    true
}

/// A compared segment was just queued on a TCP flow where it is the only held segment, on
/// either side. The general walk would then only move its `verified` cursor over bytes already
/// released (primary) and find nothing to compare, release or consume: there is no other
/// segment, and a lone compared segment is never released unverified. Does exactly that and
/// returns true; returns false (the caller runs the general walk) for anything else.
#[inline]
pub(super) fn lone_segment_waits(flow: &mut Flow) -> bool {
    if flow.diverged {
        return false;
    }
    let Flow {
        primary,
        secondary,
        tcp,
        ..
    } = flow;
    match (primary.len(), secondary.len()) {
        (1, 0) => match primary.front_mut().and_then(|p| p.tcp.as_mut()) {
            Some(seg) if !seg.uncompared => {
                tcp.skip_released(seg);
                true
            }
            _ => false,
        },
        (0, 1) => secondary
            .front()
            .is_some_and(|s| s.tcp.is_some_and(|t| !t.uncompared)),
        _ => false,
    }
}

/// The raw flow identity of an untagged IPv4 TCP frame: source and destination address and
/// port, as they appear in the headers (bytes 26..38 of the frame).
pub(crate) type RawTcp4Key = [u8; 12];

/// Reads an untagged IPv4 TCP frame with a 20-byte IP header (no options, not a fragment), the
/// common case, straight from fixed offsets: its raw flow identity and the [`TcpInfo`]
/// [`crate::packet::classify`] would return for it. `None` for every other frame (tagged,
/// IPv6, IP options, fragments, other protocols, malformed), which take the general
/// classification. The checks are classify's, restricted to this layout, so whenever this
/// returns a summary classify returns `Kind::Tcp` with the same `TcpInfo` and the
/// `FlowKey::Ip` of these addresses and ports (pinned by a property test).
#[inline]
pub(crate) fn tcp4_summary(frame: &[u8]) -> Option<(RawTcp4Key, TcpInfo)> {
    const L3: usize = 14;
    const L4: usize = L3 + 20;
    let head: &[u8; L4 + 20] = frame.get(..L4 + 20)?.try_into().ok()?;
    let ethertype = u16::from_be_bytes([head[12], head[13]]);
    let ip = &head[L3..L4];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if ethertype != ETHERTYPE_IPV4
        || ip[0] != 0x45
        || ip[9] != IPPROTO_TCP
        || frag & 0x3fff != 0
        || total < 40
        || total > frame.len() - L3
    {
        return None;
    }
    let end = L3 + total;
    let tcp = &head[L4..];
    let header_len = usize::from(tcp[12] >> 4) * 4;
    if header_len < 20 || L4 + header_len > end {
        return None;
    }
    let mut raw = [0u8; 12];
    raw[..8].copy_from_slice(&ip[12..20]);
    raw[8..].copy_from_slice(&tcp[..4]);
    let info = TcpInfo {
        l4_offset: L4,
        seq: SeqNum(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]])),
        ack: SeqNum(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]])),
        flags: tcp[13],
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        header_len,
        payload_start: L4 + header_len,
        payload_end: end,
    };
    Some((raw, info))
}

/// The datagram fast path (UDP, ICMP, other IP, whole frames): a secondary frame `theirs`
/// arriving while the flow holds primary frames and no secondary one, equal to the primary
/// head, releases it and the paired frames behind it; a primary frame `mine` arriving while
/// the flow holds no primary frame matches the first equal queued secondary frame. When the
/// arrival matches, this does what the general rule (`Flow::advance_datagrams`) would (the
/// primary frames released, the secondary consumed) and returns true; otherwise it changes
/// nothing and returns false.
#[inline]
pub(super) fn datagram_completes_pair(
    flow: &mut Flow,
    primary_side: bool,
    body: &[u8],
    sink: &mut Sink<'_>,
) -> bool {
    if flow.diverged {
        return false;
    }
    if primary_side {
        if !flow.primary.is_empty() {
            return false;
        }
        let Some(at) = flow.secondary.iter().position(|s| s.body() == body) else {
            return false;
        };
        if let Some(twin) = flow.secondary.remove(at) {
            sink.secondary_matched(twin);
        }
        true
    } else {
        if !flow.secondary.is_empty() || flow.primary.front().is_none_or(|p| p.body() != body) {
            return false;
        }
        // The general rule pairs it with the first equal unpaired frame: the front (never
        // paired, or it would have left). Frames paired behind it leave with it.
        if let Some(head) = flow.primary.pop_front() {
            sink.release_matched(head);
        }
        super::flow::release_paired(&mut flow.primary, sink);
        true
    }
}
