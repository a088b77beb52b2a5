//! Failover as the node carries it out, and the solo gate: what each side does when its peer is
//! gone, and the one place where output leaves without the peer's confirmation.
//!
//! Takeover (on [`FailoverEvent::TakeoverStarted`]): a primary abandons any checkpoint (its
//! checkpointer resumes a paused PVM), stops disk forwarding, keeps its comparator holding; a
//! secondary discards a partial epoch or finishes an apply in progress (its checkpointer), keeps
//! its rewriter in failover mode, and merges its disk overlays once the VM is consistent. On
//! [`FailoverEvent::SoloGranted`] the primary's comparator flushes what it held and the
//! secondary claims the client link and sends again its guest's TCP segments the client has
//! not acknowledged (`rewrite::resend`).
//!
//! Invariant kept (single writer, architecture.md invariant 5): a frame passes the solo gate
//! ([`Node::emit_solo`]) only while [`Failover::may_release_solo`](crate::failover::Failover)
//! holds at that instant; otherwise it waits in the [`Hold`] (never dropped; past its bound the
//! guest is paused), and a deposed node discards what it held, counted, because releasing it
//! would make a second writer in the term.

use super::{Event, HaltReason, Node, Output, Phase, Side};
use crate::checkpoint::VmCommand;
use crate::checkpoint::VmCompletion;
use crate::failover::{FailoverEvent, FailoverReason, Mode};
use crate::time::Instant;
use crate::wire::Message;
use std::collections::VecDeque;

/// The guest pause the node itself ordered for backpressure.
///
/// ```text
/// Running --hold full, checkpointer idle--> Pausing --Paused--> Paused
/// Paused --hold drained--> Resuming --Resumed--> Running
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GuestHold {
    Running,
    Pausing,
    Paused,
    Resuming,
}

/// Frames waiting for the right to be released (lease missing or lapsed, takeover in progress).
#[derive(Debug)]
pub(super) struct Hold {
    frames: VecDeque<Vec<u8>>,
    bound: usize,
    guest: GuestHold,
    /// Release was suspended by a lapse (for the `ReleaseResumed` event).
    suspended: bool,
}

impl Hold {
    pub(super) fn new(bound: usize) -> Hold {
        Hold {
            frames: VecDeque::new(),
            bound,
            guest: GuestHold::Running,
            suspended: false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }
}

impl Node {
    /// Stop depending on the peer for `reason`, if this node can serve alone.
    pub(super) fn trigger_failover(&mut self, now: Instant, reason: FailoverReason) {
        self.try_failover(now, reason);
    }

    /// A secondary that received the whole of an epoch and confirmed it, and is applying it
    /// or resuming after the apply (its checkpointer finishes that before a takeover).
    fn applying_a_received_epoch(&self) -> bool {
        matches!(&self.side, Side::Secondary(s)
            if s.checkpointer.as_ref().is_some_and(|c| c.completing_an_epoch()))
    }

    /// [`Node::trigger_failover`], returning whether this node can serve alone (a refusal is
    /// counted in `takeovers_refused`).
    pub(super) fn try_failover(&mut self, now: Instant, reason: FailoverReason) -> bool {
        if self.phase == Phase::Connecting && self.is_primary_side() && self.peer.is_none() {
            // A primary whose secondary never came: an operator may run it unprotected (solo
            // under the lease) and re-protect it later. Connecting --Failover--> Running
            self.phase = Phase::Running;
        }
        if self.phase != Phase::Running || !(self.has_state || self.applying_a_received_epoch()) {
            // Before the pairing's first checkpoint a secondary's VM is no copy of anything,
            // and a node that never started has nothing to take over with. One that confirmed
            // the whole of its first epoch (`CheckpointReceived`) and is applying it, or
            // resuming after the apply, has one: its checkpointer finishes that first.
            self.stats.takeovers_refused += 1;
            return false;
        }
        self.failover.handle_trigger(now, reason);
        true
    }

    /// A checkpoint step waited on this node's own VM past its deadline while paired: leave the
    /// pair in order (the peer takes over on the goodbye) and stop. Alone, there is nobody to
    /// hand over to: only the event was reported.
    pub(super) fn on_own_vm_stuck(&mut self) {
        if self.phase != Phase::Running || !self.failover.is_paired() || self.peer.is_none() {
            return;
        }
        let term = self.failover.term();
        self.send(Message::Goodbye {
            term,
            reason: crate::wire::GoodbyeReason::Shutdown,
        });
        // Running --own VM stuck--> Stopped
        self.phase = Phase::Stopped;
        self.hold.frames.clear();
        self.event(Event::Stopped);
        self.link_before_halt(self.now);
        self.out.push(Output::Halt(HaltReason::VmFailed));
    }

