//! `ColoRun`: one seeded run of two colo hosts, an arbiter and the world's clients, under the
//! seed's swarm options, producing the [`Trace`] the checkers judge.
//!
//! What runs today (before colo-core's `Node` is wired in): host A's PVM is the world's guest;
//! colo-core's [`PrimaryCheckpointer`] on A and [`SecondaryCheckpointer`] on B drive the two
//! [`SimVm`] platforms; every guest frame is held on A and released only on the checkpointer's
//! `ReleaseOutput` (checkpoint-covered release, the rule COLO falls back to on every
//! miscompare; the comparator's `Matched` path needs the Node). A held frame older than the
//! compare timeout triggers a `CompareTimeout` checkpoint. Hosts exchange heartbeats on the
//! replication link; a host that hears nothing for [`PEER_TIMEOUT`], or whose checkpoint is
//! stuck, takes over: the secondary finishes or discards the epoch in flight (its checkpointer
//! decides), asks the arbiter for the lease of the next term, and once granted its SVM becomes
//! the world's guest and releases solo while the lease lasts; the host the arbiter denies is
//! fenced. The seed's partitions, clogs and crashes (including at checkpoint phases) are applied
//! during the safety phase; then everything heals for the liveness phase.
//!
//! The Node step: replace `Side` (the two checkpointers and the takeover logic here) with one
//! `colo_core::node::Node` per host; route its `Output::Vm` to the host's `SimVm`,
//! `Output::ToPeer` to the replication link, `Output::ToClient` to `World::release_from_guest`
//! (tracing `Released` with the node's release reason), `Output::Arbiter` to [`ArbiterNode`],
//! and `Input::ClientFrame`/`GuestFrame` from the world (see docs/simulation.md).
//!
//! Invariant kept: the run is a pure function of (options, canary): one event loop, fixed order
//! at each instant (world, A, B, link, faults), no other source of time or randomness.

use std::collections::VecDeque;

use colo_core::checkpoint::{
    CheckpointConfig, CheckpointEvent, CheckpointOutput, PrimaryCheckpointer,
    SecondaryCheckpointer, VmCommand,
};
use colo_core::failover::LeaseReply;
use colo_core::ids::{CheckpointReason, Epoch, Term};
use colo_core::time::{Duration, Instant};
use colo_core::wire::Message;

use crate::client::History;
use crate::guest::Guest;
use crate::hash::Fnv64;
use crate::platform::arbiter::ArbiterNode;
use crate::platform::vm::{SimVm, VmTiming};
use crate::platform::{Canary, ReplFrame};
use crate::rng::SimRng;
use crate::swarm::{CrashPoint, Cut, CutMode, Host, SwarmOptions};
use crate::trace::{FrameId, Origin, Trace, TraceEvent};
use crate::world::{World, WorldSpec};

/// Silence on the replication link after which a host suspects its peer.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Heartbeat period on the replication link.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// Lease a host asks the arbiter for (renewed at a third of it).
pub const LEASE: Duration = Duration::from_secs(1);

/// What a host is doing.
///
/// ```text
/// Paired --peer silent / checkpoint stuck--> TakingOver   [checkpointer failover]
/// TakingOver --ReadyForTakeover--> AwaitingLease          [lease request, retried]
/// AwaitingLease --granted--> Solo ; --denied--> Fenced
/// any --crash--> Down (restart leaves it Down: re-protection needs the Node)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPhase {
    /// Replicating.
    Paired,
    /// The checkpointer is finishing or discarding the epoch in flight.
    TakingOver,
    /// Waiting for the arbiter.
    AwaitingLease,
    /// Running alone under the lease.
    Solo,
    /// Denied by the arbiter: never releases again.
    Fenced,
    /// Crashed.
    Down,
}

#[derive(Debug)]
enum Ckpt {
    Primary(PrimaryCheckpointer),
    Secondary(SecondaryCheckpointer),
}

#[derive(Debug)]
struct HostSide {
    phase: HostPhase,
    ckpt: Ckpt,
    vm: SimVm,
    last_heard: Instant,
    next_heartbeat: Instant,
    term: Term,
    lease_until: Option<Instant>,
    next_lease_request: Instant,
    /// Frames held for release: (id, epoch, bytes, held at).
    held: VecDeque<(FrameId, Epoch, Vec<u8>, Instant)>,
}

