//! The replication link between the two hosts as the runtime has it: one TCP connection
//! (docs/simulation.md, "The replication link"). Inside a live connection messages arrive in
//! order, each once, never lost; a cut of the host-host link only holds them (TCP retransmits
//! once the path is back: delay only). What TCP does lose is the connection: a cut longer than
//! the runtime's peer write timeout (`liveness::peer_write_timeout`, twice the heartbeat's
//! `lost_after`: a sender stalled that long gets a write error and closes the link), a
//! `LinkReset` of the swarm, or a crashed host (its kernel closes its sockets: the peer reads
//! the end of the stream after what was sent) breaks it. Then both nodes see
//! `Input::PeerLink(Down)` (the crashed one sees nothing), whatever was in flight is lost whole,
//! and what a node sends meanwhile is dropped at the sender (the runtime's
//! `dropped_while_down`).
//!
//! A new connection comes up the way the runtime makes one: a secondary that still depends on
//! its primary (Connecting, Syncing or Paired) redials it for twice `lost_after` after the drop
//! (`node_loop/reconnect.rs`), and a host that booted dials its peer until it gets through
//! (the initial connector). The side dialled accepts when it listens and has no link: a
//! primary-side node (the primary's acceptor), or a survivor that is solo or re-protecting (a
//! secondary's takeover address, `on_newcomer`). A dial succeeds at the first instant the path
//! is clear (no host-host cut, no reset window) and both conditions hold; both nodes then see
//! `Input::PeerLink(Up)`, the acceptor's behind anything still in flight to it.
//!
//! Invariant kept: a message between the hosts is delivered only on the connection it was
//! sent on, in order, once; the connection is up only while both ends are alive.

use colo_core::ids::Role;
use colo_core::node::{LinkState, NodeMode};
use colo_core::time::{Duration, Instant};

use super::{Ctl, CtlMsg, Shared, Waiter};
use crate::trace::TraceEvent;

/// The replication connection's state.
#[derive(Debug)]
pub(crate) struct ReplLink {
    /// The connection is up.
    pub(crate) up: bool,
    /// A host still redialling its primary after a drop, until this instant.
    redial_until: [Option<Instant>; 2],
    /// A host that booted and dials its peer until it gets through.
    dialing: [bool; 2],
    /// A host that crashed and whose end of the stream is not yet sent: what it had queued
    /// before the crash (in the step that crashed it) still leaves first.
    closing: [bool; 2],
    /// Messages a node sent while the connection was down (dropped at the sender).
    pub(crate) dropped_while_down: u64,
}

impl ReplLink {
    /// The connection of a fresh run: both first hosts are connected.
    pub(crate) fn new() -> ReplLink {
        ReplLink {
            up: true,
            redial_until: [None; 2],
            dialing: [false; 2],
            closing: [false; 2],
            dropped_while_down: 0,
        }
    }
}

/// Whether a node in `mode` still depends on its primary's link (the runtime's reconnector
/// redials only for such a node).
fn depends_on_primary(mode: NodeMode) -> bool {
    matches!(
        mode,
        NodeMode::Connecting | NodeMode::Syncing | NodeMode::Paired
    )
}

impl Shared {
    /// The heartbeat's `lost_after` of the run's nodes.
    fn lost_after(&self) -> Duration {
        super::node_config(0, &self.opts, None)
            .heartbeat
            .lost_after()
    }

    /// How long a host-host cut lasts before the connection breaks: the runtime's peer write
    /// timeout (a sender that made no progress that long closes the link).
    pub(crate) fn reset_after(&self) -> Duration {
        self.lost_after()
            .saturating_mul(2)
            .max(Duration::from_millis(100))
    }

    /// The connection breaks now (a long cut or a reset): what is in flight either way is lost,
    /// both live nodes see the link go down, a dependent secondary starts redialling.
    pub(crate) fn connection_down(&mut self, now: Instant) {
        if !self.repl.up {
            return;
        }
        self.repl.up = false;
        let (a, b) = (Ctl::Host(0), Ctl::Host(1));
        self.ctl_net.drop_between(&a, &b);
        for h in 0..2 {
            if !self.dead[h] {
                self.start_redial(now, h);
                self.ctl_inbox
                    .entry(Ctl::Host(h))
                    .or_default()
                    .push_back(CtlMsg::Link(LinkState::Down));
                self.ring(Waiter::Host(h));
            }
        }
        self.obs.push(TraceEvent::LinkReset {
            at: now,
            down: true,
        });
    }

