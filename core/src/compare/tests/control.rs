//! Tests of the control-segment rule (issue 14): a primary segment carrying SYN, FIN or RST
//! leaves only once the secondary sent the same flag at the same stream position, or a
//! checkpoint covered it; and of the retransmission check: a primary retransmission must carry
//! the bytes already released.

use super::*;
use crate::packet::tcp_flags::{ACK, FIN, PSH, RST, SYN};
use crate::rewrite::{Rewriter, RewriterConfig};

fn seg(seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    testkit::tcp(&Headers::default(), seq, ack, flags, payload)
}

fn miscompare_reasons(out: &[CompareOutput]) -> Vec<MismatchReason> {
    out.iter()
        .filter_map(|o| match o {
            CompareOutput::Miscompare { why, .. } => Some(why.reason),
            _ => None,
        })
        .collect()
}

/// The trace: the secondary's pure ACK already covers the FIN's ACK, so the min-ACK
/// guard is satisfied, but the secondary has not closed yet.
#[test]
fn a_fin_waits_for_the_secondary_fin_although_its_ack_is_covered() {
    let mut c = comparator();
    c.handle_primary(t(0), data(1, b"bye"));
    c.handle_secondary(t(0), data(1, b"bye"));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    c.handle_secondary(t(1), pure_ack(4, 1));
    let fin = seg(4, 1, FIN | ACK, &[]);
    c.handle_primary(t(2), fin.clone());
    assert!(releases(&settle(&mut c)).is_empty(), "held for the FIN");
    assert_eq!(c.poll_timeout(), Some(t(3002)), "and it has a deadline");
    c.handle_secondary(t(550), seg(4, 1, FIN | ACK, &[]));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![fin]);
    assert!(requests(&out).is_empty());
}

#[test]
fn a_fin_the_secondary_never_sends_times_out_into_a_checkpoint_that_releases_it() {
    let mut c = comparator();
    let fin = seg(4, 1, FIN | ACK, &[]);
    c.handle_secondary(t(0), pure_ack(4, 1));
    c.handle_primary(t(0), fin.clone());
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_timeout(t(3000));
    assert_eq!(
        requests(&settle(&mut c)),
        vec![CheckpointReason::CompareTimeout]
    );
    c.checkpoint_done(t(3100));
    assert_eq!(releases(&settle(&mut c)), vec![fin.clone()]);
    // The checkpoint gave the secondary the primary's close: a retransmitted FIN leaves.
    let again = seg(4, 1, FIN | ACK, &[]);
    c.handle_primary(t(3200), again.clone());
    assert_eq!(releases(&settle(&mut c)), vec![again]);
}

#[test]
fn an_rst_without_ack_waits_for_the_secondary_rst_at_the_same_position() {
    let mut c = comparator();
    let rst = seg(40, 0, RST, &[]);
    c.handle_primary(t(0), rst.clone());
    assert!(releases(&settle(&mut c)).is_empty());
    // An RST elsewhere (an answer to another segment) does not release it.
    c.handle_secondary(t(1), seg(90, 0, RST, &[]));
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(2), seg(40, 0, RST, &[]));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![rst]);
    assert!(requests(&out).is_empty());
}

#[test]
fn an_rst_with_ack_needs_the_secondary_rst_but_not_its_ack() {
    let mut c = comparator();
    // The secondary resets first, acknowledging less than the primary will.
    c.handle_secondary(t(0), seg(7, 3, RST | ACK, &[]));
    let rst = seg(7, 900, RST | ACK, &[]);
    c.handle_primary(t(1), rst.clone());
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![rst]);
    assert_eq!(c.stats().released_uncompared, 1);
}

#[test]
fn a_fin_carried_on_data_leaves_with_the_secondary_fin_on_its_own_segment() {
    let mut c = comparator();
    let last = seg(1, 1, FIN | ACK | PSH, b"last words");
    c.handle_primary(t(0), last.clone());
    // The secondary sends the same bytes without FIN: the bytes match, the FIN is missing.
    c.handle_secondary(t(1), seg(1, 1, ACK | PSH, b"last words"));
    assert!(releases(&settle(&mut c)).is_empty());
    c.handle_secondary(t(2), seg(11, 1, FIN | ACK, &[]));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![last]);
    assert!(requests(&out).is_empty());
    assert_eq!(c.stats().released_matched, 1);
}

#[test]
fn a_fin_on_data_matches_a_secondary_fin_on_data_through_the_fast_path_too() {
    let mut c = comparator();
    c.handle_primary(t(0), data(1, b"abc"));
    c.handle_secondary(t(0), data(1, b"abc"));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    let hits = c.fast_hits();
    let last = seg(4, 1, FIN | ACK, b"end");
    c.handle_primary(t(1), last.clone());
    c.handle_secondary(t(1), seg(4, 1, FIN | ACK, b"end"));
    assert_eq!(releases(&settle(&mut c)), vec![last]);
    assert!(c.fast_hits() > hits, "the pair completed on arrival");
}

