//! `cluster` (only under `--cfg madsim`): the same world as [`crate::world`], run as tasks on
//! madsim nodes — one node per guest, client and upstream server — with frames crossing the
//! shared [`Fabric`] (the seeded [`Netem`] behind a [`Lan`]), and madsim providing time.
//!
//! It uses the glue between the sans-IO models and madsim's executor that the Node engine's
//! madsim executor uses too ([`crate::bell`]: the LAN model trait, bells, `nap`) and keeps the
//! crate's invariant under it: each node's task feeds its model only at simulated instants and hands
//! every emitted frame to the fabric at once, and a task sleeping until its model's deadline is
//! woken (its "bell" rung) whenever a frame is sent to it, so no frame waits for a timer it
//! does not own. Nothing here reads madsim's RNG; madsim's scheduler interleaves the tasks,
//! deterministically per seed, and [`run_world`]'s result digests everything observable so a
//! second run with the same seed can be compared (see `docs/simulation.md`).

// Under `--cfg madsim`, `madsim::time::Instant` is std's type and its clock is madsim's
// simulated one: the determinism lint (sim/clippy.toml) cannot tell the two apart.
#![cfg_attr(madsim, allow(clippy::disallowed_methods, clippy::disallowed_types))]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use colo_core::time::{Duration, Instant};

use crate::bell::{Bells, HasBells, LanModel, lock, nap, now_since};
use crate::client::{Client, ClientConfig, History, UpstreamServer};
use crate::guest::{Guest, GuestConfig};
use crate::hash::Fnv64;
use crate::lan::Lan;
use crate::netem::Netem;
use crate::rng::SimRng;
use crate::world::{Endpoint, GUEST_ADDR, UPSTREAM_ADDR, UPSTREAM_PORT, WorldSpec, client_addr};

/// The network every node shares: emulator, switch, per-endpoint inboxes and bells.
#[derive(Debug)]
pub struct Fabric {
    net: Netem<Endpoint>,
    lan: Lan<Endpoint>,
    inbox: BTreeMap<Endpoint, VecDeque<Vec<u8>>>,
    bells: Bells<Endpoint>,
}

impl Fabric {
    fn ring(&mut self, e: Endpoint) {
        self.bells.ring(e);
    }

    fn send(&mut self, now: Instant, from: Endpoint, frame: Vec<u8>) {
        for to in self.lan.destinations(&from, &frame) {
            self.net.send(now, from, to, frame.clone());
            self.ring(to);
        }
    }

    fn take(&mut self, now: Instant, me: Endpoint) -> VecDeque<Vec<u8>> {
        while let Some(d) = self.net.poll_deliver(now) {
            self.inbox.entry(d.to).or_default().push_back(d.frame);
            self.ring(d.to);
        }
        self.inbox.remove(&me).unwrap_or_default()
    }
}

impl HasBells<Endpoint> for Fabric {
    fn bells(&mut self) -> &mut Bells<Endpoint> {
        &mut self.bells
    }
}

/// Drives one model on the current node until simulated time `until`.
async fn drive(
    model: &mut dyn LanModel,
    me: Endpoint,
    fabric: &Mutex<Fabric>,
    start: madsim::time::Instant,
    until: Instant,
) {
    loop {
        let now = now_since(start);
        let frames = lock(fabric).take(now, me);
        for f in frames {
            model.handle_frame(now, f);
        }
        if model.poll_timeout().is_some_and(|t| t <= now) {
            model.handle_timeout(now);
        }
        {
            let mut f = lock(fabric);
            while let Some(frame) = model.poll_transmit() {
                f.send(now, me, frame);
            }
        }
        if now >= until {
            return;
        }
        let net_next = lock(fabric).net.poll_timeout();
        let next = [model.poll_timeout(), net_next, Some(until)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until)
            .max(now + Duration::from_micros(1));
        nap(fabric, me, start, next).await;
    }
}

/// What a madsim run of the world observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterOutcome {
    /// Every client's history, by client index (`None` if the client never ran).
    pub histories: Vec<Option<History>>,
    /// The emulator's delivery-trace digest.
    pub trace_hash: u64,
    /// The guest's state hash at the end.
    pub guest_state_hash: u64,
    /// Digest of all of the above: equal digests, equal runs.
    pub digest: u64,
}

