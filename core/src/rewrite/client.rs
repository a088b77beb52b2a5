//! The client-facing TCP translation of a node that took over, and the snapshot of it that
//! travels to the node's next secondary so the translation survives the next takeover too.
//!
//! A secondary's [`Rewriter`] maps its guest's sequence numbers onto its primary's guest's. When
//! the secondary takes over, clients keep the numbers the old primary's guest gave them, so the
//! survivor keeps translating at the client edge. If the old primary had itself taken over
//! earlier, its guest's numbers were not the clients' either: its own client-facing translation
//! held the rest. Each hop is a constant offset per connection, so the translation is a chain
//! of two rewriters: this node's own (its guest -> the previous primary's guest) and the
//! inherited one (the previous primary's guest -> the clients), which the previous primary
//! sent as a [`TranslatedConn`] snapshot while it replicated to this node. When this node
//! re-protects, its snapshot (both hops composed) goes to its own secondary, so the chain never
//! grows beyond two.
//!
//! Invariants kept: a connection is translated by at most one hop with a non-zero offset in
//! each direction's composition rule (a connection this node's own rewriter tracks was opened
//! while this node was a secondary, after every connection the inherited snapshot knows, so
//! an inherited entry for the same addresses is an older incarnation and is dropped); the
//! inherited rewriter never tracks a new connection (it runs in failover mode); a frame's
//! length never changes, as in [`Rewriter`].

use super::table::{Conn, ConnKey, Insert, Phase};
use super::{Rewriter, RewriterConfig, Verdict};
use crate::time::Instant;
use serde::{Deserialize, Serialize};

/// One connection of a client-facing translation snapshot: the guest's numbering plus `offset`
/// (wrapping) is the numbering the connection's client holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct TranslatedConn {
    /// The connection, seen from the guest.
    pub key: ConnKey,
    /// Client numbering = guest numbering + `offset` (wrapping); never 0 in a snapshot.
    pub offset: u32,
}

/// Connections per [`crate::wire::Message::ClientTranslation`] message: an IPv6 entry is under
/// 50 bytes encoded, so a part stays well inside the 64 KiB message limit.
pub const TRANSLATED_CONNS_PER_MESSAGE: usize = 512;

impl Rewriter {
    /// A rewriter in failover mode that knows exactly `conns` (at most its capacity: later
    /// entries are refused), used as the inherited hop of a [`ClientTranslation`].
    pub fn from_translated(config: RewriterConfig, now: Instant, conns: &[TranslatedConn]) -> Self {
        let mut rewriter = Rewriter::new(config);
        rewriter.enter_failover();
        rewriter.last_now = now;
        for c in conns {
            let phase = Phase::Established { offset: c.offset };
            match rewriter.table.insert(c.key, Conn::new(now, phase)) {
                Insert::Inserted => {}
                Insert::Evicted(_) | Insert::Refused => rewriter.stats.evicted += 1,
            }
        }
        rewriter
    }

    /// The connections this rewriter translates with a known, non-zero offset, in key order.
    pub fn translated(&self) -> impl Iterator<Item = TranslatedConn> + '_ {
        self.table
            .iter()
            .filter_map(|(key, conn)| match conn.phase {
                Phase::Established { offset } if offset != 0 => {
                    Some(TranslatedConn { key: *key, offset })
                }
                _ => None,
            })
    }

    /// Whether `key` is tracked, in any phase.
    pub fn tracks(&self, key: &ConnKey) -> bool {
        self.table.get(key).is_some()
    }

    /// Drops every entry `other` tracks (older incarnations of connections `other` saw open)
    /// and returns how many. Idempotent.
    fn forget_connections_tracked_by(&mut self, other: &Rewriter) -> usize {
        let stale: Vec<ConnKey> = self
            .table
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| other.tracks(k))
            .collect();
        for k in &stale {
            self.table.remove(k);
        }
        self.stats.closed += stale.len() as u64;
        stale.len()
    }
}

/// The client-facing translation of a secondary-side node: its own rewriter, then the
/// translation it inherited from its primary. Until a takeover only the own hop runs (the
/// secondary's output goes to the primary's comparator in the primary's guest numbering);
/// from the takeover on, both run, in failover mode.
#[derive(Clone, Debug)]
pub struct ClientTranslation {
    own: Rewriter,
    inherited: Rewriter,
}

