//! The replicated pair end to end on real KVM, over loopback only: `colo arbiter`, `colo
//! primary` and `colo secondary` as child processes of the built binary. What is proven: after
//! each checkpoint the secondary's memory equals the primary's at that checkpoint's pause; a
//! killed primary leads to a failover in a new term and the survivor's guest keeps counting
//! from the last checkpoint; a killed secondary leaves the primary solo under the arbiter's
//! lease; corrupt peer bytes and out-of-range pages end the link with a clear error and no
//! panic; the arbiter grants a term once and fences a rival; `colo demo` exits 0; a busy port
//! or a missing KVM device is a clear error.

mod common;

use colo_core::wire::LinkSide;
use colo_runtime::pair::events::{Milestone, Record};
use colo_runtime::pair::peer::auth::{PairKey, handshake};
use common::procs::{COLO, Procs, args};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral loopback port")
}

/// Starts an arbiter, a primary and a secondary, both with `extra` args; returns the
/// processes and the indices (arbiter, primary, secondary).
fn start_pair(extra: &[&str]) -> (Procs, [usize; 3]) {
    let (arbiter, peer) = (free_addr().to_string(), free_addr().to_string());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let mut p = args(&["primary", "--listen", &peer, "--arbiter", &arbiter]);
    p.extend(args(extra));
    let p = procs.spawn(&p);
    let mut s = args(&["secondary", "--peer", &peer, "--arbiter", &arbiter]);
    s.extend(args(extra));
    let s = procs.spawn(&s);
    (procs, [a, p, s])
}

#[test]
fn secondary_memory_equals_the_primary_at_every_checkpoint_pause() {
    if !common::kvm_available("secondary_memory_equals_the_primary_at_every_checkpoint_pause") {
        return;
    }
    // Digests are computed inside the pause, slowly in a debug build on a loaded machine:
    // a patient heartbeat (2 s) keeps that from looking like a dead peer.
    let (mut procs, [_, p, s]) = start_pair(&[
        "--checkpoint-interval-ms",
        "200",
        "--digests",
        "--heartbeat-misses",
        "20",
    ]);
    // The initial copy of the mostly empty guest is mostly zero pages, sent as such (marked
    // in the frames' zero maps, no bulk): the digests below cover them.
    let (memory, zero_pages) = procs.wait_milestone(Duration::from_secs(30), p, |m| match m {
        Milestone::SyncSent {
            memory_bytes,
            zero_pages,
            ..
        } => Some((*memory_bytes, *zero_pages)),
        _ => None,
    });
    let pages = memory / 4096;
    assert!(
        zero_pages > pages / 2 && zero_pages < pages,
        "{zero_pages} of {pages} pages sent as zero pages"
    );
    let mut primary: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let mut compared = 0;
    while compared < 5 {
        let (who, record) = procs.wait_event(Duration::from_secs(30), |w, r| {
            (w == p && matches!(r.milestone, Milestone::Paused { .. }))
                || (w == s && matches!(r.milestone, Milestone::Applied { .. }))
        });
        let (epoch, digest, step) = match record.milestone {
            Milestone::Paused {
                epoch,
                digest,
                step,
                ..
            }
            | Milestone::Applied {
                epoch,
                digest,
                step,
                ..
            } => (epoch, digest.expect("digests are on"), step),
            other => unreachable!("{other:?}"),
        };
        if who == p {
            primary.insert(epoch, (digest, step));
        } else {
            let (want, want_step) = primary
                .get(&epoch)
                .cloned()
                .expect("the primary pauses before the secondary applies");
            assert_eq!(
                (digest, step),
                (want, want_step),
                "epoch {epoch}: secondary memory after apply differs from the primary's at its pause\n{}",
                procs.log.join("\n")
            );
            compared += 1;
        }
    }
    // The guest really ran between the checkpoints compared (not an idle, equal memory).
    let steps: Vec<u64> = primary.values().map(|(_, s)| *s).collect();
    assert!(
        steps.windows(2).any(|w| w[1] > w[0]),
        "guest steps {steps:?}"
    );
}

