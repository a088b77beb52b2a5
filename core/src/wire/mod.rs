//! The versioned peer protocol between a primary and a secondary colo node (one TCP link), and
//! the arbiter protocol (lease requests), with their framing codec.
//!
//! - [`message`]: the vocabulary ([`Message`]), each kind's direction and bulk rule.
//! - [`frame`]: the frame layout, [`encode`], [`decode`], [`Limits`], streaming
//!   [`encode_head`] for bulk the runtime sends itself.
//! - [`decoder`]: [`FrameDecoder`], which reassembles frames from arbitrary chunks.
//! - [`error`]: [`WireError`], one variant per way bytes can fail to be a frame.
//! - [`zero`]: the zero-page map of page-carrying frames ([`ZeroPages`]) and the sender's scan.
//! - [`auth`]: the pair key's handshake and the per-frame MAC of an authenticated link
//!   ([`encode_sealed`], [`decode_sealed`], [`FrameDecoder::sealed`]).
//! - `codec` (private): the bincode configuration, the only place that names bincode.
//!
//! ```
//! use colo_core::ids::{Epoch, NicId};
//! use colo_core::wire::{FrameDecoder, Limits, Message, encode};
//!
//! // Sender: a mirrored client frame travels as the bulk payload of its message.
//! let mut link = Vec::new();
//! encode(&Message::MirroredFrame { epoch: Epoch(7), nic: NicId(0) }, &[0xff; 60], &mut link).unwrap();
//! encode(&Message::CheckpointReady { epoch: Epoch(7) }, &[], &mut link).unwrap();
//!
//! // Receiver: push what the socket gave (it may be any split), drain whole frames.
//! let mut decoder = FrameDecoder::new(Limits::default());
//! let mut rest = &link[..];
//! let mut kinds = Vec::new();
//! while !rest.is_empty() {
//!     let taken = decoder.push(rest);
//!     rest = &rest[taken..];
//!     while let Some(frame) = decoder.poll_frame().expect("a peer fault ends the link") {
//!         kinds.push((frame.message.kind(), frame.bulk.len()));
//!     }
//! }
//! assert_eq!(kinds.len(), 2);
//! assert_eq!(kinds[0].1, 60);
//! ```
//!
//! The invariant of the whole module: untrusted bytes never cause a panic or an allocation
//! beyond [`Limits`]; each failure is a typed [`WireError`] that ends the link. The layout,
//! message table and error rules are written up in `docs/protocol.md`.

pub mod auth;
mod codec;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod message;
pub mod zero;

#[cfg(test)]
mod tests;

pub use auth::{AuthError, FrameMac, LinkSide, Session};
pub use codec::MESSAGE_LEN_CEILING;
pub use decoder::FrameDecoder;
pub use error::WireError;
pub use frame::{
    Decoded, FLAG_MAC, FrameHeader, FrameTail, HEADER_LEN, Limits, MAC_TAG_LEN, MAGIC, TRAILER_LEN,
    Trailer, decode, decode_header, decode_sealed, encode, encode_head, encode_head_sealed,
    encode_sealed,
};
pub use message::{
    AbortReason, BulkRule, Direction, DiskResult, GoodbyeReason, HelloRejectReason, Message,
    MessageKind, PAGE_SIZE, PAGES_PER_BATCH, PROTOCOL_VERSION, WriteId, pages_in,
};
pub use zero::{ZeroMapFault, ZeroPages, is_zero_page};
