//! The seed's faults applied to a [`NodeRun`]: host-arbiter and host-host cuts are applied
//! where messages are sent (see `mod.rs`); here every crash of the seed, each host's restart
//! and the automatic re-protection that follows, the client-link cuts of the link owner and the
//! start of the liveness phase.
//!
//! Invariant kept: at any instant at least one host is alive *and holds the guest's state* (a
//! primary or solo node, or a paired secondary that applied a checkpoint, none of them deposed
//! or about to be: the arbiter has granted no newer term than its own, and the crashing host is
//! not taking over, since a lease request it already sent would fence the survivor).
//! A crash that would break this **waits** (stays pending, and fires at the first later instant
//! or phase where it is allowed); crashes still pending when the liveness phase starts are
//! dropped. Faults start only during the safety phase; restarts happen whenever they are due.
//!
//! Crash points (`swarm::CrashPoint`): `At` fires at its instant, `OnFailover` while some node is
//! taking over (so a crash lands inside a failover, including the taker's own), the checkpoint
//! points when some node's checkpoint enters that phase (`crash_at_point`, called from
//! `mod.rs`), and every point is also reached during re-protection (its first checkpoint).

use colo_core::ids::Role;
use colo_core::node::{Command, Input, LinkState, Node, NodeMode};
use colo_core::time::{Duration, Instant};

use super::{NodeRun, host, node_config};
use crate::guest::Guest;
use crate::platform::disk::LayeredDisk;
use crate::platform::vm::SimVm;
use crate::rng::SimRng;
use crate::swarm::{CrashPoint, Cut, CutMode, Host};
use crate::trace::TraceEvent;
use crate::world::Endpoint;

/// Where one of the seed's crashes stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CrashState {
    /// Not fired yet (its instant may have passed: it waits until allowed).
    Pending,
    /// Fired.
    Fired,
    /// Still pending when the faults stopped: never fired.
    Dropped,
}

fn index(h: Host) -> usize {
    if h == Host::A { 0 } else { 1 }
}

impl NodeRun {
    /// The seed's faults due at `now` (crashes, restarts, re-protection commands, link cuts,
    /// the start of the liveness phase); returns whether anything changed.
    pub(super) fn apply_faults(&mut self, now: Instant) -> bool {
        let mut changed = self.restart_due(now);
        changed |= self.reprotect_if_solo(now);
        if !self.faults_stopped && now >= self.opts.liveness_starts() {
            self.faults_stopped = true;
            for s in &mut self.crash_state {
                if *s == CrashState::Pending {
                    *s = CrashState::Dropped;
                }
            }
            self.world.net.heal_all();
            for c in 0..self.opts.clients {
                self.world
                    .net
                    .unclog(now, &Endpoint::Client(c), &Endpoint::Guest);
            }
            self.applied_cuts.clear();
            let delay = self.opts.link.delay;
            self.world
                .net
                .set_default_link(crate::netem::LinkConfig::with_delay(delay));
            self.obs.push(TraceEvent::FaultsStopped { at: now });
            return true;
        }
        if self.faults_stopped {
            return changed;
        }
        let taking_over =
            (0..2).any(|h| self.alive[h] && self.nodes[h].status(now).mode == NodeMode::TakingOver);
        for i in 0..self.opts.crashes.len() {
            let c = self.opts.crashes[i];
            let due = match c.point {
                CrashPoint::At => true,
                CrashPoint::OnFailover => taking_over,
                _ => false,
            };
            if due
                && self.crash_state[i] == CrashState::Pending
                && c.not_before <= now
                && self.crash_allowed(now, index(c.host))
            {
                self.crash_state[i] = CrashState::Fired;
                self.crash(now, index(c.host), Some(c.down_for));
                changed = true;
            }
        }
        for (i, lf) in self.opts.link_faults.clone().iter().enumerate() {
            let Cut::ClientsHost(hh) = lf.cut else {
                continue;
            };
            let on = lf.from <= now && now < lf.until && hh == host(self.client_target);
            let applied = self.applied_cuts.contains(&i);
            if on == applied {
                continue;
            }
            changed = true;
            for c in 0..self.opts.clients {
                let client = Endpoint::Client(c);
                match (on, lf.mode) {
                    (true, CutMode::Symmetric) => self.world.net.partition(client, Endpoint::Guest),
                    (true, CutMode::OneWay) => {
                        self.world.net.partition_one_way(client, Endpoint::Guest)
                    }
                    (true, CutMode::Clog) => self.world.net.clog(client, Endpoint::Guest),
                    (false, CutMode::Clog) => self.world.net.unclog(now, &client, &Endpoint::Guest),
                    (false, _) => self.world.net.heal(&client, &Endpoint::Guest),
                }
            }
            if on {
                self.applied_cuts.push(i);
            } else {
                self.applied_cuts.retain(|x| *x != i);
            }
        }
        changed
    }

    /// Whether host `p` could carry the guest on alone: alive, not fenced or stopped, not about
    /// to be fenced by a newer term, and either on the primary side (its VM is the guest) or a secondary that applied a
    /// checkpoint (a newcomer still syncing has no state of its own).
    fn holds_state(&self, now: Instant, p: usize) -> bool {
        if !self.alive[p] {
            return false;
        }
        let st = self.nodes[p].status(now);
        // A term granted by the arbiter to the other host (taking over right now), newer than
        // `p`'s or the one `p` itself claims (taking over or solo), would depose `p`: then `p`
        // cannot carry on alone either. A paired `p` shares its term with the holder (its
        // primary) and takes over with the next one.
        if let colo_core::failover::ArbiterPhase::Leased { term, holder, .. } = self.arbiter.phase()
            && (term > st.term
                || (term == st.term && holder != self.node_id(p) && st.mode != NodeMode::Paired))
        {
            return false;
        }
        match st.mode {
            NodeMode::Deposed | NodeMode::Stopped | NodeMode::Idle => false,
            NodeMode::Connecting | NodeMode::Syncing => false,
            _ => st.role == Role::Primary || self.vms[p].applied().is_some(),
        }
    }

