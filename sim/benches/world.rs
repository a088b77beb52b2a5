//! Criterion benchmarks of the simulated world: one 10-simulated-second run of the standard
//! world (one guest, two clients with two connections each, upstream log, a lossy and
//! reordering LAN), and the cost of checkpoint + restore of the guest at the end of such a run
//! (a fresh guest replays every recorded step since boot; a replica that already holds a
//! prefix of the history replays only the rest: see docs/simulation.md), and of the exact
//! state hash (afresh, and cached).
//!
//! Run: `cargo bench -p colo-sim --bench world`.

use std::hint::black_box;

use colo_core::time::{Duration, Instant};
use colo_sim::guest::Guest;
use colo_sim::netem::LinkConfig;
use colo_sim::rng::SimRng;
use colo_sim::world::{World, WorldSpec};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn spec() -> WorldSpec {
    WorldSpec {
        link: LinkConfig {
            delay: Duration::from_micros(200),
            jitter: Duration::from_micros(300),
            loss_ppm: 10_000,
            duplicate_ppm: 10_000,
            reorder_ppm: 10_000,
            reorder_delay: Duration::from_millis(2),
        },
        // Enough requests that the clients stay busy for the whole 10 s.
        requests_per_connection: 10_000,
        ..WorldSpec::default()
    }
}

fn run_10s(seed: u64) -> World {
    let mut w = World::new(seed, &spec());
    w.run_until(Instant::from_millis(10_000), |_| false);
    w
}

fn world(c: &mut Criterion) {
    let mut group = c.benchmark_group("world");
    group.sample_size(10);
    let mut seed = 0;
    group.bench_function("run_10_simulated_seconds", |b| {
        b.iter(|| {
            seed += 1;
            black_box(run_10s(seed).guest.state_hash())
        })
    });
    let mut w = run_10s(1);
    let snap = w.guest.checkpoint();
    eprintln!(
        "after 10 simulated seconds: {} guest steps recorded, {} requests served, {} loop iterations",
        snap.steps(),
        w.guest.requests_served(),
        w.iterations
    );
    group.bench_function("restore_after_10_simulated_seconds", |b| {
        b.iter(|| black_box(Guest::from_snapshot(&snap, SimRng::new(2)).history_digest()))
    });
    group.bench_function("checkpoint", |b| {
        b.iter(|| black_box(w.guest.checkpoint().steps()))
    });
    // Incremental restore: a replica holding the history up to 9.5 s takes the snapshot at
    // 10 s (an SVM not run between two checkpoints, as the removed platform engine's), replaying only the last 0.5 s.
    let mut early = World::new(1, &spec());
    early.run_until(Instant::from_millis(9_500), |_| false);
    let s_early = early.guest.checkpoint();
    early.run_until(Instant::from_millis(10_000), |_| false);
    let s_late = early.guest.checkpoint();
    group.bench_function("restore_incremental_last_half_second", |b| {
        b.iter_batched(
            || Guest::from_snapshot(&s_early, SimRng::new(2)),
            |mut g| {
                g.restore(&s_late);
                black_box(g.history_digest())
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("state_hash_after_10_simulated_seconds", |b| {
        b.iter(|| black_box(w.guest.state_hash_uncached()))
    });
    group.bench_function("state_hash_cached", |b| {
        b.iter(|| black_box(w.guest.state_hash()))
    });
    group.finish();
}

criterion_group!(benches, world);
criterion_main!(benches);
