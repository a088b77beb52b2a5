//! Criterion benchmark of issue 4's simulator throughput figure: seeds of the fixed
//! 10-simulated-second scenario (`colo-sim --duration 10s`: each seed's own swarm options and
//! fault mix, 4 s safety + 6 s liveness, judged by every checker) run one after another on one
//! core, under the Node engine: the plain loop in a normal build (`node_run`), the madsim
//! cluster in a `--cfg madsim` build (`cluster_run`, own target dir).
//!
//! One iteration runs the same [`SEEDS`] seeds; criterion's throughput line (elements per
//! second) times 60 is seeds per minute per core. Every seed must pass: a failing seed would
//! make the figure meaningless, so the benchmark panics on one.
//!
//! Run: `cargo bench -p colo-sim --bench seeds` (docs/benchmarks.md, simulator section).

use std::hint::black_box;

use colo_core::time::Duration;
use colo_sim::runner::{self, Verdict};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Seeds per iteration: enough that the per-seed spread (1 to 4 clients, 0 to 4 link faults,
/// checkpoint intervals of 100 ms to 3 s) averages out.
const SEEDS: std::ops::Range<u64> = 0..20;

fn seeds_10s(c: &mut Criterion) {
    let duration = Some(Duration::from_secs(10));
    let mut group = c.benchmark_group("seeds_10_simulated_seconds");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SEEDS.end - SEEDS.start));
    let name = if cfg!(madsim) { "madsim" } else { "plain_loop" };
    group.bench_function(name, |b| {
        b.iter(|| {
            for seed in SEEDS {
                let o = runner::scenario_options(seed, None, duration);
                let r = runner::run_options(o, None, false);
                assert_eq!(r.verdict, Verdict::Pass, "seed {seed} ({name})");
                black_box(r.output.map(|o| o.digest));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, seeds_10s);
criterion_main!(benches);
