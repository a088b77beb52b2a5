//! Behaviour tests of the [`Rewriter`]: one per rule of the module doc (handshakes both ways,
//! SACK rewriting, checksums, checkpoint reset, failover, close tracking, the bounded table,
//! untracked traffic).

use super::*;
use crate::packet::SeqNum;
use crate::packet::build::{TcpFrame, sack_option};
use crate::packet::checksum::{L4Checksum, ipv4_header_range, verify_ipv4_header, verify_l4};
use crate::packet::tcp_flags::{ACK, FIN, PSH, RST, SYN};
use crate::packet::tcp_options::{TcpOption, TcpOptions};
use core::net::IpAddr;

const CLIENT_ISN: u32 = 700;
const PVM_ISN: u32 = 1_000_000;
const SVM_ISN: u32 = 4_000_000_000;
const OFFSET: u32 = PVM_ISN.wrapping_sub(SVM_ISN);

/// One connection's addresses and a clock, to fabricate its frames in either direction.
struct Link {
    guest: IpAddr,
    peer: IpAddr,
    vlan: Option<u16>,
    guest_port: u16,
    peer_port: u16,
    now: u64,
}

impl Link {
    fn v4() -> Link {
        Link {
            guest: "10.0.0.2".parse().unwrap(),
            peer: "192.0.2.9".parse().unwrap(),
            vlan: None,
            guest_port: 80,
            peer_port: 41_000,
            now: 0,
        }
    }

    fn v6_tagged() -> Link {
        Link {
            guest: "fd00::2".parse().unwrap(),
            peer: "2001:db8::9".parse().unwrap(),
            vlan: Some(42),
            ..Link::v4()
        }
    }

    fn key(&self) -> ConnKey {
        ConnKey {
            vlan: self.vlan,
            guest_addr: self.guest,
            guest_port: self.guest_port,
            peer_addr: self.peer,
            peer_port: self.peer_port,
        }
    }

    fn frame(
        &self,
        inbound: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        opts: &[u8],
        data: &[u8],
    ) -> Vec<u8> {
        let (src, dst, sp, dp) = if inbound {
            (self.peer, self.guest, self.peer_port, self.guest_port)
        } else {
            (self.guest, self.peer, self.guest_port, self.peer_port)
        };
        TcpFrame {
            vlan: self.vlan,
            seq: SeqNum(seq),
            ack: SeqNum(ack),
            flags,
            options: opts,
            payload: data,
            ..TcpFrame::new(src, dst, sp, dp)
        }
        .build()
    }

    fn tick(&mut self) -> Instant {
        self.now += 1_000;
        Instant::from_nanos(self.now)
    }

    /// Feeds an inbound segment; returns the verdict and the frame as the SVM receives it.
    fn inbound(
        &mut self,
        rw: &mut Rewriter,
        seq: u32,
        ack: u32,
        flags: u8,
        opts: &[u8],
        data: &[u8],
    ) -> (Verdict, Vec<u8>) {
        let mut f = self.frame(true, seq, ack, flags, opts, data);
        let len = f.len();
        let v = rw.rewrite_inbound(self.tick(), &mut f);
        assert_eq!(f.len(), len);
        assert_checksums_verify(&f);
        (v, f)
    }

    /// Feeds an outbound segment; returns the verdict and the frame as the comparator sees it.
    fn outbound(
        &mut self,
        rw: &mut Rewriter,
        seq: u32,
        ack: u32,
        flags: u8,
        opts: &[u8],
        data: &[u8],
    ) -> (Verdict, Vec<u8>) {
        let mut f = self.frame(false, seq, ack, flags, opts, data);
        let len = f.len();
        let v = rw.rewrite_outbound(self.tick(), &mut f);
        assert_eq!(f.len(), len);
        assert_checksums_verify(&f);
        (v, f)
    }

    /// Runs a client-opened handshake with the module's ISNs.
    fn client_handshake(&mut self, rw: &mut Rewriter) {
        self.inbound(rw, CLIENT_ISN, 0, SYN, &[], b"");
        self.outbound(rw, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[], b"");
        self.inbound(rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK, &[], b"");
    }
}

fn assert_checksums_verify(frame: &[u8]) {
    let c = classify(frame).unwrap();
    assert_eq!(
        verify_l4(frame, &c),
        L4Checksum::Valid,
        "TCP checksum broken"
    );
    if let Some(r) = ipv4_header_range(frame) {
        assert!(verify_ipv4_header(&frame[r]), "IPv4 header checksum broken");
    }
}

