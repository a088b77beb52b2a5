//! Tests of the checksum functions and of [`TcpSegmentMut`]: known vectors (RFC 1071), frames
//! built by etherparse (an independent checksum implementation) for every protocol, and
//! properties that every incremental update equals a full recomputation.

use super::*;
use crate::packet::{SeqNum, TcpSegmentMut, classify};
use etherparse::PacketBuilder;
use proptest::prelude::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn tcp_v4(payload: &[u8], options: &[u8]) -> Vec<u8> {
    emit(|v| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(80, 40000, 1000, 4096)
            .ack(77)
            .options_raw(options)
            .unwrap()
            .write(v, payload)
    })
}

fn tcp_v6(payload: &[u8], options: &[u8]) -> Vec<u8> {
    emit(|v| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(7.try_into().unwrap())
            .ipv6(V6_A, V6_B, 64)
            .tcp(443, 50000, 0xffff_fff0, 512)
            .ack(0x8000_0000)
            .options_raw(options)
            .unwrap()
            .write(v, payload)
    })
}

fn emit<E: core::fmt::Debug>(write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Vec<u8> {
    let mut v = Vec::new();
    write(&mut v).unwrap();
    v
}

fn l4_of(frame: &[u8]) -> L4Checksum {
    verify_l4(frame, &classify(frame).unwrap())
}

#[test]
fn rfc1071_example_sums_to_ddf2() {
    // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(fold(sum_words(0, &data)), 0xddf2);
    assert_eq!(internet_checksum(&data), !0xddf2);
}

#[test]
fn odd_length_pads_the_last_byte_high() {
    assert_eq!(fold(sum_words(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
}

#[test]
fn etherparse_frames_verify_for_every_protocol() {
    let udp4 = emit(|v| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(53, 5353)
            .write(v, b"query")
    });
    let udp6 = emit(|v| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .udp(53, 5353)
            .write(v, b"odd")
    });
    let icmp4 = emit(|v| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 2)
            .write(v, b"ping!")
    });
    let icmp6 = emit(|v| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6(V6_A, V6_B, 64)
            .icmpv6_echo_request(1, 2)
            .write(v, b"ping6")
    });
    for frame in [
        tcp_v4(b"hello", &[]),
        tcp_v4(b"odd", &[1, 1, 1, 1]),
        tcp_v6(b"hello", &[]),
        udp4.clone(),
        udp6,
        icmp4.clone(),
        icmp6,
    ] {
        assert_eq!(l4_of(&frame), L4Checksum::Valid, "frame {frame:02x?}");
    }
    for v4 in [tcp_v4(b"x", &[]), udp4, icmp4] {
        assert!(verify_ipv4_header(&v4[14..34]));
    }
}

#[test]
fn corrupted_payload_is_invalid_and_reports_the_right_sum() {
    let good = tcp_v4(b"hello world", &[]);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    let L4Checksum::Invalid { found, expected } = l4_of(&bad) else {
        panic!("corruption not detected")
    };
    assert_eq!(found, u16::from_be_bytes([good[50], good[51]]));
    let c = classify(&bad).unwrap();
    assert!(fill_l4(&mut bad, &c));
    assert_eq!(u16::from_be_bytes([bad[50], bad[51]]), expected);
    assert_eq!(l4_of(&bad), L4Checksum::Valid);
}

#[test]
fn ipv4_header_fill_repairs_a_changed_ttl() {
    let mut frame = tcp_v4(b"", &[]);
    frame[14 + 8] = 3;
    assert!(!verify_ipv4_header(&frame[14..34]));
    assert!(fill_ipv4_header(&mut frame));
    assert!(verify_ipv4_header(&frame[14..34]));
    assert!(!fill_ipv4_header(&mut tcp_v6(b"", &[])));
}

#[test]
fn udp_over_ipv4_without_checksum_is_absent() {
    let mut frame = emit(|v| {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(53, 5353)
            .write(v, b"q")
    });
    frame[14 + 20 + 6] = 0;
    frame[14 + 20 + 7] = 0;
    assert_eq!(l4_of(&frame), L4Checksum::Absent);
}

#[test]
fn fragments_have_no_checksum_to_verify() {
    let mut frame = tcp_v4(b"hello", &[]);
    frame[14 + 6] |= 0x20; // more fragments
    fill_ipv4_header(&mut frame);
    assert_eq!(l4_of(&frame), L4Checksum::NotApplicable);
}

#[test]
fn set_seq_and_ack_keep_the_checksum_valid() {
    for mut frame in [tcp_v4(b"data", &[]), tcp_v6(b"data!", &[])] {
        let c = classify(&frame).unwrap();
        let mut seg = TcpSegmentMut::new(&mut frame, &c).unwrap();
        seg.set_seq(SeqNum(0xdead_beef));
        seg.set_ack(SeqNum(3));
        assert_eq!((seg.seq(), seg.ack()), (SeqNum(0xdead_beef), SeqNum(3)));
        assert_eq!(l4_of(&frame), L4Checksum::Valid);
    }
}