/// Summary counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Frames released.
    pub released: u64,
    /// Takeovers completed (a host went solo).
    pub failovers: u64,
    /// Crashes applied.
    pub crashes: u64,
    /// Replication frames dropped by cuts.
    pub repl_dropped: u64,
}

/// The end state of a run.
#[derive(Debug)]
pub struct RunOutput {
    /// Every event.
    pub trace: Trace,
    /// Each client's history, by index.
    pub histories: Vec<History>,
    /// Counters.
    pub stats: RunStats,
    /// Digest of the trace and the histories (determinism check).
    pub digest: u64,
}

/// One run.
#[derive(Debug)]
pub struct ColoRun {
    opts: SwarmOptions,
    canary: Option<Canary>,
    world: World,
    a: HostSide,
    b: HostSide,
    /// The SVM on host B (A's guest is `world.guest` until B takes over).
    svm: Guest,
    arbiter: ArbiterNode,
    link: VecDeque<(Instant, Host, ReplFrame)>,
    trace: Trace,
    stats: RunStats,
    next_frame: u64,
    crashes: Vec<(crate::swarm::HostCrash, bool)>,
    active: Host,
    faults_stopped: bool,
    /// Client-link cuts currently applied to the world's emulator.
    applied_cuts: Vec<usize>,
}

impl ColoRun {
    /// Builds the run of `opts` with an optional planted bug.
    pub fn new(opts: &SwarmOptions, canary: Option<Canary>) -> ColoRun {
        let spec = WorldSpec {
            link: opts.link,
            clients: opts.clients,
            connections: opts.connections,
            requests_per_connection: opts.requests_per_connection,
            client_start_at: Instant::ZERO,
            upstream: opts.upstream,
        };
        let mut world = World::new(opts.seed, &spec);
        world.hold_guest_output = true;
        let now = Instant::ZERO;
        // Initial sync: the SVM starts as an exact copy of the PVM (colo's SyncStart/SyncDone).
        let boot = world.guest.checkpoint();
        let root = SimRng::new(opts.seed);
        let svm = Guest::from_snapshot(&boot, root.fork("vm-b"));
        let config = CheckpointConfig {
            checkpoint_interval: opts.checkpoint_interval,
            ..CheckpointConfig::default()
        };
        let timing = VmTiming {
            pause: opts.vm_pause_latency,
            resume: opts.vm_resume_latency,
            bytes_per_sec: opts.replication_bytes_per_sec,
            ..VmTiming::default()
        };
        let side = |ckpt| HostSide {
            phase: HostPhase::Paired,
            ckpt,
            vm: SimVm::new(timing, canary),
            last_heard: now,
            next_heartbeat: now,
            term: Term(1),
            lease_until: None,
            next_lease_request: now,
            held: VecDeque::new(),
        };
        let primary = PrimaryCheckpointer::new(config, Epoch(0), now).expect("valid config");
        let secondary = SecondaryCheckpointer::new(config, Epoch(0), now).expect("valid config");
        let mut b = side(Ckpt::Secondary(secondary));
        b.vm.seed_applied(Epoch(0), boot);
        let mut trace = Trace::new();
        trace.push(TraceEvent::TermStarted {
            at: now,
            host: Host::A,
            term: Term(1),
            solo: false,
        });
        ColoRun {
            opts: opts.clone(),
            canary,
            world,
            a: side(Ckpt::Primary(primary)),
            b,
            svm,
            arbiter: ArbiterNode::new(LEASE, now),
            link: VecDeque::new(),
            trace,
            stats: RunStats::default(),
            next_frame: 0,
            crashes: opts.crashes.iter().map(|c| (*c, false)).collect(),
            active: Host::A,
            faults_stopped: false,
            applied_cuts: Vec::new(),
        }
    }

