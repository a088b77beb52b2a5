//! The replicated pair with guest networking, end to end on real KVM: `colo arbiter`, `colo
//! primary` and `colo secondary` run inside a network namespace the test creates, with a
//! bridge (10.0.0.1/24, no route out) that holds both nodes' client taps; the test's client
//! connects from the same namespace to the guest's server at 10.0.0.2:7000. What is proven:
//! replies through the pair are correct (the primary's node compares both guests' output and
//! releases it); a reply that differs between the guests (`NONCE`) leads to a miscompare
//! checkpoint and the client still gets one well-formed reply; a client's TCP connection
//! keeps working after the primary is killed (both taps are on the bridge; the survivor
//! announces the guest's MAC when it claims the client link) and no acknowledged write is
//! lost or repeated.

mod common;

use colo_runtime::net::kvclient::{KvConnection, Timeouts, add_client_bridge};
use colo_runtime::net::netns::NetNs;
use colo_runtime::pair::events::Milestone;
use common::procs::{Procs, args};
use std::time::Duration;

const BRIDGE: &str = "colobr0";
const GUEST: &str = "10.0.0.2:7000";
const ARBITER: &str = "127.0.0.1:7600";
const PEER: &str = "127.0.0.1:7601";

/// A pair inside its own namespace. Field order is drop order: the processes (and their
/// taps) go before the namespace.
struct NetPair {
    procs: Procs,
    ids: [usize; 3],
    ns: NetNs,
}

