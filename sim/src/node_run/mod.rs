//! `NodeRun`: the simulated world driven by two `colo_core::node::Node`s — the same machine
//! composition the real runtime runs (comparator, rewriter, checkpointers, heartbeat, failover
//! with lease) — on top of the platform models (`SimVm`, the arbiter) and the world's guests.
//!
//! Host 0 starts primary (its guest is the world's guest, whose client frames the world hands to
//! the node instead of the guest), host 1 secondary (its SVM is a second `Guest` stepped here,
//! fed the primary's mirrored client frames). Every guest frame goes to its node
//! (`Input::GuestFrame`); the node decides what reaches the clients (`Output::ToClient`). The
//! run's [`Observer`] turns what the hosts do into the trace (held and released frames with
//! their origin, checkpoint phases from the `SimVm`s, leases, terms), so the checkers of
//! [`crate::check`] judge the Node itself. Faults (`faults`): link cuts, every crash of the seed
//! with its restart and the re-protection that follows, disk write errors (guest disk writes go
//! through the node's disk machines and a `LayeredDisk`). The madsim engine
//! (`crate::cluster_run`) runs the same composition as madsim nodes.
//!
//! Invariant kept: one event queue ordered by (instant, sequence), so a run is a pure function
//! of (options, seed).

use std::collections::{BTreeMap, VecDeque};

use colo_core::checkpoint::VmCommand;
use colo_core::failover::{Arbiter, LeaseReply, LeaseRequest};
use colo_core::ids::{ClusterId, Epoch, NodeId, Role, Term};
use colo_core::node::{
    Command, Event, Input, LinkState, Node, NodeConfig, OutBulk, Output, PeerBulk, SyncCommand,
};
use colo_core::rewrite::Phase as RewritePhase;
use colo_core::time::{Duration, Instant};
use colo_core::wire::{Message, PAGE_SIZE};

use crate::client::History;
use crate::guest::Guest;
use crate::observer::Observer;
use crate::platform::disk::LayeredDisk;
use crate::platform::vm::{SimVm, VmTiming};
use crate::platform::{Canary, ReplFrame};
use crate::rng::SimRng;
use crate::swarm::{CrashPoint, Cut, CutMode, Host, SwarmOptions};
use crate::trace::{Trace, TraceEvent};
use crate::world::{World, WorldSpec};
use faults::CrashState;

/// Bytes of the simulated disk: the guest's whole block device (`GuestConfig::disk_blocks`
/// blocks of [`crate::guest::disk::BLOCK_SIZE`] bytes), so every guest write lands inside it.
pub const DISK_BYTES: u64 = 4096 * 512;

#[derive(Debug)]
enum Action {
    Input(usize, Input),
    Repl(usize, ReplFrame),
    Arbiter(usize, LeaseRequest),
    /// A forwarded guest write: its bytes are staged on the receiver's disk, then the message
    /// is handed to its node (the bulk of `Message::DiskWrite` crosses the link with it).
    PeerWrite(
        usize,
        colo_core::wire::message::WriteId,
        u64,
        Vec<u8>,
        Message,
    ),
}

impl Action {
    /// The host the action is addressed to (a crash drops what was on its way to it); `None`
    /// for a request on its way to the arbiter, which arrives even if its sender died.
    fn target(&self) -> Option<usize> {
        match self {
            Action::Input(h, _) | Action::Repl(h, _) | Action::PeerWrite(h, ..) => Some(*h),
            Action::Arbiter(..) => None,
        }
    }
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
    /// Guest disk writes handed to the nodes.
    pub disk_writes: u64,
    /// Guest disk writes a node completed with an error (reported to the guest's host, never
    /// silently dropped: each is counted here).
    pub disk_write_errors: u64,
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
    /// What the hosts did, as trace events (shared with the madsim engine).
    obs: Observer,
    crash_primary_at: Option<Instant>,
    opts: SwarmOptions,
    /// Where each of the seed's crashes stands (by index in `opts.crashes`).
    crash_state: Vec<CrashState>,
    /// When a crashed host boots again.
    restart_at: [Option<Instant>; 2],
    /// How many times each host restarted (names its node id and entropy forks).
    incarnation: [u32; 2],
    /// Whether this solo period's survivor was already told to re-protect.
    reprotect_asked: [bool; 2],
    /// The guest image every restarted host boots.
    boot: crate::guest::GuestSnapshot,
    timing: VmTiming,
    canary: Option<Canary>,
    failed_over: bool,
    faults_stopped: bool,
    applied_cuts: Vec<usize>,
    next_io: u64,
    disk_writes: u64,
    disk_write_errors: u64,
}

