//! A two-node in-memory harness for [`Node`] (quinn-proto's `Pair` idea): both nodes, a virtual
//! clock, fake VMs and disks that execute commands after a delay, an in-memory arbiter built on
//! [`failover::Arbiter`], a peer link that can delay, drop and be cut, a client network that can
//! delay, reorder and drop, and a client that retransmits unanswered requests. Everything is
//! driven by one seeded PRNG, so a run is a pure function of its seed and its script.
//!
//! The fake guest is a tiny idempotent request/response server over UDP: request `k` makes it
//! answer `k` (plus a divergence byte when a test asks the SVM to differ), and its state is the
//! highest request seen. Checkpoints carry that state from the PVM to the SVM out of band, so
//! the harness can check that an applied checkpoint equals the PVM at its pause.
//!
//! Checkers run on every output, by name: `output_commit`, `atomic_checkpoint`,
//! `single_writer`, `disk_ack_before_completion`, `timeout_armed`; `no_silent_loss` is checked
//! by the tests (every client request answered once faults stop).

#![allow(dead_code)]

pub mod guest;

use colo_core::checkpoint::CheckpointEvent;
use colo_core::checkpoint::{VmCommand, VmCompletion};
use colo_core::disk::GuestIoId;
use colo_core::failover::{Arbiter, LeaseRequest, Mode};
use colo_core::ids::{ClusterId, Epoch, NicId, NodeId, PageRange, Role, Term};

/// The guest NIC the harness's clients use (not 0, so a NIC lost on the way shows).
const CLIENT_NIC: NicId = NicId(1);
use colo_core::node::Node;
use colo_core::node::{
    Command, ConsoleCommand, Event, GuestDiskRequest, HaltReason, Input, NodeConfig, NodeMode,
    OutBulk, Output, PeerBulk, SyncCommand,
};
use colo_core::time::{Duration, Instant};
use colo_core::wire::{Message, PAGE_SIZE, ZeroPages};
use guest::Guest;
use std::collections::{BTreeMap, BTreeSet};

/// A tiny deterministic PRNG (xorshift64*), so the harness needs no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// Knobs of a run.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// One-way peer link delay.
    pub peer_delay: Duration,
    /// Client network delay, plus up to `client_jitter` (which reorders).
    pub client_delay: Duration,
    pub client_jitter: Duration,
    /// Percent of client frames lost (either way).
    pub client_loss: u64,
    /// VM command execution time.
    pub vm_delay: Duration,
    /// Disk command execution time.
    pub disk_delay: Duration,
    /// Arbiter round trip (half each way).
    pub arbiter_delay: Duration,
    /// Client request period and retransmission timeout.
    pub request_every: Duration,
    pub retransmit_after: Duration,
    /// Each request also makes the guest write this block (None: no disk traffic).
    pub disk_writes: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            peer_delay: Duration::from_micros(200),
            client_delay: Duration::from_micros(300),
            client_jitter: Duration::ZERO,
            client_loss: 0,
            vm_delay: Duration::from_micros(500),
            disk_delay: Duration::from_micros(300),
            arbiter_delay: Duration::from_millis(2),
            request_every: Duration::from_millis(10),
            retransmit_after: Duration::from_millis(400),
            disk_writes: false,
        }
    }
}

/// Something scheduled.
#[derive(Clone, Debug)]
enum Action {
    /// Hand `input` to host `h`.
    Deliver(usize, Input),
    /// The arbiter receives host `h`'s request.
    ArbiterReceive(usize, LeaseRequest),
    /// A frame reaches the client.
    ClientReceive(Vec<u8>),
    /// The guest of host `h` runs its pending work.
    GuestRun(usize),
    /// The peer link is back (after `reset_link_for`).
    LinkRestored,
}

/// One host: its node, its fake VM and its record of what happened.
pub struct Host {
    pub node: Node,
    pub alive: bool,
    pub guest: Guest,
    pub events: Vec<Event>,
    pub released: Vec<Vec<u8>>,
    /// Completion time of the last VM command (the runtime executes them in order).
    vm_busy_until: Instant,
    next_io: u64,
    /// Guest writes not yet completed, and those completed.
    pub writes_pending: BTreeSet<u64>,
    pub writes_done: u64,
    /// The terms in which this node claimed the client link (`Output::ClaimClientLink`).
    pub claims: Vec<Term>,
    /// Why the node halted its VM (`Output::Halt`), once it did.
    pub halted: Option<HaltReason>,
    /// The node's orders to its console gate (`Output::Console`), in order.
    pub console: Vec<ConsoleCommand>,
}

