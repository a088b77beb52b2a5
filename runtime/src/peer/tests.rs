//! Unit tests of the peer transport's pure parts: batching and the reader's handling of whole,
//! split, corrupt and truncated streams (socket-level behaviour is in tests/pair.rs).

use super::*;
use colo_core::ids::Epoch;

fn collect(bytes: &[u8], chunk: usize) -> (Vec<(Message, Vec<u8>)>, LinkClosed) {
    /// A reader that hands out `chunk` bytes per read.
    struct Chunked<'a>(&'a [u8], usize);
    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let mut frames = Vec::new();
    let closed = read_frames(
        &mut Chunked(bytes, chunk),
        Limits::default(),
        &mut |message, bulk| {
            frames.push((message, bulk.to_vec()));
            true
        },
    );
    (frames, closed)
}

fn two_frames() -> Vec<u8> {
    let mut link = Vec::new();
    encode(
        &Message::CheckpointReady { epoch: Epoch(3) },
        &[],
        &mut link,
    )
    .unwrap();
    encode(
        &Message::DeviceState { epoch: Epoch(3) },
        &[7u8; 5000],
        &mut link,
    )
    .unwrap();
    link
}

#[test]
fn frames_split_in_any_chunks_arrive_whole() {
    for chunk in [1, 7, 4096, 1 << 20] {
        let (frames, closed) = collect(&two_frames(), chunk);
        assert!(matches!(closed, LinkClosed::Eof), "chunk {chunk}: {closed}");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, Message::CheckpointReady { epoch: Epoch(3) });
        assert_eq!(frames[1].1, vec![7u8; 5000]);
    }
}

#[test]
fn corrupt_frame_closes_the_link_with_a_wire_error() {
    let mut link = two_frames();
    let last = link.len() - 10;
    link[last] ^= 0xff; // inside the second frame's bulk: its trailer no longer matches
    let (frames, closed) = collect(&link, 999);
    assert_eq!(frames.len(), 1, "the intact first frame is delivered");
    assert!(matches!(closed, LinkClosed::Wire(_)), "{closed}");
    assert!(closed.to_string().starts_with("corrupt peer frame"));
}

#[test]
fn garbage_is_refused_at_the_header() {
    let (frames, closed) = collect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 64);
    assert!(frames.is_empty());
    assert!(matches!(closed, LinkClosed::Wire(_)), "{closed}");
}

#[test]
fn truncated_frame_at_eof_is_an_error() {
    let link = two_frames();
    let (frames, closed) = collect(&link[..link.len() - 1], 4096);
    assert_eq!(frames.len(), 1);
    assert!(
        matches!(closed, LinkClosed::Wire(WireError::Truncated { .. })),
        "{closed}"
    );
}

#[test]
fn batches_never_exceed_the_page_bound_and_keep_every_page() {
    let ranges = vec![
        PageRange {
            first: 0,
            count: 3000,
        },
        PageRange {
            first: 5000,
            count: 1,
        },
        PageRange {
            first: 6000,
            count: 100,
        },
    ];
    let batches = split_batches(&ranges, 1024);
    assert!(
        batches
            .iter()
            .all(|b| b.iter().map(|r| r.count).sum::<u64>() <= 1024)
    );
    let flat: Vec<u64> = batches
        .iter()
        .flatten()
        .flat_map(|r| r.first..r.end())
        .collect();
    let want: Vec<u64> = ranges.iter().flat_map(|r| r.first..r.end()).collect();
    assert_eq!(flat, want);
    assert_eq!(batches.len(), 4);
    assert!(split_batches(&[], 1024).is_empty());
}
