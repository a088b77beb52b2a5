//! Why the Node engine says a released frame was allowed out: the one place that classifies a
//! release ([`Releases::classify`]) and the secondary- and primary-side bookkeeping it needs
//! (what the secondary emitted, byte by byte and frame by frame; how far each side
//! acknowledged each flow). Self-contained: it sees frames only, never the engine.
//!
//! Invariant kept: an origin is a pure function of the frames both guests emitted before the
//! release, in order. The facts a checker needs to judge the origin independently go into the
//! trace too: [`TraceEvent::SvmAck`] and [`TraceEvent::PvmAck`] (each only when a flow's
//! acknowledgement advances), so `output_commit` can verify an `Uncompared` release's ACK
//! against the secondary's acknowledgements and the checkpoints the secondary received; and
//! [`TraceEvent::SvmControl`] and [`TraceEvent::PvmControl`] (each the first time a flow's
//! control flag appears at a position), for a release carrying SYN, FIN or RST.

use std::collections::{BTreeMap, BTreeSet};

use colo_core::ids::Epoch;
use colo_core::packet::{Kind, TcpInfo, classify_or_opaque, tcp_flags};
use colo_core::time::Instant;

use super::stream::{compare_key, record_stream, stream_covered};
use crate::check::output_commit::seq_at_or_after;
use crate::hash::Fnv64;
use crate::trace::{Control, Origin, TraceEvent};

/// The comparator's flow of a frame, hashed (the key `SvmAck`, `PvmAck` and `Uncompared` share).
pub(super) fn flow_id(frame: &[u8]) -> u64 {
    let c = classify_or_opaque(frame);
    let mut h = Fnv64::new();
    h.write(format!("{:?}", c.key).as_bytes());
    h.finish()
}

fn tcp_of(frame: &[u8]) -> Option<TcpInfo> {
    match classify_or_opaque(frame).kind {
        Kind::Tcp(t) => Some(t),
        _ => None,
    }
}

/// The ACK the comparator's min-ACK guard judges on a primary segment: its acknowledgement
/// number if ACK is set and RST is clear (docs/comparator.md: an RST's ACK acknowledges no
/// data; a segment without ACK acknowledges nothing).
fn guarded_ack(t: &TcpInfo) -> Option<u32> {
    (t.flags & tcp_flags::ACK != 0 && t.flags & tcp_flags::RST == 0).then_some(t.ack.0)
}

/// The control flags of a TCP segment (SYN, FIN, RST), if it carries any.
fn control_of(t: &TcpInfo) -> Option<Control> {
    if t.flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0 {
        return None;
    }
    let start = if t.flags & tcp_flags::SYN != 0 {
        t.seq.0.wrapping_add(1)
    } else {
        t.seq.0
    };
    Some(Control {
        flags: t.flags,
        end: start.wrapping_add(t.payload_len() as u32),
        ack: t.ack.0,
    })
}

/// Raises the acknowledgement of `key` (a flow, or a flow in an epoch) in `map` to `ack`;
/// returns whether it advanced.
fn raise<K: Ord>(map: &mut BTreeMap<K, u32>, key: K, ack: u32) -> bool {
    match map.get(&key) {
        Some(old) if seq_at_or_after(*old, ack) => false,
        _ => {
            map.insert(key, ack);
            true
        }
    }
}

/// Everything released and everything the secondary emitted so far.
#[derive(Debug, Default)]
pub(super) struct Releases {
    /// Secondary frames by compare key, not yet matched by a release.
    svm_frames: BTreeMap<u64, u32>,
    /// Every TCP payload byte the secondary emitted, per flow, by sequence number.
    svm_bytes: BTreeMap<String, BTreeMap<u32, u8>>,
    /// Every TCP payload byte released to clients, per flow, by sequence number (a segment
    /// whose bytes were all released before is a retransmission).
    pvm_released: BTreeMap<String, BTreeMap<u32, u8>>,
    /// Compare keys of every TCP frame released (a repeat is a retransmission).
    released_keys: BTreeSet<u64>,
    /// Highest ACK the secondary sent, per flow.
    svm_acks: BTreeMap<u64, u32>,
    /// Highest ACK of the primary's guest, per flow and epoch it was produced in.
    pvm_acks: BTreeMap<(u64, Epoch), u32>,
    /// Control flags the secondary sent: (flow, flag, position).
    svm_controls: BTreeSet<(u64, u8, u32)>,
    /// Control flags of the primary's guest: (flow, flag, position, epoch produced in).
    pvm_controls: BTreeSet<(u64, u8, u32, Epoch)>,
    /// Releases matched against the secondary's output.
    pub(super) matched: u64,
}

