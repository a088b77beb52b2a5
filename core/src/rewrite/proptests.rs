//! Property tests of the [`Rewriter`]: for arbitrary ISNs, payloads, SACK blocks (aligned or at
//! odd offsets), VLAN tags and IPv4/IPv6, a rewrite followed by the inverse rewrite (a rewriter
//! whose handshake swapped the two ISNs, so its offset is the negation) gives back the original
//! bytes, and every checksum verifies after each rewrite; and over whole conversations, the
//! SVM's rewritten output is byte-identical to the primary's.

use super::*;
use crate::packet::SeqNum;
use crate::packet::build::TcpFrame;
use crate::packet::checksum::{L4Checksum, ipv4_header_range, verify_ipv4_header, verify_l4};
use crate::packet::tcp_flags::{ACK, FIN, PSH, SYN, URG};
use core::net::IpAddr;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Case {
    pvm_isn: u32,
    svm_isn: u32,
    peer_isn: u32,
    v6: bool,
    vlan: Option<u16>,
    guest_opened: bool,
    seq: u32,
    ack: u32,
    extra_flags: u8,
    payload: Vec<u8>,
    sack: Vec<(u32, u32)>,
    odd_sack: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>()),
        (
            proptest::option::of(0u16..4096),
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
        ),
        prop_oneof![Just(0), Just(PSH), Just(URG), Just(PSH | URG)],
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec((any::<u32>(), any::<u32>()), 0..=3),
        any::<bool>(),
    )
        .prop_map(
            |(
                (pvm_isn, svm_isn, peer_isn, v6),
                (vlan, guest_opened, seq, ack),
                extra_flags,
                payload,
                sack,
                odd_sack,
            )| Case {
                pvm_isn,
                svm_isn,
                peer_isn,
                v6,
                vlan,
                guest_opened,
                seq,
                ack,
                extra_flags,
                payload,
                sack,
                odd_sack,
            },
        )
}

fn addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        ("fd00::2".parse().unwrap(), "2001:db8::77".parse().unwrap())
    } else {
        ("10.0.0.2".parse().unwrap(), "198.51.100.7".parse().unwrap())
    }
}

fn frame(
    c: &Case,
    inbound: bool,
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let (guest, peer) = addrs(c.v6);
    let (src, dst, sp, dp) = if inbound {
        (peer, guest, 33_000, 443)
    } else {
        (guest, peer, 443, 33_000)
    };
    TcpFrame {
        vlan: c.vlan,
        seq: SeqNum(seq),
        ack: SeqNum(ack),
        flags,
        options,
        payload,
        ..TcpFrame::new(src, dst, sp, dp)
    }
    .build()
}

/// A rewriter that learned `pvm_isn - svm_isn` through a real handshake of the case's kind.
fn established(c: &Case, pvm_isn: u32, svm_isn: u32) -> Rewriter {
    let mut rw = Rewriter::new(RewriterConfig::default());
    let t = Instant::ZERO;
    let (p, s) = (c.peer_isn, svm_isn);
    if c.guest_opened {
        rw.rewrite_outbound(t, &mut frame(c, false, s, 0, SYN, &[], &[]));
        rw.rewrite_inbound(
            t,
            &mut frame(c, true, p, pvm_isn.wrapping_add(1), SYN | ACK, &[], &[]),
        );
    } else {
        rw.rewrite_inbound(t, &mut frame(c, true, p, 0, SYN, &[], &[]));
        rw.rewrite_outbound(
            t,
            &mut frame(c, false, s, p.wrapping_add(1), SYN | ACK, &[], &[]),
        );
        rw.rewrite_inbound(
            t,
            &mut frame(
                c,
                true,
                p.wrapping_add(1),
                pvm_isn.wrapping_add(1),
                ACK,
                &[],
                &[],
            ),
        );
    }
    assert_eq!(rw.stats().offsets_learned, 1);
    rw
}

fn sack_options(c: &Case) -> Vec<u8> {
    if c.sack.is_empty() {
        return Vec::new();
    }
    // One NOP puts every edge at an odd offset from the TCP header; two keep them aligned.
    let mut o = if c.odd_sack { vec![1] } else { vec![1, 1] };
    o.extend_from_slice(&[5, (2 + 8 * c.sack.len()) as u8]);
    for (l, r) in &c.sack {
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
    }
    o
}

