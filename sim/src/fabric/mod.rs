//! The fabric both Node executors share: everything of a Node run except how time, tasks and
//! kills are provided. Two [`SimHost`]s (each its `Node`, VM, disk and own guest), colo-core's
//! `Arbiter`, the clients and the upstream server exchange every frame through it: the client
//! LAN (the seed's [`Netem`] behind a [`Lan`]) and the control network (replication link and
//! arbiter requests, a second FIFO `Netem` with the seed's cuts; the replication link is one TCP
//! connection, [`link`]: delays, resets, and the dials and accepts the nodes order). Each actor has a step function
//! here ([`Shared::step_host`], [`Shared::step_arbiter`], [`Shared::step_lan`],
//! [`Shared::step_controller`] in [`faults`]) that does everything due for it at an instant and
//! says when it must be stepped again; the madsim executor ([`crate::cluster_run`]) runs each as
//! a task on a madsim node (a crash is `Handle::kill`), the plain loop ([`crate::node_run`])
//! steps them in a fixed order at every instant something is due (a crash drops the host).
//!
//! Semantics (docs/simulation.md, "The Node engine"): the client link goes to whichever host
//! last claimed it (`Output::ClaimClientLink`). After a crash and `down_for`, or after its
//! node stopped or was deposed and the seed's `restart_delay` (the supervisor, [`faults`]), the host boots
//! again ([`Shared::boot_host`]) as a fresh secondary (new node id, empty VM, fresh disk and
//! guest) that knocks with Hello; a solo survivor whose peer is back is sent
//! `Command::Reprotect` (a refused newcomer is started again). The crash rules (one host with
//! the guest's state stays alive) are in [`faults`], one module for both executors.
//!
//! Invariant kept: the only randomness is the seed's `SimRng` forks (emulators, guests,
//! clients, disks); an actor touches the fabric only inside its step, so a run is a pure
//! function of the seed and the executor's order of steps at equal instants. Bells
//! ([`Shared::ring`]) tell an executor which actor has new work at the current instant.

use std::collections::{BTreeMap, VecDeque};

use colo_core::failover::{Arbiter, ArbiterPhase, LeaseReply, LeaseRequest, LeaseRequestId};
use colo_core::ids::{ClusterId, Epoch, NodeId, Role, Term};
use colo_core::node::{Command, HaltReason, NodeConfig, NodeStatus};
use colo_core::time::{Duration, Instant};
use colo_core::wire::PAGE_SIZE;

use crate::bell::{Bells, LanModel};
use crate::client::{Client, ClientConfig, History, UpstreamServer};
use crate::guest::{Guest, GuestConfig, GuestSnapshot};
use crate::host::{CrashHook, DISK_BYTES, HostOutput, MEMORY_PAGES, PeerMsg, SimHost, host};
use crate::lan::Lan;
use crate::netem::{LinkConfig, Netem};
use crate::observer::Observer;
use crate::platform::Canary;
use crate::platform::disk::LayeredDisk;
use crate::platform::vm::VmTiming;
use crate::rng::SimRng;
use crate::swarm::{CrashPoint, SwarmOptions};
use crate::trace::TraceEvent;
use crate::world::{Endpoint, GUEST_ADDR, UPSTREAM_ADDR, UPSTREAM_PORT, client_addr};

pub(crate) mod faults;
pub(crate) mod link;

/// The end of a Node run (either executor).
#[derive(Debug)]
pub struct NodeRunOutput {
    /// The run's trace.
    pub trace: crate::trace::Trace,
    /// Every client's history.
    pub histories: Vec<History>,
    /// Frames released to clients.
    pub released: u64,
    /// Releases matched against the secondary's output.
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

/// The node configuration the simulation uses for host `h`, with `canary` planted in the node
/// if it is one of the Node's ([`Canary::node_canary`]).
pub fn node_config(h: usize, opts: &SwarmOptions, canary: Option<Canary>) -> NodeConfig {
    let mut c = NodeConfig::new(NodeId(h as u64 + 1), ClusterId(7));
    c.guest_memory_bytes = MEMORY_PAGES * PAGE_SIZE;
    c.disk.disk_size = DISK_BYTES;
    c.disk.block_size = 4096;
    c.checkpoint.checkpoint_interval = opts.checkpoint_interval;
    c.compare.compare_timeout = opts.compare_timeout;
    c.canary = canary.and_then(Canary::node_canary);
    c
}

/// An endpoint of the control network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ctl {
    Host(usize),
    Arbiter,
}

