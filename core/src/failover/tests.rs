//! Tests of the lease holder, the arbiter rule and the failover machine: one per rule, then a
//! two-node-plus-arbiter proptest over random delays, drops and triggers checking single writer.

use super::*;
use crate::time::Duration;
use proptest::prelude::*;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn cfg() -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_millis(1000),
        lease_safety_margin: Duration::from_millis(50),
        lease_request_timeout: Duration::from_millis(100),
    }
}

fn events(f: &mut Failover) -> Vec<FailoverEvent> {
    std::iter::from_fn(|| f.poll_event()).collect()
}

fn grant(ms_: u64) -> LeaseReply {
    LeaseReply::Granted {
        valid_for: Duration::from_millis(ms_),
    }
}

#[test]
fn invalid_lease_configs_are_rejected() {
    let mut c = cfg();
    c.lease_safety_margin = c.lease_duration;
    assert_eq!(
        Lease::new(c, A, ms(0)).unwrap_err(),
        LeaseConfigError::MarginTooLarge
    );
    let mut c = cfg();
    c.lease_request_timeout = Duration::ZERO;
    assert_eq!(
        Lease::new(c, A, ms(0)).unwrap_err(),
        LeaseConfigError::ZeroRequestTimeout
    );
}

#[test]
fn lease_expiry_counts_from_the_request_send_time_minus_margin() {
    let mut l = Lease::new(cfg(), A, ms(0)).unwrap();
    l.handle_acquire(ms(10), Term(2));
    let req = l.poll_request().unwrap();
    assert_eq!(req.term, Term(2));
    // The grant arrives 30 ms later; expiry is still send time + 1000 - 50.
    l.handle_reply(ms(40), req.id, grant(1000));
    assert!(l.may_release(ms(40)));
    assert!(l.may_release(ms(959)));
    assert!(!l.may_release(ms(960)));
}

#[test]
fn lease_renews_before_expiry_and_lapses_without_answers() {
    let mut l = Lease::new(cfg(), A, ms(0)).unwrap();
    l.handle_acquire(ms(0), Term(2));
    let req = l.poll_request().unwrap();
    l.handle_reply(ms(0), req.id, grant(1000));
    // Renewal is due halfway through the usable 950 ms.
    assert_eq!(l.poll_timeout(), Some(ms(475)));
    l.handle_timeout(ms(475));
    assert!(l.poll_request().is_some(), "renewal sent");
    // Nobody answers: retries every 100 ms, then the lease lapses at 950.
    let mut now = 475;
    while let Some(t) = l.poll_timeout() {
        now = t.as_nanos().div_ceil(1_000_000);
        if now > 950 {
            break;
        }
        l.handle_timeout(t);
        while l.poll_request().is_some() {}
    }
    assert!(!l.may_release(ms(950)));
    assert!(matches!(
        l.phase(),
        LeasePhase::Acquiring { lapsed: true, .. }
    ));
    assert_eq!(
        std::iter::from_fn(|| l.poll_event()).last(),
        Some(LeaseEvent::Lapsed { term: Term(2) })
    );
    assert!(now > 950, "keeps retrying after the lapse");
}

#[test]
fn duplicate_or_unknown_replies_are_ignored_and_counted() {
    let mut l = Lease::new(cfg(), A, ms(0)).unwrap();
    l.handle_acquire(ms(0), Term(2));
    let req = l.poll_request().unwrap();
    l.handle_reply(ms(5), req.id, grant(1000));
    l.handle_reply(ms(900), req.id, grant(1000));
    l.handle_reply(ms(900), LeaseRequestId(99), grant(1000));
    assert_eq!(l.stats().unknown_replies, 2);
    assert!(!l.may_release(ms(950)), "a duplicate grant must not extend");
}

#[test]
fn grant_shorter_than_the_margin_is_useless() {
    let mut l = Lease::new(cfg(), A, ms(0)).unwrap();
    l.handle_acquire(ms(0), Term(2));
    let req = l.poll_request().unwrap();
    l.handle_reply(ms(1), req.id, grant(50));
    assert!(!l.may_release(ms(1)));
    assert_eq!(l.stats().useless_grants, 1);
}

