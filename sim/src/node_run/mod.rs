//! `NodeRun`: the simulated world driven by two `colo_core::node::Node`s — the same machine
//! composition the real runtime runs (comparator, rewriter, checkpointers, heartbeat, failover
//! with lease) — on top of the platform models (`SimVm`, the arbiter) and the world's guests.
//!
//! Host 0 starts primary (its guest is the world's guest, whose client frames the world hands to
//! the node instead of the guest), host 1 secondary (its SVM is a second `Guest` stepped here,
//! fed the primary's mirrored client frames). Every guest frame goes to its node
//! (`Input::GuestFrame`); the node decides what reaches the clients (`Output::ToClient`). The
//! trace records held and released frames with their origin (matched against a secondary frame
//! of the same digest, covered by a received checkpoint, or solo), checkpoint phases (from the
//! `SimVm`s), leases and terms, so the checkers of [`crate::check`] judge the Node itself.
//!
//! Invariant kept: one event queue ordered by (instant, sequence), so a run is a pure function
//! of (options, seed). Scope today: steady state, network impairments and one crash of the
//! primary (`crash_primary_at`); partitions, crashes at checkpoint phases and re-protection go
//! through the same paths and are the next step (see docs/simulation.md).

use std::collections::{BTreeMap, VecDeque};

use colo_core::checkpoint::VmCommand;
use colo_core::failover::{Arbiter, LeaseReply, LeaseRequest};
use colo_core::ids::{ClusterId, Epoch, NodeId, Role, Term};
use colo_core::node::{
    Command, Event, Input, LinkState, Node, NodeConfig, NodeMode, OutBulk, Output, PeerBulk,
    SyncCommand,
};
use colo_core::rewrite::Phase as RewritePhase;
use colo_core::time::{Duration, Instant};
use colo_core::wire::{Message, PAGE_SIZE};

use crate::client::History;
use crate::guest::Guest;
use crate::platform::disk::LayeredDisk;
use crate::platform::vm::{SimVm, VmTiming};
use crate::platform::{Canary, ReplFrame};
use crate::rng::SimRng;
use crate::swarm::{CrashPoint, Cut, CutMode, Host, SwarmOptions};
use crate::trace::{FrameId, Trace, TraceEvent};
use crate::world::{World, WorldSpec};
use origin::Releases;
use stream::{digest, loose_key};

#[derive(Debug)]
enum Action {
    Input(usize, Input),
    Repl(usize, ReplFrame),
    Arbiter(usize, LeaseRequest),
}

/// The end of a Node-driven run.
#[derive(Debug)]
pub struct NodeRunOutput {
    /// Every event.
    pub trace: Trace,
    /// Client histories.
    pub histories: Vec<History>,
    /// Frames released to clients.
    pub released: u64,
    /// Releases matched against the secondary (the comparator path).
    pub matched: u64,
    /// Checkpoints the primary completed.
    pub checkpoints: u64,
    /// Digest of trace and histories.
    pub digest: u64,
}

fn host(h: usize) -> Host {
    if h == 0 { Host::A } else { Host::B }
}

/// One run of the world under two Nodes.
#[derive(Debug)]
pub struct NodeRun {
    end: Instant,
    world: World,
    nodes: Vec<Node>,
    vms: Vec<SimVm>,
    disks: Vec<LayeredDisk>,
    alive: [bool; 2],
    /// The guest of the host that is not `world_host`.
    svm: Guest,
    /// Frames for a paused SVM, delivered when it resumes.
    svm_pending: VecDeque<Vec<u8>>,
    world_host: usize,
    queue: BTreeMap<(Instant, u64), Action>,
    seq: u64,
    link_fifo: [Instant; 2],
    peer_delay: Duration,
    arbiter: Arbiter,
    client_target: usize,
    trace: Trace,
    /// Frames handed to a node that may release them: id -> (host, digest, loose key, epoch).
    held: BTreeMap<FrameId, (usize, u64, u64, Epoch)>,
    /// What was released and what the secondary emitted: classifies each release.
    releases: Releases,
    next_frame: u64,
    crash_primary_at: Option<Instant>,
    opts: SwarmOptions,
    crash_done: bool,
    failed_over: bool,
    faults_stopped: bool,
    applied_cuts: Vec<usize>,
    released: u64,
    checkpoints: u64,
}