#[test]
fn primary_kill_leads_to_failover_and_the_survivor_keeps_running() {
    if !common::kvm_available("primary_kill_leads_to_failover_and_the_survivor_keeps_running") {
        return;
    }
    let (mut procs, [a, p, s]) = start_pair(&["--checkpoint-interval-ms", "200"]);
    let mut applied = (0u64, 0u64);
    while applied.0 < 3 {
        applied = procs.wait_milestone(Duration::from_secs(30), s, |m| match m {
            Milestone::Applied { epoch, step, .. } => Some((*epoch, *step)),
            _ => None,
        });
    }
    procs.kill(p);
    let killed = Instant::now();
    // A checkpoint fully received before the kill may still be applied after it.
    let (term, reason) = loop {
        let over = procs.wait_milestone(Duration::from_secs(10), s, |m| match m {
            Milestone::Applied { step, .. } => Some(Err(*step)),
            Milestone::FailedOver { term, reason, .. } => Some(Ok((*term, reason.clone()))),
            _ => None,
        });
        match over {
            Err(step) => applied.1 = step,
            Ok(over) => break over,
        }
    };
    let took = killed.elapsed();
    assert_eq!((term, reason.as_str()), (2, "PeerLost"));
    // Heartbeat 100 ms x 5, then one lease round trip on loopback.
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    procs.wait_until(Duration::from_secs(5), a, |m| {
        matches!(
            m,
            Milestone::LeaseGranted {
                term: 2,
                node: 2,
                ..
            }
        )
    });
    let mut last = applied.1;
    for _ in 0..3 {
        let (mode, step) = procs.wait_milestone(Duration::from_secs(10), s, |m| match m {
            Milestone::GuestStep { mode, step, .. } => Some((mode.clone(), *step)),
            _ => None,
        });
        assert_eq!(mode, "Solo");
        assert!(
            step > last,
            "the survivor's guest stalled at {step} (after {last})"
        );
        last = step;
    }
}

