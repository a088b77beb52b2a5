//! The run's trace: every event the world and the platform models emit that a checker judges.
//!
//! Invariant kept: the trace is append-only and ordered by emission (which is simulated-time
//! order, ties in the world's fixed processing order), so "before" in a checker means "earlier in
//! the trace". [`Trace::hash`] digests every event's `Debug` form (no pointers, no
//! `HashMap` order inside), so two runs of one seed have equal hashes exactly when they emitted
//! the same events: that is what `colo-sim --check-determinism` compares.
//!
//! Legend (the `--trace` output prints one event a line with these names):
//! `held` a guest frame colo queued; `released` a frame handed to the client LAN, with the host,
//! term, epoch it was produced in and why it was allowed out ([`Origin`]); `superseded` a held
//! frame deliberately dropped (counted, never silent); `svm-out` a secondary frame the comparator
//! saw; `paused` the PVM's state hashes at a checkpoint's pause; `received` the secondary has a
//! whole epoch in its RAM cache; `applied` the SVM loaded an epoch (with its hashes and the page
//! counts it applied vs expected); `discarded` a partial epoch thrown away; `ckpt-done` the
//! primary resumed after a complete checkpoint; `lease` the arbiter granted a term's lease;
//! `term` a host started a term (solo or paired); `crash`/`restart` a host; `faults-stopped` the
//! liveness phase began.

use colo_core::ids::{Epoch, Term};
use colo_core::time::Instant;

use crate::hash::Fnv64;
use crate::swarm::Host;

/// A frame's identity inside one run (assigned by the platform in emission order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameId(pub u64);

/// The control flags (SYN, FIN, RST) of a TCP segment the comparator holds until the
/// secondary sent the same (docs/comparator.md, "Control segments"), with what places them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// The segment's TCP flags.
    pub flags: u8,
    /// The end of its payload (primary numbering): where a FIN or RST sits.
    pub end: u32,
    /// Its acknowledgement number (meaningful with ACK set).
    pub ack: u32,
}

impl Control {
    /// Each control flag with its position: FIN and RST at `end`; a SYN by kind (`SYN`, or
    /// `SYN | ACK` at the client ISN + 1 it acknowledges), since its own sequence number is
    /// the sender's ISN, which the secondary's rewriter cannot map before the handshake ends.
    pub fn keys(&self) -> impl Iterator<Item = (u8, u32)> + '_ {
        use colo_core::packet::tcp_flags::{ACK, FIN, RST, SYN};
        let syn = match (self.flags & SYN != 0, self.flags & ACK != 0) {
            (true, true) => Some((SYN | ACK, self.ack)),
            (true, false) => Some((SYN, 0)),
            _ => None,
        };
        [
            (self.flags & FIN != 0).then_some((FIN, self.end)),
            (self.flags & RST != 0).then_some((RST, self.end)),
            syn,
        ]
        .into_iter()
        .flatten()
    }
}

/// Why a released frame was allowed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The comparator matched it with the secondary's frame of this digest.
    Matched {
        /// Digest of the secondary frame it matched.
        svm_digest: u64,
        /// The flow (see `Uncompared`).
        flow: u64,
        /// Its ACK under the min-ACK guard (see `Uncompared`); `None` for other frames.
        ack: Option<u32>,
        /// Its control flags (see `Uncompared`).
        control: Option<Control>,
    },
    /// Every payload byte of it (flow, sequence number, value) was emitted by the secondary
    /// before the release, possibly in other segments: the comparator's byte-stream match
    /// across different segmentation. The harness checks the bytes (it sees both sides).
    MatchedStream {
        /// The flow (see `Uncompared`).
        flow: u64,
        /// Its ACK under the min-ACK guard (see `Uncompared`).
        ack: Option<u32>,
        /// Its control flags (see `Uncompared`).
        control: Option<Control>,
    },
    /// Held until the secondary received a checkpoint covering the epoch it was produced in.
    Covered,
    /// Released by a host running alone (after failover), under the arbiter's lease.
    Solo,
    /// Released without a payload comparison by the comparator's rule: a TCP segment without
    /// payload (SYN, FIN, pure ACK) or a byte-identical retransmission of data already released.
    /// No new payload byte reaches the client, but its ACK may acknowledge client bytes: the
    /// comparator's min-ACK guard (docs/comparator.md) releases an ACK-carrying segment only
    /// once the secondary acknowledged as far on the flow ([`TraceEvent::SvmAck`]) or a
    /// checkpoint the secondary received covers it; `output_commit` checks exactly that.
    Uncompared {
        /// The flow (the comparator's flow key, hashed; the same as [`TraceEvent::SvmAck`]'s).
        flow: u64,
        /// Its acknowledgement number, if the guard applies (ACK set, RST clear); `None` for a
        /// segment the guard exempts.
        ack: Option<u32>,
        /// Its SYN, FIN or RST, if any: `output_commit` requires the secondary to have sent
        /// the same flag at the same position first ([`TraceEvent::SvmControl`]), or a
        /// received checkpoint to cover it.
        control: Option<Control>,
    },
}

