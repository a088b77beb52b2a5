//! The checked-in seed corpora of the `wire_decode` and `wire_decode_sealed` fuzz targets
//! (`fuzz/seeds/wire_decode/`, `fuzz/seeds/wire_decode_sealed/`), generated from code so they
//! stay valid as the protocol grows.
//!
//! `seed_corpus_matches_its_generator` fails when a file differs from what the generator makes
//! now; run it with `COLO_WRITE_SEEDS=1` to rewrite the directory. Each seed is one chunking
//! control byte followed by a byte stream (see `fuzzing::wire_decode`).

use std::path::PathBuf;

use super::*;

/// Concatenated frames of `messages`, each with a bulk that fits it.
fn stream(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend(frame_of(m, &bulk_for(m)));
    }
    out
}

fn seed(control: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![control];
    out.extend_from_slice(bytes);
    out
}

/// The example messages with page and disk payloads shrunk to one page or 64 bytes, so the
/// seeds stay small (libFuzzer derives its default input length from the largest seed).
fn small_examples() -> Vec<Message> {
    let one_page = vec![crate::ids::PageRange {
        first: 16,
        count: 1,
    }];
    examples()
        .into_iter()
        .map(|m| match m {
            Message::PageBatch { epoch, batch, .. } => Message::PageBatch {
                epoch,
                batch,
                ranges: one_page.clone(),
                zero: ZeroPages::none(1),
            },
            // A zero page: the frame carries no bulk for it.
            Message::SyncPages { term, batch, .. } => Message::SyncPages {
                term,
                batch,
                ranges: one_page.clone(),
                zero: ZeroPages::from_flags([true]),
            },
            Message::DiskWrite {
                epoch,
                write_id,
                offset,
                ..
            } => Message::DiskWrite {
                epoch,
                write_id,
                offset,
                len: 64,
            },
            Message::SyncDisk { term, offset, .. } => Message::SyncDisk {
                term,
                offset,
                len: 64,
            },
            other => other,
        })
        .collect()
}

/// (file name, contents) of every seed.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ex = small_examples();
    let heartbeat = ex[3].clone();
    let mut corrupted = frame_of(&ex[6], &bulk_for(&ex[6]));
    let mid = corrupted.len() - TRAILER_LEN - 10;
    corrupted[mid] ^= 0x20;
    let whole = frame_of(&ex[16], &bulk_for(&ex[16]));
    let mut bad_magic = frame_of(&heartbeat, &[]);
    bad_magic[0] = b'c';
    vec![
        ("handshake", seed(0, &stream(&ex[0..3]))),
        ("liveness", seed(7, &stream(&ex[3..6]))),
        ("frames", seed(0xc0, &stream(&ex[6..8]))),
        ("checkpoint", seed(200, &stream(&ex[8..16]))),
        ("disk", seed(13, &stream(&ex[16..18]))),
        ("failover", seed(0x81, &stream(&ex[18..23]))),
        ("arbiter", seed(255, &stream(&ex[23..26]))),
        ("reprotect", seed(99, &stream(&ex[26..28]))),
        ("translation", seed(42, &stream(&ex[28..29]))),
        ("truncated_header", seed(3, &whole[..HEADER_LEN - 4])),
        ("truncated_frame", seed(50, &whole[..whole.len() - 3])),
        ("corrupted_crc", seed(17, &corrupted)),
        ("bad_magic", seed(0, &bad_magic)),
        (
            "other_version",
            seed(5, &raw_frame(PROTOCOL_VERSION + 1, 0, &[0], &[])),
        ),
        (
            "mac_flag",
            seed(
                9,
                &raw_frame(PROTOCOL_VERSION, FLAG_MAC, &message_bytes(&heartbeat), &[]),
            ),
        ),
        (
            "bulk_mismatch",
            seed(
                2,
                &raw_frame(PROTOCOL_VERSION, 0, &message_bytes(&heartbeat), &[1, 2]),
            ),
        ),
    ]
}