impl ClientTranslation {
    /// A fresh secondary's translation: its own rewriter, nothing inherited yet.
    pub fn new(config: RewriterConfig) -> ClientTranslation {
        ClientTranslation {
            own: Rewriter::new(config),
            inherited: Rewriter::from_translated(config, Instant::ZERO, &[]),
        }
    }

    /// Replaces the inherited hop (a complete snapshot from the primary arrived).
    pub fn inherit(&mut self, inherited: Rewriter) {
        self.inherited = inherited;
    }

    /// This node takes over: both hops run in failover mode from now on, and inherited entries
    /// for addresses the own hop tracks are dropped (see the module invariant). Idempotent.
    pub fn enter_failover(&mut self) {
        self.own.enter_failover();
        self.inherited.enter_failover();
        self.inherited.forget_connections_tracked_by(&self.own);
    }

    /// A frame from the guest to a client: guest numbering -> the previous primary's guest
    /// numbering -> the clients' numbering. Returns the own hop's verdict.
    pub fn translate_outbound(&mut self, now: Instant, frame: &mut [u8]) -> Verdict {
        let verdict = self.own.rewrite_outbound(now, frame);
        self.translate_inherited_outbound(now, frame);
        verdict
    }

    /// The inherited hop alone, for a frame the own hop already translated (a segment kept
    /// for the resend at takeover).
    pub fn translate_inherited_outbound(&mut self, now: Instant, frame: &mut [u8]) {
        self.inherited.rewrite_outbound(now, frame);
    }

    /// A frame from a client to the guest, the reverse path. Returns the own hop's verdict.
    pub fn translate_inbound(&mut self, now: Instant, frame: &mut [u8]) -> Verdict {
        self.inherited.rewrite_inbound(now, frame);
        self.own.rewrite_inbound(now, frame)
    }

    /// This node's own rewriter (its guest -> the previous primary's guest).
    pub fn own(&self) -> &Rewriter {
        &self.own
    }

    /// The own rewriter, to drive alone while the primary lives (mirrored frames in, SVM frames
    /// out to the comparator, offsets reset at each applied checkpoint).
    pub fn own_mut(&mut self) -> &mut Rewriter {
        &mut self.own
    }

    /// The inherited hop (the previous primary's guest -> the clients).
    pub fn inherited(&self) -> &Rewriter {
        &self.inherited
    }