impl Origin {
    /// The flow and ACK of a release the comparator's min-ACK guard judges (a TCP segment with
    /// ACK set and RST clear, released paired): `output_commit` requires the secondary to have
    /// acknowledged as far, or a received checkpoint to cover it.
    pub fn guarded_ack(&self) -> Option<(u64, u32)> {
        match *self {
            Origin::Matched { flow, ack, .. }
            | Origin::MatchedStream { flow, ack, .. }
            | Origin::Uncompared { flow, ack, .. } => ack.map(|a| (flow, a)),
            Origin::Covered | Origin::Solo => None,
        }
    }

    /// The flow and control flags of a paired release carrying SYN, FIN or RST:
    /// `output_commit` requires the secondary to have sent each at the same position, or a
    /// received checkpoint to cover it.
    pub fn control(&self) -> Option<(u64, Control)> {
        match *self {
            Origin::Matched { flow, control, .. }
            | Origin::MatchedStream { flow, control, .. }
            | Origin::Uncompared { flow, control, .. } => control.map(|c| (flow, c)),
            Origin::Covered | Origin::Solo => None,
        }
    }
}

/// One event of the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// A guest frame colo queued on `host`.
    Held {
        /// When.
        at: Instant,
        /// Which host.
        host: Host,
        /// Its identity.
        frame: FrameId,
        /// The epoch the guest was in when it produced the frame.
        epoch: Epoch,
    },
    /// A frame handed to the client LAN.
    Released {
        /// When.
        at: Instant,
        /// Which host.
        host: Host,
        /// The host's term.
        term: Term,
        /// The epoch it was produced in.
        epoch: Epoch,
        /// Its identity.
        frame: FrameId,
        /// Digest of its bytes.
        digest: u64,
        /// Why it was allowed out.
        origin: Origin,
    },
    /// A held frame deliberately dropped.
    Superseded {
        /// When.
        at: Instant,
        /// Which host.
        host: Host,
        /// Which frame.
        frame: FrameId,
        /// Why (a short reason).
        reason: &'static str,
    },
    /// A frame the secondary VM produced, seen by the comparator.
    SvmOutput {
        /// When.
        at: Instant,
        /// Epoch.
        epoch: Epoch,
        /// Digest of its bytes.
        digest: u64,
    },
    /// The secondary's acknowledgement on `flow` advanced to `ack` (its output, after its
    /// rewriter, as the primary's comparator receives it; the client's sequence space, which
    /// PVM and SVM share).
    SvmAck {
        /// When.
        at: Instant,
        /// The flow (hashed comparator flow key).
        flow: u64,
        /// The highest acknowledgement number the secondary sent on it so far.
        ack: u32,
    },
    /// The primary's guest acknowledged `flow` up to `ack` in a frame produced in `epoch` (the
    /// checkpoint whose pause includes it): a received checkpoint of that epoch or later gives
    /// the secondary that acknowledgement too. Segments with ACK set and RST clear only.
    PvmAck {
        /// When.
        at: Instant,
        /// The flow (hashed comparator flow key).
        flow: u64,
        /// The epoch the frame was produced in.
        epoch: Epoch,
        /// The highest acknowledgement number of the flow within that epoch so far.
        ack: u32,
    },
    /// The secondary sent control flag `flag` at position `pos` on `flow` (its output after its
    /// rewriter, as the comparator receives it; [`Control::keys`] says what the position is).
    /// Emitted once per flow, flag and position.
    SvmControl {
        /// When.
        at: Instant,
        /// The flow (hashed comparator flow key).
        flow: u64,
        /// `FIN`, `RST`, `SYN` or `SYN | ACK`.
        flag: u8,
        /// Its position.
        pos: u32,
    },
    /// The primary's guest sent control flag `flag` at `pos` on `flow` in a frame produced in
    /// `epoch`: a received checkpoint of that epoch or later gives the secondary that state.
    /// Emitted once per flow, flag, position and epoch.
    PvmControl {
        /// When.
        at: Instant,
        /// The flow (hashed comparator flow key).
        flow: u64,
        /// The epoch the frame was produced in.
        epoch: Epoch,
        /// `FIN`, `RST`, `SYN` or `SYN | ACK`.
        flag: u8,
        /// Its position.
        pos: u32,
    },
    /// The secondary's sequence translation when it loaded `epoch` (the rewriter's reset):
    /// the SVM now numbers its bytes like the PVM, so every tracked connection must translate
    /// with offset 0.
    Translation {
        /// When.
        at: Instant,
        /// The checkpoint being loaded.
        epoch: Epoch,
        /// Connections still translated with another offset (or none yet).
        skewed: u64,
    },
    /// The primary ordered `epoch`'s pages (`VmCommand::SendPages`); `missing` pages that its
    /// VM collected since the last completed checkpoint (or the pairing's full copy) are not
    /// among them, so the SVM would never receive them (the dirty log forgot them already).
    PagesOrdered {
        /// When.
        at: Instant,
        /// The checkpoint.
        epoch: Epoch,
        /// Owed pages left out.
        missing: u64,
    },
    /// The PVM paused for `epoch`: its state at that instant.
    Paused {
        /// When.
        at: Instant,
        /// The checkpoint.
        epoch: Epoch,
        /// `Guest::state_hash` of the PVM.
        state_hash: u64,
        /// `Guest::disk_hash` of the PVM.
        disk_hash: u64,
    },
    /// The secondary has every page and the device state of `epoch`.
    Received {
        /// When.
        at: Instant,
        /// The checkpoint.
        epoch: Epoch,
    },
    /// The SVM loaded `epoch`.
    Applied {
        /// When.
        at: Instant,
        /// The checkpoint.
        epoch: Epoch,
        /// SVM state hash after the load.
        state_hash: u64,
        /// SVM disk hash after the load.
        disk_hash: u64,
        /// Pages applied.
        pages_applied: u64,
        /// Pages the primary said it sent.
        pages_expected: u64,
    },
    /// A partial epoch thrown away.
    Discarded {
        /// When.
        at: Instant,
        /// The checkpoint.
        epoch: Epoch,
    },
    /// The primary resumed after a complete checkpoint.
    CheckpointDone {
        /// When.
        at: Instant,
        /// The checkpoint.
        epoch: Epoch,
    },
    /// The arbiter granted `host` the lease of `term` until `until`.
    Lease {
        /// When.
        at: Instant,
        /// Holder.
        host: Host,
        /// Term.
        term: Term,
        /// Expiry.
        until: Instant,
    },
    /// `host` started `term`.
    TermStarted {
        /// When.
        at: Instant,
        /// Which host.
        host: Host,
        /// The term.
        term: Term,
        /// Whether it runs alone (no secondary).
        solo: bool,
    },
    /// `host` crashed.
    Crash {
        /// When.
        at: Instant,
        /// Which host.
        host: Host,
    },
    /// `host`'s node halted for good (stopped: its own VM failed; or deposed) and its process
    /// ended; the supervisor restarts it after the seed's `restart_delay`.
    Exited {
        /// When.
        at: Instant,
        /// Which host.
        host: Host,
    },
    /// `host` restarted (after a crash or an exit).
    Restart {
        /// When.
        at: Instant,
        /// Which host.
        host: Host,
    },
    /// `host`, running solo, finished the full copy to a new secondary (re-protection): a new
    /// pairing begins whose first checkpoint is `epoch`, applied by a fresh SVM.
    Reprotected {
        /// When.
        at: Instant,
        /// The survivor, primary of the new pair.
        host: Host,
        /// The new pair's first checkpoint.
        epoch: colo_core::ids::Epoch,
    },
    /// Faults stopped; the liveness phase began.
    FaultsStopped {
        /// When.
        at: Instant,
    },
    /// The crash of `host` just traced was a power loss: its end of the replication
    /// connection vanished without a FIN (the peer's end stays up until the peer closes it).
    PowerLoss {
        /// When.
        at: Instant,
        /// The host.
        host: Host,
    },
    /// The replication link's connection broke (`down`) or its reconnection came up.
    LinkReset {
        /// When.
        at: Instant,
        /// Broke (true) or back (false).
        down: bool,
    },
    /// A host's VM command failed (the swarm's `vm_failures`, or the link down under
    /// `SendPages`) and its node was told.
    VmFailed {
        /// When.
        at: Instant,
        /// The host.
        host: Host,
        /// The command.
        command: colo_core::checkpoint::VmCommandKind,
    },
}

