//! Unit tests of one node fed by hand (the two-node scenarios live in `core/tests/`): contract
//! rules, handshake checks and the validation of peer messages.

use super::*;
use crate::heartbeat::HeartbeatEvent;
use crate::ids::{ClusterId, NicId, Term};
use crate::time::Duration;
use crate::wire::{HelloRejectReason, PROTOCOL_VERSION};

mod commands;
mod link;
mod vm_failures;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn node(role: Role) -> Node {
    Node::new(NodeConfig::new(NodeId(1), ClusterId(9)), role, ms(0)).unwrap()
}

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn events(outs: &[Output]) -> Vec<&Event> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn hello(cluster: u64, role: Role, term: u64) -> Input {
    hello_for_vm(cluster, role, term, 0)
}

fn hello_for_vm(cluster: u64, role: Role, term: u64, vm_fingerprint: u64) -> Input {
    Input::Peer {
        message: Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: ClusterId(cluster),
            node_id: NodeId(2),
            role,
            term: Term(term),
            last_applied_epoch: Epoch(0),
            vm_fingerprint,
        },
        bulk: PeerBulk::None,
    }
}

/// A primary that accepted a secondary and finished the initial copy.
fn replicating_primary() -> Node {
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), hello(9, Role::Secondary, 1));
    n.handle(
        ms(2),
        Input::SyncSent {
            memory_bytes: 0,
            disk_bytes: 0,
        },
    );
    drain(&mut n);
    n
}

#[test]
fn invalid_config_is_a_typed_error() {
    let mut c = NodeConfig::new(NodeId(1), ClusterId(9));
    c.solo_hold_frames = 0;
    assert_eq!(
        Node::new(c, Role::Primary, ms(0)).err(),
        Some(NodeConfigError::ZeroSoloHold)
    );
}

#[test]
#[should_panic(expected = "time went backwards")]
fn time_going_backwards_panics_naming_the_rule() {
    let mut n = node(Role::Primary);
    n.handle(ms(5), Input::Timeout);
    n.handle(ms(4), Input::Timeout);
}

#[test]
fn idle_node_ignores_peer_input_and_has_no_deadline() {
    let mut n = node(Role::Secondary);
    n.handle(ms(1), hello(9, Role::Primary, 1));
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.stats().ignored_before_start, 1);
    assert_eq!(n.poll_timeout(), None);
    assert_eq!(n.status(ms(1)).mode, NodeMode::Idle);
}

#[test]
fn secondary_start_sends_hello_and_retries_it() {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    let outs = drain(&mut n);
    assert!(matches!(
        outs.as_slice(),
        [
            Output::ToPeer {
                message: Message::Hello { .. },
                ..
            },
            Output::Link(LinkCommand::Dial)
        ]
    ));
    let retry = n.poll_timeout().expect("connecting waits on time");
    n.handle(retry, Input::Timeout);
    let outs = drain(&mut n);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::Hello { .. },
            ..
        }
    )));
}

#[test]
fn primary_rejects_hello_of_another_cluster() {
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), hello(8, Role::Secondary, 1));
    let outs = drain(&mut n);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::HelloReject {
                reason: HelloRejectReason::ClusterMismatch { .. },
                ..
            },
            ..
        }
    )));
    assert_eq!(n.status(ms(1)).mode, NodeMode::Connecting);
}

#[test]
fn primary_rejects_a_secondary_described_for_another_vm() {
    let mut config = NodeConfig::new(NodeId(1), ClusterId(9));
    config.vm_fingerprint = 0xfeed;
    let mut n = Node::new(config, Role::Primary, ms(0)).unwrap();
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), hello_for_vm(9, Role::Secondary, 1, 0xbeef));
    let outs = drain(&mut n);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::HelloReject {
                reason: HelloRejectReason::VmMismatch { expected: 0xfeed },
                ..
            },
            ..
        }
    )));
    assert_eq!(n.status(ms(1)).mode, NodeMode::Connecting);
    // The same VM pairs.
    n.handle(ms(2), hello_for_vm(9, Role::Secondary, 1, 0xfeed));
    assert!(drain(&mut n).iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::HelloAccept { .. },
            ..
        }
    )));
}

