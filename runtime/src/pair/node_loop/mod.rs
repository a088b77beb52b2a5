//! The node loop: one thread owning a `colo_core::node::Node` and the [`Machine`] it protects,
//! feeding the node time, peer frames, timeouts, VM completions and arbiter replies, and
//! executing its outputs (node/mod.rs "The contract").
//!
//! Threads: this loop; the peer reader ([`crate::pair::peer::PeerReader`]); the acceptors (a
//! primary's `--listen`, a secondary's takeover address) and the dialler the node orders
//! (`link.rs`), which authenticate each connection with the pair key before posting it (`crate::pair::peer::auth`; a connection that fails is never seen here); the arbiter
//! client. The others only post [`LoopEvent`]s into
//! one channel, so the node and the VM are touched by this thread alone; the one shared object
//! is the secondary's RAM cache, into which the reader stores page bulk before posting the
//! message (see `vm.rs`). Every event of a peer link carries the link's generation, so a late
//! event of a dead link is ignored.
//!
//! Invariants: after every `handle` the outputs are drained and executed in order before the
//! next input (VM completions are queued as inputs, never handled re-entrantly); time fed to
//! the node is one monotonic clock ([`MonoClock`]); an output the runtime cannot execute
//! (a disk command on a node without a disk) is logged as an error, never dropped silently.
//! The peer link (the node's link orders, accept or dial, the reader, up and down, send) is
//! `link.rs`; executing each
//! output is `exec.rs`. Guest network frames are routed by `frames.rs` (client tap,
//! virtio-net, the node); guest disk requests, disk commands and forwarded writes by `disk.rs`
//! (virtio-blk, the files).
//!
//! Log events (stderr, `crate::logging`) read `<role>: <what> key=value ...`, one per
//! milestone, written by `log.rs`; `colo demo` and the tests parse them (names listed in
//! docs/operations.md).

mod control;
mod disk;
mod disk_routing;
mod drain;
mod exec;
mod frames;
pub mod hops;
mod link;
mod liveness;
mod log;
mod metrics;
mod timeline;
mod vm;

pub use disk::{BlkBridge, DiskFiles, DiskLoopStats};
pub use frames::{ClientLink, FrameStats, NetConfig};
pub use vm::{SharedCache, VmExecutor};

use disk::GuestDisk;
use frames::GuestNet;
use link::spawn_acceptor;

use crate::pair::arbiter::ArbiterClient;
use crate::pair::clock::MonoClock;
use crate::pair::peer::PeerWriter;
use crate::pair::peer::auth::{AuthedLink, PairKey};
use crate::pair::progress::SyncProgress;
use crate::vmm::machine::Machine;
use colo_core::failover::{LeaseReply, LeaseRequestId};
use colo_core::ids::{ClusterId, NodeId, Role};
use colo_core::node::{Command, Input, Node, NodeConfig, PeerBulk};
use colo_core::time::Duration;
use colo_core::wire::Message;
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::mpsc;
use tracing::info;

/// How this node reaches its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEndpoint {
    /// Primary: accept the secondary's connection here.
    Listen(SocketAddr),
    /// Secondary: connect to the primary here, whenever the node orders a dial.
    Connect(SocketAddr),
}

/// A replicated node's settings.
#[derive(Clone, Debug)]
pub struct NodeLoopConfig {
    /// The colo-core node configuration (identity, timing).
    pub node: NodeConfig,
    /// Primary or secondary.
    pub role: Role,
    /// The peer link.
    pub peer: PeerEndpoint,
    /// The arbiter.
    pub arbiter: SocketAddr,
    /// The pair key: the peer link and the arbiter's are authenticated with it.
    pub key: PairKey,
    /// Working-set pages of the counter workload, to log the guest's step (0: do not).
    pub workload_pages: u64,
    /// Log a memory digest at every checkpoint (costs one pass over guest memory per pause).
    pub digests: bool,
    /// How often a running guest's step is logged.
    pub report_every: Duration,
    /// Stop after this long (None: run until deposed, stopped or killed).
    pub run_for: Option<Duration>,
    /// The control socket (None: no control socket).
    pub control: Option<PathBuf>,
    /// A secondary's address for newcomers once it survives a failover (a primary accepts
    /// on its peer address already).
    pub newcomer_listen: Option<SocketAddr>,
    /// Arm re-protection whenever the node runs solo (default off: an operator's decision,
    /// as in QEMU).
    pub auto_reprotect: bool,
    /// The client link (none: guest frames for clients are counted and dropped).
    pub net: NetConfig,
    /// The guest's disks, one virtio-blk device each, in device order (none: the one
    /// virtio-blk device has no medium). The core replicates them as one block space.
    pub disks: Vec<DiskFiles>,
    /// Where to serve Prometheus metrics (none: not served; the loop keeps them anyway).
    pub metrics_listen: Option<SocketAddr>,
}

