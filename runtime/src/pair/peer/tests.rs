//! Tests of the peer transport: batching and the reader's handling of whole, split, corrupt
//! and truncated streams; and, over real loopback sockets, the authenticated link (matching
//! keys, another key, no key, a replayed handshake, a flipped bit, the arbiter's side), and
//! the page writer's batches with zero pages among them, compacted and sealed, over a socket.
//! The pair's own socket-level behaviour is in tests/pair.rs and tests/control.rs.

use super::*;
use colo_core::ids::Epoch;
use colo_core::wire::Limits;

fn collect(bytes: &[u8], chunk: usize) -> (Vec<(Message, Vec<u8>)>, LinkClosed) {
    /// A reader that hands out `chunk` bytes per read.
    struct Chunked<'a>(&'a [u8], usize);
    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let mut frames = Vec::new();
    let closed = read_frames(
        &mut Chunked(bytes, chunk),
        FrameDecoder::new(Limits::default()),
        &mut |message, bulk| {
            frames.push((message, bulk.to_vec()));
            true
        },
    );
    (frames, closed)
}

fn two_frames() -> Vec<u8> {
    let mut link = Vec::new();
    encode(
        &Message::CheckpointReady { epoch: Epoch(3) },
        &[],
        &mut link,
    )
    .unwrap();
    encode(
        &Message::DeviceState { epoch: Epoch(3) },
        &[7u8; 5000],
        &mut link,
    )
    .unwrap();
    link
}

#[test]
fn frames_split_in_any_chunks_arrive_whole() {
    for chunk in [1, 7, 4096, 1 << 20] {
        let (frames, closed) = collect(&two_frames(), chunk);
        assert!(matches!(closed, LinkClosed::Eof), "chunk {chunk}: {closed}");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, Message::CheckpointReady { epoch: Epoch(3) });
        assert_eq!(frames[1].1, vec![7u8; 5000]);
    }
}

#[test]
fn corrupt_frame_closes_the_link_with_a_wire_error() {
    let mut link = two_frames();
    let last = link.len() - 10;
    link[last] ^= 0xff; // inside the second frame's bulk: its trailer no longer matches
    let (frames, closed) = collect(&link, 999);
    assert_eq!(frames.len(), 1, "the intact first frame is delivered");
    assert!(matches!(closed, LinkClosed::Wire(_)), "{closed}");
    assert!(closed.to_string().starts_with("corrupt peer frame"));
}

#[test]
fn garbage_is_refused_at_the_header() {
    let (frames, closed) = collect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 64);
    assert!(frames.is_empty());
    assert!(matches!(closed, LinkClosed::Wire(_)), "{closed}");
}

#[test]
fn truncated_frame_at_eof_is_an_error() {
    let link = two_frames();
    let (frames, closed) = collect(&link[..link.len() - 1], 4096);
    assert_eq!(frames.len(), 1);
    assert!(
        matches!(closed, LinkClosed::Wire(WireError::Truncated { .. })),
        "{closed}"
    );
}

#[test]
fn batches_never_exceed_the_page_bound_and_keep_every_page() {
    let ranges = vec![
        PageRange {
            first: 0,
            count: 3000,
        },
        PageRange {
            first: 5000,
            count: 1,
        },
        PageRange {
            first: 6000,
            count: 100,
        },
    ];
    let batches = split_batches(&ranges, 1024);
    assert!(
        batches
            .iter()
            .all(|b| b.iter().map(|r| r.count).sum::<u64>() <= 1024)
    );
    let flat: Vec<u64> = batches
        .iter()
        .flatten()
        .flat_map(|r| r.first..r.end())
        .collect();
    let want: Vec<u64> = ranges.iter().flat_map(|r| r.first..r.end()).collect();
    assert_eq!(flat, want);
    assert_eq!(batches.len(), 4);
    assert!(split_batches(&[], 1024).is_empty());
}

#[test]
fn compacting_a_batch_keeps_the_carried_pages_in_order() {
    let page = PAGE_SIZE as usize;
    // Pages 0..6 hold their index + 1; pages 1, 2 and 5 are marked zero.
    let mut batch: Vec<u8> = (0..6u8).flat_map(|i| vec![i + 1; page]).collect();
    let zero = ZeroPages::from_flags([false, true, true, false, false, true]);
    let bulk = compact_carried(&mut batch, &zero, 6);
    let firsts: Vec<u8> = bulk.chunks_exact(page).map(|p| p[0]).collect();
    assert_eq!(firsts, vec![1, 4, 5]);
    assert!(
        bulk.chunks_exact(page)
            .all(|p| p.iter().all(|&b| b == p[0]))
    );
    let none = ZeroPages::from_flags([false; 3]);
    assert_eq!(
        compact_carried(&mut batch[..3 * page], &none, 3).len(),
        3 * page
    );
}

