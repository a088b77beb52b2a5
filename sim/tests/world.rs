//! End-to-end behaviour of the simulated world without colo in the middle: real TCP between
//! smoltcp clients and a smoltcp guest through a faulty network, and a guest checkpoint restored
//! into another VM that takes over the same connections.

use std::collections::BTreeMap;

use colo_core::time::{Duration, Instant};
use colo_sim::client::history::StreamEnd;
use colo_sim::client::{Client, History};
use colo_sim::guest::Guest;
use colo_sim::netem::LinkConfig;
use colo_sim::proto::{Reply, Request};
use colo_sim::rng::SimRng;
use colo_sim::world::{Endpoint, World, WorldSpec};

fn faulty_link() -> LinkConfig {
    LinkConfig {
        delay: Duration::from_micros(200),
        jitter: Duration::from_micros(300),
        loss_ppm: 30_000,
        duplicate_ppm: 20_000,
        reorder_ppm: 30_000,
        reorder_delay: Duration::from_millis(2),
    }
}

fn build_world(seed: u64, link: LinkConfig, clients: u32, requests: u64) -> World {
    let spec = WorldSpec {
        link,
        clients,
        requests_per_connection: requests,
        ..WorldSpec::default()
    };
    World::new(seed, &spec)
}

/// The guest's store is a single copy, so per key the write versions clients saw are exactly
/// 1..=n (each write applied once: no loss, no duplicate across retransmissions and dups), an
/// INCR's count equals its key's version (only INCR writes those keys), every request got a
/// reply on the right connection in order (no anomalies) and every stream closed cleanly.
/// Returns the violations found and the number of writes.
fn single_copy_violations(histories: &[&History]) -> (Vec<String>, usize) {
    let mut bad = Vec::new();
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut writes = 0;
    for (c, h) in histories.iter().enumerate() {
        if !h.anomalies.is_empty() {
            bad.push(format!("client {c} anomalies: {:?}", h.anomalies));
        }
        if h.pending() != 0 {
            bad.push(format!("client {c}: {} requests unanswered", h.pending()));
        }
        for s in &h.streams {
            if s.end != StreamEnd::Closed {
                bad.push(format!("client {c} stream {} ended {:?}", s.conn, s.end));
            }
        }
        for op in &h.ops {
            let Some(done) = op.completion.as_ref() else {
                continue;
            };
            match (&op.request, &done.reply) {
                (Request::Set { key, .. }, Reply::Ok { version }) => {
                    versions.entry(key.clone()).or_default().push(*version);
                    writes += 1;
                }
                (Request::Incr { key }, Reply::Value { value, version }) => {
                    if value != &version.to_string() {
                        bad.push(format!("INCR {key}: count {value} at version {version}"));
                    }
                    versions.entry(key.clone()).or_default().push(*version);
                    writes += 1;
                }
                (Request::Get { .. }, Reply::Value { .. } | Reply::Missing) => {}
                (Request::Nonce, Reply::Nonce { .. }) => {}
                (req, rep) => bad.push(format!("reply {rep:?} does not answer {req:?}")),
            }
        }
    }
    for (key, mut vs) in versions {
        vs.sort_unstable();
        let expected: Vec<u64> = (1..=vs.len() as u64).collect();
        if vs != expected {
            bad.push(format!("versions of {key}: {vs:?}"));
        }
    }
    (bad, writes)
}

fn assert_single_copy(histories: &[&History]) -> usize {
    let (bad, writes) = single_copy_violations(histories);
    assert!(bad.is_empty(), "single-copy violations: {bad:#?}");
    writes
}

#[test]
fn faulty_network_still_answers_every_request_exactly_once() {
    let mut world = build_world(11, faulty_link(), 2, 25);
    let done = world.run_until(Instant::from_millis(60_000), World::clients_done);
    assert!(done, "clients finished by t={:?}", world.now);
    let histories: Vec<&History> = world.clients.iter().map(Client::history).collect();
    let writes = assert_single_copy(&histories);
    assert!(writes > 0);
    assert_eq!(world.guest.requests_served(), 2 * 2 * 25);
    let stats = world.net.stats();
    assert!(
        stats.lost > 0 && stats.duplicated > 0 && stats.reordered > 0,
        "{stats:?}"
    );

    // The guest-opened connection delivered every write's log entry, in order, exactly once.
    let more = world.run_until(world.now + Duration::from_secs(5), |w| {
        w.guest.upstream_backlog().0 == 0
    });
    assert!(more, "upstream log drained");
    let up = world.upstream.as_ref().expect("upstream");
    assert_eq!(up.contiguous(), writes as u64);
    assert_eq!(up.entries().len(), writes);
}

