//! `SimHost`: one simulated colo host — its `colo_core::node::Node`, its VM platform
//! ([`SimVm`]), its disk ([`LayeredDisk`]) and its own guest ([`Guest`]: the PVM on a primary,
//! the SVM on a secondary) — as one sans-IO model: inputs go in through `handle_*(now, ..)`,
//! everything the host wants done outside itself comes out of [`SimHost::poll_output`], and
//! [`SimHost::poll_timeout`] says when to come back. It has no global knowledge: frames for the
//! peer, the arbiter and the clients leave as [`HostOutput`]s, and what the run observes (held
//! frames, releases, the secondary's output, checkpoint phases) leaves as outputs too, for the
//! engine to hand to its [`crate::observer::Observer`]. The fabric ([`crate::fabric`]) steps
//! two of them under either executor: the madsim cluster ([`crate::cluster_run`]) runs one per
//! madsim node, so killing the node drops the host whole; the plain loop
//! ([`crate::node_run`]) drops the value.
//!
//! Invariant kept: the host executes what its node orders and reports completions back, in the
//! order the node emitted them; a host that crashed inside a step (a crash point said so)
//! executes nothing more.

use colo_core::checkpoint::CheckpointEvent;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use colo_core::checkpoint::{VmCommand, VmCompletion};
use colo_core::disk::GuestIoId;
use colo_core::failover::{LeaseReply, LeaseRequest};
use colo_core::ids::{Epoch, PageRange, Role};
use colo_core::node::{
    Command, Event, GUEST_HOLD_FRAMES_PER_NIC, GuestDiskRequest, HaltReason, Input, LinkState,
    Node, NodeConfig, NodeStatus, OutBulk, Output, PeerBulk, SyncCommand,
};
use colo_core::rewrite::Phase as RewritePhase;
use colo_core::time::{Duration, Instant};
use colo_core::wire::message::WriteId;
use colo_core::wire::{Message, PAGE_SIZE, ZeroPages};

use crate::guest::Guest;
use crate::guest::disk::{BLOCK_SIZE, DiskWrite};
use crate::platform::disk::LayeredDisk;
use crate::platform::vm::{SimVm, VmTiming};
use crate::platform::{Canary, ReplFrame};
use crate::swarm::CrashPoint;
use crate::trace::TraceEvent;

/// Bytes of the simulated disk: the guest's whole block device (`GuestConfig::disk_blocks`
/// blocks of [`BLOCK_SIZE`] bytes), so every guest write lands inside it.
pub const DISK_BYTES: u64 = 4096 * BLOCK_SIZE as u64;
/// Pages of simulated guest memory the node is configured with.
pub const MEMORY_PAGES: u64 = 4096;

/// Something that crosses the replication link between two hosts.
#[derive(Clone, Debug)]
pub enum PeerMsg {
    /// A node message (with its bulk, or the length of a bulk the platform stored).
    Node {
        /// The message.
        message: Message,
        /// Its bulk.
        bulk: PeerBulk,
    },
    /// A VM platform frame (page batches, device state with the guest snapshot).
    Repl(ReplFrame),
    /// A forwarded guest write: the message and the bytes the receiver stages for it.
    Write {
        /// The write's id.
        id: WriteId,
        /// Its offset.
        offset: u64,
        /// Its bytes.
        data: Vec<u8>,
        /// `Message::DiskWrite`.
        message: Message,
    },
}

/// What a host asks of the world, or reports to the run's observer.
#[derive(Clone, Debug)]
pub enum HostOutput {
    /// The node released this frame to the clients (status at release).
    Release(Vec<u8>, Box<NodeStatus>),
    /// The primary's comparator announced an opened window to the clients (a pure ACK it
    /// built, `colo_core::compare::window_update`): no guest frame, nothing held.
    WindowUpdate(Vec<u8>),
    /// The host's guest emitted this frame and it goes to the node (status, running epoch).
    GuestFrame(Vec<u8>, Box<NodeStatus>, Epoch),
    /// A secondary frame sent to the primary's comparator.
    SvmOutput(Vec<u8>),
    /// For the peer host.
    ToPeer(PeerMsg),
    /// For the arbiter.
    ToArbiter(LeaseRequest),
    /// The node claimed the client link (failover).
    ClaimLink,
    /// The node halted (deposed, or stopped because its own VM failed): its held frames are
    /// superseded, and its process ends (the fabric's supervisor restarts it).
    Halted(HaltReason),
    /// The node's order for the peer link (the fabric's connection executes it).
    Link(colo_core::node::LinkCommand),
    /// A trace event (checkpoint phases, terms, re-protection).
    Trace(TraceEvent),
}

