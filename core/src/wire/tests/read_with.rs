//! Reading straight into the decoder ([`FrameDecoder::read_with`]) and the checks computed as
//! bytes arrive: the same frames as pushing, whatever the read sizes; a truncated, corrupt or
//! forged bulk never yields its frame; the room a read gets stays inside the limit; and a sealed
//! frame's CRC (version 7) covers header, message and tag but not the bulk.

use super::*;
use crate::wire::auth::{KEY_LEN, LinkSide, Nonces, session};
use crate::wire::decoder::READ_CHUNK;

const KEY: [u8; KEY_LEN] = [9; KEY_LEN];

fn sessions(key: &[u8; KEY_LEN]) -> (FrameMac, FrameMac) {
    let n = Nonces {
        connector: [3; 32],
        acceptor: [4; 32],
    };
    (
        session(key, LinkSide::Connector, &n).send,
        session(&KEY, LinkSide::Acceptor, &n).receive,
    )
}

/// A checkpoint's frames: a 300-page batch with distinct bytes (1.2 MB of bulk, larger than
/// one read), then the small `CheckpointSent`; sealed under `key` when given.
fn checkpoint_stream(key: Option<&[u8; KEY_LEN]>) -> Vec<u8> {
    let ranges = vec![PageRange {
        first: 10,
        count: 300,
    }];
    let batch = Message::PageBatch {
        epoch: Epoch(5),
        batch: 0,
        zero: ZeroPages::from_flags((0..300).map(|_| false)),
        ranges,
    };
    let bulk: Vec<u8> = (0..300 * PAGE_SIZE as usize)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let sent = Message::CheckpointSent {
        epoch: Epoch(5),
        batches: 1,
        pages: 300,
        bytes: bulk.len() as u64,
    };
    let mut out = Vec::new();
    match key {
        Some(key) => {
            let mut mac = sessions(key).0;
            encode_sealed(&batch, &bulk, &mut out, &mut mac).unwrap();
            encode_sealed(&sent, &[], &mut out, &mut mac).unwrap();
        }
        None => {
            encode(&batch, &bulk, &mut out).unwrap();
            encode(&sent, &[], &mut out).unwrap();
        }
    }
    out
}

/// The (message, bulk) of each frame a decoder yielded.
type Frames = Vec<(Message, Vec<u8>)>;

