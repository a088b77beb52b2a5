//! Checker 1, output commit: every byte a client received was produced by a guest state that
//! still exists.
//!
//! A released frame is legitimate in exactly three ways (colo-reference.md, "Output commit";
//! QEMU COLO releases on compare match or after a checkpoint): `Matched` — the secondary
//! produced an identical frame before the release, not used by another match (both VMs reached
//! a state that produced it, so a failover to the SVM keeps it; epochs are not compared because
//! the two checkpointers count an epoch done at different instants); `Covered` — the secondary had
//! *received* (not merely been sent) a checkpoint of an epoch at or after the one the frame was
//! produced in, before the release; `Solo` — the releasing host runs alone (its own state is the
//! only one; single_writer judges its lease). Anything else is reported.
//!
//! `Uncompared` — a TCP segment released without a payload comparison (no payload, or a
//! retransmission of released bytes): it carries no new byte.
//!
//! Independently of its origin, a paired release's ACK tells the client which of its bytes
//! arrived; a client whose bytes are acknowledged never resends them, so a failover to a
//! secondary that lacks them loses them (colo-sim seeds 188, 290, 1057 under `--node`). A
//! `Matched`, `MatchedStream` or `Uncompared` release with a guarded ACK (ACK set, RST clear;
//! docs/comparator.md, min-ACK guard) must be justified before it happens: the secondary
//! acknowledged at least as far on the flow (`SvmAck`), or it received a checkpoint of an epoch
//! at or after the frame's, or of an epoch in which the primary's guest had already
//! acknowledged as far (`PvmAck`: that checkpoint gave the secondary the acknowledgement).
//!
//! Likewise a paired release's SYN, FIN or RST changes the connection's state at the client
//! (issue 14): if the primary dies after its FIN reached the client but before the
//! secondary's guest closed, the survivor's connection is still open while the client thinks
//! it half-closed. A `Matched`, `MatchedStream` or `Uncompared` release carrying one must be
//! justified before it happens, flag by flag ([`Control::keys`]): the secondary sent the same
//! flag at the same position on the flow (`SvmControl`), or it received a checkpoint of an
//! epoch at or after the frame's, or of an epoch in which the primary's guest had already sent
//! that flag there (`PvmControl`).

use std::collections::{BTreeMap, BTreeSet};

use colo_core::ids::Epoch;

use crate::trace::{Control, Origin, Trace, TraceEvent, Violation};

/// This checker's name.
pub const NAME: &str = "output_commit";

/// Whether TCP sequence number `a` is at or after `b` (RFC 9293 section 3.4: compared modulo
/// 2^32, within half the space).
pub fn seq_at_or_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// How far each side acknowledged each flow (the client's sequence space, which PVM and SVM
/// share), as the trace's `SvmAck` and `PvmAck` events tell.
#[derive(Default)]
struct Acks {
    /// Highest ACK the secondary sent, per flow.
    svm: BTreeMap<u64, u32>,
    /// Highest ACK of the primary's guest, per flow and epoch produced in.
    pvm: BTreeMap<u64, BTreeMap<Epoch, u32>>,
}

/// Raises `slot` to `ack` in sequence order.
fn raise(slot: &mut Option<u32>, ack: u32) {
    if slot.is_none_or(|s| !seq_at_or_after(s, ack)) {
        *slot = Some(ack);
    }
}

impl Acks {
    fn on_svm(&mut self, flow: u64, ack: u32) {
        let mut slot = self.svm.get(&flow).copied();
        raise(&mut slot, ack);
        self.svm.extend(slot.map(|a| (flow, a)));
    }

    fn on_pvm(&mut self, flow: u64, epoch: Epoch, ack: u32) {
        let m = self.pvm.entry(flow).or_default();
        let mut slot = m.get(&epoch).copied();
        raise(&mut slot, ack);
        m.extend(slot.map(|a| (epoch, a)));
    }

    /// Whether a frame of `epoch` acknowledging `ack` on `flow` may be released: the secondary
    /// acknowledged as far, or it received a checkpoint of the frame's epoch or later, or of an
    /// epoch in which the primary had acknowledged as far.
    fn justify(&self, flow: u64, ack: u32, epoch: Epoch, received: Option<Epoch>) -> bool {
        let far_enough = |a: &u32| seq_at_or_after(*a, ack);
        self.svm.get(&flow).is_some_and(far_enough)
            || received.is_some_and(|r| {
                r >= epoch
                    || self
                        .pvm
                        .get(&flow)
                        .is_some_and(|m| m.range(..=r).any(|(_, a)| far_enough(a)))
            })
    }
}

