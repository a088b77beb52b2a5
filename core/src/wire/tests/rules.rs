//! One test per codec rule: every [`WireError`] variant is reached here from bytes a peer could
//! send, and the non-error paths (incomplete input, streaming, limits) behave as documented.

use super::*;

fn heartbeat() -> Message {
    Message::Heartbeat {
        term: Term(2),
        seq: 9,
        epoch: Epoch(5),
    }
}

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn example_kinds_are_in_wire_order() {
    let kinds: Vec<MessageKind> = examples().iter().map(Message::kind).collect();
    assert_eq!(kinds, MessageKind::ALL.to_vec());
    for (index, message) in examples().iter().enumerate() {
        // bincode writes the variant index first, as a one-byte varint below 251.
        assert_eq!(
            message_bytes(message)[0] as usize,
            index,
            "{}",
            message.kind()
        );
    }
}

#[test]
fn every_example_round_trips_with_its_bulk() {
    for message in examples() {
        let bulk = bulk_for(&message);
        let frame = frame_of(&message, &bulk);
        let decoded = decode(&frame, &limits()).unwrap().unwrap();
        assert_eq!(decoded.message, message);
        assert_eq!(decoded.bulk, &bulk[..]);
        assert_eq!(decoded.consumed, frame.len());
    }
}

#[test]
fn header_layout_is_big_endian_with_magic_first() {
    let frame = frame_of(&heartbeat(), &[]);
    assert_eq!(&frame[..4], b"COLO");
    assert_eq!(frame[4..6], PROTOCOL_VERSION.to_be_bytes());
    assert_eq!(frame[6..8], [0, 0]);
    let message_len = frame.len() - HEADER_LEN - TRAILER_LEN;
    assert_eq!(frame[8..12], (message_len as u32).to_be_bytes());
    assert_eq!(frame[12..16], [0, 0, 0, 0]);
}

#[test]
fn every_prefix_of_a_frame_is_incomplete_not_an_error() {
    let frame = frame_of(&examples()[10], &bulk_for(&examples()[10]));
    for cut in 0..frame.len() {
        assert_eq!(decode(&frame[..cut], &limits()), Ok(None), "cut at {cut}");
    }
}

#[test]
fn bad_magic_is_detected_at_its_first_byte() {
    assert_eq!(
        decode(b"X", &limits()),
        Err(WireError::BadMagic {
            offset: 0,
            found: b'X',
            expected: b'C'
        })
    );
    let mut frame = frame_of(&heartbeat(), &[]);
    frame[2] = b'!';
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::BadMagic { offset: 2, .. })
    ));
}

#[test]
fn other_version_is_refused_before_its_message_is_read() {
    // Only magic and version have arrived: the mismatch is known already.
    let mut head = MAGIC.to_vec();
    let other = PROTOCOL_VERSION + 1;
    head.extend_from_slice(&other.to_be_bytes());
    assert_eq!(
        decode(&head, &limits()),
        Err(WireError::UnsupportedVersion {
            found: other,
            supported: PROTOCOL_VERSION
        })
    );
    // A whole frame of another version, with a message this version cannot parse.
    let frame = raw_frame(PROTOCOL_VERSION + 1, 0, &[0xff; 8], &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::UnsupportedVersion { .. })
    ));
}

#[test]
fn corrupted_length_fails_the_header_checksum_without_waiting() {
    let mut frame = frame_of(&heartbeat(), &[]);
    frame[11] ^= 0x40; // message length grows: without a header CRC we would wait for bytes
    assert!(matches!(
        decode(&frame[..HEADER_LEN], &limits()),
        Err(WireError::HeaderChecksum { .. })
    ));
}

#[test]
fn unknown_flag_bits_are_refused() {
    let frame = raw_frame(PROTOCOL_VERSION, 0x8000, &message_bytes(&heartbeat()), &[]);
    assert_eq!(
        decode(&frame, &limits()),
        Err(WireError::UnknownFlags { flags: 0x8000 })
    );
}

