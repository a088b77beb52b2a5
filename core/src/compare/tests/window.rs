//! Tests of the window clamp (`compare::window`): a released primary segment never advertises
//! a right edge beyond the secondary's, a pure window update waits for the secondary's, window
//! scaling and zero windows, the checkpoint hand-over, and a property test over random
//! interleavings of both sides' ACKs and windows.

use super::window_update::updates;
use super::*;
use crate::packet::TcpInfo;
use crate::packet::checksum::{L4Checksum, verify_l4};
use crate::packet::tcp_flags::{ACK, PSH, SYN};
use crate::packet::{Kind, SeqNum};
use proptest::prelude::*;

/// A segment from the VM with this ACK number, window field and payload.
fn seg(seq: u32, ack: u32, window: u16, payload: &[u8]) -> Vec<u8> {
    let flags = if payload.is_empty() { ACK } else { ACK | PSH };
    testkit::tcp(
        &Headers {
            window,
            ..Headers::default()
        },
        seq,
        ack,
        flags,
        payload,
    )
}

/// A SYN-ACK from the VM announcing window scale `shift`.
fn syn_ack(isn: u32, ack: u32, window: u16, shift: u8) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(testkit::VM_MAC, testkit::CLIENT_MAC)
        .ipv4(testkit::VM_IP4, testkit::CLIENT_IP4, 64)
        .tcp(80, 40000, isn, window)
        .syn()
        .ack(ack)
        .options(&[etherparse::TcpOptionElement::WindowScale(shift)])
        .expect("one option fits");
    let mut frame = Vec::new();
    builder
        .write(&mut frame, &[])
        .expect("writing into a Vec cannot fail");
    frame
}

/// (ACK number, window field) of a released frame, with its checksum verified.
fn ack_window(frame: &[u8]) -> (u32, u16) {
    let info = tcp_info(frame);
    (info.ack.0, info.window)
}

/// The TCP summary of a released frame, with its checksum verified.
fn tcp_info(frame: &[u8]) -> TcpInfo {
    let classified = crate::packet::classify(frame).expect("a released frame parses");
    assert_eq!(
        verify_l4(frame, &classified),
        L4Checksum::Valid,
        "the clamp keeps the checksum valid"
    );
    let Kind::Tcp(info) = classified.kind else {
        panic!("a TCP frame")
    };
    info
}

#[test]
fn a_window_update_waits_for_the_secondary_s_and_then_leaves_unchanged() {
    // The traced stall (docs/benchmarks.md, item 4): both guests' buffers full, the primary
    // drains first and announces its window while the secondary's is still 0.
    let mut c = comparator();
    c.handle_primary(t(0), seg(1, 1000, 0, &[]));
    c.handle_secondary(t(0), seg(1, 1000, 0, &[]));
    assert_eq!(releases(&settle(&mut c)).len(), 1, "the zero window leaves");
    let update = seg(1, 1000, 32768, &[]);
    c.handle_primary(t(1), update.clone());
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "the primary's window update waits: the secondary still advertises 0"
    );
    c.handle_secondary(t(2), seg(1, 1000, 32768, &[]));
    let out = releases(&settle(&mut c));
    assert_eq!(
        out,
        vec![update],
        "released as sent once the secondary opened as far"
    );
    assert_eq!(c.stats().windows_clamped, 0);
}

#[test]
fn a_window_update_beyond_the_secondary_s_leaves_clamped_once_it_says_something_new() {
    let mut c = comparator();
    c.handle_secondary(t(0), seg(1, 1000, 0, &[]));
    c.handle_primary(t(0), seg(1, 1000, 0, &[]));
    settle(&mut c);
    c.handle_primary(t(1), seg(1, 1000, 32768, &[]));
    assert!(releases(&settle(&mut c)).is_empty());
    // The secondary opens part of the way: the update leaves, clamped to the secondary's edge.
    c.handle_secondary(t(2), seg(1, 1000, 4096, &[]));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 1);
    assert_eq!(ack_window(&out[0]), (1000, 4096));
    assert_eq!(c.stats().windows_clamped, 1);
}