/// Which control flags each side sent where, as `SvmControl` and `PvmControl` tell.
#[derive(Default)]
struct Controls {
    /// (flow, flag, position) the secondary sent.
    svm: BTreeSet<(u64, u8, u32)>,
    /// (flow, flag, position) -> the earliest epoch the primary's guest sent it in.
    pvm: BTreeMap<(u64, u8, u32), Epoch>,
}

impl Controls {
    fn on_pvm(&mut self, key: (u64, u8, u32), epoch: Epoch) {
        let e = self.pvm.entry(key).or_insert(epoch);
        *e = (*e).min(epoch);
    }

    /// The first flag of `c` (on `flow`, in a frame of `epoch`) that may not be released yet.
    fn unjustified(
        &self,
        flow: u64,
        c: &Control,
        epoch: Epoch,
        received: Option<Epoch>,
    ) -> Option<(u8, u32)> {
        c.keys().find(|&(flag, pos)| {
            let key = (flow, flag, pos);
            let covered = received
                .is_some_and(|r| r >= epoch || self.pvm.get(&key).is_some_and(|first| *first <= r));
            !self.svm.contains(&key) && !covered
        })
    }
}

/// Checks every release in `trace`.
pub fn check(trace: &Trace) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut acks = Acks::default();
    let mut controls = Controls::default();
    // Highest epoch the secondary has received so far.
    let mut received: Option<Epoch> = None;
    // Secondary frames seen (digest -> count not yet matched).
    let mut svm: BTreeMap<u64, u32> = BTreeMap::new();
    let mut solo_hosts = BTreeSet::new();
    for e in &trace.events {
        match e {
            TraceEvent::Received { epoch, .. } => {
                received = Some(received.map_or(*epoch, |r| r.max(*epoch)));
            }
            TraceEvent::SvmAck { flow, ack, .. } => acks.on_svm(*flow, *ack),
            TraceEvent::PvmAck {
                flow, epoch, ack, ..
            } => acks.on_pvm(*flow, *epoch, *ack),
            TraceEvent::SvmControl {
                flow, flag, pos, ..
            } => {
                controls.svm.insert((*flow, *flag, *pos));
            }
            TraceEvent::PvmControl {
                flow,
                epoch,
                flag,
                pos,
                ..
            } => controls.on_pvm((*flow, *flag, *pos), *epoch),
            TraceEvent::SvmOutput { digest, .. } => {
                *svm.entry(*digest).or_default() += 1;
            }
            TraceEvent::TermStarted { host, solo, .. } => {
                if *solo {
                    solo_hosts.insert(*host);
                } else {
                    solo_hosts.remove(host);
                }
            }
            TraceEvent::Released {
                at,
                host,
                epoch,
                frame,
                origin,
                ..
            } => {
                if let Some((flow, ack)) = origin.guarded_ack()
                    && !acks.justify(flow, ack, *epoch, received)
                {
                    out.push(Violation {
                        checker: NAME,
                        at: *at,
                        what: format!(
                            "{host} released {frame:?} (epoch {}, {origin:?}) with ACK {ack}, \
                             which the secondary had not acknowledged (its highest: {:?}) nor \
                             received a checkpoint of (received up to {received:?})",
                            epoch.0,
                            acks.svm.get(&flow)
                        ),
                    });
                }
                if let Some((flow, c)) = origin.control()
                    && let Some((flag, pos)) = controls.unjustified(flow, &c, *epoch, received)
                {
                    out.push(Violation {
                        checker: NAME,
                        at: *at,
                        what: format!(
                            "{host} released {frame:?} (epoch {}, {origin:?}) with control flag \
                             {flag:#04x} at {pos}, which the secondary had not sent there nor \
                             received a checkpoint of (received up to {received:?})",
                            epoch.0
                        ),
                    });
                }
                match origin {
                    Origin::Covered => {
                        if received.is_none_or(|r| r < *epoch) {
                            out.push(Violation {
                                checker: NAME,
                                at: *at,
                                what: format!(
                                    "{host} released {frame:?} of epoch {} but the secondary had \
                                 received only up to {received:?}",
                                    epoch.0
                                ),
                            });
                        }
                    }
                    Origin::Matched { svm_digest, .. } => {
                        let slot = svm.get_mut(svm_digest).filter(|n| **n > 0);
                        match slot {
                        Some(n) => *n -= 1,
                        None => out.push(Violation {
                            checker: NAME,
                            at: *at,
                            what: format!(
                                "{host} released {frame:?} (epoch {}) as matched, but the secondary \
                                 produced no unmatched frame {svm_digest:#x} before",
                                epoch.0
                            ),
                        }),
                    }
                    }
                    // A stream match was verified byte by byte by the harness that emitted it; an
                    // uncompared segment carries no new byte (its ACK was judged above).
                    Origin::MatchedStream { .. } | Origin::Uncompared { .. } => {}
                    Origin::Solo => {
                        if !solo_hosts.contains(host) {
                            out.push(Violation {
                                checker: NAME,
                                at: *at,
                                what: format!("{host} released {frame:?} solo while paired"),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::Host;
    use crate::trace::FrameId;
    use colo_core::ids::Term;
    use colo_core::time::Instant;

    fn release(at: u64, epoch: u64, origin: Origin) -> TraceEvent {
        TraceEvent::Released {
            at: Instant::from_millis(at),
            host: Host::A,
            term: Term(1),
            epoch: Epoch(epoch),
            frame: FrameId(at),
            digest: 7,
            origin,
        }
    }

    #[test]
    fn release_after_received_passes() {
        let mut t = Trace::new();
        t.push(TraceEvent::Received {
            at: Instant::from_millis(1),
            epoch: Epoch(2),
        });
        t.push(release(2, 2, Origin::Covered));
        assert!(check(&t).is_empty());
    }

    #[test]
    fn release_before_received_is_caught() {
        let mut t = Trace::new();
        t.push(release(1, 2, Origin::Covered));
        t.push(TraceEvent::Received {
            at: Instant::from_millis(2),
            epoch: Epoch(2),
        });
        let v = check(&t);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].checker, NAME);
    }

    #[test]
    fn a_match_needs_an_earlier_secondary_frame_and_consumes_it() {
        let mut t = Trace::new();
        t.push(TraceEvent::SvmOutput {
            at: Instant::from_millis(1),
            epoch: Epoch(1),
            digest: 9,
        });
        t.push(release(
            2,
            1,
            Origin::Matched {
                svm_digest: 9,
                flow: 0,
                ack: None,
                control: None,
            },
        ));
        assert!(check(&t).is_empty());
        // A second release against the same single secondary frame is not matched.
        t.push(release(
            3,
            1,
            Origin::Matched {
                svm_digest: 9,
                flow: 0,
                ack: None,
                control: None,
            },
        ));
        assert_eq!(check(&t).len(), 1);
    }

    fn uncompared(at: u64, epoch: u64, flow: u64, ack: Option<u32>) -> TraceEvent {
        release(
            at,
            epoch,
            Origin::Uncompared {
                flow,
                ack,
                control: None,
            },
        )
    }

    fn svm_ack(at: u64, flow: u64, ack: u32) -> TraceEvent {
        TraceEvent::SvmAck {
            at: Instant::from_millis(at),
            flow,
            ack,
        }
    }

    #[test]
    fn an_uncompared_ack_the_secondary_never_sent_is_caught() {
        let mut t = Trace::new();
        t.push(svm_ack(1, 7, 99));
        t.push(svm_ack(1, 8, 500));
        t.push(uncompared(2, 1, 7, Some(100)));
        let v = check(&t);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("ACK 100"), "{v:?}");
    }

    #[test]
    fn an_uncompared_ack_the_secondary_sent_first_passes_even_across_wraparound() {
        let mut t = Trace::new();
        t.push(svm_ack(1, 7, 100));
        t.push(uncompared(2, 1, 7, Some(100)));
        t.push(uncompared(3, 1, 7, Some(60)));
        t.push(svm_ack(4, 9, 4));
        t.push(uncompared(5, 1, 9, Some(u32::MAX - 3)));
        assert!(check(&t).is_empty(), "{:?}", check(&t));
        // Acknowledged only after the release: too late.
        t.push(uncompared(6, 1, 9, Some(10)));
        t.push(svm_ack(7, 9, 10));
        assert_eq!(check(&t).len(), 1);
    }

    #[test]
    fn a_received_checkpoint_justifies_an_uncompared_ack() {
        let mut t = Trace::new();
        // The frame's own epoch was received.
        t.push(TraceEvent::Received {
            at: Instant::from_millis(1),
            epoch: Epoch(2),
        });
        t.push(uncompared(2, 2, 7, Some(100)));
        assert!(check(&t).is_empty());
        // A later frame repeating an ACK the primary had reached in a received epoch.
        t.push(TraceEvent::PvmAck {
            at: Instant::from_millis(3),
            flow: 7,
            epoch: Epoch(2),
            ack: 150,
        });
        t.push(uncompared(4, 3, 7, Some(150)));
        assert!(check(&t).is_empty());
        // An ACK the primary reached only in the epoch not yet received.
        t.push(TraceEvent::PvmAck {
            at: Instant::from_millis(5),
            flow: 7,
            epoch: Epoch(3),
            ack: 200,
        });
        t.push(uncompared(6, 3, 7, Some(200)));
        assert_eq!(check(&t).len(), 1);
    }

    #[test]
    fn a_matched_release_needs_its_ack_acknowledged_too() {
        let matched = |at| {
            release(
                at,
                1,
                Origin::Matched {
                    svm_digest: 9,
                    flow: 7,
                    ack: Some(100),
                    control: None,
                },
            )
        };
        let svm_frame = |at| TraceEvent::SvmOutput {
            at: Instant::from_millis(at),
            epoch: Epoch(1),
            digest: 9,
        };
        let mut t = Trace::new();
        t.push(svm_frame(1));
        t.push(matched(2));
        let v = check(&t);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("with ACK 100"), "{v:?}");
        let mut t = Trace::new();
        t.push(svm_frame(1));
        t.push(svm_ack(1, 7, 100));
        t.push(matched(2));
        assert!(check(&t).is_empty(), "{:?}", check(&t));
    }

    #[test]
    fn an_uncompared_segment_without_a_guarded_ack_needs_nothing() {
        let mut t = Trace::new();
        t.push(uncompared(1, 1, 7, None));
        assert!(check(&t).is_empty());
    }

    fn fin(at: u64, epoch: u64, end: u32) -> TraceEvent {
        release(
            at,
            epoch,
            Origin::Uncompared {
                flow: 7,
                ack: None,
                control: Some(Control {
                    flags: colo_core::packet::tcp_flags::FIN,
                    end,
                    ack: 0,
                }),
            },
        )
    }

    fn svm_control(at: u64, flag: u8, pos: u32) -> TraceEvent {
        TraceEvent::SvmControl {
            at: Instant::from_millis(at),
            flow: 7,
            flag,
            pos,
        }
    }

    #[test]
    fn a_fin_the_secondary_had_not_sent_there_is_caught() {
        use colo_core::packet::tcp_flags::{FIN, RST};
        let mut t = Trace::new();
        t.push(fin(1, 1, 50));
        t.push(svm_control(2, FIN, 50));
        let v = check(&t);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("control flag 0x01 at 50"), "{v:?}");
        // Sent, but elsewhere, or another flag: still caught.
        let mut t = Trace::new();
        t.push(svm_control(1, FIN, 49));
        t.push(svm_control(1, RST, 50));
        t.push(fin(2, 1, 50));
        assert_eq!(check(&t).len(), 1);
    }

    #[test]
    fn a_fin_the_secondary_sent_first_passes() {
        let mut t = Trace::new();
        t.push(svm_control(1, colo_core::packet::tcp_flags::FIN, 50));
        t.push(fin(2, 1, 50));
        t.push(fin(3, 1, 50));
        assert!(check(&t).is_empty(), "{:?}", check(&t));
    }

    #[test]
    fn a_received_checkpoint_justifies_a_fin() {
        use colo_core::packet::tcp_flags::FIN;
        let mut t = Trace::new();
        t.push(TraceEvent::PvmControl {
            at: Instant::from_millis(1),
            flow: 7,
            epoch: Epoch(2),
            flag: FIN,
            pos: 50,
        });
        t.push(TraceEvent::Received {
            at: Instant::from_millis(2),
            epoch: Epoch(2),
        });
        // A retransmission produced in a later epoch: the received one had the close.
        t.push(fin(3, 3, 50));
        assert!(check(&t).is_empty(), "{:?}", check(&t));
        // A FIN elsewhere produced in the epoch not yet received.
        t.push(fin(4, 3, 60));
        assert_eq!(check(&t).len(), 1);
    }

    #[test]
    fn solo_release_while_paired_is_caught() {
        let mut t = Trace::new();
        t.push(TraceEvent::TermStarted {
            at: Instant::ZERO,
            host: Host::A,
            term: Term(1),
            solo: false,
        });
        t.push(release(1, 1, Origin::Solo));
        assert_eq!(check(&t).len(), 1);
    }
}