    /// The node id of host `h`'s current incarnation (each restart boots a new node).
    pub(super) fn node_id(&self, h: usize) -> colo_core::ids::NodeId {
        colo_core::ids::NodeId(h as u64 + 1 + 2 * u64::from(self.incarnation[h]))
    }

    /// A crash of `h` is allowed when `h` is alive and not taking over (its lease request may
    /// be at the arbiter already: the term it asked for would fence its peer, leaving nobody),
    /// and its peer holds the guest's state.
    fn crash_allowed(&self, now: Instant, h: usize) -> bool {
        self.alive[h]
            && self.nodes[h].status(now).mode != NodeMode::TakingOver
            && self.holds_state(now, 1 - h)
    }

    /// The checkpoint of some host just entered `point`: every pending crash waiting for that
    /// point whose earliest instant has passed fires, if allowed.
    pub(super) fn crash_at_point(&mut self, now: Instant, point: CrashPoint) {
        if self.faults_stopped {
            return;
        }
        for i in 0..self.opts.crashes.len() {
            let c = self.opts.crashes[i];
            if c.point == point
                && self.crash_state[i] == CrashState::Pending
                && c.not_before <= now
                && self.crash_allowed(now, index(c.host))
            {
                self.crash_state[i] = CrashState::Fired;
                self.crash(now, index(c.host), Some(c.down_for));
            }
        }
    }

    /// Host `h` loses everything it held in memory: its node, VM, pending VM work and the
    /// messages addressed to it (a dead host's sockets are gone). It restarts `restart_after`
    /// later (the seed's crashes), or never (`None`).
    pub(super) fn crash(&mut self, now: Instant, h: usize, restart_after: Option<Duration>) {
        if !self.alive[h] {
            return;
        }
        self.alive[h] = false;
        self.vms[h].crash();
        self.queue.retain(|_, a| a.target() != Some(h));
        self.restart_at[h] = restart_after.map(|d| now + d);
        self.obs.crash(now, host(h));
        if self.world_host == h {
            self.world.guest_paused = true;
            self.world.guest_inbox.clear();
        } else {
            self.svm_pending.clear();
        }
    }

    /// Restarts every host whose downtime is over: a fresh machine boots an empty secondary
    /// (a new node with a new id, an empty VM, a fresh disk and guest) that knocks with Hello.
    fn restart_due(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for h in 0..2 {
            if self.alive[h] || self.restart_at[h].is_none_or(|t| t > now) {
                continue;
            }
            self.restart_at[h] = None;
            self.incarnation[h] += 1;
            let inc = self.incarnation[h];
            let mut cfg = node_config(h, &self.opts, self.canary);
            cfg.node_id = self.node_id(h);
            self.nodes[h] = Node::new(cfg, Role::Secondary, now).expect("valid config");
            self.vms[h] = SimVm::new_paused(
                self.timing,
                self.canary.filter(|c| c.node_canary().is_none()),
            );
            let rng = SimRng::new(self.opts.seed);
            self.disks[h] = LayeredDisk::new(
                super::DISK_BYTES,
                self.opts.disk_write_error_ppm,
                rng.fork(&format!("disk-{h}-restart-{inc}")),
            );
            let guest =
                Guest::from_snapshot(&self.boot, rng.fork(&format!("vm-{h}-restart-{inc}")));
            if self.world_host == h {
                self.world.guest = guest;
                self.world.guest_paused = true;
                self.world.guest_inbox.clear();
                self.world.guest_out.clear();
            } else {
                self.svm = guest;
                self.svm_pending.clear();
            }
            self.link_fifo[h] = now;
            self.alive[h] = true;
            self.reprotect_asked[1 - h] = false;
            self.obs.push(TraceEvent::Restart {
                at: now,
                host: host(h),
            });
            self.input(now, h, Input::Command(Command::Start));
            self.input(now, h, Input::PeerLink(LinkState::Up));
            changed = true;
        }
        changed
    }

    /// A solo survivor whose peer is back (restarted, knocking or refused) is told to
    /// re-protect, once per solo period, and a refused newcomer to start again, as the real
    /// runtime's operator or automation would.
    fn reprotect_if_solo(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for p in 0..2 {
            let h = 1 - p;
            if !self.alive[p] || !self.alive[h] || self.reprotect_asked[p] {
                continue;
            }
            let peer = self.nodes[h].status(now).mode;
            if self.nodes[p].status(now).mode == NodeMode::Solo
                && matches!(peer, NodeMode::Connecting | NodeMode::Idle)
            {
                self.reprotect_asked[p] = true;
                self.input(now, p, Input::Command(Command::Reprotect));
                if peer == NodeMode::Idle {
                    // It knocked while the survivor was still taking over, as a secondary
                    // side, and was refused (`HelloReject` stops the knocking): start it again.
                    self.input(now, h, Input::Command(Command::Start));
                }
                changed = true;
            }
        }
        changed
    }
}