fn seq_ack(frame: &[u8]) -> (u32, u32) {
    let Kind::Tcp(t) = classify(frame).unwrap().kind else {
        panic!("not TCP")
    };
    (t.seq.0, t.ack.0)
}

fn sack_blocks(frame: &[u8]) -> Vec<(u32, u32)> {
    let Kind::Tcp(t) = classify(frame).unwrap().kind else {
        panic!("not TCP")
    };
    let opts = &frame[t.l4_offset + 20..t.payload_start];
    let mut out = Vec::new();
    for item in TcpOptions::new(opts) {
        if let Ok((_, TcpOption::Sack(b))) = item {
            out.extend(b.iter().map(|(l, r)| (l.0, r.0)));
        }
    }
    out
}

fn rewriter() -> Rewriter {
    Rewriter::new(RewriterConfig::default())
}

#[test]
fn client_opened_handshake_learns_offset_and_rewrites_both_ways() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    let (v, _) = l.inbound(&mut rw, CLIENT_ISN, 0, SYN, &[], b"");
    assert_eq!(v, Verdict::Unchanged);
    assert_eq!(
        rw.phase(&l.key()),
        Some(Phase::SynReceived { pvm_isn: None })
    );

    // The SVM's SYN-ACK leaves with its own ISN: the primary's is not known yet.
    let (v, f) = l.outbound(&mut rw, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[], b"");
    assert_eq!((v, seq_ack(&f).0), (Verdict::Unchanged, SVM_ISN));
    assert_eq!(
        rw.phase(&l.key()),
        Some(Phase::SynAckSent {
            svm_isn: SeqNum(SVM_ISN)
        })
    );

    // The client acks the primary's ISN + 1; the SVM must see its own ISN + 1.
    let (v, f) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK, &[], b"");
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(seq_ack(&f), (CLIENT_ISN + 1, SVM_ISN.wrapping_add(1)));
    assert_eq!(
        rw.phase(&l.key()),
        Some(Phase::Established { offset: OFFSET })
    );

    let (v, f) = l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(1),
        CLIENT_ISN + 1,
        ACK | PSH,
        &[],
        b"reply",
    );
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(seq_ack(&f), (PVM_ISN + 1, CLIENT_ISN + 1));

    let (_, f) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 6, ACK, &[], b"");
    assert_eq!(seq_ack(&f), (CLIENT_ISN + 1, SVM_ISN.wrapping_add(6)));
    let s = rw.stats();
    assert_eq!(
        (s.opened, s.offsets_learned, s.rewritten, s.unchanged),
        (1, 1, 3, 2)
    );
}

#[test]
fn client_ack_overtaking_the_syn_ack_still_learns_offset() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.inbound(&mut rw, CLIENT_ISN, 0, SYN, &[], b"");
    // The PVM answered first; the client's ACK reaches the SVM before its own SYN-ACK leaves.
    // Its SVM-side value is unknown, so it passes unchanged.
    let (v, f) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK, &[], b"");
    assert_eq!((v, seq_ack(&f).1), (Verdict::Unchanged, PVM_ISN + 1));
    let (v, f) = l.outbound(&mut rw, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[], b"");
    // The SYN-ACK itself completes the offset and leaves in primary numbering.
    assert_eq!((v, seq_ack(&f).0), (Verdict::Rewritten, PVM_ISN));
    assert_eq!(
        rw.phase(&l.key()),
        Some(Phase::Established { offset: OFFSET })
    );
}

#[test]
fn guest_opened_handshake_learns_offset_from_the_servers_syn_ack() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    const SERVER_ISN: u32 = 99;
    let (v, f) = l.outbound(&mut rw, SVM_ISN, 0, SYN, &[], b"");
    assert_eq!((v, seq_ack(&f).0), (Verdict::Unchanged, SVM_ISN));
    assert_eq!(
        rw.phase(&l.key()),
        Some(Phase::SynSent {
            svm_isn: SeqNum(SVM_ISN)
        })
    );

    // The server answered the primary's SYN: it acks the primary's ISN + 1.
    let (v, f) = l.inbound(&mut rw, SERVER_ISN, PVM_ISN + 1, SYN | ACK, &[], b"");
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(seq_ack(&f), (SERVER_ISN, SVM_ISN.wrapping_add(1)));

    let (_, f) = l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(1),
        SERVER_ISN + 1,
        ACK,
        &[],
        b"GET /",
    );
    assert_eq!(seq_ack(&f), (PVM_ISN + 1, SERVER_ISN + 1));
    assert_eq!(rw.stats().offsets_learned, 1);
}

