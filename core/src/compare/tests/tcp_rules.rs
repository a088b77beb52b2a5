//! Tests of the TCP rules: stream alignment, the min-ACK guard, uncompared segments,
//! retransmissions and the stream reset at a checkpoint.

use super::*;
use crate::packet::tcp_flags::{ACK, FIN, PSH, RST, SYN};

#[test]
fn identical_streams_are_released_in_order() {
    let mut c = comparator();
    let (a, b) = (data(1, b"hello "), data(7, b"world"));
    c.handle_primary(t(0), a.clone());
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "held until the secondary agrees"
    );
    c.handle_secondary(t(0), a.clone());
    c.handle_primary(t(1), b.clone());
    c.handle_secondary(t(1), b.clone());
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![a, b]);
    assert!(requests(&out).is_empty());
    assert_eq!(c.stats().released_matched, 2);
    assert_eq!(c.stats().secondary_matched, 2);
    assert_eq!(c.stats().bytes_matched, 11);
}

#[test]
fn different_segmentation_still_matches() {
    let mut c = comparator();
    let stream = b"0123456789abcdefghij";
    // Primary: three segments; secondary: one segment, then the reverse.
    let p: Vec<_> = [(0, 7), (7, 14), (14, 20)]
        .iter()
        .map(|&(s, e)| data(100 + s as u32, &stream[s..e]))
        .collect();
    for f in &p {
        c.handle_primary(t(0), f.clone());
    }
    c.handle_secondary(t(1), data(100, stream));
    assert_eq!(releases(&settle(&mut c)), p);

    let whole = data(120, stream);
    c.handle_primary(t(2), whole.clone());
    c.handle_secondary(t(2), data(120, &stream[..5]));
    c.handle_secondary(t(2), data(125, &stream[5..19]));
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "one byte still unmatched"
    );
    c.handle_secondary(t(3), data(139, &stream[19..]));
    assert_eq!(releases(&settle(&mut c)), vec![whole]);
    assert!(c.stats().is_conserved());
    assert_eq!(c.stats().held_secondary, 0);
}

#[test]
fn tcp_headers_options_ttl_and_window_are_ignored() {
    // Headers are not compared. (A secondary window smaller than the primary's would lower
    // the released window, `window.rs`; here the secondary's is the larger one.)
    let mut c = comparator();
    let p = testkit::tcp(
        &Headers {
            window: 7,
            ..Headers::default()
        },
        1,
        1,
        ACK | PSH,
        b"payload",
    );
    let s = testkit::tcp(
        &Headers {
            ttl: 1,
            window: 9000,
            ..Headers::default()
        },
        1,
        1,
        ACK,
        b"payload",
    );
    c.handle_primary(t(0), p.clone());
    c.handle_secondary(t(0), s);
    assert_eq!(releases(&settle(&mut c)), vec![p]);
}

#[test]
fn miscompare_triggers_checkpoint() {
    let mut c = comparator();
    let p = data(1000, b"abcdef");
    c.handle_primary(t(0), p.clone());
    c.handle_secondary(t(0), data(1000, b"abcXef"));
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    assert!(out.iter().any(|o| matches!(
        o,
        CompareOutput::Miscompare {
            why: MiscompareWhy {
                offset: 3,
                reason: MismatchReason::TcpPayload { seq: SeqNum(1003) }
            },
            ..
        }
    )));
    c.checkpoint_done(t(1));
    assert_eq!(releases(&settle(&mut c)), vec![p]);
}

#[test]
fn matched_prefix_is_released_before_the_difference() {
    let mut c = comparator();
    let (a, b) = (data(1, b"good"), data(5, b"bad!"));
    c.handle_primary(t(0), a.clone());
    c.handle_primary(t(0), b.clone());
    c.handle_secondary(t(0), data(1, b"goodBAD!"));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![a]);
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    c.checkpoint_done(t(1));
    assert_eq!(releases(&settle(&mut c)), vec![b]);
}

