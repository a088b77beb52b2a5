//! The seed's faults on the fabric, for both executors: the controller's step (link cuts on
//! the two emulators, the replication connection's resets (its TCP model is [`super::link`]),
//! the VM command failures it arms, the liveness phase, which crashed hosts to kill and which to
//! restart after their downtime: the executor does the killing, madsim's `Handle::kill`/`restart`
//! or the plain loop dropping and booting the `SimHost`), the supervisor (a host whose node
//! stopped or was deposed ends its process and is started again after the seed's `restart_delay`, as a
//! crashed one is after its downtime), and the crash and VM failure rules the hosts consult
//! synchronously through [`CrashHook`](crate::host::CrashHook) (so a crash at a checkpoint phase
//! happens before the host executes the command, and a failure that would take the node out
//! fires only when the peer can carry the guest on).
//!
//! A cut of the replication link (`host-a<->host-b`, any mode) holds its messages (a clog: TCP
//! retransmits them once the path is back), in the cut direction(s); one that lasts longer than
//! the runtime's peer write timeout breaks the connection then. Cuts of the client LAN drop
//! frames (`Netem` partitions), and so do cuts of a host's link to the arbiter (datagrams).
//!
//! Invariant kept: at any instant at least one host is alive
//! and holds the guest's state; a crash or a VM failure that would break this waits, and
//! crashes still pending when the liveness phase starts are dropped (as are unconsumed VM
//! failures). Messages in flight to a crashed host die with it
//! (a payload is tagged with its receiver's incarnation).

use colo_core::checkpoint::VmCommandKind;
use colo_core::failover::ArbiterPhase;
use colo_core::ids::{NodeId, Role};
use colo_core::node::{Command, LinkState, NodeMode};
use colo_core::time::Instant;

use super::{Ctl, Shared, Waiter};
use crate::host::host;
use crate::netem::LinkConfig;
use crate::swarm::{CrashPoint, Cut, CutMode, Host, HostCrash, SwarmOptions};
use crate::trace::TraceEvent;
use crate::world::Endpoint;

/// Where one of the seed's crashes stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashState {
    Pending,
    Fired,
    Dropped,
}

/// The controller's bookkeeping, kept in the shared state.
#[derive(Debug)]
pub(super) struct FaultState {
    crash_state: Vec<CrashState>,
    restart_at: [Option<Instant>; 2],
    reprotect_asked: [bool; 2],
    faults_stopped: bool,
    /// Link faults applied right now (by index in the seed's list).
    applied: Vec<usize>,
    /// The replication link's connection is reset and not yet back (a `LinkReset` window).
    reset_down: bool,
    /// The client link moved: client cuts are re-evaluated.
    pub(super) link_moved: bool,
    /// Hosts to kill (madsim) at once.
    to_kill: Vec<usize>,
    /// The seed's VM failures already armed (by index).
    vm_failures_armed: usize,
    /// The VM command failure armed on each host and not yet consumed (a later one of the
    /// same host replaces it).
    pub(super) vm_armed: [Option<VmCommandKind>; 2],
}

impl FaultState {
    pub(super) fn new(opts: &SwarmOptions) -> FaultState {
        FaultState {
            crash_state: vec![CrashState::Pending; opts.crashes.len()],
            restart_at: [None; 2],
            reprotect_asked: [false; 2],
            faults_stopped: false,
            applied: Vec::new(),
            reset_down: false,
            link_moved: false,
            to_kill: Vec::new(),
            vm_failures_armed: 0,
            vm_armed: [None; 2],
        }
    }

    /// Whether a `LinkReset` window is in force.
    pub(super) fn reset_down(&self) -> bool {
        self.reset_down
    }

    /// Whether a cut of the replication link (any mode) is in force.
    pub(super) fn host_host_cut_in_force(&self, opts: &SwarmOptions) -> bool {
        self.applied
            .iter()
            .any(|i| opts.link_faults[*i].cut == Cut::HostHost)
    }
}

fn index(h: Host) -> usize {
    if h == Host::A { 0 } else { 1 }
}

impl Shared {
    fn node_id(&self, h: usize) -> NodeId {
        NodeId(h as u64 + 1 + 2 * u64::from(self.incarnation[h]))
    }

    /// Whether host `p` could carry the guest on alone: alive, not deposed, stopped or still
    /// syncing, primary-side or a secondary that applied a checkpoint, and not about to be
    /// fenced (the arbiter granted no newer term than `p`'s, nor `p`'s own claimed term to the
    /// other host).
    fn holds_state(&self, p: usize) -> bool {
        let Some(v) = self.views[p].filter(|_| !self.dead[p]) else {
            return false;
        };
        let st = v.status;
        if let ArbiterPhase::Leased { term, holder, .. } = self.arbiter_phase
            && (term > st.term
                || (term == st.term && holder != self.node_id(p) && st.mode != NodeMode::Paired))
        {
            return false;
        }
        match st.mode {
            NodeMode::Deposed | NodeMode::Stopped | NodeMode::Idle => false,
            NodeMode::Connecting | NodeMode::Syncing => false,
            _ => st.role == Role::Primary || v.has_applied,
        }
    }