/// The engine's say on crash points: `crash_point` is asked when this host's checkpoint enters
/// `point`; it returns `true` if *this* host crashes right now (it may also crash the peer).
/// `vm_failure_allowed` is asked before an armed failure of a kind that takes the node out of
/// the pair ([`ENDING_VM_FAILURES`]) is consumed: `false` keeps it armed for a later command.
pub trait CrashHook {
    /// See the trait.
    fn crash_point(&mut self, now: Instant, me: usize, point: CrashPoint) -> bool;

    /// See the trait; `paired` says whether this host's node is paired right now.
    fn vm_failure_allowed(&mut self, now: Instant, me: usize, paired: bool) -> bool;
}

/// The VM command failures after which colo-core has the node leave the pair and stop (its VM
/// holds no usable guest): a failed `Resume` (a paused VM that cannot run) and a failed
/// `ApplyCheckpoint` (a half-applied one).
pub const ENDING_VM_FAILURES: [colo_core::checkpoint::VmCommandKind; 2] = [
    colo_core::checkpoint::VmCommandKind::Resume,
    colo_core::checkpoint::VmCommandKind::ApplyCheckpoint,
];

/// One host (see the module documentation).
#[derive(Debug)]
pub struct SimHost {
    index: usize,
    node: Node,
    vm: SimVm,
    disk: LayeredDisk,
    guest: Guest,
    /// Frames for a paused guest, delivered when it resumes (at most
    /// [`GUEST_HOLD_FRAMES_PER_NIC`]: the simulated guest has one NIC).
    pending: VecDeque<Vec<u8>>,
    /// Local completions due later: (instant, sequence) -> input.
    timers: BTreeMap<(Instant, u64), Input>,
    seq: u64,
    next_io: u64,
    out: VecDeque<HostOutput>,
    dead: bool,
    /// The node ordered its VM stopped for good (`Output::Halt`): the guest is never stepped
    /// again and frames for it are dropped, as the runtime's paused VM and ended loop do.
    halted: bool,
    /// The peer link is up (the fabric's connection, as last told to the node).
    link_up: bool,
    /// Guest disk writes handed to the node.
    pub disk_writes: u64,
    /// Guest disk writes the node completed with an error.
    pub disk_write_errors: u64,
    /// Frames for the paused guest pushed out of `pending` by newer ones (the runtime's
    /// `held_dropped`).
    pub held_dropped: u64,
    /// Primary: pages its VM collected since the last completed checkpoint (or the pairing's
    /// full copy), which every `SendPages` must carry (traced as `PagesOrdered`); the host's
    /// own account, kept apart from the core's.
    owed_pages: BTreeSet<u64>,
}

