//! The frame: how one message and its bulk payload are laid out as bytes on the link.
//!
//! ```text
//! offset  size  field (integers big-endian, network order)
//!      0     4  magic "COLO" (0x43 0x4f 0x4c 0x4f)
//!      4     2  protocol version (PROTOCOL_VERSION)
//!      6     2  flags (bit 0 FLAG_MAC: a MAC tag follows the bulk; other bits reserved, 0)
//!      8     4  message length M (bytes of the bincode message)
//!     12     4  bulk length B (bytes of raw bulk payload)
//!     16     4  header CRC32C over bytes 0..16
//!     20     M  message (bincode 2, standard config: little-endian varints)
//!   20+M     B  bulk payload (pages, device state, disk data, an Ethernet frame)
//! 20+M+B     T  with FLAG_MAC only (T = 32): the keyed MAC tag over the frame counter and
//!               bytes 0..20+M+B (see `super::auth`); T = 0 without the flag
//! 20+M+B+T   4  frame CRC32C over bytes 0..20+M+B+T, except that a sealed frame's skips
//!               its bulk: over bytes 0..20+M, then the tag (the tag already covers the bulk)
//! ```
//!
//! Invariants kept here: a decoder checks the header in a fixed order (magic, version, header
//! CRC, flags, lengths against [`Limits`]) before it allocates or waits for anything, so a
//! stream of garbage or another version fails at its first bytes and a corrupted length can
//! never make a receiver wait for, or buffer, bytes that are not coming. Magic and version are
//! the only bytes every future version keeps in place. The bulk payload is never copied by the
//! decoder: [`Decoded::bulk`] borrows the input. A frame has exactly one valid encoding. A
//! sealed frame ([`decode_sealed`]) is handed out only after its tag verified, and an
//! authenticated link refuses unsealed frames as an unauthenticated one refuses sealed ones.

use super::auth::{FrameMac, MacState};
use super::codec::{MESSAGE_LEN_CEILING, decode_body, encode_body};
use super::error::WireError;
use super::message::{Message, PROTOCOL_VERSION};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"COLO";
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 20;
/// Length of the CRC32C trailer.
pub const TRAILER_LEN: usize = 4;
/// Length of the keyed MAC tag announced by [`FLAG_MAC`] (a BLAKE3 keyed hash, `super::auth`).
pub const MAC_TAG_LEN: usize = 32;
/// Header flag: a [`MAC_TAG_LEN`]-byte tag follows the bulk (frames of an authenticated link,
/// [`encode_sealed`] and [`decode_sealed`]).
pub const FLAG_MAC: u16 = 1 << 0;
/// Every flag bit this version knows.
const KNOWN_FLAGS: u16 = FLAG_MAC;

/// Size bounds a receiver enforces from the header, before allocating anything.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Largest message part accepted, in bytes. Values above [`MESSAGE_LEN_CEILING`] (1 MiB)
    /// act as the ceiling, which is also the decoder's allocation limit.
    pub max_message_len: u32,
    /// Largest bulk payload accepted, in bytes.
    pub max_bulk_len: u32,
}

impl Default for Limits {
    /// 64 KiB messages (a page batch header lists up to thousands of ranges) and 16 MiB bulk
    /// (4096 pages per batch).
    fn default() -> Self {
        Limits {
            max_message_len: 64 * 1024,
            max_bulk_len: 16 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The message limit actually in force.
    pub fn message_len_limit(&self) -> u32 {
        self.max_message_len.min(MESSAGE_LEN_CEILING)
    }

    /// The longest frame these limits accept, in bytes (a sealed one: MAC tag included).
    pub fn max_frame_len(&self) -> usize {
        HEADER_LEN
            + self.message_len_limit() as usize
            + self.max_bulk_len as usize
            + MAC_TAG_LEN
            + TRAILER_LEN
    }
}

/// A checked frame header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// Bytes of the bincode message.
    pub message_len: u32,
    /// Bytes of the bulk payload.
    pub bulk_len: u32,
    /// Whether a MAC tag follows the bulk ([`FLAG_MAC`]).
    pub mac: bool,
}

impl FrameHeader {
    /// Where the bulk ends (and the tag, if any, starts).
    pub fn bulk_end(&self) -> usize {
        HEADER_LEN + self.message_len as usize + self.bulk_len as usize
    }

    /// Where the bytes the trailer's CRC covers before the tag end: the bulk's end, or for a
    /// sealed frame the message's end (its tag covers the bulk; the CRC then covers the tag).
    pub fn crc_end(&self) -> usize {
        if self.mac {
            HEADER_LEN + self.message_len as usize
        } else {
            self.bulk_end()
        }
    }