    /// Drains the failover machine's events and lease requests.
    pub(super) fn pump_failover(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        while let Some(req) = self.failover.poll_lease_request() {
            progressed = true;
            self.out.push(Output::Arbiter(req));
        }
        while let Some(ev) = self.failover.poll_event() {
            progressed = true;
            match ev {
                FailoverEvent::TakeoverStarted { term, from, reason } => {
                    self.event(Event::TakeoverStarted { term, from, reason });
                    self.on_takeover_started(now, reason);
                    #[cfg(feature = "canaries")]
                    if self.canary(super::NodeCanary::ReleaseWithoutLease) {
                        // Planted (canary.rs): act as if the lease were granted already.
                        self.on_solo_granted(now, term);
                    }
                }
                FailoverEvent::SoloGranted { term } => self.on_solo_granted(now, term),
                FailoverEvent::ReleaseSuspended { term } => {
                    self.hold.suspended = true;
                    self.event(Event::ReleaseSuspended { term });
                }
                FailoverEvent::Deposed {
                    term,
                    holder,
                    current_term,
                } => {
                    let discarded = self.hold.frames.len() as u64;
                    self.stats.fenced_frames += discarded;
                    self.hold.frames.clear();
                    self.sync = None;
                    self.event(Event::Deposed {
                        term,
                        holder,
                        current_term,
                        discarded,
                    });
                    self.link_before_halt(now);
                    self.out.push(Output::Halt(HaltReason::Deposed));
                }
                // The node reports its own `Reprotected` with the epoch (reprotect.rs).
                FailoverEvent::Reprotected { .. } => {}
            }
        }
        progressed
    }

    /// The new term's lease is held for the first time: report the failover once, flush the
    /// comparator (primary) or claim the client link (secondary).
    fn on_solo_granted(&mut self, now: Instant, term: crate::ids::Term) {
        if self.failed_over_reported {
            return;
        }
        self.failed_over_reported = true;
        // Tell the old peer, if it can still hear: the newer term deposes it. Only once the
        // arbiter granted the term: announced at the takeover's start, it deposed a healthy
        // primary even when this node then died or was refused before the grant, leaving no
        // host to serve (colo-sim seed 127 under `--node`: the taker crashed inside its
        // failover).
        self.send(Message::TermAnnounce {
            term,
            node_id: self.config.node_id,
        });
        let reason = self.takeover_reason.unwrap_or(FailoverReason::Requested);
        self.event(Event::FailedOver { term, reason });
        // The pairing is over and the announcement is on the link: free it for a newcomer
        // (an old peer that lost power would otherwise hold it until TCP gives up).
        self.close_link(now);
        match &mut self.side {
            Side::Primary(p) => p.comparator.release_all(now),
            Side::Secondary(_) => {
                self.out
                    .push(Output::Console(super::ConsoleCommand::Release));
                self.out.push(Output::ClaimClientLink { term });
                self.resend_unacknowledged(now);
            }
        }
    }

    fn on_takeover_started(&mut self, now: Instant, reason: FailoverReason) {
        self.takeover_reason = Some(reason);
        self.failed_over_reported = false;
        self.ready_for_takeover = false;
        self.sync = None;
        // No pairing any more: the old peer's messages are stale from here on.
        self.peer = None;
        match &mut self.side {
            Side::Primary(p) => {
                match &mut p.checkpointer {
                    Some(k) => k.handle_failover(now),
                    None => self.ready_for_takeover = true,
                }
                self.disks.handle_failover();
                if !p.pvm_started {
                    p.pvm_started = true;
                    if p.vm_idle() {
                        // The pairing's first checkpoint never paused the PVM: it was never
                        // started. (Otherwise the checkpointer's own Resume starts it.)
                        self.out.push(Output::Vm(VmCommand::Resume));
                        self.hold.guest = GuestHold::Resuming;
                    }
                }
            }
            Side::Secondary(s) => {
                s.xlate.enter_failover();
                match &mut s.checkpointer {
                    Some(k) => k.handle_failover(now),
                    None => self.on_ready_for_takeover(now),
                }
            }
        }
    }

    /// The secondary's takeover: its guest's TCP segments the client has not acknowledged go
    /// out again at once, through the solo gate (`rewrite::resend`): the client discards
    /// what it has, and gets what the dead primary held without waiting for the guest's
    /// retransmission timer.
    fn resend_unacknowledged(&mut self, now: Instant) {
        let Side::Secondary(s) = &mut self.side else {
            return;
        };
        let mut frames = s.resend.take_unacknowledged();
        // Kept in the previous primary's guest numbering: the inherited hop gives the
        // clients' (`Message::ClientTranslation`).
        for frame in &mut frames {
            s.xlate.translate_inherited_outbound(now, frame);
        }
        self.stats.resent_at_takeover += frames.len() as u64;
        for frame in frames {
            self.emit_solo(now, frame);
        }
    }