#[test]
fn a_retransmitted_fin_leaves_on_the_secondary_fin_already_seen() {
    let mut c = comparator();
    let fin = seg(4, 1, FIN | ACK, &[]);
    c.handle_primary(t(0), fin.clone());
    c.handle_secondary(t(0), seg(4, 1, FIN | ACK, &[]));
    assert_eq!(releases(&settle(&mut c)), vec![fin]);
    let again = seg(4, 1, FIN | ACK, &[]);
    c.handle_primary(t(200), again.clone());
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![again]);
    assert!(requests(&out).is_empty());
}

/// Both ends close at once: the guest's FIN crosses the client's, then the guest acknowledges
/// the client's FIN with a pure ACK one past its own FIN.
#[test]
fn a_simultaneous_close_releases_fin_then_ack_in_order() {
    let mut c = comparator();
    let fin = seg(50, 20, FIN | ACK, &[]);
    let ack_of_client_fin = seg(51, 21, ACK, &[]);
    c.handle_primary(t(0), fin.clone());
    c.handle_primary(t(0), ack_of_client_fin.clone());
    // The secondary acknowledges the client's FIN first, then its FIN arrives.
    c.handle_secondary(t(1), seg(51, 21, ACK, &[]));
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "the ACK must not overtake the held FIN"
    );
    c.handle_secondary(t(2), seg(50, 20, FIN | ACK, &[]));
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![fin, ack_of_client_fin]);
    assert!(requests(&out).is_empty());
}

#[test]
fn a_fin_where_the_secondary_closed_elsewhere_is_a_miscompare() {
    let mut c = comparator();
    c.handle_secondary(t(0), seg(9, 1, FIN | ACK, &[]));
    c.handle_primary(t(1), seg(12, 1, FIN | ACK, &[]));
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    assert_eq!(
        miscompare_reasons(&out),
        vec![MismatchReason::TcpControl {
            seq: crate::packet::SeqNum(12),
            flags: FIN,
        }]
    );
}

#[test]
fn an_rst_where_the_secondary_sent_a_fin_is_a_miscompare() {
    let mut c = comparator();
    let rst = seg(30, 0, RST, &[]);
    c.handle_primary(t(0), rst.clone());
    c.handle_secondary(t(1), seg(30, 5, FIN | ACK, &[]));
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    c.checkpoint_done(t(2));
    assert_eq!(releases(&settle(&mut c)), vec![rst]);
}

/// A client-opened connection: the SVM's SYN-ACK leaves with the SVM's own ISN (the rewriter
/// learns the offset only from the client's ACK), yet it matches the primary's; the data after
/// the handshake reaches the comparator in primary numbering and matches byte for byte.
#[test]
fn a_syn_ack_with_another_isn_matches_and_the_rewriter_aligns_what_follows() {
    const CLIENT_ISN: u32 = 700;
    const PVM_ISN: u32 = 1_000_000;
    const SVM_ISN: u32 = 4_000_000_000;
    let h = Headers::default();
    let client_frame = |seq: u32, ack: u32, syn: bool| {
        let b = etherparse::PacketBuilder::ethernet2(testkit::CLIENT_MAC, testkit::VM_MAC)
            .ipv4(testkit::CLIENT_IP4, testkit::VM_IP4, 64)
            .tcp(h.dst_port, h.src_port, seq, 65535);
        let b = if syn { b.syn() } else { b.ack(ack) };
        let mut f = Vec::new();
        b.write(&mut f, &[]).expect("a bounded frame");
        f
    };
    let mut rw = Rewriter::new(RewriterConfig::default());
    let mut c = comparator();
    let mut syn = client_frame(CLIENT_ISN, 0, true);
    rw.rewrite_inbound(t(0), &mut syn);

    let pvm_syn_ack = testkit::tcp(&h, PVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[]);
    let mut svm_syn_ack = testkit::tcp(&h, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[]);
    rw.rewrite_outbound(t(1), &mut svm_syn_ack);
    c.handle_primary(t(1), pvm_syn_ack.clone());
    c.handle_secondary(t(1), svm_syn_ack);
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![pvm_syn_ack]);
    assert!(requests(&out).is_empty());

    // The client's ACK (in primary numbering) teaches the rewriter the offset.
    let mut ack = client_frame(CLIENT_ISN + 1, PVM_ISN + 1, false);
    rw.rewrite_inbound(t(2), &mut ack);
    let reply = testkit::tcp(&h, PVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello");
    let mut svm_reply = testkit::tcp(&h, SVM_ISN + 1, CLIENT_ISN + 1, ACK | PSH, b"hello");
    rw.rewrite_outbound(t(3), &mut svm_reply);
    c.handle_primary(t(3), reply.clone());
    c.handle_secondary(t(3), svm_reply);
    let fin = testkit::tcp(&h, PVM_ISN + 6, CLIENT_ISN + 1, FIN | ACK, &[]);
    let mut svm_fin = testkit::tcp(&h, SVM_ISN + 6, CLIENT_ISN + 1, FIN | ACK, &[]);
    rw.rewrite_outbound(t(4), &mut svm_fin);
    c.handle_primary(t(4), fin.clone());
    c.handle_secondary(t(4), svm_fin);
    let out = settle(&mut c);
    assert_eq!(releases(&out), vec![reply, fin]);
    assert!(requests(&out).is_empty());
}