    /// Runs to the end of the liveness phase.
    pub fn run(mut self) -> RunOutput {
        let end = self.opts.ends();
        loop {
            let now = self.world.now;
            self.step(now);
            if now >= end {
                break;
            }
            let next = self.next_wake().unwrap_or(end).min(end).max(now);
            let target = if next <= now {
                now + Duration::from_micros(1)
            } else {
                next
            };
            self.world
                .run_until(target.min(end), |w| !w.guest_out.is_empty());
        }
        let histories: Vec<History> = self
            .world
            .clients
            .iter()
            .map(|c| c.history().clone())
            .collect();
        let digest = self.trace.run_digest(&histories);
        RunOutput {
            trace: self.trace,
            histories,
            stats: self.stats,
            digest,
        }
    }

    fn side(&mut self, host: Host) -> &mut HostSide {
        match host {
            Host::A => &mut self.a,
            Host::B => &mut self.b,
        }
    }

    fn next_wake(&mut self) -> Option<Instant> {
        let mut t: Vec<Option<Instant>> = vec![
            self.link.front().map(|(at, _, _)| *at),
            self.a.vm.poll_timeout(),
            self.b.vm.poll_timeout(),
        ];
        for s in [&self.a, &self.b] {
            if s.phase != HostPhase::Down {
                t.push(Some(s.next_heartbeat));
                t.push(Some(s.last_heard + PEER_TIMEOUT));
                t.push(match &s.ckpt {
                    Ckpt::Primary(p) => p.poll_timeout(),
                    Ckpt::Secondary(c) => c.poll_timeout(),
                });
                if matches!(s.phase, HostPhase::AwaitingLease | HostPhase::Solo) {
                    t.push(Some(s.next_lease_request));
                }
                if let Some((_, _, _, at)) = s.held.front() {
                    t.push(Some(*at + self.opts.compare_timeout));
                }
            }
        }
        for lf in &self.opts.link_faults {
            t.push(Some(lf.from));
            t.push(Some(lf.until));
        }
        for (c, done) in &self.crashes {
            if !done {
                t.push(Some(c.not_before));
                t.push(Some(c.not_before + c.down_for));
            }
        }
        t.push(Some(self.opts.liveness_starts()));
        let now = self.world.now;
        t.into_iter().flatten().filter(|x| *x > now).min()
    }

    /// Everything due at `now`, in a fixed order.
    fn step(&mut self, now: Instant) {
        self.apply_faults(now);
        self.collect_guest_output(now);
        for host in [Host::A, Host::B] {
            self.pump(now, host);
        }
        self.deliver_link(now);
        for host in [Host::A, Host::B] {
            self.pump(now, host);
        }
    }

    fn collect_guest_output(&mut self, now: Instant) {
        let active = self.active;
        while let Some(frame) = self.world.guest_out.pop_front() {
            let id = FrameId(self.next_frame);
            self.next_frame += 1;
            let side = self.side(active);
            if side.phase == HostPhase::Down {
                continue;
            }
            let epoch = match &side.ckpt {
                Ckpt::Primary(p) => p.last_done().next(),
                Ckpt::Secondary(s) => s.applied().next(),
            };
            side.held.push_back((id, epoch, frame, now));
            self.trace.push(TraceEvent::Held {
                at: now,
                host: active,
                frame: id,
                epoch,
            });
        }
    }

    fn release_upto(&mut self, now: Instant, host: Host, upto: Option<Epoch>, origin: Origin) {
        loop {
            let side = self.side(host);
            let term = side.term;
            let Some(front) = side.held.front() else {
                break;
            };
            if upto.is_some_and(|e| front.1 > e) {
                break;
            }
            let (frame, epoch, bytes, _) = side.held.pop_front().expect("front exists");
            let mut d = Fnv64::new();
            d.write(&bytes);
            self.trace.push(TraceEvent::Released {
                at: now,
                host,
                term,
                epoch,
                frame,
                digest: d.finish(),
                origin,
            });
            self.stats.released += 1;
            self.world.release_from_guest(bytes);
        }
    }

    fn send(&mut self, now: Instant, from: Host, frame: ReplFrame) {
        let to = match from {
            Host::A => Host::B,
            Host::B => Host::A,
        };
        let at = now + self.opts.link.delay;
        self.link.push_back((at, to, frame));
    }