/// The node configuration the simulation uses for host `h`, with `canary` planted in the node
/// if it is one of the Node's ([`Canary::node_canary`]).
pub fn node_config(h: usize, opts: &SwarmOptions, canary: Option<Canary>) -> NodeConfig {
    let mut c = NodeConfig::new(NodeId(h as u64 + 1), ClusterId(7));
    c.guest_memory_bytes = 4096 * PAGE_SIZE;
    c.disk.disk_size = 1 << 20;
    c.disk.block_size = 4096;
    c.checkpoint.checkpoint_interval = opts.checkpoint_interval;
    c.compare.compare_timeout = opts.compare_timeout;
    c.canary = canary.and_then(Canary::node_canary);
    c
}

impl NodeRun {
    /// Builds the run; `crash_primary_at` kills host 0 at that instant; `canary` plants a
    /// known bug: in both Nodes ([`node_config`]) or, if the Node cannot plant it
    /// (`apply-partial-epoch`), in both VMs.
    pub fn new(
        opts: &SwarmOptions,
        crash_primary_at: Option<Instant>,
        canary: Option<Canary>,
    ) -> NodeRun {
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
        world.intercept_guest_input = true;
        world.guest_paused = true;
        let now = Instant::ZERO;
        let boot = world.guest.checkpoint();
        let svm = Guest::from_snapshot(&boot, SimRng::new(opts.seed).fork("vm-b"));
        let timing = VmTiming {
            pause: opts.vm_pause_latency,
            resume: opts.vm_resume_latency,
            bytes_per_sec: opts.replication_bytes_per_sec,
            ..VmTiming::default()
        };
        // The canaries the Node cannot plant go to the VM platform.
        let vm_canary = canary.filter(|c| c.node_canary().is_none());
        let nodes = vec![
            Node::new(node_config(0, opts, canary), Role::Primary, now).expect("valid config"),
            Node::new(node_config(1, opts, canary), Role::Secondary, now).expect("valid config"),
        ];
        let mut trace = Trace::new();
        trace.push(TraceEvent::TermStarted {
            at: now,
            host: Host::A,
            term: Term(1),
            solo: false,
        });
        let mut run = NodeRun {
            end: opts.ends(),
            world,
            nodes,
            vms: vec![
                SimVm::new_paused(timing, vm_canary),
                SimVm::new_paused(timing, vm_canary),
            ],
            disks: vec![
                LayeredDisk::new(1 << 20, 0, SimRng::new(opts.seed).fork("disk-a")),
                LayeredDisk::new(1 << 20, 0, SimRng::new(opts.seed).fork("disk-b")),
            ],
            alive: [true; 2],
            svm,
            svm_pending: VecDeque::new(),
            world_host: 0,
            queue: BTreeMap::new(),
            seq: 0,
            link_fifo: [now; 2],
            peer_delay: opts.link.delay,
            arbiter: Arbiter::new(Duration::from_secs(10), now),
            client_target: 0,
            trace,
            held: BTreeMap::new(),
            releases: Releases::default(),
            next_frame: 0,
            crash_primary_at,
            opts: opts.clone(),
            crash_done: false,
            failed_over: false,
            faults_stopped: false,
            applied_cuts: Vec::new(),
            released: 0,
            checkpoints: 0,
        };
        for h in 0..2 {
            run.input(now, h, Input::Command(Command::Start));
            run.input(now, h, Input::PeerLink(LinkState::Up));
        }
        run
    }

    fn schedule(&mut self, at: Instant, a: Action) {
        self.seq += 1;
        self.queue.insert((at, self.seq), a);
    }

    fn input(&mut self, now: Instant, h: usize, input: Input) {
        if !self.alive[h] {
            return;
        }
        self.nodes[h].handle(now, input);
        while let Some(o) = self.nodes[h].poll_output() {
            self.execute(now, h, o);
        }
    }

