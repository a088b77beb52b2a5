//! Property tests of the codec: round trips of every message kind, chunking independence of
//! the streaming decoder, no panic on arbitrary bytes, and detection of any single-byte error.

use super::*;

/// Splits `stream` into chunks whose sizes cycle through `sizes` (each at least 1).
fn chunks<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

/// Decoded frames as owned (message, bulk) pairs.
type Frames = Vec<(Message, Vec<u8>)>;

/// Feeds `chunks` to a decoder, draining after each push; returns the frames as owned parts.
fn stream_decode(chunks: &[&[u8]], limits: Limits) -> (Frames, Result<(), WireError>) {
    let mut decoder = FrameDecoder::new(limits);
    let mut frames = Vec::new();
    for chunk in chunks {
        let mut rest = *chunk;
        while !rest.is_empty() {
            let taken = decoder.push(rest);
            rest = &rest[taken..];
            loop {
                match decoder.poll_frame() {
                    Ok(Some(f)) => frames.push((f.message, f.bulk.to_vec())),
                    Ok(None) => break,
                    Err(e) => return (frames, Err(e)),
                }
            }
            assert!(decoder.buffered() <= decoder.capacity());
        }
    }
    let end = decoder.finish();
    (frames, end)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips_with_its_bulk((message, bulk) in frame_parts()) {
        let mut frame = Vec::new();
        let len = encode(&message, &bulk, &mut frame).unwrap();
        prop_assert_eq!(len, frame.len());
        let decoded = decode(&frame, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(&decoded.message, &message);
        prop_assert_eq!(decoded.bulk, &bulk[..]);
        prop_assert_eq!(decoded.consumed, frame.len());
        // Trailing bytes after the frame belong to the next one and are not consumed.
        frame.extend_from_slice(b"COL");
        prop_assert_eq!(decode(&frame, &Limits::default()).unwrap().unwrap().consumed, len);
    }

    #[test]
    fn chunking_does_not_change_the_frames(
        parts in prop::collection::vec(frame_parts(), 1..6),
        sizes in prop::collection::vec(1usize..300, 1..8),
    ) {
        let mut stream = Vec::new();
        for (message, bulk) in &parts {
            encode(message, bulk, &mut stream).unwrap();
        }
        let (frames, end) = stream_decode(&chunks(&stream, &sizes), Limits::default());
        prop_assert_eq!(end, Ok(()));
        prop_assert_eq!(frames, parts);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        sizes in prop::collection::vec(1usize..64, 1..4),
    ) {
        let limits = Limits { max_message_len: 256, max_bulk_len: 256 };
        let _ = decode(&bytes, &limits);
        let _ = stream_decode(&chunks(&bytes, &sizes), limits);
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(
        (message, bulk) in frame_parts(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        // Keep the header (so decoding reaches the message and bulk rules), replace the rest,
        // and reseal both checksums so the garbage is not stopped by the CRC.
        let frame = {
            let mut f = Vec::new();
            encode(&message, &bulk, &mut f).unwrap();
            f
        };
        let message_len = u32::from_be_bytes(frame[8..12].try_into().unwrap()) as usize;
        let body_len = message_len + bulk.len();
        let mut forged = frame[..HEADER_LEN].to_vec();
        forged.extend((0..body_len).map(|i| body.get(i).copied().unwrap_or(0)));
        forged.extend_from_slice(&[0; TRAILER_LEN]);
        reseal(&mut forged);
        match decode(&forged, &Limits::default()) {
            Ok(Some(d)) => {
                // Whatever decoded must re-encode to the very same bytes (canonical form).
                let mut again = Vec::new();
                encode(&d.message, d.bulk, &mut again).unwrap();
                prop_assert_eq!(again, forged);
            }
            Ok(None) => prop_assert!(false, "a whole frame is never incomplete"),
            Err(_) => {}
        }
    }

    #[test]
    fn any_single_byte_error_is_detected(
        (message, bulk) in frame_parts(),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut frame = Vec::new();
        encode(&message, &bulk, &mut frame).unwrap();
        let at = position.index(frame.len());
        frame[at] ^= flip;
        let result = decode(&frame, &Limits::default());
        prop_assert!(result.is_err(), "flip of byte {} went unnoticed: {:?}", at, result);
    }
}
