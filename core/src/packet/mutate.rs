//! A mutable view of a TCP segment inside an Ethernet frame, in the spirit of Firecracker's
//! `dumbo` PDUs: setters write one field in place and fix the TCP checksum incrementally
//! (RFC 1624), so moving a sequence number costs a few word operations whatever the payload size.
//!
//! Invariant kept: a setter changes only the field it names and the TCP checksum field, never the
//! frame's length or any other byte, and the checksum stays exactly as valid (or as invalid) as
//! it was. The IPv4 header checksum does not cover TCP fields, so it never needs touching.

use super::checksum::{update_bytes, update32};
use super::tcp_options::{OptionError, SackEdges, TcpOptions};
use super::{Classified, Kind, SeqNum, TcpInfo, be16, be32};

/// Offset of the sequence number within the TCP header.
const SEQ_AT: usize = 4;
/// Offset of the acknowledgment number within the TCP header.
const ACK_AT: usize = 8;
/// Offset of the checksum within the TCP header.
const CHECKSUM_AT: usize = 16;
/// Length of the fixed TCP header.
const FIXED_LEN: usize = 20;

/// A TCP segment inside a frame, borrowed mutably. Built from [`super::classify`]'s result.
#[derive(Debug)]
pub struct TcpSegmentMut<'a> {
    frame: &'a mut [u8],
    info: TcpInfo,
}

/// What [`TcpSegmentMut::shift_sack_edges`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SackShift {
    /// Number of edges moved (two per block).
    pub edges: usize,
    /// The option error that ended the walk early; edges before it were moved.
    pub error: Option<OptionError>,
}

impl<'a> TcpSegmentMut<'a> {
    /// A view of the TCP segment of `frame`, which `classified` must describe (it must come from
    /// `classify(frame)` on these very bytes). Returns `None` if the frame is not TCP or if
    /// `classified` does not fit the frame.
    pub fn new(frame: &'a mut [u8], classified: &Classified) -> Option<TcpSegmentMut<'a>> {
        let Kind::Tcp(info) = classified.kind else {
            return None;
        };
        // Guard against a summary of some other frame: every offset must be inside this one.
        let fits = info.l4_offset + info.header_len <= info.payload_end
            && info.header_len >= FIXED_LEN
            && info.payload_end <= frame.len();
        fits.then_some(TcpSegmentMut { frame, info })
    }

    /// The segment's fields as they were when the view was built (seq and ack kept current).
    pub fn info(&self) -> &TcpInfo {
        &self.info
    }

    /// The whole frame.
    pub fn frame(&self) -> &[u8] {
        self.frame
    }

    /// Sequence number.
    pub fn seq(&self) -> SeqNum {
        SeqNum(be32(self.frame, self.info.l4_offset + SEQ_AT))
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> SeqNum {
        SeqNum(be32(self.frame, self.info.l4_offset + ACK_AT))
    }

    /// The TCP checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.frame, self.info.l4_offset + CHECKSUM_AT)
    }

    /// The option bytes (between the fixed header and the data offset).
    pub fn option_bytes(&self) -> &[u8] {
        let start = self.info.l4_offset + FIXED_LEN;
        &self.frame[start..self.info.l4_offset + self.info.header_len]
    }

    /// Walks the options.
    pub fn options(&self) -> TcpOptions<'_> {
        TcpOptions::new(self.option_bytes())
    }

    /// Sets the sequence number, fixing the checksum.
    pub fn set_seq(&mut self, seq: SeqNum) {
        self.write_u32_aligned(SEQ_AT, seq.0);
        self.info.seq = seq;
    }

    /// Sets the acknowledgment number, fixing the checksum.
    pub fn set_ack(&mut self, ack: SeqNum) {
        self.write_u32_aligned(ACK_AT, ack.0);
        self.info.ack = ack;
    }

    /// Adds `delta` (wrapping) to every SACK block edge, fixing the checksum. Edges of SACK
    /// options before a malformed option are moved; the error is reported, nothing panics.
    pub fn shift_sack_edges(&mut self, delta: u32) -> SackShift {
        let edges = SackEdges::find(self.option_bytes());
        if delta != 0 {
            for &offset in edges.offsets() {
                self.write_u32_any(FIXED_LEN + offset, |old| old.wrapping_add(delta));
            }
        }
        SackShift {
            edges: edges.offsets().len(),
            error: edges.error,
        }
    }

    /// Writes a 32-bit field at an even offset within the TCP header.
    fn write_u32_aligned(&mut self, field: usize, new: u32) {
        let at = self.info.l4_offset + field;
        let old = be32(self.frame, at);
        if old == new {
            return;
        }
        let sum = update32(self.checksum(), old, new);
        self.frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
        self.write_checksum(sum);
    }

    /// Rewrites a 32-bit field at any offset within the TCP header (SACK edges can sit at odd
    /// offsets when a single NOP precedes the option).
    fn write_u32_any(&mut self, field: usize, f: impl FnOnce(u32) -> u32) {
        let at = self.info.l4_offset + field;
        let old = be32(self.frame, at);
        let new = f(old);
        let sum = update_bytes(
            self.checksum(),
            field % 2 == 1,
            &old.to_be_bytes(),
            &new.to_be_bytes(),
        );
        self.frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
        self.write_checksum(sum);
    }

    fn write_checksum(&mut self, sum: u16) {
        let at = self.info.l4_offset + CHECKSUM_AT;
        self.frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
}