fn checksums_verify(f: &[u8]) -> bool {
    let c = classify(f).unwrap();
    let ip_ok = ipv4_header_range(f).is_none_or(|r| verify_ipv4_header(&f[r]));
    ip_ok && verify_l4(f, &c) == L4Checksum::Valid
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn outbound_rewrite_then_inverse_is_identity_and_checksums_verify(c in case()) {
        let mut forward = established(&c, c.pvm_isn, c.svm_isn);
        let mut inverse = established(&c, c.svm_isn, c.pvm_isn);
        let original = frame(&c, false, c.seq, c.ack, ACK | c.extra_flags, &sack_options(&c), &c.payload);
        let mut f = original.clone();

        forward.rewrite_outbound(Instant::ZERO, &mut f);
        prop_assert!(checksums_verify(&f));
        prop_assert_eq!(f.len(), original.len());
        let Kind::Tcp(t) = classify(&f).unwrap().kind else { unreachable!() };
        prop_assert_eq!(t.seq, SeqNum(c.seq.wrapping_add(c.pvm_isn.wrapping_sub(c.svm_isn))));

        inverse.rewrite_outbound(Instant::ZERO, &mut f);
        prop_assert!(checksums_verify(&f));
        prop_assert_eq!(f, original);
    }

    #[test]
    fn inbound_rewrite_then_inverse_is_identity_and_checksums_verify(c in case()) {
        let mut forward = established(&c, c.pvm_isn, c.svm_isn);
        let mut inverse = established(&c, c.svm_isn, c.pvm_isn);
        let original = frame(&c, true, c.seq, c.ack, ACK | c.extra_flags, &sack_options(&c), &c.payload);
        let mut f = original.clone();

        forward.rewrite_inbound(Instant::ZERO, &mut f);
        prop_assert!(checksums_verify(&f));
        let Kind::Tcp(t) = classify(&f).unwrap().kind else { unreachable!() };
        prop_assert_eq!(t.ack, SeqNum(c.ack.wrapping_sub(c.pvm_isn.wrapping_sub(c.svm_isn))));
        let expected_edges = if c.pvm_isn == c.svm_isn { 0 } else { 2 * c.sack.len() as u64 };
        prop_assert_eq!(forward.stats().sack_edges_rewritten, expected_edges);

        inverse.rewrite_inbound(Instant::ZERO, &mut f);
        prop_assert!(checksums_verify(&f));
        prop_assert_eq!(f, original);
    }
}

/// One guest-side numbering of a whole connection: builds the frames a guest with ISN `isn`
/// would send, and the frames the client sends to it, for the same conversation.
struct Numbering<'a> {
    c: &'a Case,
    isn: u32,
}