    /// Host `h` crashed: its kernel closes the connection; the peer reads what `h` had sent
    /// (including what it queued in the step that crashed it), then the end of the stream (a
    /// `Down` behind it on the same link, sent by [`Shared::connection_finish_close`]).
    pub(crate) fn connection_closed_by_crash(&mut self, now: Instant, h: usize) {
        self.repl.dialing[h] = false;
        self.repl.redial_until[h] = None;
        if !self.repl.up {
            return;
        }
        self.repl.up = false;
        self.repl.closing[h] = true;
        let p = 1 - h;
        if !self.dead[p] {
            self.start_redial(now, p);
        }
        self.obs.push(TraceEvent::LinkReset {
            at: now,
            down: true,
        });
    }

    /// Whether host `h` may send to its peer now: the connection is up, or `h` crashed and
    /// what it queued before the crash is still leaving.
    pub(crate) fn connection_sends(&self, h: usize) -> bool {
        self.repl.up || self.repl.closing[h]
    }

    /// The end of a crashed host's stream: its peer sees the link go down behind everything
    /// the crashed host sent.
    pub(crate) fn connection_finish_close(&mut self, now: Instant) {
        for h in 0..2 {
            if std::mem::take(&mut self.repl.closing[h]) && !self.dead[1 - h] {
                let msg = CtlMsg::Link(LinkState::Down);
                self.ctl_send(now, Ctl::Host(h), Ctl::Host(1 - h), msg);
            }
        }
    }

    /// A dependent secondary redials its primary for twice `lost_after` after a drop.
    fn start_redial(&mut self, now: Instant, h: usize) {
        let dependent = self.views[h]
            .is_some_and(|v| v.status.role == Role::Secondary && depends_on_primary(v.status.mode));
        self.repl.redial_until[h] = dependent.then(|| now + self.lost_after().saturating_mul(2));
    }

    /// Host `h` boots and dials its peer until it gets through. Returns whether the connection
    /// is up at once (the booting host starts with the link up; the peer is told).
    pub(crate) fn connection_dial_on_boot(&mut self, now: Instant, h: usize) -> bool {
        self.repl.dialing[h] = true;
        self.repl.redial_until[h] = None;
        if self.repl.up {
            // The peer kept a connection of the previous incarnation open: it cannot be (a
            // crash closes it), but if it were, the dial waits for it to close.
            return false;
        }
        self.try_connect(now, Some(h))
    }

    /// Counts a message sent while the connection is down (dropped at the sender).
    pub(crate) fn drop_while_down(&mut self) {
        self.repl.dropped_while_down += 1;
    }

    /// Whether the path between the hosts is clear (no cut of it, no reset window).
    fn path_clear(&self) -> bool {
        !self.faults.reset_down() && !self.faults.host_host_cut_in_force(&self.opts)
    }

    /// A dial that can get through now does: the connection comes up, both nodes are told
    /// (`booting`, if any, is starting with the link up and is not told again). Returns whether
    /// the connection is up.
    pub(crate) fn try_connect(&mut self, now: Instant, booting: Option<usize>) -> bool {
        if self.repl.up {
            return true;
        }
        if !self.path_clear() || self.repl.closing.iter().any(|c| *c) {
            return false;
        }
        for h in 0..2 {
            let p = 1 - h;
            if self.dead[h] || self.dead[p] {
                continue;
            }
            let redialling = self.repl.redial_until[h].is_some_and(|t| now <= t)
                && self.views[h].is_some_and(|v| {
                    v.status.role == Role::Secondary && depends_on_primary(v.status.mode)
                });
            if !(self.repl.dialing[h] || redialling) {
                continue;
            }
            let accepts = self.views[p].is_some_and(|v| {
                v.status.role == Role::Primary
                    || matches!(v.status.mode, NodeMode::Solo | NodeMode::Reprotecting)
            });
            if !accepts {
                continue;
            }
            self.repl.up = true;
            self.repl.dialing = [false; 2];
            self.repl.redial_until = [None; 2];
            if booting != Some(h) {
                self.ctl_inbox
                    .entry(Ctl::Host(h))
                    .or_default()
                    .push_back(CtlMsg::Link(LinkState::Up));
                self.ring(Waiter::Host(h));
            }
            // Behind whatever the old connection still delivers to the acceptor.
            self.ctl_send(now, Ctl::Host(h), Ctl::Host(p), CtlMsg::Link(LinkState::Up));
            self.obs.push(TraceEvent::LinkReset {
                at: now,
                down: false,
            });
            return true;
        }
        false
    }
}