#[test]
fn sealed_pages_with_zero_pages_among_them_cross_a_socket_each_in_its_place() {
    use colo_core::wire::LinkSide;
    use colo_core::wire::auth::{Nonces, session};
    use std::net::TcpListener;
    let mem = crate::vmm::memory::create(16 << 20).unwrap();
    // 1,500 pages (two frames) in scattered ranges; every third page of them left zero.
    let ranges: Vec<PageRange> = (0..300)
        .map(|i| PageRange {
            first: i * 11,
            count: 5,
        })
        .collect();
    let all: Vec<u64> = ranges.iter().flat_map(|r| r.first..r.end()).collect();
    for (i, &p) in all.iter().enumerate() {
        if i % 3 != 0 {
            let fill = vec![(p % 251) as u8 + 1; PAGE_SIZE as usize];
            mem.write_slice(&fill, GuestAddress(p * PAGE_SIZE)).unwrap();
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let nonces = Nonces {
        connector: [5; 32],
        acceptor: [6; 32],
    };
    let (tx, rx) = (
        session(&[3; 32], LinkSide::Connector, &nonces),
        session(&[3; 32], LinkSide::Acceptor, &nonces),
    );
    let reader = std::thread::spawn(move || {
        let mut frames = Vec::new();
        let decoder = FrameDecoder::sealed(Limits::default(), rx.receive);
        let closed = read_frames(&mut server, decoder, &mut |m, bulk| {
            frames.push((m, bulk.to_vec()));
            true
        });
        (frames, closed)
    });
    let mut writer = PeerWriter::sealed(client, tx.send);
    let sent = writer
        .send_pages(&mem, &ranges, |batch, ranges, zero| Message::PageBatch {
            epoch: Epoch(9),
            batch,
            ranges,
            zero,
        })
        .unwrap();
    writer.close();
    let (frames, closed) = reader.join().unwrap();
    assert!(matches!(closed, LinkClosed::Eof), "{closed}");
    assert_eq!((sent.batches, sent.pages, sent.zero_pages), (2, 1500, 500));
    assert_eq!(sent.bytes, 1000 * PAGE_SIZE);
    let mut seen = Vec::new();
    for (message, bulk) in &frames {
        let Message::PageBatch { ranges, zero, .. } = message else {
            panic!("not a page batch: {message:?}");
        };
        let mut carried = bulk.chunks_exact(PAGE_SIZE as usize);
        for (i, p) in ranges.iter().flat_map(|r| r.first..r.end()).enumerate() {
            let mut want = vec![0u8; PAGE_SIZE as usize];
            mem.read_slice(&mut want, GuestAddress(p * PAGE_SIZE))
                .unwrap();
            if zero.is_zero(i as u64) {
                assert!(want.iter().all(|&b| b == 0), "page {p} marked zero");
            } else {
                assert_eq!(carried.next().unwrap(), &want[..], "page {p}");
            }
            seen.push(p);
        }
        assert!(carried.next().is_none());
    }
    assert_eq!(seen, all);
}

/// The connecting half and a recording relay, shared by the authenticated-link tests.
mod authenticated_helpers {
    use super::*;
    use crate::pair::peer::auth::{AuthedLink, HandshakeError, PairKey, handshake};
    use colo_core::wire::LinkSide;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::mpsc;

    pub(super) fn connect(addr: SocketAddr, key: &PairKey) -> Result<AuthedLink, HandshakeError> {
        handshake(TcpStream::connect(addr).unwrap(), key, LinkSide::Connector)
    }

    /// Relays one connection from a connector to `to`, recording what the connector sent.
    pub(super) fn recording_relay(to: SocketAddr) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut from, _) = listener.accept().unwrap();
            let mut upstream = TcpStream::connect(to).unwrap();
            let (mut back_from, mut back_to) =
                (upstream.try_clone().unwrap(), from.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut back_from, &mut back_to));
            let mut recorded = Vec::new();
            let mut buf = [0u8; 4096];
            // The connector's whole handshake: its hello and its proof.
            while recorded.len() < 72 {
                let n = from.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                upstream.write_all(&buf[..n]).unwrap();
                recorded.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(recorded);
        });
        (addr, rx)
    }
}

