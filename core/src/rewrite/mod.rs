//! The secondary-side TCP sequence-number [`Rewriter`] (QEMU's `filter-rewriter`, extended to
//! guest-opened connections and SACK blocks).
//!
//! The SVM's TCP stack picks its own initial sequence numbers, so for every connection the SVM
//! numbers the guest's bytes differently from the PVM by a constant offset. The rewriter learns
//! that offset from the handshake and rewrites, in place and with incremental checksum updates:
//! frames into the SVM (ack and SACK edges: primary numbering -> SVM numbering) and frames out of
//! the SVM (seq: SVM numbering -> primary numbering), so the primary's comparator sees primary
//! numbering. The peer's own sequence space is shared by PVM and SVM and is never touched.
//!
//! Invariants kept: a frame's length never changes and only seq, ack, SACK edges and the TCP
//! checksum ever change; a checksum that verified before a rewrite verifies after it; no frame is
//! ever dropped or made to panic; every decision is counted in [`RewriterStats`].

mod client;
pub mod resend;
mod table;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use client::{ClientTranslation, TRANSLATED_CONNS_PER_MESSAGE, TranslatedConn};
pub use table::{ConnKey, Phase};

use crate::packet::{Kind, SeqNum, TcpInfo, TcpSegmentMut, classify, tcp_flags};
use crate::time::Instant;
use table::{Conn, Insert, Table};

/// Rewriter configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RewriterConfig {
    /// Most connections tracked at once. When full, a new connection evicts a closing or the
    /// longest-idle one (counted in [`RewriterStats::evicted`]). 0 tracks nothing.
    pub connections_max: usize,
}

impl Default for RewriterConfig {
    fn default() -> Self {
        // An entry (key and state) is about 100 bytes, so a full table costs under 2 MiB, and
        // a miss is harmless (the frame passes untracked and at worst causes a checkpoint).
        RewriterConfig {
            connections_max: 16_384,
        }
    }
}

/// What the rewriter did with a frame. Whatever the verdict, the caller forwards the frame as
/// it now is: the rewriter never asks for a frame to be dropped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Sequence numbers were rewritten in place and the TCP checksum fixed.
    Rewritten,
    /// A tracked connection's frame needing no change: its offset is 0, or not yet known.
    Unchanged,
    /// Passed through unchanged without tracking, for the reason given.
    Passed(PassReason),
}

/// Why a frame was passed through without tracking.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PassReason {
    /// Not a TCP segment (other IP protocols, IP fragments, ARP, ...).
    NotTcp,
    /// The frame could not be parsed.
    Malformed,
    /// A TCP segment of no tracked connection (its SYN was never seen, it was evicted, or it
    /// closed already; or the table's capacity is 0).
    Untracked,
    /// A new connection opened after failover: the SVM now numbers it for the client itself,
    /// so there is nothing to rewrite and it is never tracked.
    Failover,
}

/// Counters of every decision the rewriter made. Each frame increments exactly one of
/// `rewritten`, `unchanged`, `passed_not_tcp`, `passed_malformed`, `passed_untracked`,
/// `passed_failover`; the others count events on connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RewriterStats {
    /// Frames rewritten.
    pub rewritten: u64,
    /// Frames of tracked connections left unchanged (offset 0 or unknown).
    pub unchanged: u64,
    /// Frames that were not TCP.
    pub passed_not_tcp: u64,
    /// Frames that could not be parsed.
    pub passed_malformed: u64,
    /// TCP frames of no tracked connection.
    pub passed_untracked: u64,
    /// TCP frames of connections opened after failover.
    pub passed_failover: u64,
    /// Connections that started being tracked (a SYN seen).
    pub opened: u64,
    /// Tracked connections replaced by a new SYN on the same addresses (port reuse).
    pub reopened: u64,
    /// Offsets learned from a completed handshake.
    pub offsets_learned: u64,
    /// Connections removed after FINs both ways and their final ACK.
    pub closed: u64,
    /// Connections removed by a RST.
    pub aborted: u64,
    /// Connections evicted to make room in a full table.
    pub evicted: u64,
    /// Calls to [`Rewriter::reset_offsets`].
    pub resets: u64,
    /// Entries whose offset a reset changed to 0 (non-zero or still unknown before).
    pub offsets_cleared: u64,
    /// SACK edges rewritten.
    pub sack_edges_rewritten: u64,
    /// Inbound frames whose TCP options were malformed (SACK edges before the error were still
    /// rewritten, as a receiver would still read them).
    pub option_errors: u64,
}