    /// A crash of `h` is allowed when `h` is alive and not taking over (its lease request may
    /// be at the arbiter already: the term it asked for would fence its peer, leaving nobody),
    /// and its peer holds the guest's state.
    fn crash_allowed(&self, h: usize) -> bool {
        !self.dead[h]
            && self.views[h].is_some_and(|v| v.status.mode != NodeMode::TakingOver)
            && self.holds_state(1 - h)
    }

    /// Host `h` crashes now (the seed's crash `i`): it executes nothing more, its held frames
    /// end, what was on its way to it is lost; the executor kills it and the controller
    /// restarts it the crash's `down_for` later.
    fn crash_host(&mut self, now: Instant, i: usize, h: usize) {
        let HostCrash {
            down_for,
            power_loss,
            ..
        } = self.opts.crashes[i];
        self.process_gone(now, h, power_loss);
        self.obs.crash(now, host(h));
        if power_loss {
            self.obs.push(TraceEvent::PowerLoss {
                at: now,
                host: host(h),
            });
        }
        self.restart_later(now, h, down_for);
    }

    /// The supervisor (systemd's `Restart=`, or an operator): a live host whose node halted
    /// for good (stopped: it left the pair because its own VM failed, the goodbye already on
    /// its way; or deposed: the peer holds a newer term) ends its process, and is started
    /// again `restart_delay` later as a fresh secondary that joins as a newcomer, the way a
    /// crashed host restarts. Its held frames were superseded at the halt.
    pub(super) fn supervise(&mut self, now: Instant, h: usize) {
        if self.dead[h]
            || !self.views[h]
                .is_some_and(|v| matches!(v.status.mode, NodeMode::Stopped | NodeMode::Deposed))
        {
            return;
        }
        // A process that exits: its kernel closes what connection is left (not a power loss).
        self.process_gone(now, h, false);
        self.obs.push(TraceEvent::Exited {
            at: now,
            host: host(h),
        });
        self.restart_later(now, h, self.opts.restart_delay);
    }

    /// Host `h`'s process is gone (crash, power loss or exit): it executes nothing more, and
    /// its end of the replication connection closes (or, on a power loss, goes silent).
    fn process_gone(&mut self, now: Instant, h: usize, power_loss: bool) {
        self.dead[h] = true;
        self.views[h] = None;
        self.connection_closed_by_crash(now, h, power_loss);
    }

    /// What was on its way to the gone host `h` is lost; the executor kills it and the
    /// controller boots it again `down_for` later.
    fn restart_later(&mut self, now: Instant, h: usize, down_for: colo_core::time::Duration) {
        self.ctl_inbox.remove(&Ctl::Host(h));
        if self.owner == h {
            self.lan_inbox.remove(&Endpoint::Guest);
        }
        self.faults.restart_at[h] = Some(now + down_for);
        self.faults.to_kill.push(h);
        self.ring(Waiter::Controller);
    }

    /// The VM failure rule, the crash rule's counterpart: a failure after which the node
    /// leaves the pair and stops ([`crate::host::ENDING_VM_FAILURES`]) fires only while host
    /// `h` is `paired` with a peer that holds the guest's state (which then carries on alone);
    /// otherwise it waits for the host's next such command. So no VM failure, alone or on top
    /// of a crash or of the other VM's failure, leaves no host with the guest.
    pub(super) fn ending_vm_failure_allowed(&self, h: usize, paired: bool) -> bool {
        paired && self.holds_state(1 - h)
    }

    /// Some host's checkpoint entered `point`: pending crashes waiting for it fire if allowed.
    pub(super) fn crash_at_point(&mut self, now: Instant, point: CrashPoint) {
        if self.faults.faults_stopped {
            return;
        }
        for i in 0..self.opts.crashes.len() {
            let c = self.opts.crashes[i];
            if c.point == point
                && self.faults.crash_state[i] == CrashState::Pending
                && c.not_before <= now
                && self.crash_allowed(index(c.host))
            {
                self.faults.crash_state[i] = CrashState::Fired;
                self.crash_host(now, i, index(c.host));
            }
        }
    }