#[test]
fn inbound_sack_edges_move_into_svm_numbering() {
    let (mut rw, mut l) = (rewriter(), Link::v6_tagged());
    l.client_handshake(&mut rw);
    let blocks = [
        (SeqNum(PVM_ISN + 100), SeqNum(PVM_ISN + 200)),
        (SeqNum(PVM_ISN + 300), SeqNum(PVM_ISN + 400)),
    ];
    let opts = sack_option(&blocks);
    let (v, f) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 50, ACK, &opts, b"");
    assert_eq!(v, Verdict::Rewritten);
    let s = SVM_ISN;
    assert_eq!(
        sack_blocks(&f),
        vec![
            (s.wrapping_add(100), s.wrapping_add(200)),
            (s.wrapping_add(300), s.wrapping_add(400))
        ]
    );
    assert_eq!(rw.stats().sack_edges_rewritten, 4);
}

#[test]
fn outbound_sack_blocks_name_the_peers_bytes_and_stay() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    let opts = sack_option(&[(SeqNum(CLIENT_ISN + 10), SeqNum(CLIENT_ISN + 20))]);
    let (_, f) = l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(1),
        CLIENT_ISN + 1,
        ACK,
        &opts,
        b"",
    );
    assert_eq!(sack_blocks(&f), vec![(CLIENT_ISN + 10, CLIENT_ISN + 20)]);
    assert_eq!(seq_ack(&f), (PVM_ISN + 1, CLIENT_ISN + 1));
}

#[test]
fn malformed_options_after_a_sack_still_get_the_sack_rewritten() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    let mut opts = sack_option(&[(SeqNum(PVM_ISN + 1), SeqNum(PVM_ISN + 9))]);
    opts.extend_from_slice(&[77, 0]); // zero-length option: breaks the walk
    let (v, f) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK, &opts, b"");
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(
        sack_blocks(&f),
        vec![(SVM_ISN.wrapping_add(1), SVM_ISN.wrapping_add(9))]
    );
    assert_eq!(rw.stats().option_errors, 1);
}

#[test]
fn checksums_still_verify_after_rewrites_over_ipv4_and_tagged_ipv6() {
    for mut l in [Link::v4(), Link::v6_tagged()] {
        let mut rw = rewriter();
        l.client_handshake(&mut rw);
        // Odd payload length exercises the padded last word; `inbound`/`outbound` verify.
        let (v, _) = l.outbound(
            &mut rw,
            SVM_ISN.wrapping_add(1),
            CLIENT_ISN + 1,
            ACK,
            &[],
            b"odd",
        );
        assert_eq!(v, Verdict::Rewritten);
        let opts = sack_option(&[(SeqNum(7), SeqNum(9))]);
        let (v, _) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 4, ACK, &opts, b"x");
        assert_eq!(v, Verdict::Rewritten);
    }
}

#[test]
fn reset_offsets_zeroes_offsets_and_keeps_tracking_closes() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    rw.reset_offsets();
    assert_eq!(rw.phase(&l.key()), Some(Phase::Established { offset: 0 }));
    // The SVM now numbers like the PVM: nothing to rewrite.
    let (v, f) = l.outbound(&mut rw, PVM_ISN + 1, CLIENT_ISN + 1, ACK | FIN, &[], b"");
    assert_eq!((v, seq_ack(&f).0), (Verdict::Unchanged, PVM_ISN + 1));
    l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 2, ACK | FIN, &[], b"");
    assert_eq!(rw.connections(), 1);
    l.outbound(&mut rw, PVM_ISN + 2, CLIENT_ISN + 2, ACK, &[], b"");
    assert_eq!(rw.connections(), 0);
    let s = rw.stats();
    assert_eq!((s.resets, s.offsets_cleared, s.closed), (1, 1, 1));
}

