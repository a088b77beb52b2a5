//! The [`Node`]: one per host, composing every replication machine of colo-core behind one
//! sans-IO interface (quinn-proto's `Connection`, str0m's one `Input` / one `Output`).
//!
//! A primary-side node composes the [`Comparator`], the
//! [`PrimaryCheckpointer`] and the
//! [`PrimaryDisk`](crate::disk::PrimaryDisk); a secondary-side node the
//! [`Rewriter`], the
//! [`SecondaryCheckpointer`] and the
//! [`SecondaryDisk`](crate::disk::SecondaryDisk); both a [`Heartbeat`] and a [`Failover`] with its
//! lease. The node routes inputs to them, drains their outputs in a fixed order, and holds the
//! two rules no single machine can keep alone: output commit across comparator and checkpointer,
//! and single writer across failover, lease and the client link.
//!
//! Files: [`config`], [`input`], [`output`], `status` (status and counters), `peer` (message
//! validation, handshake), `primary`, `secondary` (data paths), `solo` (failover and the solo
//! hold), `reprotect` (full sync), `disks` (disk-machine generations), `routing` (local inputs
//! and the pumps).

#[cfg(feature = "canaries")]
mod canary;
pub mod config;
mod disks;
pub mod input;
mod link;
pub mod output;
mod peer;
mod primary;
mod reprotect;
mod routing;
mod secondary;
mod solo;
mod status;
#[cfg(test)]
mod tests;

#[cfg(feature = "canaries")]
pub use canary::NodeCanary;
pub use config::{NodeConfig, NodeConfigError};
pub use input::{Command, GuestDiskRequest, Input, LinkState, PeerBulk};
pub use link::LinkCommand;
pub use output::{
    CommandRefusal, ConsoleCommand, Event, GUEST_HOLD_FRAMES_PER_NIC, HaltReason, OutBulk, Output,
    ProtocolViolation, SyncCommand,
};
pub use status::{NodeMode, NodeStats, NodeStatus};

use crate::checkpoint::{PrimaryCheckpointer, SecondaryCheckpointer};
use crate::compare::Comparator;
use crate::failover::{Failover, FailoverReason};
use crate::heartbeat::Heartbeat;
use crate::ids::{Epoch, NodeId, Role};
use crate::rewrite::{ClientTranslation, Rewriter};
use crate::time::Instant;
use crate::wire::Message;
use disks::Disks;
use reprotect::Sync;
use solo::Hold;

/// The node's own lifecycle; the replication mode while running is the [`Failover`]'s.
///
/// ```text
/// Idle --Start--> Connecting            (secondary: Hello sent, re-sent until answered)
/// Connecting --Hello accepted (primary)--> Running        [HelloAccept, SyncStart, SendAll]
/// Connecting --HelloAccept (secondary)--> Syncing
/// Syncing --SyncDone(e)--> Running      (checkpoint e makes the SVM a copy and starts it)
/// Running --Shutdown--> Stopped ; any --Shutdown--> Stopped (terminal)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Created; waits for [`Command::Start`].
    Idle,
    /// Handshake in progress.
    Connecting,
    /// Secondary: the initial or re-protection copy is arriving.
    Syncing,
    /// Replicating, taking over, solo or re-protecting (see [`Failover`]'s mode).
    Running,
    /// Stopped for good.
    Stopped,
}

/// The role-specific machines. One node has one `Side` for its whole life (it changes only at
/// a re-protection), so the size difference between the variants costs nothing worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Side {
    Primary(primary::PrimarySide),
    Secondary(secondary::SecondarySide),
}

