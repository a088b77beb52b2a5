//! A builder of well-formed Ethernet + IPv4/IPv6 + TCP frames with correct checksums, for tests,
//! fuzz bodies, benchmarks and the simulator (which must fabricate guest traffic).
//!
//! Invariant kept: every frame it returns classifies as TCP with the requested fields, its IPv4
//! header checksum and TCP checksum verify, and options are padded with EOL to a multiple of 4
//! and cut at 40 bytes, so the header is always valid.

use super::checksum::{fill_ipv4_header, fill_l4};
use super::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, IPPROTO_TCP, SeqNum, classify};
use core::net::IpAddr;

/// The fields of a TCP frame to build. Addresses of different families are an error the
/// builder resolves by mapping the destination into the source's family (see [`TcpFrame::build`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TcpFrame<'a> {
    /// 802.1Q VLAN id (low 12 bits used), if the frame is tagged.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: SeqNum,
    /// Acknowledgment number.
    pub ack: SeqNum,
    /// TCP flag byte (see [`super::tcp_flags`]).
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Raw option bytes (padded with EOL to a multiple of 4, cut at 40).
    pub options: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> TcpFrame<'a> {
    /// A plain segment between two addresses with no options and no payload.
    pub fn new(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> TcpFrame<'a> {
        TcpFrame {
            vlan: None,
            src,
            dst,
            src_port,
            dst_port,
            seq: SeqNum(0),
            ack: SeqNum(0),
            flags: super::tcp_flags::ACK,
            window: 65_535,
            options: &[],
            payload: &[],
        }
    }

    /// Serialises the frame. If the addresses are of different families, the destination is
    /// replaced by the source's family's unspecified address so the frame stays well-formed.
    /// The payload is cut so the IP packet fits its 16-bit length field.
    pub fn build(&self) -> Vec<u8> {
        let options_len = self.options.len().min(40);
        let padded = options_len.div_ceil(4) * 4;
        let tcp_len = 20 + padded;
        let v4 = matches!(self.src, IpAddr::V4(_));
        let ip_len = if v4 { 20 } else { 40 };
        let payload_max = usize::from(u16::MAX) - tcp_len - if v4 { ip_len } else { 0 };
        let payload = &self.payload[..self.payload.len().min(payload_max)];

        let mut f = Vec::with_capacity(18 + ip_len + tcp_len + payload.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        if let Some(vlan) = self.vlan {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&(vlan & 0x0fff).to_be_bytes());
        }
        let l4_total = tcp_len + payload.len();
        match (self.src, self.dst) {
            (IpAddr::V4(src), dst) => {
                let dst = match dst {
                    IpAddr::V4(d) => d,
                    IpAddr::V6(_) => core::net::Ipv4Addr::UNSPECIFIED,
                };
                f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&((20 + l4_total) as u16).to_be_bytes());
                // Identification 0, don't-fragment, TTL 64, TCP, checksum filled below.
                f.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
            }
            (IpAddr::V6(src), dst) => {
                let dst = match dst {
                    IpAddr::V6(d) => d,
                    IpAddr::V4(_) => core::net::Ipv6Addr::UNSPECIFIED,
                };
                f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4_total as u16).to_be_bytes());
                f.extend_from_slice(&[IPPROTO_TCP, 64]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
            }
        }
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&self.seq.0.to_be_bytes());
        f.extend_from_slice(&self.ack.0.to_be_bytes());
        f.push(((tcp_len / 4) as u8) << 4);
        f.push(self.flags);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        f.extend_from_slice(&self.options[..options_len]);
        f.resize(f.len() + padded - options_len, 0);
        f.extend_from_slice(payload);

        fill_ipv4_header(&mut f);
        if let Ok(c) = classify(&f) {
            fill_l4(&mut f, &c);
        }
        f
    }
}

/// Builds a SACK option (kind 5) for the given (left, right) edges, preceded by two NOPs so the
/// edges are 4-byte aligned as Linux sends them. At most four blocks are used.
pub fn sack_option(blocks: &[(SeqNum, SeqNum)]) -> Vec<u8> {
    let blocks = &blocks[..blocks.len().min(4)];
    let mut o = vec![1, 1, 5, (2 + 8 * blocks.len()) as u8];
    for (l, r) in blocks {
        o.extend_from_slice(&l.0.to_be_bytes());
        o.extend_from_slice(&r.0.to_be_bytes());
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum::{L4Checksum, verify_ipv4_header, verify_l4};
    use crate::packet::{Kind, tcp_flags};

    #[test]
    fn built_frames_classify_and_verify() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "fd00::7".parse().unwrap();
        let opts = sack_option(&[(SeqNum(5), SeqNum(9))]);
        for (src, dst, vlan) in [(v4, v4, None), (v6, v6, Some(12)), (v4, v6, Some(4095))] {
            let frame = TcpFrame {
                vlan,
                seq: SeqNum(0xfedc_ba98),
                ack: SeqNum(17),
                flags: tcp_flags::ACK | tcp_flags::PSH,
                options: &opts,
                payload: b"abc",
                ..TcpFrame::new(src, dst, 1234, 80)
            }
            .build();
            let c = classify(&frame).unwrap();
            let Kind::Tcp(t) = c.kind else {
                panic!("not TCP")
            };
            assert_eq!(
                (t.seq, t.ack, t.header_len),
                (SeqNum(0xfedc_ba98), SeqNum(17), 32)
            );
            assert_eq!(&frame[t.payload_start..t.payload_end], b"abc");
            assert_eq!(verify_l4(&frame, &c), L4Checksum::Valid);
            if src.is_ipv4() {
                assert!(verify_ipv4_header(&frame[c.l3_offset..c.l3_offset + 20]));
            }
        }
    }

    #[test]
    fn etherparse_accepts_built_frames() {
        let frame = TcpFrame {
            payload: b"hello",
            ..TcpFrame::new("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
        }
        .build();
        let p = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("etherparse found no TCP")
        };
        assert_eq!(tcp.payload(), b"hello");
    }
}