#[test]
fn an_ack_beyond_the_secondary_s_window_is_clamped_with_a_valid_checksum() {
    let mut c = comparator();
    // The secondary acknowledged further and advertises less room past its ACK.
    c.handle_secondary(t(0), seg(1, 3000, 500, &[]));
    c.handle_primary(t(0), seg(1, 2000, 8000, &[]));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 1, "a new ACK is news: released at once, clamped");
    assert_eq!(
        ack_window(&out[0]),
        (2000, 1500),
        "right edge 3500, the secondary's"
    );
    assert_eq!(c.stats().windows_clamped, 1);
}

#[test]
fn a_data_segment_carries_a_zero_window_while_the_secondary_s_is_zero() {
    let mut c = comparator();
    c.handle_secondary(t(0), seg(1, 700, 0, b"reply"));
    c.handle_primary(t(0), seg(1, 700, 8192, b"reply"));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 1, "the data matched");
    assert_eq!(ack_window(&out[0]), (700, 0));
    assert_eq!(&out[0][out[0].len() - 5..], b"reply", "payload untouched");
}

#[test]
fn scaled_windows_are_compared_in_bytes_and_rounded_down_to_the_primary_s_unit() {
    let mut c = comparator();
    // SYN-ACK windows are never scaled; both guests announce a shift of 7.
    c.handle_primary(t(0), syn_ack(99, 5000, 1000, 7));
    c.handle_secondary(t(0), syn_ack(99, 5000, 1000, 7));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 1);
    assert_eq!(ack_window(&out[0]), (5000, 1000), "equal edges: untouched");
    // Secondary: ack 5300, window 50 << 7 = 6400, right edge 11700. Primary: ack 5000,
    // window 100 << 7, right edge 17800. Clamped: (11700 - 5000) >> 7 = 52 (6656 bytes,
    // edge 11656, at or below the secondary's).
    c.handle_secondary(t(1), seg(100, 5300, 50, &[]));
    c.handle_primary(t(1), seg(100, 5000, 100, &[]));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 1);
    assert_eq!(ack_window(&out[0]), (5000, 52));
}

#[test]
fn a_syn_ack_with_a_larger_window_than_the_secondary_s_is_clamped_unscaled() {
    let mut c = comparator();
    c.handle_secondary(t(0), syn_ack(99, 5000, 1000, 7));
    c.handle_primary(t(0), syn_ack(99, 5000, 64240, 7));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 1);
    assert_eq!(ack_window(&out[0]), (5000, 1000));
}

#[test]
fn after_a_checkpoint_the_secondary_s_edge_is_the_primary_s() {
    let mut c = comparator();
    c.handle_primary(t(0), seg(1, 1000, 0, &[]));
    c.handle_secondary(t(0), seg(1, 1000, 0, &[]));
    settle(&mut c);
    let update = seg(1, 1000, 32768, &[]);
    c.handle_primary(t(1), update.clone());
    assert!(releases(&settle(&mut c)).is_empty());
    // The held update times out: a checkpoint covers it and leaves it as sent.
    c.handle_timeout(t(1) + CompareConfig::default().compare_timeout);
    assert_eq!(
        requests(&settle(&mut c)),
        vec![CheckpointReason::CompareTimeout]
    );
    c.checkpoint_done(t(4000));
    assert_eq!(releases(&settle(&mut c)), vec![update.clone()]);
    // The secondary is now the primary's copy: the same window again is not held.
    c.handle_primary(t(4001), seg(1, 1000, 32768, &[]));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    assert_eq!(c.stats().windows_clamped, 0);
}

#[test]
fn without_the_secondary_nothing_is_clamped() {
    let mut c = comparator();
    c.handle_secondary(t(0), seg(1, 1000, 0, &[]));
    c.release_all(t(1));
    let frame = seg(1, 1000, 65535, &[]);
    c.handle_primary(t(2), frame.clone());
    assert_eq!(releases(&settle(&mut c)), vec![frame]);
}