/// One colo host's decision maker: feed it [`Input`]s, drain [`Output`]s, wake it at
/// [`poll_timeout`](Node::poll_timeout).
///
/// # The contract (the runtime's loop)
/// 1. Build with [`Node::new`]`(config, role, now)`; the configuration is validated.
/// 2. For everything that happens, call [`handle`](Node::handle)`(now, input)`. It never fails
///    and never panics on anything the peer, the client network or the guest sends: faults
///    become [`Event`]s. The only panic is the caller's own contract breach: `now` going
///    backwards.
/// 3. After every `handle`, drain [`poll_output`](Node::poll_output) until `None`, executing
///    outputs in the order given (frames of a flow, VM commands and peer messages are ordered).
/// 4. Arm one timer at [`poll_timeout`](Node::poll_timeout) and hand in [`Input::Timeout`] when
///    it fires; an early or spurious timeout does nothing. Whenever some phase waits on time
///    (a checkpoint step, a lease, a heartbeat, a handshake) `poll_timeout` is `Some`.
/// 5. An [`Input::Command`] the node refuses is answered, in the outputs of that `handle`, by
///    [`Event::CommandRefused`] with its [`CommandRefusal`] and changes nothing; one without
///    it was taken. The runtime answers its operator from that, and checks no precondition of
///    its own.
///
/// # Peer frames and bulk
/// The runtime owns the peer socket and runs [`crate::wire::FrameDecoder`] on it (a decoding
/// error ends the link: report [`LinkState::Down`]). It stores the bulk of `PageBatch`,
/// `DeviceState`, `DiskWrite`, `SyncPages` and `SyncDisk` itself (RAM cache, disk images) and
/// passes [`PeerBulk::Stored`] with its length; it passes the bytes of `MirroredFrame` and
/// `SecondaryOutput` as [`PeerBulk::Frame`], because the rewriter and comparator need them.
/// The node checks every message's direction for its role, its bulk length, its term and
/// epoch: a bad one is an [`Event::ProtocolError`], a stale one is counted and ignored.
/// Outbound, [`Output::ToPeer`] names where the bulk comes from ([`OutBulk`]); page batches and
/// device state are streamed by the runtime on
/// [`VmCommand::SendPages`](crate::checkpoint::VmCommand::SendPages) and
/// [`VmCommand::SaveDeviceState`](crate::checkpoint::VmCommand::SaveDeviceState), the
/// re-protection copy on [`SyncCommand::SendAll`]. The runtime sends exactly the ranges a
/// `SendPages` names and keeps no page bookkeeping of its own: `CollectDirty` reports only
/// the harvest (read and clear), and the node adds the pages collected by attempts that
/// aborted since the last completed checkpoint.
///
/// # Lifecycle
/// Both VMs are created paused. [`Command::Start`] on both nodes: the secondary sends `Hello`,
/// the primary answers `HelloAccept` and `SyncStart` and orders [`SyncCommand::SendAll`]; when
/// the runtime reports [`Input::SyncSent`] the primary sends `SyncDone(e)` and takes checkpoint
/// `e` at once, which makes the SVM an exact copy and starts both VMs (a `Pause` of a VM that
/// is already paused completes at once). From then on: client frames go to the PVM and are
/// mirrored; the PVM's frames are held by the comparator until the SVM's rewritten frames match
/// them or a checkpoint received by the secondary covers them; disk writes complete to the
/// guest once the secondary acknowledged them. If the peer is lost (heartbeat), a checkpoint
/// step is stuck waiting on the peer, the peer says goodbye, the secondary fails a forwarded
/// write, or on [`Command::Failover`], the node takes over in a new term and releases output
/// alone only while it holds that term's arbiter lease ([`Output::Arbiter`] /
/// [`Input::Arbiter`]); a former secondary also claims the client link
/// ([`Output::ClaimClientLink`]). A secondary
/// takes over only once it applied a checkpoint of its pairing, or confirmed the whole of one
/// and is applying it (before that its VM is no copy); a primary whose secondary never came may be run solo with [`Command::Failover`]. A
/// solo node re-protects with a new secondary after [`Command::Reprotect`] and the newcomer's
/// `Hello`, through the same copy as the start. A deposed node ([`Event::Deposed`]) never
/// releases again and orders [`Output::Halt`]; a node whose own VM leaves a checkpoint step
/// stuck says goodbye, stops ([`Event::Stopped`]) and orders [`Output::Halt`] too, so that its
/// peer takes over. The runtime acts on outputs only: events are for logs and metrics.
///
/// # Example: two nodes in one process
/// ```
/// use colo_core::checkpoint::{CheckpointEvent, VmCommand, VmCompletion};
/// use colo_core::ids::{ClusterId, NodeId, PageRange, Role};
/// use colo_core::node::{Command, Event, Input, Node, NodeConfig, NodeMode, OutBulk, Output,
///     PeerBulk, SyncCommand};
/// use colo_core::wire::{Message, PAGE_SIZE};
/// use colo_core::time::{Duration, Instant};
///
/// let t0 = Instant::ZERO;
/// let mut nodes = [
///     Node::new(NodeConfig::new(NodeId(1), ClusterId(7)), Role::Primary, t0).unwrap(),
///     Node::new(NodeConfig::new(NodeId(2), ClusterId(7)), Role::Secondary, t0).unwrap(),
/// ];
/// let mut inbox: Vec<(usize, Input)> = vec![
///     (0, Input::Command(Command::Start)),
///     (1, Input::Command(Command::Start)),
/// ];
/// let mut done = 0;
/// let mut now = t0;
/// while done == 0 && now < Instant::from_millis(20_000) {
///     now = now + Duration::from_millis(1);
///     let batch = std::mem::take(&mut inbox);
///     for (h, input) in batch {
///         nodes[h].handle(now, input);
///     }
///     for h in 0..2 {
///         if nodes[h].poll_timeout().is_some_and(|t| t <= now) {
///             nodes[h].handle(now, Input::Timeout);
///         }
///         // The runtime's loop: drain every output after every input.
///         while let Some(out) = nodes[h].poll_output() {
///             match out {
///                 // A real runtime encodes the message (and its bulk) on the peer socket.
///                 Output::ToPeer { message, bulk } => {
///                     let bulk = match bulk {
///                         OutBulk::Frame(f) => PeerBulk::Frame(f),
///                         _ => PeerBulk::None,
///                     };
///                     inbox.push((1 - h, Input::Peer { message, bulk }));
///                 }
///                 // A real runtime drives KVM; here every command succeeds at once and the
///                 // guest dirties no page.
///                 Output::Vm(cmd) => {
///                     let completion = match cmd {
///                         VmCommand::Pause => VmCompletion::Paused,
///                         VmCommand::Resume => VmCompletion::Resumed,
///                         VmCommand::CollectDirty { epoch } => {
///                             VmCompletion::DirtyCollected { epoch, ranges: vec![] }
///                         }
///                         VmCommand::SendPages { epoch, .. } => {
///                             VmCompletion::PagesSent { epoch, batches: 0, pages: 0, bytes: 0 }
///                         }
///                         VmCommand::SaveDeviceState { epoch } => {
///                             let state = Message::DeviceState { epoch };
///                             inbox.push((1 - h, Input::Peer {
///                                 message: state,
///                                 bulk: PeerBulk::Stored { len: 0 },
///                             }));
///                             VmCompletion::DeviceStateSent { epoch, bytes: 0 }
///                         }
///                         VmCommand::ApplyCheckpoint { epoch } => VmCompletion::Applied { epoch },
///                         VmCommand::DiscardPartial { epoch } => {
///                             VmCompletion::Discarded { epoch }
///                         }
///                     };
///                     inbox.push((h, Input::VmDone(completion)));
///                 }
///                 // The initial copy: a real runtime streams the guest's memory and disk
///                 // (here only the messages, with the bulk "stored" on the other side).
///                 Output::Sync(SyncCommand::SendAll { term }) => {
///                     let pages = (1u64 << 30) / PAGE_SIZE; // NodeConfig's default memory
///                     inbox.push((1 - h, Input::Peer {
///                         message: Message::SyncPages {
///                             term,
///                             batch: 0,
///                             ranges: vec![PageRange { first: 0, count: pages }],
///                             zero: colo_core::wire::ZeroPages::none(pages),
///                         },
///                         bulk: PeerBulk::Stored { len: pages * PAGE_SIZE },
///                     }));
///                     inbox.push((h, Input::SyncSent { memory_bytes: 1 << 30, disk_bytes: 0 }));
///                 }
///                 Output::Disk(cmd) => {
///                     inbox.push((h, Input::DiskDone { op: cmd.op(), result: Ok(()) }))
///                 }
///                 Output::Event(Event::Checkpoint(CheckpointEvent::CheckpointDone { .. })) => done += 1,
///                 _ => {}
///             }
///         }
///     }
/// }
/// assert_eq!(done, 1, "the pairing's first checkpoint completed");
/// assert_eq!(nodes[0].status(now).mode, NodeMode::Paired);
/// assert_eq!(nodes[1].status(now).mode, NodeMode::Paired);
/// ```
///
/// # Drain order
/// After each input the node pumps its machines until none has anything left, each pass in this
/// order: failover (mode changes gate release), heartbeat, checkpointer (a `ReleaseOutput`
/// reaches the comparator before its releases are drained), comparator, disk, then the solo
/// hold (released if the lease allows it now). Outputs are queued in the order the machines
/// produced them.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    phase: Phase,
    failover: Failover,
    heartbeat: Heartbeat,
    side: Side,
    disks: Disks,
    hold: Hold,
    sync: Option<Sync>,
    /// The peer of the current pairing, once the handshake succeeded.
    peer: Option<NodeId>,
    /// A solo node accepts a newcomer's Hello only after [`Command::Reprotect`].
    reprotect_armed: bool,
    /// Secondary in `Connecting`: when to send the Hello again.
    hello_retry_at: Option<Instant>,
    /// Whether this node's VM state may serve a takeover: a primary always; a secondary once
    /// it applied a checkpoint of the current pairing (before that its VM is no copy).
    has_state: bool,
    /// The reason of the takeover in progress (for [`Event::FailedOver`]).
    takeover_reason: Option<FailoverReason>,
    /// The checkpointer reported the VM consistent after a takeover.
    ready_for_takeover: bool,
    /// [`Event::FailedOver`] was reported for the current term.
    failed_over_reported: bool,
    link_up: bool,
    /// The link orders in force: dial, accept, the reconnect window (`link.rs`).
    link: link::LinkPlan,
    /// The peer link dropped while paired; the next link-up is a reconnection.
    link_dropped_while_paired: bool,
    /// The last heartbeat sent (its sequence number and when), for its round trip.
    heartbeat_probe: Option<(u64, Instant)>,
    out: crate::outbox::Outbox<Output>,
    stats: NodeStats,
    now: Instant,
}

