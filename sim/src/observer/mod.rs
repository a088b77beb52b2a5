//! `Observer`: the run-wide view that turns what the hosts do into [`TraceEvent`]s — guest frames
//! held by colo and their epoch, frames released to clients and the *origin* of each release
//! (matched against the secondary's output, covered by a received checkpoint, uncompared by
//! rule, or solo), the secondary's output the comparator saw, superseded frames and crashes.
//! Both Node engines use it: the plain event loop (`node_run`) and the madsim cluster
//! (`cluster_run`), so the trace the checkers judge means the same under either.
//!
//! Invariant kept: the observer only reads frames and node statuses it is handed; it decides
//! nothing a host decides. The release-origin classification is one function
//! (`origin::Releases::classify`, called by [`Observer::release`]), so a change to it (e.g. a
//! tighter `Origin::Uncompared` rule) is made in one place; the ACK facts that justify a release
//! (`SvmAck`, `PvmAck`) are emitted here too, for both engines.

use std::collections::BTreeMap;

use colo_core::ids::{Epoch, Role, Term};
use colo_core::node::{NodeMode, NodeStatus};
use colo_core::time::Instant;

use crate::swarm::Host;
use crate::trace::{FrameId, Origin, Trace, TraceEvent};
use origin::Releases;
use stream::{digest, loose_key};

/// What one run observed (see the module documentation).
#[derive(Debug, Default)]
pub struct Observer {
    /// Every event, in simulated-time order.
    pub trace: Trace,
    /// Frames handed to a node that may release them: id -> (host, digest, loose key, epoch,
    /// the guest's bytes).
    held: BTreeMap<FrameId, (Host, u64, u64, Epoch, Vec<u8>)>,
    /// What was released and what the secondary emitted: classifies each release.
    releases: Releases,
    /// Per (releasing host, term, flow): the end of the furthest `Covered` payload released and
    /// its epoch. One primary's guest emits a flow's bytes in order within a term (its VM is
    /// never restored while it is primary), so a byte below that end was produced in that epoch
    /// or earlier: a later re-emission of such bytes (the guest's TCP retransmitting data the
    /// client never got) is covered by the same checkpoint.
    covered_end: BTreeMap<(Host, Term, String), (u32, Epoch)>,
    next_frame: u64,
    /// Digests of every frame a paired secondary sent to the comparator, and loose keys (flow,
    /// flags, payload) of every frame a paired secondary's guest emitted (its rewriter may
    /// change the sequence numbers; with the peer link down nothing reaches the comparator):
    /// a survivor sends such a frame again at its takeover (`colo_core::rewrite::resend`).
    svm_digests: std::collections::BTreeSet<u64>,
    svm_loose: std::collections::BTreeSet<u64>,
    /// Frames released to clients.
    pub released: u64,
    /// Of those, the secondary's earlier output sent again at a takeover.
    pub resent: u64,
    /// Checkpoints a primary completed.
    pub checkpoints: u64,
}

impl Observer {
    /// An empty observer.
    pub fn new() -> Observer {
        Observer::default()
    }

    /// Appends an event.
    pub fn push(&mut self, e: TraceEvent) {
        if matches!(e, TraceEvent::CheckpointDone { .. }) {
            self.checkpoints += 1;
        }
        self.trace.push(e);
    }