/// A release, as the client network saw it.
#[derive(Clone, Debug)]
pub struct Release {
    pub host: usize,
    pub term: Term,
    pub mode: NodeMode,
    pub at: Instant,
    pub frame: Vec<u8>,
}

pub struct Pair {
    pub now: Instant,
    pub hosts: Vec<Host>,
    pub knobs: Knobs,
    pub rng: Rng,
    queue: BTreeMap<(Instant, u64), Action>,
    seq: u64,
    /// Last delivery time per peer-link direction (the link is a TCP stream: FIFO).
    link_fifo: [Instant; 2],
    pub link_cut: bool,
    /// Drop this many of the next peer messages (either way): a link that loses data.
    pub peer_drop: u32,
    /// Deliver the next peer message this much later, out of stream order.
    pub peer_reorder: Option<Duration>,
    pub arbiter: Arbiter,
    pub arbiter_reachable: [bool; 2],
    /// A host whose VM stops completing commands (a hung VMM).
    pub vm_stalled: [bool; 2],
    /// Host the client network delivers to (moved by `ClaimClientLink`).
    pub client_target: usize,
    /// Client: requests sent and when last (re)sent; answers received.
    pub next_request: u64,
    pub unanswered: BTreeMap<u64, Instant>,
    pub answered: BTreeSet<u64>,
    pub requests_enabled: bool,
    next_request_at: Instant,
    pub releases: Vec<Release>,
    /// Checker state: PVM state at each checkpoint's save, per sending host.
    saved_state: BTreeMap<(usize, Epoch), u64>,
    /// Checker state: page batches sent and delivered per (receiving host, epoch).
    batches_sent: BTreeMap<(usize, Epoch), u64>,
    batches_delivered: BTreeMap<(usize, Epoch), u64>,
    /// Epochs each host discarded (never to be applied).
    discarded: BTreeSet<(usize, Epoch)>,
    /// Output commit: frames the secondary sent, and the highest checkpoint received by each
    /// primary, and the covering epoch of each PVM frame.
    secondary_frames: BTreeMap<Vec<u8>, u64>,
    received: [Epoch; 2],
    covering: BTreeMap<Vec<u8>, Epoch>,
    /// Count of applied checkpoints per host.
    pub applied: [u64; 2],
    /// Disk ordering checker: forwarded write id of each guest write, and acks delivered.
    forwarded: BTreeMap<(usize, u64), colo_core::wire::WriteId>,
    acked: BTreeSet<(usize, colo_core::wire::WriteId)>,
}

pub fn config(id: u64) -> NodeConfig {
    let mut c = NodeConfig::new(NodeId(id), ClusterId(42));
    c.guest_memory_bytes = 64 * PAGE_SIZE;
    c.disk.disk_size = 1 << 20;
    c.disk.block_size = 4096;
    c.checkpoint.checkpoint_interval = Duration::from_millis(200);
    c.checkpoint.checkpoint_phase_timeout = Duration::from_millis(600);
    c.compare.compare_timeout = Duration::from_millis(100);
    c
}

impl Pair {
    /// Host 0 primary (node 1), host 1 secondary (node 2), both started.
    pub fn new(seed: u64, knobs: Knobs) -> Pair {
        Pair::with_configs(seed, knobs, config(1), config(2))
    }

