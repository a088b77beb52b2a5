//! Tests of the flow-level rules: non-TCP comparison, deadlines, bounds, coalescing,
//! checkpoints, failover and garbage collection.

use super::*;

#[test]
fn udp_primary_matches_any_queued_secondary() {
    let mut c = comparator();
    let h = Headers::default();
    let (a, b) = (testkit::udp(&h, b"alpha"), testkit::udp(&h, b"bravo"));
    c.handle_secondary(t(0), b.clone());
    c.handle_secondary(t(0), a.clone());
    c.handle_primary(t(1), a.clone());
    assert_eq!(releases(&settle(&mut c)), vec![a]);
    assert_eq!(c.stats().held_secondary, 1);
    c.handle_primary(t(2), b.clone());
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![b]);
    assert!(requests(&out).is_empty());
    assert_eq!(c.stats().released_matched, 2);
    assert_eq!(c.stats().secondary_matched, 2);
}

#[test]
fn udp_ignores_the_ip_header() {
    let mut c = comparator();
    let p = testkit::udp(&Headers::default(), b"same");
    let s = testkit::udp(
        &Headers {
            ttl: 3,
            ..Headers::default()
        },
        b"same",
    );
    assert_ne!(p, s);
    c.handle_primary(t(0), p.clone());
    c.handle_secondary(t(0), s);
    assert_eq!(releases(&settle(&mut c)), vec![p]);
}

#[test]
fn udp_difference_requests_a_checkpoint() {
    let mut c = in_order_comparator();
    let h = Headers::default();
    c.handle_primary(t(0), testkit::udp(&h, b"hello"));
    c.handle_secondary(t(0), testkit::udp(&h, b"hellO"));
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    // Everything after the IP header is compared, the UDP header included: the first
    // difference is the UDP checksum (offset 6 or 7), before the payload byte at 8 + 4.
    let why = out.iter().find_map(|o| match o {
        CompareOutput::Miscompare { flow, why } => {
            assert_eq!(
                *flow,
                crate::packet::classify_or_opaque(&testkit::udp(&h, b"")).key
            );
            Some(*why)
        }
        _ => None,
    });
    let why = why.expect("a miscompare event");
    assert_eq!(why.reason, MismatchReason::BytesDiffer);
    assert!((6..8).contains(&why.offset), "{why:?}");
    assert_eq!(
        c.phase(),
        Phase::CheckpointPending(CheckpointReason::Miscompare)
    );
}

#[test]
fn udp_size_difference_is_a_length_miscompare() {
    let mut c = in_order_comparator();
    let h = Headers::default();
    c.handle_primary(t(0), testkit::udp(&h, b"four"));
    c.handle_secondary(t(0), testkit::udp(&h, b"five!"));
    let out = settle(&mut c);
    let why = out.iter().find_map(|o| match o {
        CompareOutput::Miscompare { why, .. } => Some(*why),
        _ => None,
    });
    assert!(matches!(
        why,
        Some(MiscompareWhy {
            reason: MismatchReason::LengthDiffers { .. },
            ..
        })
    ));
}

#[test]
fn arp_is_compared_as_a_whole_frame() {
    let mut c = in_order_comparator();
    let reply = testkit::arp(&[0, 1, 8, 0, 6, 4, 0, 2, 1, 2, 3]);
    c.handle_primary(t(0), reply.clone());
    c.handle_secondary(t(0), reply.clone());
    assert_eq!(releases(&settle(&mut c)), vec![reply.clone()]);
    // A difference in the Ethernet header alone (destination MAC) is a miscompare.
    let mut other = reply.clone();
    other[0] ^= 1;
    c.handle_primary(t(1), reply);
    c.handle_secondary(t(1), other);
    let out = settle(&mut c);
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    assert!(out.iter().any(|o| matches!(
        o,
        CompareOutput::Miscompare {
            why: MiscompareWhy { offset: 0, .. },
            ..
        }
    )));
}

#[test]
fn unreadable_frames_are_compared_whole_not_dropped() {
    let mut c = comparator();
    let junk = vec![1, 2, 3];
    c.handle_primary(t(0), junk.clone());
    c.handle_secondary(t(0), junk.clone());
    assert_eq!(releases(&settle(&mut c)), vec![junk]);
    assert_eq!(c.stats().released_matched, 1);
}

#[test]
fn timeout_is_surfaced_through_poll_timeout() {
    let mut c = comparator();
    assert_eq!(c.poll_timeout(), None);
    c.handle_primary(t(100), data(1, b"lonely"));
    settle(&mut c);
    assert_eq!(c.poll_timeout(), Some(t(3100)));
    // Early (spurious) timeouts do nothing.
    c.handle_timeout(t(3099));
    assert!(settle(&mut c).is_empty());
    c.handle_timeout(t(3100));
    let out = settle(&mut c);
    assert_eq!(requests(&out), vec![CheckpointReason::CompareTimeout]);
    assert!(
        releases(&out).is_empty(),
        "a timeout releases nothing by itself"
    );
    assert_eq!(c.stats().timeouts, 1);
    // The frame fired once; the deadline moves on (to the idle-flow GC, far away).
    assert!(c.poll_timeout().is_none_or(|d| d > t(3100)));
    c.handle_timeout(t(3200));
    assert!(settle(&mut c).is_empty());
    c.checkpoint_done(t(3300));
    assert_eq!(releases(&settle(&mut c)), vec![data(1, b"lonely")]);
}

