//! The authenticated link's rules: handshake proofs bound to the key and both nonces, and
//! sealed frames that verify only under their session key, in their order, unaltered.

use super::*;
use crate::wire::auth::{
    AUTH_HELLO_LEN, AuthError, KEY_LEN, LinkSide, Nonces, auth_hello, parse_auth_hello, proof,
    session, verify_proof,
};

fn heartbeat() -> Message {
    Message::Heartbeat {
        term: Term(1),
        seq: 3,
        epoch: Epoch(4),
    }
}

fn limits() -> Limits {
    Limits::default()
}

const KEY: [u8; KEY_LEN] = [7; KEY_LEN];
const OTHER_KEY: [u8; KEY_LEN] = [8; KEY_LEN];

fn nonces(c: u8, a: u8) -> Nonces {
    Nonces {
        connector: [c; 32],
        acceptor: [a; 32],
    }
}

/// Frames sealed by the connector's session of `nonces`, and the acceptor's session.
fn sealed_stream(messages: &[Message]) -> (Vec<Vec<u8>>, Session) {
    let n = nonces(1, 2);
    let mut connector = session(&KEY, LinkSide::Connector, &n);
    let acceptor = session(&KEY, LinkSide::Acceptor, &n);
    let frames = messages
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            encode_sealed(m, &bulk_for(m), &mut out, &mut connector.send).unwrap();
            out
        })
        .collect();
    (frames, acceptor)
}

fn decode_all(frames: &[Vec<u8>], mac: FrameMac) -> Result<Vec<Message>, WireError> {
    let mut decoder = FrameDecoder::sealed(limits(), mac);
    let mut out = Vec::new();
    for frame in frames {
        let taken = decoder.push(frame);
        assert_eq!(taken, frame.len());
        while let Some(f) = decoder.poll_frame()? {
            out.push(f.message);
        }
    }
    Ok(out)
}

#[test]
fn hello_round_trips_its_nonce() {
    let nonce = [0x5a; 32];
    let hello = auth_hello(&nonce);
    assert_eq!(&hello[..4], b"COLA");
    assert_eq!(parse_auth_hello(&hello), Ok(nonce));
}

#[test]
fn a_frame_instead_of_a_hello_means_the_peer_has_no_key() {
    let frame = frame_of(&heartbeat(), &[]);
    let first: [u8; AUTH_HELLO_LEN] = {
        let mut b = [0u8; AUTH_HELLO_LEN];
        let n = frame.len().min(AUTH_HELLO_LEN);
        b[..n].copy_from_slice(&frame[..n]);
        b
    };
    assert_eq!(parse_auth_hello(&first), Err(AuthError::MissingKey));
    let mut garbage = [b'x'; AUTH_HELLO_LEN];
    assert!(matches!(
        parse_auth_hello(&garbage),
        Err(AuthError::NotAHandshake { .. })
    ));
    garbage = auth_hello(&[0; 32]);
    garbage[5] ^= 1;
    assert!(matches!(
        parse_auth_hello(&garbage),
        Err(AuthError::UnsupportedVersion { .. })
    ));
}

#[test]
fn proofs_verify_only_under_the_same_key_and_nonces() {
    let n = nonces(1, 2);
    let from_connector = proof(&KEY, LinkSide::Connector, &n);
    assert_eq!(
        verify_proof(&KEY, LinkSide::Acceptor, &n, &from_connector),
        Ok(())
    );
    // The wrong key.
    assert_eq!(
        verify_proof(&OTHER_KEY, LinkSide::Acceptor, &n, &from_connector),
        Err(AuthError::WrongKey)
    );
    // A recorded proof replayed against a fresh acceptor nonce.
    assert_eq!(
        verify_proof(&KEY, LinkSide::Acceptor, &nonces(1, 3), &from_connector),
        Err(AuthError::WrongKey)
    );
    // A proof reflected back to its sender.
    assert_eq!(
        verify_proof(&KEY, LinkSide::Connector, &n, &from_connector),
        Err(AuthError::WrongKey)
    );
}

#[test]
fn sealed_frames_verify_in_order() {
    let messages: Vec<Message> = examples().into_iter().take(12).collect();
    let (frames, acceptor) = sealed_stream(&messages);
    for f in &frames {
        assert_eq!(u16::from_be_bytes([f[6], f[7]]), FLAG_MAC);
    }
    assert_eq!(decode_all(&frames, acceptor.receive).unwrap(), messages);
}

