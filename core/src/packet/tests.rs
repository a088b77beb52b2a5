use super::*;
use etherparse::PacketBuilder;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn tcp_v4(payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(80, 40000, 1000, 4096)
        .ack(77)
        .psh();
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

#[test]
fn tcp_over_ipv4_gives_five_tuple_and_payload_range() {
    let frame = tcp_v4(b"hello");
    let c = classify(&frame).unwrap();
    assert_eq!(
        c.key,
        FlowKey::Ip {
            vlan: None,
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            src_port: 80,
            dst_port: 40000,
            protocol: IPPROTO_TCP,
        }
    );
    let Kind::Tcp(t) = c.kind else {
        panic!("not tcp: {c:?}")
    };
    assert_eq!(t.seq, SeqNum(1000));
    assert_eq!(t.ack, SeqNum(77));
    assert!(t.has(tcp_flags::ACK | tcp_flags::PSH));
    assert_eq!(&frame[t.payload_start..t.payload_end], b"hello");
    assert_eq!(t.seq_len(), 5);
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut frame = tcp_v4(b"");
    frame.resize(60, 0xaa); // minimum Ethernet frame, padded
    let Kind::Tcp(t) = classify(&frame).unwrap().kind else {
        panic!()
    };
    assert_eq!(t.payload_len(), 0);
}

#[test]
fn vlan_tag_is_part_of_the_flow_key() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(53, 5353);
    let mut frame = Vec::new();
    b.write(&mut frame, b"dns").unwrap();
    let c = classify(&frame).unwrap();
    assert_eq!(c.l3_offset, 18);
    let FlowKey::Ip {
        vlan,
        protocol,
        src_port,
        ..
    } = c.key
    else {
        panic!()
    };
    assert_eq!((vlan, protocol, src_port), (Some(42), IPPROTO_UDP, 53));
    let Kind::Ip { payload, .. } = c.kind else {
        panic!()
    };
    assert_eq!(&frame[payload.start + 8..payload.end], b"dns");
}

#[test]
fn ipv6_tcp_is_classified() {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6([1; 16], [2; 16], 64)
        .tcp(443, 50000, 5, 100);
    let mut frame = Vec::new();
    b.write(&mut frame, b"v6 data").unwrap();
    let c = classify(&frame).unwrap();
    let Kind::Tcp(t) = c.kind else { panic!() };
    assert_eq!(&frame[t.payload_start..t.payload_end], b"v6 data");
    assert!(matches!(
        c.key,
        FlowKey::Ip {
            src: IpAddr::V6(_),
            src_port: 443,
            ..
        }
    ));
}

#[test]
fn arp_is_a_link_flow() {
    let mut frame = vec![0u8; 42];
    frame[12] = 0x08;
    frame[13] = 0x06;
    let c = classify(&frame).unwrap();
    assert_eq!(
        c.key,
        FlowKey::Link {
            vlan: None,
            ethertype: ETHERTYPE_ARP
        }
    );
    assert_eq!(c.kind, Kind::Link);
}

#[test]
fn truncated_and_lying_headers_are_errors_not_panics() {
    let frame = tcp_v4(b"abc");
    for cut in 0..frame.len() {
        let _ = classify(&frame[..cut]);
        let _ = classify_or_opaque(&frame[..cut]);
    }
    let mut lying = frame.clone();
    lying[14 + 2] = 0xff; // IPv4 total length far beyond the frame
    assert!(matches!(
        classify(&lying),
        Err(PacketError::BadTotalLength { .. })
    ));
    assert!(matches!(
        classify_or_opaque(&lying).key,
        FlowKey::Opaque { vlan: None }
    ));
    let mut bad_offset = frame;
    bad_offset[14 + 20 + 12] = 0x10; // TCP data offset 1 word
    assert!(matches!(
        classify(&bad_offset),
        Err(PacketError::BadHeaderLength { .. })
    ));
}

#[test]
fn ipv4_fragment_is_a_portless_flow() {
    let mut frame = tcp_v4(b"abcdefgh");
    frame[14 + 6] = 0x20; // more fragments
    let c = classify(&frame).unwrap();
    assert!(matches!(
        c.key,
        FlowKey::Ip {
            src_port: 0,
            dst_port: 0,
            protocol: IPPROTO_TCP,
            ..
        }
    ));
    assert!(matches!(c.kind, Kind::Ip { .. }));
}

proptest::proptest! {
    #[test]
    fn classify_never_panics_and_ranges_stay_inside(frame in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        if let Ok(c) = classify(&frame) {
            match c.kind {
                Kind::Tcp(t) => proptest::prop_assert!(t.payload_start <= t.payload_end && t.payload_end <= frame.len()),
                Kind::Ip { payload, .. } => proptest::prop_assert!(payload.start <= payload.end && payload.end <= frame.len()),
                Kind::Link => {}
            }
        }
    }
}
