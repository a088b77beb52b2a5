//! The pair on two hosts (network namespaces, see common/two_hosts.rs): an arbiter, a primary
//! and a secondary started from one pair file, a client on its own LAN, and a replication
//! link whose faults the test sets while a client is served. What each test proves:
//! - a delaying, lossy, duplicating, reordering replication link costs latency, not a
//!   failover, and checkpoints keep completing;
//! - a primary cut from both its secondary and the arbiter loses the term: the secondary
//!   takes over, the client's connection continues through host B, and on the client's LAN
//!   host A's guest frames end before host B's begin (never two writers);
//! - the secondary cut from the arbiter only, or the arbiter killed, changes nothing while
//!   both hosts are healthy.

mod common;

use colo_runtime::net::kvclient::KvConnection;
use colo_runtime::net::linkem::LinkFaults;
use common::two_hosts::TwoHosts;
use std::time::{Duration, Instant};

/// `n` increments on `conn`, numbered from `first`, each answered with the running count.
fn increments(conn: &mut KvConnection, first: u64, n: u64) {
    for i in first..first + n {
        let reply = conn.ask(&format!("{i} INCR n")).expect("a reply");
        assert_eq!(reply, format!("{i} VAL {i} {i}"), "request {i}");
    }
}

/// Lines of `node` seen so far that start with `prefix`.
fn lines_of(pair: &TwoHosts, node: usize, prefix: &str) -> usize {
    pair.procs
        .seen
        .iter()
        .filter(|(w, _, l)| *w == node && l.starts_with(prefix))
        .count()
}

#[test]
fn a_delaying_lossy_reordering_link_costs_latency_not_a_failover() {
    let faults = LinkFaults {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(2),
        loss: 10_000,
        duplicate: 5_000,
        reorder: 10_000,
        down: false,
    };
    // On a lossy link TCP's retransmission timeout (at least 200 ms, doubling) stalls the
    // replication stream now and then for longer than the default 500 ms detection: an
    // operator running over such a link sets a longer one (docs/operations.md, "Links").
    let Some(mut pair) = TwoHosts::start(
        "a_delaying_lossy_reordering_link_costs_latency_not_a_failover",
        "heartbeat_misses = 20",
        faults,
    ) else {
        return;
    };
    let mut conn = pair.connect();
    increments(&mut conn, 1, 20);
    let before = lines_of(&pair, pair.a_node, "primary: checkpoint-done ");
    let a = pair.a_node;
    for _ in 0..3 {
        pair.procs.wait_for(Duration::from_secs(20), |w, l| {
            w == a && l.starts_with("primary: checkpoint-done ")
        });
    }
    increments(&mut conn, 21, 10);
    let stats = pair.link.stats();
    assert!(
        stats.lost > 0 && stats.duplicated > 0 && stats.reordered > 0,
        "the link applied its faults: {stats:?}"
    );
    for (node, role) in [(pair.a_node, "primary"), (pair.b_node, "secondary")] {
        assert_eq!(
            lines_of(&pair, node, &format!("{role}: failed-over")),
            0,
            "no failover over a slow lossy link:\n{}",
            pair.procs.log.join("\n")
        );
    }
    assert!(lines_of(&pair, pair.a_node, "primary: checkpoint-done ") >= before + 3);
}

#[test]
fn a_primary_cut_from_everyone_loses_the_term_and_the_client_moves_to_host_b() {
    let Some(mut pair) = TwoHosts::start(
        "a_primary_cut_from_everyone_loses_the_term_and_the_client_moves_to_host_b",
        "",
        LinkFaults::default(),
    ) else {
        return;
    };
    let mut conn = pair.connect();
    increments(&mut conn, 1, 5);
    // Host A loses both of its links at once: replication and management.
    pair.link.set_down(true);
    pair.cut_arbiter_link('a', true);
    let cut_at = Instant::now();
    let b = pair.b_node;
    pair.procs.wait_for(Duration::from_secs(20), |w, l| {
        w == b && l.starts_with("secondary: failed-over ")
    });
    pair.procs.wait_for(Duration::from_secs(10), |w, l| {
        w == b && l.starts_with("secondary: claim-client-link ")
    });
    // The same connection goes on through host B, every acknowledged write kept once.
    increments(&mut conn, 6, 5);
    let from_a = pair.guest_frames(0);
    let from_b = pair.guest_frames(1);
    let last_a = from_a
        .iter()
        .map(|c| c.at)
        .max()
        .expect("host A served before the cut");
    let first_b = from_b
        .iter()
        .map(|c| c.at)
        .min()
        .expect("host B serves after the takeover");
    assert!(
        last_a < first_b,
        "host A's guest frames ended {:?} after the cut, host B's began {:?} after it: two \
         writers at once",
        last_a.saturating_duration_since(cut_at),
        first_b.saturating_duration_since(cut_at)
    );
    // Host B's status names its term; host A, still alive, must not be releasing.
    let status_b = pair.status(1).expect("host B answers");
    assert!(status_b.contains("\"term\":2"), "{status_b}");
    let a_frames_then = pair.guest_frames(0).len();
    pair.procs.drain_for(Duration::from_secs(2));
    assert_eq!(
        pair.guest_frames(0).len(),
        a_frames_then,
        "host A, cut off, put guest frames on the client LAN after host B took over"
    );
    // Host A's links come back: the arbiter refuses it the term host B holds, and it stops.
    pair.link.set_down(false);
    pair.cut_arbiter_link('a', false);
    let a = pair.a_node;
    let deposed = pair.procs.wait_for(Duration::from_secs(20), |w, l| {
        w == a && l.starts_with("primary: deposed ")
    });
    assert!(deposed.contains("term=2"), "{deposed}");
    let exit = pair.procs.wait_exit(a, Duration::from_secs(10));
    assert!(
        !exit.success(),
        "a deposed node exits with an error: {exit}"
    );
    assert_eq!(
        pair.guest_frames(0).len(),
        a_frames_then,
        "host A released nothing on its way out"
    );
    increments(&mut conn, 11, 3);
}

#[test]
fn the_secondary_cut_from_the_arbiter_or_the_arbiter_gone_changes_nothing() {
    let Some(mut pair) = TwoHosts::start(
        "the_secondary_cut_from_the_arbiter_or_the_arbiter_gone_changes_nothing",
        "",
        LinkFaults::default(),
    ) else {
        return;
    };
    let mut conn = pair.connect();
    increments(&mut conn, 1, 5);
    let a = pair.a_node;
    // The secondary loses the arbiter: replication goes on.
    pair.cut_arbiter_link('b', true);
    for _ in 0..3 {
        pair.procs.wait_for(Duration::from_secs(20), |w, l| {
            w == a && l.starts_with("primary: checkpoint-done ")
        });
    }
    increments(&mut conn, 6, 5);
    pair.cut_arbiter_link('b', false);
    // The arbiter dies: replication goes on.
    let arbiter = pair.arbiter;
    pair.procs.kill(arbiter);
    for _ in 0..3 {
        pair.procs.wait_for(Duration::from_secs(20), |w, l| {
            w == a && l.starts_with("primary: checkpoint-done ")
        });
    }
    increments(&mut conn, 11, 5);
    for (node, role) in [(pair.a_node, "primary"), (pair.b_node, "secondary")] {
        assert_eq!(
            lines_of(&pair, node, &format!("{role}: failed-over")),
            0,
            "{}",
            pair.procs.log.join("\n")
        );
    }
    assert!(
        pair.guest_frames(1).is_empty(),
        "the secondary's host put guest frames on the client LAN while the primary lived"
    );
}
