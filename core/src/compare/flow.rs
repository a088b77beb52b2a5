//! One flow's two queues and the comparison of non-TCP frames (datagrams and whole frames).
//!
//! A [`Flow`] holds the primary frames still waiting for their secondary counterpart and the
//! secondary frames not yet matched. TCP flows are driven by [`super::tcp`]; every other class
//! is compared here. QEMU (`colo_packet_compare_udp/icmp`) tries only the primary's oldest
//! frame against the queued secondary ones, so a secondary that emits two datagrams in the
//! other order after the primary's copies were queued miscompares. colo pairs each secondary
//! frame with the first equal, not yet paired primary frame of the flow (any position), consumes
//! the secondary frame at once and releases paired primary frames from the front only, so
//! frames leave in the primary's order. A primary frame still unpaired at the front once
//! `datagram_reorder_window` frames have been paired behind it or wait unpaired on the
//! secondary is a miscompare: an emission order differing by less than the window never is.
//!
//! Invariant kept: frames leave a flow only through [`Sink`], which counts each one exactly once
//! and frees its slot in the arrival ring, so nothing leaves a flow uncounted.

use super::ages::{Ages, FrameId};
use super::history::History;
use super::stats::CompareStats;
use super::tcp::TcpStream;
use super::window::Windows;
use super::window_update::UpdateTemplate;
use super::{CompareOutput, MiscompareWhy, MismatchReason};
use crate::packet::{FlowKey, SeqNum};
use crate::time::Instant;
use std::collections::VecDeque;

/// How frames of a flow are compared. Part of the table key, so frames of different classes
/// never share a queue even if their [`FlowKey`]s coincide (a TCP segment and an IP fragment of
/// the same port-less 5-tuple, say).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum FlowClass {
    /// TCP: payload bytes compared as a stream, by sequence number.
    Tcp,
    /// UDP, ICMP, ICMPv6, other IP protocols and IP fragments: everything after the IP header.
    Datagram,
    /// ARP, other EtherTypes and unreadable frames: the whole frame.
    Frame,
}

/// Where a held TCP segment sits in its stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentSeq {
    /// Sequence number of the first payload byte (the SYN's own number excluded).
    pub(crate) seq: SeqNum,
    /// Sequence number after the last payload byte.
    pub(crate) end: SeqNum,
    /// The segment's acknowledgment number, if it carries ACK.
    pub(crate) ack: Option<SeqNum>,
    /// Payload bytes before this point are known equal (compared, or already released).
    pub(crate) verified: SeqNum,
    /// Held only for the min-ACK guard and stream order, never compared: a segment without
    /// payload or a retransmission (`verified == end`), released uncompared once it reaches
    /// the front of the queue and its ACK is allowed.
    pub(crate) uncompared: bool,
    /// The control flags (SYN, FIN, RST) it carries, held until the secondary sent the same
    /// (`TcpStream::control`). Judged on primary segments only: the secondary's are recorded
    /// in the stream state when they arrive.
    pub(crate) control: u8,
    /// The advertised window field (unscaled), for the window clamp (`super::window`).
    pub(crate) window: u16,
    /// Offset of the TCP header in the frame.
    pub(crate) l4: u16,
}

/// A frame a flow holds.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) id: FrameId,
    pub(crate) frame: Vec<u8>,
    /// The compared bytes: TCP payload, IP payload or the whole frame.
    pub(crate) body_start: usize,
    pub(crate) body_end: usize,
    /// Present for TCP segments.
    pub(crate) tcp: Option<SegmentSeq>,
    /// A datagram (or whole frame) of the primary whose secondary twin was consumed: it leaves
    /// as matched once every primary frame before it has.
    pub(crate) paired: bool,
}

impl Held {
    pub(crate) fn body(&self) -> &[u8] {
        &self.frame[self.body_start..self.body_end]
    }
}

