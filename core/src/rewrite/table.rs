//! The rewriter's connection table: one entry per tracked TCP connection, keyed by the
//! connection's addresses seen from the guest, with the per-connection handshake [`Phase`] (where
//! the sequence offset is learned) and close tracking.
//!
//! Invariants kept: the table never holds more than its capacity; iteration, eviction and every
//! other decision depend only on the keys' total order and the entries' contents (a `BTreeMap`,
//! never a hash map), so the same frames always give the same table.

use crate::packet::{FlowKey, SeqNum};
use crate::time::Instant;
use core::net::IpAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A TCP connection as the guest sees it, so that both directions map to one key: inbound
/// frames (into the SVM) have the guest as destination, outbound frames as source.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ConnKey {
    /// Innermost 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// The guest's address.
    pub guest_addr: IpAddr,
    /// The guest's port.
    pub guest_port: u16,
    /// The remote peer's address (a client, or a server the guest connected to).
    pub peer_addr: IpAddr,
    /// The remote peer's port.
    pub peer_port: u16,
}

impl ConnKey {
    /// The connection a TCP frame of `flow` belongs to: the guest is the frame's source when
    /// `from_guest`, its destination otherwise. `None` for a flow without IP addresses.
    pub fn of_flow(flow: FlowKey, from_guest: bool) -> Option<ConnKey> {
        let FlowKey::Ip {
            vlan,
            src,
            dst,
            src_port,
            dst_port,
            ..
        } = flow
        else {
            return None;
        };
        Some(if from_guest {
            ConnKey {
                vlan,
                guest_addr: src,
                guest_port: src_port,
                peer_addr: dst,
                peer_port: dst_port,
            }
        } else {
            ConnKey {
                vlan,
                guest_addr: dst,
                guest_port: dst_port,
                peer_addr: src,
                peer_port: src_port,
            }
        })
    }
}

/// Where a connection's handshake stands, i.e. what is known of its sequence offset.
///
/// Transitions (inbound = into the SVM, outbound = out of it):
/// - client-opened: inbound SYN opens [`Phase::SynReceived`]; the SVM's outbound SYN-ACK gives
///   its ISN ([`Phase::SynAckSent`]); the client's inbound ACK acknowledges the primary's ISN + 1,
///   so the offset is known ([`Phase::Established`]). If the client's ACK overtakes the SVM's
///   SYN-ACK (the SVM is slower than the PVM), `SynReceived` remembers the primary's ISN and the
///   SYN-ACK completes the offset.
/// - guest-opened: the SVM's outbound SYN gives its ISN ([`Phase::SynSent`]); the server's
///   inbound SYN-ACK acknowledges the primary's ISN + 1 ([`Phase::Established`]).
/// - a checkpoint moves every phase to `Established` with offset 0: the SVM now holds the
///   primary's TCP state, so both number the guest's bytes alike.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// The client's SYN was seen; the SVM has not answered yet. `pvm_isn` is the primary's ISN
    /// if the client's handshake ACK arrived first.
    SynReceived {
        /// The primary's ISN, learned from an early client ACK.
        pvm_isn: Option<SeqNum>,
    },
    /// The SVM answered with its SYN-ACK; waiting for the client's ACK.
    SynAckSent {
        /// The SVM's ISN.
        svm_isn: SeqNum,
    },
    /// The SVM sent a SYN (guest-opened); waiting for the server's SYN-ACK.
    SynSent {
        /// The SVM's ISN.
        svm_isn: SeqNum,
    },
    /// The offset is known: PVM numbering = SVM numbering + `offset` (wrapping).
    Established {
        /// `pvm_isn - svm_isn`, wrapping; 0 after a checkpoint.
        offset: u32,
    },
}

impl Phase {
    /// The offset, once known.
    pub fn offset(&self) -> Option<u32> {
        match *self {
            Phase::Established { offset } => Some(offset),
            _ => None,
        }
    }
}

/// One tracked connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Conn {
    /// Handshake phase and offset.
    pub phase: Phase,
    /// When a segment of this connection was last seen (for idle eviction).
    pub last_seen: Instant,
    /// Sequence number just after the guest's FIN, in primary numbering (the numbering clients
    /// see, which a checkpoint does not change).
    pub guest_fin: Option<SeqNum>,
    /// Sequence number just after the peer's FIN (the peer's numbering is shared by PVM and SVM).
    pub peer_fin: Option<SeqNum>,
    /// The peer acknowledged the guest's FIN.
    pub guest_fin_acked: bool,
    /// The guest acknowledged the peer's FIN.
    pub peer_fin_acked: bool,
}

impl Conn {
    /// A fresh entry in `phase`.
    pub fn new(now: Instant, phase: Phase) -> Conn {
        Conn {
            phase,
            last_seen: now,
            guest_fin: None,
            peer_fin: None,
            guest_fin_acked: false,
            peer_fin_acked: false,
        }
    }

    /// Either side has sent a FIN: the connection is going away, so it is evicted first.
    pub fn closing(&self) -> bool {
        self.guest_fin.is_some() || self.peer_fin.is_some()
    }

