//! The peer link as the node decides it: when to dial the peer, for how long to redial after a
//! drop (the reconnect window, a node timer), when inbound connections are welcome, and when
//! to close the link. The runtime and the simulator only execute these orders
//! ([`Output::Link`] with a [`LinkCommand`]); the address, the connect timeout, the pacing of
//! retries and the link generations stay theirs.
//!
//! The rules:
//! - **Dial.** A secondary-side node dials while it has no link and is knocking (Connecting:
//!   the initial connection, or a newcomer until a survivor takes it), and, after its link
//!   drops while it still depends on its primary (Syncing or Paired), for twice the heartbeat's
//!   `lost_after` (after that the heartbeat has declared the peer lost and the node has failed
//!   over, or has nothing to fail over with). A link that comes up ends the dial.
//! - **Accept.** Inbound connections are welcome, while no link is up (the executor keeps at
//!   most one), on a primary-side node (its secondary, or a reconnecting one) and on a survivor
//!   running solo or re-protecting (a newcomer); never on a stopped or deposed node.
//! - **Close.** The node closes a link whose pairing is over and whose peer did not close it:
//!   when the heartbeat declares the peer lost, when a takeover completes (after the term
//!   announcement is on the link), when a re-protection is abandoned, and when the node halts.
//!   A peer that lost power sends no FIN: without this the survivor kept the dead connection
//!   and refused the restarted host until TCP gave up on it.
//!
//! Invariant kept: the node's view of the link (`link_up`) and of its orders (`dialing`,
//! `accepting`) changes only here and in `on_link`; every order is emitted once per change
//! (an executor may treat a repeated one as a no-op), and a `Close` is followed by no
//! `Input::PeerLink(Down)` the node needs (one handed in anyway changes nothing).

use super::{Node, NodeMode, Output};
use crate::time::Instant;

/// What the node orders of the peer link ([`Output::Link`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkCommand {
    /// Dial the peer (the runtime's configured address) and keep dialling, paced by the
    /// executor, until a link is up or [`LinkCommand::StopDialing`]. A connection that comes
    /// up (dialled or accepted) ends the dial; report it with `Input::PeerLink(Up)`.
    Dial,
    /// Stop dialling; a connection a cancelled dial makes afterwards is closed unused.
    StopDialing,
    /// Accept (`true`) or refuse (`false`) inbound peer connections from now on. An executor
    /// uses an accepted connection only while no link is up (at most one link at a time).
    Accept(bool),
    /// Close the current link (flush what was sent first: the peer reads it, then the end
    /// of the stream). The node already counts the link as down.
    Close,
}

/// The node's link orders in force.
#[derive(Debug, Default)]
pub(super) struct LinkPlan {
    /// A dial is ordered and not yet ended (by a link, or by `StopDialing`).
    dialing: bool,
    /// Inbound connections are welcome.
    accepting: bool,
    /// After a drop while depending on the primary: redial until then.
    redial_until: Option<Instant>,
}

impl LinkPlan {
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.redial_until
    }
}

impl Node {
    /// The link is gone (dropped under the node, or closed by its order): a secondary that
    /// still depends on its primary redials for twice `lost_after`.
    pub(super) fn link_gone(&mut self, now: Instant) {
        let dependent = !self.is_primary_side()
            && matches!(self.mode_now(), NodeMode::Syncing | NodeMode::Paired);
        self.link.redial_until =
            dependent.then(|| now + self.config.heartbeat.lost_after().saturating_mul(2));
    }

    /// The link came up: whatever dial was running ended with it.
    pub(super) fn link_came_up(&mut self) {
        self.link.dialing = false;
        self.link.redial_until = None;
    }

    /// Closes the link if it is up (see the module documentation for when).
    pub(super) fn close_link(&mut self, now: Instant) {
        if !self.link_up {
            return;
        }
        self.link_up = false;
        self.out.push(Output::Link(LinkCommand::Close));
        self.link_gone(now);
    }

    /// The node's mode without the lease details of `status`.
    fn mode_now(&self) -> NodeMode {
        self.status(self.now).mode
    }

    /// After every input: emits the dial and accept orders that changed, and ends a reconnect
    /// window that ran out.
    pub(super) fn plan_link(&mut self, now: Instant) {
        let mode = self.mode_now();
        if self.link.redial_until.is_some_and(|t| now >= t) {
            self.link.redial_until = None;
        }
        let halted = matches!(mode, NodeMode::Stopped | NodeMode::Deposed);
        let accept = !halted
            && (self.is_primary_side() || matches!(mode, NodeMode::Solo | NodeMode::Reprotecting));
        if accept != self.link.accepting {
            self.link.accepting = accept;
            self.out.push(Output::Link(LinkCommand::Accept(accept)));
        }
        let dial = !self.link_up
            && !self.is_primary_side()
            && match mode {
                NodeMode::Connecting => true,
                NodeMode::Syncing | NodeMode::Paired => self.link.redial_until.is_some(),
                _ => false,
            };
        if dial && !self.link.dialing {
            self.link.dialing = true;
            self.out.push(Output::Link(LinkCommand::Dial));
        } else if !dial && self.link.dialing {
            self.link.dialing = false;
            self.out.push(Output::Link(LinkCommand::StopDialing));
        }
        if !dial {
            self.link.redial_until = None;
        }
    }

    /// The node halts ([`Output::Halt`] follows, after which it orders nothing): its link
    /// closes and it neither dials nor accepts any more (the runtime's loop ends and its
    /// sockets with it).
    pub(super) fn link_before_halt(&mut self, now: Instant) {
        self.close_link(now);
        self.plan_link(now);
    }
}
