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
//! A new connection comes up the way the runtime makes one, on the nodes' orders
//! (`Output::Link`, colo-core's `node/link.rs`): a node that ordered `Dial` dials until a
//! connection is up or it orders `StopDialing`, and a node that ordered `Accept(true)` takes a
//! connection while it has none. A dial succeeds at the first instant the path is clear (no
//! host-host cut, no reset window, no crashed stream still closing) and the peer accepts; both
//! nodes then see `Input::PeerLink(Up)`, the acceptor's behind anything still in flight to it.
//! A node's `Close` is a graceful close: what it sent still arrives, then the end of the
//! stream (`Down`); what was on its way to it is lost. The simulator keeps no rule of its own
//! about who redials or accepts: the nodes decide, so the swarm tests their decisions.
//!
//! A crash is a process crash (its kernel closes the connection: the peer reads the end of the
//! stream) or, drawn per crash from the seed, a power loss: no FIN, the survivor's connection
//! stays up and silent, and only the survivor's own `Close` frees it for the restarted host.
//!
//! Invariant kept: a message between the hosts is delivered only on the connection it was
//! sent on, in order, once; a connection both of whose ends were closed is down.

use colo_core::node::{LinkCommand, LinkState};
use colo_core::time::{Duration, Instant};

use super::{Ctl, CtlMsg, Shared, Waiter};
use crate::trace::TraceEvent;

/// The replication connection's state.
#[derive(Debug)]
pub(crate) struct ReplLink {
    /// The connection is up (for a power-lost host's survivor: up on its side, though nobody
    /// listens at the other end).
    pub(crate) up: bool,
    /// The incarnation of each host whose end the connection is (a host that lost power and
    /// booted again does not hold the old connection's end).
    ends: [u32; 2],
    /// A host whose node ordered a dial that has not ended yet.
    dialing: [bool; 2],
    /// A host whose node accepts inbound connections.
    accepting: [bool; 2],
    /// A host that crashed and whose end of the stream is not yet sent: what it had queued
    /// before the crash (in the step that crashed it) still leaves first.
    closing: [bool; 2],
    /// Messages a node sent while the connection was down (dropped at the sender).
    pub(crate) dropped_while_down: u64,
    /// A host that lost power and has not booted again: it answers nothing (a dial to it goes
    /// unanswered), where a host whose process crashed refuses connections.
    unpowered: [bool; 2],
    /// The host's current dial was told it was refused (once per dial, as the runtime does).
    refusal_told: [bool; 2],
}

impl ReplLink {
    /// The connection of a fresh run: both first hosts are connected.
    pub(crate) fn new() -> ReplLink {
        ReplLink {
            up: true,
            ends: [0; 2],
            dialing: [false; 2],
            accepting: [false; 2],
            closing: [false; 2],
            dropped_while_down: 0,
            unpowered: [false; 2],
            refusal_told: [false; 2],
        }
    }
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

    /// Host `h`'s node orders `cmd` of its peer link.
    pub(crate) fn link_order(&mut self, now: Instant, h: usize, cmd: LinkCommand) {
        match cmd {
            // A dial while this host holds the connection is moot: the node learns of the link
            // (its `Up` is on its way) and the dial ends with it.
            LinkCommand::Dial => {
                self.repl.dialing[h] = !self.holds_connection(h);
                self.repl.refusal_told[h] = false;
            }
            LinkCommand::StopDialing => self.repl.dialing[h] = false,
            LinkCommand::Accept(on) => self.repl.accepting[h] = on,
            LinkCommand::Close => self.connection_closed_by(now, h),
        }
    }

    /// Whether host `h`, as it lives now, is an end of the connection that is up.
    fn holds_connection(&self, h: usize) -> bool {
        self.repl.up && self.repl.ends[h] == self.incarnation[h]
    }

    /// Host `h` closes the connection: what it sent still reaches its peer, then the end of
    /// the stream; what was on its way to `h` is lost (its socket is gone).
    fn connection_closed_by(&mut self, now: Instant, h: usize) {
        if !self.repl.up {
            return;
        }
        self.repl.up = false;
        let p = 1 - h;
        self.ctl_net.drop_toward(&Ctl::Host(p), &Ctl::Host(h));
        // A peer that lost power and booted again never had this connection.
        if !self.dead[p] && self.repl.ends[p] == self.incarnation[p] {
            let msg = CtlMsg::Link(LinkState::PeerClosed);
            self.ctl_send(now, Ctl::Host(h), Ctl::Host(p), msg);
        }
        self.obs.push(TraceEvent::LinkReset {
            at: now,
            down: true,
        });
    }