    /// Both FINs were sent and both acknowledged: the entry can go.
    pub fn closed(&self) -> bool {
        self.guest_fin_acked && self.peer_fin_acked
    }
}

/// What [`Table::insert`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Insert {
    /// Inserted into free space (or over an entry with the same key).
    Inserted,
    /// Inserted after evicting another entry.
    Evicted(ConnKey),
    /// Not inserted: the table's capacity is 0.
    Refused,
}

/// The bounded, ordered connection table.
#[derive(Clone, Debug)]
pub struct Table {
    map: BTreeMap<ConnKey, Conn>,
    capacity: usize,
}

impl Table {
    /// An empty table holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Table {
        Table {
            map: BTreeMap::new(),
            capacity,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The entry for `key`.
    pub fn get(&self, key: &ConnKey) -> Option<&Conn> {
        self.map.get(key)
    }

    /// The entry for `key`, mutably.
    pub fn get_mut(&mut self, key: &ConnKey) -> Option<&mut Conn> {
        self.map.get_mut(key)
    }

    /// Removes `key`'s entry.
    pub fn remove(&mut self, key: &ConnKey) -> Option<Conn> {
        self.map.remove(key)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&ConnKey, &Conn)> {
        self.map.iter()
    }

    /// Inserts (or replaces) `key`'s entry. When the table is full, one entry is evicted first:
    /// a closing one if any, else the one idle longest; ties go to the smallest key, so the choice
    /// is deterministic.
    ///
    /// The victim search scans the table, which costs O(n) only for inserts into a full table;
    /// a table sized for the guest's real connection count never pays it.
    pub fn insert(&mut self, key: ConnKey, conn: Conn) -> Insert {
        if self.capacity == 0 {
            return Insert::Refused;
        }
        if self.map.len() < self.capacity || self.map.contains_key(&key) {
            self.map.insert(key, conn);
            return Insert::Inserted;
        }
        let victim = self
            .map
            .iter()
            .min_by_key(|(k, c)| (!c.closing(), c.last_seen, **k))
            .map(|(k, _)| *k);
        match victim {
            Some(victim) => {
                self.map.remove(&victim);
                self.map.insert(key, conn);
                Insert::Evicted(victim)
            }
            None => Insert::Refused,
        }
    }

    /// Sets every entry's offset to 0 (a checkpoint gave the SVM the primary's TCP state) and
    /// returns how many entries had a different offset or none yet.
    pub fn reset_offsets(&mut self) -> u64 {
        let mut changed = 0;
        for conn in self.map.values_mut() {
            if conn.phase != (Phase::Established { offset: 0 }) {
                changed += 1;
            }
            conn.phase = Phase::Established { offset: 0 };
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        ConnKey {
            vlan: None,
            guest_addr: "10.0.0.2".parse().unwrap(),
            guest_port: 80,
            peer_addr: "10.0.0.9".parse().unwrap(),
            peer_port: port,
        }
    }

    fn conn(at: u64) -> Conn {
        Conn::new(Instant::from_nanos(at), Phase::Established { offset: 7 })
    }

    #[test]
    fn full_table_evicts_the_longest_idle_entry() {
        let mut t = Table::new(2);
        assert_eq!(t.insert(key(1), conn(20)), Insert::Inserted);
        assert_eq!(t.insert(key(2), conn(10)), Insert::Inserted);
        assert_eq!(t.insert(key(3), conn(30)), Insert::Evicted(key(2)));
        assert_eq!(t.len(), 2);
        assert!(t.get(&key(2)).is_none());
    }

    #[test]
    fn closing_entries_are_evicted_before_idle_ones() {
        let mut t = Table::new(2);
        t.insert(key(1), conn(10));
        let mut closing = conn(50);
        closing.peer_fin = Some(SeqNum(1));
        t.insert(key(2), closing);
        assert_eq!(t.insert(key(3), conn(60)), Insert::Evicted(key(2)));
    }

    #[test]
    fn equal_idle_times_evict_the_smallest_key() {
        let mut t = Table::new(2);
        t.insert(key(9), conn(5));
        t.insert(key(4), conn(5));
        assert_eq!(t.insert(key(1), conn(6)), Insert::Evicted(key(4)));
    }

    #[test]
    fn replacing_an_existing_key_never_evicts() {
        let mut t = Table::new(1);
        t.insert(key(1), conn(1));
        assert_eq!(t.insert(key(1), conn(2)), Insert::Inserted);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let mut t = Table::new(0);
        assert_eq!(t.insert(key(1), conn(1)), Insert::Refused);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn reset_zeroes_every_offset_and_counts_changes() {
        let mut t = Table::new(4);
        t.insert(key(1), conn(1));
        t.insert(
            key(2),
            Conn::new(Instant::ZERO, Phase::SynSent { svm_isn: SeqNum(3) }),
        );
        t.insert(
            key(3),
            Conn::new(Instant::ZERO, Phase::Established { offset: 0 }),
        );
        assert_eq!(t.reset_offsets(), 2);
        assert!(t.iter().all(|(_, c)| c.phase.offset() == Some(0)));
    }
}