    /// `At` crashes due, and `OnFailover` ones while some node takes over.
    pub(super) fn instant_crashes(&mut self, now: Instant) {
        if self.faults.faults_stopped {
            return;
        }
        let taking_over = (0..2).any(|h| {
            !self.dead[h] && self.views[h].is_some_and(|v| v.status.mode == NodeMode::TakingOver)
        });
        for i in 0..self.opts.crashes.len() {
            let c = self.opts.crashes[i];
            let due = match c.point {
                CrashPoint::At => true,
                CrashPoint::OnFailover => taking_over,
                _ => false,
            };
            if due
                && self.faults.crash_state[i] == CrashState::Pending
                && c.not_before <= now
                && self.crash_allowed(index(c.host))
            {
                self.faults.crash_state[i] = CrashState::Fired;
                self.crash_host(now, i, index(c.host));
            }
        }
    }

    /// A solo survivor whose peer is back is told to re-protect (and a refused newcomer to
    /// start again), once per solo period.
    pub(super) fn reprotect_if_solo(&mut self) {
        for p in 0..2 {
            let h = 1 - p;
            if self.dead[p] || self.dead[h] || self.faults.reprotect_asked[p] {
                continue;
            }
            let (Some(vp), Some(vh)) = (self.views[p], self.views[h]) else {
                continue;
            };
            let peer = vh.status.mode;
            if vp.status.mode == NodeMode::Solo
                && matches!(peer, NodeMode::Connecting | NodeMode::Idle)
            {
                self.faults.reprotect_asked[p] = true;
                self.commands[p].push_back(Command::Reprotect);
                self.ring(Waiter::Host(p));
                if peer == NodeMode::Idle {
                    self.commands[h].push_back(Command::Start);
                    self.ring(Waiter::Host(h));
                }
            }
        }
    }

    /// Link faults, the liveness phase, due crashes; returns the hosts to restart now.
    pub(super) fn apply_faults(&mut self, now: Instant) -> Vec<usize> {
        let restarts: Vec<usize> = (0..2)
            .filter(|h| self.faults.restart_at[*h].is_some_and(|t| t <= now))
            .collect();
        for h in &restarts {
            self.faults.restart_at[*h] = None;
        }
        if !self.faults.faults_stopped && now >= self.opts.liveness_starts() {
            self.faults.faults_stopped = true;
            for s in &mut self.faults.crash_state {
                if *s == CrashState::Pending {
                    *s = CrashState::Dropped;
                }
            }
            self.lan_net.heal_all();
            self.ctl_net.heal_all();
            for c in 0..self.opts.clients {
                let client = Endpoint::Client(c);
                self.lan_net.unclog(now, &client, &Endpoint::Guest);
            }
            for (a, b) in ctl_pairs() {
                self.ctl_net.unclog(now, &a, &b);
            }
            self.faults.applied.clear();
            self.faults.reset_down = false;
            self.faults.vm_armed = [None; 2];
            self.try_connect(now);
            let delay = self.opts.link.delay;
            self.lan_net.set_default_link(LinkConfig::with_delay(delay));
            self.obs.push(TraceEvent::FaultsStopped { at: now });
        }
        if self.faults.faults_stopped {
            return restarts;
        }
        self.instant_crashes(now);
        for (i, lf) in self.opts.link_faults.clone().iter().enumerate() {
            let on = lf.from <= now
                && now < lf.until
                && match lf.cut {
                    Cut::ClientsHost(h) => index(h) == self.owner,
                    _ => true,
                };
            let applied = self.faults.applied.contains(&i);
            if on == applied {
                continue;
            }
            self.cut(now, lf.cut, lf.mode, on);
            if on {
                self.faults.applied.push(i);
            } else {
                self.faults.applied.retain(|x| *x != i);
                if lf.cut == Cut::HostHost {
                    // Another cut of the replication link still in force keeps its clog.
                    for j in self.faults.applied.clone() {
                        let other = self.opts.link_faults[j];
                        if other.cut == Cut::HostHost {
                            self.cut(now, other.cut, other.mode, true);
                        }
                    }
                }
            }
        }
        // A cut of the replication link that outlasts the runtime's write timeout breaks the
        // connection.
        let reset_after = self.reset_after();
        let long_cut = self.faults.applied.iter().any(|i| {
            let lf = self.opts.link_faults[*i];
            lf.cut == Cut::HostHost && now >= lf.from + reset_after
        });
        let reset_down = self
            .opts
            .link_resets
            .iter()
            .any(|r| r.at <= now && now < r.at + r.down_for);
        if reset_down && !self.faults.reset_down {
            self.faults.reset_down = true;
            self.connection_down(now, LinkState::PeerClosed);
        }
        self.faults.reset_down = reset_down;
        if long_cut {
            self.connection_down(now, LinkState::Down);
        }
        self.try_connect(now);
        self.arm_vm_failures(now);
        self.faults.link_moved = false;
        restarts
    }

