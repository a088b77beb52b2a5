//! The Node engine on its madsim executor (`colo_sim::cluster_run`): host crashes as madsim node
//! kills, restarts and re-protection, crashes inside every checkpoint phase and during a
//! failover, determinism. Runs only in the madsim build:
//! `CARGO_TARGET_DIR=target/sim RUSTFLAGS="--cfg madsim" cargo test -p colo-sim --test madsim_cluster`.
#![cfg(madsim)]

use colo_core::time::{Duration, Instant};
use colo_sim::check;
use colo_sim::client::History;
use colo_sim::cluster_run::{run, run_cluster};
use colo_sim::netem::LinkConfig;
use colo_sim::node_run::NodeRunOutput;
use colo_sim::swarm::{CrashPoint, Cut, CutMode, Host, HostCrash, LinkFault, SwarmOptions};
use colo_sim::trace::TraceEvent;

/// A seed's options with its faults removed and a busy, short workload.
fn calm(seed: u64) -> SwarmOptions {
    let mut o = SwarmOptions::generate(seed);
    o.link_faults.clear();

    o.crashes.clear();
    o.disk_write_error_ppm = 0;
    o.link = LinkConfig::with_delay(Duration::from_micros(200));
    o.safety = Duration::from_secs(3);
    o.liveness = Duration::from_secs(2);
    o.checkpoint_interval = Duration::from_millis(300);
    o.compare_timeout = Duration::from_millis(20);
    o.clients = 2;
    o.connections = 2;
    o.requests_per_connection = 100;
    o
}

fn crash(host: Host, point: CrashPoint) -> HostCrash {
    HostCrash {
        host,
        not_before: Instant::from_millis(400),
        point,
        down_for: Duration::from_millis(300),
        power_loss: false,
    }
}

fn assert_safe_and_served(out: &NodeRunOutput, what: &str) {
    let h: Vec<&History> = out.histories.iter().collect();
    let v = check::check_safety(&out.trace, &h, None);
    assert!(v.is_empty(), "{what}: {v:#?}");
    assert!(
        out.histories
            .iter()
            .all(|h| h.pending() == 0 && h.completed() > 0),
        "{what}: clients left waiting"
    );
}

fn count(out: &NodeRunOutput, f: impl Fn(&TraceEvent) -> bool) -> usize {
    out.trace.events.iter().filter(|e| f(e)).count()
}

#[test]
fn a_killed_host_restarts_and_is_re_protected() {
    for host in [Host::A, Host::B] {
        let mut o = calm(11);
        o.crashes = vec![crash(host, CrashPoint::At)];
        let out = run(&o, None);
        assert_safe_and_served(&out, &format!("{host}"));
        assert_eq!(count(&out, |e| matches!(e, TraceEvent::Crash { .. })), 1);
        assert_eq!(count(&out, |e| matches!(e, TraceEvent::Restart { .. })), 1);
        let solo = |e: &TraceEvent| matches!(e, TraceEvent::TermStarted { solo: true, .. });
        assert!(count(&out, solo) >= 1, "{host}: no failover");
        // After the restart a new pairing (re-protection) completes and the newcomer applies
        // checkpoints again.
        let reprotected = out
            .trace
            .events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Reprotected { at, .. } if *at > Instant::from_millis(700) => Some(*at),
                _ => None,
            })
            .next()
            .unwrap_or_else(|| panic!("{host}: never re-protected"));
        let applied_after = count(
            &out,
            |e| matches!(e, TraceEvent::Applied { at, .. } if *at > reprotected),
        );
        assert!(
            applied_after >= 3,
            "{host}: {applied_after} applied after re-protection"
        );
    }
}

#[test]
fn a_crash_inside_each_checkpoint_phase_keeps_every_safety_checker_green() {
    for host in [Host::A, Host::B] {
        for point in [
            CrashPoint::OnPause,
            CrashPoint::OnTransfer,
            CrashPoint::OnReceived,
            CrashPoint::OnApply,
        ] {
            let mut o = calm(12);
            o.crashes = vec![crash(host, point)];
            let out = run(&o, None);
            let what = format!("{host} {point:?}");
            assert_safe_and_served(&out, &what);
            assert_eq!(
                count(&out, |e| matches!(e, TraceEvent::Crash { .. })),
                1,
                "{what}: the crash did not fire"
            );
            assert_eq!(count(&out, |e| matches!(e, TraceEvent::Restart { .. })), 1);
        }
    }
}

