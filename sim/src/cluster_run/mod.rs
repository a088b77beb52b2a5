//! `cluster_run` (only under `--cfg madsim`): the madsim executor of the Node engine. The
//! fabric ([`crate::fabric`]: two `SimHost`s, the arbiter, clients, the two emulators, the
//! crash rules) runs as a madsim cluster: one madsim node per host (`host-a`, `host-b`), one for
//! the arbiter, one per client and one for the upstream server, each a task calling its actor's
//! step function; a controller task (the runtime's main task) applies the seed's faults. madsim
//! gives time, tasks and node kill/restart: a host crash is `Handle::kill` (its task and its
//! `SimHost` are dropped); after `down_for`, `Handle::restart` runs the host's init again, which
//! boots the fresh secondary ([`Shared::boot_host`]).
//!
//! Invariant kept: nothing here reads madsim's RNG; each task touches the fabric only while it
//! holds the fabric lock, without awaiting, so a run is a pure function of the seed and
//! madsim's seeded scheduler ([`run_cluster`]'s digest is compared by `--check-determinism`).

// Under `--cfg madsim`, `madsim::time::Instant` is std's type and its clock is madsim's
// simulated one: the determinism lint (sim/clippy.toml) cannot tell the two apart.
#![cfg_attr(madsim, allow(clippy::disallowed_methods, clippy::disallowed_types))]

use std::sync::{Arc, Mutex};

use colo_core::failover::Arbiter;
use colo_core::time::{Duration, Instant};

use crate::bell::{Bells, HasBells, LanModel, lock, nap, now_since};
use crate::fabric::{NodeRunOutput, Shared, Waiter};
use crate::platform::Canary;
use crate::swarm::SwarmOptions;
use crate::world::Endpoint;

type SharedRef = Arc<Mutex<Shared>>;

impl HasBells<Waiter> for Shared {
    fn bells(&mut self) -> &mut Bells<Waiter> {
        &mut self.bells
    }
}

/// The host task: boots (first boot: A primary, B secondary; after a restart: an empty
/// secondary), then steps its host at every instant something is due for it or its bell rings.
async fn host_task(h: usize, shared: SharedRef, start: madsim::time::Instant, until: Instant) {
    let mut sim = {
        let mut s = lock(&shared);
        let now = now_since(start);
        s.boot_host(h, now)
    };
    loop {
        let now = now_since(start);
        let next = {
            let mut s = lock(&shared);
            // Crashed: the controller kills this node at this instant.
            let next = s.step_host(now, h, &mut sim);
            let Some(next) = next else { return };
            next.unwrap_or(until)
                .min(until)
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
        let next = lock(&shared)
            .step_arbiter(now, &mut arbiter)
            .unwrap_or(until)
            .min(until)
            .max(now + Duration::from_micros(1));
        if now >= until {
            return;
        }
        nap(&shared, Waiter::Arbiter, start, next).await;
    }
}

async fn lan_task(
    model: &mut dyn LanModel,
    me: Endpoint,
    shared: &Mutex<Shared>,
    start: madsim::time::Instant,
    until: Instant,
) {
    loop {
        let now = now_since(start);
        let next = lock(shared)
            .step_lan(now, model, me)
            .unwrap_or(until)
            .min(until)
            .max(now + Duration::from_micros(1));
        if now >= until {
            return;
        }
        nap(shared, Waiter::Lan(me), start, next).await;
    }
}

/// The controller task: applies the seed's faults, kills crashed hosts' madsim nodes and
/// restarts them after their downtime, until `until`.
async fn controller(
    handle: &madsim::runtime::Handle,
    shared: &SharedRef,
    ids: [madsim::task::NodeId; 2],
    start: madsim::time::Instant,
    until: Instant,
) {
    loop {
        let now = now_since(start);
        let (kills, restarts, next) = lock(shared).step_controller(now);
        for h in kills {
            handle.kill(ids[h]);
        }
        for h in restarts {
            // The init closure boots a fresh secondary (see `host_task`).
            handle.restart(ids[h]);
        }
        if now >= until {
            return;
        }
        nap(
            shared,
            Waiter::Controller,
            start,
            next.unwrap_or(until).min(until),
        )
        .await;
    }
}

/// Runs the seed's world under two Nodes as a madsim cluster (must be called inside a madsim
/// runtime, e.g. `Runtime::with_seed_and_config(opts.seed, ..)`); the output is the same as
/// the plain loop's ([`crate::node_run::NodeRun::run`]), so the runner judges both alike.
pub async fn run_cluster(opts: &SwarmOptions, canary: Option<Canary>) -> NodeRunOutput {
    let handle = madsim::runtime::Handle::current();
    let start = madsim::time::Instant::now();
    let until = opts.ends();
    let shared = Arc::new(Mutex::new(Shared::new(opts, canary)));
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
        let shared = shared.clone();
        others.push(
            handle
                .create_node()
                .name(format!("client-{i}"))
                .init(move || {
                    let shared = shared.clone();
                    async move {
                        let mut client = lock(&shared).client(i, now_since(start));
                        let me = Endpoint::Client(i);
                        lan_task(&mut client, me, &shared, start, until).await;
                        lock(&shared).histories[i as usize] = Some(client.history().clone());
                    }
                })
                .build(),
        );
    }
    if opts.upstream {
        let shared = shared.clone();
        others.push(
            handle
                .create_node()
                .name("upstream")
                .init(move || {
                    let shared = shared.clone();
                    async move {
                        let u = lock(&shared).upstream(now_since(start));
                        if let Some(mut u) = u {
                            lan_task(&mut u, Endpoint::Upstream, &shared, start, until).await;
                        }
                    }
                })
                .build(),
        );
    }
    controller(
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
    lock(&shared).finish()
}

/// Runs the seed's options on a fresh madsim runtime seeded with the seed (madsim's scheduler
/// is the only consumer of madsim's RNG) and returns the run.
pub fn run(opts: &SwarmOptions, canary: Option<Canary>) -> NodeRunOutput {
    let rt = madsim::runtime::Runtime::with_seed_and_config(opts.seed, madsim::Config::default());
    let opts = opts.clone();
    rt.block_on(async move { run_cluster(&opts, canary).await })
}
