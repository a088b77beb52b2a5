use super::*;
use crate::check;
use crate::client::History;
use crate::swarm::CrashPoint;
use crate::swarm::{Cut, CutMode, LinkFault, LinkReset, VmFailure};
use crate::trace::Origin;
use crate::trace::TraceEvent;
use colo_core::checkpoint::VmCommandKind;
use colo_core::ids::Epoch;

fn calm(seed: u64) -> SwarmOptions {
    let mut o = SwarmOptions::generate(seed);
    o.link_faults.clear();
    o.crashes.clear();
    o.vm_failures.clear();
    o.disk_write_error_ppm = 0;
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
/// a takeover (`runner::options_for`, tested in tests/regression_seeds.rs), and unguarded
/// control segments a primary FIN, SYN-ACK or RST ahead of the secondary's, which a calm run's
/// fixed link delay never gives (tests/regression_seeds.rs, seeds 3, 6, 8).
#[test]
fn canaries_are_caught_under_the_node() {
    for canary in Canary::ALL
        .into_iter()
        .filter(|c| !c.needs_failover() && *c != Canary::ReleaseControlUnguarded)
    {
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
            power_loss: false,
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

/// Crashes host `host` at `point` (not before 400 ms), down for 300 ms.
fn crash_and_restart(seed: u64, host: Host, point: CrashPoint) -> NodeRunOutput {
    let mut o = calm(seed);
    o.requests_per_connection = 100;
    o.safety = Duration::from_secs(3);
    o.crashes = vec![crate::swarm::HostCrash {
        host,
        not_before: Instant::from_millis(400),
        point,
        down_for: Duration::from_millis(300),
        power_loss: false,
    }];
    NodeRun::new(&o, None, None).run()
}

/// The instant of the host's restart and the epochs applied after it.
fn applied_after_restart(out: &NodeRunOutput) -> (Instant, Vec<Epoch>) {
    let restart = out
        .trace
        .events
        .iter()
        .find_map(|e| match e {
            TraceEvent::Restart { at, .. } => Some(*at),
            _ => None,
        })
        .expect("the host restarted");
    let applied = out
        .trace
        .events
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Applied { at, epoch, .. } if *at > restart => Some(*epoch),
            _ => None,
        })
        .collect();
    (restart, applied)
}

#[test]
fn a_restarted_host_is_re_protected_and_replication_resumes() {
    for host in [Host::A, Host::B] {
        let out = crash_and_restart(7, host, CrashPoint::At);
        let h: Vec<&History> = out.histories.iter().collect();
        let v = check::check_safety(&out.trace, &h, None);
        assert!(v.is_empty(), "{host}: {v:#?}");
        let (restart, applied) = applied_after_restart(&out);
        // The newcomer applied the re-protection checkpoint and keeps applying later ones.
        assert!(
            applied.len() >= 3,
            "{host}: applied after restart {applied:?}"
        );
        let done_after = out
            .trace
            .events
            .iter()
            .filter(|e| matches!(e, TraceEvent::CheckpointDone { at, .. } if *at > restart))
            .count();
        assert!(
            done_after >= 3,
            "{host}: {done_after} checkpoints after restart"
        );
        assert!(
            out.histories.iter().all(|h| h.pending() == 0),
            "{host}: clients left waiting"
        );
    }
}

#[test]
fn guest_disk_writes_go_through_the_disk_machines_and_errors_are_counted() {
    let mut o = calm(8);
    o.disk_write_error_ppm = 20_000;
    let out = NodeRun::new(&o, None, None).run();
    assert!(out.disk_writes > 50, "disk writes {}", out.disk_writes);
    assert!(out.disk_write_errors > 0, "no injected error surfaced");
    let h: Vec<&History> = out.histories.iter().collect();
    let v = check::check_safety(&out.trace, &h, None);
    assert!(v.is_empty(), "{v:#?}");
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

// The fabric's fault model on whole runs: the replication link behaves like one TCP connection
// (a short cut delays, a long one resets, a reset is redialled, a crash closes it and the
// restarted host dials back), and the swarm's VM command failures reach the nodes.

/// A seed's options without faults of its own: a fixed workload, a clean client LAN.
fn quiet(seed: u64) -> SwarmOptions {
    let mut o = SwarmOptions::generate(seed);
    o.link_faults.clear();
    o.link_resets.clear();
    o.crashes.clear();
    o.vm_failures.clear();
    o.disk_write_error_ppm = 0;
    o.link = crate::netem::LinkConfig::with_delay(Duration::from_micros(200));
    o.safety = Duration::from_secs(3);
    o.liveness = Duration::from_secs(3);
    o.checkpoint_interval = Duration::from_millis(200);
    o.compare_timeout = Duration::from_millis(20);
    o.clients = 2;
    o.connections = 2;
    o.requests_per_connection = 60;
    o
}

fn host_host_cut(mode: CutMode, from_ms: u64, len_ms: u64) -> LinkFault {
    LinkFault {
        cut: Cut::HostHost,
        mode,
        from: Instant::from_millis(from_ms),
        until: Instant::from_millis(from_ms + len_ms),
    }
}

/// The connection's transitions: (instant, went down).
fn link_transitions(out: &NodeRunOutput) -> Vec<(Instant, bool)> {
    out.trace
        .events
        .iter()
        .filter_map(|e| match e {
            TraceEvent::LinkReset { at, down } => Some((*at, *down)),
            _ => None,
        })
        .collect()
}

fn took_over(out: &NodeRunOutput) -> bool {
    out.trace
        .events
        .iter()
        .any(|e| matches!(e, TraceEvent::TermStarted { solo: true, .. }))
}

fn checkpoints_after(out: &NodeRunOutput, after: Instant) -> usize {
    out.trace
        .events
        .iter()
        .filter(|e| matches!(e, TraceEvent::CheckpointDone { at, .. } if *at > after))
        .count()
}

fn assert_safe_and_served(out: &NodeRunOutput, what: &str) {
    let h: Vec<&History> = out.histories.iter().collect();
    let v = check::check_safety(&out.trace, &h, None);
    assert!(v.is_empty(), "{what}: {v:#?}");
    assert!(
        out.histories.iter().all(|h| h.pending() == 0),
        "{what}: clients left waiting"
    );
}

#[test]
fn a_short_cut_of_the_replication_link_only_delays_its_messages() {
    for mode in [CutMode::Symmetric, CutMode::OneWay, CutMode::Clog] {
        let mut o = quiet(3);
        // Shorter than the heartbeat's detection (500 ms): nothing may notice but the delay.
        o.link_faults = vec![host_host_cut(mode, 1_000, 150)];
        let out = NodeRun::new(&o, None, None).run();
        assert_safe_and_served(&out, &format!("{mode:?}"));
        assert_eq!(
            link_transitions(&out),
            vec![],
            "{mode:?}: the connection broke"
        );
        assert!(!took_over(&out), "{mode:?}: a delay caused a takeover");
        // Replication goes on after the cut: its messages were held, not lost.
        assert!(
            checkpoints_after(&out, Instant::from_millis(1_150)) >= 3,
            "{mode:?}: no checkpoint after the cut"
        );
    }
}

#[test]
fn a_long_cut_ends_the_connection_once_and_the_survivor_serves() {
    let mut o = quiet(4);
    o.link_faults = vec![host_host_cut(CutMode::Symmetric, 1_000, 1_500)];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "long cut");
    let reset_after = {
        let shared = Shared::new(&o, None);
        shared.reset_after()
    };
    let transitions = link_transitions(&out);
    // Down by the time the write timeout would break it: host B's heartbeat lost its primary
    // (silent since before the cut) and B closed the silent connection. Nobody redials: B
    // runs solo, A is deposed; the link comes back only when A, restarted by the supervisor,
    // dials the survivor.
    let Some(&(at, true)) = transitions.first() else {
        panic!("{transitions:?}");
    };
    let cut = Instant::from_millis(1_000);
    assert!(at > cut && at <= cut + reset_after, "{transitions:?}");
    assert!(took_over(&out), "host B never took over");
    let (_, restart, _) = exit_restart_applied(&out, Host::A);
    assert!(
        transitions[1..].iter().all(|(at, _)| *at >= restart),
        "the link came back before the deposed host restarted: {transitions:?}"
    );
}

#[test]
fn a_deposed_node_is_restarted_and_re_protected() {
    // A cut outlasting the detection: B takes over, A is deposed and halts; the supervisor
    // starts A again as a newcomer and B re-protects it.
    let mut o = quiet(4);
    o.restart_delay = Duration::from_millis(500);
    o.link_faults = vec![host_host_cut(CutMode::Symmetric, 1_000, 1_500)];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "deposed");
    let b_solo = out.trace.events.iter().find_map(|e| match e {
        TraceEvent::TermStarted {
            at,
            host: Host::B,
            solo: true,
            ..
        } => Some(*at),
        _ => None,
    });
    let (exited, restart, applied) = exit_restart_applied(&out, Host::A);
    assert!(
        b_solo.is_some_and(|t| t > Instant::from_millis(1_000) && t <= exited),
        "A exited at {exited:?}, not after B's takeover ({b_solo:?})"
    );
    assert!(
        !out.trace
            .events
            .iter()
            .any(|e| matches!(e, TraceEvent::VmFailed { .. })),
        "no VM failed: A halted because it was deposed"
    );
    assert_eq!(restart, exited + o.restart_delay, "the drawn delay");
    assert!(
        checkpoints_after(&out, applied) >= 3,
        "replication did not resume after the re-protection"
    );
}