impl Node {
    /// A node that will hold `role` in `config.initial_term`, idle until [`Command::Start`].
    pub fn new(config: NodeConfig, role: Role, now: Instant) -> Result<Node, NodeConfigError> {
        config.validate()?;
        let failover = Failover::new(config.lease, config.node_id, role, config.initial_term, now)?;
        let heartbeat = Heartbeat::new(config.heartbeat, now)?;
        let side = match role {
            Role::Primary => Side::Primary(primary::PrimarySide::new(&config)?),
            Role::Secondary => Side::Secondary(secondary::SecondarySide::new(&config)),
        };
        let disks = Disks::new(&config, role)?;
        Ok(Node {
            hold: Hold::new(config.solo_hold_frames),
            config,
            phase: Phase::Idle,
            failover,
            heartbeat,
            side,
            disks,
            sync: None,
            peer: None,
            reprotect_armed: false,
            hello_retry_at: None,
            has_state: role == Role::Primary,
            takeover_reason: None,
            ready_for_takeover: false,
            failed_over_reported: false,
            link_up: false,
            link: link::LinkPlan::default(),
            link_dropped_while_paired: false,
            heartbeat_probe: None,
            out: crate::outbox::Outbox::default(),
            stats: NodeStats::default(),
            now,
        })
    }

