use super::*;
use crate::check;
use crate::swarm::CrashPoint;
use crate::trace::Origin;

fn calm(seed: u64) -> SwarmOptions {
    let mut o = SwarmOptions::generate(seed);
    o.link_faults.clear();
    o.crashes.clear();
    o.link = crate::netem::LinkConfig::with_delay(Duration::from_micros(200));
    o.safety = Duration::from_secs(2);
    o.liveness = Duration::from_secs(2);
    o.checkpoint_interval = Duration::from_millis(300);
    o.compare_timeout = Duration::from_millis(20);
    o.clients = 2;
    o.connections = 2;
    o.requests_per_connection = 40;
    o
}

#[test]
fn two_nodes_serve_clients_and_every_safety_checker_passes() {
    let out = NodeRun::new(&calm(1), None, None).run();
    let h: Vec<&History> = out.histories.iter().collect();
    let v = check::check_safety(&out.trace, &h, None);
    // The comparator path is exercised: some releases matched the secondary's output.
    assert!(out.matched > 10, "matched {}", out.matched);
    assert!(v.is_empty(), "{v:#?}");
    assert!(out.checkpoints >= 3, "checkpoints {}", out.checkpoints);
    assert!(out.released > 50, "released {}", out.released);
    assert!(out.histories.iter().all(|h| h.completed() > 0));
}

#[test]
fn a_primary_crash_hands_the_clients_to_the_secondary_node_under_its_lease() {
    let mut o = calm(2);
    o.requests_per_connection = 150;
    let out = NodeRun::new(&o, Some(Instant::from_millis(500)), None).run();
    assert!(
        out.histories
            .iter()
            .all(|h| h.pending() == 0 && h.completed() == 300),
        "clients did not finish after the takeover"
    );
    let h: Vec<&History> = out.histories.iter().collect();
    let v = check::check_safety(&out.trace, &h, None);
    assert!(v.is_empty(), "{v:#?}");
    let took_over = out.trace.events.iter().any(|e| {
        matches!(
            e,
            TraceEvent::TermStarted {
                host: Host::B,
                solo: true,
                ..
            }
        )
    });
    assert!(took_over, "host B never went solo");
    let solo = out
        .trace
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                TraceEvent::Released {
                    host: Host::B,
                    origin: Origin::Solo,
                    ..
                }
            )
        })
        .count();
    assert!(solo > 0, "host B released nothing after the takeover");
}

#[test]
fn the_node_run_is_deterministic() {
    let o = calm(3);
    assert_eq!(
        NodeRun::new(&o, None, None).run().digest,
        NodeRun::new(&o, None, None).run().digest
    );
}

/// The canaries that need no failover to show, planted in the Node (release on sent, skipped
/// rewriter reset) or the VM (partial epoch), are caught on a calm run; the lease canary needs
/// a takeover (`runner::options_for`, tested in tests/regression_seeds.rs).
#[test]
fn canaries_are_caught_under_the_node() {
    for canary in Canary::ALL.into_iter().filter(|c| !c.needs_failover()) {
        let out = NodeRun::new(&calm(4), None, Some(canary)).run();
        let h: Vec<&History> = out.histories.iter().collect();
        let v = check::check_safety(&out.trace, &h, None);
        assert!(
            v.iter().any(|v| v.checker == canary.caught_by()),
            "{} not caught: {v:#?}",
            canary.name()
        );
    }
}

#[test]
fn crashes_inside_checkpoint_phases_keep_every_safety_checker_green() {
    for (host, point) in [
        (Host::A, CrashPoint::OnPause),
        (Host::A, CrashPoint::OnTransfer),
        (Host::B, CrashPoint::OnReceived),
        (Host::B, CrashPoint::OnApply),
    ] {
        let mut o = calm(6);
        o.requests_per_connection = 100;
        o.crashes = vec![crate::swarm::HostCrash {
            host,
            not_before: Instant::from_millis(400),
            point,
            down_for: Duration::from_millis(300),
        }];
        let out = NodeRun::new(&o, None, None).run();
        let h: Vec<&History> = out.histories.iter().collect();
        let v = check::check_safety(&out.trace, &h, None);
        assert!(v.is_empty(), "{host} {point:?}: {v:#?}");
        let crashed = out
            .trace
            .events
            .iter()
            .any(|e| matches!(e, TraceEvent::Crash { .. }));
        let solo = out
            .trace
            .events
            .iter()
            .any(|e| matches!(e, TraceEvent::TermStarted { solo: true, .. }));
        assert!(
            crashed && solo,
            "{host} {point:?}: crash {crashed}, takeover {solo}"
        );
        assert!(
            out.histories.iter().all(|h| h.pending() == 0),
            "{host} {point:?}: clients left waiting"
        );
    }
}

/// The ACK rule of output_commit is not vacuous on real runs: the secondary's acknowledgements
/// are what justify the guarded ACKs of uncompared and matched releases, so a trace stripped of
/// them (and of the checkpoints the secondary received) is reported, for both kinds.
#[test]
fn released_acks_are_justified_by_the_secondary_in_a_real_run() {
    let out = NodeRun::new(&calm(1), None, None).run();
    let guarded = |uncompared: bool| {
        out.trace
            .events
            .iter()
            .filter(|e| match e {
                TraceEvent::Released { origin, .. } => {
                    origin.guarded_ack().is_some()
                        && matches!(origin, Origin::Uncompared { .. }) == uncompared
                }
                _ => false,
            })
            .count()
    };
    assert!(guarded(true) > 0, "no uncompared release carried an ACK");
    assert!(guarded(false) > 0, "no matched release carried an ACK");
    assert!(check::output_commit::check(&out.trace).is_empty());
    let mut stripped = out.trace.clone();
    stripped.events.retain(|e| {
        !matches!(
            e,
            TraceEvent::SvmAck { .. } | TraceEvent::Received { .. } | TraceEvent::PvmAck { .. }
        )
    });
    let v = check::output_commit::check(&stripped);
    for kind in ["Uncompared", "Matched"] {
        assert!(
            v.iter()
                .any(|v| v.what.contains(kind) && v.what.contains("with ACK")),
            "no {kind} release reported: {v:#?}"
        );
    }
}