#[test]
fn a_reset_shorter_than_the_heartbeat_is_redialled_and_the_pair_carries_on() {
    let mut o = quiet(5);
    o.link_resets = vec![LinkReset {
        at: Instant::from_millis(1_000),
        down_for: Duration::from_millis(100),
    }];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "reset");
    assert_eq!(
        link_transitions(&out),
        vec![
            (Instant::from_millis(1_000), true),
            (Instant::from_millis(1_100), false)
        ]
    );
    assert!(!took_over(&out), "a redialled reset caused a takeover");
    assert!(checkpoints_after(&out, Instant::from_millis(1_100)) >= 3);
}

#[test]
fn a_crash_closes_the_connection_and_the_restarted_host_dials_back() {
    let mut o = quiet(6);
    o.crashes = vec![HostCrash {
        host: Host::B,
        not_before: Instant::from_millis(800),
        point: CrashPoint::At,
        down_for: Duration::from_millis(300),
        power_loss: false,
    }];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "crash");
    let transitions = link_transitions(&out);
    assert_eq!(
        transitions.first(),
        Some(&(Instant::from_millis(800), true))
    );
    // The restarted B dials A, the primary's acceptor takes it, and the pair re-forms on it.
    let (up_at, up) = *transitions
        .get(1)
        .expect("the restarted host never connected");
    assert!(
        !up && up_at >= Instant::from_millis(1_100),
        "{transitions:?}"
    );
    let reprotected = out
        .trace
        .events
        .iter()
        .any(|e| matches!(e, TraceEvent::Reprotected { at, .. } if *at >= up_at));
    assert!(reprotected, "no re-protection on the new connection");
}