#[test]
fn reset_during_a_handshake_settles_the_offset_at_zero() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.inbound(&mut rw, CLIENT_ISN, 0, SYN, &[], b"");
    l.outbound(&mut rw, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[], b"");
    rw.reset_offsets();
    // The SVM restarted from the PVM's state: its ISN is the PVM's, so the ack is already right.
    let (v, f) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK, &[], b"");
    assert_eq!((v, seq_ack(&f).1), (Verdict::Unchanged, PVM_ISN + 1));
    assert_eq!(rw.stats().offsets_cleared, 1);
}

#[test]
fn failover_keeps_rewriting_connections_with_an_offset() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    rw.enter_failover();
    assert!(rw.in_failover());
    // Now frames go straight to and from the client, still in the primary's numbering.
    let (v, f) = l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(1),
        CLIENT_ISN + 1,
        ACK,
        &[],
        b"hi",
    );
    assert_eq!((v, seq_ack(&f).0), (Verdict::Rewritten, PVM_ISN + 1));
    let (v, f) = l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 3, ACK, &[], b"");
    assert_eq!(
        (v, seq_ack(&f).1),
        (Verdict::Rewritten, SVM_ISN.wrapping_add(3))
    );
}

#[test]
fn failover_does_not_track_new_connections() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    rw.enter_failover();
    let (v, _) = l.inbound(&mut rw, CLIENT_ISN, 0, SYN, &[], b"");
    assert_eq!(v, Verdict::Passed(PassReason::Failover));
    let (v, f) = l.outbound(&mut rw, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[], b"");
    assert_eq!(
        (v, seq_ack(&f).0),
        (Verdict::Passed(PassReason::Untracked), SVM_ISN)
    );
    assert_eq!(rw.connections(), 0);
}

#[test]
fn failover_forgets_offset_zero_connections_when_they_close() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    rw.reset_offsets();
    rw.enter_failover();
    l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK | FIN, &[], b"");
    l.outbound(&mut rw, PVM_ISN + 1, CLIENT_ISN + 2, ACK | FIN, &[], b"");
    assert_eq!(rw.connections(), 1);
    l.inbound(&mut rw, CLIENT_ISN + 2, PVM_ISN + 2, ACK, &[], b"");
    assert_eq!(rw.connections(), 0);
}

#[test]
fn fin_both_ways_and_the_final_ack_remove_the_entry() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    // Guest closes first (active close): FIN out, client FIN-ACK in, guest's final ACK out.
    let (_, f) = l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(1),
        CLIENT_ISN + 1,
        ACK | FIN,
        &[],
        b"bye",
    );
    assert_eq!(seq_ack(&f).0, PVM_ISN + 1);
    l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 5, ACK | FIN, &[], b"");
    assert_eq!(rw.connections(), 1);
    let (v, f) = l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(5),
        CLIENT_ISN + 2,
        ACK,
        &[],
        b"",
    );
    // The final ACK is rewritten too, then the entry goes.
    assert_eq!((v, seq_ack(&f).0), (Verdict::Rewritten, PVM_ISN + 5));
    assert_eq!(rw.connections(), 0);
    assert_eq!(rw.stats().closed, 1);
}

#[test]
fn an_ack_below_the_fin_does_not_close() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK | FIN, &[], b"");
    l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(1),
        CLIENT_ISN + 2,
        ACK | FIN,
        &[],
        b"tail",
    );
    // Acks the data but not the FIN.
    l.inbound(&mut rw, CLIENT_ISN + 2, PVM_ISN + 5, ACK, &[], b"");
    assert_eq!(rw.connections(), 1);
    l.inbound(&mut rw, CLIENT_ISN + 2, PVM_ISN + 6, ACK, &[], b"");
    assert_eq!(rw.connections(), 0);
}

#[test]
fn rst_is_rewritten_then_removes_the_entry() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    let (v, f) = l.outbound(&mut rw, SVM_ISN.wrapping_add(1), 0, RST, &[], b"");
    assert_eq!((v, seq_ack(&f).0), (Verdict::Rewritten, PVM_ISN + 1));
    assert_eq!(rw.connections(), 0);
    assert_eq!(rw.stats().aborted, 1);
    let (v, _) = l.outbound(&mut rw, SVM_ISN.wrapping_add(1), 0, RST, &[], b"");
    assert_eq!(v, Verdict::Passed(PassReason::Untracked));
}