    pub fn with_configs(seed: u64, knobs: Knobs, a: NodeConfig, b: NodeConfig) -> Pair {
        let now = Instant::ZERO;
        let hosts = vec![
            Host::new(Node::new(a, Role::Primary, now).unwrap()),
            Host::new(Node::new(b, Role::Secondary, now).unwrap()),
        ];
        let mut p = Pair {
            now,
            hosts,
            knobs,
            rng: Rng::new(seed),
            queue: BTreeMap::new(),
            seq: 0,
            link_fifo: [now; 2],
            link_cut: false,
            peer_drop: 0,
            peer_reorder: None,
            arbiter: Arbiter::new(Duration::from_secs(10), now),
            arbiter_reachable: [true; 2],
            vm_stalled: [false; 2],
            client_target: 0,
            next_request: 0,
            unanswered: BTreeMap::new(),
            answered: BTreeSet::new(),
            requests_enabled: false,
            next_request_at: now,
            releases: Vec::new(),
            saved_state: BTreeMap::new(),
            batches_sent: BTreeMap::new(),
            batches_delivered: BTreeMap::new(),
            discarded: BTreeSet::new(),
            secondary_frames: BTreeMap::new(),
            received: [Epoch(0); 2],
            covering: BTreeMap::new(),
            applied: [0; 2],
            forwarded: BTreeMap::new(),
            acked: BTreeSet::new(),
        };
        p.input(0, Input::Command(Command::Start));
        p.input(0, Input::PeerLink(colo_core::node::LinkState::Up));
        p.input(1, Input::Command(Command::Start));
        p.input(1, Input::PeerLink(colo_core::node::LinkState::Up));
        p
    }

    fn schedule(&mut self, at: Instant, action: Action) {
        self.seq += 1;
        self.queue.insert((at, self.seq), action);
    }

    /// Hands `input` to host `h` now and processes its outputs.
    pub fn input(&mut self, h: usize, input: Input) {
        if !self.hosts[h].alive {
            return;
        }
        if let Input::Peer { message, .. } = &input {
            self.observe_delivery(h, message);
        }
        let now = self.now;
        self.hosts[h].node.handle(now, input);
        self.drain(h);
    }

    fn observe_delivery(&mut self, h: usize, m: &Message) {
        match m {
            Message::PageBatch { epoch, .. } => {
                *self.batches_delivered.entry((h, *epoch)).or_default() += 1;
            }
            Message::CheckpointReceived { epoch } => {
                self.received[h] = self.received[h].max(*epoch);
            }
            Message::DiskAck { write_id, .. } => {
                self.acked.insert((h, *write_id));
            }
            _ => {}
        }
    }

    fn other(h: usize) -> usize {
        1 - h
    }

    fn send_peer(&mut self, from: usize, message: Message, bulk: PeerBulk) {
        if self.link_cut || !self.hosts[Self::other(from)].alive {
            return;
        }
        if self.peer_drop > 0 {
            self.peer_drop -= 1;
            return;
        }
        if let Some(extra) = self.peer_reorder.take() {
            let at = self.now + self.knobs.peer_delay + extra;
            let to = Self::other(from);
            self.schedule(at, Action::Deliver(to, Input::Peer { message, bulk }));
            return;
        }
        let at = (self.now + self.knobs.peer_delay).max(self.link_fifo[from]);
        self.link_fifo[from] = at;
        self.schedule(
            at,
            Action::Deliver(Self::other(from), Input::Peer { message, bulk }),
        );
    }

    fn client_net_delay(&mut self) -> Option<Instant> {
        if self.rng.chance(self.knobs.client_loss) {
            return None;
        }
        let jitter = self.knobs.client_jitter.as_micros() as u64;
        let j = Duration::from_micros(self.rng.below(jitter + 1));
        Some(self.now + self.knobs.client_delay + j)
    }

    /// Drains host `h`'s outputs, executing each as a runtime would, and runs the checkers.
    fn drain(&mut self, h: usize) {
        while let Some(o) = self.hosts[h].node.poll_output() {
            self.execute(h, o);
        }
        // timeout_armed: a node that waits on time must say when.
        let st = self.hosts[h].node.status(self.now);
        let waits_on_time = match st.mode {
            NodeMode::TakingOver | NodeMode::Syncing => true,
            // Paired after the handshake: heartbeats and checkpoint steps have deadlines.
            NodeMode::Paired => st.peer_id.is_some(),
            NodeMode::Connecting => !self.hosts[h].node.is_primary_side(),
            _ => false,
        };
        if waits_on_time {
            assert!(
                self.hosts[h].node.poll_timeout().is_some(),
                "timeout_armed: host {h} in {:?} has no deadline",
                st.mode
            );
        }
    }