    /// A frame `host`'s guest emitted, about to be handed to its node (status `st`; `epoch`:
    /// the epoch its primary checkpointer runs). Traced as held unless the node is a paired
    /// secondary, whose frames only feed the primary's comparator. Returns whether the frame
    /// goes to the node at all: a deposed or stopped node releases nothing again, so its guest's
    /// frames end here (the real runtime stops that VM).
    pub fn guest_frame(
        &mut self,
        now: Instant,
        host: Host,
        frame: &[u8],
        st: &NodeStatus,
        epoch: Epoch,
    ) -> bool {
        if matches!(st.mode, NodeMode::Deposed | NodeMode::Stopped) {
            return false;
        }
        let compare_only = st.role == Role::Secondary && st.mode == NodeMode::Paired;
        if compare_only {
            self.svm_loose.insert(loose_key(frame));
        } else {
            let id = FrameId(self.next_frame);
            self.next_frame += 1;
            self.held.insert(
                id,
                (host, digest(frame), loose_key(frame), epoch, frame.to_vec()),
            );
            self.trace.push(TraceEvent::Held {
                at: now,
                host,
                frame: id,
                epoch,
            });
            if st.role == Role::Primary && st.mode == NodeMode::Paired {
                for e in self.releases.on_primary(now, epoch, frame) {
                    self.trace.push(e);
                }
            }
        }
        true
    }

    /// A secondary frame on its way to the primary's comparator; `epoch` is the primary's
    /// running epoch (the one its held frames carry: the two checkpointers count an epoch done
    /// at different instants).
    pub fn svm_output(&mut self, now: Instant, frame: &[u8], epoch: Epoch) {
        self.svm_digests.insert(digest(frame));
        let (d, facts) = self.releases.on_secondary(now, frame);
        self.trace.push(TraceEvent::SvmOutput {
            at: now,
            epoch,
            digest: d,
        });
        for e in facts {
            self.trace.push(e);
        }
    }

    /// Releases matched against the secondary (the comparator path).
    pub fn matched(&self) -> u64 {
        self.releases.matched
    }

    /// `host`'s node (status `st`) released `frame` to the clients: finds the held frame it
    /// came from and classifies the release's origin (see docs/simulation.md, "The Node
    /// engine"): `Solo` under a solo node; `Uncompared` for a zero-payload segment or a
    /// retransmission of released bytes; `Matched` if the secondary emitted the same compare
    /// key; `MatchedStream` if it emitted every payload byte at the same sequence numbers;
    /// `Covered` otherwise (the checker then requires a covering `Received`).
    pub fn release(&mut self, now: Instant, host: Host, frame: &[u8], st: &NodeStatus) {
        let d = digest(frame);
        let loose = loose_key(frame);
        if st.mode != NodeMode::Paired
            && (self.svm_digests.contains(&d) || self.svm_loose.contains(&loose))
            && !self
                .held
                .values()
                .any(|v| v.0 == host && (v.1 == d || v.2 == loose))
        {
            // A survivor sending again its guest's output from before the takeover, which
            // only the comparator saw (`colo_core::rewrite::resend`): held and released at
            // once, solo (single_writer asks for the lease; tcp_continuity judges the
            // client's stream).
            let id = FrameId(self.next_frame);
            self.next_frame += 1;
            self.trace.push(TraceEvent::Held {
                at: now,
                host,
                frame: id,
                epoch: st.epoch,
            });
            self.trace.push(TraceEvent::Released {
                at: now,
                host,
                term: st.term,
                epoch: st.epoch,
                frame: id,
                digest: d,
                origin: Origin::Solo,
            });
            self.released += 1;
            self.resent += 1;
            return;
        }
        // The same bytes first; else the same flow and payload (a survivor's rewriter changed
        // its sequence numbers); else the host's oldest held frame.
        let found = self
            .held
            .iter()
            .find(|(_, v)| v.0 == host && v.1 == d)
            .or_else(|| self.held.iter().find(|(_, v)| v.0 == host && v.2 == loose))
            .or_else(|| self.held.iter().find(|(_, v)| v.0 == host))
            .map(|(id, _)| *id);
        let (id, epoch, guest) = match found.and_then(|id| self.held.remove(&id).map(|v| (id, v))) {
            Some((id, v)) => (id, v.3, v.4),
            None => {
                // Released without having been handed in: a fresh id, which no_silent_loss
                // reports.
                self.next_frame += 1;
                (
                    FrameId(u64::MAX - self.next_frame),
                    Epoch(0),
                    frame.to_vec(),
                )
            }
        };
        // The origin is judged on the guest's frame, as the comparator compares it: a primary
        // that took over keeps rewriting the sequence numbers of connections opened before the
        // failover into the client's space (colo-reference.md, the rewriter after failover), so
        // after a re-protection its released frames differ from its guest's (and from the new
        // secondary's identical output) by that offset; flow, payload and ACK are the same
        // (colo-sim seed 630: matched releases judged `Covered` from the rewritten bytes).
        // Every release by a node that is not paired is solo (a survivor taking over included:
        // single_writer then asks for its lease).
        let origin = self.releases.classify(&guest, st.mode != NodeMode::Paired);
        let epoch = if origin == Origin::Covered {
            self.covered_epoch(host, st.term, &guest, epoch)
        } else {
            epoch
        };
        self.trace.push(TraceEvent::Released {
            at: now,
            host,
            term: st.term,
            epoch,
            frame: id,
            digest: d,
            origin,
        });
        self.released += 1;
    }

