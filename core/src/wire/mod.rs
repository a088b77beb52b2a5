//! The versioned peer protocol between a primary and a secondary colo node (one TCP link), and
//! the arbiter protocol (lease requests), with their framing codec.
//!
//! - [`message`]: the vocabulary ([`Message`]), each kind's direction and bulk rule.
//! - [`frame`]: the frame layout, [`encode`], [`decode`], [`Limits`], streaming
//!   [`encode_head`] for bulk the runtime sends itself.
//! - [`decoder`]: [`FrameDecoder`], which reassembles frames from arbitrary chunks.
//! - [`error`]: [`WireError`], one variant per way bytes can fail to be a frame.
//! - `codec` (private): the bincode configuration, the only place that names bincode.
//!
//! The invariant of the whole module: untrusted bytes never cause a panic or an allocation
//! beyond [`Limits`]; each failure is a typed [`WireError`] that ends the link. The layout,
//! message table and error rules are written up in `docs/protocol.md`.

mod codec;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod message;

#[cfg(test)]
mod tests;

pub use codec::MESSAGE_LEN_CEILING;
pub use decoder::FrameDecoder;
pub use error::WireError;
pub use frame::{
    Decoded, FLAG_MAC, FrameHeader, FrameTail, HEADER_LEN, Limits, MAC_TAG_LEN, MAGIC, TRAILER_LEN,
    decode, decode_header, encode, encode_head,
};
pub use message::{
    AbortReason, BulkRule, Direction, DiskResult, GoodbyeReason, HelloRejectReason, Message,
    MessageKind, PAGE_SIZE, PROTOCOL_VERSION, WriteId,
};
