//! Fuzz body for the `wire_decode` target: untrusted bytes from the peer link through the
//! streaming [`FrameDecoder`].
//!
//! Input layout: the first byte chooses how the rest is chunked (so the fuzzer explores frame
//! boundaries falling anywhere in a push), the rest is the byte stream. Invariants checked:
//! no panic; the decoder's buffer stays within its capacity; every frame it yields re-encodes
//! to exactly the bytes it was decoded from (a frame has one valid encoding) and equals what the
//! one-shot [`decode`] finds at the same stream offset; an error is the one [`decode`] reports
//! at that offset, and the decoder repeats it afterwards (a failed link stays failed).

use crate::wire::{FrameDecoder, Limits, decode, encode};

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

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
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
    use crate::ids::Epoch;
    use crate::wire::Message;

    #[test]
    fn frames_split_anywhere_decode_and_reencode() {
        let mut stream = Vec::new();
        encode(
            &Message::MirroredFrame { epoch: Epoch(1) },
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
        for control in [0u8, 1, 7, 250, 255] {
            let mut data = vec![control];
            data.extend_from_slice(&stream);
            run(&data);
            data.truncate(data.len() - 3);
            run(&data);
            data.push(0x00);
            run(&data);
        }
    }
}