#[test]
fn a_syn_ack_for_another_client_isn_waits() {
    let mut c = comparator();
    c.handle_secondary(t(0), seg(5000, 71, SYN | ACK, &[]));
    let syn_ack = seg(100, 70, SYN | ACK, &[]);
    c.handle_primary(t(0), syn_ack.clone());
    c.handle_secondary(t(0), pure_ack(5001, 71));
    assert!(
        releases(&settle(&mut c)).is_empty(),
        "the secondary answered another SYN"
    );
    c.handle_secondary(t(1), seg(5000, 70, SYN | ACK, &[]));
    assert_eq!(releases(&settle(&mut c)), vec![syn_ack]);
}

#[test]
fn a_retransmission_with_other_bytes_is_held_as_a_miscompare() {
    let mut c = comparator();
    c.handle_primary(t(0), data(1, b"original"));
    c.handle_secondary(t(0), data(1, b"original"));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    let changed = data(1, b"origiNAL");
    c.handle_primary(t(1), changed.clone());
    let out = settle(&mut c);
    assert!(releases(&out).is_empty(), "not a silent release");
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
    assert_eq!(
        miscompare_reasons(&out),
        vec![MismatchReason::TcpPayload {
            seq: crate::packet::SeqNum(6)
        }]
    );
    c.checkpoint_done(t(2));
    assert_eq!(releases(&settle(&mut c)), vec![changed]);
    // An identical retransmission still leaves uncompared.
    let same = data(1, b"original");
    c.handle_primary(t(3), same.clone());
    assert_eq!(releases(&settle(&mut c)), vec![same]);
}

#[test]
fn a_partial_retransmission_is_checked_on_its_released_part() {
    let mut c = comparator();
    c.handle_primary(t(0), data(1, b"abcd"));
    c.handle_secondary(t(0), data(1, b"abcd"));
    settle(&mut c);
    // 3..5 was released as "cd"; this segment says "cX" there, then new bytes.
    c.handle_primary(t(1), data(3, b"cXef"));
    c.handle_secondary(t(1), data(5, b"ef"));
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
}

#[test]
fn a_retransmission_older_than_the_history_is_held_for_a_checkpoint() {
    let mut c = Comparator::new(CompareConfig {
        retransmit_history: 4,
        ..CompareConfig::default()
    })
    .expect("valid config");
    c.handle_primary(t(0), data(1, b"0123456789"));
    c.handle_secondary(t(0), data(1, b"0123456789"));
    settle(&mut c);
    // The last 4 released bytes (7..11) are kept and checked.
    let recent = data(7, b"6789");
    c.handle_primary(t(1), recent.clone());
    assert_eq!(releases(&settle(&mut c)), vec![recent]);
    let old = data(1, b"0123");
    c.handle_primary(t(2), old.clone());
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(
        miscompare_reasons(&out),
        vec![MismatchReason::RetransmitUnchecked {
            seq: crate::packet::SeqNum(1)
        }]
    );
    c.checkpoint_done(t(3));
    assert_eq!(releases(&settle(&mut c)), vec![old]);
}

#[test]
fn bytes_a_checkpoint_flushed_are_kept_for_retransmission_checks() {
    let mut c = comparator();
    c.handle_primary(t(0), data(1, b"flushed"));
    c.checkpoint_done(t(1));
    assert_eq!(releases(&settle(&mut c)).len(), 1);
    let same = data(1, b"flushed");
    c.handle_primary(t(2), same.clone());
    assert_eq!(releases(&settle(&mut c)), vec![same]);
    c.handle_primary(t(3), data(1, b"FLUSHED"));
    let out = settle(&mut c);
    assert!(releases(&out).is_empty());
    assert_eq!(requests(&out), vec![CheckpointReason::Miscompare]);
}
