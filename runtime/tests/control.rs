//! The control socket and re-protection end to end on real KVM, over loopback and temp-dir
//! sockets only: every control command against a live pair (`colo status|checkpoint|set
//! checkpoint-interval|set digests|reprotect|shutdown`), malformed and unknown requests, an
//! operator-declared failover, a re-protection after the primary is killed (the newcomer's
//! memory digest equals the survivor's at every compared checkpoint), `--auto-reprotect`, a
//! paired secondary refusing newcomers, a secondary reconnecting after a link drop between
//! checkpoints with no failover, a live socket path refused, and a clear error for a socket
//! nobody serves.

mod common;

use colo_runtime::pair::events::Milestone;
use common::procs::{COLO, Procs, args, free_addr};
use common::proxy::Proxy;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

/// Runs `colo <words> --control <path> --json`; returns the exit success and the response.
fn ctl(path: &str, words: &[&str]) -> (bool, Value) {
    let out = Command::new(COLO)
        .args(words)
        .args(["--control", path, "--json"])
        .output()
        .expect("running colo");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "colo {words:?} printed no JSON ({e}): {text} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

/// Raw request lines over one connection.
fn raw(path: &str, lines: &[&str]) -> Vec<Value> {
    let stream = UnixStream::connect(path).expect("connecting to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    lines
        .iter()
        .map(|line| {
            writeln!(out, "{line}").unwrap();
            let mut answer = String::new();
            input.read_line(&mut answer).unwrap();
            serde_json::from_str(&answer).expect("the answer is JSON")
        })
        .collect()
}

/// An arbiter, a primary and a secondary (which accepts newcomers on its own `--listen`),
/// each node with a control socket; `extra` goes to both nodes.
struct Pair {
    procs: Procs,
    arbiter: String,
    primary: usize,
    secondary: usize,
    p_ctl: String,
    s_ctl: String,
    takeover: String,
}

fn start_pair(extra: &[&str]) -> Pair {
    let (arbiter, peer, takeover) = (free_addr(), free_addr(), free_addr());
    let (p_ctl, s_ctl) = (common::control_path(), common::control_path());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let mut p = args(&["primary", "--listen", &peer, "--arbiter", &arbiter]);
    p.extend(args(&["--control", &p_ctl]));
    p.extend(args(extra));
    let primary = procs.spawn(&p);
    let mut s = args(&["secondary", "--peer", &peer, "--arbiter", &arbiter]);
    s.extend(args(&["--listen", &takeover, "--control", &s_ctl]));
    s.extend(args(extra));
    let secondary = procs.spawn(&s);
    Pair {
        procs,
        arbiter,
        primary,
        secondary,
        p_ctl,
        s_ctl,
        takeover,
    }
}

impl Pair {
    /// Waits until the secondary applied checkpoint `epoch` or a later one.
    fn applied(&mut self, epoch: u64) {
        let s = self.secondary;
        self.procs.wait_until(
            Duration::from_secs(60),
            s,
            |m| matches!(m, Milestone::Applied { epoch: e, .. } if *e >= epoch),
        );
    }
}

#[test]
fn every_control_command_answers_on_a_live_pair() {
    if !common::kvm_available("every_control_command_answers_on_a_live_pair") {
        return;
    }
    let mut pair = start_pair(&["--heartbeat-misses", "20"]);
    pair.applied(2);
    let (p, s) = (pair.primary, pair.secondary);

    let (ok, st) = ctl(&pair.p_ctl, &["status"]);
    assert!(ok, "{st}");
    assert_eq!(
        (&st["role"], &st["mode"], &st["term"], &st["peer"]["link"]),
        (
            &Value::from("Primary"),
            &Value::from("Paired"),
            &Value::from(1),
            &Value::from("up")
        ),
        "{st}"
    );
    assert!(st["epoch"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["last_checkpoint"]["pause_us"].as_u64().is_some(), "{st}");
    assert!(st["stats"]["peer_sent"].as_u64().unwrap() > 0, "{st}");
    let (ok, st) = ctl(&pair.s_ctl, &["status"]);
    assert!(ok);
    assert_eq!(st["role"], "Secondary", "{st}");
    assert_eq!(st["peer"]["peer_id"], 1, "{st}");

    // `checkpoint` answers once a checkpoint after the request completed: a forced one, or
    // the periodic one it was coalesced into if one was in progress.
    let before = ctl(&pair.p_ctl, &["status"]).1["epoch"].as_u64().unwrap();
    let (ok, answer) = ctl(&pair.p_ctl, &["checkpoint"]);
    assert!(ok, "{answer}");
    assert!(answer["epoch"].as_u64().unwrap() > before, "{answer}");
    assert!(answer["pause_us"].as_u64().is_some(), "{answer}");
    let reason = answer["reason"].as_str().unwrap().to_string();
    assert!(reason == "Forced" || reason == "Periodic", "{answer}");
    let epoch = answer["epoch"].as_u64().unwrap();
    pair.procs.wait_until(Duration::from_secs(30), p, |m| {
        matches!(m, Milestone::CheckpointDone { epoch: e, reason: r, .. } if *e == epoch && *r == reason)
    });
    let (ok, answer) = ctl(&pair.s_ctl, &["checkpoint"]);
    assert!(!ok, "a secondary takes no checkpoint: {answer}");
    assert!(answer["error"].as_str().unwrap().contains("paired primary"));

    // The interval changes, and the status says so.
    let (ok, answer) = ctl(&pair.p_ctl, &["set", "checkpoint-interval", "150"]);
    assert!(ok, "{answer}");
    assert_eq!(
        ctl(&pair.p_ctl, &["status"]).1["checkpoint_interval_ms"],
        150
    );
    let (ok, _) = ctl(&pair.s_ctl, &["set", "checkpoint-interval", "150"]);
    assert!(!ok, "the interval is the primary's");

    // Digests come on from the next checkpoint (lines printed before the request may still
    // be unread here, so wait for the first one with a digest).
    assert!(ctl(&pair.p_ctl, &["set", "digests", "on"]).0);
    pair.procs.wait_until(Duration::from_secs(30), p, |m| {
        matches!(
            m,
            Milestone::Paused {
                digest: Some(_),
                ..
            }
        )
    });

    // A paired secondary closes connections on its takeover address: it has its primary
    // (a newcomer that authenticated with the pair key; a keyless one is refused earlier).
    let key =
        colo_runtime::pair::peer::auth::PairKey::load(std::path::Path::new(pair.procs.key.path()))
            .unwrap();
    let _knock = colo_runtime::pair::peer::auth::handshake(
        std::net::TcpStream::connect(&pair.takeover).expect("the secondary listens"),
        &key,
        colo_core::wire::LinkSide::Connector,
    )
    .expect("the secondary holds the same key");
    pair.procs.wait_until(
        Duration::from_secs(10),
        s,
        |m| matches!(m, Milestone::NewcomerRefused { mode, .. } if mode == "Paired"),
    );

    // Re-protection needs a solo node.
    let (ok, answer) = ctl(&pair.p_ctl, &["reprotect"]);
    assert!(!ok);
    assert!(
        answer["error"].as_str().unwrap().contains("solo"),
        "{answer}"
    );

    // Malformed and unknown requests are errors on a connection that keeps working.
    let answers = raw(
        &pair.p_ctl,
        &[
            "{\"cmd\":\"status\"",
            "{\"cmd\":\"self-destruct\"}",
            "{\"cmd\":\"set-checkpoint-interval\",\"ms\":0}",
            "42",
            "{\"cmd\":\"status\"}",
        ],
    );
    for bad in &answers[..4] {
        assert_eq!(bad["ok"], false, "{bad}");
    }
    assert!(answers[0]["error"].as_str().unwrap().contains("malformed"));
    assert!(
        answers[1]["error"]
            .as_str()
            .unwrap()
            .contains("unknown command \"self-destruct\"")
    );
    assert_eq!(answers[4]["mode"], "Paired", "{}", answers[4]);

    // Shutdown: the answer comes back, the secondary exits 0, its socket file is removed.
    let (ok, answer) = ctl(&pair.s_ctl, &["shutdown"]);
    assert!(ok, "{answer}");
    let status = pair.procs.wait_exit(s, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!std::path::Path::new(&pair.s_ctl).exists());
}

#[test]
fn failover_by_command_makes_the_secondary_primary_in_a_new_term() {
    if !common::kvm_available("failover_by_command_makes_the_secondary_primary_in_a_new_term") {
        return;
    }
    let mut pair = start_pair(&[]);
    pair.applied(2);
    let s = pair.secondary;
    let (ok, answer) = ctl(&pair.s_ctl, &["failover"]);
    assert!(ok, "{answer}");
    let over = pair
        .procs
        .wait_milestone(Duration::from_secs(10), s, |m| match m {
            Milestone::FailedOver { term, reason, .. } => Some((*term, reason.clone())),
            _ => None,
        });
    assert_eq!(over, (2, "Requested".to_string()));
    let st = ctl(&pair.s_ctl, &["status"]).1;
    assert_eq!(
        (&st["role"], &st["mode"]),
        (&Value::from("Primary"), &Value::from("Solo"))
    );
    assert_eq!(st["last_failover_reason"], "Requested", "{st}");
    assert_eq!(st["lease_held"], true, "{st}");
    // A second failover has nothing left to fail over from.
    assert!(!ctl(&pair.s_ctl, &["failover"]).0);
}

#[test]
fn reprotection_after_a_primary_kill_copies_the_survivor_exactly() {
    if !common::kvm_available("reprotection_after_a_primary_kill_copies_the_survivor_exactly") {
        return;
    }
    // Digests are slow in a debug build: a patient heartbeat keeps them from looking like a
    // dead peer.
    let patient = [
        "--heartbeat-misses",
        "20",
        "--checkpoint-interval-ms",
        "300",
    ];
    let mut pair = start_pair(&patient);
    pair.applied(2);
    let s = pair.secondary;
    pair.procs.kill(pair.primary);
    pair.procs.wait_until(Duration::from_secs(15), s, |m| {
        matches!(m, Milestone::FailedOver { .. })
    });
    // Not armed: a newcomer would be ignored. Arm, and verify at every checkpoint.
    assert_eq!(ctl(&pair.s_ctl, &["status"]).1["reprotect"]["armed"], false);
    let (ok, answer) = ctl(&pair.s_ctl, &["reprotect"]);
    assert!(ok, "{answer}");
    assert!(ctl(&pair.s_ctl, &["set", "digests", "on"]).0);
    let n_ctl = common::control_path();
    let mut n = args(&["secondary", "--peer", &pair.takeover, "--node-id", "3"]);
    n.extend(args(&[
        "--arbiter",
        &pair.arbiter,
        "--control",
        &n_ctl,
        "--digests",
    ]));
    n.extend(args(&patient));
    let newcomer = pair.procs.spawn(&n);

    let mut survivor: BTreeMap<u64, String> = BTreeMap::new();
    let mut joined: BTreeMap<u64, String> = BTreeMap::new();
    let mut compared = Vec::new();
    while compared.len() < 4 {
        let (who, record) = pair.procs.wait_event(Duration::from_secs(60), |w, r| {
            (w == s && matches!(r.milestone, Milestone::Paused { .. }))
                || (w == newcomer && matches!(r.milestone, Milestone::Applied { .. }))
        });
        let (epoch, digest) = match record.milestone {
            Milestone::Paused { epoch, digest, .. } | Milestone::Applied { epoch, digest, .. } => {
                (epoch, digest.expect("digests are on"))
            }
            other => unreachable!("{other:?}"),
        };
        if who == s {
            survivor.insert(epoch, digest);
        } else {
            joined.insert(epoch, digest);
        }
        if let (Some(a), Some(b)) = (survivor.get(&epoch), joined.get(&epoch)) {
            assert_eq!(
                a,
                b,
                "epoch {epoch}: the newcomer's memory differs from the survivor's\n{}",
                pair.procs.log.join("\n")
            );
            compared.push(epoch);
        }
    }
    let st = ctl(&pair.s_ctl, &["status"]).1;
    assert_eq!(
        (
            &st["role"],
            &st["mode"],
            &st["term"],
            &st["peer"]["peer_id"]
        ),
        (
            &Value::from("Primary"),
            &Value::from("Paired"),
            &Value::from(2),
            &Value::from(3)
        ),
        "{st}"
    );
    let st = ctl(&n_ctl, &["status"]).1;
    assert_eq!(
        (&st["role"], &st["term"]),
        (&Value::from("Secondary"), &Value::from(2))
    );
}

#[test]
fn auto_reprotect_arms_a_solo_primary_for_the_next_secondary() {
    if !common::kvm_available("auto_reprotect_arms_a_solo_primary_for_the_next_secondary") {
        return;
    }
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    let node = |role: &str, addr_flag: &str, id: &str| {
        args(&[
            role,
            addr_flag,
            &peer,
            "--arbiter",
            &arbiter,
            "--node-id",
            id,
        ])
    };
    let p_ctl = common::control_path();
    let mut p_args = node("primary", "--listen", "1");
    p_args.extend(args(&["--auto-reprotect", "--control", &p_ctl]));
    let p = procs.spawn(&p_args);
    let mut s_args = node("secondary", "--peer", "2");
    s_args.extend(args(&["--control", &common::control_path()]));
    let s = procs.spawn(&s_args);
    procs.wait_until(Duration::from_secs(60), s, |m| {
        matches!(m, Milestone::Applied { .. })
    });
    procs.kill(s);
    procs.wait_until(Duration::from_secs(15), p, |m| {
        matches!(m, Milestone::ReprotectArmed { auto: true, .. })
    });
    let mut s2_args = node("secondary", "--peer", "3");
    s2_args.extend(args(&["--control", &common::control_path()]));
    let s2 = procs.spawn(&s2_args);
    // The newcomer's first apply carries the whole copy.
    let pages_copied = procs.wait_milestone(Duration::from_secs(60), s2, |m| match m {
        Milestone::Applied { pages_copied, .. } => Some(*pages_copied),
        _ => None,
    });
    assert_eq!(pages_copied, 8192);
    let st = ctl(&p_ctl, &["status"]).1;
    assert_eq!(
        (&st["mode"], &st["term"], &st["peer"]["peer_id"]),
        (&Value::from("Paired"), &Value::from(2), &Value::from(3)),
        "{st}"
    );
}

#[test]
fn a_live_control_socket_path_is_refused() {
    if !common::kvm_available("a_live_control_socket_path_is_refused") {
        return;
    }
    let (arbiter, control) = (free_addr(), common::control_path());
    let mut procs = Procs::new();
    let first = args(&["primary", "--listen", &free_addr(), "--arbiter", &arbiter]);
    let mut first = first;
    first.extend(args(&["--control", &control]));
    let p = procs.spawn(&first);
    procs.wait_for(Duration::from_secs(30), |w, l| {
        w == p && l.starts_with("primary: control socket=")
    });
    let out = Command::new(COLO)
        .args(["primary", "--listen", &free_addr(), "--arbiter", &arbiter])
        .args(["--key-file", procs.key.path()])
        .args(["--control", &control, "--run-for", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serves the control socket"), "{err}");
    assert!(ctl(&control, &["status"]).0, "the first node still answers");
}

#[test]
fn a_socket_nobody_serves_is_a_clear_error() {
    let path = common::control_path();
    let out = Command::new(COLO)
        .args(["status", "--control", &path])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the node's control socket"),
        "{err}"
    );
}

#[test]
fn link_drop_between_checkpoints_reconnects_without_a_failover() {
    if !common::kvm_available("link_drop_between_checkpoints_reconnects_without_a_failover") {
        return;
    }
    let (arbiter, back) = (free_addr(), free_addr());
    let proxy = Proxy::start(back.clone());
    let s_ctl = common::control_path();
    let timing = [
        "--checkpoint-interval-ms",
        "1500",
        "--heartbeat-misses",
        "10",
    ];
    let mut procs = Procs::new();
    procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    let mut p = args(&["primary", "--listen", &back, "--arbiter", &arbiter]);
    p.extend(args(&["--control", &common::control_path()]));
    p.extend(args(&timing));
    let p = procs.spawn(&p);
    let mut s = args(&["secondary", "--peer", &proxy.front, "--arbiter", &arbiter]);
    s.extend(args(&["--control", &s_ctl]));
    s.extend(args(&timing));
    let s = procs.spawn(&s);
    // Right after a checkpoint completes nothing but heartbeats is on the link for 1.5 s.
    procs.wait_until(Duration::from_secs(60), p, |m| {
        matches!(m, Milestone::CheckpointDone { epoch: 2, .. })
    });
    proxy.cut();
    let cut_epoch = 2;
    procs.wait_until(Duration::from_secs(10), s, |m| {
        matches!(m, Milestone::LinkDown { .. })
    });
    procs.wait_for(Duration::from_secs(10), |w, l| {
        w == s && l == "secondary: reconnected"
    });
    // Two more checkpoints applied over the new link, in the same term, no failover.
    loop {
        let (_, record) = procs.wait_event(Duration::from_secs(30), |w, r| {
            (w == s && matches!(r.milestone, Milestone::CheckpointApplied { .. }))
                || matches!(
                    r.milestone,
                    Milestone::FailedOver { .. } | Milestone::TakeoverStarted { .. }
                )
        });
        let Milestone::CheckpointApplied { epoch, .. } = record.milestone else {
            panic!(
                "a failover after a link flap between checkpoints: {record:?}\n{}",
                procs.log.join("\n")
            );
        };
        if epoch >= cut_epoch + 2 {
            break;
        }
    }
    let st = ctl(&s_ctl, &["status"]).1;
    assert_eq!(
        (&st["mode"], &st["term"], &st["peer"]["link"]),
        (&Value::from("Paired"), &Value::from(1), &Value::from("up")),
        "{st}"
    );
}

#[test]
fn auto_reprotect_on_a_secondary_without_listen_is_refused_at_start() {
    if !common::kvm_available("auto_reprotect_on_a_secondary_without_listen_is_refused_at_start") {
        return;
    }
    let key = common::procs::TestKey::new();
    let out = Command::new(COLO)
        .args([
            "secondary",
            "--peer",
            &free_addr(),
            "--arbiter",
            &free_addr(),
        ])
        .args(["--key-file", key.path()])
        .args(["--auto-reprotect", "--control", &common::control_path()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auto-reprotect on a secondary needs --listen"),
        "{err}"
    );
}

#[test]
fn links_without_the_pair_key_are_refused_and_counted_in_status() {
    use colo_core::ids::Epoch;
    use colo_core::wire::{LinkSide, Message, encode, encode_sealed};
    use colo_runtime::pair::peer::auth::{PairKey, handshake};
    use std::net::TcpStream;

    if !common::kvm_available("links_without_the_pair_key_are_refused_and_counted_in_status") {
        return;
    }
    let (arbiter, peer, p_ctl) = (free_addr(), free_addr(), common::control_path());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let mut p = args(&["primary", "--listen", &peer, "--arbiter", &arbiter]);
    p.extend(args(&["--control", &p_ctl]));
    let primary = procs.spawn(&p);
    procs.wait_for(Duration::from_secs(30), |w, l| {
        w == primary && l.starts_with("primary: control socket=")
    });
    let peer_addr: std::net::SocketAddr = peer.parse().unwrap();

    // Another pair's key: refused at the handshake.
    let stranger = PairKey::generate().unwrap();
    let refused = handshake(
        TcpStream::connect(peer_addr).unwrap(),
        &stranger,
        LinkSide::Connector,
    )
    .unwrap_err();
    assert!(refused.to_string().contains("does not hold"), "{refused}");
    procs.wait_for(Duration::from_secs(10), |w, l| {
        w == primary && l.contains("primary: link-refused") && l.contains("does not hold")
    });

    // No key at all: a plain frame where the handshake belongs.
    let mut plain = TcpStream::connect(peer_addr).unwrap();
    let mut frame = Vec::new();
    encode(
        &Message::CheckpointReady { epoch: Epoch(1) },
        &[],
        &mut frame,
    )
    .unwrap();
    plain.write_all(&frame).unwrap();
    procs.wait_for(Duration::from_secs(10), |w, l| {
        w == primary && l.contains("primary: link-refused") && l.contains("without authenticating")
    });

    // The right key, then a frame with one bit flipped on the way: the link is closed.
    let key = PairKey::load(std::path::Path::new(procs.key.path())).unwrap();
    let link = handshake(
        TcpStream::connect(peer_addr).unwrap(),
        &key,
        LinkSide::Connector,
    )
    .unwrap();
    let (mut stream, mut send) = (link.stream, link.session.send);
    let mut bytes = Vec::new();
    encode_sealed(
        &Message::CheckpointReady { epoch: Epoch(1) },
        &[],
        &mut bytes,
        &mut send,
    )
    .unwrap();
    bytes[21] ^= 0x80;
    stream.write_all(&bytes).unwrap();
    let down = procs.wait_milestone(Duration::from_secs(10), primary, |m| match m {
        Milestone::LinkDown { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(down.contains("MAC tag does not verify"), "{down}");

    let (ok, status) = ctl(&p_ctl, &["status"]);
    assert!(ok, "{status}");
    assert_eq!(status["auth"]["refused_links"], 2, "{status}");
    assert_eq!(status["auth"]["bad_frames"], 1, "{status}");

    // The pair's own secondary, with the key, still pairs and replicates.
    let s = procs.spawn(&args(&[
        "secondary",
        "--peer",
        &peer,
        "--arbiter",
        &arbiter,
    ]));
    procs.wait_until(Duration::from_secs(60), s, |m| {
        matches!(m, Milestone::Applied { .. })
    });
}
