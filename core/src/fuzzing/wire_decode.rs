//! Fuzz body for the `wire_decode` target: untrusted bytes from the peer link through the
//! streaming [`FrameDecoder`].
//!
//! Input layout: the first byte chooses how the rest is chunked (low 7 bits: the fuzzer explores
//! frame boundaries falling anywhere in a push) and whether the stream's checksums are resealed
//! first (high bit: a fuzzer cannot forge CRC32Cs, so without this its mutations would stop at
//! the checksum and never reach the message decoder); the rest is the byte stream. Checked:
//! no panic; the decoder's buffer stays within its capacity; every frame it yields re-encodes
//! to exactly the bytes it was decoded from (a frame has one valid encoding) and equals what the
//! one-shot [`decode`] finds at the same stream offset; an error is the one [`decode`] reports
//! at that offset, and the decoder repeats it afterwards (a failed link stays failed).

use crate::wire::{FrameDecoder, HEADER_LEN, Limits, MAGIC, TRAILER_LEN, decode, encode};

/// Limits small enough for the fuzzer to reach the size checks, big enough for a page batch of
/// a few pages.
const LIMITS: Limits = Limits {
    max_message_len: 4096,
    max_bulk_len: 64 * 1024,
};

/// Chunk size number `i` for chunking control byte `control`: between 1 and 251 bytes.
fn chunk_len(control: u8, i: usize) -> usize {
    1 + (usize::from(control) * (i + 1)) % 251
}

/// Control bit: recompute the header and frame CRCs of every frame-shaped run of the stream.
const RESEAL: u8 = 0x80;

/// Rewrites both CRCs of each successive frame of `stream` whose magic is right and whose
/// lengths fit, so mutated messages and lengths get past the checksums.
fn reseal(stream: &mut [u8]) {
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN && stream[at..at + 4] == MAGIC {
        let frame = &mut stream[at..];
        let header_crc = crc32c::crc32c(&frame[..16]);
        frame[16..20].copy_from_slice(&header_crc.to_be_bytes());
        let len =
            |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        let body_end = HEADER_LEN as u64 + u64::from(len(8)) + u64::from(len(12));
        let Some(end) = usize::try_from(body_end + TRAILER_LEN as u64)
            .ok()
            .filter(|&end| end <= frame.len())
        else {
            return;
        };
        let body_end = end - TRAILER_LEN;
        let crc = crc32c::crc32c(&frame[..body_end]);
        frame[body_end..end].copy_from_slice(&crc.to_be_bytes());
        at += end;
    }
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let mut owned;
    let stream = if control & RESEAL != 0 {
        owned = stream.to_vec();
        reseal(&mut owned);
        &owned[..]
    } else {
        stream
    };
    let control = control & !RESEAL;
    let mut decoder = FrameDecoder::new(LIMITS);
    // Offset in `stream` of the next frame the decoder will yield.
    let mut offset = 0;
    let mut fed = 0;
    let mut i = 0;
    while fed < stream.len() {
        let end = (fed + chunk_len(control, i)).min(stream.len());
        i += 1;
        let mut chunk = &stream[fed..end];
        while !chunk.is_empty() {
            let taken = decoder.push(chunk);
            assert!(
                decoder.buffered() <= decoder.capacity(),
                "decoder buffer exceeds its bound"
            );
            chunk = &chunk[taken..];
            fed += taken;
            loop {
                match decoder.poll_frame() {
                    Ok(Some(frame)) => {
                        let original = &stream[offset..offset + frame.consumed];
                        let mut again = Vec::new();
                        encode(&frame.message, frame.bulk, &mut again)
                            .expect("a decoded frame re-encodes");
                        assert_eq!(again, original, "re-encoding changed the frame bytes");
                        let oneshot = decode(&stream[offset..], &LIMITS)
                            .expect("one-shot decode agrees")
                            .expect("one-shot decode sees the whole frame");
                        assert_eq!(oneshot, frame, "streaming and one-shot decode differ");
                        offset += frame.consumed;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert_eq!(
                            decode(&stream[offset..], &LIMITS).err(),
                            Some(e.clone()),
                            "errors do not depend on how much of the stream has arrived"
                        );
                        assert_eq!(decoder.poll_frame().err(), Some(e.clone()));
                        assert_eq!(decoder.finish(), Err(e));
                        return;
                    }
                }
            }
        }
    }
    // Whole stream consumed without error: the one-shot decoder must see no further frame.
    assert!(
        matches!(decode(&stream[offset..], &LIMITS), Ok(None)),
        "one-shot decode finds a frame the streaming decoder did not yield"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, NicId};
    use crate::wire::Message;

    #[test]
    fn frames_split_anywhere_decode_and_reencode() {
        let mut stream = Vec::new();
        encode(
            &Message::MirroredFrame {
                epoch: Epoch(1),
                nic: NicId(0),
            },
            &[9; 300],
            &mut stream,
        )
        .unwrap();
        encode(
            &Message::CheckpointReady { epoch: Epoch(2) },
            &[],
            &mut stream,
        )
        .unwrap();
        for control in [0u8, 1, 7, 0x80, 0xfa, 0xff] {
            let mut data = vec![control];
            data.extend_from_slice(&stream);
            run(&data);
            data.truncate(data.len() - 3);
            run(&data);
            data.push(0x00);
            run(&data);
        }
    }

    #[test]
    fn reseal_lets_a_mutated_message_reach_the_decoder() {
        let mut stream = Vec::new();
        encode(
            &Message::CheckpointReady { epoch: Epoch(2) },
            &[],
            &mut stream,
        )
        .unwrap();
        // Change the epoch: the frame CRC no longer matches, until resealed.
        stream[HEADER_LEN + 1] = 3;
        assert!(matches!(
            decode(&stream, &LIMITS),
            Err(crate::wire::WireError::ChecksumMismatch { .. })
        ));
        reseal(&mut stream);
        let frame = decode(&stream, &LIMITS).unwrap().unwrap();
        assert_eq!(frame.message, Message::CheckpointReady { epoch: Epoch(3) });
    }
}