/// The node configuration the simulation uses for host `h`, with `canary` planted in the node
/// if it is one of the Node's ([`Canary::node_canary`]).
pub fn node_config(h: usize, opts: &SwarmOptions, canary: Option<Canary>) -> NodeConfig {
    let mut c = NodeConfig::new(NodeId(h as u64 + 1), ClusterId(7));
    c.guest_memory_bytes = 4096 * PAGE_SIZE;
    c.disk.disk_size = DISK_BYTES;
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
        let mut obs = Observer::new();
        obs.push(TraceEvent::TermStarted {
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
                LayeredDisk::new(
                    DISK_BYTES,
                    opts.disk_write_error_ppm,
                    SimRng::new(opts.seed).fork("disk-a"),
                ),
                LayeredDisk::new(
                    DISK_BYTES,
                    opts.disk_write_error_ppm,
                    SimRng::new(opts.seed).fork("disk-b"),
                ),
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
            obs,
            crash_primary_at,
            opts: opts.clone(),
            crash_state: vec![CrashState::Pending; opts.crashes.len()],
            restart_at: [None; 2],
            incarnation: [0; 2],
            reprotect_asked: [false; 2],
            boot,
            timing,
            canary,
            failed_over: false,
            faults_stopped: false,
            applied_cuts: Vec::new(),
            next_io: 0,
            disk_writes: 0,
            disk_write_errors: 0,
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
                        let epoch = self.nodes[1 - h]
                            .primary_checkpointer()
                            .map_or(Epoch(0), |c| c.last_done().next());
                        self.obs.svm_output(now, f, epoch);
                    }
                    (Message::CheckpointReceived { epoch }, _) => {
                        self.obs.push(TraceEvent::Received {
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
                    OutBulk::GuestWrite(io) => {
                        if let Message::DiskWrite {
                            write_id,
                            offset,
                            len,
                            ..
                        } = message
                        {
                            // The bytes travel with the message; the receiver stages them for
                            // the `DataSource::Peer` write its node will order.
                            let data = self.disks[h].guest_write_bytes(io, offset, len);
                            self.send_peer(now, h, |to| {
                                Action::PeerWrite(to, write_id, offset, data, message)
                            });
                            return;
                        }
                        PeerBulk::None
                    }
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
                    self.obs.push(TraceEvent::Translation {
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
            Output::GuestDiskDone { io, result } => {
                self.disks[h].finish_guest_write(io);
                if result.is_err() {
                    // The simulated guest has no I/O error path; the failure is counted, and
                    // the node's disk machines decide what it means for replication.
                    self.disk_write_errors += 1;
                }
            }
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
                                len: DISK_BYTES as u32,
                            },
                            bulk: PeerBulk::Stored { len: DISK_BYTES },
                        },
                    )
                });
                self.schedule(
                    now + Duration::from_millis(5),
                    Action::Input(
                        h,
                        Input::SyncSent {
                            memory_bytes: 4096 * PAGE_SIZE,
                            disk_bytes: DISK_BYTES,
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
                    self.obs.push(TraceEvent::CheckpointDone { at: now, epoch });
                }
                Event::FailedOver { term, .. } => {
                    self.failed_over = true;
                    self.obs.push(TraceEvent::TermStarted {
                        at: now,
                        host: host(h),
                        term,
                        solo: true,
                    });
                }
                Event::Deposed { .. } => {
                    // The node dropped its solo hold: every frame it held is superseded.
                    self.obs.supersede_all(
                        now,
                        host(h),
                        "deposed: the arbiter leased the term to the peer",
                    );
                }
                Event::Reprotected { epoch, .. } if self.nodes[h].is_primary_side() => {
                    self.obs.push(TraceEvent::Reprotected {
                        at: now,
                        host: host(h),
                        epoch,
                    });
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
        self.obs.release(now, host(h), &frame, &st);
        self.world.release_from_guest(frame);
    }

    /// Moves the VM platform's trace events into the run's trace (at once, so they keep
    /// simulated-time order); the SVM's own pause is not a checkpoint's pause state.
    fn drain_vm_trace(&mut self, h: usize) {
        let secondary = self.nodes[h].secondary_checkpointer().is_some();
        while let Some(e) = self.vms[h].poll_trace() {
            if !(secondary && matches!(e, TraceEvent::Paused { .. })) {
                self.obs.push(e);
            }
        }
    }

    fn drain_svm(&mut self, now: Instant, h: usize) {
        while let Some(f) = self.svm.poll_transmit() {
            self.guest_frame(now, h, f);
        }
        while let Some(w) = self.svm.poll_disk_write() {
            self.guest_disk_write(now, h, w);
        }
    }

    /// A disk write host `h`'s guest issued: its bytes are staged on the host's disk and the
    /// request handed to its node, whose disk machines order the layer writes (and, on a
    /// primary, forward it to the secondary).
    fn guest_disk_write(&mut self, now: Instant, h: usize, w: crate::guest::disk::DiskWrite) {
        if !self.alive[h] {
            return;
        }
        let io = colo_core::disk::GuestIoId(self.next_io);
        self.next_io += 1;
        let offset = w.block * crate::guest::disk::BLOCK_SIZE as u64;
        let len = w.data.len() as u32;
        self.disks[h].stage_guest_write(io, offset, w.data);
        self.disk_writes += 1;
        self.input(
            now,
            h,
            Input::GuestDisk(colo_core::node::GuestDiskRequest::Write { io, offset, len }),
        );
    }

    /// A frame host `h`'s guest emitted: handed to its node; traced as held unless the node is
    /// a paired secondary (whose frames only feed the primary's comparator).
    fn guest_frame(&mut self, now: Instant, h: usize, f: Vec<u8>) {
        if !self.alive[h] {
            return;
        }
        let st = self.nodes[h].status(now);
        let epoch = self.nodes[h]
            .primary_checkpointer()
            .map_or(Epoch(0), |c| c.last_done().next());
        if self.obs.guest_frame(now, host(h), &f, &st, epoch) {
            self.input(now, h, Input::GuestFrame(f));
        }
    }

    /// Everything due at `now`; returns whether anything happened.
    fn step(&mut self, now: Instant) -> bool {
        let mut busy = self.apply_faults(now);
        if let Some(t) = self.crash_primary_at
            && t <= now
        {
            self.crash_primary_at = None;
            self.crash(now, 0, None);
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
        while let Some(w) = self.world.guest.poll_disk_write() {
            busy = true;
            let h = self.world_host;
            self.guest_disk_write(now, h, w);
        }
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            busy = true;
            match entry.remove() {
                Action::Input(h, i) => self.input(now, h, i),
                Action::PeerWrite(h, id, offset, data, message) => {
                    let len = data.len() as u64;
                    self.disks[h].stage_peer_write(id, offset, data);
                    self.input(
                        now,
                        h,
                        Input::Peer {
                            message,
                            bulk: PeerBulk::Stored { len },
                        },
                    );
                }
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
                        self.obs.push(TraceEvent::Lease {
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
            for (c, s) in self.opts.crashes.iter().zip(&self.crash_state) {
                if *s == CrashState::Pending {
                    t.push(Some(c.not_before));
                }
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
        t.extend(self.restart_at);
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
        let digest = self.obs.trace.run_digest(&histories);
        let matched = self.obs.matched();
        NodeRunOutput {
            trace: self.obs.trace,
            histories,
            released: self.obs.released,
            matched,
            checkpoints: self.obs.checkpoints,
            disk_writes: self.disk_writes,
            disk_write_errors: self.disk_write_errors,
            digest,
        }
    }
}

mod faults;
#[cfg(test)]
mod tests;