    fn execute(&mut self, h: usize, o: Output) {
        let now = self.now;
        match o {
            Output::ToClient(frame) => self.on_release(h, frame),
            // The harness's guests speak UDP: a TCP window update cannot come up.
            Output::WindowUpdate(_) => panic!("host {h}: a window update without TCP"),
            Output::ToGuest { nic, frame } => {
                // Every client frame comes in on CLIENT_NIC: whichever way it reached this
                // guest (direct, mirrored, or from a secondary's backlog), it keeps that NIC.
                assert_eq!(
                    nic, CLIENT_NIC,
                    "host {h} got a client frame on another NIC"
                );
                self.hosts[h].guest.deliver(frame);
                self.schedule(now, Action::GuestRun(h));
            }
            Output::ToPeer { message, bulk } => {
                if let (Message::DiskWrite { write_id, .. }, OutBulk::GuestWrite(io)) =
                    (&message, &bulk)
                {
                    self.forwarded.insert((h, io.0), *write_id);
                }
                if let Message::SecondaryOutput { .. } = message
                    && let OutBulk::Frame(f) = &bulk
                {
                    *self.secondary_frames.entry(f.clone()).or_default() += 1;
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
                self.send_peer(h, message, bulk);
            }
            Output::Vm(cmd) => self.vm_command(h, cmd),
            Output::Disk(cmd) => {
                let op = cmd.op();
                let at = now + self.knobs.disk_delay;
                self.schedule(
                    at,
                    Action::Deliver(h, Input::DiskDone { op, result: Ok(()) }),
                );
            }
            Output::GuestDiskDone { io, result } => {
                assert!(result.is_ok(), "guest io {io:?} failed: {result:?}");
                // disk_ack_before_completion: a forwarded write completes to a paired
                // primary's guest only after the secondary acknowledged it.
                let paired = self.hosts[h].node.status(now).mode == NodeMode::Paired;
                if paired && let Some(w) = self.forwarded.get(&(h, io.0)) {
                    assert!(
                        self.acked.contains(&(h, *w)),
                        "disk_ack_before_completion: host {h} completed {io:?} before its ack"
                    );
                }
                if self.hosts[h].writes_pending.remove(&io.0) {
                    self.hosts[h].writes_done += 1;
                }
            }
            Output::Sync(SyncCommand::SendAll { term }) => {
                // A mostly-empty guest: only its first 8 pages hold data, the zero ones are
                // counted as copied memory without bulk.
                let (mem_pages, data_pages) = (64, 8);
                self.send_peer(
                    h,
                    Message::SyncPages {
                        term,
                        batch: 0,
                        ranges: vec![PageRange {
                            first: 0,
                            count: mem_pages,
                        }],
                        zero: ZeroPages::from_flags((0..mem_pages).map(|i| i >= data_pages)),
                    },
                    PeerBulk::Stored {
                        len: data_pages * PAGE_SIZE,
                    },
                );
                self.send_peer(
                    h,
                    Message::SyncDisk {
                        term,
                        offset: 0,
                        len: 1 << 20,
                    },
                    PeerBulk::Stored { len: 1 << 20 },
                );
                // The copy of the guest's state: the secondary's guest becomes the primary's.
                let state = self.hosts[h].guest.state;
                self.hosts[Self::other(h)].guest.state = state;
                let at = now + Duration::from_millis(5);
                self.schedule(
                    at,
                    Action::Deliver(
                        h,
                        Input::SyncSent {
                            memory_bytes: mem_pages * PAGE_SIZE,
                            disk_bytes: 1 << 20,
                        },
                    ),
                );
            }
            Output::Arbiter(req) => {
                if self.arbiter_reachable[h] {
                    let at = now + self.knobs.arbiter_delay / 2;
                    self.schedule(at, Action::ArbiterReceive(h, req));
                }
            }
            Output::Console(command) => self.hosts[h].console.push(command),
            Output::ClaimClientLink { term } => {
                self.client_target = h;
                self.hosts[h].claims.push(term);
            }
            // This harness scripts the link by hand (`reset_link_for`, `replace_with_secondary`);
            // the orders are executed by the runtime and colo-sim, whose tests cover them.
            Output::Link(_) => {}
            Output::Halt(reason) => {
                assert!(
                    self.hosts[h].halted.is_none(),
                    "host {h} halted twice ({reason:?})"
                );
                self.hosts[h].halted = Some(reason);
            }
            Output::Event(e) => {
                if let Event::Checkpoint(CheckpointEvent::CheckpointApplied { .. }) = &e {
                    self.applied[h] += 1;
                }
                self.hosts[h].events.push(e);
            }
        }
    }

    fn on_release(&mut self, h: usize, frame: Vec<u8>) {
        let st = self.hosts[h].node.status(self.now);
        // single_writer (part 1): only a paired primary or a lease-holding solo node releases.
        match st.mode {
            NodeMode::Paired => {
                assert_eq!(
                    st.role,
                    Role::Primary,
                    "single_writer: a paired secondary released"
                );
                // output_commit: matched by the secondary, or covered by a received checkpoint.
                let matched = self.secondary_frames.get(&frame).is_some_and(|n| *n > 0);
                let covered = self
                    .covering
                    .get(&frame)
                    .is_some_and(|e| *e <= self.received[h]);
                assert!(
                    matched || covered,
                    "output_commit: host {h} released a frame neither matched nor covered \
                     (covering {:?}, received {:?})",
                    self.covering.get(&frame),
                    self.received[h]
                );
                if matched {
                    *self.secondary_frames.get_mut(&frame).unwrap() -= 1;
                }
            }
            NodeMode::Solo | NodeMode::Reprotecting => {
                assert!(
                    st.lease_held,
                    "single_writer: host {h} released solo without its lease"
                );
            }
            other => panic!("single_writer: host {h} released in mode {other:?}"),
        }
        // single_writer (part 2): no two hosts release in the same term.
        for r in &self.releases {
            assert!(
                r.term != st.term || r.host == h,
                "single_writer: hosts {} and {h} both released in {:?}",
                r.host,
                st.term
            );
        }
        self.releases.push(Release {
            host: h,
            term: st.term,
            mode: st.mode,
            at: self.now,
            frame: frame.clone(),
        });
        self.hosts[h].released.push(frame.clone());
        if let Some(at) = self.client_net_delay() {
            self.schedule(at, Action::ClientReceive(frame));
        }
    }

    fn vm_command(&mut self, h: usize, cmd: VmCommand) {
        if self.vm_stalled[h] {
            return;
        }
        let start = self.now.max(self.hosts[h].vm_busy_until);
        let done_at = start + self.knobs.vm_delay;
        self.hosts[h].vm_busy_until = done_at;
        let other = Self::other(h);
        let completion = match cmd {
            VmCommand::Pause => {
                self.hosts[h].guest.paused = true;
                VmCompletion::Paused
            }
            VmCommand::Resume => {
                self.hosts[h].guest.paused = false;
                self.schedule(done_at, Action::GuestRun(h));
                VmCompletion::Resumed
            }
            VmCommand::CollectDirty { epoch } => {
                let n = 1 + self.rng.below(8);
                VmCompletion::DirtyCollected {
                    epoch,
                    ranges: vec![PageRange {
                        first: self.rng.below(32),
                        count: n,
                    }],
                }
            }
            VmCommand::SendPages { epoch, ranges } => {
                let pages: u64 = ranges.iter().map(|r| r.count).sum();
                self.send_peer(
                    h,
                    Message::PageBatch {
                        epoch,
                        batch: 0,
                        ranges,
                        zero: ZeroPages::none(pages),
                    },
                    PeerBulk::Stored {
                        len: pages * PAGE_SIZE,
                    },
                );
                *self.batches_sent.entry((other, epoch)).or_default() += 1;
                VmCompletion::PagesSent {
                    epoch,
                    batches: 1,
                    pages,
                    bytes: pages * PAGE_SIZE,
                }
            }
            VmCommand::SaveDeviceState { epoch } => {
                let state = self.hosts[h].guest.state;
                self.saved_state.insert((h, epoch), state);
                self.send_peer(
                    h,
                    Message::DeviceState { epoch },
                    PeerBulk::Stored { len: 512 },
                );
                VmCompletion::DeviceStateSent { epoch, bytes: 512 }
            }
            VmCommand::ApplyCheckpoint { epoch } => {
                // atomic_checkpoint: everything of the epoch arrived, and it was not discarded.
                let sent = self.batches_sent.get(&(h, epoch)).copied().unwrap_or(0);
                let got = self
                    .batches_delivered
                    .get(&(h, epoch))
                    .copied()
                    .unwrap_or(0);
                assert!(
                    sent > 0 && sent == got,
                    "atomic_checkpoint: host {h} applies {epoch:?} with {got}/{sent} batches"
                );
                assert!(
                    !self.discarded.contains(&(h, epoch)),
                    "atomic_checkpoint: applying discarded {epoch:?}"
                );
                let state = self
                    .saved_state
                    .get(&(other, epoch))
                    .copied()
                    .expect("atomic_checkpoint: applying an epoch the primary never saved");
                // state equality: the SVM becomes the PVM at the pause.
                self.hosts[h].guest.state = state;
                VmCompletion::Applied { epoch }
            }
            VmCommand::DiscardPartial { epoch } => {
                self.discarded.insert((h, epoch));
                VmCompletion::Discarded { epoch }
            }
        };
        self.schedule(done_at, Action::Deliver(h, Input::VmDone(completion)));
    }

    /// The guest of host `h` processes what it was given (if running).
    fn guest_run(&mut self, h: usize) {
        if !self.hosts[h].alive || self.hosts[h].guest.paused {
            return;
        }
        let outputs = self.hosts[h].guest.run();
        for (k, frame) in outputs {
            if self.hosts[h].node.is_primary_side() {
                // Output commit checker: the first checkpoint covering this frame. A frame
                // produced while not replicating is released solo (checked by the lease rule)
                // or, after a re-protection, only at a checkpoint receipt: any epoch covers it.
                let cover = self.hosts[h]
                    .node
                    .primary_checkpointer()
                    .filter(|c| c.phase() != colo_core::checkpoint::PrimaryPhase::Solo)
                    .map_or(Epoch(0), |c| c.epoch());
                self.covering.entry(frame.clone()).or_insert(cover);
            }
            self.input(h, Input::GuestFrame(frame));
            if self.knobs.disk_writes {
                let io = self.hosts[h].next_io;
                self.hosts[h].next_io += 1;
                self.hosts[h].writes_pending.insert(io);
                let offset = (k % 64) * 4096;
                self.input(
                    h,
                    Input::GuestDisk(GuestDiskRequest::Write {
                        io: GuestIoId(io),
                        offset,
                        len: 4096,
                    }),
                );
            }
        }
    }

    fn client_tick(&mut self) {
        if !self.requests_enabled {
            return;
        }
        let now = self.now;
        let mut due: Vec<u64> = Vec::new();
        if now >= self.next_request_at {
            let k = self.next_request;
            self.next_request += 1;
            self.next_request_at = now + self.knobs.request_every;
            due.push(k);
        }
        for (k, at) in &self.unanswered {
            if now >= *at + self.knobs.retransmit_after {
                due.push(*k);
            }
        }
        for k in due {
            self.unanswered.insert(k, now);
            if let Some(at) = self.client_net_delay() {
                let target = self.client_target;
                self.schedule(
                    at,
                    Action::Deliver(
                        target,
                        Input::ClientFrame {
                            nic: CLIENT_NIC,
                            frame: guest::request(k),
                        },
                    ),
                );
            }
        }
    }

    fn next_client_tick(&self) -> Option<Instant> {
        if !self.requests_enabled {
            return None;
        }
        let retx = self
            .unanswered
            .values()
            .map(|t| *t + self.knobs.retransmit_after)
            .min();
        Some(retx.map_or(self.next_request_at, |r| r.min(self.next_request_at)))
    }

    /// Runs the virtual world until `end`.
    pub fn run_until(&mut self, end: Instant) {
        loop {
            let mut next = self.queue.keys().next().map(|(t, _)| *t);
            for h in 0..2 {
                if self.hosts[h].alive
                    && let Some(t) = self.hosts[h].node.poll_timeout()
                {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
            if let Some(t) = self.next_client_tick() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            let Some(t) = next else { break };
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            if let Some((&key, _)) = self.queue.iter().next()
                && key.0 <= self.now
            {
                let action = self.queue.remove(&key).unwrap();
                self.act(action);
                continue;
            }
            for h in 0..2 {
                if self.hosts[h].alive
                    && self.hosts[h]
                        .node
                        .poll_timeout()
                        .is_some_and(|d| d <= self.now)
                {
                    self.input(h, Input::Timeout);
                }
            }
            self.client_tick();
        }
        self.now = self.now.max(end);
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Deliver(h, input) => self.input(h, input),
            Action::LinkRestored => {
                self.link_cut = false;
                self.link_fifo = [self.now; 2];
                for h in 0..2 {
                    self.input(h, Input::PeerLink(colo_core::node::LinkState::Up));
                }
            }
            Action::ArbiterReceive(h, req) => {
                let reply =
                    self.arbiter
                        .handle_request(self.now, req.term, req.node_id, req.duration);
                if self.arbiter_reachable[h] {
                    let at = self.now + self.knobs.arbiter_delay / 2;
                    self.schedule(at, Action::Deliver(h, Input::Arbiter { id: req.id, reply }));
                }
            }
            Action::ClientReceive(frame) => {
                if let Some(k) = guest::answer_of(&frame) {
                    self.unanswered.remove(&k);
                    self.answered.insert(k);
                }
            }
            Action::GuestRun(h) => self.guest_run(h),
        }
    }

    /// Host `h` crashes: it never acts again.
    /// The peer connection breaks and a new one is made `down` later (a TCP reset and a
    /// reconnection, shorter than the heartbeat's detection): every peer message in flight or
    /// sent meanwhile is lost, and both nodes see the link go down and come back.
    pub fn reset_link_for(&mut self, down: Duration) {
        self.queue
            .retain(|_, a| !matches!(a, Action::Deliver(_, Input::Peer { .. })));
        self.link_cut = true;
        for h in 0..2 {
            self.input(h, Input::PeerLink(colo_core::node::LinkState::Down));
        }
        self.schedule(self.now + down, Action::LinkRestored);
    }

    pub fn crash(&mut self, h: usize) {
        self.hosts[h].alive = false;
    }

    /// Runs until host `h`'s events contain one matching `pred`, or `limit` passes.
    pub fn run_until_event(
        &mut self,
        h: usize,
        limit: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> bool {
        let end = self.now + limit;
        let step = Duration::from_micros(100);
        while self.now < end {
            if self.hosts[h].events.iter().any(&pred) {
                return true;
            }
            let t = self.now + step;
            self.run_until(t);
        }
        self.hosts[h].events.iter().any(&pred)
    }

    pub fn mode(&self, h: usize) -> NodeMode {
        self.hosts[h].node.status(self.now).mode
    }

    pub fn count_events(&self, h: usize, pred: impl Fn(&Event) -> bool) -> usize {
        self.hosts[h].events.iter().filter(|e| pred(e)).count()
    }

    /// Replace crashed host `h` by a fresh secondary node `id` and start it.
    pub fn replace_with_secondary(&mut self, h: usize, id: u64) {
        let node = Node::new(config(id), Role::Secondary, self.now).unwrap();
        self.hosts[h] = Host::new(node);
        self.link_fifo = [self.now; 2];
        self.input(h, Input::PeerLink(colo_core::node::LinkState::Up));
        self.input(h, Input::Command(Command::Start));
    }

    /// A one-screen account of the run, for failure messages.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (h, host) in self.hosts.iter().enumerate() {
            let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
            for e in &host.events {
                let d = format!("{e:?}");
                let k = d.split([' ', '{', '(']).next().unwrap_or("").to_string();
                *kinds.entry(k).or_default() += 1;
            }
            s += &format!(
                "host {h} alive={} status={:?}\n  events {kinds:?}\n  stats {:?}\n",
                host.alive,
                host.node.status(self.now),
                host.node.stats()
            );
        }
        s += &format!(
            "client answered {} unanswered {}\n",
            self.answered.len(),
            self.unanswered.len()
        );
        s
    }

    pub fn failover_mode(&self, h: usize) -> Mode {
        self.hosts[h].node.failover().mode()
    }
}

impl Host {
    fn new(node: Node) -> Host {
        Host {
            node,
            alive: true,
            guest: Guest::new(),
            events: Vec::new(),
            released: Vec::new(),
            vm_busy_until: Instant::ZERO,
            next_io: 1,
            writes_pending: BTreeSet::new(),
            writes_done: 0,
            claims: Vec::new(),
            console: Vec::new(),
            halted: None,
        }
    }
}