impl Numbering<'_> {
    fn guest(&self, rel_seq: u32, client_ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let seq = self.isn.wrapping_add(rel_seq);
        frame(self.c, false, seq, client_ack, flags, &[], data)
    }

    fn client(
        &self,
        client_seq: u32,
        rel_ack: u32,
        flags: u8,
        sack: &[(u32, u32)],
        data: &[u8],
    ) -> Vec<u8> {
        let ack = self.isn.wrapping_add(rel_ack);
        let mut opts = Vec::new();
        if !sack.is_empty() {
            opts.extend_from_slice(&[1, 1, 5, (2 + 8 * sack.len()) as u8]);
            for (l, r) in sack {
                opts.extend_from_slice(&self.isn.wrapping_add(*l).to_be_bytes());
                opts.extend_from_slice(&self.isn.wrapping_add(*r).to_be_bytes());
            }
        }
        frame(self.c, true, client_seq, ack, flags, &opts, data)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The rewriter's purpose, end to end: for a whole conversation, client- or guest-opened
    /// (handshake, requests, replies, a SACK, close), every frame the SVM emits, once rewritten,
    /// is byte for byte the frame the PVM emitted (except the SVM's SYN or SYN-ACK, sent before
    /// the primary's ISN is known), and every peer frame, once rewritten, is byte for byte what
    /// the SVM's stack expects.
    #[test]
    fn svm_output_after_rewrite_equals_primary_output(
        c in case(),
        exchanges in proptest::collection::vec((1usize..200, 1usize..200), 1..5),
    ) {
        let pvm = Numbering { c: &c, isn: c.pvm_isn };
        let svm = Numbering { c: &c, isn: c.svm_isn };
        let mut rw = Rewriter::new(RewriterConfig::default());
        let t = Instant::ZERO;
        let cl = c.peer_isn;

        if c.guest_opened {
            // The guest connects out: its SYN leaves with the SVM's ISN (not comparable yet);
            // the server's SYN-ACK acks the primary's ISN + 1 and must reach the SVM as its own.
            rw.rewrite_outbound(t, &mut svm.guest(0, 0, SYN, &[]));
            let mut syn_ack = pvm.client(cl, 1, SYN | ACK, &[], &[]);
            rw.rewrite_inbound(t, &mut syn_ack);
            prop_assert_eq!(&syn_ack, &svm.client(cl, 1, SYN | ACK, &[], &[]));
            let mut ack = svm.guest(1, cl.wrapping_add(1), ACK, &[]);
            rw.rewrite_outbound(t, &mut ack);
            prop_assert_eq!(&ack, &pvm.guest(1, cl.wrapping_add(1), ACK, &[]));
        } else {
            // The client's SYN reaches both guests alike; the SVM's SYN-ACK is not comparable.
            let mut syn = frame(&c, true, cl, 0, SYN, &[], &[]);
            rw.rewrite_inbound(t, &mut syn);
            rw.rewrite_outbound(t, &mut svm.guest(0, cl.wrapping_add(1), SYN | ACK, &[]));
            let mut ack = pvm.client(cl.wrapping_add(1), 1, ACK, &[], &[]);
            rw.rewrite_inbound(t, &mut ack);
            prop_assert_eq!(&ack, &svm.client(cl.wrapping_add(1), 1, ACK, &[], &[]));
        }

        // Requests and replies.
        let (mut cseq, mut gseq) = (cl.wrapping_add(1), 1u32);
        for (req, reply) in &exchanges {
            let req_data = vec![0x11; *req];
            let mut inbound = pvm.client(cseq, gseq, ACK | PSH, &[], &req_data);
            rw.rewrite_inbound(t, &mut inbound);
            prop_assert_eq!(&inbound, &svm.client(cseq, gseq, ACK | PSH, &[], &req_data));
            cseq = cseq.wrapping_add(*req as u32);

            let reply_data = vec![0x22; *reply];
            let mut outbound = svm.guest(gseq, cseq, ACK | PSH, &reply_data);
            rw.rewrite_outbound(t, &mut outbound);
            prop_assert_eq!(&outbound, &pvm.guest(gseq, cseq, ACK | PSH, &reply_data));
            gseq = gseq.wrapping_add(*reply as u32);
        }

        // The client reports a hole with a SACK block.
        let sack = [(gseq.wrapping_add(100), gseq.wrapping_add(200))];
        let mut inbound = pvm.client(cseq, gseq, ACK, &sack, &[]);
        rw.rewrite_inbound(t, &mut inbound);
        prop_assert_eq!(&inbound, &svm.client(cseq, gseq, ACK, &sack, &[]));

        // Close: guest FIN, client FIN-ACK, guest's final ACK; then the entry is gone.
        let mut fin = svm.guest(gseq, cseq, ACK | FIN, &[]);
        rw.rewrite_outbound(t, &mut fin);
        prop_assert_eq!(&fin, &pvm.guest(gseq, cseq, ACK | FIN, &[]));
        let mut fin_ack = pvm.client(cseq, gseq.wrapping_add(1), ACK | FIN, &[], &[]);
        rw.rewrite_inbound(t, &mut fin_ack);
        prop_assert_eq!(&fin_ack, &svm.client(cseq, gseq.wrapping_add(1), ACK | FIN, &[], &[]));
        let mut last = svm.guest(gseq.wrapping_add(1), cseq.wrapping_add(1), ACK, &[]);
        rw.rewrite_outbound(t, &mut last);
        prop_assert_eq!(&last, &pvm.guest(gseq.wrapping_add(1), cseq.wrapping_add(1), ACK, &[]));
        prop_assert_eq!(rw.connections(), 0);
        prop_assert_eq!(rw.stats().closed, 1);
    }
}