#[test]
fn sealed_frame_is_refused_on_an_unauthenticated_link() {
    let frame = raw_frame(
        PROTOCOL_VERSION,
        FLAG_MAC,
        &message_bytes(&heartbeat()),
        &[],
    );
    assert_eq!(decode(&frame, &limits()), Err(WireError::MacUnexpected));
}

#[test]
fn oversized_message_is_refused_from_the_header_alone() {
    let small = Limits {
        max_message_len: 4,
        max_bulk_len: 1024,
    };
    let message = examples()[0].clone();
    let frame = frame_of(&message, &[]);
    assert!(frame.len() - HEADER_LEN - TRAILER_LEN > 4);
    assert!(matches!(
        decode(&frame[..HEADER_LEN], &small),
        Err(WireError::MessageTooLarge { max: 4, .. })
    ));
}

#[test]
fn oversized_bulk_is_refused_from_the_header_alone() {
    let small = Limits {
        max_message_len: 1024,
        max_bulk_len: 63,
    };
    let message = Message::MirroredFrame {
        epoch: Epoch(1),
        nic: NicId(0),
    };
    let frame = frame_of(&message, &[0u8; 64]);
    assert_eq!(
        decode(&frame[..HEADER_LEN], &small),
        Err(WireError::BulkTooLarge { len: 64, max: 63 })
    );
}

#[test]
fn limits_above_the_ceiling_act_as_the_ceiling() {
    let huge = Limits {
        max_message_len: u32::MAX,
        max_bulk_len: 0,
    };
    assert_eq!(huge.message_len_limit(), MESSAGE_LEN_CEILING);
    let frame = raw_frame(PROTOCOL_VERSION, 0, &[], &[]);
    let mut header = frame[..HEADER_LEN].to_vec();
    header[8..12].copy_from_slice(&(MESSAGE_LEN_CEILING + 1).to_be_bytes());
    let crc = crc32c::crc32c(&header[..16]);
    header[16..20].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        decode(&header, &huge),
        Err(WireError::MessageTooLarge { .. })
    ));
}

#[test]
fn corrupted_body_fails_the_frame_checksum() {
    let message = examples()[10].clone();
    let mut frame = frame_of(&message, &bulk_for(&message));
    let last_bulk = frame.len() - TRAILER_LEN - 1;
    frame[last_bulk] ^= 1;
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::ChecksumMismatch { .. })
    ));
}

#[test]
fn message_shorter_than_its_fields_is_truncated() {
    let mut body = message_bytes(&heartbeat());
    body.pop();
    let frame = raw_frame(PROTOCOL_VERSION, 0, &body, &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn unknown_message_variant_is_malformed() {
    let frame = raw_frame(PROTOCOL_VERSION, 0, &[200, 0, 0], &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn empty_message_is_truncated() {
    let frame = raw_frame(PROTOCOL_VERSION, 0, &[], &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn message_with_trailing_bytes_is_malformed() {
    let mut body = message_bytes(&heartbeat());
    body.push(0);
    let frame = raw_frame(PROTOCOL_VERSION, 0, &body, &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::Malformed { detail }) if detail.contains("trailing")
    ));
}

#[test]
fn non_canonical_message_is_malformed() {
    // Ack { seq: 5 } with seq in the u16 varint form instead of one byte.
    let ack = Message::Ack { seq: 5 };
    let index = message_bytes(&ack)[0];
    let frame = raw_frame(PROTOCOL_VERSION, 0, &[index, 251, 5, 0], &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::Malformed { detail }) if detail.contains("canonical")
    ));
}

#[test]
fn bulk_on_a_message_without_bulk_is_refused() {
    let frame = raw_frame(
        PROTOCOL_VERSION,
        0,
        &message_bytes(&heartbeat()),
        &[1, 2, 3],
    );
    assert_eq!(
        decode(&frame, &limits()),
        Err(WireError::BulkMismatch {
            kind: MessageKind::Heartbeat,
            len: 3,
            rule: BulkRule::None
        })
    );
    let mut out = Vec::new();
    assert!(encode(&heartbeat(), &[1], &mut out).is_err());
    assert!(
        out.is_empty(),
        "a refused encode leaves the buffer untouched"
    );
}

#[test]
fn disk_write_bulk_must_match_its_len() {
    let write = Message::DiskWrite {
        epoch: Epoch(1),
        write_id: WriteId(1),
        offset: 0,
        len: 512,
    };
    let frame = raw_frame(PROTOCOL_VERSION, 0, &message_bytes(&write), &[0; 511]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::BulkMismatch {
            kind: MessageKind::DiskWrite,
            len: 511,
            ..
        })
    ));
    assert!(encode(&write, &[0; 513], &mut Vec::new()).is_err());
}