/// What crosses the control network (carried by id: the emulator moves bytes).
#[derive(Debug)]
pub(crate) enum CtlMsg {
    Peer(PeerMsg),
    /// The host's peer connection went down or came back (`link.rs`).
    Link(colo_core::node::LinkState),
    /// The host's dial was refused: its peer's process is gone (`link.rs`).
    DialRefused,
    Lease(usize, LeaseRequest),
    Reply(LeaseRequestId, LeaseReply),
}

/// Who waits on a bell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Waiter {
    Lan(Endpoint),
    Host(usize),
    Arbiter,
    Controller,
}

/// What the controller knows of a live host (published by the host after each step).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostView {
    status: NodeStatus,
    has_applied: bool,
}

/// Everything the tasks share.
pub(crate) struct Shared {
    pub(crate) opts: SwarmOptions,
    pub(crate) lan_net: Netem<Endpoint>,
    pub(crate) lan: Lan<Endpoint>,
    pub(crate) lan_inbox: BTreeMap<Endpoint, VecDeque<Vec<u8>>>,
    pub(crate) ctl_net: Netem<Ctl>,
    /// Payloads in flight by id, with their receiver's incarnation when sent.
    pub(crate) ctl_payloads: BTreeMap<u64, (CtlMsg, Option<(usize, u32)>)>,
    pub(crate) next_payload: u64,
    pub(crate) ctl_inbox: BTreeMap<Ctl, VecDeque<CtlMsg>>,
    pub(crate) bells: Bells<Waiter>,
    pub(crate) obs: Observer,
    /// The host the client link goes to.
    pub(crate) owner: usize,
    /// A host that crashed (its task does nothing more until the controller kills it).
    pub(crate) dead: [bool; 2],
    /// Published by each live host.
    pub(crate) views: [Option<HostView>; 2],
    /// The epoch the primary side runs (labels the secondary's output).
    pub(crate) primary_epoch: Epoch,
    pub(crate) arbiter_phase: ArbiterPhase,
    /// Commands for a host (re-protection, restart of a refused newcomer).
    pub(crate) commands: [VecDeque<Command>; 2],
    faults: faults::FaultState,
    /// The replication link's TCP connection ([`link`]).
    pub(crate) repl: link::ReplLink,
    pub(crate) incarnation: [u32; 2],
    /// The two first guests (taken by the hosts' first boot).
    pub(crate) first_guests: [Option<Guest>; 2],
    pub(crate) boot: GuestSnapshot,
    pub(crate) timing: VmTiming,
    pub(crate) canary: Option<Canary>,
    pub(crate) histories: Vec<Option<History>>,
    pub(crate) disk_writes: u64,
    pub(crate) disk_write_errors: u64,
}

impl Shared {
    /// The fabric of a fresh run of `opts` with `canary` planted: both first guests booted
    /// (the SVM from the PVM's image), the emulators seeded, nothing stepped yet.
    pub(crate) fn new(opts: &SwarmOptions, canary: Option<Canary>) -> Shared {
        let root = SimRng::new(opts.seed);
        let mut cfg = GuestConfig::new(GUEST_ADDR, root.fork("guest-image").next_u64());
        if opts.upstream {
            cfg.upstream = Some((UPSTREAM_ADDR.ip, UPSTREAM_PORT));
        }
        let mut pvm = Guest::boot(cfg, Instant::ZERO, root.fork("vm-a"));
        let boot = pvm.checkpoint();
        let svm = Guest::from_snapshot(&boot, root.fork("vm-b"));
        let mut lan = Lan::new();
        lan.attach(GUEST_ADDR.mac, Endpoint::Guest);
        for i in 0..opts.clients {
            lan.attach(client_addr(i).mac, Endpoint::Client(i));
        }
        if opts.upstream {
            lan.attach(UPSTREAM_ADDR.mac, Endpoint::Upstream);
        }
        let mut ctl_net = Netem::new(
            root.fork("ctl-net"),
            LinkConfig::with_delay(opts.link.delay),
        );
        for h in 0..2 {
            ctl_net.set_link_symmetric(
                Ctl::Host(h),
                Ctl::Arbiter,
                LinkConfig::with_delay(Duration::from_millis(1)),
            );
        }
        let mut obs = Observer::new();
        obs.push(TraceEvent::TermStarted {
            at: Instant::ZERO,
            host: host(0),
            term: Term(1),
            solo: false,
        });
        Shared {
            opts: opts.clone(),
            lan_net: Netem::new(root.fork("netem"), opts.link),
            lan,
            lan_inbox: BTreeMap::new(),
            ctl_net,
            ctl_payloads: BTreeMap::new(),
            next_payload: 0,
            ctl_inbox: BTreeMap::new(),
            bells: Bells::default(),
            obs,
            owner: 0,
            dead: [false; 2],
            views: [None; 2],
            primary_epoch: Epoch(1),
            arbiter_phase: ArbiterPhase::Vacant,
            commands: [VecDeque::new(), VecDeque::new()],
            faults: faults::FaultState::new(opts),
            repl: link::ReplLink::new(),
            incarnation: [0; 2],
            first_guests: [Some(pvm), Some(svm)],
            boot,
            timing: VmTiming {
                pause: opts.vm_pause_latency,
                resume: opts.vm_resume_latency,
                bytes_per_sec: opts.replication_bytes_per_sec,
                ..VmTiming::default()
            },
            canary,
            histories: vec![None; opts.clients as usize],
            disk_writes: 0,
            disk_write_errors: 0,
        }
    }