#[test]
fn a_secondary_refused_for_another_vm_halts_and_one_refused_otherwise_idles() {
    let refused = |reason: HelloRejectReason| {
        let mut n = node(Role::Secondary);
        n.handle(ms(0), Input::Command(Command::Start));
        n.handle(ms(1), Input::PeerLink(LinkState::Up));
        drain(&mut n);
        let term = n.status(ms(1)).term;
        n.handle(
            ms(2),
            Input::Peer {
                message: Message::HelloReject { reason, term },
                bulk: PeerBulk::None,
            },
        );
        let outs = drain(&mut n);
        let halt = outs.iter().find_map(|o| match o {
            Output::Halt(why) => Some(*why),
            _ => None,
        });
        (halt, n.status(ms(3)).mode)
    };
    // No retry can change the VM: the node ends with the reason (the runtime exits with it).
    let vm = HelloRejectReason::VmMismatch { expected: 0xfeed };
    assert_eq!(
        refused(vm),
        (Some(HaltReason::Refused(vm)), NodeMode::Stopped)
    );
    // Another refusal leaves it waiting for an operator, as before.
    let (halt, _) = refused(HelloRejectReason::ClusterMismatch {
        expected: ClusterId(3),
    });
    assert_eq!(halt, None);
}

#[test]
fn primary_rejects_a_second_primary() {
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), hello(9, Role::Primary, 1));
    let outs = drain(&mut n);
    assert!(events(&outs).iter().any(|e| matches!(
        e,
        Event::HandshakeRejected {
            reason: HelloRejectReason::RoleConflict { .. },
            by_peer: false
        }
    )));
}

#[test]
fn accepted_hello_orders_the_initial_copy() {
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), hello(9, Role::Secondary, 1));
    let outs = drain(&mut n);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::HelloAccept { .. },
            ..
        }
    )));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::SyncStart { .. },
            ..
        }
    )));
    assert!(outs.contains(&Output::Sync(SyncCommand::SendAll { term: Term(1) })));
    assert_eq!(n.status(ms(1)).mode, NodeMode::Paired);
}

#[test]
fn sync_sent_starts_the_first_checkpoint() {
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), hello(9, Role::Secondary, 1));
    drain(&mut n);
    n.handle(
        ms(2),
        Input::SyncSent {
            memory_bytes: 0,
            disk_bytes: 0,
        },
    );
    let outs = drain(&mut n);
    let sent: Vec<&Message> = outs
        .iter()
        .filter_map(|o| match o {
            Output::ToPeer { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert!(matches!(
        sent[0],
        Message::SyncDone {
            epoch: Epoch(1),
            ..
        }
    ));
    assert!(matches!(
        sent[1],
        Message::CheckpointRequest {
            epoch: Epoch(1),
            reason: crate::ids::CheckpointReason::Forced
        }
    ));
}

#[test]
fn wrong_direction_message_is_a_protocol_error() {
    let mut n = replicating_primary();
    // A primary never receives a mirrored frame.
    n.handle(
        ms(3),
        Input::Peer {
            message: Message::MirroredFrame {
                epoch: Epoch(1),
                nic: NicId(0),
            },
            bulk: PeerBulk::Frame(vec![0; 60]),
        },
    );
    let outs = drain(&mut n);
    assert!(events(&outs).contains(&&Event::ProtocolError {
        kind: crate::wire::MessageKind::MirroredFrame,
        violation: ProtocolViolation::WrongDirection
    }));
    assert_eq!(n.stats().protocol_errors, 1);
}

#[test]
fn secondary_output_without_frame_bytes_is_a_protocol_error() {
    let mut n = replicating_primary();
    n.handle(
        ms(3),
        Input::Peer {
            message: Message::SecondaryOutput { epoch: Epoch(1) },
            bulk: PeerBulk::Stored { len: 60 },
        },
    );
    let outs = drain(&mut n);
    assert!(events(&outs).contains(&&Event::ProtocolError {
        kind: crate::wire::MessageKind::SecondaryOutput,
        violation: ProtocolViolation::BadBulk { len: 60 }
    }));
}

#[test]
fn arbiter_message_on_the_peer_link_is_refused() {
    let mut n = replicating_primary();
    n.handle(
        ms(3),
        Input::Peer {
            message: Message::LeaseGrant {
                term: Term(1),
                node_id: NodeId(1),
                valid_for_ms: 1000,
            },
            bulk: PeerBulk::None,
        },
    );
    assert_eq!(n.stats().protocol_errors, 1);
    assert!(!n.status(ms(3)).lease_held);
}

#[test]
fn a_knocking_newcomer_is_not_deposed_by_a_newer_term_and_joins_it() {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    drain(&mut n);
    n.handle(
        ms(1),
        Input::Peer {
            message: Message::TermAnnounce {
                term: Term(3),
                node_id: NodeId(2),
            },
            bulk: PeerBulk::None,
        },
    );
    let outs = drain(&mut n);
    assert!(
        !events(&outs)
            .iter()
            .any(|e| matches!(e, Event::Deposed { .. })),
        "{outs:?}"
    );
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Halt(_))),
        "{outs:?}"
    );
    assert_eq!(n.status(ms(1)).mode, NodeMode::Connecting);
    n.handle(
        ms(2),
        Input::Peer {
            message: Message::HelloAccept {
                protocol_version: PROTOCOL_VERSION,
                cluster_id: ClusterId(9),
                node_id: NodeId(2),
                role: Role::Primary,
                term: Term(3),
                last_applied_epoch: Epoch(0),
            },
            bulk: PeerBulk::None,
        },
    );
    drain(&mut n);
    let st = n.status(ms(2));
    assert_eq!((st.mode, st.term), (NodeMode::Syncing, Term(3)));
}

