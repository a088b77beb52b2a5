//! Unit tests of the node's link orders (`link.rs`): who dials and for how long, who accepts,
//! and when the node closes a link whose pairing is over.

use super::*;
use crate::heartbeat::HeartbeatEvent;

fn link_orders(outs: &[Output]) -> Vec<LinkCommand> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Link(c) => Some(*c),
            _ => None,
        })
        .collect()
}

/// Feeds timeouts up to `until` (every node deadline, and every 10 ms), collecting outputs
/// with the instant each came at.
fn run_timeouts(n: &mut Node, from: Instant, until: Instant) -> Vec<(Instant, Output)> {
    let mut got = Vec::new();
    let mut t = from;
    while t < until {
        let next = n.poll_timeout().map_or(until, |d| d.max(t));
        t = next.min(t + Duration::from_millis(10)).min(until);
        n.handle(t, Input::Timeout);
        got.extend(drain(n).into_iter().map(|o| (t, o)));
    }
    got
}

fn hello_accept() -> Input {
    Input::Peer {
        message: Message::HelloAccept {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: ClusterId(9),
            node_id: NodeId(2),
            role: Role::Primary,
            term: Term(1),
            last_applied_epoch: Epoch(0),
        },
        bulk: PeerBulk::None,
    }
}

/// A secondary that got through the handshake and the copy, with its link up, but applied no
/// checkpoint yet (it cannot take over).
fn paired_secondary_without_state() -> Node {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(0), Input::PeerLink(LinkState::Up));
    n.handle(ms(1), hello_accept());
    for message in [
        Message::SyncStart {
            term: Term(1),
            memory_bytes: 0,
            disk_bytes: 0,
        },
        Message::SyncDone {
            term: Term(1),
            epoch: Epoch(1),
        },
    ] {
        let bulk = PeerBulk::None;
        n.handle(ms(2), Input::Peer { message, bulk });
    }
    drain(&mut n);
    assert_eq!(n.status(ms(2)).mode, NodeMode::Paired);
    n
}

#[test]
fn a_connecting_secondary_dials_until_a_link_is_up_and_again_after_any_drop() {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    assert_eq!(link_orders(&drain(&mut n)), [LinkCommand::Dial]);
    // Knocking takes as long as it takes: no window ends the dial.
    let outs = run_timeouts(&mut n, ms(0), ms(10_000));
    assert!(outs.iter().all(|(_, o)| !matches!(o, Output::Link(_))));
    // The link that comes up ends the dial: nothing to order.
    n.handle(ms(10_000), Input::PeerLink(LinkState::Up));
    assert!(link_orders(&drain(&mut n)).is_empty());
    // Dropped before the handshake answered (a survivor refused it, say): dial again.
    n.handle(ms(10_001), Input::PeerLink(LinkState::Down));
    assert_eq!(link_orders(&drain(&mut n)), [LinkCommand::Dial]);
    assert_eq!(n.status(ms(10_001)).mode, NodeMode::Connecting);
}

#[test]
fn a_paired_secondary_redials_for_twice_lost_after_and_then_stops() {
    let mut n = paired_secondary_without_state();
    let lost_after = n.config.heartbeat.lost_after();
    n.handle(ms(5), Input::PeerLink(LinkState::Down));
    assert_eq!(link_orders(&drain(&mut n)), [LinkCommand::Dial]);
    let window_ends = ms(5) + lost_after.saturating_mul(2);
    let outs = run_timeouts(&mut n, ms(5), window_ends + Duration::from_millis(100));
    let stops: Vec<Instant> = outs
        .iter()
        .filter(|(_, o)| *o == Output::Link(LinkCommand::StopDialing))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        stops,
        [window_ends],
        "one StopDialing, when the window ends"
    );
    // The heartbeat lost the primary on the way, but this node has no copy to serve with.
    assert_eq!(n.stats().takeovers_refused, 1);
    assert_eq!(n.status(window_ends).mode, NodeMode::Paired);
}

