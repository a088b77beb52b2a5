//! The resend buffer: the secondary's recent TCP output the client has not acknowledged, sent
//! again on the guest's behalf when the secondary takes over.
//!
//! Why: while paired, the client gets the primary's copy of the guest's output; a segment the
//! primary held (waiting for the comparison, the min-ACK guard, a checkpoint) or released but
//! the network lost is gone with the primary. The survivor's guest sent the same bytes to the
//! primary's comparator, which no longer exists, and sends them again only when its own
//! retransmission timer fires (smoltcp's minimum is 1 s, Linux's 200 ms): the client waits that
//! long after a failover (docs/benchmarks.md, item 6). So the secondary keeps, per connection,
//! copies of the SVM's TCP segments carrying data or FIN beyond the highest ACK the client sent
//! (it sees the client's frames: the primary mirrors them), and at takeover hands them back to
//! be sent to the client at once. A retransmission on the guest's behalf is legal TCP: the
//! client keeps the first copy of each byte and discards duplicates; the guest's own later
//! retransmissions are duplicates the same way. UDP and other protocols are never resent
//! (their senders expect no such thing).
//!
//! The frames are recorded after the secondary's rewriter translated them (the client-facing
//! numbering the primary's comparator compares in, the numbering the survivor keeps using
//! after the takeover), and only for connections whose offset the rewriter knows; client ACKs
//! are read before the inbound translation, in the same numbering. A checkpoint the secondary
//! applies replaces the guest's state with the primary's: what the SVM sent before it may
//! differ from what the client got (a miscompare's bytes), so the buffer is emptied
//! ([`ResendBuffer::clear`]); bytes the primary sent before that checkpoint are then resent by
//! the guest's own timer, as before.
//!
//! Bounds: at most `max_flows` connections (a new one evicts the one recorded least recently)
//! and `max_bytes_per_flow` payload bytes each; a segment that does not fit is not kept
//! (counted): the oldest unacknowledged bytes, the ones the client needs first, stay.
//!
//! Invariant kept: only TCP segments with payload or FIN, never SYN or RST, whose end is past
//! the client's highest ACK on their connection when recorded, are ever handed back, each at
//! most once, in sequence order per connection; memory stays within the bounds.

use super::ConnKey;
use crate::packet::{Kind, SeqNum, classify, tcp_flags};
use std::collections::{BTreeMap, VecDeque};

/// Bounds of a [`ResendBuffer`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ResendConfig {
    /// Connections kept at most.
    pub max_flows: usize,
    /// Payload bytes kept per connection at most.
    pub max_bytes_per_flow: usize,
}

impl Default for ResendConfig {
    fn default() -> Self {
        ResendConfig {
            max_flows: 1024,
            // Two 32 KiB windows of the test guest; a Linux guest's window in flight is
            // usually larger, and what does not fit waits for the guest's own timer.
            max_bytes_per_flow: 64 * 1024,
        }
    }
}

/// Counters of a [`ResendBuffer`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ResendStats {
    /// Segments kept.
    pub recorded: u64,
    /// Segments not kept because their connection's buffer was full.
    pub over_bound: u64,
    /// Segments dropped because the client acknowledged them.
    pub acknowledged: u64,
    /// Segments dropped by a checkpoint, a reset or a new connection on the same ports.
    pub discarded: u64,
    /// Connections evicted to make room for another.
    pub evicted: u64,
    /// Segments handed back for resending.
    pub resent: u64,
}

/// One kept segment.
#[derive(Debug)]
struct Segment {
    /// End of its sequence space (payload, plus one for FIN).
    end: SeqNum,
    payload: usize,
    frame: Vec<u8>,
}

/// One connection's kept segments, in the order the guest sent them.
#[derive(Debug, Default)]
struct Flow {
    segments: VecDeque<Segment>,
    bytes: usize,
    client_ack: Option<SeqNum>,
    /// When it was last recorded into (a counter, for eviction).
    touched: u64,
}

/// See the module doc.
#[derive(Debug)]
pub struct ResendBuffer {
    config: ResendConfig,
    flows: BTreeMap<ConnKey, Flow>,
    clock: u64,
    stats: ResendStats,
}