#[test]
fn secondary_frame_waiting_alone_also_times_out() {
    let mut c = comparator();
    c.handle_secondary(
        t(0),
        testkit::udp(&Headers::default(), b"only the svm said this"),
    );
    assert_eq!(c.poll_timeout(), Some(t(3000)));
    c.handle_timeout(t(3000));
    assert_eq!(
        requests(&settle(&mut c)),
        vec![CheckpointReason::CompareTimeout]
    );
}

#[test]
fn full_queue_requests_a_checkpoint_and_keeps_holding() {
    let mut c = Comparator::new(CompareConfig {
        max_queue_frames: 4,
        ..CompareConfig::default()
    })
    .unwrap();
    let frames: Vec<_> = (0..6u32)
        .map(|i| data(1 + 10 * i, &[i as u8; 10]))
        .collect();
    for f in &frames {
        c.handle_primary(t(0), f.clone());
    }
    let out = settle(&mut c);
    assert_eq!(requests(&out), vec![CheckpointReason::QueueFull]);
    assert!(releases(&out).is_empty());
    assert_eq!(c.stats().held_primary, 6, "nothing is dropped");
    assert_eq!(c.stats().queue_full_events, 2);
    assert_eq!(c.stats().coalesced_requests, 1);
    c.checkpoint_done(t(1));
    assert_eq!(releases(&settle(&mut c)), frames);
    assert_eq!(c.stats().released_by_checkpoint, 6);
    assert_eq!(c.phase(), Phase::Comparing);
}

#[test]
fn full_table_evicts_an_idle_flow_first() {
    let mut c = Comparator::new(CompareConfig {
        max_flows: 2,
        ..CompareConfig::default()
    })
    .unwrap();
    for port in [1u16, 2, 3] {
        let h = Headers {
            src_port: port,
            ..Headers::default()
        };
        c.handle_primary(t(0), testkit::udp(&h, b"x"));
        c.handle_secondary(t(0), testkit::udp(&h, b"x"));
    }
    let out = settle(&mut c);
    assert_eq!(releases(&out).len(), 3);
    assert!(requests(&out).is_empty());
    assert_eq!(c.stats().flows_evicted, 1);
    assert_eq!(c.stats().flows, 2);
}

#[test]
fn full_table_without_idle_flows_requests_a_checkpoint() {
    let mut c = Comparator::new(CompareConfig {
        max_flows: 2,
        ..CompareConfig::default()
    })
    .unwrap();
    let frames: Vec<_> = (1..=3u16)
        .map(|port| {
            testkit::udp(
                &Headers {
                    src_port: port,
                    ..Headers::default()
                },
                b"waiting",
            )
        })
        .collect();
    for f in &frames {
        c.handle_primary(t(0), f.clone());
    }
    let out = settle(&mut c);
    assert_eq!(requests(&out), vec![CheckpointReason::FlowTableFull]);
    assert_eq!(c.stats().flow_table_full_events, 1);
    assert_eq!(
        c.stats().held_primary,
        3,
        "the third flow is held, not dropped"
    );
    c.checkpoint_done(t(1));
    assert_eq!(releases(&settle(&mut c)), frames);
    assert_eq!(c.stats().flows, 2, "the table is trimmed back to its bound");
}

#[test]
fn triggers_while_pending_are_coalesced() {
    let mut c = in_order_comparator();
    for port in [1u16, 2, 3] {
        let h = Headers {
            src_port: port,
            ..Headers::default()
        };
        c.handle_primary(t(0), testkit::udp(&h, b"p"));
        c.handle_secondary(t(0), testkit::udp(&h, b"s"));
    }
    c.handle_primary(t(0), data(1, b"late"));
    c.handle_timeout(t(5000));
    let out = settle(&mut c);
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    assert_eq!(c.stats().miscompares, 3);
    assert_eq!(
        c.stats().coalesced_requests,
        3,
        "two miscompares and a timeout"
    );
    // Frames held after the first request: two on each later UDP flow, one TCP segment.
    assert_eq!(c.stats().held_while_pending, 5);
    c.checkpoint_done(t(5001));
    settle(&mut c);
    // Pending state is cleared: the next difference asks again.
    let h = Headers::default();
    c.handle_primary(t(5002), testkit::udp(&h, b"a"));
    c.handle_secondary(t(5002), testkit::udp(&h, b"b"));
    assert_eq!(
        requests(&settle(&mut c)),
        vec![CheckpointReason::Miscompare]
    );
    assert_eq!(c.stats().checkpoint_requests, 2);
}