    /// The connection breaks now: what is in flight either way is lost, both live nodes see the
    /// link go down as `state` says: a reset arrives as each end's peer closing it
    /// ([`LinkState::PeerClosed`]), a cut that outlasted the write timeout as a failed link
    /// ([`LinkState::Down`]).
    pub(crate) fn connection_down(&mut self, now: Instant, state: LinkState) {
        if !self.repl.up {
            return;
        }
        self.repl.up = false;
        let (a, b) = (Ctl::Host(0), Ctl::Host(1));
        self.ctl_net.drop_between(&a, &b);
        for h in 0..2 {
            if !self.dead[h] {
                self.ctl_inbox
                    .entry(Ctl::Host(h))
                    .or_default()
                    .push_back(CtlMsg::Link(state));
                self.ring(Waiter::Host(h));
            }
        }
        self.obs.push(TraceEvent::LinkReset {
            at: now,
            down: true,
        });
    }

    /// Host `h` crashed: it neither dials nor accepts any more. A process crash closes the
    /// connection (its kernel does): the peer reads what `h` had sent (including what it
    /// queued in the step that crashed it), then the end of the stream (a `Down` behind it on
    /// the same link, sent by [`Shared::connection_finish_close`]). A power loss closes
    /// nothing: the peer's end stays up and silent until the peer closes it.
    pub(crate) fn connection_closed_by_crash(&mut self, now: Instant, h: usize, power_loss: bool) {
        self.repl.dialing[h] = false;
        self.repl.accepting[h] = false;
        self.repl.unpowered[h] = power_loss;
        if !self.repl.up || power_loss {
            return;
        }
        self.repl.up = false;
        self.repl.closing[h] = true;
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
                let msg = CtlMsg::Link(LinkState::PeerClosed);
                self.ctl_send(now, Ctl::Host(h), Ctl::Host(1 - h), msg);
            }
        }
    }

    /// Counts a message sent while the connection is down (dropped at the sender).
    pub(crate) fn drop_while_down(&mut self) {
        self.repl.dropped_while_down += 1;
    }

    /// Whether the path between the hosts is clear (no cut of it, no reset window).
    fn path_clear(&self) -> bool {
        !self.faults.reset_down() && !self.faults.host_host_cut_in_force(&self.opts)
    }

    /// Host `h` boots again (its new process has not ordered anything yet).
    pub(crate) fn host_restarted(&mut self, h: usize) {
        self.repl.unpowered[h] = false;
    }

    /// A dial that can get through now does: the connection comes up and both nodes are told.
    /// A dial to a host whose process is gone (crashed or exited, the host powered) is refused:
    /// its dialler is told once per dial, as the runtime's is. Returns whether the connection
    /// is up.
    pub(crate) fn try_connect(&mut self, now: Instant) -> bool {
        if self.repl.up {
            return true;
        }
        if !self.path_clear() || self.repl.closing.iter().any(|c| *c) {
            return false;
        }
        for h in 0..2 {
            let p = 1 - h;
            let refused = self.dead[p] && !self.repl.unpowered[p];
            if !self.dead[h] && self.repl.dialing[h] && refused && !self.repl.refusal_told[h] {
                self.repl.refusal_told[h] = true;
                self.ctl_inbox
                    .entry(Ctl::Host(h))
                    .or_default()
                    .push_back(CtlMsg::DialRefused);
                self.ring(Waiter::Host(h));
            }
        }
        for h in 0..2 {
            let p = 1 - h;
            if self.dead[h] || self.dead[p] || !self.repl.dialing[h] || !self.repl.accepting[p] {
                continue;
            }
            self.repl.up = true;
            self.repl.ends = self.incarnation;
            self.repl.dialing = [false; 2];
            self.ctl_inbox
                .entry(Ctl::Host(h))
                .or_default()
                .push_back(CtlMsg::Link(LinkState::Up));
            self.ring(Waiter::Host(h));
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