impl NodeLoopConfig {
    /// Defaults for node `id` of cluster 1 in `role` (heartbeat 100 ms x 5, checkpoint every
    /// 500 ms: the demo's pace).
    pub fn new(
        role: Role,
        id: u64,
        peer: PeerEndpoint,
        arbiter: SocketAddr,
        key: PairKey,
    ) -> NodeLoopConfig {
        let mut node = NodeConfig::new(NodeId(id), ClusterId(1));
        node.checkpoint.checkpoint_interval = Duration::from_millis(500);
        NodeLoopConfig {
            node,
            role,
            peer,
            arbiter,
            key,
            workload_pages: 0,
            digests: false,
            report_every: Duration::from_millis(250),
            run_for: None,
            control: None,
            newcomer_listen: None,
            auto_reprotect: false,
            net: NetConfig::default(),
            disks: Vec::new(),
            metrics_listen: None,
        }
    }
}

/// Something another thread tells the loop.
#[derive(Debug)]
pub enum LoopEvent {
    /// A peer connected to the primary's `--listen` address and authenticated.
    Connected(AuthedLink),
    /// A frame of peer link `link`; page bulk is already in the RAM cache
    /// ([`PeerBulk::Stored`]), other bulk is carried as [`PeerBulk::Frame`].
    Peer {
        /// The link generation.
        link: u64,
        /// The message.
        message: Message,
        /// Its bulk.
        bulk: PeerBulk,
    },
    /// Peer link `link` ended (or its reader refused a frame), for this reason.
    PeerDown {
        /// The link generation.
        link: u64,
        /// Why, readable.
        why: String,
        /// The peer's end closed it (`LinkClosed::closed_by_peer`).
        closed_by_peer: bool,
    },
    /// The guest sent a frame (posted by the virtio-net sink on a vCPU thread).
    GuestFrame(Vec<u8>),
    /// A frame arrived on the client tap of guest NIC `nic`.
    ClientFrame {
        /// The NIC whose tap it came in on.
        nic: colo_core::ids::NicId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// The arbiter answered.
    Arbiter {
        /// The request.
        id: LeaseRequestId,
        /// The answer.
        reply: LeaseReply,
    },
    /// An operator's request from the control socket.
    Control(crate::pair::control::ControlCall),
    /// A newcomer connected to a secondary's takeover address.
    Newcomer(AuthedLink),
    /// Dial `dial` (a generation of the node's `Dial` orders) got through and authenticated.
    Dialled {
        /// The dial's generation.
        dial: u64,
        /// The connection.
        link: AuthedLink,
    },
    /// An attempt of dial `dial` was refused: nothing listens at the peer's address.
    DialRefused {
        /// The dial's generation.
        dial: u64,
    },
    /// The guest's virtio-blk device submitted a request (posted by [`BlkBridge`] on a vCPU
    /// thread), in VM generation `generation`.
    GuestBlk {
        /// Which block device (index in the VM's device order).
        disk: usize,
        /// The VM generation at submission.
        generation: u64,
        /// The request.
        request: crate::vmm::devices::virtio::blk::BlkRequest,
    },
}

/// How the loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoopEnd {
    /// `run_for` elapsed.
    TimeUp,
    /// The node stopped on a shutdown.
    Stopped,
    /// The node's own VM failed while paired: it left the pair (its peer takes over) and
    /// stopped; the process should exit with a failure so that a supervisor restarts it.
    VmFailed,
    /// The node was fenced off; its VM is paused for good.
    Deposed,
    /// The peer refused this node for good at the handshake (it describes another VM, or
    /// belongs to another pair); the text says why and what to compare.
    Refused(String),
}