#[test]
fn page_batch_bulk_must_be_whole_pages_of_its_ranges() {
    // The example batch covers three pages, one of them zero: two pages of bulk.
    let batch = examples()[10].clone();
    let short = vec![0u8; 2 * PAGE_SIZE as usize - 1];
    let frame = raw_frame(PROTOCOL_VERSION, 0, &message_bytes(&batch), &short);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::BulkMismatch { .. })
    ));
}

#[test]
fn page_count_overflow_matches_no_bulk() {
    let lying = Message::PageBatch {
        epoch: Epoch(1),
        batch: 0,
        ranges: vec![
            PageRange {
                first: 0,
                count: u64::MAX,
            },
            PageRange { first: 0, count: 2 },
        ],
        zero: ZeroPages::none(0),
    };
    assert_eq!(lying.bulk_rule(), BulkRule::Exact(None));
    // No zero map can fit that many pages: the map check refuses the frame first.
    let frame = raw_frame(PROTOCOL_VERSION, 0, &page_message_unchecked(&lying), &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::ZeroMapMismatch {
            kind: MessageKind::PageBatch,
            pages: u64::MAX,
            ..
        })
    ));
}

/// The message part of a page batch the encoder would refuse (its ranges or map do not fit
/// any bulk): the encoding of the same batch without ranges and map, with the sequence lengths,
/// the `(first, count)` pairs and the map bytes written out by hand.
pub(super) fn page_message_unchecked(message: &Message) -> Vec<u8> {
    let Message::PageBatch {
        epoch,
        batch,
        ranges,
        zero,
    } = message
    else {
        panic!("only page batches")
    };
    let mut out = message_bytes(&Message::PageBatch {
        epoch: *epoch,
        batch: *batch,
        ranges: Vec::new(),
        zero: ZeroPages::none(0),
    });
    assert_eq!(out.pop(), Some(0), "an empty map ends with its zero length");
    assert_eq!(
        out.pop(),
        Some(0),
        "an empty sequence ends with its zero length"
    );
    out.extend(varint(ranges.len() as u64));
    for r in ranges {
        out.extend(varint(r.first));
        out.extend(varint(r.count));
    }
    out.extend(varint(zero.as_bytes().len() as u64));
    out.extend_from_slice(zero.as_bytes());
    out
}

/// bincode's standard varint encoding of a u64.
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=250 => vec![v as u8],
        251..=0xffff => [vec![251], (v as u16).to_le_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![252], (v as u32).to_le_bytes().to_vec()].concat(),
        _ => [vec![253], v.to_le_bytes().to_vec()].concat(),
    }
}