#[test]
fn busy_denial_retries_but_a_taken_term_deposes() {
    let mut l = Lease::new(cfg(), A, ms(0)).unwrap();
    l.handle_acquire(ms(0), Term(3));
    let req = l.poll_request().unwrap();
    l.handle_reply(
        ms(1),
        req.id,
        LeaseReply::Denied {
            holder: B,
            current_term: Term(2),
        },
    );
    assert!(matches!(l.phase(), LeasePhase::Acquiring { .. }));
    assert_eq!(l.stats().busy_denials, 1);
    l.handle_timeout(ms(100));
    let req = l.poll_request().unwrap();
    l.handle_reply(
        ms(101),
        req.id,
        LeaseReply::Denied {
            holder: B,
            current_term: Term(3),
        },
    );
    assert!(matches!(l.phase(), LeasePhase::Deposed { .. }));
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn arbiter_grants_a_new_term_only_after_the_old_lease_expired() {
    let mut arb = Arbiter::new(Duration::from_secs(10), ms(0));
    let d = Duration::from_millis(1000);
    assert_eq!(arb.handle_request(ms(0), Term(2), A, d), grant(1000));
    assert_eq!(
        arb.handle_request(ms(10), Term(3), B, d),
        LeaseReply::Denied {
            holder: A,
            current_term: Term(2)
        }
    );
    assert_eq!(
        arb.handle_request(ms(20), Term(2), B, d),
        LeaseReply::Denied {
            holder: A,
            current_term: Term(2)
        },
        "the current term is the holder's"
    );
    assert_eq!(arb.handle_request(ms(500), Term(2), A, d), grant(1000));
    assert_eq!(
        arb.handle_request(ms(1499), Term(3), B, d),
        LeaseReply::Denied {
            holder: A,
            current_term: Term(2)
        }
    );
    assert_eq!(arb.handle_request(ms(1500), Term(3), B, d), grant(1000));
    assert_eq!(
        arb.handle_request(ms(1600), Term(2), A, d),
        LeaseReply::Denied {
            holder: B,
            current_term: Term(3)
        },
        "older terms are refused"
    );
}

#[test]
fn a_restored_arbiter_keeps_the_term_with_its_holder_for_a_whole_max_lease() {
    // B held term 2 when the arbiter died; it restarts at 0 with the record (2, B).
    let max = Duration::from_secs(10);
    let d = Duration::from_millis(1000);
    let mut arb = Arbiter::restored(max, ms(0), Term(2), B);
    assert_eq!(arb.record(), Some((Term(2), B)));
    // The old primary A, cut off and still trying to take term 2, is told who holds it
    // (deposed) instead of being granted it as a vacant arbiter would.
    assert_eq!(
        arb.handle_request(ms(5), Term(2), A, d),
        LeaseReply::Denied {
            holder: B,
            current_term: Term(2)
        }
    );
    // The holder renews as before the restart ...
    assert_eq!(arb.handle_request(ms(100), Term(2), B, d), grant(1000));
    // ... a newer term is refused while B's lease might still run in B's view ...
    assert_eq!(
        arb.handle_request(ms(9_999), Term(3), A, d),
        LeaseReply::Denied {
            holder: B,
            current_term: Term(2)
        }
    );
    // ... and once a whole max_lease passed with no renewal, a newer term may go to another.
    assert_eq!(arb.handle_request(ms(10_000), Term(3), A, d), grant(1000));
    assert_eq!(arb.record(), Some((Term(3), A)));
    assert_eq!(Arbiter::new(max, ms(0)).record(), None);
}

#[test]
fn arbiter_caps_the_lease_length() {
    let mut arb = Arbiter::new(Duration::from_millis(300), ms(0));
    assert_eq!(
        arb.handle_request(ms(0), Term(1), A, Duration::from_secs(5)),
        grant(300)
    );
}

#[test]
fn peer_loss_starts_a_takeover_that_releases_only_with_the_lease() {
    let mut f = Failover::new(cfg(), B, Role::Secondary, Term(1), ms(0)).unwrap();
    assert!(!f.may_release_solo(ms(0)));
    f.handle_trigger(ms(10), FailoverReason::PeerLost);
    assert_eq!(f.mode(), Mode::TakingOver);
    assert_eq!(f.term(), Term(2));
    assert_eq!(
        events(&mut f),
        vec![FailoverEvent::TakeoverStarted {
            term: Term(2),
            from: Role::Secondary,
            reason: FailoverReason::PeerLost
        }]
    );
    assert!(!f.may_release_solo(ms(10)), "no release before the grant");
    let req = f.poll_lease_request().unwrap();
    assert_eq!((req.term, req.node_id), (Term(2), B));
    f.handle_lease_reply(ms(20), req.id, grant(1000));
    assert_eq!(f.mode(), Mode::Solo);
    assert!(f.may_release_solo(ms(20)));
    assert_eq!(
        events(&mut f),
        vec![FailoverEvent::SoloGranted { term: Term(2) }]
    );
    let st = f.status(ms(20));
    assert_eq!(st.role, Role::Primary);
    assert_eq!(st.last_failover_reason, Some(FailoverReason::PeerLost));
    assert!(!FailoverReason::PeerLost.is_request());
}

#[test]
fn solo_node_that_cannot_renew_stops_releasing() {
    let mut f = Failover::new(cfg(), A, Role::Primary, Term(1), ms(0)).unwrap();
    f.handle_trigger(ms(0), FailoverReason::Requested);
    let req = f.poll_lease_request().unwrap();
    f.handle_lease_reply(ms(1), req.id, grant(1000));
    events(&mut f);
    // The arbiter is unreachable from now on.
    while let Some(t) = f.poll_timeout() {
        if t > ms(2000) {
            break;
        }
        f.handle_timeout(t);
        while f.poll_lease_request().is_some() {}
    }
    assert!(!f.may_release_solo(ms(950)));
    assert_eq!(
        events(&mut f),
        vec![FailoverEvent::ReleaseSuspended { term: Term(2) }]
    );
    assert_eq!(f.mode(), Mode::Solo, "still solo, just not releasing");
}

#[test]
fn arbiter_outage_while_paired_changes_nothing() {
    let mut f = Failover::new(cfg(), A, Role::Primary, Term(1), ms(0)).unwrap();
    f.handle_timeout(ms(100_000));
    assert_eq!(f.poll_lease_request(), None, "paired nodes never ask");
    assert_eq!(f.poll_timeout(), None);
    assert!(f.is_paired());
}

#[test]
fn newer_term_from_the_peer_deposes_for_good() {
    let mut f = Failover::new(cfg(), A, Role::Primary, Term(1), ms(0)).unwrap();
    f.handle_peer_term(ms(0), Term(1), Some(B));
    assert!(f.is_paired(), "same term changes nothing");
    f.handle_peer_term(ms(1), Term(2), Some(B));
    assert_eq!(f.mode(), Mode::Deposed);
    f.handle_trigger(ms(2), FailoverReason::PeerLost);
    assert_eq!(f.mode(), Mode::Deposed);
    assert_eq!(f.stats().ignored_triggers, 1);
    assert_eq!(
        events(&mut f),
        vec![FailoverEvent::Deposed {
            term: Term(1),
            holder: Some(B),
            current_term: Term(2)
        }]
    );
}

#[test]
fn second_trigger_during_a_takeover_is_ignored() {
    let mut f = Failover::new(cfg(), A, Role::Primary, Term(1), ms(0)).unwrap();
    f.handle_trigger(ms(0), FailoverReason::PeerLost);
    f.handle_trigger(ms(1), FailoverReason::CheckpointStuck);
    assert_eq!(f.term(), Term(2));
    assert_eq!(f.stats().takeovers, 1);
}

#[test]
fn reprotection_returns_to_paired_and_drops_the_lease() {
    let mut f = Failover::new(cfg(), B, Role::Secondary, Term(1), ms(0)).unwrap();
    assert!(
        !f.handle_reprotect_start(ms(0)),
        "only a solo node re-protects"
    );
    f.handle_trigger(ms(0), FailoverReason::PeerLost);
    let req = f.poll_lease_request().unwrap();
    f.handle_lease_reply(ms(1), req.id, grant(1000));
    assert!(f.handle_reprotect_start(ms(2)));
    assert!(f.may_release_solo(ms(3)), "still releasing while syncing");
    f.handle_reprotect_done(ms(4), true);
    assert_eq!(f.mode(), Mode::Paired);
    assert_eq!(f.role(), Role::Primary);
    assert!(!f.may_release_solo(ms(5)));
    assert_eq!(f.lease().phase(), LeasePhase::Idle);
    assert_eq!(
        events(&mut f).last(),
        Some(&FailoverEvent::Reprotected { term: Term(2) })
    );
}

// ---- two nodes and an arbiter over a lossy, delaying network ---------------------------------

#[derive(Clone, Debug)]
enum Act {
    /// Advance global time by this many ms, honouring every deadline on the way.
    Wait(u64),
    /// Trigger a takeover on node 0 or 1.
    Trigger(usize),
    /// Re-protect node i (if solo) and finish at once.
    Reprotect(usize),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        6 => (1u64..400).prop_map(Act::Wait),
        2 => (0usize..2).prop_map(Act::Trigger),
        1 => (0usize..2).prop_map(Act::Reprotect),
    ]
}

