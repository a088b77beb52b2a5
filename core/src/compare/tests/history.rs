//! Tests of the released-stream history (`compare::history`): what it keeps and returns by
//! sequence number, its bound, and that adopting secondary buffers instead of copying keeps
//! exactly the bytes a plain byte ring keeps (a property test against such a ring, the
//! history's former implementation).

use super::super::flow::Spare;
use super::super::history::{Check, History};
use crate::packet::SeqNum;
use proptest::prelude::*;
use std::collections::VecDeque;

/// A secondary frame carrying `payload` after a 54-byte header block, with `extra` bytes of
/// spare capacity, and the payload's range in it.
fn donor(payload: &[u8], extra: usize) -> (Vec<u8>, core::ops::Range<usize>) {
    let mut frame = Vec::with_capacity(54 + payload.len() + extra);
    frame.extend_from_slice(&[0xee; 54]);
    frame.extend_from_slice(payload);
    (frame, 54..54 + payload.len())
}

fn spares(spare: &mut Spare) -> usize {
    std::iter::from_fn(|| spare.take()).count()
}

#[test]
fn recorded_bytes_are_checked_by_sequence_number() {
    let (mut h, mut spare) = (History::default(), Spare::with_room());
    h.record(SeqNum(100), b"hello", 64, &mut spare);
    h.record(SeqNum(105), b" world", 64, &mut spare);
    assert_eq!(h.check(SeqNum(102), b"llo w"), Check::Equal);
    assert_eq!(h.check(SeqNum(102), b"llo_w"), Check::Differs(3));
    assert_eq!(h.check(SeqNum(99), b"xh"), Check::Unknown);
    assert_eq!(h.check(SeqNum(110), b"dd"), Check::Unknown);
}

#[test]
fn overlapping_records_keep_the_first_copy_and_gaps_restart() {
    let (mut h, mut spare) = (History::default(), Spare::with_room());
    h.record(SeqNum(0), b"abcd", 64, &mut spare);
    h.record(SeqNum(2), b"XXef", 64, &mut spare);
    assert_eq!(h.check(SeqNum(0), b"abcdef"), Check::Equal);
    h.record(SeqNum(10), b"gh", 64, &mut spare);
    assert_eq!(h.check(SeqNum(0), b"ab"), Check::Unknown);
    assert_eq!(h.check(SeqNum(10), b"gh"), Check::Equal);
}

#[test]
fn the_bound_keeps_the_newest_bytes_across_wraparound() {
    let (mut h, mut spare) = (History::default(), Spare::with_room());
    let base = SeqNum(u32::MAX - 3);
    h.record(base, b"012345", 4, &mut spare);
    assert_eq!(h.check(base.wrapping_add(2), b"2345"), Check::Equal);
    assert_eq!(h.check(base.wrapping_add(1), b"1"), Check::Unknown);
    h.record(base.wrapping_add(6), b"67", 4, &mut spare);
    assert_eq!(h.check(base.wrapping_add(4), b"4567"), Check::Equal);
    assert_eq!(h.check(base.wrapping_add(3), b"3"), Check::Unknown);
}

#[test]
fn adopted_buffers_are_kept_until_evicted_then_go_to_the_spare_pool() {
    let (mut h, mut spare) = (History::default(), Spare::with_room());
    let payload = |i: u8| vec![i; 1460];
    // MTU payloads under a 4096-byte bound: the first two buffers are adopted whole; the
    // third evicts the first one's oldest bytes, the fourth the rest of them.
    for i in 0..2u8 {
        let p = payload(i);
        let (frame, body) = donor(&p, 0);
        h.record_adopting(
            SeqNum(1460 * u32::from(i)),
            &p,
            4096,
            frame,
            body,
            &mut spare,
        );
    }
    assert_eq!(spares(&mut spare), 0, "both buffers adopted, none copied");
    let p = payload(2);
    let (frame, body) = donor(&p, 0);
    h.record_adopting(SeqNum(2920), &p, 4096, frame, body, &mut spare);
    // 4380 bytes recorded, 4096 kept: the first buffer now holds its last 1176 bytes only.
    assert_eq!(spares(&mut spare), 0);
    assert_eq!(h.check(SeqNum(284), &vec![0; 1176]), Check::Equal);
    assert_eq!(h.check(SeqNum(283), &[0]), Check::Unknown);
    let p = payload(3);
    let (frame, body) = donor(&p, 0);
    h.record_adopting(SeqNum(4380), &p, 4096, frame, body, &mut spare);
    // Its last bytes are evicted too: the buffer is handed back, emptied.
    let back: Vec<Vec<u8>> = std::iter::from_fn(|| spare.take()).collect();
    assert_eq!(back.len(), 1);
    assert!(back[0].is_empty() && back[0].capacity() >= 1514);
    let (start, kept) = h.kept();
    assert_eq!(start, SeqNum(5840 - 4096));
    assert_eq!(kept.len(), 4096);
    assert!(kept[..1460 - 284].iter().all(|&b| b == 1) && kept[4096 - 1460..] == payload(3)[..]);
}