/// Socket-level tests of the authenticated link: real loopback TCP, both halves of the
/// handshake on their own threads, attacks played by the test on the raw socket.
mod authenticated {
    use super::authenticated_helpers::*;
    use super::*;
    use crate::pair::arbiter::{ArbiterClient, ArbiterServer};
    use crate::pair::peer::auth::{AuthedLink, HandshakeError, PairKey, handshake};
    use colo_core::failover::{LeaseRequest, LeaseRequestId};
    use colo_core::ids::{NodeId, Term};
    use colo_core::wire::{AuthError, LinkSide, encode_sealed};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A listener whose next connection runs the accepting half with `key`.
    fn acceptor(key: &PairKey) -> (SocketAddr, mpsc::Receiver<Result<AuthedLink, String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let key = key.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let r = handshake(stream, &key, LinkSide::Acceptor).map_err(|e| e.to_string());
                if tx.send(r).is_err() {
                    return;
                }
            }
        });
        (addr, rx)
    }

    fn accepted(rx: &mpsc::Receiver<Result<AuthedLink, String>>) -> Result<AuthedLink, String> {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the acceptor finishes its handshake")
    }

    /// Reads the acceptor's frames until the link ends.
    fn receive_all(link: AuthedLink) -> (Vec<(Message, Vec<u8>)>, LinkClosed) {
        let (mut stream, decoder, _writer) = link.split(Limits::default()).unwrap();
        let mut frames = Vec::new();
        let closed = read_frames(&mut stream, decoder, &mut |m, bulk| {
            frames.push((m, bulk.to_vec()));
            true
        });
        (frames, closed)
    }

    #[test]
    fn silent_connections_beyond_the_handshake_limit_are_refused_and_the_real_peer_gets_in() {
        use crate::pair::peer::auth::{MAX_CONCURRENT_HANDSHAKES, spawn_accept};
        let key = PairKey::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let acceptor_key = key.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let tx = tx.clone();
                spawn_accept(stream, &acceptor_key, "test", move |link| {
                    let _ = tx.send(link);
                });
            }
        });
        // A flood of connections that never say anything: each holds a handshake thread.
        let extra = 4;
        let silent: Vec<TcpStream> = (0..MAX_CONCURRENT_HANDSHAKES + extra)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while key.counts().refused_links < extra as u64 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            key.counts().refused_links,
            extra as u64,
            "the connections beyond the limit are refused at once, the others wait"
        );
        // The flood goes away; the real peer, which retries, is served.
        drop(silent);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let link = loop {
            match connect(addr, &key) {
                Ok(link) => break link,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("the real peer never got in: {e}"),
            }
        };
        drop(link);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the acceptor handed the authenticated link over");
    }

    #[test]
    fn peers_holding_the_same_key_exchange_sealed_frames() {
        let key = PairKey::generate().unwrap();
        let (addr, rx) = acceptor(&key);
        let link = connect(addr, &key).unwrap();
        let (_, _, mut writer) = link.split(Limits::default()).unwrap();
        writer
            .send(&Message::CheckpointReady { epoch: Epoch(3) }, &[])
            .unwrap();
        writer
            .send(&Message::DeviceState { epoch: Epoch(3) }, &[9u8; 3000])
            .unwrap();
        writer.close();
        let (frames, closed) = receive_all(accepted(&rx).unwrap());
        assert!(matches!(closed, LinkClosed::Eof), "{closed}");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].1, vec![9u8; 3000]);
        assert_eq!(key.counts().refused_links, 0);
    }

    #[test]
    fn a_peer_with_another_key_is_refused_on_both_sides() {
        let (ours, theirs) = (PairKey::generate().unwrap(), PairKey::generate().unwrap());
        let (addr, rx) = acceptor(&ours);
        let err = connect(addr, &theirs).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Auth(AuthError::WrongKey)),
            "{err}"
        );
        let refused = accepted(&rx).unwrap_err();
        assert!(
            refused.contains("does not hold this pair's key"),
            "{refused}"
        );
        assert_eq!(ours.counts().refused_links, 1);
        assert_eq!(theirs.counts().refused_links, 1);
    }

    #[test]
    fn a_peer_without_a_key_is_refused_before_its_frame_is_read() {
        let key = PairKey::generate().unwrap();
        let (addr, rx) = acceptor(&key);
        let mut plain = TcpStream::connect(addr).unwrap();
        let mut frame = Vec::new();
        encode(
            &Message::CheckpointReady { epoch: Epoch(1) },
            &[],
            &mut frame,
        )
        .unwrap();
        plain.write_all(&frame).unwrap();
        let refused = accepted(&rx).unwrap_err();
        assert!(refused.contains("without authenticating"), "{refused}");
        assert_eq!(key.counts().refused_links, 1);
        // The acceptor closed the connection: the keyless peer reads its hello, then EOF.
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = plain.read_to_end(&mut rest);
        assert!(rest.len() <= 40, "only the acceptor's hello was sent");
    }

    #[test]
    fn a_replayed_handshake_is_refused() {
        let key = PairKey::generate().unwrap();
        let (addr, rx) = acceptor(&key);
        let (relay, recorded) = recording_relay(addr);
        let _genuine = connect(relay, &key).unwrap();
        accepted(&rx).unwrap();
        let recorded = recorded.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(recorded.len(), 72, "hello and proof");

        // Replayed to the same node: it remembers the nonce.
        let mut replay = TcpStream::connect(addr).unwrap();
        replay.write_all(&recorded).unwrap();
        let refused = accepted(&rx).unwrap_err();
        assert!(refused.contains("replayed handshake"), "{refused}");

        // Replayed to a node that forgot it (restarted, same key file): the proof is bound to
        // the acceptor's fresh nonce and does not verify.
        let restarted = PairKey::from_bytes(*key.bytes_for_tests());
        let (addr2, rx2) = acceptor(&restarted);
        let mut replay = TcpStream::connect(addr2).unwrap();
        replay.write_all(&recorded).unwrap();
        let refused = accepted(&rx2).unwrap_err();
        assert!(
            refused.contains("does not hold this pair's key"),
            "{refused}"
        );
        assert_eq!(key.counts().refused_links, 1);
        assert_eq!(restarted.counts().refused_links, 1);
    }

    #[test]
    fn a_flipped_bit_in_a_frame_closes_the_link_and_nothing_of_it_is_delivered() {
        let key = PairKey::generate().unwrap();
        let (addr, rx) = acceptor(&key);
        let link = connect(addr, &key).unwrap();
        let (mut stream, mut send) = (link.stream, link.session.send);
        let mut bytes = Vec::new();
        encode_sealed(
            &Message::CheckpointReady { epoch: Epoch(2) },
            &[],
            &mut bytes,
            &mut send,
        )
        .unwrap();
        let second = bytes.len();
        encode_sealed(
            &Message::DeviceState { epoch: Epoch(2) },
            &[5u8; 2000],
            &mut bytes,
            &mut send,
        )
        .unwrap();
        encode_sealed(
            &Message::CheckpointReady { epoch: Epoch(3) },
            &[],
            &mut bytes,
            &mut send,
        )
        .unwrap();
        // One bit inside the second frame's bulk, as an attacker on the path would flip it.
        bytes[second + 100] ^= 0x04;
        stream.write_all(&bytes).unwrap();
        let (frames, closed) = receive_all(accepted(&rx).unwrap());
        assert_eq!(frames.len(), 1, "only the frame before the altered one");
        assert!(
            matches!(
                closed,
                LinkClosed::Wire(WireError::MacMismatch { frame: 1 })
            ),
            "{closed}"
        );
        assert!(closed.to_string().contains("MAC tag does not verify"));
    }

    fn lease(id: u64) -> LeaseRequest {
        LeaseRequest {
            id: LeaseRequestId(id),
            term: Term(2),
            node_id: NodeId(2),
            duration: colo_core::time::Duration::from_secs(2),
        }
    }

    #[test]
    fn the_arbiter_serves_only_nodes_holding_the_key() {
        let key = PairKey::generate().unwrap();
        let server = ArbiterServer::bind("127.0.0.1:0".parse().unwrap(), key.clone()).unwrap();
        let addr = server.local_addr();
        std::thread::spawn(move || server.serve());
        let timeout = colo_core::time::Duration::from_secs(2);

        // A node with another key: refused, no reply, counted on both sides.
        let stranger = PairKey::generate().unwrap();
        let (tx, replies) = mpsc::channel();
        let client = ArbiterClient::spawn(addr, timeout, stranger.clone(), move |id, r| {
            let _ = tx.send((id, r));
        })
        .unwrap();
        client.request(lease(1));
        assert!(replies.recv_timeout(Duration::from_secs(3)).is_err());
        assert_eq!(stranger.counts().refused_links, 1);
        assert_eq!(key.counts().refused_links, 1);

        // A keyless client's lease request frame: refused before it is read.
        let mut plain = TcpStream::connect(addr).unwrap();
        let mut frame = Vec::new();
        encode(
            &Message::LeaseRequest {
                term: Term(2),
                node_id: NodeId(9),
                duration_ms: 2000,
            },
            &[],
            &mut frame,
        )
        .unwrap();
        plain.write_all(&frame).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(
            answer.len() <= 40,
            "no lease reply, only the arbiter's hello"
        );

        // A key holder whose frame is altered on the way: the connection is closed, no reply.
        let link = connect(addr, &key).unwrap();
        let (mut stream, mut send) = (link.stream, link.session.send);
        let mut bytes = Vec::new();
        encode_sealed(
            &Message::LeaseRequest {
                term: Term(2),
                node_id: NodeId(2),
                duration_ms: 2000,
            },
            &[],
            &mut bytes,
            &mut send,
        )
        .unwrap();
        bytes[22] ^= 1; // inside the message
        stream.write_all(&bytes).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(answer.is_empty(), "no lease reply to an altered request");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while key.counts().bad_frames == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(key.counts().bad_frames, 1);
        assert_eq!(key.counts().refused_links, 2);

        // The key holder is served: the grant of term 2 (no one was granted it above).
        let (tx, replies) = mpsc::channel();
        let member = ArbiterClient::spawn(addr, timeout, key.clone(), move |id, r| {
            let _ = tx.send((id, r));
        })
        .unwrap();
        member.request(lease(2));
        let (id, reply) = replies.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(id, LeaseRequestId(2));
        assert!(
            matches!(reply, colo_core::failover::LeaseReply::Granted { .. }),
            "{reply:?}"
        );
    }
}