/// Errors that end the loop.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The node configuration was refused.
    #[error("node configuration: {0}")]
    Config(#[from] colo_core::node::NodeConfigError),
    /// The peer endpoint (or another of the node's endpoints) cannot be used.
    #[error("{0}")]
    Endpoint(String),
    /// The peer listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A client tap cannot be opened or read.
    #[error("client tap {name}: {source}")]
    Tap {
        /// The tap.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The replicated disk's images cannot be opened.
    #[error(transparent)]
    Disk(#[from] crate::vmm::disk::ImageError),
    /// The control socket cannot be served.
    #[error(transparent)]
    Control(#[from] crate::pair::control::ControlServerError),
    /// The metrics endpoint cannot be served.
    #[error(transparent)]
    Metrics(#[from] crate::pair::metrics::MetricsServeError),
    /// The arbiter client's thread cannot be started.
    #[error("cannot start the arbiter client: {0}")]
    ArbiterClient(std::io::Error),
    /// A vCPU stopped (guest exit or fault): a protected guest must not stop on its own.
    #[error("vCPU {vcpu} stopped: {why}")]
    GuestStopped {
        /// The vCPU.
        vcpu: u64,
        /// Why.
        why: String,
    },
}

/// The running node.
pub struct NodeLoop {
    node: Node,
    machine: Machine,
    exec: VmExecutor,
    config: NodeLoopConfig,
    clock: MonoClock,
    tx: mpsc::Sender<LoopEvent>,
    rx: mpsc::Receiver<LoopEvent>,
    writer: Option<PeerWriter>,
    /// The dial the node ordered, while it runs (`link.rs`).
    dialing: Option<link::Dialing>,
    /// Dials started so far (each dial's generation).
    dials: u64,
    /// The node accepts inbound peer connections (its last `LinkCommand::Accept`).
    accepting: bool,
    /// Bytes arriving on the peer link before a whole frame has (`liveness.rs`).
    peer_watch: Option<liveness::PeerSocketWatch>,
    link: u64,
    arbiter: ArbiterClient,
    pending: VecDeque<Input>,
    end: Option<LoopEnd>,
    ctl: control::LoopControl,
    name: &'static str,
    dropped_while_down: u64,
    net: GuestNet,
    disk: Option<GuestDisk>,
    /// Events taken from the channel out of turn (see `drain_guest_frames`), handled first.
    deferred: VecDeque<LoopEvent>,
    reports: u64,
    /// A pause's completion held until no block request is in flight (`drain.rs`).
    drain: Option<drain::PauseDrain>,
    /// The Prometheus metrics (`metrics.rs`).
    metrics: metrics::LoopMetrics,
    /// Secondary: the initial copy being received (from `SyncStarted` to the first apply).
    receiving: Option<SyncProgress>,
    /// The checkpoint messages of the epoch in progress, timed (`timeline.rs`).
    timeline: timeline::CheckpointTimeline,
}

impl std::fmt::Debug for NodeLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLoop")
            .field("role", &self.config.role)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl NodeLoop {
    /// Builds the node around `machine` (paused; a primary's holds the loaded guest, a
    /// secondary's is empty until the first checkpoint) and opens the peer endpoint: a
    /// primary binds its listener here, so a busy port is reported before anything runs.
    pub fn new(mut config: NodeLoopConfig, machine: Machine) -> Result<NodeLoop, LoopError> {
        config.node.guest_memory_bytes = machine.mem_bytes();
        if !config.disks.is_empty() {
            config.node.disk.disk_size = config.disks.iter().map(|d| d.size).sum();
        }
        if config.disks.len() > machine.blks().len() {
            return Err(LoopError::Endpoint(format!(
                "{} disks for a VM with {} block devices",
                config.disks.len(),
                machine.blks().len()
            )));
        }
        let clock = MonoClock::start();
        let node = Node::new(config.node.clone(), config.role, clock.now())?;
        let (tx, rx) = mpsc::channel();
        // The guest's console goes to stdout, whole lines only (a reader may merge it with the
        // log lines on stderr). A
        // secondary's guest output is speculative until it takes over (devices/gate.rs).
        let gate = machine.output_gate();
        gate.set_whole_lines(true);
        if config.role == Role::Secondary {
            gate.hold();
        }
        let net = GuestNet::new(&config.net, &machine, tx.clone())?;
        let disk = GuestDisk::for_loop(&config, &machine, tx.clone())?;
        let name = match config.role {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        };
        match config.peer {
            PeerEndpoint::Listen(addr) => {
                let listener =
                    TcpListener::bind(addr).map_err(|source| LoopError::Bind { addr, source })?;
                spawn_acceptor(listener, config.key.clone(), name, tx.clone())?;
            }
            // The secondary dials when its node orders it (at its start).
            PeerEndpoint::Connect(_) => {}
        }
        let newcomers = match (config.peer, config.newcomer_listen) {
            (PeerEndpoint::Listen(addr), _) => Some(addr),
            (PeerEndpoint::Connect(_), Some(addr)) => {
                control::spawn_newcomer_acceptor(addr, config.key.clone(), name, tx.clone())
                    .map_err(LoopError::Endpoint)?;
                Some(addr)
            }
            (PeerEndpoint::Connect(_), None) if config.auto_reprotect => {
                return Err(LoopError::Endpoint(
                    "--auto-reprotect on a secondary needs --listen (where newcomers connect)"
                        .to_string(),
                ));
            }
            (PeerEndpoint::Connect(_), None) => None,
        };
        let mut ctl = control::LoopControl::new(config.auto_reprotect, newcomers);
        if let Some(path) = &config.control {
            let control_tx = tx.clone();
            let server = crate::pair::control::ControlServer::bind(path, move |call| {
                control_tx.send(LoopEvent::Control(call)).is_ok()
            })?;
            ctl.server = Some(server);
        }
        let arbiter_tx = tx.clone();
        let arbiter = ArbiterClient::spawn(
            config.arbiter,
            config.node.lease.lease_request_timeout,
            config.key.clone(),
            move |id, reply| {
                let _ = arbiter_tx.send(LoopEvent::Arbiter { id, reply });
            },
        )
        .map_err(LoopError::ArbiterClient)?;
        let metrics = metrics::LoopMetrics::new(name, config.metrics_listen)?;
        Ok(NodeLoop {
            node,
            machine,
            exec: VmExecutor::new(config.node.guest_memory_bytes, config.role == Role::Primary),
            config,
            clock,
            tx,
            rx,
            writer: None,
            dialing: None,
            dials: 0,
            accepting: false,
            peer_watch: None,
            link: 0,
            arbiter,
            pending: VecDeque::new(),
            end: None,
            ctl,
            name,
            dropped_while_down: 0,
            net,
            disk,
            deferred: VecDeque::new(),
            reports: 0,
            drain: None,
            metrics,
            receiving: None,
            timeline: timeline::CheckpointTimeline::default(),
        })
    }

    /// Runs until `run_for` elapses, the node stops or is deposed, or the guest stops.
    pub fn run(mut self) -> Result<LoopEnd, LoopError> {
        let started = self.clock.now();
        let mut next_report = started + self.config.report_every;
        self.input(Input::Command(Command::Start));
        loop {
            if let Some((vcpu, why)) = self.machine.wait_for_stop(Duration::ZERO) {
                self.machine.pause();
                return Err(LoopError::GuestStopped {
                    vcpu,
                    why: format!("{why:?}"),
                });
            }
            if let Some(end) = self.end {
                return Ok(end);
            }
            let now = self.clock.now();
            if self.config.run_for.is_some_and(|d| now >= started + d) {
                self.input(Input::Command(Command::Shutdown));
                self.machine.pause();
                return Ok(LoopEnd::TimeUp);
            }
            if now >= next_report {
                next_report = now + self.config.report_every;
                self.report(now);
            }
            self.mirror_metrics(now);
            let mut wake = next_report.min(now + Duration::from_millis(50));
            if let Some(t) = self.node.poll_timeout() {
                wake = wake.min(t);
            }
            if let Some(t) = self.drain_deadline() {
                wake = wake.min(t);
            }
            let wait = wake.saturating_duration_since(now);
            while let Some(event) = self.deferred.pop_front() {
                self.on_event(event);
            }
            match self.rx.recv_timeout(wait) {
                Ok(event) => self.on_event(event),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    unreachable!("the loop holds a sender")
                }
            }
            // Everything that arrived while the loop was busy (a long apply, the initial copy)
            // happened before the timeout about to be checked: hand it in first, or the
            // heartbeat would count a peer silent whose heartbeats are merely queued.
            while let Ok(event) = self.rx.try_recv() {
                self.on_event(event);
            }
            if self
                .peer_watch
                .as_mut()
                .is_some_and(liveness::PeerSocketWatch::bytes_arrived)
            {
                self.input(Input::PeerActivity);
            }
            if let Some(input) = self.poll_drain() {
                self.input(input);
            }
            if self
                .node
                .poll_timeout()
                .is_some_and(|t| t <= self.clock.now())
            {
                self.input(Input::Timeout);
            }
        }
    }

    /// Hands one input to the node, then drains outputs and queued inputs to quiescence.
    fn input(&mut self, input: Input) {
        self.pending.push_back(input);
        loop {
            while let Some(input) = self.pending.pop_front() {
                self.node.handle(self.clock.now(), input);
                while let Some(output) = self.node.poll_output() {
                    self.execute(output);
                }
            }
            // A held pause whose last block request just completed goes in now.
            match self.poll_drain() {
                Some(input) => self.pending.push_back(input),
                None => break,
            }
        }
        self.ctl_after_input();
        // Frames for the guest held while it was paused go in once it runs again.
        self.net.flush(&self.machine);
    }

    /// After a pause: the frames the guest sent before it are in the channel (the sink posts
    /// them during the MMIO exit, which the pause completes); they are handed to the node
    /// before the pause's completion, so they belong to the epoch that produced them and not
    /// to the next (where the restored secondary would never send them: a needless compare
    /// timeout). Other events keep their order in `deferred`.
    fn drain_guest_frames(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            match event {
                LoopEvent::GuestFrame(frame) if self.deferred.is_empty() => {
                    hops::mark("loop_guest", &frame);
                    self.net.learn_guest_ip(&frame);
                    self.pending.push_back(Input::GuestFrame(frame));
                }
                other => self.deferred.push_back(other),
            }
        }
    }

    fn on_event(&mut self, event: LoopEvent) {
        match event {
            LoopEvent::Connected(stream) | LoopEvent::Newcomer(stream) => self.on_inbound(stream),
            LoopEvent::Peer {
                link,
                message,
                bulk,
            } if link == self.link => {
                self.timeline.record_now(&message);
                self.on_frame(message, bulk)
            }
            LoopEvent::PeerDown {
                link,
                why,
                closed_by_peer,
            } if link == self.link => self.link_down(&why, closed_by_peer),
            LoopEvent::Peer { .. } | LoopEvent::PeerDown { .. } => {} // a dead link's straggler
            LoopEvent::GuestFrame(frame) => {
                hops::mark("loop_guest", &frame);
                self.net.learn_guest_ip(&frame);
                self.input(Input::GuestFrame(frame))
            }
            LoopEvent::ClientFrame { nic, frame } => {
                hops::mark("loop_in", &frame);
                self.input(Input::ClientFrame { nic, frame })
            }
            LoopEvent::Arbiter { id, reply } => {
                info!(role = self.name, id = id.0, reply = ?reply, "lease-reply");
                self.metrics.on_lease_reply(id, self.clock.now());
                self.input(Input::Arbiter { id, reply });
            }
            LoopEvent::Control(call) => self.on_control(call),
            LoopEvent::Dialled { dial, link } => self.on_dialled(dial, link),
            LoopEvent::DialRefused { dial } => self.on_dial_refused(dial),
            LoopEvent::GuestBlk {
                disk,
                generation,
                request,
            } => self.on_guest_blk(disk, generation, request),
        }
    }
}
