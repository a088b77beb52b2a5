//! `cluster_run` (only under `--cfg madsim`): the Node engine as a madsim cluster — one madsim
//! node per host (`host-a`, `host-b`, each running a [`SimHost`]: its `Node`, VM, disk and own
//! guest), one for the arbiter, one per client and one for the upstream server — with every
//! frame crossing a shared fabric: the client LAN (the seed's [`Netem`] behind a [`Lan`]), and
//! the control network (replication link and arbiter requests, a second FIFO `Netem` with the
//! seed's cuts). madsim gives time, tasks and node kill/restart; a controller task applies the
//! seed's faults.
//!
//! Semantics (docs/simulation.md, "The madsim engine"): the client link goes to whichever host
//! last claimed it (`Event::ClaimClientLink`). A host crash is `Handle::kill` (its task and its
//! `SimHost` are dropped); after `down_for`, `Handle::restart` runs the host's init again, which
//! boots a fresh secondary (new node id, empty VM, fresh disk and guest) that knocks with Hello;
//! a solo survivor whose peer is back is sent `Command::Reprotect` (a refused newcomer is
//! started again). Crash points and the rule that keeps one host with the guest's state alive
//! are those of `node_run` (see [`faults`]).
//!
//! Invariant kept: nothing here reads madsim's RNG (the only randomness is the seed's
//! `SimRng` forks: emulators, guests, clients, disks); each task touches shared state only while
//! it holds the fabric lock, without awaiting, so a run is a pure function of the seed and
//! madsim's seeded scheduler ([`run_cluster`]'s digest is compared by `--check-determinism`).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use colo_core::failover::{Arbiter, ArbiterPhase, LeaseReply, LeaseRequest, LeaseRequestId};
use colo_core::ids::{Epoch, NodeId, Role, Term};
use colo_core::node::{Command, NodeStatus};
use colo_core::time::{Duration, Instant};

use crate::client::{Client, ClientConfig, History, UpstreamServer};
use crate::guest::{Guest, GuestConfig, GuestSnapshot};
use crate::host::{CrashHook, DISK_BYTES, HostOutput, PeerMsg, SimHost, host};
use crate::lan::Lan;
use crate::netem::{LinkConfig, Netem};
use crate::node_run::{NodeRunOutput, node_config};
use crate::observer::Observer;
use crate::platform::Canary;
use crate::platform::disk::LayeredDisk;
use crate::platform::vm::VmTiming;
use crate::rng::SimRng;
use crate::swarm::{CrashPoint, SwarmOptions};
use crate::trace::TraceEvent;
use crate::world::{Endpoint, GUEST_ADDR, UPSTREAM_ADDR, UPSTREAM_PORT, client_addr};

mod faults;

/// An endpoint of the control network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ctl {
    Host(usize),
    Arbiter,
}

/// What crosses the control network (carried by id: the emulator moves bytes).
#[derive(Debug)]
enum CtlMsg {
    Peer(PeerMsg),
    Lease(usize, LeaseRequest),
    Reply(LeaseRequestId, LeaseReply),
}

/// Who waits on a bell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Waiter {
    Lan(Endpoint),
    Host(usize),
    Arbiter,
    Controller,
}

#[derive(Debug, Default)]
struct Bell {
    rung: bool,
    waker: Option<Waker>,
}

/// What the controller knows of a live host (published by the host after each step).
#[derive(Clone, Copy, Debug)]
struct HostView {
    status: NodeStatus,
    has_applied: bool,
}

/// Everything the tasks share.
struct Shared {
    opts: SwarmOptions,
    lan_net: Netem<Endpoint>,
    lan: Lan<Endpoint>,
    lan_inbox: BTreeMap<Endpoint, VecDeque<Vec<u8>>>,
    ctl_net: Netem<Ctl>,
    /// Payloads in flight by id, with their receiver's incarnation when sent.
    ctl_payloads: BTreeMap<u64, (CtlMsg, Option<(usize, u32)>)>,
    next_payload: u64,
    ctl_inbox: BTreeMap<Ctl, VecDeque<CtlMsg>>,
    bells: BTreeMap<Waiter, Bell>,
    obs: Observer,
    /// The host the client link goes to.
    owner: usize,
    /// A host that crashed (its task does nothing more until the controller kills it).
    dead: [bool; 2],
    /// Published by each live host.
    views: [Option<HostView>; 2],
    /// The epoch the primary side runs (labels the secondary's output).
    primary_epoch: Epoch,
    arbiter_phase: ArbiterPhase,
    /// Commands for a host (re-protection, restart of a refused newcomer).
    commands: [VecDeque<Command>; 2],
    faults: faults::FaultState,
    incarnation: [u32; 2],
    /// The two first guests (taken by the hosts' first boot).
    first_guests: [Option<Guest>; 2],
    boot: GuestSnapshot,
    timing: VmTiming,
    canary: Option<Canary>,
    histories: Vec<Option<History>>,
    disk_writes: u64,
    disk_write_errors: u64,
}