/// One flow: its key, its class and its two queues.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) key: FlowKey,
    pub(crate) class: FlowClass,
    pub(crate) primary: VecDeque<Held>,
    pub(crate) secondary: VecDeque<Held>,
    /// Stream state (TCP flows only; untouched otherwise).
    pub(crate) tcp: TcpStream,
    /// A miscompare happened: nothing more is compared or released as matched until the
    /// checkpoint that resolves it completes.
    pub(crate) diverged: bool,
    /// The primary sent FIN or RST: forget the flow after `closed_flow_linger`.
    pub(crate) closing: bool,
    /// Time of the last frame, either side.
    pub(crate) last_active: Instant,
    /// The last bytes released on a TCP flow, to check retransmissions against.
    pub(crate) history: History,
    /// `CompareConfig::retransmit_history`.
    pub(crate) history_bound: usize,
    /// `CompareConfig::datagram_reorder_window`.
    pub(crate) reorder_window: usize,
    /// When the garbage collector looks at this flow next (mirrors the table's GC set).
    pub(crate) gc_at: Option<Instant>,
    /// The window update the client may be owed after a clamp (`super::window_update`).
    pub(crate) update: UpdateTemplate,
}

/// Preallocated queue depth per side: the usual depth (a frame waiting for its twin) without
/// reallocating, small enough that a full table of 16384 flows stays near 10 MB.
const QUEUE_PREALLOC: usize = 4;

impl Flow {
    pub(crate) fn new(
        key: FlowKey,
        class: FlowClass,
        now: Instant,
        config: &super::CompareConfig,
    ) -> Flow {
        Flow {
            key,
            class,
            primary: VecDeque::with_capacity(QUEUE_PREALLOC),
            secondary: VecDeque::with_capacity(QUEUE_PREALLOC),
            tcp: TcpStream::default(),
            diverged: false,
            closing: false,
            last_active: now,
            gc_at: None,
            history: History::default(),
            history_bound: config.retransmit_history,
            reorder_window: config.datagram_reorder_window,
            update: UpdateTemplate::default(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.primary.is_empty() && self.secondary.is_empty()
    }

    /// Compares what can be compared now and releases what matched. Returns the miscompare
    /// that made the flow diverge, if this call found one.
    pub(crate) fn advance(&mut self, sink: &mut Sink<'_>) -> Option<MiscompareWhy> {
        if self.diverged {
            return None;
        }
        let found = match self.class {
            FlowClass::Tcp => super::tcp::advance(self, sink),
            FlowClass::Datagram | FlowClass::Frame => self.advance_datagrams(sink),
        };
        if found.is_some() {
            self.diverged = true;
        }
        found
    }

    /// The rule for every non-TCP class (see the module doc): pair each queued secondary
    /// frame with the first equal unpaired primary frame, release paired frames from the
    /// front, and report a miscompare once the unpaired front has a window's worth of the
    /// secondary's frames paired behind it or waiting unpaired.
    fn advance_datagrams(&mut self, sink: &mut Sink<'_>) -> Option<MiscompareWhy> {
        let Flow {
            primary, secondary, ..
        } = self;
        let mut i = 0;
        while i < secondary.len() {
            let body = secondary[i].body();
            match primary.iter().position(|p| !p.paired && p.body() == body) {
                Some(at) => {
                    primary[at].paired = true;
                    if let Some(twin) = secondary.remove(i) {
                        sink.secondary_matched(twin);
                    }
                }
                None => i += 1,
            }
        }
        release_paired(primary, sink);
        let head = primary.front()?;
        let paired_behind = primary.iter().filter(|p| p.paired).count();
        if paired_behind + secondary.len() >= self.reorder_window {
            let other = secondary.front().map(Held::body).unwrap_or_default();
            return Some(explain(head.body(), other));
        }
        None
    }
}

/// Releases the paired datagrams at the front of a primary queue, in order.
#[inline]
pub(crate) fn release_paired(primary: &mut VecDeque<Held>, sink: &mut Sink<'_>) {
    while primary.front().is_some_and(|p| p.paired) {
        if let Some(head) = primary.pop_front() {
            sink.release_matched(head);
        }
    }
}

/// Describes the first difference between a primary and a secondary byte string.
pub(crate) fn explain(primary: &[u8], secondary: &[u8]) -> MiscompareWhy {
    let offset = first_difference(primary, secondary);
    let reason = if primary.len() != secondary.len() {
        MismatchReason::LengthDiffers {
            primary: primary.len(),
            secondary: secondary.len(),
        }
    } else {
        MismatchReason::BytesDiffer
    };
    MiscompareWhy { offset, reason }
}

/// Index of the first differing byte, or the shorter length if one is a prefix of the other.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Buffers of secondary frames the comparator is done with, kept (emptied, capacity intact) for
/// the runtime to receive the next frames into: in steady state no frame buffer is allocated
/// or freed. Bounded, so a burst does not pin memory.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    buffers: Vec<Vec<u8>>,
}

/// Buffers kept at most.
pub(crate) const SPARE_MAX: usize = 256;

impl Spare {
    /// Room for every buffer it may keep, reserved once (6 KB), so keeping one never
    /// reallocates.
    pub(crate) fn with_room() -> Spare {
        Spare {
            buffers: Vec::with_capacity(SPARE_MAX),
        }
    }