/// The sealed target's seeds: the same message groups as frames of an authenticated link
/// (each stream numbered from frame 0 under the fuzz key), a flipped tag, and a plain frame.
fn sealed_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let ex = small_examples();
    let sealed = |messages: &[Message]| {
        let mut mac = FrameMac::new(crate::fuzzing::wire_decode::SEALED_KEY);
        let mut out = Vec::new();
        for m in messages {
            encode_sealed(m, &bulk_for(m), &mut out, &mut mac).unwrap();
        }
        out
    };
    let mut flipped = sealed(&ex[3..5]);
    let tag_byte = flipped.len() - TRAILER_LEN - 5;
    flipped[tag_byte] ^= 1;
    vec![
        ("handshake", seed(0, &sealed(&ex[0..3]))),
        ("frames", seed(0x83, &sealed(&ex[6..8]))),
        ("checkpoint", seed(200, &sealed(&ex[8..16]))),
        ("reprotect", seed(0x99, &sealed(&ex[26..29]))),
        ("flipped_tag", seed(0x10, &flipped)),
        ("plain_frame", seed(4, &stream(&ex[3..4]))),
    ]
}

/// Checks `dir` holds exactly `seeds` (rewriting it first under `COLO_WRITE_SEEDS`).
fn check_corpus(dir: &str, seeds: &[(&'static str, Vec<u8>)]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(dir);
    if std::env::var_os("COLO_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = seeds.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected, "rerun with COLO_WRITE_SEEDS=1");
    for (name, bytes) in seeds {
        let on_disk = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            &on_disk, bytes,
            "seed {name} is stale: rerun with COLO_WRITE_SEEDS=1"
        );
    }
}

#[test]
fn seed_corpus_matches_its_generator() {
    check_corpus("wire_decode", &seeds());
}

#[test]
fn sealed_seed_corpus_matches_its_generator() {
    check_corpus("wire_decode_sealed", &sealed_seeds());
}

/// Feeds seed `name` of `seeds` (without its control byte) to `decoder`: how many frames it
/// yields, and how the stream ends.
fn frames_until_the_end(
    mut decoder: FrameDecoder,
    seeds: &[(&'static str, Vec<u8>)],
    name: &str,
) -> (usize, Result<(), WireError>) {
    let (_, bytes) = seeds.iter().find(|(n, _)| *n == name).unwrap();
    decoder.push(&bytes[1..]);
    let mut frames = 0;
    loop {
        match decoder.poll_frame() {
            Ok(Some(_)) => frames += 1,
            Ok(None) => return (frames, decoder.finish()),
            Err(e) => return (frames, Err(e)),
        }
    }
}

#[test]
fn sealed_seeds_reach_the_intended_outcomes() {
    let outcome = |name: &str| {
        let key = crate::fuzzing::wire_decode::SEALED_KEY;
        let decoder = FrameDecoder::sealed(Limits::default(), FrameMac::new(key));
        frames_until_the_end(decoder, &sealed_seeds(), name)
    };
    assert_eq!(outcome("checkpoint"), (8, Ok(())));
    assert_eq!(outcome("reprotect"), (3, Ok(())));
    assert!(matches!(
        outcome("flipped_tag"),
        (1, Err(WireError::MacMismatch { frame: 1 }))
    ));
    assert!(matches!(
        outcome("plain_frame"),
        (0, Err(WireError::MacMissing { frame: 0 }))
    ));
}

#[test]
fn seeds_reach_the_intended_outcomes() {
    let outcome =
        |name: &str| frames_until_the_end(FrameDecoder::new(Limits::default()), &seeds(), name);
    assert_eq!(outcome("checkpoint"), (8, Ok(())));
    assert_eq!(outcome("failover"), (5, Ok(())));
    assert!(matches!(
        outcome("truncated_frame"),
        (0, Err(WireError::Truncated { .. }))
    ));
    assert!(matches!(
        outcome("corrupted_crc"),
        (0, Err(WireError::ChecksumMismatch { .. }))
    ));
    assert!(matches!(
        outcome("bad_magic"),
        (0, Err(WireError::BadMagic { .. }))
    ));
    assert!(matches!(
        outcome("other_version"),
        (0, Err(WireError::UnsupportedVersion { .. }))
    ));
    assert!(matches!(
        outcome("mac_flag"),
        (0, Err(WireError::MacUnexpected))
    ));
    assert!(matches!(
        outcome("bulk_mismatch"),
        (0, Err(WireError::BulkMismatch { .. }))
    ));
}