#[test]
fn older_term_message_is_stale_and_newer_term_deposes() {
    let mut n = replicating_primary();
    n.handle(
        ms(3),
        Input::Peer {
            message: Message::Heartbeat {
                term: Term(0),
                seq: 1,
                epoch: Epoch(0),
            },
            bulk: PeerBulk::None,
        },
    );
    assert_eq!(n.stats().stale_messages, 1);
    n.handle(
        ms(4),
        Input::Peer {
            message: Message::TermAnnounce {
                term: Term(2),
                node_id: NodeId(2),
            },
            bulk: PeerBulk::None,
        },
    );
    let outs = drain(&mut n);
    let deposed = outs.iter().position(|o| {
        matches!(
            o,
            Output::Event(Event::Deposed {
                holder: Some(NodeId(2)),
                ..
            })
        )
    });
    let halt = outs
        .iter()
        .position(|o| *o == Output::Halt(HaltReason::Deposed));
    assert!(
        matches!((deposed, halt), (Some(d), Some(h)) if d < h),
        "the event, then the order to stop the VM: {outs:?}"
    );
    assert_eq!(n.status(ms(4)).mode, NodeMode::Deposed);
    // A deposed node delivers nothing to its guest and releases nothing.
    n.handle(
        ms(5),
        Input::ClientFrame {
            nic: NicId(0),
            frame: vec![0; 60],
        },
    );
    assert!(drain(&mut n).is_empty());
}

#[test]
fn a_client_frame_reaches_its_nic_and_is_mirrored_with_it() {
    let mut n = replicating_primary();
    n.handle(
        ms(3),
        Input::ClientFrame {
            nic: NicId(2),
            frame: vec![7; 60],
        },
    );
    let outs = drain(&mut n);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToGuest { nic: NicId(2), frame } if frame == &vec![7; 60]
    )));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::MirroredFrame { nic: NicId(2), .. },
            ..
        }
    )));
}

#[test]
fn paired_secondary_ignores_client_frames() {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(
        ms(1),
        Input::ClientFrame {
            nic: NicId(0),
            frame: vec![1; 60],
        },
    );
    assert!(
        !drain(&mut n)
            .iter()
            .any(|o| matches!(o, Output::ToGuest { .. }))
    );
    assert_eq!(n.stats().client_frames_on_secondary, 1);
}

#[test]
fn spurious_timeout_is_a_no_op() {
    let mut n = replicating_primary();
    let before = n.poll_timeout();
    n.handle(ms(3), Input::Timeout);
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.poll_timeout(), before);
}

#[test]
fn failover_command_before_the_first_checkpoint_on_a_secondary_is_refused() {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), Input::Command(Command::Failover));
    assert_eq!(n.stats().takeovers_refused, 1);
    assert_eq!(n.status(ms(1)).term, Term(1));
}

#[test]
fn requested_failover_reports_request_as_exit_reason() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::Command(Command::Failover));
    let outs = drain(&mut n);
    let req = outs
        .iter()
        .find_map(|o| match o {
            Output::Arbiter(r) => Some(*r),
            _ => None,
        })
        .expect("a lease request");
    assert_eq!(req.term, Term(2));
    n.handle(
        ms(4),
        Input::Arbiter {
            id: req.id,
            reply: crate::failover::LeaseReply::Granted {
                valid_for: Duration::from_secs(2),
            },
        },
    );
    let outs = drain(&mut n);
    assert!(events(&outs).contains(&&Event::FailedOver {
        term: Term(2),
        reason: crate::failover::FailoverReason::Requested
    }));
    let st = n.status(ms(4));
    assert_eq!(st.mode, NodeMode::Solo);
    assert_eq!(st.last_exit_was_request, Some(true));
}