impl TraceEvent {
    /// When the event happened.
    pub fn at(&self) -> Instant {
        match self {
            TraceEvent::Held { at, .. }
            | TraceEvent::Released { at, .. }
            | TraceEvent::Superseded { at, .. }
            | TraceEvent::SvmOutput { at, .. }
            | TraceEvent::SvmAck { at, .. }
            | TraceEvent::PvmAck { at, .. }
            | TraceEvent::SvmControl { at, .. }
            | TraceEvent::PvmControl { at, .. }
            | TraceEvent::Translation { at, .. }
            | TraceEvent::PagesOrdered { at, .. }
            | TraceEvent::Paused { at, .. }
            | TraceEvent::Received { at, .. }
            | TraceEvent::Applied { at, .. }
            | TraceEvent::Discarded { at, .. }
            | TraceEvent::CheckpointDone { at, .. }
            | TraceEvent::Lease { at, .. }
            | TraceEvent::TermStarted { at, .. }
            | TraceEvent::Crash { at, .. }
            | TraceEvent::Exited { at, .. }
            | TraceEvent::Restart { at, .. }
            | TraceEvent::Reprotected { at, .. }
            | TraceEvent::FaultsStopped { at }
            | TraceEvent::LinkReset { at, .. }
            | TraceEvent::PowerLoss { at, .. }
            | TraceEvent::VmFailed { at, .. } => *at,
        }
    }
}