#[test]
fn full_table_evicts_the_oldest_idle_connection_and_counts_it() {
    let mut rw = Rewriter::new(RewriterConfig { connections_max: 2 });
    let mut links: Vec<Link> = (0..3)
        .map(|i| Link {
            peer_port: 50_000 + i,
            ..Link::v4()
        })
        .collect();
    for (i, l) in links.iter_mut().enumerate() {
        l.now = i as u64 * 10_000;
        l.client_handshake(&mut rw);
    }
    assert_eq!(rw.connections(), 2);
    assert_eq!(rw.stats().evicted, 1);
    assert_eq!(rw.phase(&links[0].key()), None);
    links[0].now = links[2].now;
    // The evicted connection's frames now pass untracked.
    let (v, _) = links[0].inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 1, ACK, &[], b"");
    assert_eq!(v, Verdict::Passed(PassReason::Untracked));
}

#[test]
fn zero_capacity_tracks_nothing_and_counts_it() {
    let mut rw = Rewriter::new(RewriterConfig { connections_max: 0 });
    let mut l = Link::v4();
    let (v, _) = l.inbound(&mut rw, CLIENT_ISN, 0, SYN, &[], b"");
    assert_eq!(v, Verdict::Passed(PassReason::Untracked));
    assert_eq!(rw.stats().passed_untracked, 1);
}

#[test]
fn untracked_non_tcp_and_malformed_frames_pass_unchanged_and_are_counted() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    let (v, _) = l.inbound(&mut rw, 5, 6, ACK, &[], b"mid-stream");
    assert_eq!(v, Verdict::Passed(PassReason::Untracked));

    let mut arp = vec![0xff; 14];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0; 28]);
    let before = arp.clone();
    assert_eq!(
        rw.rewrite_inbound(l.tick(), &mut arp),
        Verdict::Passed(PassReason::NotTcp)
    );
    assert_eq!(arp, before);

    let mut junk = l.frame(false, 1, 2, ACK, &[], b"");
    junk.truncate(40);
    let before = junk.clone();
    assert_eq!(
        rw.rewrite_outbound(l.tick(), &mut junk),
        Verdict::Passed(PassReason::Malformed)
    );
    assert_eq!(junk, before);
    let s = rw.stats();
    assert_eq!(
        (s.passed_untracked, s.passed_not_tcp, s.passed_malformed),
        (1, 1, 1)
    );
}

#[test]
fn a_syn_on_an_established_connection_starts_over() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    l.inbound(&mut rw, 5_000, 0, SYN, &[], b"");
    assert_eq!(
        rw.phase(&l.key()),
        Some(Phase::SynReceived { pvm_isn: None })
    );
    assert_eq!(rw.stats().reopened, 1);
}

#[test]
fn retransmitted_syns_keep_the_handshake_state() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.inbound(&mut rw, CLIENT_ISN, 0, SYN, &[], b"");
    l.outbound(&mut rw, SVM_ISN, CLIENT_ISN + 1, SYN | ACK, &[], b"");
    l.inbound(&mut rw, CLIENT_ISN, 0, SYN, &[], b"");
    assert_eq!(
        rw.phase(&l.key()),
        Some(Phase::SynAckSent {
            svm_isn: SeqNum(SVM_ISN)
        })
    );
    assert_eq!(rw.stats().opened, 1);
}

#[test]
fn every_frame_is_counted_exactly_once() {
    let (mut rw, mut l) = (rewriter(), Link::v4());
    l.client_handshake(&mut rw);
    l.outbound(
        &mut rw,
        SVM_ISN.wrapping_add(1),
        CLIENT_ISN + 1,
        ACK,
        &[],
        b"a",
    );
    l.inbound(&mut rw, CLIENT_ISN + 1, PVM_ISN + 2, ACK, &[], b"");
    let mut arp = vec![0u8; 60];
    rw.rewrite_inbound(l.tick(), &mut arp);
    let s = rw.stats();
    let frames = s.rewritten
        + s.unchanged
        + s.passed_not_tcp
        + s.passed_malformed
        + s.passed_untracked
        + s.passed_failover;
    assert_eq!(frames, 6);
}

#[test]
#[should_panic(expected = "went backwards")]
fn time_going_backwards_is_a_caller_bug() {
    let (mut rw, l) = (rewriter(), Link::v4());
    let mut f = l.frame(true, 1, 0, SYN, &[], b"");
    rw.rewrite_inbound(Instant::from_nanos(10), &mut f);
    rw.rewrite_inbound(Instant::from_nanos(9), &mut f);
}