    fn send_peer(&mut self, now: Instant, from: usize, a: impl FnOnce(usize) -> Action) {
        let to = 1 - from;
        if !self.alive[to] {
            return;
        }
        let mut at = (now + self.peer_delay).max(self.link_fifo[from]);
        if !self.faults_stopped
            && let Some(lf) = self.opts.link_faults.iter().find(|lf| {
                lf.cut == Cut::HostHost
                    && lf.from <= now
                    && now < lf.until
                    && (lf.mode != CutMode::OneWay || from == 0)
            })
        {
            if lf.mode != CutMode::Clog {
                return;
            }
            // A clogged stream delivers everything, in order, once the clog ends.
            at = at.max(lf.until);
        }
        self.link_fifo[from] = at;
        self.schedule(at, a(to));
    }

    fn execute(&mut self, now: Instant, h: usize, o: Output) {
        // A host that crashed while its outputs were being drained executes nothing more.
        if !self.alive[h] {
            return;
        }
        match o {
            Output::ToClient(frame) => self.release(now, h, frame),
            Output::ToGuest(frame) => {
                if h == self.world_host {
                    self.world.guest_inbox.push_back(frame);
                } else if self.vms[h].is_running() {
                    self.svm.handle_frame(now, frame);
                    self.drain_svm(now, h);
                } else {
                    // A paused SVM's host queues the frame; delivered at resume.
                    self.svm_pending.push_back(frame);
                }
            }
            Output::ToPeer { message, bulk } => {
                match (&message, &bulk) {
                    (Message::SecondaryOutput { .. }, OutBulk::Frame(f)) => {
                        let (d, ack) = self.releases.on_secondary(now, f);
                        // Labelled with the primary's epoch now (the one its held frames carry):
                        // the two checkpointers count an epoch done at different instants.
                        let epoch = self.nodes[1 - h]
                            .primary_checkpointer()
                            .map_or(Epoch(0), |c| c.last_done().next());
                        self.trace.push(TraceEvent::SvmOutput {
                            at: now,
                            epoch,
                            digest: d,
                        });
                        if let Some(e) = ack {
                            self.trace.push(e);
                        }
                    }
                    (Message::CheckpointReceived { epoch }, _) => {
                        self.trace.push(TraceEvent::Received {
                            at: now,
                            epoch: *epoch,
                        });
                        // A crash here still lets this message out (it was already sent).
                        self.crash_at_point(now, CrashPoint::OnReceived);
                    }
                    _ => {}
                }
                let bulk = match bulk {
                    OutBulk::None => PeerBulk::None,
                    OutBulk::Frame(f) => PeerBulk::Frame(f),
                    OutBulk::GuestWrite(_) => match &message {
                        Message::DiskWrite { len, .. } => PeerBulk::Stored {
                            len: u64::from(*len),
                        },
                        _ => PeerBulk::None,
                    },
                };
                self.send_peer(now, h, |to| {
                    Action::Input(to, Input::Peer { message, bulk })
                });
            }
            Output::Vm(cmd) => {
                let point = match cmd {
                    VmCommand::Pause => Some(CrashPoint::OnPause),
                    VmCommand::SendPages { .. } => Some(CrashPoint::OnTransfer),
                    VmCommand::ApplyCheckpoint { .. } => Some(CrashPoint::OnApply),
                    _ => None,
                };
                if let Some(p) = point {
                    self.crash_at_point(now, p);
                    if !self.alive[h] {
                        return;
                    }
                }
                if let VmCommand::ApplyCheckpoint { epoch } = cmd {
                    // The node reset its rewriter together with ordering the load (state
                    // equality checks the translation is the identity now).
                    let skewed = self.nodes[h].rewriter().map_or(0, |r| {
                        r.phases()
                            .filter(|(_, p)| *p != RewritePhase::Established { offset: 0 })
                            .count() as u64
                    });
                    self.trace.push(TraceEvent::Translation {
                        at: now,
                        epoch,
                        skewed,
                    });
                }
                if matches!(cmd, VmCommand::Pause) {
                    if let Some(p) = self.nodes[h].primary_checkpointer() {
                        let e = p.epoch();
                        self.vms[h].set_pause_epoch(e);
                    }
                    if h == self.world_host {
                        self.world.guest_paused = true;
                    }
                }
                let world_host = self.world_host;
                let guest = if h == world_host {
                    &mut self.world.guest
                } else {
                    &mut self.svm
                };
                let primary = self.nodes[h].secondary_checkpointer().is_none();
                self.vms[h].set_trace_pauses(primary);
                self.vms[h].handle_command(now, cmd, guest);
                self.drain_vm_trace(h);
            }
            Output::Disk(cmd) => {
                // The disk model executes it (the guest's own disk lives in its snapshot; the
                // node's overlays are kept for real, so their resets and merges complete).
                let result = self.disks[h].execute(cmd);
                self.schedule(
                    now + Duration::from_micros(100),
                    Action::Input(
                        h,
                        Input::DiskDone {
                            op: cmd.op(),
                            result,
                        },
                    ),
                );
            }
            Output::GuestDiskDone { .. } => {}
            Output::Sync(SyncCommand::SendAll { term }) => {
                self.send_peer(now, h, |to| {
                    Action::Input(
                        to,
                        Input::Peer {
                            message: Message::SyncPages {
                                term,
                                batch: 0,
                                ranges: vec![colo_core::ids::PageRange {
                                    first: 0,
                                    count: 4096,
                                }],
                            },
                            bulk: PeerBulk::Stored {
                                len: 4096 * PAGE_SIZE,
                            },
                        },
                    )
                });
                self.send_peer(now, h, |to| {
                    Action::Input(
                        to,
                        Input::Peer {
                            message: Message::SyncDisk {
                                term,
                                offset: 0,
                                len: 1 << 20,
                            },
                            bulk: PeerBulk::Stored { len: 1 << 20 },
                        },
                    )
                });
                self.schedule(
                    now + Duration::from_millis(5),
                    Action::Input(
                        h,
                        Input::SyncSent {
                            memory_bytes: 4096 * PAGE_SIZE,
                            disk_bytes: 1 << 20,
                        },
                    ),
                );
            }
            Output::Arbiter(req) => {
                let cut = !self.faults_stopped
                    && self.opts.link_faults.iter().any(|lf| {
                        lf.cut == Cut::HostArbiter(host(h)) && lf.from <= now && now < lf.until
                    });
                if !cut {
                    self.schedule(now + Duration::from_millis(1), Action::Arbiter(h, req));
                }
            }
            Output::Event(e) => match e {
                Event::CheckpointDone { epoch, .. } => {
                    self.checkpoints += 1;
                    self.trace
                        .push(TraceEvent::CheckpointDone { at: now, epoch });
                }
                Event::FailedOver { term, .. } => {
                    self.failed_over = true;
                    self.trace.push(TraceEvent::TermStarted {
                        at: now,
                        host: host(h),
                        term,
                        solo: true,
                    });
                }
                Event::Deposed { .. } => {
                    // The node dropped its solo hold: every frame it held is superseded.
                    let frames: Vec<FrameId> = self
                        .held
                        .iter()
                        .filter(|(_, v)| v.0 == h)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in &frames {
                        self.held.remove(id);
                    }
                    for frame in frames {
                        self.trace.push(TraceEvent::Superseded {
                            at: now,
                            host: host(h),
                            frame,
                            reason: "deposed: the arbiter leased the term to the peer",
                        });
                    }
                }
                Event::ClaimClientLink { .. } => {
                    self.client_target = h;
                    if h != self.world_host {
                        std::mem::swap(&mut self.world.guest, &mut self.svm);
                        self.world_host = h;
                        self.world.guest_paused = !self.vms[h].is_running();
                        self.world.guest_inbox.clear();
                        self.world.guest_out.clear();
                        let pending: Vec<Vec<u8>> = self.svm_pending.drain(..).collect();
                        self.world.guest_inbox.extend(pending);
                    }
                }
                _ => {}
            },
        }
    }