    /// The cut on the replication link `from -> to` at `now`, if any.
    fn repl_cut(&self, now: Instant, from: Host) -> Option<(CutMode, Instant)> {
        if self.faults_stopped {
            return None;
        }
        self.opts
            .link_faults
            .iter()
            .find(|lf| {
                lf.cut == Cut::HostHost
                    && lf.from <= now
                    && now < lf.until
                    && (lf.mode != CutMode::OneWay || from == Host::A)
            })
            .map(|lf| (lf.mode, lf.until))
    }

    fn deliver_link(&mut self, now: Instant) {
        let mut keep = VecDeque::new();
        while let Some((at, to, frame)) = self.link.pop_front() {
            if at > now {
                keep.push_back((at, to, frame));
                continue;
            }
            let from = match to {
                Host::A => Host::B,
                Host::B => Host::A,
            };
            match self.repl_cut(now, from) {
                Some((CutMode::Clog, until)) => {
                    keep.push_back((until, to, frame));
                    continue;
                }
                Some(_) => {
                    self.stats.repl_dropped += 1;
                    continue;
                }
                None => {}
            }
            if self.side(to).phase == HostPhase::Down || self.side(from).phase == HostPhase::Down {
                continue;
            }
            self.receive(now, to, frame);
        }
        // Keep arrival order (a clogged frame waits behind nothing it did not wait behind).
        let mut v: Vec<_> = keep.into_iter().collect();
        v.sort_by_key(|(at, _, _)| *at);
        self.link = v.into();
    }

    fn receive(&mut self, now: Instant, to: Host, frame: ReplFrame) {
        let side = self.side(to);
        side.last_heard = now;
        if !matches!(side.phase, HostPhase::Paired)
            || matches!(frame.message, Message::Heartbeat { .. })
        {
            return;
        }
        match &mut side.ckpt {
            Ckpt::Primary(p) => p.handle_message(now, &frame.message),
            Ckpt::Secondary(s) => {
                let (message, bulk_len) = side.vm.handle_repl(frame);
                s.handle_message(now, &message, bulk_len);
            }
        }
    }

    /// Drains one host's checkpointer, VM and takeover logic until quiet.
    fn pump(&mut self, now: Instant, host: Host) {
        if self.side(host).phase == HostPhase::Down {
            return;
        }
        self.heartbeat_and_suspect(now, host);
        for _ in 0..10_000 {
            let mut busy = false;
            {
                let side = self.side(host);
                match &mut side.ckpt {
                    Ckpt::Primary(p) => {
                        if p.poll_timeout().is_some_and(|t| t <= now) {
                            p.handle_timeout(now);
                        }
                    }
                    Ckpt::Secondary(s) => {
                        if s.poll_timeout().is_some_and(|t| t <= now) {
                            s.handle_timeout(now);
                        }
                    }
                }
            }
            // Compare timeout: held output waits at most this long for a checkpoint.
            let ct = self.opts.compare_timeout;
            let side = self.side(host);
            if let (Ckpt::Primary(p), HostPhase::Paired) = (&mut side.ckpt, side.phase)
                && side.held.front().is_some_and(|f| f.3 + ct <= now)
                && matches!(p.phase(), colo_core::checkpoint::PrimaryPhase::Idle { .. })
            {
                p.handle_trigger(now, CheckpointReason::CompareTimeout);
            }
            let out = match &mut self.side(host).ckpt {
                Ckpt::Primary(p) => p.poll_output(),
                Ckpt::Secondary(s) => s.poll_output(),
            };
            if let Some(o) = out {
                busy = true;
                self.on_ckpt_output(now, host, o);
                if self.side(host).phase == HostPhase::Down {
                    return;
                }
            }
            let guest_is_world = self.active == host;
            let side = match host {
                Host::A => &mut self.a,
                Host::B => &mut self.b,
            };
            let guest = if guest_is_world {
                &mut self.world.guest
            } else {
                &mut self.svm
            };
            if let Some(done) = side.vm.poll_completion(now, guest) {
                busy = true;
                if done == colo_core::checkpoint::VmCompletion::Resumed && guest_is_world {
                    self.world.guest_paused = false;
                }
                match &mut side.ckpt {
                    Ckpt::Primary(p) => p.handle_vm_done(now, done),
                    Ckpt::Secondary(s) => s.handle_vm_done(now, done),
                }
            }
            let secondary = matches!(side.ckpt, Ckpt::Secondary(_));
            while let Some(e) = side.vm.poll_trace() {
                // The SVM's own pause is not a checkpoint's pause state.
                if !(secondary && matches!(e, TraceEvent::Paused { .. })) {
                    self.trace.push(e);
                }
            }
            let side = self.side(host);
            if let Some(f) = side.vm.poll_repl(now) {
                busy = true;
                self.send(now, host, f);
            }
            if !busy {
                break;
            }
        }
        self.lease_step(now, host);
    }

