use super::*;
use crate::check;

fn calm(seed: u64) -> SwarmOptions {
    let mut o = SwarmOptions::generate(seed);
    o.link_faults.clear();
    o.crashes.clear();
    o.link = crate::netem::LinkConfig::with_delay(Duration::from_micros(200));
    o.safety = Duration::from_millis(1_500);
    o.liveness = Duration::from_millis(1_500);
    o.checkpoint_interval = Duration::from_millis(300);
    o.compare_timeout = Duration::from_millis(20);
    o.clients = 2;
    o.connections = 2;
    o.requests_per_connection = 60;
    o
}

fn violations(out: &RunOutput) -> Vec<crate::trace::Violation> {
    let h: Vec<&History> = out.histories.iter().collect();
    check::check_safety(&out.trace, &h, None)
}

#[test]
fn a_calm_run_checkpoints_releases_and_passes_every_safety_checker() {
    let out = ColoRun::new(&calm(1), None).run();
    assert!(out.stats.checkpoints >= 5, "{:?}", out.stats);
    assert!(out.stats.released > 50, "{:?}", out.stats);
    let v = violations(&out);
    assert!(v.is_empty(), "{v:#?}");
    assert!(out.histories.iter().any(|h| h.completed() > 0));
}

#[test]
fn the_same_options_give_the_same_digest() {
    let o = calm(2);
    let a = ColoRun::new(&o, None).run();
    let b = ColoRun::new(&o, None).run();
    assert_eq!(a.digest, b.digest);
}

#[test]
fn a_primary_crash_fails_over_to_the_secondary_without_breaking_clients() {
    let mut o = calm(3);
    o.crashes.push(crate::swarm::HostCrash {
        host: Host::A,
        not_before: Instant::from_millis(500),
        point: CrashPoint::At,
        down_for: Duration::from_millis(500),
    });
    let out = ColoRun::new(&o, None).run();
    assert_eq!(out.stats.failovers, 1, "{:?}", out.stats);
    let v = violations(&out);
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn every_canary_is_caught_by_its_checker() {
    for canary in Canary::ALL {
        let mut o = calm(4);
        if canary == Canary::ReleaseWithoutLease {
            o.crashes.push(crate::swarm::HostCrash {
                host: Host::A,
                not_before: Instant::from_millis(500),
                point: CrashPoint::At,
                down_for: Duration::from_millis(500),
            });
        }
        let out = ColoRun::new(&o, Some(canary)).run();
        let v = violations(&out);
        assert!(
            v.iter().any(|v| v.checker == canary.caught_by()),
            "{} not caught by {}: {v:#?}",
            canary.name(),
            canary.caught_by()
        );
    }
}

#[test]
fn histories_after_a_failover_keep_progressing() {
    let mut o = calm(5);
    o.crashes.push(crate::swarm::HostCrash {
        host: Host::A,
        not_before: Instant::from_millis(400),
        point: CrashPoint::OnTransfer,
        down_for: Duration::from_millis(500),
    });
    let out = ColoRun::new(&o, None).run();
    assert_eq!(out.stats.crashes, 1);
    assert_eq!(out.stats.failovers, 1);
    let solo = out
        .trace
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                TraceEvent::Released {
                    origin: Origin::Solo,
                    ..
                }
            )
        })
        .count();
    assert!(solo > 10, "survivor released {solo} frames");
    let h: Vec<&History> = out.histories.iter().collect();
    let bounds = check::liveness::LivenessBounds {
        checkpoint_within: None,
        progress_within: Duration::from_millis(1_400),
        require_finish: false,
    };
    let v = check::liveness::check(&out.trace, &h, bounds);
    assert!(v.is_empty(), "{v:#?}");
    assert!(violations(&out).is_empty());
}