#[test]
fn a_new_term_is_announced_to_the_peer_only_once_the_arbiter_granted_it() {
    // Announced at the takeover's start, the term deposed a healthy peer even when this node
    // died or was refused before the grant (colo-sim seed 127 under `--node`).
    let announces = |outs: &[Output]| {
        outs.iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::ToPeer {
                        message: Message::TermAnnounce { .. },
                        ..
                    }
                )
            })
            .count()
    };
    let mut n = replicating_primary();
    n.handle(ms(3), Input::Command(Command::Failover));
    let outs = drain(&mut n);
    assert_eq!(announces(&outs), 0, "announced before the grant: {outs:?}");
    let req = outs
        .iter()
        .find_map(|o| match o {
            Output::Arbiter(r) => Some(*r),
            _ => None,
        })
        .expect("a lease request");
    n.handle(
        ms(4),
        Input::Arbiter {
            id: req.id,
            reply: crate::failover::LeaseReply::Granted {
                valid_for: Duration::from_secs(2),
            },
        },
    );
    assert_eq!(announces(&drain(&mut n)), 1);
}

#[test]
fn zero_checkpoint_interval_is_refused_and_later_pairings_still_work() {
    // Found by the node_inputs fuzzer: a zero interval stored by the node broke the
    // checkpointer of the next pairing.
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(
        ms(0),
        Input::Command(Command::SetCheckpointInterval(Duration::ZERO)),
    );
    assert_eq!(n.stats().commands_ignored, 1);
    n.handle(ms(1), hello(9, Role::Secondary, 1));
    n.handle(
        ms(2),
        Input::SyncSent {
            memory_bytes: 0,
            disk_bytes: 0,
        },
    );
    assert!(n.primary_checkpointer().is_some());
}

#[test]
fn link_up_makes_only_a_secondary_say_hello() {
    let mut p = node(Role::Primary);
    p.handle(ms(0), Input::Command(Command::Start));
    drain(&mut p);
    p.handle(ms(1), Input::PeerLink(LinkState::Up));
    assert!(drain(&mut p).is_empty());
    let mut s = node(Role::Secondary);
    s.handle(ms(0), Input::Command(Command::Start));
    drain(&mut s);
    s.handle(ms(1), Input::PeerLink(LinkState::Up));
    assert!(drain(&mut s).iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::Hello { .. },
            ..
        }
    )));
}

#[test]
fn lonely_primary_runs_solo_on_command_and_starts_its_vm() {
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(1), Input::Command(Command::Failover));
    let outs = drain(&mut n);
    assert!(outs.contains(&Output::Vm(crate::checkpoint::VmCommand::Resume)));
    let req = outs
        .iter()
        .find_map(|o| match o {
            Output::Arbiter(r) => Some(*r),
            _ => None,
        })
        .expect("a lease request");
    n.handle(
        ms(2),
        Input::Arbiter {
            id: req.id,
            reply: crate::failover::LeaseReply::Granted {
                valid_for: Duration::from_secs(2),
            },
        },
    );
    drain(&mut n);
    assert_eq!(n.status(ms(2)).mode, NodeMode::Solo);
    // Its guest's output now reaches clients under the lease.
    n.handle(
        ms(3),
        Input::GuestFrame(crate::compare::testkit::udp(
            &crate::compare::testkit::Headers::default(),
            b"hi",
        )),
    );
    assert!(
        drain(&mut n)
            .iter()
            .any(|o| matches!(o, Output::ToClient(_)))
    );
}