struct Msg {
    at: u64,
    to_arbiter: bool,
    node: usize,
    req: LeaseRequest,
    reply: Option<LeaseReply>,
}

proptest! {
    /// Single writer: at no sampled instant (every step and every deadline) do both nodes may
    /// release solo, whatever the delays, drops and triggers; and never after the local expiry.
    #[test]
    fn at_most_one_node_releases_solo(
        acts in proptest::collection::vec(act(), 1..60),
        delays in proptest::collection::vec(0u64..700, 64),
        drops in proptest::collection::vec(proptest::bool::weighted(0.2), 64),
    ) {
        let mut nodes = [
            Failover::new(cfg(), A, Role::Primary, Term(1), ms(0)).unwrap(),
            Failover::new(cfg(), B, Role::Secondary, Term(1), ms(0)).unwrap(),
        ];
        let mut arb = Arbiter::new(Duration::from_millis(1000), ms(0));
        let mut net: Vec<Msg> = Vec::new();
        let mut k = 0usize;
        let mut now = 0u64;
        // Every instant a node may release solo, the arbiter (same real clock here) must hold
        // an unexpired lease of that node's term for that node: the fencing promise itself,
        // which implies that the holder never believes in a lease past its expiry.
        let check = |nodes: &[Failover; 2], arb: &Arbiter, t: u64| -> Result<(), TestCaseError> {
            prop_assert!(
                !(nodes[0].may_release_solo(ms(t)) && nodes[1].may_release_solo(ms(t))),
                "two solo writers at {t} ms"
            );
            for (n, id) in nodes.iter().zip([A, B]) {
                if n.lease().may_release(ms(t)) {
                    match arb.phase() {
                        ArbiterPhase::Leased { term, holder, until } => {
                            prop_assert_eq!(holder, id, "released without being the holder");
                            prop_assert_eq!(term, n.term(), "released under another term");
                            prop_assert!(ms(t) < until, "released after the arbiter's expiry");
                        }
                        ArbiterPhase::Vacant => prop_assert!(false, "released with no lease"),
                    }
                }
            }
            Ok(())
        };
        for a in acts {
            match a {
                Act::Trigger(i) => nodes[i].handle_trigger(ms(now), FailoverReason::PeerLost),
                Act::Reprotect(i) => {
                    if nodes[i].handle_reprotect_start(ms(now)) {
                        nodes[i].handle_reprotect_done(ms(now), true);
                    }
                }
                Act::Wait(d) => {
                    let target = now + d;
                    loop {
                        let next_node = nodes
                            .iter()
                            .filter_map(|n| n.poll_timeout())
                            .map(|t| t.as_nanos().div_ceil(1_000_000))
                            .min();
                        let next_msg = net.iter().map(|m| m.at).min();
                        let next = match (next_node, next_msg) {
                            (Some(a), Some(b)) => a.min(b),
                            (a, b) => match a.or(b) { Some(x) => x, None => break },
                        };
                        if next > target { break; }
                        now = now.max(next);
                        check(&nodes, &arb, now)?;
                        for n in nodes.iter_mut() { n.handle_timeout(ms(now)); }
                        // Deliver everything due now.
                        let (due, rest): (Vec<Msg>, Vec<Msg>) = net.drain(..).partition(|m| m.at <= now);
                        net = rest;
                        for m in due {
                            if m.to_arbiter {
                                let reply = arb.handle_request(ms(now), m.req.term, m.req.node_id, m.req.duration);
                                let (d, drop) = (delays[k % 64], drops[k % 64]);
                                k += 1;
                                if !drop {
                                    net.push(Msg { at: now + d, to_arbiter: false, node: m.node, req: m.req, reply: Some(reply) });
                                }
                            } else if let Some(r) = m.reply {
                                nodes[m.node].handle_lease_reply(ms(now), m.req.id, r);
                            }
                        }
                        check(&nodes, &arb, now)?;
                        for (i, n) in nodes.iter_mut().enumerate() {
                            while let Some(req) = n.poll_lease_request() {
                                let (d, drop) = (delays[k % 64], drops[k % 64]);
                                k += 1;
                                if !drop {
                                    net.push(Msg { at: now + d, to_arbiter: true, node: i, req, reply: None });
                                }
                            }
                            while n.poll_event().is_some() {}
                        }
                    }
                    now = target;
                }
            }
            check(&nodes, &arb, now)?;
            for (i, n) in nodes.iter_mut().enumerate() {
                while let Some(req) = n.poll_lease_request() {
                    let (d, drop) = (delays[k % 64], drops[k % 64]);
                    k += 1;
                    if !drop {
                        net.push(Msg { at: now + d, to_arbiter: true, node: i, req, reply: None });
                    }
                }
                while n.poll_event().is_some() {}
                // poll_timeout is Some whenever the lease waits on time.
                if matches!(n.lease().phase(), LeasePhase::Acquiring { .. } | LeasePhase::Held { .. }) {
                    prop_assert!(n.poll_timeout().is_some());
                }
            }
        }
    }
}