    /// Feed one input. Infallible: peer, client and guest faults become events.
    ///
    /// # Panics
    /// If `now` is earlier than a previous call's (time must never go backwards).
    pub fn handle(&mut self, now: Instant, input: Input) {
        assert!(
            now >= self.now,
            "time went backwards: the caller must pass a monotone `now` ({now:?} < {:?})",
            self.now
        );
        self.now = now;
        if self.phase == Phase::Stopped {
            self.stats.ignored_after_stop += 1;
            return;
        }
        match input {
            Input::ClientFrame { nic, frame } => self.on_client_frame(now, nic, frame),
            Input::GuestFrame(frame) => self.on_guest_frame(now, frame),
            Input::Peer { message, bulk } => self.on_peer(now, message, bulk),
            Input::PeerLink(state) => self.on_link(now, state),
            Input::PeerDialRefused => {
                if !self.link_up && self.heartbeat_active() {
                    self.heartbeat.handle_dial_refused(now);
                }
            }
            Input::PeerActivity => {
                if self.heartbeat_active() {
                    self.heartbeat.handle_peer_traffic(now);
                }
            }
            Input::VmDone(done) => self.on_vm_done(now, done),
            Input::GuestDisk(req) => self.on_guest_disk(now, req),
            Input::DiskDone { op, result } => self.disks.handle_op_done(op, result),
            Input::SyncSent {
                memory_bytes,
                disk_bytes,
            } => self.on_sync_sent(now, memory_bytes, disk_bytes),
            Input::Command(c) => self.on_command(now, c),
            Input::Arbiter { id, reply } => self.failover.handle_lease_reply(now, id, reply),
            Input::Timeout => self.on_timeout(now),
        }
        self.pump(now);
        if self.phase != Phase::Stopped {
            self.plan_link(now);
        }
    }