#[test]
fn a_link_back_inside_the_window_ends_the_redial_without_an_order() {
    let mut n = paired_secondary_without_state();
    n.handle(ms(5), Input::PeerLink(LinkState::Down));
    drain(&mut n);
    n.handle(ms(50), Input::PeerLink(LinkState::Up));
    assert!(link_orders(&drain(&mut n)).is_empty());
    let outs = run_timeouts(&mut n, ms(50), ms(5_000));
    let lost = outs
        .iter()
        .position(|(_, o)| {
            matches!(
                o,
                Output::Event(Event::Peer(HeartbeatEvent::PeerLost { .. }))
            )
        })
        .expect("the primary stays silent");
    assert!(
        !outs[..lost]
            .iter()
            .any(|(_, o)| matches!(o, Output::Link(_))),
        "no order while the link is up and the peer not lost"
    );
    // Lost with no copy to take over with: the node closes the silent link and redials.
    let after: Vec<&Output> = outs[lost..].iter().map(|(_, o)| o).collect();
    assert!(after.contains(&&Output::Link(LinkCommand::Close)));
    assert!(after.contains(&&Output::Link(LinkCommand::Dial)));
}

#[test]
fn a_secondary_whose_copy_source_is_lost_stops_dialling_at_once() {
    let mut n = node(Role::Secondary);
    n.handle(ms(0), Input::Command(Command::Start));
    n.handle(ms(0), Input::PeerLink(LinkState::Up));
    n.handle(ms(1), hello_accept());
    drain(&mut n);
    assert_eq!(n.status(ms(1)).mode, NodeMode::Syncing);
    n.handle(ms(2), Input::PeerLink(LinkState::Down));
    assert_eq!(link_orders(&drain(&mut n)), [LinkCommand::Dial]);
    let outs = run_timeouts(&mut n, ms(2), ms(5_000));
    let orders: Vec<LinkCommand> = outs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Link(c) => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(orders, [LinkCommand::StopDialing]);
    assert_eq!(n.status(ms(5_000)).mode, NodeMode::Idle);
}

#[test]
fn a_primary_accepts_from_its_start_and_never_dials() {
    let mut n = node(Role::Primary);
    n.handle(ms(0), Input::Command(Command::Start));
    assert_eq!(link_orders(&drain(&mut n)), [LinkCommand::Accept(true)]);
    n.handle(ms(1), Input::PeerLink(LinkState::Up));
    n.handle(ms(2), Input::PeerLink(LinkState::Down));
    assert!(link_orders(&drain(&mut n)).is_empty());
}

#[test]
fn a_primary_closes_the_link_of_a_peer_it_declared_lost_and_still_accepts() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::PeerLink(LinkState::Up));
    drain(&mut n);
    // The secondary lost power: its socket stays open and silent.
    let outs = run_timeouts(&mut n, ms(3), ms(5_000));
    let lost = outs
        .iter()
        .position(|(_, o)| {
            matches!(
                o,
                Output::Event(Event::Peer(HeartbeatEvent::PeerLost { .. }))
            )
        })
        .expect("the heartbeat declares the silent peer lost");
    assert_eq!(
        outs[lost + 1].1,
        Output::Link(LinkCommand::Close),
        "the link is closed right after the peer is declared lost"
    );
    let closes = outs
        .iter()
        .filter(|(_, o)| *o == Output::Link(LinkCommand::Close))
        .count();
    assert_eq!(closes, 1, "closed once");
    assert!(
        !outs
            .iter()
            .any(|(_, o)| *o == Output::Link(LinkCommand::Accept(false))),
        "a primary keeps accepting: its peer's next incarnation connects here"
    );
}

#[test]
fn a_completed_takeover_closes_the_link_after_announcing_its_term() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::PeerLink(LinkState::Up));
    n.handle(ms(3), Input::Command(Command::Failover));
    let req = drain(&mut n)
        .into_iter()
        .find_map(|o| match o {
            Output::Arbiter(r) => Some(r),
            _ => None,
        })
        .expect("a lease request");
    let reply = crate::failover::LeaseReply::Granted {
        valid_for: Duration::from_secs(2),
    };
    n.handle(ms(4), Input::Arbiter { id: req.id, reply });
    let outs = drain(&mut n);
    let announce = outs.iter().position(|o| {
        matches!(
            o,
            Output::ToPeer {
                message: Message::TermAnnounce { .. },
                ..
            }
        )
    });
    let close = outs
        .iter()
        .position(|o| *o == Output::Link(LinkCommand::Close));
    assert!(announce.is_some() && close.is_some(), "{outs:?}");
    assert!(announce < close, "the announcement leaves before the close");
}

#[test]
fn a_shutdown_closes_the_link_and_ends_every_link_order_before_the_halt() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::PeerLink(LinkState::Up));
    drain(&mut n);
    n.handle(ms(4), Input::Command(Command::Shutdown));
    let outs = drain(&mut n);
    let at = |want: &Output| outs.iter().position(|o| o == want);
    let close = at(&Output::Link(LinkCommand::Close)).expect("closed");
    let refuse = at(&Output::Link(LinkCommand::Accept(false))).expect("accepts no more");
    let halt = at(&Output::Halt(HaltReason::Stopped)).expect("halted");
    assert!(close < halt && refuse < halt, "{outs:?}");
    assert_eq!(halt, outs.len() - 1, "nothing after the halt: {outs:?}");
}