#[test]
fn after_a_power_loss_the_survivor_closes_the_silent_connection_and_re_protects_the_host() {
    // Host B loses power: no FIN, A's end of the connection stays up and silent. A's node
    // declares B lost and closes it; without that close, A held the dead connection and the
    // restarted B could never connect (the fabric allows one connection, as the runtime does).
    let mut o = quiet(6);
    o.crashes = vec![HostCrash {
        host: Host::B,
        not_before: Instant::from_millis(800),
        point: CrashPoint::At,
        down_for: Duration::from_millis(300),
        power_loss: true,
    }];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "power loss");
    assert!(
        out.trace
            .events
            .iter()
            .any(|e| matches!(e, TraceEvent::PowerLoss { host: Host::B, .. })),
        "the crash was no power loss"
    );
    let transitions = link_transitions(&out);
    let (down_at, down) = *transitions
        .first()
        .expect("A kept the dead connection: the restarted B could never connect");
    assert!(down, "{transitions:?}");
    // Not at the crash (nothing told A): when A's node gave up on B and closed.
    assert!(
        down_at > Instant::from_millis(800),
        "the connection went down with the power: {transitions:?}"
    );
    let a_solo = out.trace.events.iter().any(|e| {
        matches!(e, TraceEvent::TermStarted { host: Host::A, solo: true, at, .. } if *at <= down_at)
    });
    assert!(a_solo, "A closed before it ran solo: {transitions:?}");
    let (up_at, down) = *transitions
        .get(1)
        .expect("the restarted host never connected");
    assert!(!down && up_at >= down_at, "{transitions:?}");
    let reprotected = out
        .trace
        .events
        .iter()
        .any(|e| matches!(e, TraceEvent::Reprotected { at, .. } if *at >= up_at));
    assert!(reprotected, "no re-protection on the new connection");
}