/// Which way a frame travels relative to the SVM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    /// Into the SVM: mirrored client/server frames (before failover) or frames straight from
    /// the network (after failover).
    Inbound,
    /// Out of the SVM: to the comparator (before failover) or to the network (after).
    Outbound,
}

/// Whether the rewriter serves a live secondary or a secondary that took over.
///
/// Transitions: `Replicating -> Failover` on [`Rewriter::enter_failover`], never back (a
/// survivor that gets a new secondary starts a fresh rewriter on that secondary).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// The primary is alive: new connections are tracked.
    Replicating,
    /// The secondary took over: only connections already tracked are followed until they close.
    Failover,
}

/// The secondary's TCP sequence-number rewriter.
///
/// How to drive it (sans-IO, all on the caller's thread):
/// - every frame going into the SVM (mirrored from the primary, or after failover arriving from
///   the network) goes through [`Rewriter::rewrite_inbound`] before the SVM sees it;
/// - every frame the SVM emits goes through [`Rewriter::rewrite_outbound`] before it is sent to
///   the primary's comparator (or, after failover, to the network);
/// - when a checkpoint has been loaded into the SVM, call [`Rewriter::reset_offsets`];
/// - when this secondary takes over, call [`Rewriter::enter_failover`].
///
/// Frames are rewritten in place and never change length; the caller forwards every frame
/// whatever the [`Verdict`]. `now` must never go backwards between calls (it orders idle
/// eviction); a call with an earlier `now` panics naming that rule.
///
/// Known consequence of learning offsets from the handshake: the SVM's SYN-ACK (client-opened)
/// and SYN (guest-opened) leave with the SVM's ISN, because the primary's ISN is not known yet.
/// The comparator must therefore not compare the sequence number of SYN segments, as QEMU's
/// colo-compare does for SYN-ACKs.
#[derive(Clone, Debug)]
pub struct Rewriter {
    table: Table,
    mode: Mode,
    stats: RewriterStats,
    last_now: Instant,
}

impl Rewriter {
    /// A rewriter with an empty table.
    pub fn new(config: RewriterConfig) -> Rewriter {
        Rewriter {
            table: Table::new(config.connections_max),
            mode: Mode::Replicating,
            stats: RewriterStats::default(),
            last_now: Instant::ZERO,
        }
    }

    /// Rewrites a frame going into the SVM: ack and SACK edges move from primary numbering into
    /// SVM numbering.
    pub fn rewrite_inbound(&mut self, now: Instant, frame: &mut [u8]) -> Verdict {
        self.handle_frame(now, frame, Direction::Inbound)
    }

    /// Rewrites a frame coming out of the SVM: seq moves from SVM numbering into primary
    /// numbering.
    pub fn rewrite_outbound(&mut self, now: Instant, frame: &mut [u8]) -> Verdict {
        self.handle_frame(now, frame, Direction::Outbound)
    }

    /// A checkpoint was loaded into the SVM: it now has the primary's TCP state, so every offset
    /// becomes 0. Entries are kept, so their closes are still tracked, and half-finished
    /// handshakes stop waiting (the SVM's ISN is now the primary's).
    pub fn reset_offsets(&mut self) {
        self.stats.resets += 1;
        self.stats.offsets_cleared += self.table.reset_offsets();
    }

    /// The secondary took over. Connections with a non-zero offset keep being rewritten both ways
    /// (clients keep the primary's numbering for their whole life); offset-0 ones are followed
    /// only until they close; new connections are never tracked. Idempotent.
    pub fn enter_failover(&mut self) {
        self.mode = Mode::Failover;
    }

    /// True once [`Rewriter::enter_failover`] was called.
    pub fn in_failover(&self) -> bool {
        self.mode == Mode::Failover
    }

    /// The counters.
    pub fn stats(&self) -> RewriterStats {
        self.stats
    }

    /// Number of tracked connections.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// The handshake phase (and so the offset) of a tracked connection.
    pub fn phase(&self, key: &ConnKey) -> Option<Phase> {
        self.table.get(key).map(|c| c.phase)
    }