#[test]
fn lying_range_count_ends_as_truncated() {
    // A page batch claiming 2^60 ranges in a 20-byte message. serde preallocates a sequence
    // cautiously (at most 1 MiB, serde_core `size_hint::cautious`), then runs out of bytes.
    let mut body = message_bytes(&Message::PageBatch {
        epoch: Epoch(1),
        batch: 0,
        ranges: Vec::new(),
        zero: ZeroPages::none(0),
    });
    assert_eq!(body.pop(), Some(0));
    assert_eq!(body.pop(), Some(0));
    body.extend(varint(1 << 60));
    let frame = raw_frame(PROTOCOL_VERSION, 0, &body, &[]);
    assert!(matches!(
        decode(&frame, &limits()),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn encode_head_streams_the_same_bytes_as_encode() {
    let message = examples()[10].clone();
    let bulk = bulk_for(&message);
    let mut streamed = Vec::new();
    let mut tail = encode_head(&message, bulk.len(), &mut streamed).unwrap();
    for chunk in bulk.chunks(1000) {
        tail.update(chunk);
        streamed.extend_from_slice(chunk);
    }
    assert_eq!(tail.remaining(), 0);
    streamed.extend_from_slice(&tail.finish());
    assert_eq!(streamed, frame_of(&message, &bulk));
}

#[test]
#[should_panic(expected = "never fed")]
fn finishing_a_tail_before_its_bulk_is_a_caller_bug() {
    let message = Message::DeviceState { epoch: Epoch(1) };
    let tail = encode_head(&message, 10, &mut Vec::new()).unwrap();
    let _ = tail.finish();
}

#[test]
fn decoder_yields_frames_and_lends_their_bulk() {
    let mut stream = Vec::new();
    for message in examples() {
        stream.extend(frame_of(&message, &bulk_for(&message)));
    }
    let mut decoder = FrameDecoder::new(limits());
    assert_eq!(decoder.push(&stream), stream.len());
    for message in examples() {
        let frame = decoder.poll_frame().unwrap().unwrap();
        assert_eq!(frame.message, message);
        assert_eq!(frame.bulk, &bulk_for(&message)[..]);
    }
    assert_eq!(decoder.poll_frame(), Ok(None));
    assert_eq!(decoder.frames(), examples().len() as u64);
    assert_eq!(decoder.finish(), Ok(()));
}

#[test]
fn decoder_buffer_never_exceeds_its_capacity() {
    let small = Limits {
        max_message_len: 64,
        max_bulk_len: 100,
    };
    let mut decoder = FrameDecoder::new(small);
    let frame = frame_of(
        &Message::MirroredFrame {
            epoch: Epoch(3),
            nic: NicId(0),
        },
        &[7; 100],
    );
    let stream: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 5)
        .collect();
    let mut rest = &stream[..];
    let mut frames = 0;
    while !rest.is_empty() {
        let taken = decoder.push(rest);
        assert!(taken > 0, "a drained decoder always takes a byte");
        assert!(decoder.buffered() <= decoder.capacity());
        rest = &rest[taken..];
        while let Some(f) = decoder.poll_frame().unwrap() {
            assert_eq!(f.bulk.len(), 100);
            frames += 1;
        }
    }
    assert_eq!(frames, 5);
}

#[test]
fn decoder_stays_failed_after_an_error() {
    let mut decoder = FrameDecoder::new(limits());
    decoder.push(b"NOPE");
    let first = decoder.poll_frame().unwrap_err();
    assert!(matches!(first, WireError::BadMagic { .. }));
    // Even a perfectly valid frame afterwards is not decoded: framing is lost for good.
    let valid = frame_of(&heartbeat(), &[]);
    assert_eq!(
        decoder.push(&valid),
        valid.len(),
        "a failed decoder swallows input"
    );
    assert_eq!(decoder.poll_frame(), Err(first.clone()));
    assert_eq!(decoder.error(), Some(&first));
    assert_eq!(decoder.finish(), Err(first));
}

#[test]
fn link_closed_mid_frame_is_truncated() {
    let frame = frame_of(&heartbeat(), &[]);
    let mut decoder = FrameDecoder::new(limits());
    decoder.push(&frame[..frame.len() - 1]);
    assert_eq!(decoder.poll_frame(), Ok(None));
    assert_eq!(decoder.needed(), 1);
    assert!(matches!(decoder.finish(), Err(WireError::Truncated { .. })));
}

#[test]
fn needed_counts_header_then_frame_bytes() {
    let frame = frame_of(&heartbeat(), &[]);
    let mut decoder = FrameDecoder::new(limits());
    assert_eq!(decoder.needed(), HEADER_LEN);
    decoder.push(&frame[..5]);
    assert_eq!(decoder.needed(), HEADER_LEN - 5);
    decoder.push(&frame[5..HEADER_LEN]);
    assert_eq!(decoder.needed(), frame.len() - HEADER_LEN);
}