    /// The next thing for the runtime to do; drain until `None` after every [`handle`].
    ///
    /// [`handle`]: Node::handle
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// The earliest instant at which [`Input::Timeout`] has work, over every sub-machine.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Stopped {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        if self.heartbeat_active() {
            consider(self.heartbeat.poll_timeout());
        }
        consider(self.failover.poll_timeout());
        consider(self.hello_retry_at);
        consider(self.link.poll_timeout());
        match &self.side {
            Side::Primary(p) => consider(p.poll_timeout()),
            Side::Secondary(s) => consider(s.poll_timeout()),
        }
        next
    }

    /// The role this node holds now (a secondary that took over is a primary).
    pub fn role(&self) -> Role {
        self.failover.role()
    }

    /// The failover machine (mode, term, lease), read-only.
    pub fn failover(&self) -> &Failover {
        &self.failover
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.heartbeat_active() {
            self.heartbeat.handle_timeout(now);
        }
        self.failover.handle_timeout(now);
        if let Some(at) = self.hello_retry_at
            && now >= at
            && self.phase == Phase::Connecting
        {
            self.send_hello(now);
        }
        match &mut self.side {
            Side::Primary(p) => p.handle_timeout(now),
            Side::Secondary(s) => s.handle_timeout(now),
        }
    }

    /// Runs an operator command; a refused one changes nothing and is answered with
    /// [`Event::CommandRefused`] (and counted: `commands_ignored`, or `takeovers_refused` for
    /// a failover the node cannot serve).
    fn on_command(&mut self, now: Instant, command: Command) {
        let refused = match command {
            Command::Start => self.on_start(now).err(),
            Command::ForceCheckpoint => {
                let paired = self.status(now).mode == NodeMode::Paired;
                match &mut self.side {
                    Side::Primary(p) if paired => {
                        p.force_checkpoint(now);
                        None
                    }
                    _ => Some(CommandRefusal::NotPaired),
                }
            }
            Command::SetCheckpointInterval(interval) => match &mut self.side {
                Side::Secondary(_) => Some(CommandRefusal::NotPrimary),
                Side::Primary(p) => {
                    (!p.set_interval(now, interval)).then_some(CommandRefusal::ZeroInterval)
                }
            },
            Command::Failover => {
                let mode = self.status(now).mode;
                if !matches!(
                    mode,
                    NodeMode::Paired | NodeMode::Connecting | NodeMode::Syncing
                ) {
                    Some(CommandRefusal::NoPeerToLeave)
                } else if self.try_failover(now, FailoverReason::Requested) {
                    None
                } else {
                    // Counted in `takeovers_refused` by `try_failover`.
                    let why = CommandRefusal::NoCopyYet;
                    return self.event(Event::CommandRefused { command, why });
                }
            }
            Command::Reprotect if self.status(now).mode == NodeMode::Solo => {
                self.on_reprotect_command();
                None
            }
            Command::Reprotect => Some(CommandRefusal::NotSolo),
            Command::Shutdown => {
                let term = self.failover.term();
                if self.phase != Phase::Idle {
                    self.send(Message::Goodbye {
                        term,
                        reason: crate::wire::GoodbyeReason::Shutdown,
                    });
                }
                self.phase = Phase::Stopped;
                self.event(Event::Stopped);
                self.link_before_halt(now);
                self.out.push(Output::Halt(HaltReason::Stopped));
                None
            }
        };
        if let Some(why) = refused {
            self.stats.commands_ignored += 1;
            self.event(Event::CommandRefused { command, why });
        }
    }

    fn on_link(&mut self, now: Instant, state: LinkState) {
        let was_up = self.link_up;
        self.link_up = state == LinkState::Up;
        if self.link_up {
            self.heartbeat.handle_link_up(now);
        } else if was_up && state == LinkState::PeerClosed && self.heartbeat_active() {
            // Not a silence: the peer's end closed. Give it the grace to come back.
            self.heartbeat.handle_link_closed_by_peer(now);
        }
        let paired = self.phase == Phase::Running && self.failover.is_paired();
        if !self.link_up && was_up && paired {
            self.link_dropped_while_paired = true;
        }
        match (was_up, self.link_up) {
            (true, false) => self.link_gone(now),
            (_, true) => self.link_came_up(),
            (false, false) => {}
        }
        if self.link_up && !was_up && std::mem::take(&mut self.link_dropped_while_paired) && paired
        {
            // The same peer is back on a new connection before the heartbeat lost it: what
            // was in flight on the old one may be gone. Each checkpointer restarts what it
            // cannot know arrived (checkpoint/primary.rs and secondary.rs, `handle_link_reset`).
            self.stats.link_resets += 1;
            self.disks.handle_link_reset();
            match &mut self.side {
                Side::Primary(p) => p.handle_link_reset(now),
                Side::Secondary(s) => {
                    if let Some(c) = s.checkpointer.as_mut() {
                        c.handle_link_reset(now);
                    }
                }
            }
        }
        if self.link_up && self.phase == Phase::Connecting && !self.is_primary_side() {
            // A fresh link: the connecting secondary says hello at once instead of waiting for
            // its retry timer (a primary only answers Hellos).
            self.send_hello(now);
        }
    }

    /// Whether the heartbeat watches a peer now: while paired (or syncing a newcomer).
    fn heartbeat_active(&self) -> bool {
        match self.phase {
            Phase::Syncing => true,
            Phase::Running => {
                (self.peer.is_some() && self.failover.is_paired()) || self.sync.is_some()
            }
            Phase::Idle | Phase::Connecting | Phase::Stopped => false,
        }
    }

    /// Runs every machine's outputs to quiescence, in the documented order.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = self.pump_failover(now);
            progressed |= self.pump_heartbeat(now);
            progressed |= self.pump_side(now);
            progressed |= self.pump_disks(now);
            progressed |= self.flush_hold_if_allowed(now);
            if !progressed {
                break;
            }
        }
    }

    fn send(&mut self, message: Message) {
        self.send_with(message, OutBulk::None);
    }

    fn send_with(&mut self, message: Message, bulk: OutBulk) {
        self.stats.peer_sent += 1;
        if self.heartbeat_active() {
            self.heartbeat.handle_sent(self.now);
        }
        self.out.push(Output::ToPeer { message, bulk });
    }

    fn event(&mut self, event: Event) {
        self.out.push(Output::Event(event));
    }

    /// The epoch this node reports in heartbeats and Hellos.
    fn current_epoch(&self) -> Epoch {
        match &self.side {
            Side::Primary(p) => p.last_done(),
            Side::Secondary(s) => s.applied(),
        }
    }

    /// Every counter, for tests and metrics.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// The primary checkpointer, if this node is primary-side and replicating (read-only).
    pub fn primary_checkpointer(&self) -> Option<&PrimaryCheckpointer> {
        match &self.side {
            Side::Primary(p) => p.checkpointer.as_ref(),
            Side::Secondary(_) => None,
        }
    }

    /// The secondary checkpointer, if this node is secondary-side and replicating (read-only).
    pub fn secondary_checkpointer(&self) -> Option<&SecondaryCheckpointer> {
        match &self.side {
            Side::Secondary(s) => s.checkpointer.as_ref(),
            Side::Primary(_) => None,
        }
    }

    /// The comparator of a primary-side node (read-only, for its counters).
    pub fn comparator(&self) -> Option<&Comparator> {
        match &self.side {
            Side::Primary(p) => Some(&p.comparator),
            Side::Secondary(_) => None,
        }
    }

    /// The rewriter: a secondary's, or the client-edge translator a former secondary keeps.
    pub fn rewriter(&self) -> Option<&Rewriter> {
        match &self.side {
            Side::Secondary(s) => Some(s.xlate.own()),
            Side::Primary(p) => p.client_xlate.as_ref().map(ClientTranslation::own),
        }
    }
}