    pub(crate) fn keep(&mut self, mut frame: Vec<u8>) {
        if self.buffers.len() < SPARE_MAX {
            frame.clear();
            self.buffers.push(frame);
        }
    }

    pub(crate) fn take(&mut self) -> Option<Vec<u8>> {
        self.buffers.pop()
    }
}

/// Where frames leave a flow: counts them, frees their arrival slot, queues released frames.
#[derive(Debug)]
pub(crate) struct Sink<'a> {
    pub(crate) out: &'a mut crate::outbox::Outbox<CompareOutput>,
    pub(crate) stats: &'a mut CompareStats,
    pub(crate) ages: &'a mut Ages,
    pub(crate) spare: &'a mut Spare,
}

impl Sink<'_> {
    /// Clamps the window of a primary TCP frame about to leave (`super::window`), counted,
    /// and keeps `update` (`super::window_update`) in step.
    #[inline]
    pub(crate) fn clamp(
        &mut self,
        windows: &mut Windows,
        update: &mut UpdateTemplate,
        frame: &mut [u8],
        seg: &SegmentSeq,
    ) {
        let lowered = windows.clamp(frame, seg);
        if lowered {
            self.stats.windows_clamped += 1;
        }
        if lowered || update.is_live() {
            update.after_clamp(lowered, frame, seg);
        }
    }

    #[inline]
    pub(crate) fn release_matched(&mut self, held: Held) {
        self.ages.forget(held.id);
        self.stats.released_matched += 1;
        self.stats.held_primary -= 1;
        self.stats.bytes_matched += (held.body_end - held.body_start) as u64;
        self.out.push(CompareOutput::Release(held.frame));
    }

    /// A held primary segment that needed no comparison (zero payload or retransmission) and
    /// whose ACK the secondary has now reached.
    pub(crate) fn release_uncompared(&mut self, held: Held) {
        self.ages.forget(held.id);
        self.stats.released_uncompared += 1;
        self.stats.held_primary -= 1;
        self.out.push(CompareOutput::Release(held.frame));
    }

    /// A frame that matched on arrival (the fast path), never held, so without an arrival
    /// slot: a primary frame is released, a secondary frame's buffer is kept for reuse.
    #[inline]
    pub(crate) fn matched_unheld(&mut self, side: super::Side, frame: Vec<u8>, body_len: usize) {
        match side {
            super::Side::Primary => {
                self.stats.released_matched += 1;
                self.stats.bytes_matched += body_len as u64;
                self.out.push(CompareOutput::Release(frame));
            }
            super::Side::Secondary => {
                self.stats.secondary_matched += 1;
                self.spare.keep(frame);
            }
        }
    }

    #[inline]
    pub(crate) fn secondary_matched(&mut self, held: Held) {
        self.forget_secondary_matched(&held);
        self.spare.keep(held.frame);
    }

    /// Counts a held secondary frame as matched and frees its arrival slot; the caller keeps
    /// its buffer (the released bytes' history adopts it).
    #[inline]
    pub(crate) fn forget_secondary_matched(&mut self, held: &Held) {
        self.ages.forget(held.id);
        self.stats.secondary_matched += 1;
        self.stats.held_secondary -= 1;
    }

    /// Counts a secondary frame that matched on arrival (never held) whose buffer the
    /// released bytes' history adopted or recycled.
    #[inline]
    pub(crate) fn secondary_matched_unheld(&mut self) {
        self.stats.secondary_matched += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_reports_prefix_length() {
        assert_eq!(first_difference(b"abc", b"abd"), 2);
        assert_eq!(first_difference(b"ab", b"abc"), 2);
        assert_eq!(first_difference(b"", b""), 0);
        let why = explain(b"abcd", b"abc");
        assert_eq!(why.offset, 3);
        assert_eq!(
            why.reason,
            MismatchReason::LengthDiffers {
                primary: 4,
                secondary: 3
            }
        );
    }
}
