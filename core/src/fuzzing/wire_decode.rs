//! Fuzz bodies for the `wire_decode` and `wire_decode_sealed` targets: untrusted bytes from the
//! peer link through the streaming [`FrameDecoder`], plain ([`run`]) or on an authenticated
//! link ([`run_sealed`]: every frame must carry a MAC tag that verifies under the link's key
//! and the frame's number).
//!
//! Input layout: the first byte chooses how the rest is chunked (low 7 bits: the fuzzer explores
//! frame boundaries falling anywhere in a push) and whether the stream's checksums are resealed
//! first (high bit: a fuzzer cannot forge CRC32Cs, so without this its mutations would stop at
//! the checksum and never reach the message decoder; on a sealed link the MAC tags of frames
//! flagged `FLAG_MAC` are recomputed too, with the fuzz key and the frame's position, since a
//! fuzzer cannot forge those either); the rest is the byte stream. Checked:
//! no panic; the decoder's buffer stays within its capacity; every frame it yields re-encodes
//! to exactly the bytes it was decoded from (a frame has one valid encoding) and equals what the
//! one-shot [`decode`] finds at the same stream offset; an error is the one [`decode`] reports
//! at that offset, and the decoder repeats it afterwards (a failed link stays failed).

use crate::wire::{
    FLAG_MAC, FrameDecoder, FrameMac, HEADER_LEN, Limits, MAC_TAG_LEN, MAGIC, TRAILER_LEN, decode,
    decode_sealed, encode, encode_sealed,
};

/// The key of the sealed target's link (any fixed key: the fuzzer explores frames, not keys);
/// the seed corpus is sealed with it.
pub const SEALED_KEY: [u8; 32] = [0x5a; 32];

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
/// lengths fit, so mutated messages and lengths get past the checksums; with `mac`, also the
/// MAC tag of each frame that has `FLAG_MAC` set, numbered by its position in the stream.
fn reseal(stream: &mut [u8], mut mac: Option<FrameMac>) {
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN && stream[at..at + 4] == MAGIC {
        let frame = &mut stream[at..];
        let header_crc = crc32c::crc32c(&frame[..16]);
        frame[16..20].copy_from_slice(&header_crc.to_be_bytes());
        let len =
            |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        let sealed = u16::from_be_bytes([frame[6], frame[7]]) & FLAG_MAC != 0;
        let tag_len = if sealed { MAC_TAG_LEN as u64 } else { 0 };
        let message_end = HEADER_LEN + len(8) as usize;
        let bulk_end = HEADER_LEN as u64 + u64::from(len(8)) + u64::from(len(12));
        let Some(end) = usize::try_from(bulk_end + tag_len + TRAILER_LEN as u64)
            .ok()
            .filter(|&end| end <= frame.len())
        else {
            return;
        };
        let bulk_end = end - TRAILER_LEN - tag_len as usize;
        if let Some(mac) = mac.as_mut() {
            let mut state = mac.start();
            if sealed {
                state.update(&frame[..bulk_end]);
                frame[bulk_end..bulk_end + MAC_TAG_LEN].copy_from_slice(state.tag().as_bytes());
            }
        }
        let body_end = end - TRAILER_LEN;
        // A sealed frame's CRC skips the bulk (docs/protocol.md, "Frame layout").
        let crc = if sealed {
            crc32c::crc32c_append(
                crc32c::crc32c(&frame[..message_end]),
                &frame[bulk_end..body_end],
            )
        } else {
            crc32c::crc32c(&frame[..body_end])
        };
        frame[body_end..end].copy_from_slice(&crc.to_be_bytes());
        at += end;
    }
}

/// The one-shot decode of the frame at the start of `buf`, on the target's kind of link; `mac`
/// is the one-shot side's MAC state, advanced only when `commit` (a frame the streaming decoder
/// yielded), so an error check does not disturb it.
fn oneshot<'a>(
    buf: &'a [u8],
    mac: &mut Option<FrameMac>,
    commit: bool,
) -> Result<Option<crate::wire::Decoded<'a>>, crate::wire::WireError> {
    match mac {
        None => decode(buf, &LIMITS),
        Some(m) if commit => decode_sealed(buf, &LIMITS, m),
        Some(m) => decode_sealed(buf, &LIMITS, &mut m.clone()),
    }
}

