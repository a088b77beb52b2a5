//! Zero-copy views over Ethernet frames: what the comparator and the rewriter need to know
//! about a frame, found in one pass without allocating.
//!
//! [`classify`] walks Ethernet (with up to two 802.1Q/802.1ad tags), then IPv4 or IPv6, then
//! TCP, UDP or ICMP, and returns a [`Classified`] summary: the [`FlowKey`] and byte ranges into
//! the frame. It never copies, never allocates and never panics; a frame it cannot read is an
//! error the caller handles (the comparator compares such frames whole, it never drops them).
//!
//! Invariant kept: every range in a [`Classified`] lies inside the frame it came from, and the
//! L4 payload range ends at the end of the IP packet (IPv4 total length / IPv6 payload length),
//! never at the end of the frame, so Ethernet padding is never mistaken for data.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ops::Range;
use serde::{Deserialize, Serialize};

pub mod build;
pub mod checksum;
mod mutate;
mod seq;
pub mod tcp_options;
pub use mutate::{SackShift, TcpSegmentMut};
pub use seq::SeqNum;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ) service tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Length of an Ethernet II header without tags.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// TCP header flag bits (the low byte of the flags field).
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field significant.
    pub const URG: u8 = 0x20;
}

/// Which flow a frame belongs to. The comparator keeps one primary and one secondary queue per
/// flow; the VLAN id is part of the key so tagged and untagged traffic never mix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum FlowKey {
    /// An IPv4 or IPv6 flow: the 5-tuple (ports are 0 for protocols without ports and for
    /// non-first IP fragments).
    Ip {
        /// Innermost 802.1Q VLAN id, if the frame was tagged.
        vlan: Option<u16>,
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
        /// Source port (0 if none).
        src_port: u16,
        /// Destination port (0 if none).
        dst_port: u16,
        /// IP protocol number (last next-header for IPv6).
        protocol: u8,
    },
    /// A non-IP frame (ARP, LLDP, anything else): one flow per VLAN and EtherType.
    Link {
        /// Innermost 802.1Q VLAN id, if the frame was tagged.
        vlan: Option<u16>,
        /// EtherType after the tags.
        ethertype: u16,
    },
    /// A frame too short or malformed to read: compared whole, in one flow per VLAN.
    Opaque {
        /// VLAN id if at least the tag could be read.
        vlan: Option<u16>,
    },
}

/// What [`classify`] found in a frame. All ranges index into the classified frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Classified {
    /// The flow the frame belongs to.
    pub key: FlowKey,
    /// Offset of the network (IP, ARP, ...) header: 14 plus 4 per VLAN tag.
    pub l3_offset: usize,
    /// The transport-level details.
    pub kind: Kind,
}

/// Transport-level summary of a frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A TCP segment.
    Tcp(TcpInfo),
    /// IP with a non-TCP payload (UDP, ICMP, ICMPv6, other protocols, fragments): `payload` is
    /// everything after the IP header(s), up to the IP packet's end.
    Ip {
        /// IP protocol number.
        protocol: u8,
        /// Offset of the first byte after the IP header(s).
        l4_offset: usize,
        /// Bytes after the IP header(s).
        payload: Range<usize>,
    },
    /// Not IP: compared as a whole frame.
    Link,
}

/// The fields of a TCP segment the comparator and rewriter need.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TcpInfo {
    /// Offset of the TCP header in the frame.
    pub l4_offset: usize,
    /// Sequence number.
    pub seq: SeqNum,
    /// Acknowledgment number (meaningful only with [`tcp_flags::ACK`]).
    pub ack: SeqNum,
    /// Flag byte (see [`tcp_flags`]).
    pub flags: u8,
    /// Advertised window (unscaled).
    pub window: u16,
    /// TCP header length in bytes, options included.
    pub header_len: usize,
    /// Start offset of the payload in the frame.
    pub payload_start: usize,
    /// End offset of the payload in the frame (the IP packet's end).
    pub payload_end: usize,
}

impl TcpInfo {
    /// Number of payload bytes.
    pub fn payload_len(&self) -> usize {
        self.payload_end - self.payload_start
    }

    /// Sequence space the segment occupies: payload plus one for SYN and one for FIN.
    pub fn seq_len(&self) -> u32 {
        let mut len = self.payload_len() as u32;
        if self.flags & tcp_flags::SYN != 0 {
            len = len.wrapping_add(1);
        }
        if self.flags & tcp_flags::FIN != 0 {
            len = len.wrapping_add(1);
        }
        len
    }

    /// True if the given flag bits are all set.
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }
}