#[test]
fn sack_edges_at_odd_offsets_keep_the_checksum_valid() {
    // One NOP puts the SACK option at an odd offset; a second pads to a multiple of 4.
    let mut options = vec![1, 5, 18];
    for v in [10u32, 20, 30, 40] {
        options.extend_from_slice(&v.to_be_bytes());
    }
    options.push(1);
    let mut frame = tcp_v4(b"sack", &options);
    let c = classify(&frame).unwrap();
    let mut seg = TcpSegmentMut::new(&mut frame, &c).unwrap();
    let shift = seg.shift_sack_edges(0xffff_fffb);
    assert_eq!(shift.edges, 4);
    assert_eq!(shift.error, None);
    assert_eq!(l4_of(&frame), L4Checksum::Valid);
    assert_eq!(&frame[54 + 3..54 + 7], &5u32.to_be_bytes());
    assert_eq!(&frame[54 + 15..54 + 19], &35u32.to_be_bytes());
}

#[test]
fn a_bad_checksum_stays_bad_by_the_same_amount() {
    let mut frame = tcp_v4(b"data", &[]);
    frame[50] ^= 0x01;
    let c = classify(&frame).unwrap();
    let before = l4_of(&frame);
    TcpSegmentMut::new(&mut frame, &c)
        .unwrap()
        .set_seq(SeqNum(5));
    let after = l4_of(&frame);
    let (
        L4Checksum::Invalid {
            found: f0,
            expected: e0,
        },
        L4Checksum::Invalid {
            found: f1,
            expected: e1,
        },
    ) = (before, after)
    else {
        panic!("{before:?} {after:?}")
    };
    assert_eq!(f0.wrapping_sub(e0), f1.wrapping_sub(e1));
}

#[test]
fn a_view_refuses_a_summary_of_another_frame() {
    let long = tcp_v4(&[0u8; 100], &[]);
    let mut short = tcp_v4(b"", &[]);
    let c = classify(&long).unwrap();
    assert!(TcpSegmentMut::new(&mut short, &c).is_none());
}

proptest! {
    #[test]
    fn tcp_checksum_agrees_with_etherparse(payload in proptest::collection::vec(any::<u8>(), 0..300),
                                           v6 in any::<bool>()) {
        let frame = if v6 { tcp_v6(&payload, &[]) } else { tcp_v4(&payload, &[]) };
        let c = classify(&frame).unwrap();
        let span = l4_span(&frame, &c).unwrap();
        let ours = l4_checksum(&frame, c.l3_offset, &span);
        let sliced = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else { unreachable!() };
        prop_assert_eq!(ours, tcp.checksum());
        prop_assert_eq!(verify_l4(&frame, &c), L4Checksum::Valid);
    }

    #[test]
    fn update16_equals_recomputation(data in proptest::collection::vec(any::<u8>(), 2..64),
                                     word in any::<prop::sample::Index>(), new in any::<u16>()) {
        let mut data = data;
        let words = data.len() / 2;
        let at = word.index(words) * 2;
        let hc = internet_checksum(&data);
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        data[at..at + 2].copy_from_slice(&new.to_be_bytes());
        let updated = update16(hc, old, new);
        // Equal as ones' complement values: both verify the new data.
        prop_assert_eq!(fold(sum_words(u64::from(updated), &data)), 0xffff);
    }

    #[test]
    fn update32_and_update_bytes_equal_recomputation(
        data in proptest::collection::vec(any::<u8>(), 8..80),
        pos in any::<prop::sample::Index>(),
        new in any::<u32>(),
    ) {
        let mut data = data;
        let at = pos.index(data.len() - 3);
        let hc = internet_checksum(&data);
        let old: [u8; 4] = data[at..at + 4].try_into().unwrap();
        data[at..at + 4].copy_from_slice(&new.to_be_bytes());
        let via_bytes = update_bytes(hc, at % 2 == 1, &old, &new.to_be_bytes());
        prop_assert_eq!(fold(sum_words(u64::from(via_bytes), &data)), 0xffff);
        if at % 2 == 0 {
            let via32 = update32(hc, u32::from_be_bytes(old), new);
            prop_assert_eq!(via32, via_bytes);
        }
    }

    #[test]
    fn rewriting_a_field_and_back_restores_the_checksum_bytes(
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        seq in any::<u32>(),
        v6 in any::<bool>(),
    ) {
        let original = if v6 { tcp_v6(&payload, &[]) } else { tcp_v4(&payload, &[]) };
        let mut frame = original.clone();
        let c = classify(&frame).unwrap();
        let mut seg = TcpSegmentMut::new(&mut frame, &c).unwrap();
        let old = seg.seq();
        seg.set_seq(SeqNum(seq));
        seg.set_seq(old);
        prop_assert_eq!(frame, original);
    }
}