fn start_net_pair(test: &str) -> Option<NetPair> {
    if !common::kvm_available(test) || !common::net_available(test) {
        return None;
    }
    let ns = NetNs::create(&common::unique_netns_name()).unwrap();
    add_client_bridge(&ns, BRIDGE, "10.0.0.1/24").unwrap();
    let name = ns.name().to_string();
    let mut procs = Procs::new();
    let a = procs.spawn_in(&name, &args(&["arbiter", "--listen", ARBITER]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let node = |role: &str, link: &[&str], tap: &str| {
        let mut v = args(&[role]);
        v.extend(args(link));
        v.extend(args(&[
            "--arbiter",
            ARBITER,
            "--workload",
            "net-server",
            "--client-tap",
            tap,
            "--client-bridge",
            BRIDGE,
        ]));
        v
    };
    let p = procs.spawn_in(&name, &node("primary", &["--listen", PEER], "colop0"));
    let s = procs.spawn_in(&name, &node("secondary", &["--peer", PEER], "colos0"));
    // The pairing's first checkpoint: from here on both guests run and are compared.
    procs.wait_until(Duration::from_secs(30), p, |m| {
        matches!(m, Milestone::CheckpointDone { epoch: 1, .. })
    });
    Some(NetPair {
        procs,
        ids: [a, p, s],
        ns,
    })
}

fn connect(ns: &NetNs) -> KvConnection {
    let timeouts = Timeouts {
        connect: Duration::from_secs(20),
        read: Duration::from_secs(30),
    };
    KvConnection::connect(ns, GUEST.parse().unwrap(), timeouts)
        .expect("connecting to the guest through the pair")
}

/// One request line, one reply line.
fn ask(conn: &mut KvConnection, request: &str) -> String {
    conn.ask(request).expect("a reply")
}

#[test]
fn replies_through_the_pair_are_correct() {
    let Some(mut pair) = start_net_pair("replies_through_the_pair_are_correct") else {
        return;
    };
    let mut conn = connect(&pair.ns);
    let replies: Vec<String> = [
        "1 SET a x",
        "2 SET a y",
        "3 GET a",
        "4 INCR n",
        "5 INCR n",
        "6 GET missing",
    ]
    .iter()
    .map(|r| ask(&mut conn, r))
    .collect();
    assert_eq!(
        replies,
        [
            "1 OK 1",
            "2 OK 2",
            "3 VAL y 2",
            "4 VAL 1 1",
            "5 VAL 2 2",
            "6 NONE"
        ]
    );
    // The pair keeps checkpointing while it serves.
    let p = pair.ids[1];
    pair.procs.wait_until(Duration::from_secs(10), p, |m| {
        matches!(m, Milestone::CheckpointDone { .. })
    });
}

#[test]
fn bulk_bytes_pass_through_the_pair_intact_both_ways() {
    let Some(pair) = start_net_pair("bulk_bytes_pass_through_the_pair_intact_both_ways") else {
        return;
    };
    let mut conn = connect(&pair.ns);
    // Larger than the guest's socket buffers and spanning checkpoints' worth of segments:
    // every byte was compared between the guests and released by the primary's node.
    let n = 300_000u64;
    assert_eq!(
        ask(&mut conn, &format!("1 STREAM {n}")),
        format!("1 STREAM {n}")
    );
    let mut at = 0u64;
    let mut wrong = None;
    conn.read_body(n, |chunk| {
        for &b in chunk {
            if wrong.is_none() && b != b'a' + (at % 26) as u8 {
                wrong = Some(at);
            }
            at += 1;
        }
    })
    .unwrap();
    assert_eq!(wrong, None, "first wrong byte of the STREAM body");
    let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        conn.ask_with_body(&format!("2 SINK {n}"), &body).unwrap(),
        format!("2 SUNK {n}")
    );
    assert_eq!(ask(&mut conn, "3 INCR n"), "3 VAL 1 1");
}

#[test]
fn differing_replies_force_a_miscompare_checkpoint_and_the_client_gets_one_reply() {
    let Some(mut pair) = start_net_pair(
        "differing_replies_force_a_miscompare_checkpoint_and_the_client_gets_one_reply",
    ) else {
        return;
    };
    let mut conn = connect(&pair.ns);
    assert_eq!(ask(&mut conn, "1 INCR n"), "1 VAL 1 1");
    let nonce = ask(&mut conn, "2 NONCE");
    let token = nonce
        .strip_prefix("2 NONCE ")
        .unwrap_or_else(|| panic!("{nonce:?}"));
    assert!(
        token.len() == 16 && u64::from_str_radix(token, 16).is_ok(),
        "{nonce:?}"
    );
    let p = pair.ids[1];
    pair.procs.wait_until(
        Duration::from_secs(10),
        p,
        |m| matches!(m, Milestone::CheckpointDone { reason, .. } if reason == "Miscompare"),
    );
    // The connection goes on with the state both guests share after the checkpoint.
    assert_eq!(ask(&mut conn, "3 INCR n"), "3 VAL 2 2");
}

#[test]
fn a_client_connection_survives_a_primary_kill() {
    let Some(mut pair) = start_net_pair("a_client_connection_survives_a_primary_kill") else {
        return;
    };
    let [_, p, s] = pair.ids;
    let mut conn = connect(&pair.ns);
    for i in 1..=5u64 {
        assert_eq!(
            ask(&mut conn, &format!("{i} INCR n")),
            format!("{i} VAL {i} {i}")
        );
    }
    pair.procs.kill(p);
    pair.procs.wait_until(Duration::from_secs(20), s, |m| {
        matches!(m, Milestone::FailedOver { .. })
    });
    let claim = pair
        .procs
        .wait_milestone(Duration::from_secs(10), s, |m| match m {
            Milestone::ClaimClientLink { announced, .. } => Some(announced.clone()),
            _ => None,
        });
    assert!(
        claim.contains("announced mac=52:54:00:c0:10:01 frames=3 garp ip=10.0.0.2 frames=3"),
        "the survivor announces the MAC (RARP) and the guest's address (gratuitous ARP): {claim}"
    );
    // Same socket: every write the primary acknowledged is in the survivor's state, once.
    for i in 6..=8u64 {
        assert_eq!(
            ask(&mut conn, &format!("{i} INCR n")),
            format!("{i} VAL {i} {i}")
        );
    }
}

#[test]
fn colo_demo_net_serves_a_client_across_the_failover() {
    use std::process::Command;
    if !common::kvm_available("colo_demo_net_serves_a_client_across_the_failover")
        || !common::net_available("colo_demo_net_serves_a_client_across_the_failover")
    {
        return;
    }
    let out = Command::new(common::procs::COLO)
        .args([
            "demo",
            "--net",
            "--requests",
            "50",
            "--checkpoints",
            "3",
            "--timeout",
            "60",
        ])
        .output()
        .expect("running colo demo --net");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "colo demo --net failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("colo demo --net: OK"), "{stdout}");
    assert!(stdout.contains("no write lost or repeated"), "{stdout}");
}

#[test]
fn a_second_nic_serves_its_own_network_through_a_primary_kill() {
    let test = "a_second_nic_serves_its_own_network_through_a_primary_kill";
    if !common::kvm_available(test) || !common::net_available(test) {
        return;
    }
    // Two client networks: NIC 0 on colobr0 (10.0.0.0/24, idle), NIC 1 on colobr1
    // (10.0.1.0/24), where the guest serves.
    let ns = NetNs::create(&common::unique_netns_name()).unwrap();
    add_client_bridge(&ns, BRIDGE, "10.0.0.1/24").unwrap();
    for step in [
        &[
            "link",
            "add",
            "colobr1",
            "address",
            "02:c0:10:00:00:02",
            "type",
            "bridge",
            "forward_delay",
            "0",
        ][..],
        &["addr", "add", "10.0.1.1/24", "dev", "colobr1"],
        &["link", "set", "colobr1", "up"],
    ] {
        ns.ip(step).unwrap();
    }
    let name = ns.name().to_string();
    let mut procs = Procs::new();
    let a = procs.spawn_in(&name, &args(&["arbiter", "--listen", ARBITER]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let node = |role: &str, link: &[&str], tag: &str| {
        let mut v = args(&[role]);
        v.extend(args(link));
        v.extend(args(&["--arbiter", ARBITER, "--workload", "net-server"]));
        v.extend(args(&[
            "--guest-ip",
            "10.0.1.2/24",
            "--cmdline",
            "colo.net_index=1",
        ]));
        v.extend(args(&[
            "--net",
            &format!("tap=colo{tag}0,mac=52:54:00:c0:10:01,bridge={BRIDGE}"),
            "--net",
            &format!("tap=colo{tag}1,mac=52:54:00:c0:10:02,bridge=colobr1"),
        ]));
        v
    };
    let p = procs.spawn_in(&name, &node("primary", &["--listen", PEER], "p"));
    let s = procs.spawn_in(&name, &node("secondary", &["--peer", PEER], "s"));
    procs.wait_until(Duration::from_secs(30), p, |m| {
        matches!(m, Milestone::CheckpointDone { epoch: 1, .. })
    });
    let timeouts = Timeouts {
        connect: Duration::from_secs(20),
        read: Duration::from_secs(30),
    };
    let mut conn = KvConnection::connect(&ns, "10.0.1.2:7000".parse().unwrap(), timeouts)
        .expect("connecting to the guest's second NIC through the pair");
    for i in 1..=4u64 {
        assert_eq!(
            ask(&mut conn, &format!("{i} INCR n")),
            format!("{i} VAL {i} {i}")
        );
    }
    procs.kill(p);
    procs.wait_until(Duration::from_secs(20), s, |m| {
        matches!(m, Milestone::FailedOver { .. })
    });
    let claim = procs.wait_milestone(Duration::from_secs(10), s, |m| match m {
        Milestone::ClaimClientLink { announced, .. } => Some(announced.clone()),
        _ => None,
    });
    assert!(
        claim.contains("tap=colos0 announced mac=52:54:00:c0:10:01 frames=3")
            && claim.contains("tap=colos1 announced mac=52:54:00:c0:10:02 frames=3"),
        "{claim}"
    );
    for i in 5..=7u64 {
        assert_eq!(
            ask(&mut conn, &format!("{i} INCR n")),
            format!("{i} VAL {i} {i}")
        );
    }
    drop(procs);
    drop(ns);
}