    /// Total bytes of the frame this header opens, tag and trailer included.
    pub fn frame_len(&self) -> usize {
        self.bulk_end() + if self.mac { MAC_TAG_LEN } else { 0 } + TRAILER_LEN
    }
}

/// One decoded frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Decoded<'a> {
    /// The message.
    pub message: Message,
    /// The bulk payload, borrowed from the input (empty for messages without bulk).
    pub bulk: &'a [u8],
    /// Bytes of input the frame occupied.
    pub consumed: usize,
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the header at the start of `buf` as far as its bytes reach.
///
/// Returns `Ok(None)` while fewer than [`HEADER_LEN`] bytes are present and none of them is
/// wrong yet: magic bytes and the version are checked as soon as they arrive.
pub fn decode_header(buf: &[u8], limits: &Limits) -> Result<Option<FrameHeader>, WireError> {
    for (offset, (&found, &expected)) in buf.iter().zip(MAGIC.iter()).enumerate() {
        if found != expected {
            return Err(WireError::BadMagic {
                offset,
                found,
                expected,
            });
        }
    }
    if buf.len() >= 6 {
        let version = be_u16(buf, 4);
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: version,
                supported: PROTOCOL_VERSION,
            });
        }
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let expected = be_u32(buf, 16);
    let computed = crc32c::crc32c(&buf[..16]);
    if expected != computed {
        return Err(WireError::HeaderChecksum { expected, computed });
    }
    let flags = be_u16(buf, 6);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(WireError::UnknownFlags {
            flags: flags & !KNOWN_FLAGS,
        });
    }
    let message_len = be_u32(buf, 8);
    if message_len > limits.message_len_limit() {
        return Err(WireError::MessageTooLarge {
            len: message_len.into(),
            max: limits.message_len_limit().into(),
        });
    }
    let bulk_len = be_u32(buf, 12);
    if bulk_len > limits.max_bulk_len {
        return Err(WireError::BulkTooLarge {
            len: bulk_len.into(),
            max: limits.max_bulk_len.into(),
        });
    }
    Ok(Some(FrameHeader {
        message_len,
        bulk_len,
        mac: flags & FLAG_MAC != 0,
    }))
}

/// Decodes the (unsealed) frame at the start of `buf`.
///
/// `Ok(None)` means the frame is not complete yet (more bytes are needed; nothing is wrong so
/// far). Every `Err` is fatal for the link. Nothing is allocated beyond the message itself, and
/// only once the header has passed its checks and the whole frame's CRC matched. A sealed
/// frame is refused ([`WireError::MacUnexpected`]): this link has no key to check it with.
pub fn decode<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<Decoded<'a>>, WireError> {
    decode_with(buf, limits, MacCheck::Plain)
}

/// Decodes the sealed frame at the start of `buf`, the next one `mac` expects: as [`decode`],
/// and the frame is refused unless it carries a tag ([`WireError::MacMissing`]) that verifies
/// under `mac`'s key and frame number ([`WireError::MacMismatch`]). `mac` advances only when
/// a whole frame was checked.
pub fn decode_sealed<'a>(
    buf: &'a [u8],
    limits: &Limits,
    mac: &mut FrameMac,
) -> Result<Option<Decoded<'a>>, WireError> {
    decode_with(buf, limits, MacCheck::Sealed(mac))
}

/// How [`decode_with`] checks a frame's MAC tag and CRC.
pub(crate) enum MacCheck<'m> {
    /// An unauthenticated link: a sealed frame is refused.
    Plain,
    /// An authenticated link: the frame must be sealed, its tag is checked here.
    Sealed(&'m mut FrameMac),
    /// The streaming decoder, the frame not whole yet: only the flag is checked (`sealed`: the
    /// frame must carry a tag, else it must not). A whole frame here is checked as by `Plain`,
    /// or fails closed if sealed (the decoder passes `Streamed` for those).
    Expect {
        /// Whether the link is authenticated.
        sealed: bool,
        /// The number of the frame (for `MacMissing`).
        next: u64,
    },
    /// The streaming decoder, the frame whole: what it computed as the frame's bytes arrived.
    Streamed {
        /// The CRC32C over bytes `0..crc_end` (the tag is appended here).
        crc: u32,
        /// Sealed frames: the tag over the counter and bytes 0..bulk end, and the frame's
        /// number.
        tag: Option<(blake3::Hash, u64)>,
        /// The number the next frame would get (for `MacMissing`).
        next: u64,
    },
}