    /// The epoch a `Covered` TCP payload frame must be judged by: its own, or, if every byte lies
    /// below the furthest covered byte `host` released on the flow in this term, that release's
    /// epoch when older (see `covered_end`). Records the frame's end as covered.
    fn covered_epoch(&mut self, host: Host, term: Term, frame: &[u8], epoch: Epoch) -> Epoch {
        let c = colo_core::packet::classify_or_opaque(frame);
        let colo_core::packet::Kind::Tcp(t) = c.kind else {
            return epoch;
        };
        if t.payload_len() == 0 {
            return epoch;
        }
        let end = t.seq.0.wrapping_add(t.payload_len() as u32);
        let key = (host, term, format!("{:?}", c.key));
        // Sequence numbers compare modulo 2^32 (RFC 9293 section 3.4).
        let at_or_below = |a: u32, b: u32| (b.wrapping_sub(a) as i32) >= 0;
        let judged = match self.covered_end.get(&key) {
            Some(&(covered, e)) if at_or_below(end, covered) => epoch.min(e),
            _ => epoch,
        };
        match self.covered_end.get(&key) {
            Some(&(covered, _)) if at_or_below(end, covered) => {}
            _ => {
                self.covered_end.insert(key, (end, epoch));
            }
        }
        judged
    }

    /// `host`'s node dropped its hold (deposed): every frame it held is superseded.
    pub fn supersede_all(&mut self, now: Instant, host: Host, reason: &'static str) {
        let frames: Vec<FrameId> = self
            .held
            .iter()
            .filter(|(_, v)| v.0 == host)
            .map(|(id, _)| *id)
            .collect();
        for frame in frames {
            self.held.remove(&frame);
            self.trace.push(TraceEvent::Superseded {
                at: now,
                host,
                frame,
                reason,
            });
        }
    }

    /// `host` crashed: its held frames end with it (the trace's `Crash` accounts for them).
    pub fn crash(&mut self, now: Instant, host: Host) {
        self.held.retain(|_, v| v.0 != host);
        self.trace.push(TraceEvent::Crash { at: now, host });
    }
}

mod origin;
mod stream;

#[cfg(test)]
mod tests {
    use super::*;
    use colo_core::ids::NodeId;