    /// Client `i` of the run (its own entropy fork), started at `now`.
    pub(crate) fn client(&self, i: u32, now: Instant) -> Client {
        let rng = SimRng::new(self.opts.seed).fork(&format!("client-{i}"));
        let mut c = ClientConfig::new(client_addr(i), (GUEST_ADDR.ip, 7000));
        c.connections = self.opts.connections;
        c.requests_per_connection = self.opts.requests_per_connection;
        c.start_at = Instant::ZERO;
        Client::new(c, now, rng)
    }

    /// The upstream server, if the seed has one, started at `now`.
    pub(crate) fn upstream(&self, now: Instant) -> Option<UpstreamServer> {
        let seed = SimRng::new(self.opts.seed).fork("upstream").next_u64();
        self.opts
            .upstream
            .then(|| UpstreamServer::new(UPSTREAM_ADDR, UPSTREAM_PORT, 2, seed, now))
    }

    /// Boots host `h` at `now`: the first boot makes A primary and B secondary with the first
    /// guests; a boot after a crash is an empty secondary (new node id, the guest booted from the
    /// image with its own entropy fork, a fresh disk) that knocks with Hello.
    pub(crate) fn boot_host(&mut self, h: usize, now: Instant) -> SimHost {
        let inc = self.incarnation[h];
        let mut cfg = node_config(h, &self.opts, self.canary);
        cfg.node_id = NodeId(h as u64 + 1 + 2 * u64::from(inc));
        let rng = SimRng::new(self.opts.seed);
        // The first hosts start connected; a restarted one dials its peer.
        let first_boot = self.first_guests[h].is_some();
        let (guest, role, disk_label) = match self.first_guests[h].take() {
            Some(g) => (
                g,
                if h == 0 {
                    Role::Primary
                } else {
                    Role::Secondary
                },
                format!("disk-{}", if h == 0 { "a" } else { "b" }),
            ),
            None => (
                Guest::from_snapshot(&self.boot, rng.fork(&format!("vm-{h}-restart-{inc}"))),
                Role::Secondary,
                format!("disk-{h}-restart-{inc}"),
            ),
        };
        let disk = LayeredDisk::new(
            DISK_BYTES,
            self.opts.disk_write_error_ppm,
            rng.fork(&disk_label),
        );
        let (timing, canary) = (self.timing, self.canary);
        let mut sim = SimHost::new(h, cfg, role, guest, timing, canary, disk, now);
        self.dead[h] = false;
        // A restarted host's node orders its dial (`route` executes it).
        sim.start(now, first_boot, self);
        self.route(now, h, &mut sim);
        sim
    }