    /// Arms the seed's VM failures due by `now` on their hosts.
    fn arm_vm_failures(&mut self, now: Instant) {
        while let Some(v) = self.opts.vm_failures.get(self.faults.vm_failures_armed)
            && v.at <= now
        {
            let (h, command) = (index(v.host), v.command);
            self.faults.vm_failures_armed += 1;
            self.faults.vm_armed[h] = Some(command);
            self.ring(Waiter::Host(h));
        }
    }

    /// Applies (`on`) or lifts one cut.
    fn cut(&mut self, now: Instant, cut: Cut, mode: CutMode, on: bool) {
        let (a, b) = match cut {
            Cut::HostHost => {
                // TCP: the path holds what is sent (delay only), in the cut direction(s).
                let (a, b) = (Ctl::Host(0), Ctl::Host(1));
                let net = &mut self.ctl_net;
                if on {
                    net.clog(a, b);
                    if mode != CutMode::OneWay {
                        net.clog(b, a);
                    }
                } else {
                    net.unclog(now, &a, &b);
                    net.unclog(now, &b, &a);
                }
                return;
            }
            Cut::HostArbiter(h) => (Ctl::Host(index(h)), Ctl::Arbiter),
            Cut::ClientsHost(_) => {
                for c in 0..self.opts.clients {
                    let client = Endpoint::Client(c);
                    let net = &mut self.lan_net;
                    match (on, mode) {
                        (true, CutMode::Symmetric) => net.partition(client, Endpoint::Guest),
                        (true, CutMode::OneWay) => net.partition_one_way(client, Endpoint::Guest),
                        (true, CutMode::Clog) => net.clog(client, Endpoint::Guest),
                        (false, CutMode::Clog) => net.unclog(now, &client, &Endpoint::Guest),
                        (false, _) => net.heal(&client, &Endpoint::Guest),
                    }
                }
                return;
            }
        };
        let net = &mut self.ctl_net;
        match (on, mode) {
            (true, CutMode::Symmetric) => net.partition(a, b),
            (true, CutMode::OneWay) => net.partition_one_way(a, b),
            (true, CutMode::Clog) => {
                net.clog(a, b);
                net.clog(b, a);
            }
            (false, CutMode::Clog) => {
                net.unclog(now, &a, &b);
                net.unclog(now, &b, &a);
            }
            (false, _) => net.heal(&a, &b),
        }
    }

    /// When the controller must look again.
    pub(super) fn next_fault(&self, now: Instant) -> Option<Instant> {
        let mut t: Vec<Option<Instant>> = self.faults.restart_at.to_vec();
        if !self.faults.faults_stopped {
            t.push(Some(self.opts.liveness_starts()));
            for (c, s) in self.opts.crashes.iter().zip(&self.faults.crash_state) {
                if *s == CrashState::Pending {
                    t.push(Some(c.not_before));
                }
            }
            let reset_after = self.reset_after();
            for lf in &self.opts.link_faults {
                t.push(Some(lf.from));
                t.push(Some(lf.until));
                if lf.cut == Cut::HostHost {
                    t.push(Some(lf.from + reset_after));
                }
            }
            if let Some(v) = self.opts.vm_failures.get(self.faults.vm_failures_armed) {
                t.push(Some(v.at));
            }
            for r in &self.opts.link_resets {
                t.push(Some(r.at));
                t.push(Some(r.at + r.down_for));
            }
        }
        t.into_iter().flatten().filter(|x| *x > now).min()
    }

    /// The controller's step at `now`: applies the faults due and asks for re-protection;
    /// returns the hosts to kill now, the hosts to boot again now (already counted as a new
    /// incarnation, traced as `Restart`), and when to look again.
    pub(crate) fn step_controller(
        &mut self,
        now: Instant,
    ) -> (Vec<usize>, Vec<usize>, Option<Instant>) {
        self.deliver(now);
        // A host crashed outside its own step: nothing more of it leaves, its stream ends.
        self.connection_finish_close(now);
        let restarts = self.apply_faults(now);
        self.reprotect_if_solo();
        let kills: Vec<usize> = self.faults.to_kill.drain(..).collect();
        for h in &restarts {
            self.incarnation[*h] += 1;
            self.host_restarted(*h);
            self.faults.reprotect_asked[1 - *h] = false;
            self.ctl_inbox.remove(&Ctl::Host(*h));
            self.obs.push(TraceEvent::Restart {
                at: now,
                host: host(*h),
            });
        }
        (kills, restarts, self.next_fault(now))
    }
}

fn ctl_pairs() -> [(Ctl, Ctl); 6] {
    let (a, b, r) = (Ctl::Host(0), Ctl::Host(1), Ctl::Arbiter);
    [(a, b), (b, a), (a, r), (r, a), (b, r), (r, b)]
}
