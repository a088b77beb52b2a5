//! Fuzz body for the `packet_parse` target: one arbitrary frame through the classifier, the TCP
//! option walker, the checksum verifiers and the mutable segment view.
//!
//! Asserted (a panic is a finding): every range the classifier returns lies inside the frame;
//! the option walker stays inside the option bytes and ends; a frame whose TCP checksum verified
//! still verifies after a sequence rewrite and returns byte for byte when the rewrite is undone;
//! and where both colo and etherparse read a TCP segment, they agree on ports, numbers, flags
//! and payload.

use crate::packet::checksum::{
    L4Checksum, ipv4_header_range, l4_span, verify_ipv4_header, verify_l4,
};
use crate::packet::tcp_options::{SackEdges, TcpOption, TcpOptions};
use crate::packet::{
    Classified, FlowKey, Kind, SeqNum, TcpInfo, TcpSegmentMut, classify, classify_or_opaque,
};

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let Ok(c) = classify(data) else {
        // The fallback must summarise any frame without panicking.
        let opaque = classify_or_opaque(data);
        assert!(matches!(opaque.key, FlowKey::Opaque { .. }));
        return;
    };
    check_ranges(data, &c);
    // Verifiers must not panic whatever the frame says; their answers are checked below.
    let l4 = verify_l4(data, &c);
    if let Some(r) = ipv4_header_range(data) {
        assert!(r.end <= data.len());
        let _ = verify_ipv4_header(&data[r]);
    }
    if let Some(span) = l4_span(data, &c) {
        assert!(span.start <= span.checksum_at && span.checksum_at + 2 <= span.end);
        assert!(span.end <= data.len());
    }
    if let Kind::Tcp(t) = c.kind {
        check_options(&data[t.l4_offset + 20..t.payload_start]);
        if l4 == L4Checksum::Valid {
            check_rewrite_round_trip(data, &c, &t);
        }
        cross_check_etherparse(data, &c, &t);
    }
}

fn check_ranges(data: &[u8], c: &Classified) {
    assert!(c.l3_offset <= data.len(), "l3 offset outside the frame");
    match &c.kind {
        Kind::Tcp(t) => {
            assert!(t.header_len >= 20, "TCP header below 20 bytes");
            assert_eq!(t.payload_start, t.l4_offset + t.header_len);
            assert!(c.l3_offset < t.l4_offset);
            assert!(t.payload_start <= t.payload_end && t.payload_end <= data.len());
            assert!(t.seq_len() as usize <= t.payload_len() + 2);
        }
        Kind::Ip {
            l4_offset, payload, ..
        } => {
            assert!(c.l3_offset < *l4_offset && *l4_offset == payload.start);
            assert!(payload.start <= payload.end && payload.end <= data.len());
        }
        Kind::Link => {}
    }
}

fn check_options(options: &[u8]) {
    assert!(options.len() <= 40, "TCP options longer than 40 bytes");
    let mut items = 0;
    for item in TcpOptions::new(options) {
        items += 1;
        assert!(items <= options.len() + 1, "option walk does not progress");
        let Ok((offset, option)) = item else { continue };
        assert!(offset < options.len());
        if let TcpOption::Sack(blocks) = option {
            assert!(offset + 2 + 8 * blocks.len() <= options.len());
            assert_eq!(blocks.iter().count(), blocks.len());
        }
    }
    let edges = SackEdges::find(options);
    for &e in edges.offsets() {
        assert!(e + 4 <= options.len(), "SACK edge outside the options");
    }
}

fn check_rewrite_round_trip(data: &[u8], c: &Classified, t: &TcpInfo) {
    let mut frame = data.to_vec();
    let Some(mut seg) = TcpSegmentMut::new(&mut frame, c) else {
        panic!("a TCP summary of this very frame must give a view")
    };
    let (seq, ack) = (seg.seq(), seg.ack());
    seg.set_seq(seq.wrapping_add(0x9e37_79b9));
    seg.set_ack(SeqNum(!ack.0));
    let shift = seg.shift_sack_edges(0x0100_0001);
    assert_eq!(frame.len(), data.len());
    assert_eq!(
        verify_l4(&frame, c),
        L4Checksum::Valid,
        "rewrite broke a valid checksum"
    );
    let mut seg = TcpSegmentMut::new(&mut frame, c).expect("same frame");
    seg.set_seq(seq);
    seg.set_ack(ack);
    let back = seg.shift_sack_edges(0x0100_0001u32.wrapping_neg());
    assert_eq!(shift, back);
    // Every byte but the checksum comes back exactly. The checksum does too unless the sender
    // used 0xffff, the other form of zero (RFC 1624 section 3): equation 3 always writes 0x0000.
    let at = t.l4_offset + 16;
    assert_eq!(frame[..at], data[..at]);
    assert_eq!(frame[at + 2..], data[at + 2..]);
    let (was, now) = ([data[at], data[at + 1]], [frame[at], frame[at + 1]]);
    assert!(
        was == now || (was == [0xff, 0xff] && now == [0, 0]),
        "checksum form changed"
    );
    assert_eq!(verify_l4(&frame, c), L4Checksum::Valid);
}

fn cross_check_etherparse(data: &[u8], c: &Classified, t: &TcpInfo) {
    let Ok(sliced) = etherparse::SlicedPacket::from_ethernet(data) else {
        return;
    };
    let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
        return;
    };
    let FlowKey::Ip {
        src_port, dst_port, ..
    } = c.key
    else {
        panic!("a TCP segment must have an IP flow key")
    };
    assert_eq!(
        (tcp.source_port(), tcp.destination_port()),
        (src_port, dst_port)
    );
    assert_eq!(tcp.sequence_number(), t.seq.0);
    assert_eq!(tcp.acknowledgment_number(), t.ack.0);
    assert_eq!(usize::from(tcp.data_offset()) * 4, t.header_len);
    assert_eq!(tcp.payload(), &data[t.payload_start..t.payload_end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! seed {
        ($name:literal) => {
            include_bytes!(concat!("../../../fuzz/seeds/packet_parse/", $name)).as_slice()
        };
    }

    #[test]
    fn tcp_seeds_carry_valid_checksums_so_the_round_trip_runs() {
        for frame in [
            seed!("tcp4_syn_options"),
            seed!("tcp4_sack_payload_padded"),
            seed!("tcp6_vlan_odd_sack"),
            seed!("tcp6_qinq_ext_headers"),
            seed!("tcp4_bad_option_length"),
        ] {
            let c = classify(frame).unwrap();
            assert!(matches!(c.kind, Kind::Tcp(_)), "{c:?}");
            assert_eq!(verify_l4(frame, &c), L4Checksum::Valid);
            run(frame);
        }
    }

    #[test]
    fn other_seeds_reach_the_non_tcp_paths() {
        let udp = classify(seed!("udp4_and_fragment")).unwrap();
        assert!(matches!(udp.kind, Kind::Ip { protocol: 17, .. }));
        assert!(classify(seed!("truncated_tcp4")).is_err());
        assert!(matches!(classify(seed!("arp")).unwrap().kind, Kind::Link));
        let icmp = seed!("icmp6_echo");
        let c = classify(icmp).unwrap();
        assert_eq!(verify_l4(icmp, &c), L4Checksum::Valid);
    }
}
