//! madsim smoke: the standard world as tasks on madsim nodes, and a determinism check.
//! Runs only in the madsim build:
//! `CARGO_TARGET_DIR=target/sim RUSTFLAGS="--cfg madsim" cargo test -p colo-sim --test madsim_smoke`.
#![cfg(madsim)]

use colo_core::time::Duration;
use colo_sim::cluster::{ClusterOutcome, run_world};
use colo_sim::netem::LinkConfig;
use colo_sim::world::WorldSpec;

fn spec() -> WorldSpec {
    WorldSpec {
        link: LinkConfig {
            delay: Duration::from_micros(200),
            jitter: Duration::from_micros(300),
            loss_ppm: 30_000,
            duplicate_ppm: 20_000,
            reorder_ppm: 30_000,
            reorder_delay: Duration::from_millis(2),
        },
        requests_per_connection: 15,
        ..WorldSpec::default()
    }
}

fn run(seed: u64) -> ClusterOutcome {
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(run_world(seed, spec(), Duration::from_secs(10)))
}

#[test]
fn world_runs_on_madsim_nodes_and_clients_finish() {
    let out = run(1);
    for (i, h) in out.histories.iter().enumerate() {
        let h = h.as_ref().expect("client ran");
        assert!(h.anomalies.is_empty(), "client {i}: {:?}", h.anomalies);
        assert_eq!(h.ops.len(), 2 * 15, "client {i} issued its workload");
        assert_eq!(h.pending(), 0, "client {i} got every reply");
    }
}

#[test]
fn same_seed_twice_gives_the_same_digest() {
    let a = run(7);
    let b = run(7);
    assert_eq!(a, b);
    assert_ne!(a.digest, run(8).digest);
}

#[test]
fn madsim_sees_no_nondeterminism_in_the_world() {
    // madsim's own check: records every draw of its RNG with the simulated time in run 1 and
    // checks run 2 against it (deps-spike.md section 2).
    fn world() -> impl std::future::Future<Output = ClusterOutcome> {
        run_world(3, spec(), Duration::from_secs(2))
    }
    madsim::runtime::Runtime::check_determinism(3, madsim::Config::default(), world);
}