    /// Host `h`'s step at `now`: client frames (if it owns the link), control messages,
    /// commands, its own due work; routes what it produced. `None` if the host crashed (the
    /// executor kills it), else when it has work of its own next (deliveries ring it).
    pub(crate) fn step_host(
        &mut self,
        now: Instant,
        h: usize,
        sim: &mut SimHost,
    ) -> Option<Option<Instant>> {
        if self.dead[h] {
            self.ring(Waiter::Controller);
            return None;
        }
        self.deliver(now);
        sim.arm_vm_failure(self.faults.vm_armed[h]);
        let client = if self.owner == h {
            self.lan_inbox.remove(&Endpoint::Guest).unwrap_or_default()
        } else {
            VecDeque::new()
        };
        for f in client {
            sim.handle_client_frame(now, f, self);
        }
        let ctl = self.ctl_inbox.remove(&Ctl::Host(h)).unwrap_or_default();
        for m in ctl {
            match m {
                CtlMsg::Peer(p) => sim.handle_peer(now, p, self),
                CtlMsg::Link(state) => sim.handle_link(now, state, self),
                CtlMsg::DialRefused => sim.handle_dial_refused(now, self),
                CtlMsg::Reply(id, reply) => sim.handle_arbiter(now, id, reply, self),
                CtlMsg::Lease(..) => {}
            }
        }
        let cmds: Vec<Command> = self.commands[h].drain(..).collect();
        for c in cmds {
            sim.handle_command(now, c, self);
        }
        sim.handle_timeout(now, self);
        // A consumed failure is gone; one not yet consumed stays armed for the host.
        self.faults.vm_armed[h] = sim.armed_vm_failure();
        self.disk_writes += std::mem::take(&mut sim.disk_writes);
        self.disk_write_errors += std::mem::take(&mut sim.disk_write_errors);
        self.route(now, h, sim);
        if sim.is_dead() || self.dead[h] {
            self.dead[h] = true;
            self.ring(Waiter::Controller);
            return None;
        }
        Some(
            [sim.poll_timeout(), self.next_delivery()]
                .into_iter()
                .flatten()
                .min(),
        )
    }

    /// The arbiter's step at `now`: answers the lease requests delivered; returns when a
    /// delivery is next due.
    pub(crate) fn step_arbiter(&mut self, now: Instant, arbiter: &mut Arbiter) -> Option<Instant> {
        self.deliver(now);
        let reqs = self.ctl_inbox.remove(&Ctl::Arbiter).unwrap_or_default();
        for m in reqs {
            let CtlMsg::Lease(h, req) = m else { continue };
            let reply = arbiter.handle_request(now, req.term, req.node_id, req.duration);
            if let LeaseReply::Granted { valid_for } = reply {
                self.obs.push(TraceEvent::Lease {
                    at: now,
                    host: host(h),
                    term: req.term,
                    until: now + valid_for,
                });
            }
            self.arbiter_phase = arbiter.phase();
            self.ctl_send(
                now,
                Ctl::Arbiter,
                Ctl::Host(h),
                CtlMsg::Reply(req.id, reply),
            );
        }
        self.next_delivery()
    }