#[test]
fn swarm_vm_failures_reach_the_nodes_and_the_pair_recovers() {
    let mut o = quiet(7);
    o.vm_failures = vec![
        VmFailure {
            host: Host::A,
            at: Instant::from_millis(500),
            command: VmCommandKind::Pause,
        },
        VmFailure {
            host: Host::A,
            at: Instant::from_millis(1_000),
            command: VmCommandKind::CollectDirty,
        },
        VmFailure {
            host: Host::B,
            at: Instant::from_millis(1_500),
            command: VmCommandKind::Pause,
        },
    ];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "vm failures");
    let failed: Vec<(Host, VmCommandKind)> = out
        .trace
        .events
        .iter()
        .filter_map(|e| match e {
            TraceEvent::VmFailed { host, command, .. } => Some((*host, *command)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            (Host::A, VmCommandKind::Pause),
            (Host::A, VmCommandKind::CollectDirty),
            (Host::B, VmCommandKind::Pause)
        ]
    );
    // Each failure aborted one attempt; the primary retried and replication carried on.
    assert!(!took_over(&out), "a VM failure caused a takeover");
    assert!(checkpoints_after(&out, Instant::from_millis(1_500)) >= 3);
}

/// When `host` exited, restarted, and its first `Applied` after the restart.
fn exit_restart_applied(out: &NodeRunOutput, host: Host) -> (Instant, Instant, Instant) {
    let find = |p: &dyn Fn(&TraceEvent) -> Option<Instant>| out.trace.events.iter().find_map(p);
    let exited = find(&|e| match e {
        TraceEvent::Exited { at, host: h } if *h == host => Some(*at),
        _ => None,
    })
    .unwrap_or_else(|| panic!("{host} never exited"));
    let restart = find(&|e| match e {
        TraceEvent::Restart { at, host: h } if *h == host && *at >= exited => Some(*at),
        _ => None,
    })
    .unwrap_or_else(|| panic!("{host} was never restarted"));
    let applied = find(&|e| match e {
        TraceEvent::Applied { at, .. } if *at > restart => Some(*at),
        _ => None,
    })
    .unwrap_or_else(|| panic!("{host} was never re-protected"));
    (exited, restart, applied)
}