    fn heartbeat_and_suspect(&mut self, now: Instant, host: Host) {
        let side = self.side(host);
        if side.phase == HostPhase::Paired && side.next_heartbeat <= now {
            side.next_heartbeat = now + HEARTBEAT;
            let term = side.term;
            side.vm.send_control(
                now,
                Message::Heartbeat {
                    term,
                    seq: 0,
                    epoch: Epoch(0),
                },
            );
        }
        let side = self.side(host);
        if side.phase == HostPhase::Paired && side.last_heard + PEER_TIMEOUT <= now {
            self.start_takeover(now, host);
        }
    }

    fn start_takeover(&mut self, now: Instant, host: Host) {
        let side = self.side(host);
        side.phase = HostPhase::TakingOver;
        match &mut side.ckpt {
            Ckpt::Primary(p) => p.handle_failover(now),
            Ckpt::Secondary(s) => s.handle_failover(now),
        }
        self.crash_at_point(now, CrashPoint::OnFailover);
    }

    fn on_ckpt_output(&mut self, now: Instant, host: Host, o: CheckpointOutput) {
        match o {
            CheckpointOutput::Send(message) => {
                match &message {
                    Message::CheckpointReceived { epoch } => {
                        self.trace.push(TraceEvent::Received {
                            at: now,
                            epoch: *epoch,
                        });
                        self.crash_at_point(now, CrashPoint::OnReceived);
                    }
                    Message::CheckpointSent { epoch, .. }
                        if self.canary == Some(Canary::ReleaseBeforeReceived) =>
                    {
                        // Planted: release on *sent* instead of on received.
                        self.release_upto(now, host, Some(*epoch), Origin::Covered);
                    }
                    _ => {}
                }
                if self.side(host).phase != HostPhase::Down {
                    self.side(host).vm.send_control(now, message);
                }
            }
            CheckpointOutput::Vm(cmd) => {
                match &cmd {
                    VmCommand::Pause => {
                        if let Ckpt::Primary(p) = &self.side(host).ckpt {
                            let e = p.epoch();
                            self.side(host).vm.set_pause_epoch(e);
                        }
                        if self.active == host {
                            self.world.guest_paused = true;
                        }
                        self.crash_at_point(now, CrashPoint::OnPause);
                    }
                    VmCommand::SendPages { .. } => self.crash_at_point(now, CrashPoint::OnTransfer),
                    VmCommand::ApplyCheckpoint { .. } => {
                        self.crash_at_point(now, CrashPoint::OnApply)
                    }
                    _ => {}
                }
                if self.side(host).phase == HostPhase::Down {
                    return;
                }
                let guest_is_world = self.active == host;
                let side = match host {
                    Host::A => &mut self.a,
                    Host::B => &mut self.b,
                };
                let guest = if guest_is_world {
                    &mut self.world.guest
                } else {
                    &mut self.svm
                };
                side.vm.handle_command(now, cmd, guest);
            }
            CheckpointOutput::ReleaseOutput { epoch } => {
                if self.canary != Some(Canary::ReleaseBeforeReceived) {
                    self.release_upto(now, host, Some(epoch), Origin::Covered);
                }
            }
            CheckpointOutput::ResetDisk { epoch } => {
                // The guest's disk is inside its snapshot: the overlays are empty once applied.
                if let Ckpt::Secondary(s) = &mut self.side(host).ckpt {
                    s.handle_disk_reset(now, epoch);
                }
            }
            CheckpointOutput::ResetRewriter { .. } => {}
            CheckpointOutput::Event(e) => match e {
                CheckpointEvent::CheckpointDone { epoch, .. } => {
                    self.stats.checkpoints += 1;
                    self.trace
                        .push(TraceEvent::CheckpointDone { at: now, epoch });
                }
                CheckpointEvent::Stuck { .. } if self.side(host).phase == HostPhase::Paired => {
                    self.start_takeover(now, host);
                }
                CheckpointEvent::ReadyForTakeover { .. } => {
                    let side = self.side(host);
                    if side.phase == HostPhase::TakingOver {
                        side.phase = HostPhase::AwaitingLease;
                        side.term = side.term.next();
                        side.next_lease_request = now;
                        if self.canary == Some(Canary::ReleaseWithoutLease) {
                            // Planted: go solo without asking the arbiter.
                            self.go_solo(now, host);
                        }
                    }
                }
                _ => {}
            },
        }
    }