impl Shared {
    fn ring(&mut self, w: Waiter) {
        let bell = self.bells.entry(w).or_default();
        bell.rung = true;
        if let Some(k) = bell.waker.take() {
            k.wake();
        }
    }

    fn lan_send(&mut self, now: Instant, from: Endpoint, frame: Vec<u8>) {
        for to in self.lan.destinations(&from, &frame) {
            self.lan_net.send(now, from, to, frame.clone());
            self.ring(Waiter::Lan(to));
        }
        self.ring(Waiter::Host(self.owner));
    }

    fn ctl_send(&mut self, now: Instant, from: Ctl, to: Ctl, msg: CtlMsg) {
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
    fn deliver(&mut self, now: Instant) {
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

    fn next_delivery(&self) -> Option<Instant> {
        [self.lan_net.poll_timeout(), self.ctl_net.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Routes what host `h` produced.
    fn route(&mut self, now: Instant, h: usize, host_: &mut SimHost) {
        while let Some(o) = host_.poll_output() {
            match o {
                HostOutput::Release(frame, st) => {
                    self.obs.release(now, host(h), &frame, &st);
                    self.lan_send(now, Endpoint::Guest, frame);
                }
                HostOutput::GuestFrame(frame, st, epoch) => {
                    self.obs.guest_frame(now, host(h), &frame, &st, epoch);
                }
                HostOutput::SvmOutput(frame) => {
                    let epoch = self.primary_epoch;
                    self.obs.svm_output(now, &frame, epoch);
                }
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
                HostOutput::Deposed => self.obs.supersede_all(
                    now,
                    host(h),
                    "deposed: the arbiter leased the term to the peer",
                ),
                HostOutput::Trace(e) => self.obs.push(e),
            }
        }
        if let Some(e) = host_.primary_epoch() {
            self.primary_epoch = e;
        }
        self.views[h] = (!self.dead[h]).then(|| HostView {
            status: host_.status(now),
            has_applied: host_.has_applied(),
        });
        self.instant_crashes(now);
        self.reprotect_if_solo();
    }
}

impl CrashHook for Shared {
    fn crash_point(&mut self, now: Instant, me: usize, point: CrashPoint) -> bool {
        self.crash_at_point(now, point);
        self.dead[me]
    }
}

fn waiter(c: Ctl) -> Waiter {
    match c {
        Ctl::Host(h) => Waiter::Host(h),
        Ctl::Arbiter => Waiter::Arbiter,
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panicking task ends the simulation, so a poisoned lock is never observed live.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps until `deadline` or until `me`'s bell rings.
struct Nap<'a> {
    sleep: Pin<Box<madsim::time::Sleep>>,
    shared: &'a Mutex<Shared>,
    me: Waiter,
}

impl Future for Nap<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut s = lock(self.shared);
            let bell = s.bells.entry(self.me).or_default();
            if bell.rung {
                bell.rung = false;
                return Poll::Ready(());
            }
            bell.waker = Some(cx.waker().clone());
        }
        self.sleep.as_mut().poll(cx)
    }
}

fn now_since(start: madsim::time::Instant) -> Instant {
    let d = madsim::time::Instant::now().saturating_duration_since(start);
    Instant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

async fn nap(shared: &Mutex<Shared>, me: Waiter, start: madsim::time::Instant, next: Instant) {
    let deadline = start + next.saturating_duration_since(Instant::ZERO);
    Nap {
        sleep: Box::pin(madsim::time::sleep_until(deadline)),
        shared,
        me,
    }
    .await;
}

/// The host task: boots (first boot: A primary, B secondary; after a restart: an empty
/// secondary), then steps its host at every instant something is due for it.
async fn host_task(h: usize, shared: SharedRef, start: madsim::time::Instant, until: Instant) {
    let mut sim = {
        let mut s = lock(&shared);
        let now = now_since(start);
        let inc = s.incarnation[h];
        let mut cfg = node_config(h, &s.opts, s.canary);
        cfg.node_id = NodeId(h as u64 + 1 + 2 * u64::from(inc));
        let rng = SimRng::new(s.opts.seed);
        let (guest, role, disk_label) = match s.first_guests[h].take() {
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
                Guest::from_snapshot(&s.boot, rng.fork(&format!("vm-{h}-restart-{inc}"))),
                Role::Secondary,
                format!("disk-{h}-restart-{inc}"),
            ),
        };
        let disk = LayeredDisk::new(
            DISK_BYTES,
            s.opts.disk_write_error_ppm,
            rng.fork(&disk_label),
        );
        let (timing, canary) = (s.timing, s.canary);
        let mut sim = SimHost::new(h, cfg, role, guest, timing, canary, disk, now);
        s.dead[h] = false;
        sim.start(now, &mut *s);
        s.route(now, h, &mut sim);
        sim
    };
    loop {
        let now = now_since(start);
        let next = {
            let mut s = lock(&shared);
            if s.dead[h] {
                // Crashed: the controller kills this node at this instant.
                s.ring(Waiter::Controller);
                return;
            }
            s.deliver(now);
            let client = if s.owner == h {
                s.lan_inbox.remove(&Endpoint::Guest).unwrap_or_default()
            } else {
                VecDeque::new()
            };
            for f in client {
                sim.handle_client_frame(now, f, &mut *s);
            }
            let ctl = s.ctl_inbox.remove(&Ctl::Host(h)).unwrap_or_default();
            for m in ctl {
                match m {
                    CtlMsg::Peer(p) => sim.handle_peer(now, p, &mut *s),
                    CtlMsg::Reply(id, reply) => sim.handle_arbiter(now, id, reply, &mut *s),
                    CtlMsg::Lease(..) => {}
                }
            }
            let cmds: Vec<Command> = s.commands[h].drain(..).collect();
            for c in cmds {
                sim.handle_command(now, c, &mut *s);
            }
            sim.handle_timeout(now, &mut *s);
            s.disk_writes += std::mem::take(&mut sim.disk_writes);
            s.disk_write_errors += std::mem::take(&mut sim.disk_write_errors);
            s.route(now, h, &mut sim);
            if sim.is_dead() || s.dead[h] {
                s.dead[h] = true;
                s.ring(Waiter::Controller);
                return;
            }
            [sim.poll_timeout(), s.next_delivery(), Some(until)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until)
                .max(now + Duration::from_micros(1))
        };
        if now >= until {
            return;
        }
        nap(&shared, Waiter::Host(h), start, next).await;
    }
}

/// The arbiter task: colo-core's `Arbiter`, answering lease requests over the control network.
async fn arbiter_task(shared: SharedRef, start: madsim::time::Instant, until: Instant) {
    let mut arbiter = Arbiter::new(Duration::from_secs(10), Instant::ZERO);
    loop {
        let now = now_since(start);
        let next = {
            let mut s = lock(&shared);
            s.deliver(now);
            let reqs = s.ctl_inbox.remove(&Ctl::Arbiter).unwrap_or_default();
            for m in reqs {
                let CtlMsg::Lease(h, req) = m else { continue };
                let reply = arbiter.handle_request(now, req.term, req.node_id, req.duration);
                if let LeaseReply::Granted { valid_for } = reply {
                    s.obs.push(TraceEvent::Lease {
                        at: now,
                        host: host(h),
                        term: req.term,
                        until: now + valid_for,
                    });
                }
                s.arbiter_phase = arbiter.phase();
                s.ctl_send(
                    now,
                    Ctl::Arbiter,
                    Ctl::Host(h),
                    CtlMsg::Reply(req.id, reply),
                );
            }
            s.next_delivery()
                .unwrap_or(until)
                .min(until)
                .max(now + Duration::from_micros(1))
        };
        if now >= until {
            return;
        }
        nap(&shared, Waiter::Arbiter, start, next).await;
    }
}

/// A LAN model a task drives (a client or the upstream server).
trait LanModel {
    fn handle_frame(&mut self, now: Instant, frame: Vec<u8>);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    fn poll_timeout(&mut self) -> Option<Instant>;
}

macro_rules! lan_model {
    ($t:ty) => {
        impl LanModel for $t {
            fn handle_frame(&mut self, now: Instant, frame: Vec<u8>) {
                <$t>::handle_frame(self, now, frame)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$t>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self) -> Option<Vec<u8>> {
                <$t>::poll_transmit(self)
            }
            fn poll_timeout(&mut self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
        }
    };
}
lan_model!(Client);
lan_model!(UpstreamServer);

async fn lan_task(
    model: &mut dyn LanModel,
    me: Endpoint,
    shared: &Mutex<Shared>,
    start: madsim::time::Instant,
    until: Instant,
) {
    loop {
        let now = now_since(start);
        let next = {
            let mut s = lock(shared);
            s.deliver(now);
            let frames = s.lan_inbox.remove(&me).unwrap_or_default();
            for f in frames {
                model.handle_frame(now, f);
            }
            if model.poll_timeout().is_some_and(|t| t <= now) {
                model.handle_timeout(now);
            }
            while let Some(frame) = model.poll_transmit() {
                s.lan_send(now, me, frame);
            }
            [model.poll_timeout(), s.next_delivery(), Some(until)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until)
                .max(now + Duration::from_micros(1))
        };
        if now >= until {
            return;
        }
        nap(shared, Waiter::Lan(me), start, next).await;
    }
}

/// Runs the seed's world under two Nodes as a madsim cluster (must be called inside a madsim
/// runtime, e.g. `Runtime::with_seed_and_config(opts.seed, ..)`); the output is the same as
/// [`crate::node_run::NodeRun::run`]'s, so the runner judges both alike.
pub async fn run_cluster(opts: &SwarmOptions, canary: Option<Canary>) -> NodeRunOutput {
    let handle = madsim::runtime::Handle::current();
    let root = SimRng::new(opts.seed);
    let start = madsim::time::Instant::now();
    let until = opts.ends();
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
    let shared = Arc::new(Mutex::new(Shared {
        opts: opts.clone(),
        lan_net: Netem::new(root.fork("netem"), opts.link),
        lan,
        lan_inbox: BTreeMap::new(),
        ctl_net,
        ctl_payloads: BTreeMap::new(),
        next_payload: 0,
        ctl_inbox: BTreeMap::new(),
        bells: BTreeMap::new(),
        obs,
        owner: 0,
        dead: [false; 2],
        views: [None; 2],
        primary_epoch: Epoch(1),
        arbiter_phase: ArbiterPhase::Vacant,
        commands: [VecDeque::new(), VecDeque::new()],
        faults: faults::FaultState::new(opts),
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
    }));

    let mut hosts = Vec::new();
    for h in 0..2 {
        let shared = shared.clone();
        hosts.push(
            handle
                .create_node()
                .name(if h == 0 { "host-a" } else { "host-b" })
                .init(move || host_task(h, shared.clone(), start, until))
                .build(),
        );
    }
    let mut others = Vec::new();
    {
        let shared = shared.clone();
        others.push(
            handle
                .create_node()
                .name("arbiter")
                .init(move || arbiter_task(shared.clone(), start, until))
                .build(),
        );
    }
    for i in 0..opts.clients {
        let (shared, rng) = (shared.clone(), root.fork(&format!("client-{i}")));
        let mut c = ClientConfig::new(client_addr(i), (GUEST_ADDR.ip, 7000));
        c.connections = opts.connections;
        c.requests_per_connection = opts.requests_per_connection;
        c.start_at = Instant::ZERO;
        others.push(
            handle
                .create_node()
                .name(format!("client-{i}"))
                .init(move || {
                    let (shared, rng, c) = (shared.clone(), rng.clone(), c.clone());
                    async move {
                        let mut client = Client::new(c, now_since(start), rng);
                        let me = Endpoint::Client(i);
                        lan_task(&mut client, me, &shared, start, until).await;
                        lock(&shared).histories[i as usize] = Some(client.history().clone());
                    }
                })
                .build(),
        );
    }
    if opts.upstream {
        let (shared, seed) = (shared.clone(), root.fork("upstream").next_u64());
        others.push(
            handle
                .create_node()
                .name("upstream")
                .init(move || {
                    let shared = shared.clone();
                    async move {
                        let mut u = UpstreamServer::new(
                            UPSTREAM_ADDR,
                            UPSTREAM_PORT,
                            2,
                            seed,
                            now_since(start),
                        );
                        lan_task(&mut u, Endpoint::Upstream, &shared, start, until).await;
                    }
                })
                .build(),
        );
    }
    faults::controller(
        &handle,
        &shared,
        [hosts[0].id(), hosts[1].id()],
        start,
        until,
    )
    .await;
    // Every task stops at `until`; give the last instant a moment to finish.
    madsim::time::sleep(Duration::from_millis(1)).await;
    drop(others);
    drop(hosts);
    let mut s = lock(&shared);
    let histories: Vec<History> = s
        .histories
        .iter()
        .map(|h| h.clone().expect("every client task ran to the end"))
        .collect();
    let trace = std::mem::take(&mut s.obs.trace);
    let digest = trace.run_digest(&histories);
    NodeRunOutput {
        trace,
        histories,
        released: s.obs.released,
        matched: s.obs.matched(),
        checkpoints: s.obs.checkpoints,
        disk_writes: s.disk_writes,
        disk_write_errors: s.disk_write_errors,
        digest,
    }
}

/// Runs the seed's options on a fresh madsim runtime seeded with the seed (madsim's scheduler
/// is the only consumer of madsim's RNG) and returns the run.
pub fn run(opts: &SwarmOptions, canary: Option<Canary>) -> NodeRunOutput {
    let rt = madsim::runtime::Runtime::with_seed_and_config(opts.seed, madsim::Config::default());
    let opts = opts.clone();
    rt.block_on(async move { run_cluster(&opts, canary).await })
}