#[test]
fn small_payloads_are_copied_and_their_donor_goes_to_the_spare_pool_at_once() {
    let (mut h, mut spare) = (History::default(), Spare::with_room());
    let (frame, body) = donor(b"tiny", 0);
    h.record_adopting(SeqNum(7), b"tiny", 4096, frame, body, &mut spare);
    assert_eq!(spares(&mut spare), 1);
    assert_eq!(h.check(SeqNum(7), b"tiny"), Check::Equal);
    // A large payload in a buffer far larger than it is copied too (it would pin the buffer).
    let p = vec![9u8; 600];
    let (frame, body) = donor(&p, 8192);
    h.record_adopting(SeqNum(11), &p, 4096, frame, body, &mut spare);
    assert_eq!(spares(&mut spare), 1);
    assert_eq!(
        h.check(SeqNum(7), &[b"tiny".as_slice(), &p].concat()),
        Check::Equal
    );
}

#[test]
fn a_donor_covering_less_than_the_new_bytes_is_not_adopted() {
    // The primary segment starts before the secondary's copy (part of it was already
    // released), but the history does not reach that part: the whole segment is new.
    let (mut h, mut spare) = (History::default(), Spare::with_room());
    let p: Vec<u8> = (0..1460u32).map(|x| x as u8).collect();
    let (frame, body) = donor(&p[700..], 0);
    h.record_adopting(SeqNum(1000), &p, 65536, frame, body, &mut spare);
    assert_eq!(spares(&mut spare), 1, "copied, the donor recycled");
    assert_eq!(h.kept(), (SeqNum(1000), p));
}

/// The former implementation, a plain byte ring: the reference for what must be kept.
#[derive(Default)]
struct Ring {
    start: u32,
    bytes: VecDeque<u8>,
}

impl Ring {
    fn record(&mut self, seq: SeqNum, payload: &[u8], bound: usize) {
        if payload.is_empty() {
            return;
        }
        let end = SeqNum(self.start).wrapping_add(self.bytes.len() as u32);
        let skip = if self.bytes.is_empty() || end.before(seq) || seq.before(SeqNum(self.start)) {
            self.bytes.clear();
            self.start = seq.0;
            0
        } else {
            end.diff(seq) as usize
        };
        let Some(new) = payload.get(skip..) else {
            return;
        };
        let new = &new[new.len().saturating_sub(bound)..];
        let over = (self.bytes.len() + new.len()).saturating_sub(bound);
        if over >= self.bytes.len() {
            self.bytes.clear();
            self.start = seq.0.wrapping_add((payload.len() - new.len()) as u32);
        } else {
            self.bytes.drain(..over);
            self.start = self.start.wrapping_add(over as u32);
        }
        self.bytes.extend(new);
    }

    fn check(&self, seq: SeqNum, payload: &[u8]) -> Check {
        if payload.is_empty() {
            return Check::Equal;
        }
        let start = SeqNum(self.start);
        let end = start.wrapping_add(self.bytes.len() as u32);
        if self.bytes.is_empty()
            || seq.before(start)
            || end.before(seq.wrapping_add(payload.len() as u32))
        {
            return Check::Unknown;
        }
        let from = seq.diff(start) as usize;
        match self
            .bytes
            .range(from..from + payload.len())
            .zip(payload)
            .position(|(x, y)| x != y)
        {
            Some(i) => Check::Differs(i),
            None => Check::Equal,
        }
    }
}

