//! Internet checksums: the full computation (RFC 1071) for the IPv4 header and for TCP, UDP,
//! ICMP and ICMPv6 (with the IPv4 or IPv6 pseudo-header), and the incremental update of RFC 1624
//! that the TCP rewriter uses so it never re-reads a payload to move a sequence number.
//!
//! Invariant kept: a checksum that verified before an incremental update verifies after it, and
//! one that did not verify stays wrong by the same amount (a corrupted frame is never
//! "laundered" into a valid one). Updates use RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`,
//! which never produces the `0xffff` form that equation 2 can, so rewriting a field and writing
//! the old value back restores the original checksum bytes exactly.

use super::{
    Classified, ETHERTYPE_IPV4, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Kind, be16,
    ethernet,
};

/// Adds `data` to a running ones' complement sum, as 16-bit big-endian words aligned to the start
/// of `data`; an odd trailing byte is padded with a zero byte (RFC 1071 section 4.1).
///
/// The accumulator is a `u64` folded only at the end: a 64 KiB packet adds at most 2^15 words of
/// at most 2^16 each, far below 2^64, so no intermediate carry is lost.
pub fn sum_words(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits with end-around carry (RFC 1071 section 2(B)).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`: the ones' complement of the ones' complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(0, data))
}

/// RFC 1624 equation 3 for one 16-bit word at an even offset: `HC' = ~(~HC + ~m + m')`.
pub fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!checksum) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// RFC 1624 for a 32-bit field at an even offset: two 16-bit word updates folded into one.
pub fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!checksum)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from((new >> 16) as u16)
        + u64::from(new as u16);
    !fold(acc)
}

/// RFC 1624 for bytes at any offset: `old` and `new` (same length) start at a position whose
/// parity relative to the checksummed data is `odd` (true when the first byte is the low byte
/// of a 16-bit word). Needed for SACK edges, which sit at odd offsets after a single NOP.
pub fn update_bytes(checksum: u16, odd: bool, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len(), "update_bytes needs equal lengths");
    let weigh = |bytes: &[u8]| -> u64 {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                // A byte in the high half of its word weighs 2^8 (RFC 1071 section 2(A)).
                if (i % 2 == 0) != odd {
                    u64::from(b) << 8
                } else {
                    u64::from(b)
                }
            })
            .sum()
    };
    let m = fold(weigh(old));
    let m_new = fold(weigh(new));
    !fold(u64::from(!checksum) + u64::from(!m) + u64::from(m_new))
}

/// Computes the IPv4 header checksum of `header` (the whole header, options included), treating
/// the checksum field (bytes 10-11) as zero.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let acc = match header.get(12..) {
        Some(after) => sum_words(sum_words(0, &header[..10]), after),
        // Too short to hold the field: nothing to skip.
        None => sum_words(0, header),
    };
    !fold(acc)
}

/// True if an IPv4 header (options included) carries a correct checksum: the sum over the whole
/// header, checksum field included, is all ones (RFC 1071 section 1).
pub fn verify_ipv4_header(header: &[u8]) -> bool {
    header.len() >= 20 && fold(sum_words(0, header)) == 0xffff
}

/// Writes the correct IPv4 header checksum into the frame's IPv4 header, if it has one. Returns
/// false (and writes nothing) when the frame is not IPv4 or its header is truncated.
pub fn fill_ipv4_header(frame: &mut [u8]) -> bool {
    let Some(range) = ipv4_header_range(frame) else {
        return false;
    };
    let sum = ipv4_header_checksum(&frame[range.clone()]);
    frame[range.start + 10..range.start + 12].copy_from_slice(&sum.to_be_bytes());
    true
}

/// The IPv4 header of a frame (after Ethernet and VLAN tags), if the frame is IPv4 and the header
/// fits.
pub fn ipv4_header_range(frame: &[u8]) -> Option<core::ops::Range<usize>> {
    let (_, ethertype, l3) = ethernet(frame).ok()?;
    if ethertype != ETHERTYPE_IPV4 || frame.len() < l3 + 20 || frame[l3] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    (ihl >= 20 && frame.len() >= l3 + ihl).then_some(l3..l3 + ihl)
}

/// What [`verify_l4`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum L4Checksum {
    /// The checksum verifies.
    Valid,
    /// The checksum does not verify.
    Invalid {
        /// The value in the frame.
        found: u16,
        /// The value that would verify.
        expected: u16,
    },
    /// UDP over IPv4 with checksum 0: the sender chose not to compute one (RFC 768).
    Absent,
    /// No checksum to verify: a fragment, a protocol without a checksum we know, or a header
    /// too short to hold the checksum field.
    NotApplicable,
}

/// Where a frame's L4 checksum lives and what it covers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct L4Span {
    /// IP protocol number (TCP, UDP, ICMP or ICMPv6).
    pub protocol: u8,
    /// Offset of the L4 header.
    pub start: usize,
    /// End of the IP packet.
    pub end: usize,
    /// Offset of the 16-bit checksum field.
    pub checksum_at: usize,
}

/// Finds the checksummed L4 span of a classified frame, or `None` for fragments, non-IP frames,
/// protocols without a known checksum and headers too short to hold the checksum field.
pub fn l4_span(frame: &[u8], classified: &Classified) -> Option<L4Span> {
    let (protocol, start, end) = match &classified.kind {
        Kind::Tcp(t) => (IPPROTO_TCP, t.l4_offset, t.payload_end),
        Kind::Ip {
            protocol,
            l4_offset,
            payload,
        } => (*protocol, *l4_offset, payload.end),
        Kind::Link => return None,
    };
    if is_fragment(frame, classified.l3_offset, start) {
        return None;
    }
    let field = match protocol {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => 2,
        _ => return None,
    };
    (start + field + 2 <= end && end <= frame.len()).then_some(L4Span {
        protocol,
        start,
        end,
        checksum_at: start + field,
    })
}

/// True if the IP packet at `l3` is a fragment (IPv4 MF or offset; an IPv6 fragment header with
/// MF or offset). Atomic IPv6 fragments (offset 0, MF clear, RFC 8200 section 4.5) carry the
/// whole upper-layer packet, so they are not fragments here, matching [`super::classify`].
fn is_fragment(frame: &[u8], l3: usize, l4: usize) -> bool {
    match frame.get(l3).map(|b| b >> 4) {
        Some(4) => frame.len() >= l3 + 8 && be16(frame, l3 + 6) & 0x3fff != 0,
        Some(6) => {
            if frame.len() < l3 + 40 {
                return false;
            }
            let (mut next, mut at) = (frame[l3 + 6], l3 + 40);
            while at + 8 <= l4 {
                match next {
                    44 => return be16(frame, at + 2) & 0xfff9 != 0,
                    0 | 43 | 60 => {
                        next = frame[at];
                        at += (usize::from(frame[at + 1]) + 1) * 8;
                    }
                    _ => return false,
                }
            }
            false
        }
        _ => false,
    }
}

/// The ones' complement sum of the pseudo-header (RFC 9293 section 3.1 for IPv4, RFC 8200
/// section 8.1 for IPv6) for an upper-layer packet of `len` bytes. ICMP over IPv4 has no
/// pseudo-header (RFC 792), so the sum is 0.
///
/// Known limit: with an IPv6 routing header the pseudo-header should carry the final
/// destination (RFC 8200 section 8.1); this uses the destination field of the fixed header.
fn pseudo_header_sum(frame: &[u8], l3: usize, protocol: u8, len: usize) -> u64 {
    match frame[l3] >> 4 {
        4 if protocol == IPPROTO_ICMP => 0,
        4 => {
            let acc = sum_words(0, &frame[l3 + 12..l3 + 20]);
            acc + u64::from(protocol) + len as u64
        }
        _ => {
            let acc = sum_words(0, &frame[l3 + 8..l3 + 40]);
            acc + (len as u64 >> 16) + (len as u64 & 0xffff) + u64::from(protocol)
        }
    }
}

/// Computes the checksum the L4 header of `span` should carry (checksum field taken as zero).
pub fn l4_checksum(frame: &[u8], l3: usize, span: &L4Span) -> u16 {
    let data = &frame[span.start..span.end];
    let field = span.checksum_at - span.start;
    let mut acc = pseudo_header_sum(frame, l3, span.protocol, data.len());
    acc = sum_words(acc, &data[..field]);
    // `field` is even for every protocol we know, so word alignment is kept.
    acc = sum_words(acc, &data[field + 2..]);
    let sum = !fold(acc);
    // RFC 768: a computed UDP checksum of zero is sent as all ones (zero means "absent").
    if span.protocol == IPPROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

/// Verifies the TCP, UDP, ICMP or ICMPv6 checksum of a classified frame.
pub fn verify_l4(frame: &[u8], classified: &Classified) -> L4Checksum {
    let Some(span) = l4_span(frame, classified) else {
        return L4Checksum::NotApplicable;
    };
    let found = be16(frame, span.checksum_at);
    let is_v4 = frame[classified.l3_offset] >> 4 == 4;
    if span.protocol == IPPROTO_UDP && is_v4 && found == 0 {
        return L4Checksum::Absent;
    }
    let expected = l4_checksum(frame, classified.l3_offset, &span);
    // Both zero forms verify (RFC 1624 section 3): compare by the sum, not by the bits.
    let all = fold(
        pseudo_header_sum(
            frame,
            classified.l3_offset,
            span.protocol,
            span.end - span.start,
        ) + sum_words(0, &frame[span.start..span.end]),
    );
    if all == 0xffff {
        L4Checksum::Valid
    } else {
        L4Checksum::Invalid { found, expected }
    }
}

/// Writes the correct L4 checksum into a classified frame. Returns false (writing nothing) when
/// [`l4_span`] finds no checksum to fill.
pub fn fill_l4(frame: &mut [u8], classified: &Classified) -> bool {
    let Some(span) = l4_span(frame, classified) else {
        return false;
    };
    let sum = l4_checksum(frame, classified.l3_offset, &span);
    frame[span.checksum_at..span.checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

#[cfg(test)]
#[path = "checksum_tests.rs"]
mod tests;
