//! The typed errors of the wire codec.
//!
//! Every way untrusted bytes can fail to be a frame has its own variant here, so a runtime can
//! log what a peer did wrong and a test can reach each rule. Invariant: decoding never panics
//! and never reports "need more bytes" as an error: that case is `Ok(None)` from
//! [`super::decode`] and a normal state of [`super::FrameDecoder`]. Every variant is fatal for
//! the link: a byte stream that produced one has lost framing, so the link must be reset.

use super::message::{BulkRule, MessageKind};
use super::zero::ZeroMapFault;

/// Why bytes on the link are not a valid frame, or why a frame cannot be encoded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum WireError {
    /// A byte of the frame magic is wrong: the stream is not colo's or has lost framing.
    #[error("bad magic: byte {found:#04x} at offset {offset} (expected {expected:#04x})")]
    BadMagic {
        /// Offset of the wrong byte within the magic (0..4).
        offset: usize,
        /// The byte found.
        found: u8,
        /// The byte expected there.
        expected: u8,
    },
    /// The peer speaks another protocol version (checked before anything else is decoded).
    #[error("unsupported protocol version {found} (this node speaks {supported})")]
    UnsupportedVersion {
        /// The version in the frame header.
        found: u16,
        /// [`super::PROTOCOL_VERSION`].
        supported: u16,
    },
    /// The header's own checksum does not match: its lengths and flags cannot be trusted.
    #[error("header checksum mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// The CRC32C stored in the header.
        expected: u32,
        /// The CRC32C computed over the header bytes.
        computed: u32,
    },
    /// The header sets flag bits this version does not define.
    #[error("unknown header flags {flags:#06x}")]
    UnknownFlags {
        /// The undefined bits that were set.
        flags: u16,
    },
    /// The frame carries a MAC tag on a link that is not authenticated (no key to check it).
    #[error("frame carries a MAC tag but this link is not authenticated")]
    MacUnexpected,
    /// The frame carries no MAC tag on an authenticated link (it was not sealed by the peer).
    #[error(
        "frame {frame} of an authenticated link carries no MAC tag (not sent by the key holder)"
    )]
    MacMissing {
        /// The frame's number on this direction of the link.
        frame: u64,
    },
    /// The frame's MAC tag does not verify: it was altered, replayed, reordered or forged.
    #[error(
        "frame {frame}: MAC tag does not verify (frame altered, replayed, reordered or not sent by the key holder)"
    )]
    MacMismatch {
        /// The frame's number on this direction of the link.
        frame: u64,
    },
    /// The message part is longer than the limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Announced (or, when encoding, actual) length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The bulk payload is longer than the limit.
    #[error("bulk payload of {len} bytes exceeds the limit of {max}")]
    BulkTooLarge {
        /// Announced (or, when encoding, actual) length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The frame's CRC32C does not match its contents: the frame was corrupted.
    #[error("frame checksum mismatch: trailer says {expected:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The CRC32C in the frame trailer.
        expected: u32,
        /// The CRC32C computed over header, message and bulk.
        computed: u32,
    },
    /// The input ended inside a frame: the message ended before its last field, or the link
    /// closed with a partial frame buffered.
    #[error("truncated: {detail}")]
    Truncated {
        /// What was cut short.
        detail: String,
    },
    /// The message bytes are not a valid [`super::Message`] (bincode's error as text), or do
    /// not use exactly the announced length.
    #[error("malformed message: {detail}")]
    Malformed {
        /// What is wrong with it.
        detail: String,
    },
    /// The bulk payload's length does not fit the message's [`BulkRule`].
    #[error("{kind} message with {len} bulk bytes, expected {rule:?}")]
    BulkMismatch {
        /// The message's kind.
        kind: MessageKind,
        /// The bulk length found.
        len: u64,
        /// The rule the message sets.
        rule: BulkRule,
    },
    /// A page-carrying message's zero map does not fit its page count (wrong length, or a bit
    /// set past its last page): the bulk it announces cannot be known.
    #[error("{kind} message covers {pages} pages but its zero-page map does not fit them: {fault}")]
    ZeroMapMismatch {
        /// The message's kind.
        kind: MessageKind,
        /// The pages its ranges cover (saturating).
        pages: u64,
        /// What is wrong with the map.
        fault: ZeroMapFault,
    },
}