    /// Every tracked connection and its phase, in key order.
    pub fn phases(&self) -> impl Iterator<Item = (ConnKey, Phase)> + '_ {
        self.table.iter().map(|(k, c)| (*k, c.phase))
    }

    fn handle_frame(&mut self, now: Instant, frame: &mut [u8], dir: Direction) -> Verdict {
        assert!(
            now >= self.last_now,
            "Rewriter: `now` went backwards ({now:?} < {:?}); the caller must pass a monotonic time",
            self.last_now
        );
        self.last_now = now;
        let verdict = self.on_frame(now, frame, dir);
        let counter = match verdict {
            Verdict::Rewritten => &mut self.stats.rewritten,
            Verdict::Unchanged => &mut self.stats.unchanged,
            Verdict::Passed(PassReason::NotTcp) => &mut self.stats.passed_not_tcp,
            Verdict::Passed(PassReason::Malformed) => &mut self.stats.passed_malformed,
            Verdict::Passed(PassReason::Untracked) => &mut self.stats.passed_untracked,
            Verdict::Passed(PassReason::Failover) => &mut self.stats.passed_failover,
        };
        *counter += 1;
        verdict
    }

    fn on_frame(&mut self, now: Instant, frame: &mut [u8], dir: Direction) -> Verdict {
        let Ok(classified) = classify(frame) else {
            return Verdict::Passed(PassReason::Malformed);
        };
        let Kind::Tcp(info) = classified.kind else {
            return Verdict::Passed(PassReason::NotTcp);
        };
        let Some(key) = ConnKey::of_flow(classified.key, dir == Direction::Outbound) else {
            return Verdict::Passed(PassReason::NotTcp);
        };

        let opens = info.has(tcp_flags::SYN) && info.flags & (tcp_flags::ACK | tcp_flags::RST) == 0;
        if opens && let Some(verdict) = self.on_syn(now, key, &info, dir) {
            return verdict;
        }
        let Some(conn) = self.table.get_mut(&key) else {
            return Verdict::Passed(PassReason::Untracked);
        };
        conn.last_seen = now;
        if Self::on_handshake(conn, &info, dir) {
            self.stats.offsets_learned += 1;
        }
        let offset = conn.phase.offset().unwrap_or(0);

        // Rewrite. `TcpSegmentMut::new` cannot fail on the frame `classified` came from.
        let Some(mut seg) = TcpSegmentMut::new(frame, &classified) else {
            return Verdict::Passed(PassReason::Malformed);
        };
        // The ack as the peer (inbound) or the SVM (outbound) sent it: in primary numbering for
        // the guest's bytes, in the shared numbering for the peer's. Close tracking uses it.
        let ack_sent = seg.ack();
        let mut changed = false;
        if offset != 0 {
            match dir {
                Direction::Outbound => {
                    seg.set_seq(seg.seq().wrapping_add(offset));
                    changed = true;
                }
                Direction::Inbound if info.has(tcp_flags::ACK) => {
                    // The ack and the SACK edges name the guest's bytes: PVM -> SVM numbering.
                    let back = offset.wrapping_neg();
                    seg.set_ack(ack_sent.wrapping_add(back));
                    let shift = seg.shift_sack_edges(back);
                    self.stats.sack_edges_rewritten += shift.edges as u64;
                    self.stats.option_errors += u64::from(shift.error.is_some());
                    changed = true;
                }
                Direction::Inbound => {}
            }
        }
        let seq_now = seg.seq();

        // Close tracking, in primary numbering for the guest's bytes (the numbering clients see,
        // stable across checkpoints) and in the shared numbering for the peer's bytes.
        let fin_end = seq_now.wrapping_add(info.seq_len());
        let acks = |fin: Option<SeqNum>| {
            info.has(tcp_flags::ACK) && fin.is_some_and(|f| ack_sent.at_or_after(f))
        };
        match dir {
            Direction::Outbound => {
                if info.has(tcp_flags::FIN) {
                    conn.guest_fin = Some(fin_end);
                }
                conn.peer_fin_acked |= acks(conn.peer_fin);
            }
            Direction::Inbound => {
                if info.has(tcp_flags::FIN) {
                    conn.peer_fin = Some(fin_end);
                }
                conn.guest_fin_acked |= acks(conn.guest_fin);
            }
        }
        if info.has(tcp_flags::RST) {
            self.table.remove(&key);
            self.stats.aborted += 1;
        } else if conn.closed() {
            self.table.remove(&key);
            self.stats.closed += 1;
        }
        if changed {
            Verdict::Rewritten
        } else {
            Verdict::Unchanged
        }
    }

    /// A SYN without ACK opens (or re-opens) tracking. Returns a verdict when the frame is done
    /// with (a new connection after failover, or a table that refuses entries).
    fn on_syn(
        &mut self,
        now: Instant,
        key: ConnKey,
        info: &TcpInfo,
        dir: Direction,
    ) -> Option<Verdict> {
        let phase = match dir {
            Direction::Inbound => Phase::SynReceived { pvm_isn: None },
            Direction::Outbound => Phase::SynSent { svm_isn: info.seq },
        };
        match self.table.get(&key).map(|c| c.phase) {
            // A retransmitted SYN during the handshake changes nothing; a guest SYN retried
            // with a new ISN updates it.
            Some(Phase::SynReceived { .. } | Phase::SynAckSent { .. })
                if dir == Direction::Inbound =>
            {
                return None;
            }
            Some(Phase::SynSent { .. }) if dir == Direction::Outbound => {
                if let Some(conn) = self.table.get_mut(&key) {
                    conn.phase = phase;
                }
                return None;
            }
            // The other side's SYN during a handshake is a simultaneous open: leave it be.
            Some(Phase::SynReceived { .. } | Phase::SynAckSent { .. } | Phase::SynSent { .. }) => {
                return None;
            }
            // A SYN on an established connection: the addresses were reused after a close we
            // did not see. Start over (RFC 9293 section 3.10.7.4 leaves the old one dead).
            Some(Phase::Established { .. }) if self.mode == Mode::Replicating => {
                self.stats.reopened += 1;
            }
            Some(Phase::Established { .. }) => {
                // After failover, new incarnations are not tracked: the old entry goes.
                self.table.remove(&key);
                self.stats.closed += 1;
                return Some(Verdict::Passed(PassReason::Failover));
            }
            None if self.mode == Mode::Failover => {
                return Some(Verdict::Passed(PassReason::Failover));
            }
            None => {}
        }
        match self.table.insert(key, Conn::new(now, phase)) {
            Insert::Inserted => {}
            Insert::Evicted(_) => self.stats.evicted += 1,
            Insert::Refused => return Some(Verdict::Passed(PassReason::Untracked)),
        }
        self.stats.opened += 1;
        None
    }

    /// Advances the handshake phase; returns true when this frame made the offset known.
    fn on_handshake(conn: &mut Conn, info: &TcpInfo, dir: Direction) -> bool {
        let syn = info.has(tcp_flags::SYN);
        // Only a plain ACK or a SYN-ACK teaches anything; a RST's numbers are not trusted.
        if !info.has(tcp_flags::ACK) || info.has(tcp_flags::RST) {
            return false;
        }
        let pvm_isn_acked = SeqNum(info.ack.0.wrapping_sub(1));
        let learned = match (conn.phase, dir, syn) {
            // Client-opened: the SVM's SYN-ACK gives its ISN.
            (Phase::SynReceived { pvm_isn: None }, Direction::Outbound, true) => {
                conn.phase = Phase::SynAckSent { svm_isn: info.seq };
                return false;
            }
            // ... unless the client's ACK came first and the primary's ISN is already known.
            (Phase::SynReceived { pvm_isn: Some(pvm) }, Direction::Outbound, true) => {
                SeqNum::offset_to(info.seq, pvm)
            }
            // The client's ACK overtook the SVM's SYN-ACK: remember the primary's ISN. The
            // frame passes unchanged (its SVM-side value is not known yet); the SVM may then
            // answer with a RST, which the comparator sees as a miscompare and a checkpoint
            // repairs, the same outcome as any other divergence.
            (Phase::SynReceived { pvm_isn: None }, Direction::Inbound, false) => {
                conn.phase = Phase::SynReceived {
                    pvm_isn: Some(pvm_isn_acked),
                };
                return false;
            }
            (Phase::SynAckSent { svm_isn }, Direction::Outbound, true) => {
                // A retransmitted SYN-ACK; a changed ISN means the SVM restarted the handshake.
                if info.seq != svm_isn {
                    conn.phase = Phase::SynAckSent { svm_isn: info.seq };
                }
                return false;
            }
            // Client-opened: the client's ACK acknowledges the primary's ISN + 1.
            (Phase::SynAckSent { svm_isn }, Direction::Inbound, false) => {
                SeqNum::offset_to(svm_isn, pvm_isn_acked)
            }
            // Guest-opened: the server's SYN-ACK acknowledges the primary's ISN + 1.
            (Phase::SynSent { svm_isn }, Direction::Inbound, true) => {
                SeqNum::offset_to(svm_isn, pvm_isn_acked)
            }
            _ => return false,
        };
        conn.phase = Phase::Established { offset: learned };
        true
    }
}