pub(crate) fn decode_with<'a>(
    buf: &'a [u8],
    limits: &Limits,
    mac: MacCheck<'_>,
) -> Result<Option<Decoded<'a>>, WireError> {
    let Some(header) = decode_header(buf, limits)? else {
        return Ok(None);
    };
    match (&mac, header.mac) {
        (MacCheck::Plain | MacCheck::Expect { sealed: false, .. }, true)
        | (MacCheck::Streamed { tag: None, .. }, true) => return Err(WireError::MacUnexpected),
        (MacCheck::Sealed(m), false) => {
            return Err(WireError::MacMissing {
                frame: m.next_frame(),
            });
        }
        (
            MacCheck::Streamed {
                tag: Some(_), next, ..
            }
            | MacCheck::Expect { sealed: true, next },
            false,
        ) => {
            return Err(WireError::MacMissing { frame: *next });
        }
        _ => {}
    }
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        return Ok(None);
    }
    let (crc_end, bulk_end) = (header.crc_end(), header.bulk_end());
    // (the tag and its frame number, the CRC over 0..crc_end)
    let (computed, crc) = match mac {
        MacCheck::Plain | MacCheck::Expect { sealed: false, .. } => {
            (None, crc32c::crc32c(&buf[..crc_end]))
        }
        MacCheck::Sealed(mac) => {
            let mut state = mac.start();
            state.update(&buf[..bulk_end]);
            (
                Some((state.tag(), state.frame())),
                crc32c::crc32c(&buf[..crc_end]),
            )
        }
        MacCheck::Streamed { crc, tag, .. } => (tag, crc),
        MacCheck::Expect { sealed: true, next } => {
            return Err(WireError::MacMismatch { frame: next });
        }
    };
    let mut crc = crc;
    if let Some((computed, frame)) = computed {
        let tag: [u8; MAC_TAG_LEN] = buf[bulk_end..bulk_end + MAC_TAG_LEN]
            .try_into()
            .expect("a tag-sized slice");
        if computed != blake3::Hash::from_bytes(tag) {
            return Err(WireError::MacMismatch { frame });
        }
        crc = crc32c::crc32c_append(crc, &tag);
    }
    let body_end = frame_len - TRAILER_LEN;
    let expected = be_u32(buf, body_end);
    if expected != crc {
        return Err(WireError::ChecksumMismatch {
            expected,
            computed: crc,
        });
    }
    let message_end = HEADER_LEN + header.message_len as usize;
    let message: Message = decode_body(&buf[HEADER_LEN..message_end])?;
    let bulk = &buf[message_end..bulk_end];
    check_bulk(&message, bulk.len())?;
    Ok(Some(Decoded {
        message,
        bulk,
        consumed: frame_len,
    }))
}

fn check_bulk(message: &Message, len: usize) -> Result<(), WireError> {
    if let Some((ranges, zero)) = message.pages() {
        // The map must fit the ranges before the bulk rule (which counts it) means anything.
        let pages = ranges
            .iter()
            .fold(0u64, |pages, r| pages.saturating_add(r.count));
        if let Err(fault) = zero.check(pages) {
            return Err(WireError::ZeroMapMismatch {
                kind: message.kind(),
                pages,
                fault,
            });
        }
    }
    let rule = message.bulk_rule();
    let len = len as u64;
    if rule.allows(len) {
        Ok(())
    } else {
        Err(WireError::BulkMismatch {
            kind: message.kind(),
            len,
            rule,
        })
    }
}

/// Appends the frame of `message` with `bulk` to `out`; returns the frame's length.
///
/// Fails (leaving `out` as it was) when the bulk does not fit the message's
/// [`super::BulkRule`], or a part exceeds what the header can describe; such a frame would be
/// refused by every receiver.
pub fn encode(message: &Message, bulk: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
    encode_with(message, bulk, out, None)
}

/// As [`encode`], for an authenticated link: the frame carries [`FLAG_MAC`] and the tag of
/// `mac`'s next frame number (which it takes).
pub fn encode_sealed(
    message: &Message,
    bulk: &[u8],
    out: &mut Vec<u8>,
    mac: &mut FrameMac,
) -> Result<usize, WireError> {
    encode_with(message, bulk, out, Some(mac))
}

fn encode_with(
    message: &Message,
    bulk: &[u8],
    out: &mut Vec<u8>,
    mac: Option<&mut FrameMac>,
) -> Result<usize, WireError> {
    let start = out.len();
    let mut tail = encode_head_with(message, bulk.len(), out, mac)?;
    out.extend_from_slice(bulk);
    tail.update(bulk);
    out.extend_from_slice(&tail.finish());
    Ok(out.len() - start)
}