    fn release(&mut self, now: Instant, h: usize, frame: Vec<u8>) {
        let st = self.nodes[h].status(now);
        let d = digest(&frame);
        let loose = loose_key(&frame);
        // The same bytes first; else the same flow and payload (a survivor's rewriter changed
        // its sequence numbers); else the host's oldest held frame.
        let found = self
            .held
            .iter()
            .find(|(_, v)| v.0 == h && v.1 == d)
            .or_else(|| self.held.iter().find(|(_, v)| v.0 == h && v.2 == loose))
            .or_else(|| self.held.iter().find(|(_, v)| v.0 == h))
            .map(|(id, v)| (*id, v.3));
        let (id, epoch) = match found {
            Some((id, epoch)) => {
                self.held.remove(&id);
                (id, epoch)
            }
            None => {
                // Released without having been handed in: a fresh id, which no_silent_loss
                // reports.
                self.next_frame += 1;
                (FrameId(u64::MAX - self.next_frame), Epoch(0))
            }
        };
        // Every release by a node that is not paired is solo (a survivor taking over included:
        // single_writer then asks for its lease).
        let origin = self.releases.classify(&frame, st.mode != NodeMode::Paired);
        self.trace.push(TraceEvent::Released {
            at: now,
            host: host(h),
            term: st.term,
            epoch,
            frame: id,
            digest: d,
            origin,
        });
        self.released += 1;
        self.world.release_from_guest(frame);
    }