/// Why a frame could not be classified.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PacketError {
    /// The frame ends inside a header.
    #[error("frame truncated in the {layer} header: need {needed} bytes, have {have}")]
    Truncated {
        /// The header being read.
        layer: Layer,
        /// Bytes needed from the start of the frame.
        needed: usize,
        /// Bytes the frame has.
        have: usize,
    },
    /// An IPv4 header whose version nibble is not 4 (or IPv6 not 6).
    #[error("{layer} header has version {version}")]
    BadVersion {
        /// The header being read.
        layer: Layer,
        /// The version found.
        version: u8,
    },
    /// A header length field smaller than the fixed header.
    #[error("{layer} header length {len} is below the minimum")]
    BadHeaderLength {
        /// The header being read.
        layer: Layer,
        /// The length the header claims.
        len: usize,
    },
    /// The IP length field claims more bytes than the frame has, or fewer than its header.
    #[error("{layer} packet length {claimed} does not fit the frame (have {have} bytes after L2)")]
    BadTotalLength {
        /// The header being read.
        layer: Layer,
        /// Length the IP header claims.
        claimed: usize,
        /// Bytes available.
        have: usize,
    },
}

/// A protocol layer, for error messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layer {
    /// Ethernet and VLAN tags.
    Ethernet,
    /// IPv4.
    Ipv4,
    /// IPv6 (including extension headers).
    Ipv6,
    /// TCP.
    Tcp,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Tcp => "TCP",
        })
    }
}

#[inline]
fn be16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