impl SimHost {
    /// A host `index` (0 = A, 1 = B) whose node starts in `role`, with `guest` (paused until
    /// the node resumes its VM), a disk failing writes at `disk_write_error_ppm`; `canary` is
    /// planted in the VM unless it is one of the Node's.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        config: NodeConfig,
        role: Role,
        guest: Guest,
        timing: VmTiming,
        canary: Option<Canary>,
        disk: LayeredDisk,
        now: Instant,
    ) -> SimHost {
        SimHost {
            index,
            node: Node::new(config, role, now).expect("valid node config"),
            // A canary the Node plants is in `config` already ([`crate::node_run::node_config`]);
            // the others go to the VM platform.
            vm: SimVm::new_paused(
                timing,
                canary.filter(|c| c.node_canary().is_none()),
                role == Role::Primary,
            ),
            disk,
            guest,
            pending: VecDeque::new(),
            timers: BTreeMap::new(),
            seq: 0,
            next_io: 0,
            out: VecDeque::new(),
            dead: false,
            halted: false,
            link_up: false,
            disk_writes: 0,
            disk_write_errors: 0,
            held_dropped: 0,
            owed_pages: BTreeSet::new(),
        }
    }

    /// Starts the node, with the peer link up if the fabric connected it (a secondary then
    /// knocks with Hello at once; otherwise when the link comes up).
    pub fn start(&mut self, now: Instant, link_up: bool, hook: &mut dyn CrashHook) {
        self.input(now, Input::Command(Command::Start), hook);
        if link_up {
            self.handle_link(now, LinkState::Up, hook);
        }
    }

    /// Arms (or, with `None`, disarms) a failure of the VM's next command of a kind
    /// (`SimVm::fail_next`, driven by the swarm's `vm_failures`).
    pub fn arm_vm_failure(&mut self, command: Option<colo_core::checkpoint::VmCommandKind>) {
        self.vm.fail_next = command;
    }

    /// The VM failure armed and not yet consumed by a command.
    pub fn armed_vm_failure(&self) -> Option<colo_core::checkpoint::VmCommandKind> {
        self.vm.fail_next
    }

    /// The node's status.
    pub fn status(&self, now: Instant) -> NodeStatus {
        self.node.status(now)
    }

    /// Whether the host's VM holds a checkpoint applied since it booted (a secondary that can
    /// take over).
    pub fn has_applied(&self) -> bool {
        self.vm.applied().is_some()
    }

    /// The epoch the node's primary checkpointer is running, if it is on the primary side.
    pub fn primary_epoch(&self) -> Option<Epoch> {
        self.node
            .primary_checkpointer()
            .map(|c| c.last_done().next())
    }

    /// Whether the host crashed inside a step.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// A client frame (the host owns the client link).
    pub fn handle_client_frame(&mut self, now: Instant, frame: Vec<u8>, hook: &mut dyn CrashHook) {
        self.input(
            now,
            Input::ClientFrame {
                nic: colo_core::ids::NicId(0),
                frame,
            },
            hook,
        );
    }

    /// Something from the peer host.
    pub fn handle_peer(&mut self, now: Instant, msg: PeerMsg, hook: &mut dyn CrashHook) {
        match msg {
            PeerMsg::Node { message, bulk } => self.input(now, Input::Peer { message, bulk }, hook),
            PeerMsg::Repl(f) => {
                let (message, len) = self.vm.handle_repl(f);
                let bulk = PeerBulk::Stored { len };
                self.input(now, Input::Peer { message, bulk }, hook);
            }
            PeerMsg::Write {
                id,
                offset,
                data,
                message,
            } => {
                let len = data.len() as u64;
                self.disk.stage_peer_write(id, offset, data);
                let bulk = PeerBulk::Stored { len };
                self.input(now, Input::Peer { message, bulk }, hook);
            }
        }
    }

    /// The peer connection went down or came back.
    pub fn handle_link(&mut self, now: Instant, state: LinkState, hook: &mut dyn CrashHook) {
        self.link_up = state == LinkState::Up;
        self.input(now, Input::PeerLink(state), hook);
    }

    /// A dial the node ordered was refused (its peer's process is gone).
    pub fn handle_dial_refused(&mut self, now: Instant, hook: &mut dyn CrashHook) {
        self.input(now, Input::PeerDialRefused, hook);
    }

    /// The arbiter's reply to request `id`.
    pub fn handle_arbiter(
        &mut self,
        now: Instant,
        id: colo_core::failover::LeaseRequestId,
        reply: LeaseReply,
        hook: &mut dyn CrashHook,
    ) {
        self.input(now, Input::Arbiter { id, reply }, hook);
    }

    /// An operator's command.
    pub fn handle_command(&mut self, now: Instant, cmd: Command, hook: &mut dyn CrashHook) {
        self.input(now, Input::Command(cmd), hook);
    }

    /// Everything due at `now`: local completions, the VM's transfers and completions, the
    /// node's timers and the guest's.
    pub fn handle_timeout(&mut self, now: Instant, hook: &mut dyn CrashHook) {
        while !self.dead
            && let Some(entry) = self.timers.first_entry()
            && entry.key().0 <= now
        {
            let input = entry.remove();
            self.input(now, input, hook);
        }
        while !self.dead
            && let Some(f) = self.vm.poll_repl(now)
        {
            self.out.push_back(HostOutput::ToPeer(PeerMsg::Repl(f)));
        }
        self.set_trace_pauses();
        while !self.dead
            && let Some(done) = self.vm.poll_completion(now, &mut self.guest)
        {
            if done == VmCompletion::Resumed {
                let pending: Vec<Vec<u8>> = self.pending.drain(..).collect();
                for f in pending {
                    self.guest.handle_frame(now, f);
                }
                self.drain_guest(now, hook);
            }
            self.drain_vm_trace();
            if let VmCompletion::DirtyCollected { ranges, .. } = &done {
                // The dirty log is read and cleared: these pages are owed until a checkpoint
                // completes.
                for r in ranges {
                    self.owed_pages.extend(r.first..r.end());
                }
            }
            self.input(now, Input::VmDone(done), hook);
        }
        if !self.dead && self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.input(now, Input::Timeout, hook);
        }
        if !self.dead && self.guest_runs() && self.guest.poll_timeout().is_some_and(|t| t <= now) {
            self.guest.handle_timeout(now);
            self.drain_guest(now, hook);
        }
    }

    /// When the host next has work of its own.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.dead {
            return None;
        }
        let guest = if self.guest_runs() {
            self.guest.poll_timeout()
        } else {
            None
        };
        [
            self.timers.first_key_value().map(|(k, _)| k.0),
            self.vm.poll_timeout(),
            self.node.poll_timeout(),
            guest,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<HostOutput> {
        self.out.pop_front()
    }

    /// Whether the node is paired right now.
    fn paired(&self, now: Instant) -> bool {
        self.node.status(now).mode == colo_core::node::NodeMode::Paired
    }

    /// Whether the world steps the guest: its VM runs and the node never halted it.
    fn guest_runs(&self) -> bool {
        !self.halted && self.vm.is_running()
    }

    fn later(&mut self, at: Instant, input: Input) {
        self.seq += 1;
        self.timers.insert((at, self.seq), input);
    }

    fn input(&mut self, now: Instant, input: Input, hook: &mut dyn CrashHook) {
        if self.dead {
            return;
        }
        self.node.handle(now, input);
        while let Some(o) = self.node.poll_output() {
            if self.dead {
                // Crashed while draining: nothing more leaves this host.
                continue;
            }
            self.execute(now, o, hook);
        }
    }

    fn crash_point(&mut self, now: Instant, point: CrashPoint, hook: &mut dyn CrashHook) {
        // What the host did before this instant's crash (outputs already queued) stands.
        if hook.crash_point(now, self.index, point) {
            self.dead = true;
            self.vm.crash();
        }
    }

    /// Only a primary's pause is a checkpoint's pause state: a secondary's is not hashed
    /// (`SimVm::set_trace_pauses`), set from the node's role before every VM call.
    fn set_trace_pauses(&mut self) {
        let primary = self.node.secondary_checkpointer().is_none();
        self.vm.set_trace_pauses(primary);
    }

    fn drain_vm_trace(&mut self) {
        // The SVM's own pause is not a checkpoint's pause state.
        let secondary = self.node.secondary_checkpointer().is_some();
        while let Some(e) = self.vm.poll_trace() {
            if !(secondary && matches!(e, TraceEvent::Paused { .. })) {
                self.out.push_back(HostOutput::Trace(e));
            }
        }
    }

    fn drain_guest(&mut self, now: Instant, hook: &mut dyn CrashHook) {
        while !self.dead
            && let Some(f) = self.guest.poll_transmit()
        {
            let st = self.node.status(now);
            let epoch = self.primary_epoch().unwrap_or(Epoch(0));
            self.out
                .push_back(HostOutput::GuestFrame(f.clone(), Box::new(st), epoch));
            // A deposed or stopped node's guest output ends here (the observer agrees).
            if !matches!(
                st.mode,
                colo_core::node::NodeMode::Deposed | colo_core::node::NodeMode::Stopped
            ) {
                self.input(now, Input::GuestFrame(f), hook);
            }
        }
        while !self.dead
            && let Some(w) = self.guest.poll_disk_write()
        {
            self.guest_disk_write(now, w, hook);
        }
    }

    /// A guest disk write: its bytes are staged on the disk and the request handed to the node,
    /// whose disk machines order the layer writes (and, on a primary, forward it).
    fn guest_disk_write(&mut self, now: Instant, w: DiskWrite, hook: &mut dyn CrashHook) {
        let io = GuestIoId(self.next_io);
        self.next_io += 1;
        let offset = w.block * BLOCK_SIZE as u64;
        let len = w.data.len() as u32;
        self.disk.stage_guest_write(io, offset, w.data);
        self.disk_writes += 1;
        let req = GuestDiskRequest::Write { io, offset, len };
        self.input(now, Input::GuestDisk(req), hook);
    }

    fn execute(&mut self, now: Instant, o: Output, hook: &mut dyn CrashHook) {
        match o {
            Output::ToClient(frame) => {
                let st = self.node.status(now);
                self.out.push_back(HostOutput::Release(frame, Box::new(st)));
            }
            // Not a guest frame: it goes to the clients without a release of its own to judge.
            Output::WindowUpdate(frame) => self.out.push_back(HostOutput::WindowUpdate(frame)),
            Output::ToGuest { frame, .. } => {
                if self.halted {
                    // A stopped VM receives nothing.
                } else if self.vm.is_running() {
                    self.guest.handle_frame(now, frame);
                    self.drain_guest(now, hook);
                } else {
                    if self.pending.len() >= GUEST_HOLD_FRAMES_PER_NIC {
                        self.pending.pop_front();
                        self.held_dropped += 1;
                    }
                    self.pending.push_back(frame);
                }
            }
            Output::ToPeer { message, bulk } => self.on_peer_output(now, message, bulk, hook),
            Output::Vm(cmd) => {
                let point = match cmd {
                    VmCommand::Pause => Some(CrashPoint::OnPause),
                    VmCommand::SendPages { .. } => Some(CrashPoint::OnTransfer),
                    VmCommand::ApplyCheckpoint { .. } => Some(CrashPoint::OnApply),
                    _ => None,
                };
                if let Some(p) = point {
                    self.crash_point(now, p, hook);
                    if self.dead {
                        return;
                    }
                }
                if let VmCommand::ApplyCheckpoint { epoch } = cmd {
                    // The node reset its rewriter together with ordering the load (state
                    // equality checks the translation is the identity now).
                    let skewed = self.node.rewriter().map_or(0, |r| {
                        r.phases()
                            .filter(|(_, p)| *p != RewritePhase::Established { offset: 0 })
                            .count() as u64
                    });
                    let t = TraceEvent::Translation {
                        at: now,
                        epoch,
                        skewed,
                    };
                    self.out.push_back(HostOutput::Trace(t));
                }
                if let VmCommand::SendPages { epoch, ranges } = &cmd {
                    let carried = |p: &u64| ranges.iter().any(|r| (r.first..r.end()).contains(p));
                    let missing = self.owed_pages.iter().filter(|p| !carried(p)).count() as u64;
                    let t = TraceEvent::PagesOrdered {
                        at: now,
                        epoch: *epoch,
                        missing,
                    };
                    self.out.push_back(HostOutput::Trace(t));
                }
                if matches!(cmd, VmCommand::Pause)
                    && let Some(p) = self.node.primary_checkpointer()
                {
                    let e = p.epoch();
                    self.vm.set_pause_epoch(e);
                }
                self.set_trace_pauses();
                // The runtime streams these on the peer connection: without one they fail
                // (`VmExecutor::execute`: "peer link down"); an armed failure stays armed.
                let no_link = !self.link_up
                    && matches!(
                        cmd,
                        VmCommand::SendPages { .. } | VmCommand::SaveDeviceState { .. }
                    );
                let armed = no_link
                    .then(|| self.vm.fail_next.replace(cmd.kind()))
                    .flatten()
                    .filter(|k| *k != cmd.kind());
                // A failure that would take this node out waits while the engine says no (the
                // crash rule's counterpart: the peer must be able to carry the guest on).
                let held = (self.vm.fail_next == Some(cmd.kind())
                    && ENDING_VM_FAILURES.contains(&cmd.kind())
                    && !hook.vm_failure_allowed(now, self.index, self.paired(now)))
                .then(|| self.vm.fail_next.take())
                .flatten();
                self.vm.handle_command(now, cmd, &mut self.guest);
                if armed.is_some() {
                    self.vm.fail_next = armed;
                }
                if held.is_some() {
                    self.vm.fail_next = held;
                }
                self.drain_vm_trace();
            }
            Output::Disk(cmd) => {
                let result = self.disk.execute(cmd);
                let op = cmd.op();
                self.later(
                    now + Duration::from_micros(100),
                    Input::DiskDone { op, result },
                );
            }
            Output::GuestDiskDone { io, result } => {
                self.disk.finish_guest_write(io);
                if result.is_err() {
                    self.disk_write_errors += 1;
                }
            }
            Output::Sync(SyncCommand::SendAll { term }) => {
                // The full copy carries every page; tracking restarts from it.
                self.owed_pages.clear();
                let pages = Message::SyncPages {
                    term,
                    batch: 0,
                    ranges: vec![PageRange {
                        first: 0,
                        count: MEMORY_PAGES,
                    }],
                    zero: ZeroPages::none(MEMORY_PAGES),
                };
                let disk = Message::SyncDisk {
                    term,
                    offset: 0,
                    len: DISK_BYTES as u32,
                };
                for (message, len) in [(pages, MEMORY_PAGES * PAGE_SIZE), (disk, DISK_BYTES)] {
                    let bulk = PeerBulk::Stored { len };
                    self.out
                        .push_back(HostOutput::ToPeer(PeerMsg::Node { message, bulk }));
                }
                let sent = Input::SyncSent {
                    memory_bytes: MEMORY_PAGES * PAGE_SIZE,
                    disk_bytes: DISK_BYTES,
                };
                self.later(now + Duration::from_millis(5), sent);
            }
            Output::Arbiter(req) => self.out.push_back(HostOutput::ToArbiter(req)),
            // The simulated guests print nothing: the console gate has nothing to hold. The
            // order is still checked by the node fuzzer (a release only under the lease).
            Output::Console(_) => {}
            Output::ClaimClientLink { .. } => self.out.push_back(HostOutput::ClaimLink),
            Output::Link(cmd) => {
                if cmd == colo_core::node::LinkCommand::Close {
                    self.link_up = false;
                }
                self.out.push_back(HostOutput::Link(cmd));
            }
            Output::Halt(reason) => {
                self.halted = true;
                self.pending.clear();
                self.out.push_back(HostOutput::Halted(reason));
            }
            Output::Event(e) => self.on_event(now, e),
        }
    }

    fn on_peer_output(
        &mut self,
        now: Instant,
        message: Message,
        bulk: OutBulk,
        hook: &mut dyn CrashHook,
    ) {
        match (&message, &bulk) {
            (Message::SecondaryOutput { .. }, OutBulk::Frame(f)) => {
                self.out.push_back(HostOutput::SvmOutput(f.clone()));
            }
            (Message::CheckpointReceived { epoch }, _) => {
                let epoch = *epoch;
                self.out
                    .push_back(HostOutput::Trace(TraceEvent::Received { at: now, epoch }));
                // A crash here still lets this message out (it was already sent).
                let msg = PeerMsg::Node {
                    message,
                    bulk: PeerBulk::None,
                };
                self.out.push_back(HostOutput::ToPeer(msg));
                self.crash_point(now, CrashPoint::OnReceived, hook);
                return;
            }
            _ => {}
        }
        let msg = match bulk {
            OutBulk::None => PeerMsg::Node {
                message,
                bulk: PeerBulk::None,
            },
            OutBulk::Frame(f) => PeerMsg::Node {
                message,
                bulk: PeerBulk::Frame(f),
            },
            OutBulk::GuestWrite(io) => match message {
                Message::DiskWrite {
                    write_id,
                    offset,
                    len,
                    ..
                } => PeerMsg::Write {
                    id: write_id,
                    offset,
                    data: self.disk.guest_write_bytes(io, offset, len),
                    message,
                },
                message => PeerMsg::Node {
                    message,
                    bulk: PeerBulk::None,
                },
            },
        };
        self.out.push_back(HostOutput::ToPeer(msg));
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        let trace = match e {
            Event::Checkpoint(CheckpointEvent::CheckpointDone { epoch, .. }) => {
                // The secondary holds every page collected up to `epoch`.
                self.owed_pages.clear();
                Some(TraceEvent::CheckpointDone { at: now, epoch })
            }
            Event::FailedOver { term, .. } => Some(TraceEvent::TermStarted {
                at: now,
                host: host(self.index),
                term,
                solo: true,
            }),
            Event::Reprotected { epoch, .. } if self.node.is_primary_side() => {
                Some(TraceEvent::Reprotected {
                    at: now,
                    host: host(self.index),
                    epoch,
                })
            }
            Event::Checkpoint(CheckpointEvent::VmFailed { command, .. }) => {
                Some(TraceEvent::VmFailed {
                    at: now,
                    host: host(self.index),
                    command,
                })
            }
            _ => None,
        };
        if let Some(t) = trace {
            self.out.push_back(HostOutput::Trace(t));
        }
    }
}

