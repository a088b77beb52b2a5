//! How the Node engine's trace tells released frames apart: digests, the comparator's compare
//! key, and the byte-stream maps of what the secondary emitted and what was released. Invariant
//! kept: these only read frames (colo-core's `classify`), so an origin is a pure function of the
//! frames both sides emitted.

use std::collections::BTreeMap;

use crate::hash::Fnv64;

pub(super) fn digest(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.write(bytes);
    h.finish()
}

/// Records the TCP payload bytes of a secondary frame by flow and sequence number.
pub(super) fn record_stream(map: &mut BTreeMap<String, BTreeMap<u32, u8>>, frame: &[u8]) {
    let c = colo_core::packet::classify_or_opaque(frame);
    if let colo_core::packet::Kind::Tcp(t) = c.kind {
        let bytes = map.entry(format!("{:?}", c.key)).or_default();
        for (i, b) in frame[t.payload_start..t.payload_end].iter().enumerate() {
            bytes.insert(t.seq.0.wrapping_add(i as u32), *b);
        }
    }
}

/// Whether every payload byte of a primary TCP frame was emitted, equal, by the secondary.
pub(super) fn stream_covered(map: &BTreeMap<String, BTreeMap<u32, u8>>, frame: &[u8]) -> bool {
    let c = colo_core::packet::classify_or_opaque(frame);
    let colo_core::packet::Kind::Tcp(t) = c.kind else {
        return false;
    };
    let Some(bytes) = map.get(&format!("{:?}", c.key)) else {
        return false;
    };
    frame[t.payload_start..t.payload_end]
        .iter()
        .enumerate()
        .all(|(i, b)| bytes.get(&t.seq.0.wrapping_add(i as u32)) == Some(b))
}

/// What the comparator compares (colo-reference.md, "Packet comparison"; QEMU
/// colo-compare.c compares TCP payloads, not headers): for TCP the flow, the sequence number
/// (the secondary's is rewritten into the primary's space) and the payload; the whole frame
/// otherwise. Two frames with the same key are "the same output" for the output-commit checker.
pub(super) fn compare_key(frame: &[u8]) -> u64 {
    let c = colo_core::packet::classify_or_opaque(frame);
    let mut h = Fnv64::new();
    h.write(format!("{:?}", c.key).as_bytes());
    match c.kind {
        colo_core::packet::Kind::Tcp(t) => {
            h.write_u64(u64::from(t.seq.0));
            h.write(&frame[t.payload_start..t.payload_end]);
        }
        _ => h.write(frame),
    }
    h.finish()
}

/// A key that survives the secondary's TCP rewriting (which changes sequence and acknowledgement
/// numbers and checksums, not the flow or the payload): used to follow a frame a survivor's
/// rewriter changed between its guest and the client.
pub(super) fn loose_key(frame: &[u8]) -> u64 {
    let c = colo_core::packet::classify_or_opaque(frame);
    let mut h = Fnv64::new();
    h.write(format!("{:?}", c.key).as_bytes());
    if let colo_core::packet::Kind::Tcp(t) = c.kind {
        h.write(&[t.flags]);
        h.write(&frame[t.payload_start..t.payload_end]);
    } else {
        h.write(frame);
    }
    h.finish()
}