/// Runs one fuzz input on a plain link.
pub fn run(data: &[u8]) {
    run_on(data, None);
}

/// Runs one fuzz input on an authenticated link (every frame sealed with the fuzz key).
pub fn run_sealed(data: &[u8]) {
    run_on(data, Some(FrameMac::new(SEALED_KEY)));
}

fn run_on(data: &[u8], mac: Option<FrameMac>) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let mut owned;
    let stream = if control & RESEAL != 0 {
        owned = stream.to_vec();
        reseal(&mut owned, mac.clone());
        &owned[..]
    } else {
        stream
    };
    let control = control & !RESEAL;
    let mut decoder = match &mac {
        None => FrameDecoder::new(LIMITS),
        Some(m) => FrameDecoder::sealed(LIMITS, m.clone()),
    };
    // The one-shot decoder's and the re-encoder's MAC states, one frame at a time.
    let mut oneshot_mac = mac.clone();
    let mut encode_mac = mac;
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
                        match encode_mac.as_mut() {
                            None => encode(&frame.message, frame.bulk, &mut again),
                            Some(m) => encode_sealed(&frame.message, frame.bulk, &mut again, m),
                        }
                        .expect("a decoded frame re-encodes");
                        assert_eq!(again, original, "re-encoding changed the frame bytes");
                        let oneshot = oneshot(&stream[offset..], &mut oneshot_mac, true)
                            .expect("one-shot decode agrees")
                            .expect("one-shot decode sees the whole frame");
                        assert_eq!(oneshot, frame, "streaming and one-shot decode differ");
                        offset += frame.consumed;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert_eq!(
                            oneshot(&stream[offset..], &mut oneshot_mac, false).err(),
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
        matches!(
            oneshot(&stream[offset..], &mut oneshot_mac, false),
            Ok(None)
        ),
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
        reseal(&mut stream, None);
        let frame = decode(&stream, &LIMITS).unwrap().unwrap();
        assert_eq!(frame.message, Message::CheckpointReady { epoch: Epoch(3) });
    }

    fn sealed_stream() -> Vec<u8> {
        let mut mac = FrameMac::new(SEALED_KEY);
        let mut stream = Vec::new();
        encode_sealed(
            &Message::MirroredFrame {
                epoch: Epoch(1),
                nic: NicId(0),
            },
            &[9; 300],
            &mut stream,
            &mut mac,
        )
        .unwrap();
        encode_sealed(
            &Message::CheckpointReady { epoch: Epoch(2) },
            &[],
            &mut stream,
            &mut mac,
        )
        .unwrap();
        stream
    }

    #[test]
    fn sealed_frames_split_anywhere_decode_and_reencode() {
        let stream = sealed_stream();
        for control in [0u8, 1, 7, 0x80, 0xfa, 0xff] {
            let mut data = vec![control];
            data.extend_from_slice(&stream);
            run_sealed(&data);
            data.truncate(data.len() - 3);
            run_sealed(&data);
            // A plain decoder refuses the sealed stream; the body still checks its rules.
            run(&data);
        }
    }

    #[test]
    fn reseal_recomputes_the_mac_so_a_mutated_sealed_message_reaches_the_decoder() {
        let mut stream = sealed_stream();
        let second = stream.len() - (HEADER_LEN + 2 + MAC_TAG_LEN + TRAILER_LEN);
        // The second frame's epoch: CheckpointReady's varint sits right after its variant byte.
        stream[second + HEADER_LEN + 1] = 3;
        let mut decoder = FrameDecoder::sealed(LIMITS, FrameMac::new(SEALED_KEY));
        decoder.push(&stream);
        assert!(decoder.poll_frame().unwrap().is_some());
        assert!(matches!(
            decoder.poll_frame(),
            Err(crate::wire::WireError::MacMismatch { frame: 1 })
        ));
        reseal(&mut stream, Some(FrameMac::new(SEALED_KEY)));
        let mut decoder = FrameDecoder::sealed(LIMITS, FrameMac::new(SEALED_KEY));
        decoder.push(&stream);
        decoder.poll_frame().unwrap().unwrap();
        let frame = decoder.poll_frame().unwrap().unwrap();
        assert_eq!(frame.message, Message::CheckpointReady { epoch: Epoch(3) });
    }
}