/// The first `PeerLost` in `outs`: when, and whether the closed-link grace declared it.
fn first_loss(outs: &[(Instant, Output)]) -> Option<(Instant, bool)> {
    outs.iter().find_map(|(t, o)| match o {
        Output::Event(Event::Peer(HeartbeatEvent::PeerLost { link_closed, .. })) => {
            Some((*t, *link_closed))
        }
        _ => None,
    })
}

#[test]
fn a_primary_whose_secondary_closed_the_link_takes_over_after_the_grace() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::PeerLink(LinkState::Up));
    drain(&mut n);
    let grace = n.config.heartbeat.closed_grace();
    assert!(grace < n.config.heartbeat.lost_after());
    // The secondary's process was killed: its kernel closed the socket.
    n.handle(ms(10), Input::PeerLink(LinkState::PeerClosed));
    let outs = run_timeouts(&mut n, ms(10), ms(2_000));
    assert_eq!(first_loss(&outs), Some((ms(10) + grace, true)));
    let status = n.status(ms(2_000));
    assert_ne!(
        status.mode,
        NodeMode::Paired,
        "the failover started at the grace"
    );
}

#[test]
fn a_secondary_back_on_a_new_link_within_the_grace_keeps_the_pairing() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::PeerLink(LinkState::Up));
    drain(&mut n);
    let lost_after = n.config.heartbeat.lost_after();
    // A middlebox reset the connection; the live secondary redialled at once.
    n.handle(ms(10), Input::PeerLink(LinkState::PeerClosed));
    n.handle(ms(40), Input::PeerLink(LinkState::Up));
    let outs = run_timeouts(&mut n, ms(40), ms(2_000));
    let (at, link_closed) = first_loss(&outs).expect("the secondary stays silent");
    assert!(!link_closed, "only the silence rule declared it");
    assert!(
        at >= ms(1) + lost_after,
        "not before the silence rule's deadline: {at:?}"
    );
}

#[test]
fn a_link_that_failed_without_a_close_falls_to_the_silence_rule() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::PeerLink(LinkState::Up));
    drain(&mut n);
    let lost_after = n.config.heartbeat.lost_after();
    // A write timeout, a cut path: nothing says the peer's process is gone.
    n.handle(ms(10), Input::PeerLink(LinkState::Down));
    let outs = run_timeouts(&mut n, ms(10), ms(2_000));
    let (at, link_closed) = first_loss(&outs).expect("the secondary stays silent");
    assert!(!link_closed);
    assert!(at >= ms(1) + lost_after, "{at:?}");
}

#[test]
fn a_paired_secondary_whose_primary_closed_the_link_redials_then_counts_it_lost_at_the_grace() {
    let mut n = paired_secondary_without_state();
    let grace = n.config.heartbeat.closed_grace();
    n.handle(ms(5), Input::PeerLink(LinkState::PeerClosed));
    assert_eq!(link_orders(&drain(&mut n)), [LinkCommand::Dial]);
    let outs = run_timeouts(&mut n, ms(5), ms(2_000));
    assert_eq!(first_loss(&outs), Some((ms(5) + grace, true)));
    // This one applied no checkpoint: it has nothing to take over with.
    assert_eq!(n.stats().takeovers_refused, 1);
}

#[test]
fn a_refused_redial_after_the_primary_closed_the_link_counts_it_lost_at_once() {
    let mut n = paired_secondary_without_state();
    // Before any close, a refusal is no evidence (the primary may not listen yet).
    n.handle(ms(4), Input::PeerDialRefused);
    assert!(
        first_loss(
            &drain(&mut n)
                .into_iter()
                .map(|o| (ms(4), o))
                .collect::<Vec<_>>()
        )
        .is_none()
    );
    n.handle(ms(5), Input::PeerLink(LinkState::PeerClosed));
    assert_eq!(link_orders(&drain(&mut n)), [LinkCommand::Dial]);
    // Its host answers that nothing listens: the process is gone.
    n.handle(ms(7), Input::PeerDialRefused);
    let outs: Vec<(Instant, Output)> = drain(&mut n).into_iter().map(|o| (ms(7), o)).collect();
    assert_eq!(first_loss(&outs), Some((ms(7), true)));
}