    /// A LAN model's step at `now` (a client or the upstream server at `me`): frames
    /// delivered, its timer, what it transmits; returns when it is next due.
    pub(crate) fn step_lan(
        &mut self,
        now: Instant,
        model: &mut dyn LanModel,
        me: Endpoint,
    ) -> Option<Instant> {
        self.deliver(now);
        let frames = self.lan_inbox.remove(&me).unwrap_or_default();
        for f in frames {
            model.handle_frame(now, f);
        }
        if model.poll_timeout().is_some_and(|t| t <= now) {
            model.handle_timeout(now);
        }
        while let Some(frame) = model.poll_transmit() {
            self.lan_send(now, me, frame);
        }
        [model.poll_timeout(), self.next_delivery()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The run's output, once every client's history is in.
    pub(crate) fn finish(&mut self) -> NodeRunOutput {
        let histories: Vec<History> = self
            .histories
            .iter()
            .map(|h| h.clone().expect("every client ran to the end"))
            .collect();
        let trace = std::mem::take(&mut self.obs.trace);
        let digest = trace.run_digest(&histories);
        NodeRunOutput {
            trace,
            histories,
            released: self.obs.released,
            matched: self.obs.matched(),
            checkpoints: self.obs.checkpoints,
            disk_writes: self.disk_writes,
            disk_write_errors: self.disk_write_errors,
            digest,
        }
    }
    pub(crate) fn ring(&mut self, w: Waiter) {
        self.bells.ring(w);
    }

    pub(crate) fn lan_send(&mut self, now: Instant, from: Endpoint, frame: Vec<u8>) {
        for to in self.lan.destinations(&from, &frame) {
            self.lan_net.send(now, from, to, frame.clone());
            self.ring(Waiter::Lan(to));
        }
        self.ring(Waiter::Host(self.owner));
    }

    pub(crate) fn ctl_send(&mut self, now: Instant, from: Ctl, to: Ctl, msg: CtlMsg) {
        let id = self.next_payload;
        self.next_payload += 1;
        let tag = match to {
            Ctl::Host(h) => Some((h, self.incarnation[h])),
            Ctl::Arbiter => None,
        };
        self.ctl_payloads.insert(id, (msg, tag));
        self.ctl_net.send(now, from, to, id.to_le_bytes().to_vec());
        self.ring(waiter(to));
    }

    /// Moves every due delivery into the inboxes, ringing their owners.
    pub(crate) fn deliver(&mut self, now: Instant) {
        while let Some(d) = self.lan_net.poll_deliver(now) {
            if d.to == Endpoint::Guest && self.dead[self.owner] {
                // The link owner is down: frames for the guest are lost.
                continue;
            }
            self.lan_inbox.entry(d.to).or_default().push_back(d.frame);
            let w = match d.to {
                Endpoint::Guest => Waiter::Host(self.owner),
                e => Waiter::Lan(e),
            };
            self.ring(w);
        }
        while let Some(d) = self.ctl_net.poll_deliver(now) {
            let id = u64::from_le_bytes(d.frame[..8].try_into().expect("8-byte payload id"));
            // A duplicate cannot happen (the control network does not duplicate); a payload
            // delivered once is gone.
            let Some((msg, tag)) = self.ctl_payloads.remove(&id) else {
                continue;
            };
            // What was on its way to a host that crashed since dies with it.
            if tag.is_some_and(|(h, inc)| self.dead[h] || self.incarnation[h] != inc) {
                continue;
            }
            self.ctl_inbox.entry(d.to).or_default().push_back(msg);
            self.ring(waiter(d.to));
        }
    }

    pub(crate) fn next_delivery(&self) -> Option<Instant> {
        [self.lan_net.poll_timeout(), self.ctl_net.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Routes what host `h` produced.
    pub(crate) fn route(&mut self, now: Instant, h: usize, host_: &mut SimHost) {
        while let Some(o) = host_.poll_output() {
            match o {
                HostOutput::Release(frame, st) => {
                    self.obs.release(now, host(h), &frame, &st);
                    self.lan_send(now, Endpoint::Guest, frame);
                }
                HostOutput::WindowUpdate(frame) => self.lan_send(now, Endpoint::Guest, frame),
                HostOutput::GuestFrame(frame, st, epoch) => {
                    self.obs.guest_frame(now, host(h), &frame, &st, epoch);
                }
                HostOutput::SvmOutput(frame) => {
                    let epoch = self.primary_epoch;
                    self.obs.svm_output(now, &frame, epoch);
                }
                // No connection: the runtime drops what it cannot send (`dropped_while_down`).
                HostOutput::ToPeer(_) if !self.connection_sends(h) => self.drop_while_down(),
                HostOutput::ToPeer(msg) => {
                    self.ctl_send(now, Ctl::Host(h), Ctl::Host(1 - h), CtlMsg::Peer(msg));
                }
                HostOutput::ToArbiter(req) => {
                    self.ctl_send(now, Ctl::Host(h), Ctl::Arbiter, CtlMsg::Lease(h, req));
                }
                HostOutput::ClaimLink => {
                    self.owner = h;
                    self.faults.link_moved = true;
                    self.ring(Waiter::Controller);
                }
                HostOutput::Halted(reason) => self.obs.supersede_all(
                    now,
                    host(h),
                    match reason {
                        HaltReason::Deposed => "deposed: the arbiter leased the term to the peer",
                        HaltReason::Stopped => "stopped: the node left the pair, its peer serves",
                        HaltReason::VmFailed => {
                            "stopped: its own VM failed, the node left the pair, its peer serves"
                        }
                        // Both simulated hosts run the same VM: the refusal never happens here.
                        HaltReason::Refused(_) => "refused: the primary runs another VM",
                    },
                ),
                HostOutput::Link(cmd) => self.link_order(now, h, cmd),
                HostOutput::Trace(e) => self.obs.push(e),
            }
        }
        self.connection_finish_close(now);
        if let Some(e) = host_.primary_epoch() {
            self.primary_epoch = e;
        }
        self.views[h] = (!self.dead[h]).then(|| HostView {
            status: host_.status(now),
            has_applied: host_.has_applied(),
        });
        self.supervise(now, h);
        self.instant_crashes(now);
        self.reprotect_if_solo();
        self.try_connect(now);
    }
}

impl CrashHook for Shared {
    fn crash_point(&mut self, now: Instant, me: usize, point: CrashPoint) -> bool {
        self.crash_at_point(now, point);
        self.dead[me]
    }

    fn vm_failure_allowed(&mut self, _now: Instant, me: usize, paired: bool) -> bool {
        self.ending_vm_failure_allowed(me, paired)
    }
}

pub(crate) fn waiter(c: Ctl) -> Waiter {
    match c {
        Ctl::Host(h) => Waiter::Host(h),
        Ctl::Arbiter => Waiter::Arbiter,
    }
}