/// One step of the property test, positions relative to a running stream offset.
#[derive(Clone, Debug)]
enum Step {
    /// Record `len` bytes at `back` bytes before the stream's end (a gap if negative),
    /// adopting a donor with `extra` spare capacity covering the last `cover` of them, or
    /// copying; `salt` changes the bytes (a second copy of a range differing from the first).
    Record {
        back: i32,
        len: usize,
        donor: Option<(usize, usize)>,
        salt: u8,
    },
    /// Check `len` bytes at `back` bytes before the stream's end, one byte flipped maybe.
    Check {
        back: u32,
        len: usize,
        flip: Option<usize>,
    },
    Clear,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (
            prop_oneof![4 => Just(0i32), 1 => -50i32..0, 1 => 1i32..3000],
            prop_oneof![1 => 1usize..40, 2 => 400usize..1600],
            proptest::option::weighted(0.7, (0usize..1600, prop_oneof![Just(0usize), 0usize..4000])),
            prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        )
            .prop_map(|(back, len, donor, salt)| Step::Record { back, len, donor, salt }),
        3 => (0u32..6000, 1usize..3000, proptest::option::of(0usize..3000))
            .prop_map(|(back, len, flip)| Step::Check { back, len, flip }),
        1 => Just(Step::Clear),
    ]
}

fn byte(x: u32, salt: u8) -> u8 {
    (x.wrapping_mul(31) >> 3) as u8 ^ salt
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever is recorded, copied or adopted, the history keeps the bytes the plain ring
    /// keeps and answers every check as it does; adopted buffers and copy buffers all come
    /// back (nothing is lost but the ones still kept).
    #[test]
    fn the_history_keeps_what_a_byte_ring_keeps(
        base in prop_oneof![Just(0u32), Just(u32::MAX - 5000), any::<u32>()],
        bound in prop_oneof![Just(65536usize), 1usize..5000],
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let (mut h, mut spare, mut ring) = (History::default(), Spare::with_room(), Ring::default());
        let mut end = base;
        for s in steps {
            match s {
                Step::Record { back, len, donor: given, salt } => {
                    let seq = end.wrapping_sub(back as u32);
                    let payload: Vec<u8> =
                        (0..len as u32).map(|i| byte(seq.wrapping_add(i), salt)).collect();
                    ring.record(SeqNum(seq), &payload, bound);
                    match given {
                        Some((cover, extra)) => {
                            let cover = cover.min(len);
                            let (frame, body) = donor(&payload[len - cover..], extra);
                            h.record_adopting(SeqNum(seq), &payload, bound, frame, body, &mut spare);
                        }
                        None => h.record(SeqNum(seq), &payload, bound, &mut spare),
                    }
                    let record_end = seq.wrapping_add(len as u32);
                    if SeqNum(end).before(SeqNum(record_end)) {
                        end = record_end;
                    }
                }
                Step::Check { back, len, flip } => {
                    let seq = end.wrapping_sub(back);
                    let mut payload: Vec<u8> =
                        (0..len as u32).map(|i| byte(seq.wrapping_add(i), 0)).collect();
                    if let Some(i) = flip {
                        let i = i % len;
                        payload[i] ^= 0x5a;
                    }
                    prop_assert_eq!(h.check(SeqNum(seq), &payload), ring.check(SeqNum(seq), &payload));
                }
                Step::Clear => {
                    h.clear(&mut spare);
                    ring.bytes.clear();
                }
            }
            let (start, kept) = h.kept();
            prop_assert_eq!(&kept, &ring.bytes.iter().copied().collect::<Vec<u8>>());
            if !kept.is_empty() {
                prop_assert_eq!(start, SeqNum(ring.start));
            }
            prop_assert!(kept.len() <= bound);
        }
        while spare.take().is_some() {}
    }
}