#[test]
fn min_ack_guard_holds_a_segment_the_secondary_has_not_acked() {
    let mut c = comparator();
    let h = Headers::default();
    let p = testkit::tcp(&h, 1, 500, ACK | PSH, b"reply");
    c.handle_primary(t(0), p.clone());
    // Same bytes, but the secondary has only acknowledged up to 400.
    c.handle_secondary(t(0), testkit::tcp(&h, 1, 400, ACK | PSH, b"reply"));
    assert!(releases(&settle(&mut c)).is_empty());
    assert_eq!(c.stats().held_primary, 1);
    // The secondary's pure ACK catches up: dropped itself, but it raises the secondary's ACK.
    c.handle_secondary(t(1), pure_ack(6, 500));
    assert_eq!(releases(&settle(&mut c)), vec![p]);
    assert_eq!(c.stats().secondary_dropped_zero_payload, 1);
}

#[test]
fn pure_ack_is_held_until_the_secondary_acks() {
    let mut c = comparator();
    let ack = pure_ack(1, 77);
    c.handle_primary(t(0), ack.clone());
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "the secondary has not acknowledged the client's bytes up to 77"
    );
    assert_eq!(c.stats().uncompared_held, 1);
    assert_eq!(
        c.poll_timeout(),
        Some(t(0) + c.config().compare_timeout),
        "a held pure ACK has a deadline"
    );
    // A secondary ACK below 77 is not enough.
    c.handle_secondary(t(1), pure_ack(1, 70));
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(2), pure_ack(1, 77));
    assert_eq!(releases(&settle(&mut c)), vec![ack]);
    assert_eq!(c.stats().released_uncompared, 1);
    assert_eq!(c.stats().secondary_dropped_zero_payload, 2);
    // Once the secondary is ahead, a primary pure ACK passes at once.
    let later = pure_ack(1, 60);
    c.handle_primary(t(3), later.clone());
    assert_eq!(releases(&settle(&mut c)), vec![later]);
    assert_eq!(c.stats().uncompared_held, 1);
}

#[test]
fn syn_ack_is_held_until_the_secondary_sends_its_syn_ack() {
    let mut c = comparator();
    let h = Headers::default();
    let syn_ack = testkit::tcp(&h, 999, 5, SYN | ACK, &[]);
    c.handle_primary(t(0), syn_ack.clone());
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "the secondary may never have seen the client's SYN"
    );
    c.handle_secondary(t(1), testkit::tcp(&h, 999, 5, SYN | ACK, &[]));
    assert_eq!(releases(&settle(&mut c)), vec![syn_ack]);
}

#[test]
fn held_pure_ack_is_released_by_checkpoint_done() {
    let mut c = comparator();
    let ack = pure_ack(1, 500);
    c.handle_primary(t(0), ack.clone());
    c.handle_secondary(t(0), pure_ack(1, 400));
    assert!(releases(&settle(&mut c)).is_empty());
    c.checkpoint_done(t(1));
    assert_eq!(releases(&settle(&mut c)), vec![ack]);
    assert_eq!(c.stats().released_by_checkpoint, 1);
    // The secondary is now a copy of the primary: it has acknowledged up to 500 too.
    let next = pure_ack(1, 500);
    c.handle_primary(t(2), next.clone());
    assert_eq!(releases(&settle(&mut c)), vec![next]);
}

#[test]
fn held_pure_ack_times_out_into_a_checkpoint_that_releases_it() {
    let mut c = comparator();
    let ack = pure_ack(1, 500);
    c.handle_primary(t(0), ack.clone());
    settle(&mut c);
    let deadline = c
        .poll_timeout()
        .expect("a held frame always has a deadline");
    assert_eq!(deadline, t(0) + c.config().compare_timeout);
    c.handle_timeout(deadline);
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::CompareTimeout]);
    c.checkpoint_done(deadline + Duration::from_millis(5));
    assert_eq!(releases(&settle(&mut c)), vec![ack]);
}