#[test]
fn the_arbiter_refuses_a_replayed_handshake() {
    use crate::pair::arbiter::ArbiterServer;
    use crate::pair::peer::auth::PairKey;
    use authenticated_helpers::*;

    let key = PairKey::generate().unwrap();
    let server = ArbiterServer::bind("127.0.0.1:0".parse().unwrap(), key.clone()).unwrap();
    let addr = server.local_addr();
    std::thread::spawn(move || server.serve());
    let (relay, recorded) = recording_relay(addr);
    let _genuine = connect(relay, &key).unwrap();
    let recorded = recorded
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let mut replay = TcpStream::connect(addr).unwrap();
    replay.write_all(&recorded).unwrap();
    replay
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = replay.read_to_end(&mut answer);
    // Its hello only: the replay is named from the nonce, before the arbiter sends a proof.
    assert_eq!(answer.len(), 40, "the arbiter's hello, then the close");
    assert_eq!(key.counts().refused_links, 1);
}

#[test]
fn key_file_errors_say_which_rule_the_file_breaks() {
    use crate::pair::peer::auth::{KeyFileError, PairKey, write_key_file};
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("colo-keyfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pair.key");
    write_key_file(&path).unwrap();
    PairKey::load(&path).unwrap();
    assert!(matches!(
        write_key_file(&path),
        Err(KeyFileError::Exists { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        PairKey::load(&path),
        Err(KeyFileError::TooOpen { mode: 0o640, .. })
    ));
    std::fs::write(&path, "zz".repeat(32)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        PairKey::load(&path),
        Err(KeyFileError::NotHex { at: 0, .. })
    ));
    std::fs::write(&path, "ab\n").unwrap();
    assert!(matches!(
        PairKey::load(&path),
        Err(KeyFileError::WrongLength { len: 3, .. })
    ));
    assert!(matches!(
        PairKey::load(&dir),
        Err(KeyFileError::NotAFile { .. })
    ));
    let missing = PairKey::load(&dir.join("missing.key")).unwrap_err();
    assert!(
        matches!(&missing, KeyFileError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(missing.to_string().contains("missing.key"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}