/// Appends the header and message of a frame whose `bulk_len` bulk bytes the caller sends
/// itself (streamed from guest memory or a disk, never copied through the core), and returns
/// the [`FrameTail`] that computes the trailer: feed it the bulk bytes, in order, then send
/// [`FrameTail::finish`] after them.
pub fn encode_head(
    message: &Message,
    bulk_len: usize,
    out: &mut Vec<u8>,
) -> Result<FrameTail, WireError> {
    encode_head_with(message, bulk_len, out, None)
}

/// As [`encode_head`], for an authenticated link: the tail also computes the MAC tag of
/// `mac`'s next frame number (which it takes) as the bulk streams through it.
pub fn encode_head_sealed(
    message: &Message,
    bulk_len: usize,
    out: &mut Vec<u8>,
    mac: &mut FrameMac,
) -> Result<FrameTail, WireError> {
    encode_head_with(message, bulk_len, out, Some(mac))
}

fn encode_head_with(
    message: &Message,
    bulk_len: usize,
    out: &mut Vec<u8>,
    mac: Option<&mut FrameMac>,
) -> Result<FrameTail, WireError> {
    check_bulk(message, bulk_len)?;
    let bulk_len_u32 = u32::try_from(bulk_len).map_err(|_| WireError::BulkTooLarge {
        len: bulk_len as u64,
        max: u32::MAX.into(),
    })?;
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let message_len = match encode_body(message, out) {
        Ok(n) => n,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let message_len = match u32::try_from(message_len) {
        Ok(n) if n <= MESSAGE_LEN_CEILING => n,
        _ => {
            out.truncate(start);
            return Err(WireError::MessageTooLarge {
                len: message_len as u64,
                max: MESSAGE_LEN_CEILING.into(),
            });
        }
    };
    let flags = if mac.is_some() { FLAG_MAC } else { 0 };
    let header = &mut out[start..start + HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    header[6..8].copy_from_slice(&flags.to_be_bytes());
    header[8..12].copy_from_slice(&message_len.to_be_bytes());
    header[12..16].copy_from_slice(&bulk_len_u32.to_be_bytes());
    let header_crc = crc32c::crc32c(&header[..16]);
    header[16..20].copy_from_slice(&header_crc.to_be_bytes());
    let mac = mac.map(|m| {
        let mut state = m.start();
        state.update(&out[start..]);
        state
    });
    Ok(FrameTail {
        crc: crc32c::crc32c(&out[start..]),
        remaining: bulk_len,
        mac,
    })
}

/// The running CRC (or, on an authenticated link, MAC: a sealed frame's CRC skips the bulk) of
/// a frame whose bulk is being streamed (see [`encode_head`]).
#[derive(Clone, Debug)]
#[must_use = "a frame without its trailer is refused by the receiver"]
pub struct FrameTail {
    crc: u32,
    remaining: usize,
    mac: Option<MacState>,
}

impl FrameTail {
    /// Accounts for the next `chunk` of bulk bytes.
    ///
    /// # Panics
    /// If more bulk bytes are fed than the header announced (a caller bug).
    pub fn update(&mut self, chunk: &[u8]) {
        self.remaining = self.remaining.checked_sub(chunk.len()).unwrap_or_else(|| {
            panic!("FrameTail::update: more bulk bytes fed than encode_head announced")
        });
        match &mut self.mac {
            // A sealed frame's CRC skips the bulk: its tag covers it.
            Some(mac) => mac.update(chunk),
            None => self.crc = crc32c::crc32c_append(self.crc, chunk),
        }
    }

    /// Bulk bytes still to be fed.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The bytes to send after the bulk: the MAC tag (sealed frames only), then the CRC.
    ///
    /// # Panics
    /// If fewer bulk bytes were fed than the header announced (a caller bug).
    pub fn finish(self) -> Trailer {
        assert!(
            self.remaining == 0,
            "FrameTail::finish: {} announced bulk bytes were never fed",
            self.remaining
        );
        let mut bytes = [0u8; MAC_TAG_LEN + TRAILER_LEN];
        let mut crc = self.crc;
        let mut len = 0;
        if let Some(mac) = &self.mac {
            let tag = mac.tag();
            bytes[..MAC_TAG_LEN].copy_from_slice(tag.as_bytes());
            crc = crc32c::crc32c_append(crc, tag.as_bytes());
            len = MAC_TAG_LEN;
        }
        bytes[len..len + TRAILER_LEN].copy_from_slice(&crc.to_be_bytes());
        Trailer {
            bytes,
            len: len + TRAILER_LEN,
        }
    }
}

/// What follows a frame's bulk: its MAC tag if sealed, then its CRC (derefs to the bytes).
#[derive(Clone, Copy, Debug)]
pub struct Trailer {
    bytes: [u8; MAC_TAG_LEN + TRAILER_LEN],
    len: usize,
}

impl std::ops::Deref for Trailer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}