#[test]
fn events_to_a_file_are_one_typed_record_per_line() {
    if !common::kvm_available("events_to_a_file_are_one_typed_record_per_line") {
        return;
    }
    let file = std::env::temp_dir().join(format!("colo-events-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let events = file.to_string_lossy().into_owned();
    let (arbiter, peer) = (free_addr().to_string(), free_addr().to_string());
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let timing = ["--checkpoint-interval-ms", "200"];
    let mut p = args(&["--events", &events, "primary", "--listen", &peer]);
    p.extend(args(&["--arbiter", &arbiter]));
    p.extend(args(&timing));
    let p = procs.spawn(&p);
    let mut s = args(&["secondary", "--peer", &peer, "--arbiter", &arbiter]);
    s.extend(args(&timing));
    let s = procs.spawn(&s);
    // The secondary's records come on its stdout; once it applied epoch 3 the primary has
    // completed epochs 1 and 2 and written them to its file.
    procs.wait_until(Duration::from_secs(30), s, |m| {
        matches!(m, Milestone::Applied { epoch: 3.., .. })
    });
    procs.kill(p);
    let text = std::fs::read_to_string(&file).expect("the primary wrote its events file");
    let _ = std::fs::remove_file(&file);
    let records: Vec<Record> = text
        .lines()
        .map(|l| Record::from_line(l).unwrap_or_else(|| panic!("not a record: {l:?}")))
        .collect();
    assert!(records.iter().all(|r| r.role == "primary"), "{records:?}");
    let done: Vec<u64> = records
        .iter()
        .filter_map(|r| match r.milestone {
            Milestone::CheckpointDone { epoch, .. } => Some(epoch),
            _ => None,
        })
        .collect();
    assert!(done.starts_with(&[1, 2]), "{done:?}");
    // The primary's stdout carried no record: its stream went to the file.
    assert!(
        !procs.events.iter().any(|(w, _, _)| *w == p),
        "{:?}",
        procs.events
    );
}

#[test]
fn corrupt_peer_frame_ends_the_link_with_a_clear_error() {
    if !common::kvm_available("corrupt_peer_frame_ends_the_link_with_a_clear_error") {
        return;
    }
    let (arbiter, peer) = (free_addr(), free_addr());
    let mut procs = Procs::new();
    let p = procs.spawn(&args(&[
        "primary",
        "--listen",
        &peer.to_string(),
        "--arbiter",
        &arbiter.to_string(),
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(peer) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the primary never listened: {e}"),
        }
    };
    // A peer holding the key (so the frame, not the handshake, is what gets refused).
    let key = PairKey::load(std::path::Path::new(procs.key.path())).unwrap();
    let mut stream = handshake(stream, &key, LinkSide::Connector).unwrap().stream;
    // A frame header with the right magic but a broken header checksum.
    let mut bytes = b"COLO".to_vec();
    bytes.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
    bytes.extend_from_slice(&[0u8; 12]);
    stream.write_all(&bytes).unwrap();
    let reason = procs.wait_milestone(Duration::from_secs(10), p, |m| match m {
        Milestone::LinkDown { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.contains("corrupt peer frame"), "{reason}");
    // No panic, and the node is still alive and serving (it accepts a new link).
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        procs.children[p].try_wait().unwrap().is_none(),
        "the primary exited"
    );
    let _second = handshake(
        TcpStream::connect(peer).expect("the primary still accepts"),
        &key,
        LinkSide::Connector,
    )
    .unwrap();
    procs.wait_for(Duration::from_secs(10), |w, l| {
        w == p && l == "primary: link-up"
    });
}

#[test]
fn colo_demo_exits_zero_with_a_summary() {
    if !common::kvm_available("colo_demo_exits_zero_with_a_summary") {
        return;
    }
    let (arbiter, peer, takeover) = (free_addr(), free_addr(), free_addr());
    let out = Command::new(COLO)
        .args([
            "demo",
            "--arbiter-port",
            &arbiter.port().to_string(),
            "--peer-port",
            &peer.port().to_string(),
            "--reprotect-port",
            &takeover.port().to_string(),
            "--checkpoints",
            "3",
            "--timeout",
            "30",
        ])
        .output()
        .expect("running colo demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "colo demo failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("colo demo: OK"), "{stdout}");
    assert!(
        stdout.contains("failed over (lease granted, term 2)"),
        "{stdout}"
    );
    // The re-protection phase: digests compared, then the newcomer takes over in term 3.
    assert!(
        stdout.contains("newcomer's memory digest equals the survivor's at checkpoints"),
        "{stdout}"
    );
    assert!(
        stdout.contains("newcomer failed over (lease granted, term 3)"),
        "{stdout}"
    );
}

#[test]
fn busy_peer_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let key = common::procs::TestKey::new();
    let out = Command::new(COLO)
        .args(["arbiter", "--listen", &addr, "--key-file", key.path()])
        .output()
        .expect("running colo");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    if !common::kvm_available("busy_peer_port_is_a_clear_error (demo part)") {
        return;
    }
    let demo = Command::new(COLO)
        .args([
            "demo",
            "--arbiter-port",
            &taken.local_addr().unwrap().port().to_string(),
        ])
        .output()
        .expect("running colo demo");
    assert_eq!(demo.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&demo.stderr).contains("is not free"),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
}

#[test]
fn demo_without_kvm_is_a_clear_error() {
    let out = Command::new(COLO)
        .args(["demo"])
        .env("COLO_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .expect("running colo demo");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the demo needs /nonexistent/kvm, which cannot be opened"),
        "{stderr}"
    );
}

#[test]
fn arbiter_grants_a_new_term_once_and_denies_a_rival() {
    use colo_core::failover::{LeaseReply, LeaseRequest, LeaseRequestId};
    use colo_core::ids::{NodeId, Term};
    use colo_runtime::pair::arbiter::{ArbiterClient, ArbiterServer};

    let key = colo_runtime::pair::peer::auth::PairKey::generate().unwrap();
    let server = ArbiterServer::bind("127.0.0.1:0".parse().unwrap(), key.clone()).unwrap();
    let addr = server.local_addr();
    std::thread::spawn(move || server.serve());
    let (tx, rx) = mpsc::channel();
    let client = ArbiterClient::spawn(addr, Duration::from_secs(2), key, move |id, reply| {
        let _ = tx.send((id, reply));
    })
    .unwrap();
    let ask = |id, node, term| {
        client.request(LeaseRequest {
            id: LeaseRequestId(id),
            term: Term(term),
            node_id: NodeId(node),
            duration: Duration::from_secs(2),
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the arbiter answers")
    };
    assert_eq!(
        ask(1, 2, 2),
        (
            LeaseRequestId(1),
            LeaseReply::Granted {
                valid_for: Duration::from_secs(2)
            }
        )
    );
    // The old primary, coming back in the same term while the lease runs: fenced.
    assert_eq!(
        ask(2, 1, 2),
        (
            LeaseRequestId(2),
            LeaseReply::Denied {
                holder: NodeId(2),
                current_term: Term(2)
            }
        )
    );
    // A client sending garbage does not disturb the arbiter.
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.write_all(b"not a colo frame at all, not even close")
        .unwrap();
    assert!(matches!(ask(3, 2, 2).1, LeaseReply::Granted { .. }));
}

#[test]
fn secondary_refuses_pages_outside_guest_memory() {
    use colo_core::ids::{Epoch, PageRange};
    use colo_core::wire::{Message, encode_sealed};

    if !common::kvm_available("secondary_refuses_pages_outside_guest_memory") {
        return;
    }
    // A fake primary: whatever it is sent, it answers with a page far beyond 32 MiB.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = fake.local_addr().unwrap().to_string();
    let mut procs = Procs::new();
    let s = procs.spawn(&args(&[
        "secondary",
        "--peer",
        &peer,
        "--arbiter",
        &free_addr().to_string(),
    ]));
    let (stream, _) = fake.accept().unwrap();
    // The fake holds the pair key: the page range, not the link, is what gets refused.
    let key = PairKey::load(std::path::Path::new(procs.key.path())).unwrap();
    let link = handshake(stream, &key, LinkSide::Acceptor).unwrap();
    let (mut stream, mut mac) = (link.stream, link.session.send);
    let mut frame = Vec::new();
    encode_sealed(
        &Message::PageBatch {
            epoch: Epoch(1),
            batch: 0,
            ranges: vec![PageRange {
                first: 1 << 30,
                count: 1,
            }],
            zero: colo_core::wire::ZeroPages::none(1),
        },
        &[0xab; 4096],
        &mut frame,
        &mut mac,
    )
    .unwrap();
    stream.write_all(&frame).unwrap();
    let reason = procs.wait_milestone(Duration::from_secs(10), s, |m| match m {
        Milestone::LinkDown { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        reason.contains("refused PageBatch from the peer: page range 1073741824+1 outside"),
        "{reason}"
    );
    assert!(
        procs.children[s].try_wait().unwrap().is_none(),
        "the secondary exited"
    );
}

#[test]
fn secondary_kill_leaves_the_primary_running_solo_under_a_lease() {
    if !common::kvm_available("secondary_kill_leaves_the_primary_running_solo_under_a_lease") {
        return;
    }
    let (mut procs, [a, p, s]) = start_pair(&["--checkpoint-interval-ms", "200"]);
    procs.wait_milestone(Duration::from_secs(30), p, |m| {
        matches!(m, Milestone::CheckpointDone { epoch: 2, .. }).then_some(())
    });
    procs.kill(s);
    let term = procs.wait_milestone(Duration::from_secs(10), p, |m| match m {
        Milestone::FailedOver { term, .. } => Some(*term),
        _ => None,
    });
    assert_eq!(term, 2);
    procs.wait_until(Duration::from_secs(5), a, |m| {
        matches!(
            m,
            Milestone::LeaseGranted {
                term: 2,
                node: 1,
                ..
            }
        )
    });
    let mut last = 0;
    for _ in 0..2 {
        let (mode, step) = procs.wait_milestone(Duration::from_secs(10), p, |m| match m {
            Milestone::GuestStep { mode, step, .. } => Some((mode.clone(), *step)),
            _ => None,
        });
        assert_eq!(mode, "Solo");
        assert!(step > last, "the primary's guest stalled at {step}");
        last = step;
    }
}