#[test]
fn held_pure_ack_is_released_by_release_all() {
    let mut c = comparator();
    let ack = pure_ack(1, 500);
    c.handle_primary(t(0), ack.clone());
    settle(&mut c);
    c.release_all(t(1));
    assert_eq!(releases(&settle(&mut c)), vec![ack]);
    assert_eq!(c.stats().released_solo, 1);
}

#[test]
fn fin_ack_is_guarded_and_waits_behind_held_data() {
    let mut c = comparator();
    let h = Headers::default();
    let reply = testkit::tcp(&h, 1, 20, ACK | PSH, b"bye");
    let fin = testkit::tcp(&h, 4, 20, FIN | ACK, &[]);
    c.handle_primary(t(0), reply.clone());
    c.handle_primary(t(0), fin.clone());
    assert!(releases(&settle(&mut c)).is_empty());
    // The secondary's data matches but acknowledges only up to 10: both stay held.
    c.handle_secondary(t(1), testkit::tcp(&h, 1, 10, ACK | PSH, b"bye"));
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(2), testkit::tcp(&h, 4, 20, FIN | ACK, &[]));
    assert_eq!(releases(&settle(&mut c)), vec![reply, fin]);
}

#[test]
fn a_held_pure_ack_is_not_overtaken_by_later_segments() {
    let mut c = comparator();
    let h = Headers::default();
    // The ACK for client bytes up to 50 waits for the secondary.
    let ack = testkit::tcp(&h, 1, 50, ACK, &[]);
    c.handle_primary(t(0), ack.clone());
    // A later data segment acknowledging less is matched, but must not overtake the ACK.
    let reply = testkit::tcp(&h, 1, 40, ACK | PSH, b"data");
    c.handle_primary(t(1), reply.clone());
    c.handle_secondary(t(1), testkit::tcp(&h, 1, 40, ACK | PSH, b"data"));
    assert!(releases(&settle(&mut c)).is_empty());
    // Likewise a pure ACK acknowledging less, and an RST (never ACK-guarded).
    let small = testkit::tcp(&h, 5, 30, ACK, &[]);
    let rst = testkit::tcp(&h, 5, 0, RST, &[]);
    c.handle_primary(t(2), small.clone());
    c.handle_primary(t(2), rst.clone());
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(3), testkit::tcp(&h, 5, 0, RST, &[]));
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(3), testkit::tcp(&h, 5, 50, ACK, &[]));
    assert_eq!(releases(&settle(&mut c)), vec![ack, reply, small, rst]);
}

#[test]
fn rst_and_a_syn_without_ack_pass_the_ack_guard_once_the_secondary_sent_them() {
    let mut c = comparator();
    let h = Headers::default();
    // The secondary's SYN (its own ISN: the rewriter cannot map it yet) came first.
    c.handle_secondary(t(0), testkit::tcp(&h, 7777, 0, SYN, &[]));
    let syn = testkit::tcp(&h, 99, 0, SYN, &[]);
    c.handle_primary(t(0), syn.clone());
    assert_eq!(releases(&settle(&mut c)), vec![syn]);
    // No ACK from the secondary at all: the RST's ACK is not guarded, its flag is.
    c.handle_secondary(t(1), testkit::tcp(&h, 100, 7, RST | ACK, &[]));
    let rst = testkit::tcp(&h, 100, 7, RST | ACK, &[]);
    c.handle_primary(t(1), rst.clone());
    assert_eq!(releases(&settle(&mut c)), vec![rst]);
    assert_eq!(c.stats().uncompared_held, 0);
}

#[test]
fn syn_is_released_and_anchors_the_stream() {
    let mut c = comparator();
    let h = Headers::default();
    let syn_ack = testkit::tcp(&h, 999, 5, SYN | ACK, &[]);
    c.handle_primary(t(0), syn_ack.clone());
    c.handle_secondary(t(0), testkit::tcp(&h, 999, 5, SYN | ACK, &[]));
    assert_eq!(releases(&settle(&mut c)), vec![syn_ack]);
    // Data starts at ISN + 1; a secondary segment starting later leaves a hole the primary
    // must not skip.
    let first = testkit::tcp(&h, 1000, 5, ACK, b"first");
    c.handle_secondary(t(1), testkit::tcp(&h, 1005, 5, ACK, b"second"));
    c.handle_primary(t(1), testkit::tcp(&h, 1005, 5, ACK, b"second"));
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "1000..1005 not yet seen"
    );
    c.handle_primary(t(2), first.clone());
    c.handle_secondary(t(2), testkit::tcp(&h, 1000, 5, ACK, b"first"));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], first, "stream order, not arrival order");
}