    fn lease_step(&mut self, now: Instant, host: Host) {
        let no_lease_canary = self.canary == Some(Canary::ReleaseWithoutLease);
        let side = self.side(host);
        let phase = side.phase;
        if !matches!(phase, HostPhase::AwaitingLease | HostPhase::Solo)
            || side.next_lease_request > now
            || (phase == HostPhase::Solo && no_lease_canary)
        {
            if phase == HostPhase::Solo {
                self.release_solo(now, host);
            }
            return;
        }
        side.next_lease_request = now + LEASE / 3;
        let term = side.term;
        let cut = !self.faults_stopped
            && self
                .opts
                .link_faults
                .iter()
                .any(|lf| lf.cut == Cut::HostArbiter(host) && lf.from <= now && now < lf.until);
        if !cut {
            let (reply, event) = self.arbiter.handle_request(now, host, term, LEASE);
            if let Some(e) = event {
                self.trace.push(e);
            }
            let side = self.side(host);
            match reply {
                LeaseReply::Granted { valid_for } => {
                    side.lease_until = Some(now + valid_for);
                    if side.phase == HostPhase::AwaitingLease {
                        self.go_solo(now, host);
                    }
                }
                _ => {
                    if side.phase == HostPhase::AwaitingLease {
                        side.phase = HostPhase::Fenced;
                        let dropped: Vec<FrameId> = side.held.drain(..).map(|f| f.0).collect();
                        for frame in dropped {
                            self.trace.push(TraceEvent::Superseded {
                                at: now,
                                host,
                                frame,
                                reason: "fenced by the arbiter",
                            });
                        }
                    }
                }
            }
        }
        if self.side(host).phase == HostPhase::Solo {
            self.release_solo(now, host);
        }
    }

    fn go_solo(&mut self, now: Instant, host: Host) {
        let side = self.side(host);
        side.phase = HostPhase::Solo;
        let term = side.term;
        self.stats.failovers += 1;
        self.trace.push(TraceEvent::TermStarted {
            at: now,
            host,
            term,
            solo: true,
        });
        if host != self.active {
            // The SVM becomes the world's guest (same MAC and IP: it claims the client link).
            std::mem::swap(&mut self.world.guest, &mut self.svm);
            self.world.guest_paused = !self.side(host).vm.is_running();
            self.world.guest_inbox.clear();
            self.world.guest_out.clear();
            let old = self.active;
            let dropped: Vec<FrameId> = self.side(old).held.drain(..).map(|f| f.0).collect();
            for frame in dropped {
                self.trace.push(TraceEvent::Superseded {
                    at: now,
                    host: old,
                    frame,
                    reason: "superseded by the survivor's state",
                });
            }
            self.active = host;
        }
        self.release_solo(now, host);
    }

    fn release_solo(&mut self, now: Instant, host: Host) {
        let side = self.side(host);
        let leased = side.lease_until.is_some_and(|u| u > now);
        if leased || self.canary == Some(Canary::ReleaseWithoutLease) {
            self.release_upto(now, host, None, Origin::Solo);
        }
    }

    /// The world (for tests).
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The world, mutably (tests set its `tap`).
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

mod faults;
#[cfg(test)]
mod tests;