    /// The whole translation as a snapshot for a new secondary: every connection with a
    /// non-zero client-facing offset, in key order. The hops' keys are disjoint (see
    /// [`ClientTranslation::enter_failover`]), so each connection's offset is the one hop that knows it.
    pub fn snapshot(&self) -> Vec<TranslatedConn> {
        let mut conns: Vec<TranslatedConn> = self
            .own
            .translated()
            .chain(self.inherited.translated())
            .collect();
        conns.sort_unstable();
        conns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::build::TcpFrame;
    use crate::packet::tcp_flags::{ACK, PSH, SYN};
    use crate::packet::{Kind, SeqNum, classify};
    use core::net::IpAddr;

    const GUEST: &str = "10.0.0.2";
    const CLIENT: &str = "10.0.0.9";

    fn key(client_port: u16) -> ConnKey {
        ConnKey {
            vlan: None,
            guest_addr: GUEST.parse().unwrap(),
            guest_port: 80,
            peer_addr: CLIENT.parse().unwrap(),
            peer_port: client_port,
        }
    }

    /// A segment of the connection with the client's `port`, from the guest when `outbound`.
    fn segment(outbound: bool, port: u16, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let (g, c): (IpAddr, IpAddr) = (GUEST.parse().unwrap(), CLIENT.parse().unwrap());
        let (src, dst, sp, dp) = if outbound {
            (g, c, 80, port)
        } else {
            (c, g, port, 80)
        };
        TcpFrame {
            seq: SeqNum(seq),
            ack: SeqNum(ack),
            flags,
            payload: data,
            ..TcpFrame::new(src, dst, sp, dp)
        }
        .build()
    }

    /// (seq, ack) of a TCP frame.
    fn numbers(frame: &[u8]) -> (u32, u32) {
        match classify(frame).unwrap().kind {
            Kind::Tcp(info) => (info.seq.0, info.ack.0),
            other => panic!("not TCP: {other:?}"),
        }
    }

    /// The translation of a node that took over with these two hops.
    fn composed(own: Rewriter, inherited: Rewriter) -> ClientTranslation {
        let mut x = ClientTranslation { own, inherited };
        x.enter_failover();
        x
    }

    fn conn(port: u16, offset: u32) -> TranslatedConn {
        TranslatedConn {
            key: key(port),
            offset,
        }
    }

    #[test]
    fn an_inherited_offset_applies_to_connections_the_own_rewriter_never_saw_open() {
        let t = Instant::from_nanos(1);
        let inherited =
            Rewriter::from_translated(RewriterConfig::default(), t, &[conn(4000, 1000)]);
        let mut x = composed(Rewriter::new(RewriterConfig::default()), inherited);
        let mut out = segment(true, 4000, 5, 9, ACK | PSH, b"hi");
        x.translate_outbound(t, &mut out);
        assert_eq!(numbers(&out), (1005, 9));
        let mut back = segment(false, 4000, 9, 1007, ACK, b"");
        x.translate_inbound(t, &mut back);
        assert_eq!(numbers(&back), (9, 7));
        assert_eq!(x.snapshot(), vec![conn(4000, 1000)]);
    }

    #[test]
    fn both_hops_compose_for_a_connection_each_knows_in_turn() {
        // The own hop learned an offset during a handshake it saw; the inherited hop knows
        // another connection: each frame gets exactly its connection's offset.
        let t = Instant::from_nanos(1);
        let mut own = Rewriter::new(RewriterConfig::default());
        own.rewrite_inbound(t, &mut segment(false, 5000, 700, 0, SYN, b""));
        own.rewrite_outbound(t, &mut segment(true, 5000, 40, 701, SYN | ACK, b""));
        own.rewrite_inbound(t, &mut segment(false, 5000, 701, 91, ACK, b""));
        let inherited =
            Rewriter::from_translated(RewriterConfig::default(), t, &[conn(4000, 1000)]);
        let mut x = composed(own, inherited);
        let mut a = segment(true, 5000, 41, 701, ACK | PSH, b"x");
        x.translate_outbound(t, &mut a);
        assert_eq!(numbers(&a).0, 91);
        let mut b = segment(true, 4000, 41, 701, ACK | PSH, b"x");
        x.translate_outbound(t, &mut b);
        assert_eq!(numbers(&b).0, 1041);
        assert_eq!(x.snapshot(), vec![conn(4000, 1000), conn(5000, 50)]);
    }

    #[test]
    fn an_own_entry_hides_an_older_inherited_incarnation_of_the_same_addresses() {
        let t = Instant::from_nanos(1);
        let inherited = Rewriter::from_translated(
            RewriterConfig::default(),
            t,
            &[conn(4000, 1000), conn(4001, 77)],
        );
        // The secondary saw port 4000 open again (a client SYN) after the snapshot was taken.
        let mut own = Rewriter::new(RewriterConfig::default());
        own.rewrite_inbound(t, &mut segment(false, 4000, 50, 0, SYN, b""));
        let mut x = composed(own, inherited);
        let mut out = segment(true, 4000, 5, 51, ACK | PSH, b"hi");
        x.translate_outbound(t, &mut out);
        assert_eq!(
            numbers(&out).0,
            5,
            "the old incarnation's offset must not apply"
        );
        assert_eq!(x.snapshot(), vec![conn(4001, 77)]);
    }

    #[test]
    fn a_snapshot_beyond_the_capacity_keeps_what_fits() {
        let t = Instant::from_nanos(1);
        let conns: Vec<TranslatedConn> = (0..5).map(|i| conn(4000 + i, 3)).collect();
        let r = Rewriter::from_translated(RewriterConfig { connections_max: 3 }, t, &conns);
        assert_eq!(r.connections(), 3);
        assert!(r.in_failover());
    }
}