#[test]
fn a_crash_during_a_failover_and_a_second_crash_after_re_protection() {
    // Host B stops hearing host A (one-way cut) and takes over; host A crashes during that
    // failover, restarts, is re-protected by B; then B (now primary) crashes too and A, the
    // re-protected newcomer, takes over.
    let mut o = calm(13);
    o.safety = Duration::from_secs(6);
    o.link_faults = vec![LinkFault {
        cut: Cut::HostHost,
        mode: CutMode::OneWay,
        from: Instant::from_millis(400),
        until: Instant::from_millis(1_500),
    }];
    o.crashes = vec![
        crash(Host::A, CrashPoint::OnFailover),
        HostCrash {
            host: Host::B,
            not_before: Instant::from_millis(3_500),
            point: CrashPoint::At,
            down_for: Duration::from_millis(500),
            power_loss: false,
        },
    ];
    let out = run(&o, None);
    assert_safe_and_served(&out, "failover crash");
    assert_eq!(count(&out, |e| matches!(e, TraceEvent::Crash { .. })), 2);
    let solo_a = |e: &TraceEvent| {
        matches!(
            e,
            TraceEvent::TermStarted {
                host: Host::A,
                solo: true,
                ..
            }
        )
    };
    assert!(
        count(&out, solo_a) >= 1,
        "the re-protected host A never took over"
    );
}

#[test]
fn guest_disk_writes_with_errors_keep_every_safety_checker_green() {
    let mut o = calm(14);
    o.disk_write_error_ppm = 20_000;
    let out = run(&o, None);
    assert!(out.disk_writes > 50, "disk writes {}", out.disk_writes);
    assert!(out.disk_write_errors > 0);
    let h: Vec<&History> = out.histories.iter().collect();
    let v = check::check_safety(&out.trace, &h, None);
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn the_same_seed_twice_gives_the_same_digest() {
    let o = SwarmOptions::generate(21);
    let a = run(&o, None);
    let b = run(&o, None);
    assert_eq!(a.digest, b.digest);
    assert_ne!(a.digest, run(&SwarmOptions::generate(22), None).digest);
}

#[test]
fn madsim_sees_no_nondeterminism_in_the_cluster() {
    // madsim's own check: records every draw of its RNG (the scheduler's) with the simulated
    // time in run 1 and checks run 2 against it.
    fn cluster() -> impl std::future::Future<Output = ()> {
        let mut o = calm(5);
        o.crashes = vec![crash(Host::A, CrashPoint::OnPause)];
        o.safety = Duration::from_secs(1);
        o.liveness = Duration::from_secs(1);
        async move {
            run_cluster(&o, None).await;
        }
    }
    madsim::runtime::Runtime::check_determinism(5, madsim::Config::default(), cluster);
}

#[test]
fn swarm_seeds_pass_under_the_cluster() {
    for seed in 0..8 {
        let r = colo_sim::runner::run_seed(seed, None, false);
        assert_eq!(
            r.verdict,
            colo_sim::runner::Verdict::Pass,
            "seed {seed}:\n{}",
            r.options
        );
    }
}

/// Seeds the madsim executor failed on (`colo-sim` built with `--cfg madsim`), with what
/// went wrong before the fix.
const CLUSTER_SEEDS: &[(u64, &str)] = &[(
    18,
    "liveness: the primary crashed while taking over (after a secondary disk error); its lease \
     request still reached the arbiter, which leased the dead host and fenced the survivor",
)];

#[test]
fn cluster_regression_seeds_pass() {
    for (seed, why) in CLUSTER_SEEDS {
        let r = colo_sim::runner::run_seed(*seed, None, false);
        assert_eq!(
            r.verdict,
            colo_sim::runner::Verdict::Pass,
            "seed {seed} ({why}) failed again under the madsim executor; options:\n{}",
            r.options
        );
    }
}