#[test]
fn same_seed_replays_the_same_world() {
    let run = |seed| {
        let mut w = build_world(seed, faulty_link(), 2, 10);
        w.run_until(Instant::from_millis(20_000), World::clients_done);
        (
            w.net.trace_hash(),
            w.guest.state_hash(),
            w.clients
                .iter()
                .map(|c| c.history().clone())
                .collect::<Vec<_>>(),
            w.now,
        )
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(a.0, run(6).0);
}

#[test]
fn restored_guest_takes_over_the_same_connections() {
    let mut world = build_world(21, faulty_link(), 2, 30);
    // Let the workload get going: connections established, some requests answered.
    let started = world.run_until(Instant::from_millis(60_000), |w| {
        w.clients.iter().all(|c| c.history().completed() >= 10)
    });
    assert!(started);
    let served_before = world.guest.requests_served();

    // "Failover" without colo: checkpoint guest A, restore the snapshot into a fresh VM B with
    // its own entropy, and put B on the LAN in A's place at the same instant.
    let snap = world.guest.checkpoint();
    let hash_a = world.guest.state_hash();
    assert_eq!(snap.history_digest(), world.guest.history_digest());
    let b = Guest::from_snapshot(&snap, SimRng::new(21).fork("vm-b"));
    assert_eq!(
        b.state_hash(),
        hash_a,
        "B after restore equals A at checkpoint"
    );
    assert_eq!(b.history_digest(), snap.history_digest());
    assert_eq!(b.disk_hash(), world.guest.disk_hash());
    assert_eq!(b.requests_served(), served_before);
    let a = std::mem::replace(&mut world.guest, b);

    let done = world.run_until(Instant::from_millis(120_000), World::clients_done);
    assert!(done, "clients finished on B by t={:?}", world.now);
    let histories: Vec<&History> = world.clients.iter().map(Client::history).collect();
    let writes = assert_single_copy(&histories);
    assert!(
        world.guest.requests_served() > served_before,
        "B served the rest"
    );
    assert_eq!(world.guest.requests_served(), 2 * 2 * 30);
    drop(a);
    let drained = world.run_until(world.now + Duration::from_secs(5), |w| {
        w.guest.upstream_backlog().0 == 0
    });
    assert!(drained);
    let up = world.upstream.as_ref().expect("upstream");
    assert_eq!(
        up.contiguous(),
        writes as u64,
        "guest-opened connection survived too"
    );
}

#[test]
fn many_seeds_on_a_faulty_network_keep_single_copy_semantics() {
    for seed in 100..116 {
        let mut world = build_world(seed, faulty_link(), 2, 12);
        let done = world.run_until(Instant::from_millis(120_000), World::clients_done);
        assert!(done, "seed {seed}: clients finished by t={:?}", world.now);
        let histories: Vec<&History> = world.clients.iter().map(Client::history).collect();
        assert_single_copy(&histories);
    }
}

#[test]
fn connections_survive_a_partition_and_a_clog_once_healed() {
    let mut world = build_world(31, faulty_link(), 2, 30);
    let started = world.run_until(Instant::from_millis(60_000), |w| {
        w.clients.iter().all(|c| c.history().completed() >= 5)
    });
    assert!(started);
    // Client 0 loses the guest completely for 3 s; client 1's requests reach the guest but
    // the replies are held (clogged) for 2 s; the guest cannot reach upstream one way.
    let (g, c0, c1, up) = (
        Endpoint::Guest,
        Endpoint::Client(0),
        Endpoint::Client(1),
        Endpoint::Upstream,
    );
    world.net.partition(g, c0);
    world.net.clog(g, c1);
    world.net.partition_one_way(g, up);
    let t0 = world.now;
    let before: Vec<usize> = world
        .clients
        .iter()
        .map(|c| c.history().completed())
        .collect();
    world.run_until(t0 + Duration::from_secs(2), |_| false);
    let during: Vec<usize> = world
        .clients
        .iter()
        .map(|c| c.history().completed())
        .collect();
    assert_eq!(before, during, "no reply crosses a partition or a clog");
    world.net.unclog(world.now, &g, &c1);
    world.run_until(t0 + Duration::from_secs(3), |_| false);
    world.net.heal_all();
    let done = world.run_until(Instant::from_millis(300_000), World::clients_done);
    assert!(done, "clients finished after healing, t={:?}", world.now);
    let histories: Vec<&History> = world.clients.iter().map(Client::history).collect();
    let writes = assert_single_copy(&histories);
    let drained = world.run_until(world.now + Duration::from_secs(30), |w| {
        w.guest.upstream_backlog().0 == 0
    });
    assert!(
        drained,
        "upstream log drained after the one-way partition healed"
    );
    assert_eq!(
        world.upstream.as_ref().map(|u| u.contiguous()),
        Some(writes as u64)
    );
    assert!(world.net.stats().cut > 0 && world.net.stats().clogged > 0);
}

#[test]
fn restoring_a_snapshot_older_than_released_output_is_visible_to_clients() {
    // What colo's output commit exists to prevent: A's replies after the checkpoint reach the
    // clients, then A is replaced by B restored from that (older) checkpoint. The world must
    // make this visible (a stalled or inconsistent history), or its tests prove nothing.
    let mut world = build_world(41, faulty_link(), 2, 30);
    assert!(world.run_until(Instant::from_millis(60_000), |w| {
        w.clients.iter().all(|c| c.history().completed() >= 5)
    }));
    let snap = world.guest.checkpoint();
    assert!(world.run_until(Instant::from_millis(60_000), |w| {
        w.clients.iter().all(|c| c.history().completed() >= 12)
    }));
    world.guest = Guest::from_snapshot(&snap, SimRng::new(41).fork("vm-b"));
    let finished = world.run_until(world.now + Duration::from_secs(60), World::clients_done);
    let histories: Vec<&History> = world.clients.iter().map(Client::history).collect();
    let (bad, _) = single_copy_violations(&histories);
    assert!(
        !finished || !bad.is_empty(),
        "a rollback behind released output went unnoticed"
    );
}
