//! The window update the comparator owes the client after a clamp: when a primary segment
//! left with its window lowered to the secondary's right edge (`super::window`) and the
//! secondary then opens its window, the primary has nothing more to send (it announced its
//! window already, unclamped) and the secondary's own update is never released, so the
//! client would learn of the open window only from its persist timer's probe (Linux: 200 ms
//! and up, doubling) or a retransmission. Traced in docs/benchmarks.md ("Client -> guest
//! stalls"): 1 MiB uploads through the pair stalled 1.8-3.3 s this way.
//!
//! So the flow keeps a template of the last primary segment released with a lowered window:
//! its headers only, made a pure ACK (flags ACK, sequence number at the end of its payload,
//! lengths and checksums fixed) only when an update is about to be sent. On a flow whose
//! secondary advertises less than the primary, every release is clamped and replaces the
//! template, while updates are rare: the headers are copied per release, the pure ACK (two
//! checksums and a parse) is built once per update. When a secondary segment moves the secondary's edge and
//! min(primary's edge, secondary's edge), rounded down to the primary's scale unit, is now
//! beyond what the client was told, the comparator releases the template with that window
//! ([`CompareOutput::WindowUpdate`](super::CompareOutput::WindowUpdate)), as a receiver
//! announcing an opened window would. A later primary segment released unlowered, a SYN, a
//! FIN, an RST or a checkpoint that flushed primary segments ends the debt.
//!
//! Invariant kept: a window update acknowledges exactly what the client was last told (the
//! template's ACK number, released through the min-ACK guard before), carries no payload and
//! no control flag, and announces a right edge at or below both guests' latest edges, above
//! what was released before; its checksums are valid. It adds no primary frame to the
//! conservation count (`CompareStats::window_updates` counts them apart).

use super::flow::SegmentSeq;
use crate::packet::checksum::{fill_ipv4_header, fill_l4, update16};
use crate::packet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, Kind, SeqNum, classify, ethernet, tcp_flags};

/// Offsets within the TCP header.
const SEQ_AT: usize = 4;
const ACK_AT: usize = 8;
const FLAGS_AT: usize = 13;
const WINDOW_AT: usize = 14;
const CHECKSUM_AT: usize = 16;

/// The template of a flow's owed window update (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct UpdateTemplate {
    /// The released segment's headers (as released: its ACK number is the update's), made
    /// the pure ACK by [`build`](Self::build) once `built`; empty until a first clamp.
    frame: Vec<u8>,
    /// Offset of its TCP header.
    l4: usize,
    /// Sequence number at the end of the released segment's payload: the pure ACK's.
    end: SeqNum,
    /// True while the client may be owed an update.
    live: bool,
    /// `frame` is the pure ACK (valid checksums).
    built: bool,
}

impl UpdateTemplate {
    /// A primary segment left through the clamp (`frame` as released, `seg` describing it):
    /// with its window lowered its headers become the template, otherwise the debt ends.
    pub(crate) fn after_clamp(&mut self, lowered: bool, frame: &[u8], seg: &SegmentSeq) {
        self.live = lowered && seg.control == 0 && self.keep(frame, seg).is_some();
    }

    /// Copies the headers of `frame` (up to the end of its TCP header).
    #[inline]
    fn keep(&mut self, frame: &[u8], seg: &SegmentSeq) -> Option<()> {
        let l4 = usize::from(seg.l4);
        let header_len = usize::from(frame.get(l4 + 12)? >> 4) * 4;
        let headers = frame.get(..l4 + header_len)?;
        self.frame.clear();
        self.frame.extend_from_slice(headers);
        self.l4 = l4;
        self.end = seg.end;
        self.built = false;
        Some(())
    }

    /// True while an update may be owed.
    #[inline]
    pub(crate) fn is_live(&self) -> bool {
        self.live
    }

    /// The debt ends (a checkpoint flushed the primary's segments, a new connection).
    pub(crate) fn clear(&mut self) {
        self.live = false;
    }

    /// Makes the kept headers a pure ACK at the end of the released segment's payload;
    /// `None` if they cannot be (an IPv6 header with extensions, an unreadable copy), and then
    /// no update is owed.
    fn build(&mut self) -> Option<()> {
        let (l4, end) = (self.l4, self.frame.len());
        let header_len = end - l4;
        let (_, ethertype, l3) = ethernet(&self.frame).ok()?;
        let f = &mut self.frame;
        match ethertype {
            ETHERTYPE_IPV4 => {
                let total = u16::try_from(end - l3).ok()?;
                f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
                fill_ipv4_header(f).then_some(())?;
            }
            // Only a header without extension headers is rewritten (the usual case).
            ETHERTYPE_IPV6 if l4 == l3 + 40 => {
                let payload = u16::try_from(header_len).ok()?;
                f[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
            }
            _ => return None,
        }
        f[l4 + SEQ_AT..l4 + SEQ_AT + 4].copy_from_slice(&self.end.0.to_be_bytes());
        f[l4 + FLAGS_AT] = tcp_flags::ACK;
        let classified = classify(f).ok()?;
        if !matches!(classified.kind, Kind::Tcp(_)) {
            return None;
        }
        fill_l4(f, &classified).then_some(())?;
        self.built = true;
        Some(())
    }

    /// The ACK number of the template, while an update may be owed (building does not change
    /// it).
    fn ack(&self) -> Option<SeqNum> {
        if !self.live {
            return None;
        }
        let t = self.frame.get(self.l4 + ACK_AT..self.l4 + ACK_AT + 4)?;
        Some(SeqNum(u32::from_be_bytes([t[0], t[1], t[2], t[3]])))
    }

    /// Builds the pure ACK if not done yet; a template that cannot be built ends the debt
    /// (as if the segment had never become one).
    fn ready(&mut self) -> bool {
        if self.live && !self.built && self.build().is_none() {
            self.live = false;
        }
        self.live
    }

    /// The template with window field `window`, in `buffer` (cleared here).
    fn with_window(&self, window: u16, mut buffer: Vec<u8>) -> Vec<u8> {
        buffer.clear();
        buffer.extend_from_slice(&self.frame);
        let at = self.l4;
        let old = u16::from_be_bytes([buffer[at + WINDOW_AT], buffer[at + WINDOW_AT + 1]]);
        let checksum = u16::from_be_bytes([buffer[at + CHECKSUM_AT], buffer[at + CHECKSUM_AT + 1]]);
        buffer[at + WINDOW_AT..at + WINDOW_AT + 2].copy_from_slice(&window.to_be_bytes());
        let checksum = update16(checksum, old, window);
        buffer[at + CHECKSUM_AT..at + CHECKSUM_AT + 2].copy_from_slice(&checksum.to_be_bytes());
        buffer
    }
}

impl super::Comparator {
    /// After a frame on flow `idx` moved the windows: releases the window update the client
    /// is owed, if any (see the module doc).
    pub(super) fn send_window_update(&mut self, idx: super::table::FlowIdx) {
        let flow = self.table.get_mut(idx);
        let Some(ack) = flow.update.ack() else {
            return;
        };
        let Some(window) = flow.tcp.windows.owed_window(ack) else {
            return;
        };
        if !flow.update.ready() {
            return;
        }
        flow.tcp.windows.note_update(ack, window);
        let frame = flow
            .update
            .with_window(window, self.spare.take().unwrap_or_default());
        self.stats.window_updates += 1;
        self.out.push(super::CompareOutput::WindowUpdate(frame));
    }
}