#[test]
fn checkpoint_done_releases_in_global_arrival_order() {
    let mut c = comparator();
    let mut sent = Vec::new();
    for i in 0..9u16 {
        let h = Headers {
            src_port: 1 + i % 3,
            ..Headers::default()
        };
        let f = testkit::udp(&h, &[i as u8]);
        sent.push(f.clone());
        c.handle_primary(t(u64::from(i)), f);
    }
    c.handle_secondary(t(9), testkit::udp(&Headers::default(), b"dropped"));
    assert!(releases(&settle(&mut c)).is_empty());
    c.checkpoint_done(t(10));
    assert_eq!(releases(&settle(&mut c)), sent);
    assert_eq!(c.stats().secondary_dropped_by_checkpoint, 1);
    assert_eq!(c.stats().held_primary + c.stats().held_secondary, 0);
    assert_eq!(c.poll_timeout().map(|d| d > t(10_000)), Some(true));
}

#[test]
fn diverged_flow_holds_while_other_flows_keep_matching() {
    let mut c = comparator();
    let bad = Headers {
        src_port: 7,
        ..Headers::default()
    };
    c.handle_primary(t(0), testkit::udp(&bad, b"p"));
    c.handle_secondary(t(0), testkit::udp(&bad, b"s"));
    // Even an identical pair on the diverged flow waits for the checkpoint.
    c.handle_primary(t(1), testkit::udp(&bad, b"same"));
    c.handle_secondary(t(1), testkit::udp(&bad, b"same"));
    let good = testkit::udp(&Headers::default(), b"fine");
    c.handle_primary(t(2), good.clone());
    c.handle_secondary(t(2), good.clone());
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![good]);
    assert_eq!(c.stats().held_primary, 2);
}

#[test]
fn release_all_flushes_in_order_then_forwards_alone() {
    let mut c = comparator();
    let a = testkit::udp(&Headers::default(), b"a");
    let b = data(1, b"b");
    c.handle_primary(t(0), a.clone());
    c.handle_primary(t(1), b.clone());
    c.handle_secondary(t(1), testkit::udp(&Headers::default(), b"z"));
    settle(&mut c);
    c.release_all(t(2));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![a, b]);
    assert_eq!(c.phase(), Phase::Solo);
    let later = data(2, b"c");
    c.handle_primary(t(3), later.clone());
    c.handle_secondary(t(3), data(2, b"c"));
    assert_eq!(releases(&settle(&mut c)), vec![later]);
    assert_eq!(c.stats().released_solo, 3);
    assert_eq!(c.stats().secondary_dropped_solo, 2);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn attach_secondary_resumes_comparison() {
    let mut c = comparator();
    c.release_all(t(0));
    c.attach_secondary(t(1));
    assert_eq!(c.phase(), Phase::Comparing);
    let h = Headers::default();
    c.handle_primary(t(2), testkit::udp(&h, b"x"));
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(2), testkit::udp(&h, b"x"));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
}

#[test]
fn vlans_separate_flows() {
    let mut c = comparator();
    let v1 = Headers {
        vlan: Some(1),
        ..Headers::default()
    };
    let v2 = Headers {
        vlan: Some(2),
        ..Headers::default()
    };
    c.handle_primary(t(0), testkit::udp(&v1, b"x"));
    c.handle_secondary(t(0), testkit::udp(&v2, b"x"));
    assert!(releases(&settle(&mut c)).is_empty());
    assert_eq!(c.stats().flows, 2);
    c.handle_secondary(t(1), testkit::udp(&v1, b"x"));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
}

#[test]
fn idle_flows_are_garbage_collected() {
    let mut c = comparator();
    let h = Headers::default();
    c.handle_primary(t(0), testkit::udp(&h, b"x"));
    c.handle_secondary(t(0), testkit::udp(&h, b"x"));
    settle(&mut c);
    assert_eq!(c.stats().flows, 1);
    assert_eq!(c.poll_timeout(), Some(t(60_000)));
    // Activity postpones collection: the GC looks again and re-arms from the last frame.
    c.handle_primary(t(30_000), testkit::udp(&h, b"y"));
    c.handle_secondary(t(30_000), testkit::udp(&h, b"y"));
    c.handle_timeout(t(60_000));
    assert_eq!(c.stats().flows, 1);
    assert_eq!(c.poll_timeout(), Some(t(90_000)));
    c.handle_timeout(t(90_000));
    assert_eq!(c.stats().flows, 0);
    assert_eq!(c.stats().flows_expired, 1);
    assert_eq!(c.poll_timeout(), None);
    settle(&mut c);
}

#[test]
fn closed_tcp_flows_are_collected_after_the_linger() {
    let mut c = comparator();
    c.handle_primary(t(0), data(1, b"bye"));
    c.handle_secondary(t(0), data(1, b"bye"));
    let fin = testkit::tcp(
        &Headers::default(),
        4,
        1,
        crate::packet::tcp_flags::FIN | crate::packet::tcp_flags::ACK,
        &[],
    );
    c.handle_primary(t(10), fin.clone());
    c.handle_secondary(t(10), fin);
    assert_eq!(releases(&settle(&mut c)).len(), 2);
    assert_eq!(c.poll_timeout(), Some(t(5_010)));
    c.handle_timeout(t(5_010));
    assert_eq!(c.stats().flows, 0);
}