/// The ordered events of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Events in emission order.
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// An empty trace.
    pub fn new() -> Trace {
        Trace::default()
    }

    /// Appends an event.
    pub fn push(&mut self, e: TraceEvent) {
        if let Some(last) = self.events.last() {
            assert!(
                e.at() >= last.at(),
                "trace events must be pushed in simulated-time order"
            );
        }
        self.events.push(e);
    }

    /// Digest of every event (determinism check).
    pub fn hash(&self) -> u64 {
        let mut h = Fnv64::new();
        for e in &self.events {
            h.write(format!("{e:?}").as_bytes());
        }
        h.finish()
    }

    /// Digest of a whole run: this trace plus every client's history. Both engines report it,
    /// and `--check-determinism` compares it across two runs of a seed.
    pub fn run_digest(&self, histories: &[crate::client::History]) -> u64 {
        let mut h = Fnv64::new();
        h.write_u64(self.hash());
        for hist in histories {
            h.write(format!("{hist:?}").as_bytes());
        }
        h.finish()
    }
}

/// One broken rule, as a checker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker's name (`output_commit`, `atomic_checkpoint`, ...).
    pub checker: &'static str,
    /// When (the instant of the offending event).
    pub at: Instant,
    /// What happened.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] at {} ns: {}",
            self.checker,
            self.at.saturating_duration_since(Instant::ZERO).as_nanos(),
            self.what
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_traces_hash_equal_and_one_changed_field_changes_the_hash() {
        let mut a = Trace::new();
        a.push(TraceEvent::Received {
            at: Instant::ZERO,
            epoch: Epoch(1),
        });
        let b = a.clone();
        assert_eq!(a.hash(), b.hash());
        let mut c = Trace::new();
        c.push(TraceEvent::Received {
            at: Instant::ZERO,
            epoch: Epoch(2),
        });
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    #[should_panic(expected = "simulated-time order")]
    fn pushing_an_earlier_event_panics() {
        let mut t = Trace::new();
        t.push(TraceEvent::FaultsStopped {
            at: Instant::from_nanos(5),
        });
        t.push(TraceEvent::FaultsStopped {
            at: Instant::from_nanos(4),
        });
    }
}