    /// Moves the VM platform's trace events into the run's trace (at once, so they keep
    /// simulated-time order); the SVM's own pause is not a checkpoint's pause state.
    fn drain_vm_trace(&mut self, h: usize) {
        let secondary = self.nodes[h].secondary_checkpointer().is_some();
        while let Some(e) = self.vms[h].poll_trace() {
            if !(secondary && matches!(e, TraceEvent::Paused { .. })) {
                self.trace.push(e);
            }
        }
    }

    fn drain_svm(&mut self, now: Instant, h: usize) {
        while let Some(f) = self.svm.poll_transmit() {
            self.guest_frame(now, h, f);
        }
    }

    /// A frame host `h`'s guest emitted: handed to its node; traced as held unless the node is
    /// a paired secondary (whose frames only feed the primary's comparator).
    fn guest_frame(&mut self, now: Instant, h: usize, f: Vec<u8>) {
        if !self.alive[h] {
            return;
        }
        let st = self.nodes[h].status(now);
        let compare_only = st.role == Role::Secondary && st.mode == NodeMode::Paired;
        // A deposed or stopped node releases nothing again: its guest's frames end there (the
        // real runtime stops that VM; the simulated one keeps running until re-protection).
        let dead_end = matches!(st.mode, NodeMode::Deposed | NodeMode::Stopped);
        if dead_end {
            return;
        }
        if !compare_only {
            let id = FrameId(self.next_frame);
            self.next_frame += 1;
            let epoch = self.nodes[h]
                .primary_checkpointer()
                .map_or(Epoch(0), |c| c.last_done().next());
            self.held.insert(id, (h, digest(&f), loose_key(&f), epoch));
            self.trace.push(TraceEvent::Held {
                at: now,
                host: host(h),
                frame: id,
                epoch,
            });
            if st.role == Role::Primary
                && st.mode == NodeMode::Paired
                && let Some(e) = self.releases.on_primary(now, epoch, &f)
            {
                self.trace.push(e);
            }
        }
        self.input(now, h, Input::GuestFrame(f));
    }