/// A TCP frame's connection key, as the guest sees it, and its summary.
fn tcp_of(frame: &[u8], outbound: bool) -> Option<(ConnKey, crate::packet::TcpInfo)> {
    let classified = classify(frame).ok()?;
    let Kind::Tcp(info) = classified.kind else {
        return None;
    };
    let key = ConnKey::of_flow(classified.key, outbound)?;
    Some((key, info))
}

impl ResendBuffer {
    /// An empty buffer.
    pub fn new(config: ResendConfig) -> ResendBuffer {
        ResendBuffer {
            config,
            flows: BTreeMap::new(),
            clock: 0,
            stats: ResendStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ResendStats {
        self.stats
    }

    /// Segments kept now.
    pub fn len(&self) -> usize {
        self.flows.values().map(|f| f.segments.len()).sum()
    }

    /// True if nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.flows.values().all(|f| f.segments.is_empty())
    }

    fn forget(&mut self, key: &ConnKey) {
        if let Some(flow) = self.flows.remove(key) {
            self.stats.discarded += flow.segments.len() as u64;
        }
    }

    /// A frame the guest sent, in the client-facing numbering, on a connection whose
    /// translation is known (`translated`; the caller asks its rewriter). Keeps a copy if it is
    /// a TCP segment with data or FIN the client has not acknowledged.
    pub fn record_guest(&mut self, frame: &[u8], translated: impl FnOnce(&ConnKey) -> bool) {
        let Some((key, info)) = tcp_of(frame, true) else {
            return;
        };
        if info.flags & (tcp_flags::RST | tcp_flags::SYN) != 0 {
            // A reset ends the connection; a SYN starts another on the same ports.
            self.forget(&key);
            return;
        }
        let len = info.seq_len();
        if len == 0 || !translated(&key) {
            return;
        }
        let end = info.seq.wrapping_add(len);
        self.clock += 1;
        if !self.flows.contains_key(&key) && self.flows.len() >= self.config.max_flows {
            let victim = self
                .flows
                .iter()
                .min_by_key(|(k, f)| (f.touched, **k))
                .map(|(k, _)| *k);
            if let Some(victim) = victim {
                self.forget(&victim);
                self.stats.evicted += 1;
            }
        }
        if self.config.max_flows == 0 {
            self.stats.over_bound += 1;
            return;
        }
        let flow = self.flows.entry(key).or_default();
        flow.touched = self.clock;
        if flow.client_ack.is_some_and(|a| !a.before(end))
            || flow.segments.back().is_some_and(|b| !b.end.before(end))
        {
            // Acknowledged already, or a retransmission of bytes kept already.
            return;
        }
        let payload = info.payload_len();
        if flow.bytes + payload > self.config.max_bytes_per_flow {
            self.stats.over_bound += 1;
            return;
        }
        flow.bytes += payload;
        flow.segments.push_back(Segment {
            end,
            payload,
            frame: frame.to_vec(),
        });
        self.stats.recorded += 1;
    }

    /// A frame the client sent, before the inbound translation: its ACK drops what it covers;
    /// a reset or a new connection on the same ports drops the connection's segments.
    pub fn record_client(&mut self, frame: &[u8]) {
        let Some((key, info)) = tcp_of(frame, false) else {
            return;
        };
        if info.has(tcp_flags::RST)
            || info.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
        {
            self.forget(&key);
            return;
        }
        if !info.has(tcp_flags::ACK) {
            return;
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let ack = info.ack;
        if flow.client_ack.is_some_and(|a| !a.before(ack)) {
            return;
        }
        flow.client_ack = Some(ack);
        while let Some(seg) = flow.segments.front() {
            if seg.end.before(ack) || seg.end == ack {
                flow.bytes -= seg.payload;
                flow.segments.pop_front();
                self.stats.acknowledged += 1;
            } else {
                break;
            }
        }
    }

    /// A checkpoint replaced the guest's state: forget everything (see the module doc).
    pub fn clear(&mut self) {
        let kept = self.len() as u64;
        self.stats.discarded += kept;
        self.flows.clear();
    }

    /// The takeover: every kept segment, connection by connection (in key order), each in the
    /// order the guest sent it; the buffer is empty afterwards.
    pub fn take_unacknowledged(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for (_, flow) in std::mem::take(&mut self.flows) {
            frames.extend(flow.segments.into_iter().map(|s| s.frame));
        }
        self.stats.resent += frames.len() as u64;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::testkit::{self, CLIENT_IP4, CLIENT_MAC, Headers, VM_IP4, VM_MAC};
    use crate::packet::tcp_flags::{ACK, FIN, PSH, RST, SYN};

    /// A guest segment (VM -> client, port 80 -> 40000).
    fn guest(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        testkit::tcp(&Headers::default(), seq, 1, flags, payload)
    }

    /// A client segment (client -> VM, port 40000 -> 80) acknowledging `ack`.
    fn client(ack: u32, flags: u8) -> Vec<u8> {
        let mut b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, VM_MAC)
            .ipv4(CLIENT_IP4, VM_IP4, 64)
            .tcp(40000, 80, 1, 65535);
        if flags & ACK != 0 {
            b = b.ack(ack);
        }
        if flags & SYN != 0 {
            b = b.syn();
        }
        if flags & RST != 0 {
            b = b.rst();
        }
        let mut frame = Vec::new();
        b.write(&mut frame, &[]).expect("writing into a Vec");
        frame
    }

    fn buffer() -> ResendBuffer {
        ResendBuffer::new(ResendConfig::default())
    }

    #[test]
    fn unacknowledged_segments_are_handed_back_once_in_order() {
        let mut b = buffer();
        let (a, c, fin) = (
            guest(100, ACK | PSH, b"abcd"),
            guest(104, ACK | PSH, b"efgh"),
            guest(108, ACK | FIN, b""),
        );
        for f in [&a, &c, &fin] {
            b.record_guest(f, |_| true);
        }
        b.record_client(&client(104, ACK));
        assert_eq!(b.len(), 2, "the first segment is acknowledged");
        assert_eq!(b.take_unacknowledged(), vec![c, fin]);
        assert!(b.is_empty());
        assert!(b.take_unacknowledged().is_empty(), "handed back once");
        assert_eq!(b.stats().resent, 2);
        assert_eq!(b.stats().acknowledged, 1);
    }

    #[test]
    fn acknowledged_and_retransmitted_bytes_are_not_kept() {
        let mut b = buffer();
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        assert_eq!(
            b.len(),
            1,
            "a retransmission of kept bytes is not kept twice"
        );
        b.record_client(&client(104, ACK));
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        assert!(b.is_empty(), "bytes the client acknowledged are never kept");
    }

    #[test]
    fn udp_pure_acks_syn_and_untranslated_connections_are_never_kept() {
        let mut b = buffer();
        b.record_guest(&testkit::udp(&Headers::default(), b"datagram"), |_| true);
        b.record_guest(&guest(100, ACK, b""), |_| true);
        b.record_guest(&guest(99, SYN | ACK, b""), |_| true);
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| false);
        assert!(b.is_empty());
        assert_eq!(b.stats().recorded, 0);
    }

    #[test]
    fn a_reset_or_a_new_connection_forgets_the_old_one() {
        let mut b = buffer();
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        b.record_client(&client(0, RST));
        assert!(b.is_empty(), "the client reset the connection");
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        b.record_client(&client(0, SYN));
        assert!(
            b.is_empty(),
            "the client opened a new one on the same ports"
        );
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        b.record_guest(&guest(104, ACK | RST, b""), |_| true);
        assert!(b.is_empty(), "the guest reset it");
        assert_eq!(b.stats().discarded, 3);
    }

    #[test]
    fn a_checkpoint_empties_the_buffer() {
        let mut b = buffer();
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        b.clear();
        assert!(b.take_unacknowledged().is_empty());
        assert_eq!(b.stats().discarded, 1);
    }

    #[test]
    fn the_bounds_keep_the_oldest_bytes_and_the_recent_connections() {
        let mut b = ResendBuffer::new(ResendConfig {
            max_flows: 1,
            max_bytes_per_flow: 6,
        });
        b.record_guest(&guest(100, ACK | PSH, b"abcd"), |_| true);
        b.record_guest(&guest(104, ACK | PSH, b"efgh"), |_| true);
        assert_eq!(b.len(), 1, "the second segment does not fit");
        assert_eq!(b.stats().over_bound, 1);
        let other = testkit::tcp(
            &Headers {
                src_port: 81,
                ..Headers::default()
            },
            7,
            1,
            ACK | PSH,
            b"x",
        );
        b.record_guest(&other, |_| true);
        assert_eq!(b.stats().evicted, 1);
        assert_eq!(b.take_unacknowledged(), vec![other]);
    }
}