/// Reads `stream` into `decoder` with reads of at most `sizes[i % len]` bytes (a socket that
/// gives what it has), drains every frame, and returns (message, bulk) of each and how it ended.
fn read_all(
    mut decoder: FrameDecoder,
    stream: &[u8],
    sizes: &[usize],
) -> (Frames, Result<(), WireError>) {
    let mut frames = Vec::new();
    let mut at = 0;
    let mut reads = 0;
    loop {
        loop {
            match decoder.poll_frame() {
                Ok(Some(f)) => frames.push((f.message, f.bulk.to_vec())),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
        let size = sizes[reads % sizes.len()];
        reads += 1;
        let n = decoder
            .read_with(|room| -> Result<usize, ()> {
                assert!(!room.is_empty(), "a drained decoder always offers room");
                let n = room.len().min(size).min(stream.len() - at);
                room[..n].copy_from_slice(&stream[at..at + n]);
                Ok(n)
            })
            .unwrap();
        at += n;
        if n == 0 {
            return (frames, decoder.finish());
        }
    }
}

/// What pushing the whole stream yields (the reference).
fn pushed(mut decoder: FrameDecoder, stream: &[u8]) -> Frames {
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let taken = decoder.push(rest);
        rest = &rest[taken..];
        while let Some(f) = decoder.poll_frame().unwrap() {
            frames.push((f.message, f.bulk.to_vec()));
        }
    }
    decoder.finish().unwrap();
    frames
}

#[test]
fn reads_into_the_decoder_yield_the_frames_pushes_do_whatever_the_read_sizes() {
    let plain = checkpoint_stream(None);
    let sealed = checkpoint_stream(Some(&KEY));
    let reference = pushed(FrameDecoder::new(Limits::default()), &plain);
    assert_eq!(reference.len(), 2);
    for sizes in [
        &[1usize][..],
        &[13, 4096, 70_000],
        &[READ_CHUNK],
        &[1 << 20, 3],
        &[usize::MAX],
    ] {
        let (frames, end) = read_all(FrameDecoder::new(Limits::default()), &plain, sizes);
        assert_eq!(end, Ok(()), "plain, reads {sizes:?}");
        assert_eq!(frames, reference, "plain, reads {sizes:?}");
        let decoder = FrameDecoder::sealed(Limits::default(), sessions(&KEY).1);
        let (frames, end) = read_all(decoder, &sealed, sizes);
        assert_eq!(end, Ok(()), "sealed, reads {sizes:?}");
        assert_eq!(frames, reference, "sealed, reads {sizes:?}");
    }
}

#[test]
fn a_truncated_bulk_read_into_the_decoder_yields_no_frame() {
    for (stream, sealed) in [
        (checkpoint_stream(None), false),
        (checkpoint_stream(Some(&KEY)), true),
    ] {
        // The link closes in the middle of the batch's bulk, and just before its trailer.
        for cut in [HEADER_LEN + 600_000, stream.len() - 80] {
            let decoder = if sealed {
                FrameDecoder::sealed(Limits::default(), sessions(&KEY).1)
            } else {
                FrameDecoder::new(Limits::default())
            };
            let (frames, end) = read_all(decoder, &stream[..cut], &[65_536, 100_000]);
            assert!(frames.is_empty(), "sealed {sealed}, cut at {cut}");
            assert!(
                matches!(end, Err(WireError::Truncated { .. })),
                "sealed {sealed}, cut at {cut}: {end:?}"
            );
        }
    }
}

#[test]
fn a_corrupt_or_forged_bulk_read_into_the_decoder_is_refused_before_its_frame_is_yielded() {
    let bulk_byte = HEADER_LEN + 200 + 777_777;
    // Plain: the frame CRC over the bulk catches it.
    let mut plain = checkpoint_stream(None);
    plain[bulk_byte] ^= 0x10;
    let (frames, end) = read_all(FrameDecoder::new(Limits::default()), &plain, &[50_000]);
    assert!(frames.is_empty());
    assert!(
        matches!(end, Err(WireError::ChecksumMismatch { .. })),
        "{end:?}"
    );
    // Sealed: the tag catches it (the CRC no longer covers the bulk).
    let mut sealed = checkpoint_stream(Some(&KEY));
    sealed[bulk_byte] ^= 0x10;
    let decoder = FrameDecoder::sealed(Limits::default(), sessions(&KEY).1);
    let (frames, end) = read_all(decoder, &sealed, &[50_000]);
    assert!(frames.is_empty());
    assert_eq!(end, Err(WireError::MacMismatch { frame: 0 }));
    // Forged: well-formed frames sealed under another key, CRCs right.
    let forged = checkpoint_stream(Some(&[1; KEY_LEN]));
    let decoder = FrameDecoder::sealed(Limits::default(), sessions(&KEY).1);
    let (frames, end) = read_all(decoder, &forged, &[READ_CHUNK]);
    assert!(frames.is_empty());
    assert_eq!(end, Err(WireError::MacMismatch { frame: 0 }));
}

#[test]
fn a_read_gets_the_rest_of_a_large_frame_or_a_chunk_and_never_room_past_the_limit() {
    let stream = checkpoint_stream(None);
    let limits = Limits {
        max_message_len: 4096,
        max_bulk_len: 2 << 20,
    };
    let mut decoder = FrameDecoder::new(limits);
    // Nothing buffered: a chunk's room.
    let mut room = 0;
    decoder
        .read_with(|r| -> Result<usize, ()> {
            room = r.len();
            r[..100].copy_from_slice(&stream[..100]);
            Ok(100)
        })
        .unwrap();
    assert_eq!(room, READ_CHUNK);
    assert_eq!(decoder.poll_frame(), Ok(None));
    // Inside the 1.2 MB frame: the rest of it, in one read if the socket has it.
    let rest = decoder.needed();
    assert!(rest > 1_000_000, "{rest}");
    decoder
        .read_with(|r| -> Result<usize, ()> {
            room = r.len();
            Ok(0)
        })
        .unwrap();
    assert_eq!(room, rest);
    assert!(decoder.buffered() + room <= decoder.capacity());
    // A reader that claims more than its room is held to the room.
    let taken = decoder
        .read_with(|r| -> Result<usize, ()> {
            let n = r.len();
            r.copy_from_slice(&stream[100..100 + n]);
            Ok(n + 1000)
        })
        .unwrap();
    assert_eq!(taken, rest);
    assert!(matches!(decoder.poll_frame(), Ok(Some(_))));
    // A reader's error comes back as it is, and nothing is taken.
    let before = decoder.buffered();
    assert_eq!(
        decoder.read_with(|_| Err("socket down")),
        Err("socket down")
    );
    assert_eq!(decoder.buffered(), before);
}

#[test]
fn a_failed_decoder_drops_what_is_read_so_a_read_loop_still_ends() {
    let mut decoder = FrameDecoder::new(Limits::default());
    decoder
        .read_with(|r| -> Result<usize, ()> {
            r[..4].copy_from_slice(b"JUNK");
            Ok(4)
        })
        .unwrap();
    assert!(matches!(
        decoder.poll_frame(),
        Err(WireError::BadMagic { .. })
    ));
    let taken = decoder
        .read_with(|r| -> Result<usize, ()> {
            r.fill(0xaa);
            Ok(r.len())
        })
        .unwrap();
    assert!(taken > 0);
    assert_eq!(decoder.buffered(), 0);
    assert!(matches!(
        decoder.poll_frame(),
        Err(WireError::BadMagic { .. })
    ));
}

#[test]
fn a_sealed_frames_crc_covers_header_message_and_tag_but_not_the_bulk() {
    let (mut send, receive) = sessions(&KEY);
    let message = Message::DeviceState { epoch: Epoch(2) };
    let bulk = vec![0x5a; 3000];
    let mut frame = Vec::new();
    encode_sealed(&message, &bulk, &mut frame, &mut send).unwrap();
    let message_end = frame.len() - MAC_TAG_LEN - TRAILER_LEN - bulk.len();
    let tag_at = frame.len() - MAC_TAG_LEN - TRAILER_LEN;
    let crc_at = frame.len() - TRAILER_LEN;
    let expected = crc32c::crc32c_append(
        crc32c::crc32c(&frame[..message_end]),
        &frame[tag_at..crc_at],
    );
    assert_eq!(frame[crc_at..], expected.to_be_bytes());
    // A corrupted trailer is a checksum error; a corrupted tag, a MAC error (checked first).
    let mut bad_crc = frame.clone();
    bad_crc[crc_at + 1] ^= 1;
    let mut mac = receive.clone();
    assert!(matches!(
        decode_sealed(&bad_crc, &Limits::default(), &mut mac),
        Err(WireError::ChecksumMismatch { .. })
    ));
    let mut bad_tag = frame.clone();
    bad_tag[tag_at] ^= 1;
    let mut mac = receive.clone();
    assert_eq!(
        decode_sealed(&bad_tag, &Limits::default(), &mut mac),
        Err(WireError::MacMismatch { frame: 0 })
    );
    // The streaming decoder agrees with the one-shot one.
    let (frames, end) = read_all(
        FrameDecoder::sealed(Limits::default(), receive),
        &frame,
        &[7],
    );
    assert_eq!(end, Ok(()));
    assert_eq!(frames, vec![(message, bulk)]);
}
