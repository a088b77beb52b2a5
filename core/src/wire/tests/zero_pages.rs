//! The zero-page map of page-carrying frames: a frame's bulk holds exactly the pages its map
//! does not mark, and a map that does not fit the frame's pages is a typed error on both the
//! encoding and the decoding side, never a panic.

use super::rules::page_message_unchecked;
use super::*;
use crate::wire::auth::{Nonces, session};

fn batch(pages: u64, zero: ZeroPages) -> Message {
    Message::PageBatch {
        epoch: Epoch(3),
        batch: 0,
        ranges: vec![
            PageRange {
                first: 100,
                count: pages - pages / 2,
            },
            PageRange {
                first: 900,
                count: pages / 2,
            },
        ],
        zero,
    }
}

fn pattern(pages: u64) -> Vec<u8> {
    (0..pages * PAGE_SIZE)
        .map(|i| (i % 253) as u8 + 1)
        .collect()
}

#[test]
fn zero_pages_are_counted_but_not_carried() {
    // Ten pages, pages 0, 4, 5 and 9 zero: six pages of bulk.
    let zero = ZeroPages::from_flags((0..10).map(|i| [0, 4, 5, 9].contains(&i)));
    let message = batch(10, zero.clone());
    assert_eq!(message.bulk_rule(), BulkRule::Exact(Some(6 * PAGE_SIZE)));
    let bulk = pattern(6);
    let frame = frame_of(&message, &bulk);
    let decoded = decode(&frame, &Limits::default()).unwrap().unwrap();
    assert_eq!(decoded.message, message);
    assert_eq!(decoded.bulk, &bulk[..]);
    let (ranges, map) = decoded.message.pages().expect("a page message");
    assert_eq!(pages_in(ranges), Some(10));
    assert_eq!(map.check(10), Ok(4));
    assert!(map.is_zero(5) && !map.is_zero(6));
}

#[test]
fn a_batch_of_only_zero_pages_has_an_empty_bulk() {
    let message = Message::SyncPages {
        term: Term(2),
        batch: 7,
        ranges: vec![PageRange {
            first: 0,
            count: 1024,
        }],
        zero: ZeroPages::from_flags([true; 1024]),
    };
    assert_eq!(message.bulk_rule(), BulkRule::Exact(Some(0)));
    let frame = frame_of(&message, &[]);
    // Header, a message of a few bytes plus the 128-byte map, trailer: no page bytes.
    assert!(
        frame.len() < HEADER_LEN + 160 + TRAILER_LEN,
        "{}",
        frame.len()
    );
    let decoded = decode(&frame, &Limits::default()).unwrap().unwrap();
    assert_eq!(decoded.message, message);
    assert!(decoded.bulk.is_empty());
}

#[test]
fn a_bulk_that_still_carries_the_zero_pages_is_refused() {
    let message = batch(4, ZeroPages::from_flags([false, true, false, false]));
    let frame = raw_frame(PROTOCOL_VERSION, 0, &message_bytes(&message), &pattern(4));
    assert_eq!(
        decode(&frame, &Limits::default()).unwrap_err(),
        WireError::BulkMismatch {
            kind: MessageKind::PageBatch,
            len: 4 * PAGE_SIZE,
            rule: BulkRule::Exact(Some(3 * PAGE_SIZE)),
        }
    );
    assert!(encode(&message, &pattern(4), &mut Vec::new()).is_err());
}

#[test]
fn a_map_of_the_wrong_length_is_refused_by_decoder_and_encoder() {
    // Nine pages need a two-byte map; one byte and three bytes both fail.
    for bytes in [vec![0u8], vec![0u8; 3]] {
        let message = batch(9, ZeroPages::from_bytes(bytes.clone()));
        let frame = raw_frame(
            PROTOCOL_VERSION,
            0,
            &page_message_unchecked(&message),
            &pattern(9),
        );
        let expected = WireError::ZeroMapMismatch {
            kind: MessageKind::PageBatch,
            pages: 9,
            fault: ZeroMapFault::Length {
                map_bytes: bytes.len() as u64,
                expected_bytes: 2,
            },
        };
        assert_eq!(decode(&frame, &Limits::default()).unwrap_err(), expected);
        // The streaming decoder reaches the same error from any chunking.
        let mut decoder = FrameDecoder::new(Limits::default());
        for chunk in frame.chunks(100) {
            decoder.push(chunk);
        }
        assert_eq!(decoder.poll_frame().unwrap_err(), expected);
        let mut out = vec![1, 2, 3];
        assert_eq!(
            encode(&message, &pattern(9), &mut out).unwrap_err(),
            expected
        );
        assert_eq!(
            out,
            [1, 2, 3],
            "a refused frame leaves the output as it was"
        );
    }
}

#[test]
fn a_map_bit_past_the_last_page_is_refused() {
    // Nine pages: bit 9 of the two-byte map names no page.
    let message = batch(9, ZeroPages::from_bytes(vec![0b0000_0001, 0b0000_0010]));
    let frame = raw_frame(
        PROTOCOL_VERSION,
        0,
        &page_message_unchecked(&message),
        &pattern(8),
    );
    assert_eq!(
        decode(&frame, &Limits::default()).unwrap_err(),
        WireError::ZeroMapMismatch {
            kind: MessageKind::PageBatch,
            pages: 9,
            fault: ZeroMapFault::StrayBit { index: 9 },
        }
    );
}

#[test]
fn sealed_frames_carry_the_map_under_their_tag() {
    let key = [7u8; 32];
    let nonces = Nonces {
        connector: [1; 32],
        acceptor: [2; 32],
    };
    let mut tx = session(&key, LinkSide::Connector, &nonces).send;
    let mut rx = session(&key, LinkSide::Acceptor, &nonces).receive;
    let message = batch(3, ZeroPages::from_flags([true, false, true]));
    let mut frame = Vec::new();
    encode_sealed(&message, &pattern(1), &mut frame, &mut tx).unwrap();
    // Flip a map bit: the tag no longer verifies (checked before the message is decoded).
    let mut forged = frame.clone();
    let map_at = HEADER_LEN + message_bytes(&message).len() - 1;
    forged[map_at] ^= 0b10;
    reseal_sealed_crc(&mut forged);
    assert!(matches!(
        decode_sealed(&forged, &Limits::default(), &mut rx.clone()),
        Err(WireError::MacMismatch { .. })
    ));
    let decoded = decode_sealed(&frame, &Limits::default(), &mut rx)
        .unwrap()
        .unwrap();
    assert_eq!(decoded.message, message);
    assert_eq!(decoded.bulk.len() as u64, PAGE_SIZE);
}

/// Recomputes the trailing CRC of a sealed frame (the tag is left as it was).
fn reseal_sealed_crc(frame: &mut [u8]) {
    let end = frame.len() - TRAILER_LEN;
    let crc = crc32c::crc32c(&frame[..end]);
    frame[end..].copy_from_slice(&crc.to_be_bytes());
}