#[test]
fn a_node_that_stopped_after_its_vm_failed_is_restarted_and_re_protected() {
    // The primary's failed Resume (the secondary takes over) and the secondary's failed
    // apply (the primary carries on alone): either way the failed node stops, the supervisor
    // starts it again after the seed's delay, and it rejoins as a newcomer.
    for (host, command) in [
        (Host::A, VmCommandKind::Resume),
        (Host::B, VmCommandKind::ApplyCheckpoint),
        (Host::B, VmCommandKind::Resume),
    ] {
        let what = format!("{host} {command:?}");
        let mut o = quiet(7);
        o.restart_delay = Duration::from_millis(500);
        o.vm_failures = vec![VmFailure {
            host,
            at: Instant::from_millis(800),
            command,
        }];
        let out = NodeRun::new(&o, None, None).run();
        assert_safe_and_served(&out, &what);
        let failed_at = out
            .trace
            .events
            .iter()
            .find_map(|e| match e {
                TraceEvent::VmFailed { at, host: h, .. } if *h == host => Some(*at),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{what}: the failure never fired"));
        let (exited, restart, applied) = exit_restart_applied(&out, host);
        assert!(failed_at <= exited, "{what}");
        assert_eq!(restart, exited + o.restart_delay, "{what}: the drawn delay");
        let solo = out.trace.events.iter().find_map(|e| match e {
            TraceEvent::TermStarted {
                at,
                host: h,
                solo: true,
                ..
            } if *at >= failed_at => Some(*h),
            _ => None,
        });
        let peer = if host == Host::A { Host::B } else { Host::A };
        assert_eq!(solo, Some(peer), "{what}: the peer carries the guest on");
        assert!(
            checkpoints_after(&out, applied) >= 3,
            "{what}: replication did not resume after the re-protection"
        );
    }
}

#[test]
fn a_vm_failure_that_would_leave_no_host_with_the_guest_waits() {
    // Host A crashes for good at 1 s; B's Resume fails from 1.1 s on. B now holds the only
    // copy of the guest: its failure must not fire (nobody could carry the guest on).
    let mut o = quiet(7);
    o.vm_failures = vec![VmFailure {
        host: Host::B,
        at: Instant::from_millis(1_100),
        command: VmCommandKind::Resume,
    }];
    let out = NodeRun::new(&o, Some(Instant::from_millis(1_000)), None).run();
    assert_safe_and_served(&out, "failure of the last host");
    assert!(took_over(&out), "B took over");
    assert!(
        !out.trace
            .events
            .iter()
            .any(|e| matches!(e, TraceEvent::VmFailed { .. } | TraceEvent::Exited { .. })),
        "the last host's VM failed"
    );
}

/// When `host` first started a term running solo (its takeover's lease granted).
fn solo_since(out: &NodeRunOutput, host: Host) -> Option<Instant> {
    out.trace.events.iter().find_map(|e| match e {
        TraceEvent::TermStarted {
            at,
            host: h,
            solo: true,
            ..
        } if *h == host => Some(*at),
        _ => None,
    })
}

/// Kills `host`'s process (its kernel closes the connection; the host stays powered) at
/// 800 ms of a quiet run of `seed`, checks the run, and returns when it crashed and when the
/// other host started running solo.
fn process_kill(seed: u64, host: Host) -> (Instant, Instant) {
    let mut o = quiet(seed);
    o.crashes = vec![HostCrash {
        host,
        not_before: Instant::from_millis(800),
        point: CrashPoint::At,
        down_for: Duration::from_secs(5),
        power_loss: false,
    }];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "process kill");
    let crashed = out
        .trace
        .events
        .iter()
        .find_map(|e| match e {
            TraceEvent::Crash { at, host: h } if *h == host => Some(*at),
            _ => None,
        })
        .expect("the host crashed");
    let survivor = if host == Host::A { Host::B } else { Host::A };
    let solo = solo_since(&out, survivor).expect("the survivor runs solo");
    (crashed, solo)
}

#[test]
fn a_killed_primary_is_taken_over_at_once_its_host_refusing_the_redial() {
    // A process crash: the kernel closes the connection, so B sees its peer close the link and
    // redials; A's host refuses the connection (nothing listens), so B takes over at once, not
    // after the closed-link grace (150 ms) nor the heartbeat's 500 ms of silence. The end of
    // the stream, the refusal and the lease's round trip to the arbiter remain.
    let (crashed, solo) = process_kill(8, Host::A);
    assert!(
        solo < crashed + Duration::from_millis(50),
        "crash at {crashed:?}, B solo at {solo:?}"
    );
}

#[test]
fn a_killed_secondary_is_counted_lost_at_the_closed_link_grace_not_the_silence_rule() {
    // The primary does not dial: it waits the grace (150 ms) for its secondary to come back
    // on a new link, then takes the lease and serves alone.
    let (crashed, solo) = process_kill(9, Host::B);
    let grace = Duration::from_millis(150);
    assert!(
        solo >= crashed + grace && solo < crashed + grace + Duration::from_millis(100),
        "crash at {crashed:?}, A solo at {solo:?}"
    );
}

#[test]
fn a_reset_that_outlasts_the_closed_link_grace_fails_over_with_one_writer() {
    // Both ends see their peer close the link and nobody can redial for 300 ms: each node
    // counts its peer lost at the grace and races for the lease; the arbiter gives the term
    // to one, the other is deposed, restarted and re-protected.
    let mut o = quiet(5);
    o.link_resets = vec![LinkReset {
        at: Instant::from_millis(1_000),
        down_for: Duration::from_millis(300),
    }];
    let out = NodeRun::new(&o, None, None).run();
    assert_safe_and_served(&out, "long reset");
    let first_solo = [Host::A, Host::B]
        .into_iter()
        .filter_map(|h| solo_since(&out, h))
        .min()
        .expect("somebody took over");
    assert!(
        first_solo >= Instant::from_millis(1_150) && first_solo < Instant::from_millis(1_500),
        "solo at {first_solo:?}"
    );
}