    /// Everything due at `now`; returns whether anything happened.
    fn step(&mut self, now: Instant) -> bool {
        let mut busy = self.apply_faults(now);
        if let Some(t) = self.crash_primary_at
            && t <= now
        {
            self.crash_primary_at = None;
            self.alive[0] = false;
            self.trace.push(TraceEvent::Crash {
                at: now,
                host: Host::A,
            });
            if self.world_host == 0 {
                self.world.guest_paused = true;
            }
            busy = true;
        }
        while let Some(f) = self.world.guest_in.pop_front() {
            busy = true;
            let t = self.client_target;
            self.input(now, t, Input::ClientFrame(f));
        }
        while let Some(f) = self.world.guest_out.pop_front() {
            busy = true;
            let h = self.world_host;
            self.guest_frame(now, h, f);
        }
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            busy = true;
            match entry.remove() {
                Action::Input(h, i) => self.input(now, h, i),
                Action::Repl(h, f) => {
                    if self.alive[h] {
                        let (message, len) = self.vms[h].handle_repl(f);
                        self.input(
                            now,
                            h,
                            Input::Peer {
                                message,
                                bulk: PeerBulk::Stored { len },
                            },
                        );
                    }
                }
                Action::Arbiter(h, req) => {
                    let reply =
                        self.arbiter
                            .handle_request(now, req.term, req.node_id, req.duration);
                    if let LeaseReply::Granted { valid_for } = reply {
                        self.trace.push(TraceEvent::Lease {
                            at: now,
                            host: host(h),
                            term: req.term,
                            until: now + valid_for,
                        });
                    }
                    self.schedule(
                        now + Duration::from_millis(1),
                        Action::Input(h, Input::Arbiter { id: req.id, reply }),
                    );
                }
            }
        }
        for h in 0..2 {
            if !self.alive[h] {
                continue;
            }
            while let Some(f) = self.vms[h].poll_repl(now) {
                busy = true;
                self.send_peer(now, h, |to| Action::Repl(to, f));
            }
            loop {
                let world_host = self.world_host;
                let guest = if h == world_host {
                    &mut self.world.guest
                } else {
                    &mut self.svm
                };
                let primary = self.nodes[h].secondary_checkpointer().is_none();
                self.vms[h].set_trace_pauses(primary);
                let Some(done) = self.vms[h].poll_completion(now, guest) else {
                    break;
                };
                busy = true;
                if done == colo_core::checkpoint::VmCompletion::Resumed {
                    if h == self.world_host {
                        self.world.guest_paused = false;
                    } else {
                        let pending: Vec<Vec<u8>> = self.svm_pending.drain(..).collect();
                        for f in pending {
                            self.svm.handle_frame(now, f);
                        }
                        self.drain_svm(now, h);
                    }
                }
                self.drain_vm_trace(h);
                self.input(now, h, Input::VmDone(done));
            }
            if self.nodes[h].poll_timeout().is_some_and(|t| t <= now) {
                busy = true;
                self.input(now, h, Input::Timeout);
            }
        }
        let s = 1 - self.world_host;
        if self.alive[s]
            && self.vms[s].is_running()
            && self.svm.poll_timeout().is_some_and(|t| t <= now)
        {
            busy = true;
            self.svm.handle_timeout(now);
            self.drain_svm(now, s);
        }
        busy
    }

    fn next_wake(&mut self) -> Option<Instant> {
        let mut t = vec![self.queue.first_key_value().map(|(k, _)| k.0)];
        if !self.faults_stopped {
            t.push(Some(self.opts.liveness_starts()));
            if !self.crash_done {
                t.push(self.opts.crashes.first().map(|c| c.not_before));
            }
            for lf in &self.opts.link_faults {
                t.push(Some(lf.from));
                t.push(Some(lf.until));
            }
        }
        let now = self.world.now;
        for h in 0..2 {
            if self.alive[h] {
                t.push(self.vms[h].poll_timeout());
                t.push(self.nodes[h].poll_timeout());
            }
        }
        let s = 1 - self.world_host;
        if self.alive[s] && self.vms[s].is_running() {
            t.push(self.svm.poll_timeout());
        }
        t.push(self.crash_primary_at);
        t.into_iter().flatten().filter(|x| *x >= now).min()
    }

    /// Runs to the end.
    pub fn run(mut self) -> NodeRunOutput {
        loop {
            let now = self.world.now;
            for _ in 0..100_000 {
                if !self.step(now) {
                    break;
                }
            }
            if now >= self.end {
                break;
            }
            let next = self
                .next_wake()
                .unwrap_or(self.end)
                .max(now + Duration::from_micros(1))
                .min(self.end);
            self.world
                .run_until(next, |w| !w.guest_out.is_empty() || !w.guest_in.is_empty());
        }
        let histories: Vec<History> = self
            .world
            .clients
            .iter()
            .map(|c| c.history().clone())
            .collect();
        let digest = self.trace.run_digest(&histories);
        NodeRunOutput {
            trace: self.trace,
            histories,
            released: self.released,
            matched: self.releases.matched,
            checkpoints: self.checkpoints,
            digest,
        }
    }
}

mod faults;
mod origin;
mod stream;
#[cfg(test)]
mod tests;