#[test]
fn a_flipped_bit_anywhere_after_the_header_fails_the_mac() {
    let messages = vec![examples()[10].clone()];
    let (frames, acceptor) = sealed_stream(&messages);
    let frame = &frames[0];
    // Every byte of message, bulk and tag; the CRC is recomputed so only the MAC can tell.
    for at in HEADER_LEN..frame.len() - TRAILER_LEN {
        let mut bad = frame.clone();
        bad[at] ^= 0x10;
        reseal(&mut bad);
        let err = decode_all(&[bad], acceptor.receive.clone()).unwrap_err();
        assert_eq!(err, WireError::MacMismatch { frame: 0 }, "byte {at}");
    }
}

#[test]
fn replayed_reordered_or_dropped_frames_fail_the_mac() {
    let messages = vec![heartbeat(), examples()[10].clone(), heartbeat()];
    let (frames, acceptor) = sealed_stream(&messages);
    let replayed = [frames[0].clone(), frames[0].clone()];
    assert_eq!(
        decode_all(&replayed, acceptor.receive.clone()),
        Err(WireError::MacMismatch { frame: 1 })
    );
    let reordered = [frames[1].clone(), frames[0].clone()];
    assert_eq!(
        decode_all(&reordered, acceptor.receive.clone()),
        Err(WireError::MacMismatch { frame: 0 })
    );
    let dropped = [frames[0].clone(), frames[2].clone()];
    assert_eq!(
        decode_all(&dropped, acceptor.receive.clone()),
        Err(WireError::MacMismatch { frame: 1 })
    );
}

#[test]
fn frames_of_another_session_or_direction_fail_the_mac() {
    let (frames, acceptor) = sealed_stream(&[heartbeat()]);
    // The acceptor's own sending key is the other direction's.
    assert_eq!(
        decode_all(&frames, acceptor.send),
        Err(WireError::MacMismatch { frame: 0 })
    );
    let other = session(&KEY, LinkSide::Acceptor, &nonces(1, 9));
    assert_eq!(
        decode_all(&frames, other.receive),
        Err(WireError::MacMismatch { frame: 0 })
    );
}

#[test]
fn an_unsealed_frame_on_an_authenticated_link_is_refused() {
    let (_, acceptor) = sealed_stream(&[]);
    let plain = frame_of(&heartbeat(), &[]);
    assert_eq!(
        decode_all(&[plain], acceptor.receive),
        Err(WireError::MacMissing { frame: 0 })
    );
}

#[test]
fn sealed_head_streams_the_same_bytes_as_encode_sealed() {
    let message = examples()[10].clone();
    let bulk = bulk_for(&message);
    let n = nonces(4, 5);
    let mut a = session(&KEY, LinkSide::Connector, &n).send;
    let mut b = a.clone();
    let mut whole = Vec::new();
    encode_sealed(&message, &bulk, &mut whole, &mut a).unwrap();
    let mut streamed = Vec::new();
    let mut tail = encode_head_sealed(&message, bulk.len(), &mut streamed, &mut b).unwrap();
    for chunk in bulk.chunks(999) {
        tail.update(chunk);
        streamed.extend_from_slice(chunk);
    }
    streamed.extend_from_slice(&tail.finish());
    assert_eq!(streamed, whole);
    assert_eq!(whole.len(), frame_of(&message, &bulk).len() + MAC_TAG_LEN);
    assert_eq!((a.next_frame(), b.next_frame()), (1, 1));
}

#[test]
fn a_sealed_stream_in_any_chunks_yields_the_same_frames_and_catches_the_same_bit() {
    let messages: Vec<Message> = examples().into_iter().take(12).collect();
    let (frames, acceptor) = sealed_stream(&messages);
    let stream: Vec<u8> = frames.concat();
    let run = |bytes: &[u8], chunk: usize| -> Result<Vec<Message>, WireError> {
        let mut decoder = FrameDecoder::sealed(limits(), acceptor.receive.clone());
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut rest = piece;
            while !rest.is_empty() {
                let taken = decoder.push(rest);
                rest = &rest[taken..];
                while let Some(f) = decoder.poll_frame()? {
                    out.push(f.message);
                }
            }
        }
        decoder.finish()?;
        Ok(out)
    };
    let mut flipped = stream.clone();
    let third = frames[0].len() + frames[1].len();
    flipped[third + HEADER_LEN + 1] ^= 0x01; // the third frame's message
    for chunk in [1, 7, 64, 4096, stream.len()] {
        assert_eq!(run(&stream, chunk).unwrap(), messages, "chunk {chunk}");
        assert_eq!(
            run(&flipped, chunk),
            Err(WireError::MacMismatch { frame: 2 }),
            "chunk {chunk}"
        );
    }
}