#[inline]
fn be32(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

#[inline]
fn need(frame: &[u8], layer: Layer, needed: usize) -> Result<(), PacketError> {
    if frame.len() < needed {
        Err(truncated(layer, needed, frame.len()))
    } else {
        Ok(())
    }
}

#[cold]
fn truncated(layer: Layer, needed: usize, have: usize) -> PacketError {
    PacketError::Truncated {
        layer,
        needed,
        have,
    }
}

/// The fixed-size header of `N` bytes at `at`, if the frame has it. Reading fields through
/// the array needs no further bounds checks on the hot path.
#[inline]
fn header<const N: usize>(frame: &[u8], at: usize) -> Option<&[u8; N]> {
    frame.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Reads the Ethernet header and VLAN tags: returns (innermost VLAN id, EtherType, L3 offset).
///
/// At most two tags are accepted (802.1ad outer + 802.1Q inner); a third tag makes the frame
/// non-IP (it is then compared whole, which is always safe).
#[inline]
pub fn ethernet(frame: &[u8]) -> Result<(Option<u16>, u16, usize), PacketError> {
    need(frame, Layer::Ethernet, ETHERNET_HEADER_LEN)?;
    let mut ethertype = be16(frame, 12);
    let mut offset = ETHERNET_HEADER_LEN;
    let mut vlan = None;
    for _ in 0..2 {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        need(frame, Layer::Ethernet, offset + 4)?;
        vlan = Some(be16(frame, offset) & 0x0fff);
        ethertype = be16(frame, offset + 2);
        offset += 4;
    }
    Ok((vlan, ethertype, offset))
}

/// Classifies an Ethernet frame. See the module doc.
#[inline]
pub fn classify(frame: &[u8]) -> Result<Classified, PacketError> {
    let (vlan, ethertype, l3) = ethernet(frame)?;
    match ethertype {
        ETHERTYPE_IPV4 => classify_ipv4(frame, vlan, l3),
        ETHERTYPE_IPV6 => classify_ipv6(frame, vlan, l3),
        _ => Ok(Classified {
            key: FlowKey::Link { vlan, ethertype },
            l3_offset: l3,
            kind: Kind::Link,
        }),
    }
}

/// Like [`classify`], but a frame that cannot be read becomes a [`FlowKey::Opaque`] flow compared
/// whole, so callers that must never drop a frame always get a summary.
pub fn classify_or_opaque(frame: &[u8]) -> Classified {
    classify(frame).unwrap_or_else(|_| {
        let vlan = ethernet(frame).ok().and_then(|(vlan, _, _)| vlan);
        Classified {
            key: FlowKey::Opaque { vlan },
            l3_offset: frame.len(),
            kind: Kind::Link,
        }
    })
}

#[inline]
fn classify_ipv4(frame: &[u8], vlan: Option<u16>, l3: usize) -> Result<Classified, PacketError> {
    let Some(ip) = header::<20>(frame, l3) else {
        return Err(truncated(Layer::Ipv4, l3 + 20, frame.len()));
    };
    let version = ip[0] >> 4;
    if version != 4 {
        return Err(PacketError::BadVersion {
            layer: Layer::Ipv4,
            version,
        });
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(PacketError::BadHeaderLength {
            layer: Layer::Ipv4,
            len: ihl,
        });
    }
    need(frame, Layer::Ipv4, l3 + ihl)?;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let have = frame.len() - l3;
    if total < ihl || total > have {
        return Err(PacketError::BadTotalLength {
            layer: Layer::Ipv4,
            claimed: total,
            have,
        });
    }
    let end = l3 + total;
    let protocol = ip[9];
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    // A fragment (MF set or a non-zero offset) carries no complete L4 header we could trust for
    // ports or sequence numbers: compare it as opaque IP payload in a port-less flow.
    let fragmented = frag & 0x3fff != 0;
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    transport(
        frame,
        vlan,
        l3,
        src,
        dst,
        protocol,
        l3 + ihl,
        end,
        fragmented,
    )
}

fn classify_ipv6(frame: &[u8], vlan: Option<u16>, l3: usize) -> Result<Classified, PacketError> {
    need(frame, Layer::Ipv6, l3 + 40)?;
    let version = frame[l3] >> 4;
    if version != 6 {
        return Err(PacketError::BadVersion {
            layer: Layer::Ipv6,
            version,
        });
    }
    let payload_len = usize::from(be16(frame, l3 + 4));
    let have = frame.len() - l3 - 40;
    if payload_len > have {
        return Err(PacketError::BadTotalLength {
            layer: Layer::Ipv6,
            claimed: payload_len,
            have,
        });
    }
    let end = l3 + 40 + payload_len;
    let mut src = [0u8; 16];
    src.copy_from_slice(&frame[l3 + 8..l3 + 24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&frame[l3 + 24..l3 + 40]);
    let (src, dst) = (
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
    );

    // Walk the extension headers we know (hop-by-hop, routing, fragment, destination options);
    // anything else is the upper-layer protocol.
    let mut next = frame[l3 + 6];
    let mut at = l3 + 40;
    let mut fragmented = false;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                if at + 8 > end {
                    return Err(PacketError::Truncated {
                        layer: Layer::Ipv6,
                        needed: at + 8,
                        have: end,
                    });
                }
                let len = (usize::from(frame[at + 1]) + 1) * 8;
                if at + len > end {
                    return Err(PacketError::Truncated {
                        layer: Layer::Ipv6,
                        needed: at + len,
                        have: end,
                    });
                }
                next = frame[at];
                at += len;
            }
            44 => {
                if at + 8 > end {
                    return Err(PacketError::Truncated {
                        layer: Layer::Ipv6,
                        needed: at + 8,
                        have: end,
                    });
                }
                let off_mf = be16(frame, at + 2);
                fragmented = off_mf & 0xfff9 != 0;
                next = frame[at];
                at += 8;
            }
            _ => break,
        }
    }
    transport(frame, vlan, l3, src, dst, next, at, end, fragmented)
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn transport(
    frame: &[u8],
    vlan: Option<u16>,
    l3: usize,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    l4: usize,
    end: usize,
    fragmented: bool,
) -> Result<Classified, PacketError> {
    let ip_flow = |src_port, dst_port| FlowKey::Ip {
        vlan,
        src,
        dst,
        src_port,
        dst_port,
        protocol,
    };
    let opaque_ip = |key| Classified {
        key,
        l3_offset: l3,
        kind: Kind::Ip {
            protocol,
            l4_offset: l4,
            payload: l4..end,
        },
    };
    if fragmented {
        return Ok(opaque_ip(ip_flow(0, 0)));
    }
    match protocol {
        IPPROTO_TCP => {
            let tcp = match header::<20>(&frame[..end], l4) {
                Some(tcp) => tcp,
                None => return Err(truncated(Layer::Tcp, l4 + 20, end)),
            };
            let header_len = usize::from(tcp[12] >> 4) * 4;
            if header_len < 20 {
                return Err(PacketError::BadHeaderLength { layer: Layer::Tcp, len: header_len });
            }
            if l4 + header_len > end {
                return Err(truncated(Layer::Tcp, l4 + header_len, end));
            }
            let info = TcpInfo {
                l4_offset: l4,
                seq: SeqNum(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]])),
                ack: SeqNum(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]])),
                flags: tcp[13],
                window: u16::from_be_bytes([tcp[14], tcp[15]]),
                header_len,
                payload_start: l4 + header_len,
                payload_end: end,
            };
            Ok(Classified {
                key: ip_flow(
                    u16::from_be_bytes([tcp[0], tcp[1]]),
                    u16::from_be_bytes([tcp[2], tcp[3]]),
                ),
                l3_offset: l3,
                kind: Kind::Tcp(info),
            })
        }
        // UDP and friends: ports identify the flow if the header is there; the comparison
        // covers everything after the IP header either way.
        IPPROTO_UDP | 132 /* SCTP */ | 136 /* UDP-Lite */ if l4 + 4 <= end => {
            Ok(opaque_ip(ip_flow(be16(frame, l4), be16(frame, l4 + 2))))
        }
        _ => Ok(opaque_ip(ip_flow(0, 0))),
    }
}

#[cfg(test)]
mod tests;
