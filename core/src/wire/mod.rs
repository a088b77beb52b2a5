//! The versioned peer protocol between a primary and a secondary colo node (one TCP link), and
//! the arbiter protocol (lease requests), with their framing codec.
//!
//! - [`message`]: the message vocabulary ([`Message`]), its directions and bulk rules.
//!
//! The frame layout and the error rules are described in `docs/protocol.md`.

pub mod message;

pub use message::{
    AbortReason, BulkRule, Direction, DiskResult, GoodbyeReason, HelloRejectReason, Message,
    MessageKind, PAGE_SIZE, PROTOCOL_VERSION, WriteId,
};