#[test]
fn retransmission_of_released_data_is_released_uncompared() {
    let mut c = comparator();
    let seg = data(1, b"once");
    c.handle_primary(t(0), seg.clone());
    c.handle_secondary(t(0), seg.clone());
    settle(&mut c);
    c.handle_primary(t(1), seg.clone());
    assert_eq!(releases(&settle(&mut c)), vec![seg.clone()]);
    c.handle_secondary(t(1), seg);
    settle(&mut c);
    assert_eq!(c.stats().released_uncompared, 1);
    assert_eq!(c.stats().secondary_dropped_retransmit, 1);
    assert_eq!(c.stats().held_primary + c.stats().held_secondary, 0);
}

#[test]
fn partial_retransmission_compares_only_new_bytes() {
    let mut c = comparator();
    c.handle_primary(t(0), data(1, b"abc"));
    c.handle_secondary(t(0), data(1, b"abc"));
    settle(&mut c);
    // Primary resends 1..4 together with new bytes 4..6; the secondary sends only the new ones.
    let p = data(1, b"abcde");
    c.handle_primary(t(1), p.clone());
    c.handle_secondary(t(1), data(4, b"de"));
    assert_eq!(releases(&settle(&mut c)), vec![p]);
}

#[test]
fn checkpoint_resets_both_streams_to_the_primary_position() {
    let mut c = comparator();
    let h = Headers::default();
    c.handle_primary(t(0), testkit::tcp(&h, 1, 10, ACK, b"primary-ahead"));
    c.handle_secondary(t(0), testkit::tcp(&h, 1, 10, ACK, b"secondary-dif"));
    settle(&mut c);
    c.checkpoint_done(t(1));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    // The secondary is now a copy of the primary: it continues at 14, like the primary, and
    // its stale bytes below 14 are dropped as already released.
    c.handle_secondary(t(2), testkit::tcp(&h, 1, 10, ACK, b"primary-ahead"));
    let next = testkit::tcp(&h, 14, 10, ACK, b"next");
    c.handle_primary(t(2), next.clone());
    c.handle_secondary(t(2), testkit::tcp(&h, 14, 10, ACK, b"next"));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![next]);
    assert!(requests(&out).is_empty());
    assert_eq!(c.stats().secondary_dropped_retransmit, 1);
}

#[test]
fn ipv6_tcp_is_compared_like_ipv4() {
    let mut c = comparator();
    let h = Headers {
        ipv6: true,
        ..Headers::default()
    };
    let p = testkit::tcp(&h, 1, 1, ACK, b"v6 payload");
    c.handle_primary(t(0), p.clone());
    c.handle_secondary(t(0), testkit::tcp(&h, 1, 1, ACK, b"v6 payload"));
    assert_eq!(releases(&settle(&mut c)), vec![p]);
    c.handle_primary(t(1), testkit::tcp(&h, 11, 1, ACK, b"x"));
    c.handle_secondary(t(1), testkit::tcp(&h, 11, 1, ACK, b"y"));
    assert_eq!(
        requests(&settle(&mut c)),
        vec![CheckpointReason::Miscompare]
    );
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut c = comparator();
    let start = u32::MAX - 3;
    let p = data(start, b"wrapping");
    c.handle_primary(t(0), p.clone());
    c.handle_secondary(t(0), data(start, b"wrap"));
    c.handle_secondary(t(0), data(0, b"ping"));
    assert_eq!(releases(&settle(&mut c)), vec![p]);
    assert_eq!(c.stats().held_secondary, 0);
}