    fn segment(seq: u32, payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 10])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 10], 64)
            .tcp(7000, 40000, seq, 4096)
            .psh()
            .ack(1000);
        let mut f = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut f, payload).expect("a Vec never fails");
        f
    }

    fn paired_primary() -> NodeStatus {
        NodeStatus {
            mode: NodeMode::Paired,
            role: Role::Primary,
            term: Term(3),
            epoch: Epoch(0),
            peer: None,
            peer_id: Some(NodeId(3)),
            last_failover_reason: None,
            last_exit_was_request: None,
            lease_held: false,
            held_frames: 0,
        }
    }

    fn released_epoch(o: &Observer) -> Epoch {
        match o.trace.events.last() {
            Some(TraceEvent::Released { epoch, .. }) => *epoch,
            other => panic!("not a release: {other:?}"),
        }
    }

    fn released_origin(o: &Observer) -> Origin {
        match o.trace.events.last() {
            Some(TraceEvent::Released { origin, .. }) => *origin,
            other => panic!("not a release: {other:?}"),
        }
    }

    #[test]
    fn a_survivor_resending_its_earlier_output_is_held_and_released_solo() {
        let mut o = Observer::new();
        let now = Instant::from_millis(1);
        let reply = segment(700, b"61 OK 3\n");
        // The paired secondary's guest answered; only the comparator saw it.
        o.svm_output(now, &reply, Epoch(5));
        let survivor = NodeStatus {
            mode: NodeMode::Solo,
            role: Role::Primary,
            term: Term(4),
            lease_held: true,
            ..paired_primary()
        };
        o.release(Instant::from_millis(2), Host::B, &reply, &survivor);
        assert_eq!(released_origin(&o), Origin::Solo);
        assert_eq!((o.released, o.resent), (1, 1));
        let (counts, violations) = crate::check::no_silent_loss::account(&o.trace, None);
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(counts.released, 1);
    }

    #[test]
    fn a_release_rewritten_after_a_failover_is_matched_on_the_guest_frame() {
        let mut o = Observer::new();
        let st = paired_primary();
        let now = Instant::from_millis(1);
        // The primary's guest emits at 628 in its own space; the new secondary, a copy of it,
        // emits the same; the primary's rewriter (it took over once) releases it at 3618.
        let guest = segment(628, b"58 OK 7\n");
        o.guest_frame(now, Host::A, &guest, &st, Epoch(40));
        o.svm_output(now, &guest, Epoch(40));
        o.release(now, Host::A, &segment(3618, b"58 OK 7\n"), &st);
        assert!(
            matches!(released_origin(&o), Origin::Matched { .. }),
            "{:?}",
            released_origin(&o)
        );
        // A release the secondary never emitted stays `Covered`.
        let other = segment(636, b"59 OK 9\n");
        o.guest_frame(now, Host::A, &other, &st, Epoch(40));
        o.release(now, Host::A, &segment(3626, b"59 OK 9\n"), &st);
        assert_eq!(released_origin(&o), Origin::Covered);
    }

    #[test]
    fn a_re_emission_below_a_covered_release_is_judged_by_the_covering_epoch() {
        let mut o = Observer::new();
        let st = paired_primary();
        let now = Instant::from_millis(1);
        // Bytes 100..108 released Covered in epoch 24.
        let later = segment(100, b"22 OK 4\n");
        o.guest_frame(now, Host::B, &later, &st, Epoch(24));
        o.release(now, Host::B, &later, &st);
        assert_eq!(released_epoch(&o), Epoch(24));
        // The guest retransmits from 80 (bytes the client never got) in epoch 26: every byte is
        // below the covered end, so the epoch-24 checkpoint covers it.
        let again = segment(80, b"21 OK 3 ~0123456789\n22 OK 4\n");
        o.guest_frame(now, Host::B, &again, &st, Epoch(26));
        o.release(now, Host::B, &again, &st);
        assert_eq!(released_epoch(&o), Epoch(24));
        // New bytes past the covered end keep their own epoch.
        let new = segment(108, b"23 OK 5\n");
        o.guest_frame(now, Host::B, &new, &st, Epoch(26));
        o.release(now, Host::B, &new, &st);
        assert_eq!(released_epoch(&o), Epoch(26));
        // Another host (or term) does not inherit the coverage.
        let other = segment(90, b"x");
        o.guest_frame(now, Host::A, &other, &st, Epoch(27));
        o.release(now, Host::A, &other, &st);
        assert_eq!(released_epoch(&o), Epoch(27));
    }
}