    /// The checkpointer finished what it must before a takeover (a discard, or a whole apply).
    pub(super) fn on_ready_for_takeover(&mut self, _now: Instant) {
        if self.ready_for_takeover {
            return;
        }
        self.ready_for_takeover = true;
        if let Side::Secondary(_) = self.side {
            // Only now: an apply in progress had to empty the overlays first. Merge hidden,
            // then active, into the parent: the parent becomes the SVM's view.
            self.disks.handle_failover();
        }
    }

    /// Sends a confirmed frame to the client.
    pub(super) fn release_to_client(&mut self, frame: Vec<u8>) {
        self.stats.released += 1;
        self.out.push(Output::ToClient(frame));
    }

    /// Whether the solo gate is open at `now`: this node holds an unexpired lease of its term.
    fn may_release_solo(&self, now: Instant) -> bool {
        #[cfg(feature = "canaries")]
        if self.canary(super::NodeCanary::ReleaseWithoutLease)
            && matches!(
                self.failover.mode(),
                Mode::TakingOver | Mode::Solo | Mode::Reprotecting
            )
        {
            // Planted (canary.rs): the gate ignores the lease.
            return true;
        }
        self.failover.may_release_solo(now)
    }

    /// The solo gate: release only while the lease allows it right now.
    pub(super) fn emit_solo(&mut self, now: Instant, frame: Vec<u8>) {
        match self.failover.mode() {
            Mode::Deposed => self.stats.fenced_frames += 1,
            _ if self.may_release_solo(now) && self.hold.frames.is_empty() => {
                self.release_to_client(frame);
            }
            _ => self.hold_frame(frame),
        }
    }

    fn hold_frame(&mut self, frame: Vec<u8>) {
        self.stats.held += 1;
        self.hold.frames.push_back(frame);
        if self.hold.frames.len() <= self.hold.bound {
            return;
        }
        self.stats.held_over_bound += 1;
        let vm_idle = match &self.side {
            Side::Primary(p) => p.vm_idle(),
            Side::Secondary(s) => s.vm_idle(),
        };
        if self.hold.guest == GuestHold::Running && vm_idle {
            // Backpressure instead of loss: the guest stops producing until release resumes.
            self.hold.guest = GuestHold::Pausing;
            self.out.push(Output::Vm(VmCommand::Pause));
            self.event(Event::Backpressure {
                held: self.hold.frames.len() as u64,
            });
        }
    }

    /// Releases the hold once the lease allows it again.
    pub(super) fn flush_hold_if_allowed(&mut self, now: Instant) -> bool {
        if self.hold.frames.is_empty() {
            return self.maybe_resume_guest();
        }
        if !self.may_release_solo(now) {
            return false;
        }
        let released = self.hold.frames.len() as u64;
        while let Some(f) = self.hold.frames.pop_front() {
            self.release_to_client(f);
        }
        if self.hold.suspended {
            self.hold.suspended = false;
            let term = self.failover.term();
            self.event(Event::ReleaseResumed { term, released });
        }
        self.maybe_resume_guest();
        true
    }

    /// A checkpoint received by the new secondary covers every held frame (they predate its
    /// pause): release them.
    pub(super) fn release_hold_covered(&mut self) {
        while let Some(f) = self.hold.frames.pop_front() {
            self.release_to_client(f);
        }
        self.hold.suspended = false;
        self.maybe_resume_guest();
    }

    fn maybe_resume_guest(&mut self) -> bool {
        if self.hold.guest == GuestHold::Paused && self.hold.frames.is_empty() {
            self.hold.guest = GuestHold::Resuming;
            self.out.push(Output::Vm(VmCommand::Resume));
            return true;
        }
        false
    }

    /// A VM completion: the node's own backpressure pause/resume, or the checkpointer's.
    pub(super) fn on_vm_done(&mut self, now: Instant, done: VmCompletion) {
        match (self.hold.guest, &done) {
            (GuestHold::Pausing, VmCompletion::Paused) => {
                self.hold.guest = GuestHold::Paused;
                return;
            }
            (GuestHold::Resuming, VmCompletion::Resumed) => {
                self.hold.guest = GuestHold::Running;
                return;
            }
            (GuestHold::Pausing | GuestHold::Resuming, VmCompletion::Failed { .. }) => {
                self.hold.guest = GuestHold::Running;
                return;
            }
            _ => {}
        }
        match &mut self.side {
            Side::Primary(p) => match &mut p.checkpointer {
                Some(k) => k.handle_vm_done(now, done),
                None => self.stats.stray_vm_completions += 1,
            },
            Side::Secondary(s) => match &mut s.checkpointer {
                Some(k) => {
                    if matches!(done, VmCompletion::Applied { .. }) {
                        // Before the checkpointer orders the resume: the SVM's console output
                        // of the epoch just rolled back goes, nothing printed after it.
                        self.out
                            .push(Output::Console(super::ConsoleCommand::Discard));
                    }
                    k.handle_vm_done(now, done)
                }
                None => self.stats.stray_vm_completions += 1,
            },
        }
    }
}