/// Runs the standard world of `spec` for `seed` on madsim nodes (must be called inside a madsim
/// runtime) for `duration` of simulated time.
pub async fn run_world(seed: u64, spec: WorldSpec, duration: Duration) -> ClusterOutcome {
    let handle = madsim::runtime::Handle::current();
    let root = SimRng::new(seed);
    let start = madsim::time::Instant::now();
    let until = Instant::ZERO + duration;
    let mut lan = Lan::new();
    lan.attach(GUEST_ADDR.mac, Endpoint::Guest);
    lan.attach(UPSTREAM_ADDR.mac, Endpoint::Upstream);
    for i in 0..spec.clients {
        lan.attach(client_addr(i).mac, Endpoint::Client(i));
    }
    let fabric = Arc::new(Mutex::new(Fabric {
        net: Netem::new(root.fork("netem"), spec.link),
        lan,
        inbox: BTreeMap::new(),
        bells: Bells::default(),
    }));
    let histories: Arc<Mutex<Vec<Option<History>>>> =
        Arc::new(Mutex::new(vec![None; spec.clients as usize]));
    let guest_hash = Arc::new(Mutex::new(0u64));

    let mut cfg = GuestConfig::new(GUEST_ADDR, root.fork("guest-image").next_u64());
    if spec.upstream {
        cfg.upstream = Some((UPSTREAM_ADDR.ip, UPSTREAM_PORT));
    }
    let mut nodes = Vec::new();
    {
        let (fabric, hash, rng) = (fabric.clone(), guest_hash.clone(), root.fork("vm-a"));
        nodes.push(
            handle
                .create_node()
                .name("guest")
                .init(move || {
                    let (fabric, hash, rng, cfg) =
                        (fabric.clone(), hash.clone(), rng.clone(), cfg.clone());
                    async move {
                        let mut g = Guest::boot(cfg, now_since(start), rng);
                        drive(&mut g, Endpoint::Guest, &fabric, start, until).await;
                        *lock(&hash) = g.state_hash();
                    }
                })
                .build(),
        );
    }
    for i in 0..spec.clients {
        let (fabric, hs, rng) = (
            fabric.clone(),
            histories.clone(),
            root.fork(&format!("client-{i}")),
        );
        let mut c = ClientConfig::new(client_addr(i), (GUEST_ADDR.ip, 7000));
        c.connections = spec.connections;
        c.requests_per_connection = spec.requests_per_connection;
        c.start_at = spec.client_start_at;
        nodes.push(
            handle
                .create_node()
                .name(format!("client-{i}"))
                .init(move || {
                    let (fabric, hs, rng, c) = (fabric.clone(), hs.clone(), rng.clone(), c.clone());
                    async move {
                        let mut client = Client::new(c, now_since(start), rng);
                        drive(&mut client, Endpoint::Client(i), &fabric, start, until).await;
                        lock(&hs)[i as usize] = Some(client.history().clone());
                    }
                })
                .build(),
        );
    }
    if spec.upstream {
        let (fabric, seed) = (fabric.clone(), root.fork("upstream").next_u64());
        nodes.push(
            handle
                .create_node()
                .name("upstream")
                .init(move || {
                    let fabric = fabric.clone();
                    async move {
                        let mut u = UpstreamServer::new(
                            UPSTREAM_ADDR,
                            UPSTREAM_PORT,
                            2,
                            seed,
                            now_since(start),
                        );
                        drive(&mut u, Endpoint::Upstream, &fabric, start, until).await;
                    }
                })
                .build(),
        );
    }
    // Every node stops at `until`; give the last instant a moment to finish.
    madsim::time::sleep(duration + Duration::from_millis(1)).await;
    drop(nodes);
    let histories = lock(&histories).clone();
    let trace_hash = lock(&fabric).net.trace_hash();
    let guest_state_hash = *lock(&guest_hash);
    let mut h = Fnv64::new();
    h.write_u64(trace_hash);
    h.write_u64(guest_state_hash);
    h.write_field(format!("{histories:?}").as_bytes());
    ClusterOutcome {
        histories,
        trace_hash,
        guest_state_hash,
        digest: h.finish(),
    }
}