#[test]
fn bytes_below_a_mid_stream_start_are_compared_not_assumed_released() {
    let mut c = comparator();
    // No SYN seen: the flow is picked up at 100.
    c.handle_primary(t(0), data(100, b"0123456789"));
    c.handle_secondary(t(0), data(100, b"0123456789"));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    // A late primary segment below 100 was never released: it must be compared.
    let late = data(90, b"abcdefghij");
    c.handle_primary(t(1), late.clone());
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(1), data(90, b"abcdefghij"));
    assert_eq!(releases(&settle(&mut c)), vec![late.clone()]);
    // Now 90..110 is released: a second copy is a retransmission.
    c.handle_primary(t(2), late.clone());
    assert_eq!(releases(&settle(&mut c)), vec![late]);
    assert_eq!(c.stats().released_uncompared, 1);
    assert_eq!(c.stats().held_secondary, 0);
}

#[test]
fn a_syn_with_a_new_isn_restarts_verification() {
    let mut c = comparator();
    let h = Headers::default();
    // Held data the secondary has not acknowledged enough to release.
    let held = testkit::tcp(&h, 100, 9, ACK, b"0123456789");
    c.handle_primary(t(0), held.clone());
    // A SYN-ACK at 200: bytes below 201 count as covered and the segment is verified.
    c.handle_primary(t(1), testkit::tcp(&h, 200, 1, SYN | ACK, &[]));
    // A new SYN-ACK at 103 (a new connection on the same ports) covers only bytes below 104.
    c.handle_primary(t(2), testkit::tcp(&h, 103, 1, SYN | ACK, &[]));
    c.handle_secondary(t(2), testkit::tcp(&h, 5000, 1, SYN | ACK, &[]));
    // The secondary's ACK opens the guard, but 104..110 must now be compared first; the
    // SYN-ACKs (held by the guard until now) stay behind it in stream order.
    c.handle_secondary(t(3), pure_ack(1, 9));
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(4), testkit::tcp(&h, 104, 9, ACK, b"456789"));
    let out = releases(&settle(&mut c));
    assert_eq!(out.len(), 3);
    assert_eq!(out[0], held);
}

#[test]
fn matched_secondary_buffers_are_kept_for_reuse() {
    let mut c = comparator();
    assert!(c.take_spare_buffer().is_none());
    c.handle_primary(t(0), data(1, b"reuse me"));
    c.handle_secondary(t(0), data(1, b"reuse me"));
    c.handle_secondary(t(0), pure_ack(9, 1));
    settle(&mut c);
    for _ in 0..2 {
        let buffer = c.take_spare_buffer().expect("a spare buffer");
        assert!(buffer.is_empty() && buffer.capacity() >= 54);
    }
    assert!(c.take_spare_buffer().is_none());
}

#[test]
fn a_held_retransmission_is_compared_again_after_a_new_syn() {
    let mut c = comparator();
    let h = Headers::default();
    c.handle_primary(t(0), testkit::tcp(&h, 1, 1, ACK, b"abcd"));
    c.handle_secondary(t(0), testkit::tcp(&h, 1, 1, ACK, b"abcd"));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    // A retransmission of released bytes, acknowledging more than the secondary did: held.
    let again = testkit::tcp(&h, 1, 50, ACK, b"abcd");
    c.handle_primary(t(1), again.clone());
    assert!(releases(&settle(&mut c)).is_empty());
    // A SYN-ACK with ISN 0 starts a new connection: 1..5 is no longer known to be released.
    let syn_ack = testkit::tcp(&h, 0, 50, SYN | ACK, &[]);
    c.handle_primary(t(2), syn_ack.clone());
    c.handle_secondary(t(2), testkit::tcp(&h, 9000, 50, SYN | ACK, &[]));
    c.handle_secondary(t(3), pure_ack(1, 50));
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "the guard allows it now, but its bytes must be compared first"
    );
    c.handle_secondary(t(4), testkit::tcp(&h, 1, 50, ACK, b"abcd"));
    assert_eq!(releases(&settle(&mut c)), vec![again, syn_ack]);
}