impl Releases {
    /// A frame the secondary sent to the primary's comparator: returns its compare key (the
    /// digest `SvmOutput` carries), the `SvmAck` event if its flow's ACK advanced and an
    /// `SvmControl` event for each control flag new at its position.
    pub(super) fn on_secondary(&mut self, at: Instant, frame: &[u8]) -> (u64, Vec<TraceEvent>) {
        record_stream(&mut self.svm_bytes, frame);
        let key = compare_key(frame);
        *self.svm_frames.entry(key).or_default() += 1;
        let tcp = tcp_of(frame);
        // The comparator raises the secondary's highest ACK from every segment with ACK set.
        let ack = tcp
            .filter(|t| t.flags & tcp_flags::ACK != 0)
            .map(|t| t.ack.0);
        let flow = flow_id(frame);
        let mut events: Vec<TraceEvent> = ack
            .filter(|a| raise(&mut self.svm_acks, flow, *a))
            .map(|ack| TraceEvent::SvmAck { at, flow, ack })
            .into_iter()
            .collect();
        if let Some(c) = tcp.as_ref().and_then(control_of) {
            for (flag, pos) in c.keys() {
                if self.svm_controls.insert((flow, flag, pos)) {
                    events.push(TraceEvent::SvmControl {
                        at,
                        flow,
                        flag,
                        pos,
                    });
                }
            }
        }
        (key, events)
    }

    /// A frame the primary's guest emitted in `epoch` (the checkpoint whose pause includes its
    /// production): the `PvmAck` event if its flow's ACK advanced within that epoch, and a
    /// `PvmControl` event for each control flag new at its position in that epoch.
    pub(super) fn on_primary(
        &mut self,
        at: Instant,
        epoch: Epoch,
        frame: &[u8],
    ) -> Vec<TraceEvent> {
        let Some(tcp) = tcp_of(frame) else {
            return Vec::new();
        };
        let flow = flow_id(frame);
        let mut events: Vec<TraceEvent> = guarded_ack(&tcp)
            .filter(|ack| raise(&mut self.pvm_acks, (flow, epoch), *ack))
            .map(|ack| TraceEvent::PvmAck {
                at,
                flow,
                epoch,
                ack,
            })
            .into_iter()
            .collect();
        if let Some(c) = control_of(&tcp) {
            for (flag, pos) in c.keys() {
                if self.pvm_controls.insert((flow, flag, pos, epoch)) {
                    events.push(TraceEvent::PvmControl {
                        at,
                        flow,
                        epoch,
                        flag,
                        pos,
                    });
                }
            }
        }
        events
    }

    /// Why `frame` may reach the client: `Solo` if its node runs alone; `Uncompared` for a TCP
    /// segment the comparator releases without comparing its payload (no payload, or every
    /// byte released before), with its flow and guarded ACK; `Matched` for a secondary frame
    /// with the same compare key not used by another match; `MatchedStream` if the secondary
    /// emitted every payload byte at the same sequence numbers in other segments; `Covered`
    /// otherwise (a checkpoint the secondary received must cover it).
    pub(super) fn classify(&mut self, frame: &[u8], solo: bool) -> Origin {
        let tcp = tcp_of(frame);
        let key = compare_key(frame);
        let flow = flow_id(frame);
        let ack = tcp.as_ref().and_then(guarded_ack);
        let control = tcp.as_ref().and_then(control_of);
        let origin = if solo {
            Origin::Solo
        } else if tcp.as_ref().is_some_and(|t| {
            t.payload_len() == 0
                || self.released_keys.contains(&key)
                || stream_covered(&self.pvm_released, frame)
        }) {
            Origin::Uncompared { flow, ack, control }
        } else if let Some(n) = self.svm_frames.get_mut(&key).filter(|n| **n > 0) {
            *n -= 1;
            self.matched += 1;
            Origin::Matched {
                svm_digest: key,
                flow,
                ack,
                control,
            }
        } else if stream_covered(&self.svm_bytes, frame) {
            self.matched += 1;
            Origin::MatchedStream { flow, ack, control }
        } else {
            Origin::Covered
        };
        if tcp.is_some() {
            self.released_keys.insert(key);
        }
        record_stream(&mut self.pvm_released, frame);
        origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_are_announced_only_when_they_advance() {
        let mut m = BTreeMap::new();
        assert!(raise(&mut m, 1, 100));
        assert!(!raise(&mut m, 1, 100));
        assert!(!raise(&mut m, 1, 50));
        assert!(raise(&mut m, 1, 101));
        assert!(raise(&mut m, 2, 7));
    }
}