/// One step of the property test: which side sends, the ACK advance and the window.
#[derive(Clone, Debug)]
struct Step {
    primary: bool,
    advance: u16,
    window: u16,
    payload: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (any::<bool>(), 0u16..3000, any::<u16>(), any::<bool>()).prop_map(
        |(primary, advance, window, payload)| Step {
            primary,
            advance,
            window,
            payload,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever both guests advertise, in whatever interleaving, with or without window
    /// scaling: every frame released while comparing advertises a right edge at or below the
    /// one the secondary advertised last before it, with a valid checksum; and a checkpoint
    /// then releases everything still held.
    #[test]
    fn a_released_right_edge_never_exceeds_the_secondary_s(
        steps in prop::collection::vec(step(), 1..60),
        base in any::<u32>(),
        shift in 0u8..=14,
    ) {
        let mut c = comparator();
        c.handle_primary(t(0), syn_ack(base, base, 1000, shift));
        c.handle_secondary(t(0), syn_ack(base, base, 1000, shift));
        let mut out = settle(&mut c);
        // The ACK each side has reached, and the secondary's highest edge so far.
        let (mut p_ack, mut s_ack) = (SeqNum(base), SeqNum(base));
        let mut s_edge = SeqNum(base).wrapping_add(1000);
        let mut primary_frames = 1;
        // The primary's latest edge, and the highest edge and ACK the client was told.
        let mut p_edge = SeqNum(base).wrapping_add(1000);
        let (mut told, mut told_ack): (Option<SeqNum>, Option<SeqNum>) = (None, None);
        let mut seq = base.wrapping_add(1);
        let mut now = 1;
        let check = |out: &[CompareOutput], s_edge: SeqNum| -> Result<(), TestCaseError> {
            for frame in releases(out).into_iter().chain(updates(out)) {
                let info = tcp_info(&frame);
                // A SYN's window is never scaled.
                let unit = if info.has(SYN) { 0 } else { shift };
                let right = info.ack.wrapping_add(u32::from(info.window) << unit);
                prop_assert!(!s_edge.before(right), "released edge {:?} beyond the secondary's {:?}", right, s_edge);
            }
            Ok(())
        };
        check(&out, s_edge)?;
        for frame in releases(&out) {
            let info = tcp_info(&frame);
            told = Some(info.ack.wrapping_add(u32::from(info.window)));
            told_ack = Some(info.ack);
        }
        for s in &steps {
            now += 1;
            let payload: &[u8] = if s.payload { b"xy" } else { &[] };
            if s.primary {
                p_ack = p_ack.wrapping_add(u32::from(s.advance));
                p_edge = p_ack.wrapping_add(u32::from(s.window) << shift);
                c.handle_primary(t(now), seg(seq, p_ack.0, s.window, payload));
                primary_frames += 1;
            } else {
                s_ack = s_ack.wrapping_add(u32::from(s.advance));
                s_edge = s_ack.wrapping_add(u32::from(s.window) << shift);
                c.handle_secondary(t(now), seg(seq, s_ack.0, s.window, payload));
            }
            if s.payload && s.primary {
                // The secondary sends the same bytes next; its own segment follows.
                c.handle_secondary(t(now), seg(seq, s_ack.0, s.window, payload));
                s_edge = s_ack.wrapping_add(u32::from(s.window) << shift);
                seq = seq.wrapping_add(2);
            } else if s.payload {
                c.handle_primary(t(now), seg(seq, p_ack.0, 0, payload));
                p_edge = p_ack;
                primary_frames += 1;
                seq = seq.wrapping_add(2);
            }
            let step_out = settle(&mut c);
            check(&step_out, s_edge)?;
            // Liveness (`window_update`): with nothing held, the client has been told the
            // lower of both guests' edges (to the primary's scale unit, within what one
            // window field can say past the released ACK).
            for frame in releases(&step_out).into_iter().chain(updates(&step_out)) {
                let info = tcp_info(&frame);
                let unit = if info.has(SYN) { 0 } else { shift };
                let right = info.ack.wrapping_add(u32::from(info.window) << unit);
                told = Some(told.map_or(right, |e: SeqNum| e.max_seq(right)));
                told_ack = Some(told_ack.map_or(info.ack, |a: SeqNum| a.max_seq(info.ack)));
            }
            if c.stats().held_primary == 0
                && let (Some(told), Some(ack)) = (told, told_ack)
            {
                let most = ack.wrapping_add(u32::from(u16::MAX) << shift);
                let owed = p_edge.min_seq(s_edge).min_seq(most);
                prop_assert!(
                    !told.before(owed) || SeqNum::offset_to(told, owed) < (1u32 << shift),
                    "the client was told {:?}, both guests offer {:?}", told, owed
                );
            }
            out.extend(step_out);
        }
        c.checkpoint_done(t(now + 1));
        out.extend(settle(&mut c));
        prop_assert_eq!(releases(&out).len(), primary_frames);
        prop_assert_eq!(c.stats().held_primary, 0);
    }
}