/// Host index to name.
pub fn host(h: usize) -> crate::swarm::Host {
    if h == 0 {
        crate::swarm::Host::A
    } else {
        crate::swarm::Host::B
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SimRng;
    use crate::world::{World, WorldSpec};
    use colo_core::ids::{ClusterId, NicId, NodeId};
    use colo_core::node::HaltReason;

    struct NoCrash;

    impl CrashHook for NoCrash {
        fn crash_point(&mut self, _: Instant, _: usize, _: CrashPoint) -> bool {
            false
        }

        fn vm_failure_allowed(&mut self, _: Instant, _: usize, _: bool) -> bool {
            true
        }
    }

    /// A primary host whose VM is paused (as created) and whose node never started.
    fn paused_host() -> SimHost {
        let guest = World::new(3, &WorldSpec::default()).guest;
        let disk = LayeredDisk::new(DISK_BYTES, 0, SimRng::new(4));
        let config = NodeConfig::new(NodeId(1), ClusterId(1));
        let timing = VmTiming::default();
        SimHost::new(
            0,
            config,
            Role::Primary,
            guest,
            timing,
            None,
            disk,
            Instant::ZERO,
        )
    }

    fn to_guest(i: usize) -> Output {
        Output::ToGuest {
            nic: NicId(0),
            frame: vec![i as u8; 60],
        }
    }

    #[test]
    fn frames_for_a_paused_guest_are_held_up_to_the_cores_bound_oldest_out_first() {
        let mut h = paused_host();
        let extra = 5;
        for i in 0..GUEST_HOLD_FRAMES_PER_NIC + extra {
            h.execute(Instant::ZERO, to_guest(i), &mut NoCrash);
        }
        assert_eq!(h.pending.len(), GUEST_HOLD_FRAMES_PER_NIC);
        assert_eq!(h.held_dropped, extra as u64);
        assert_eq!(
            h.pending.front().map(|f| f[0]),
            Some(extra as u8),
            "the oldest frames were pushed out"
        );
    }

    #[test]
    fn a_halted_host_drops_what_it_held_and_its_guest_never_runs_again() {
        let mut h = paused_host();
        h.execute(Instant::ZERO, to_guest(1), &mut NoCrash);
        h.execute(
            Instant::ZERO,
            Output::Halt(HaltReason::Deposed),
            &mut NoCrash,
        );
        assert!(h.pending.is_empty());
        assert!(matches!(
            h.poll_output(),
            Some(HostOutput::Halted(HaltReason::Deposed))
        ));
        // Even a VM resumed afterwards (a Resume already queued) steps no guest.
        h.vm.handle_command(Instant::ZERO, VmCommand::Resume, &mut h.guest);
        h.handle_timeout(Instant::from_millis(10), &mut NoCrash);
        assert!(h.vm.is_running());
        assert!(!h.guest_runs());
        h.execute(Instant::from_millis(10), to_guest(2), &mut NoCrash);
        assert!(h.pending.is_empty(), "a stopped VM receives nothing");
    }
}