#[test]
fn secondary_whose_own_vm_is_stuck_says_goodbye_and_stops() {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    let peer = |message| Input::Peer {
        message,
        bulk: PeerBulk::None,
    };
    n.handle(
        ms(1),
        peer(Message::HelloAccept {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: ClusterId(9),
            node_id: NodeId(2),
            role: Role::Primary,
            term: Term(1),
            last_applied_epoch: Epoch(0),
        }),
    );
    n.handle(
        ms(1),
        peer(Message::SyncStart {
            term: Term(1),
            memory_bytes: 0,
            disk_bytes: 0,
        }),
    );
    n.handle(
        ms(2),
        peer(Message::SyncDone {
            term: Term(1),
            epoch: Epoch(1),
        }),
    );
    n.handle(
        ms(3),
        peer(Message::CheckpointRequest {
            epoch: Epoch(1),
            reason: crate::ids::CheckpointReason::Forced,
        }),
    );
    let outs = drain(&mut n);
    assert!(outs.contains(&Output::Vm(crate::checkpoint::VmCommand::Pause)));
    // The pause never completes; keep the peer alive with heartbeats until the stuck timer.
    let mut t = ms(3);
    let deadline = ms(3) + n.config.checkpoint.checkpoint_phase_timeout;
    let mut goodbye = false;
    let mut halted = 0;
    while t <= deadline + Duration::from_millis(1) {
        t += Duration::from_millis(50);
        n.handle(
            t,
            peer(Message::Heartbeat {
                term: Term(1),
                seq: 1,
                epoch: Epoch(0),
            }),
        );
        n.handle(t, Input::Timeout);
        let outs = drain(&mut n);
        goodbye |= outs.iter().any(|o| {
            matches!(
                o,
                Output::ToPeer {
                    message: Message::Goodbye { .. },
                    ..
                }
            )
        });
        halted += outs
            .iter()
            .filter(|o| **o == Output::Halt(HaltReason::VmFailed))
            .count();
    }
    assert!(goodbye, "the stuck node leaves the pair in order");
    assert_eq!(halted, 1, "and orders its VM stopped, once");
    assert_eq!(n.status(t).mode, NodeMode::Stopped);
    assert_eq!(
        n.stats().takeovers_refused,
        0,
        "it did not try to take over"
    );
}

#[test]
fn bytes_arriving_without_a_whole_frame_keep_the_peer_alive() {
    // A page batch crawling over a slow link: no whole message for 1.5 s, but its bytes keep
    // arriving. The peer is not lost (default: lost after 5 silent 100 ms intervals).
    let mut n = replicating_primary();
    let lost = |outs: &[Output]| {
        events(outs)
            .iter()
            .any(|e| matches!(e, Event::Peer(HeartbeatEvent::PeerLost { .. })))
    };
    let mut t = 2;
    while t < 1500 {
        t += 50;
        n.handle(ms(t), Input::PeerActivity);
        n.handle(ms(t), Input::Timeout);
        assert!(!lost(&drain(&mut n)), "lost at {t} ms while bytes arrived");
    }
    // Then the bytes stop too: lost within the heartbeat's bound.
    let mut seen = false;
    while t < 2200 && !seen {
        t += 50;
        n.handle(ms(t), Input::Timeout);
        seen = lost(&drain(&mut n));
    }
    assert!(seen, "a silent peer is lost once the bytes stop");
    assert!(
        t <= 1500 + 600,
        "lost {t} ms, long after the bytes stopped at 1500 ms"
    );
}

#[test]
fn peer_activity_is_only_liveness_and_changes_nothing_on_an_idle_node() {
    let mut n = node(Role::Secondary);
    n.handle(ms(1), Input::PeerActivity);
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn a_heartbeat_echo_times_the_round_trip_of_the_last_heartbeat() {
    let mut n = replicating_primary();
    // Idle link: a heartbeat goes out within an interval.
    let mut sent = None;
    let mut t = 2;
    while sent.is_none() && t < 1000 {
        t += 10;
        n.handle(ms(t), Input::Timeout);
        sent = drain(&mut n).into_iter().find_map(|o| match o {
            Output::ToPeer {
                message: Message::Heartbeat { seq, term, epoch },
                ..
            } => Some((seq, term, epoch, t)),
            _ => None,
        });
    }
    let (seq, term, epoch, at) = sent.expect("a heartbeat on an idle link");
    let echo = |seq| Input::Peer {
        message: Message::HeartbeatEcho { term, seq, epoch },
        bulk: PeerBulk::None,
    };
    // An echo of another heartbeat is not timed; the right one is, once.
    n.handle(ms(at + 3), echo(seq + 1));
    assert_eq!(n.stats().heartbeat_round_trips, 0);
    n.handle(ms(at + 7), echo(seq));
    n.handle(ms(at + 9), echo(seq));
    assert_eq!(n.stats().heartbeat_round_trips, 1);
    assert_eq!(
        n.stats().last_heartbeat_round_trip,
        Duration::from_millis(7)
    );
}
