//! The streaming frame decoder: bytes arrive from the link in arbitrary chunks, whole frames
//! come out.
//!
//! Invariants: its buffer never holds more than [`Limits::max_frame_len`] bytes (so a peer
//! cannot make a receiver buffer without bound: [`FrameDecoder::push`] takes only what fits,
//! and a frame too large is refused from its header); the frames it yields are exactly those
//! [`super::decode`] (or [`super::decode_sealed`]) yields on the concatenated stream, whatever the chunking; after the first error
//! it stays failed and yields that error again, because a stream that lost framing cannot be
//! resynchronised: the link must be reset.

use super::auth::{FrameMac, MacState};
use super::error::WireError;
use super::frame::{Decoded, HEADER_LEN, Limits, MacCheck, decode_header, decode_with};

/// The decoder's phase.
#[derive(Clone, Debug)]
enum Phase {
    /// Accepting bytes and yielding frames.
    // Open --decode error--> Failed
    Open,
    /// A decode error happened; it is reported again on every poll. Terminal.
    Failed(WireError),
}

/// Reassembles frames from a byte stream, with a bounded buffer.
///
/// Use: [`push`](Self::push) received bytes (it returns how many it took), then drain
/// [`poll_frame`](Self::poll_frame) until `Ok(None)`; repeat while bytes remain. After draining,
/// the buffer holds less than one frame, so the next push always takes at least one byte.
/// When the link closes, [`finish`](Self::finish) tells whether it closed between frames.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    limits: Limits,
    /// Received bytes; `buf[start..]` is not yet yielded.
    buf: Vec<u8>,
    start: usize,
    phase: Phase,
    frames: u64,
    /// The receiving MAC of an authenticated link (None: frames are unsealed).
    mac: Option<FrameMac>,
    /// The tag of the frame being received, over its first `.1` bytes (hashed as they
    /// arrive, so a large frame is verified moments after its last byte).
    hashing: Option<(MacState, usize)>,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`. It allocates lazily, as bytes arrive.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            limits,
            buf: Vec::new(),
            start: 0,
            phase: Phase::Open,
            frames: 0,
            mac: None,
            hashing: None,
        }
    }

    /// A decoder for an authenticated link: every frame must be sealed and verify under
    /// `mac` (the session's receiving side), in order, or the decoder fails.
    pub fn sealed(limits: Limits, mac: FrameMac) -> Self {
        FrameDecoder {
            mac: Some(mac),
            ..FrameDecoder::new(limits)
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The most bytes the buffer will ever hold ([`Limits::max_frame_len`]).
    pub fn capacity(&self) -> usize {
        self.limits.max_frame_len()
    }

    /// Bytes received but not yet yielded as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Frames yielded so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The error the decoder failed with, if it did.
    pub fn error(&self) -> Option<&WireError> {
        match &self.phase {
            Phase::Open => None,
            Phase::Failed(e) => Some(e),
        }
    }

    /// Appends as much of `data` as the buffer has room for; returns the number of bytes taken.
    ///
    /// Once failed, the decoder takes (and drops) everything, so a caller's push loop always
    /// ends; the error comes from [`poll_frame`](Self::poll_frame).
    pub fn push(&mut self, data: &[u8]) -> usize {
        if let Phase::Failed(_) = self.phase {
            return data.len();
        }
        if self.start > 0 {
            // Frames already yielded are dropped only now, so the slices they lent stay valid
            // until the caller pushes again.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let cap = self.capacity();
        let take = data.len().min(cap - self.buf.len());
        let needed = self.buf.len() + take;
        if needed > self.buf.capacity() {
            // Grow geometrically, but never past the bound.
            let target = needed.max(self.buf.capacity().saturating_mul(2)).min(cap);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..take]);
        take
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the error that ends the
    /// link (repeated on every later call).
    pub fn poll_frame(&mut self) -> Result<Option<Decoded<'_>>, WireError> {
        if let Phase::Failed(e) = &self.phase {
            return Err(e.clone());
        }
        let check = match self.hash_arrived() {
            Err(e) => {
                // Open --decode error--> Failed
                self.phase = Phase::Failed(e.clone());
                return Err(e);
            }
            Ok(None) => MacCheck::Plain,
            Ok(Some(check)) => check,
        };
        match decode_with(&self.buf[self.start..], &self.limits, check) {
            Ok(Some(frame)) => {
                self.hashing = None;
                self.start += frame.consumed;
                self.frames += 1;
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.hashing = None;
                // Open --decode error--> Failed
                self.phase = Phase::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// On an authenticated link, feeds the pending frame's newly arrived bytes (up to the end
    /// of its bulk) to its tag, and says how [`decode_with`] checks it: with the tag when the
    /// frame is whole, otherwise only for the sealed flag. `Ok(None)`: an unauthenticated link.
    fn hash_arrived(&mut self) -> Result<Option<MacCheck<'static>>, WireError> {
        let Some(mac) = self.mac.as_mut() else {
            return Ok(None);
        };
        let pending = &self.buf[self.start..];
        let header = match decode_header(pending, &self.limits)? {
            Some(h) if h.mac => h,
            // No header yet, or an unsealed frame: decode_with waits or refuses it.
            _ => {
                return Ok(Some(MacCheck::Expect {
                    next: mac.next_frame(),
                }));
            }
        };
        let (state, hashed) = self.hashing.get_or_insert_with(|| (mac.start(), 0));
        let upto = pending.len().min(header.bulk_end());
        if upto > *hashed {
            state.update(&pending[*hashed..upto]);
            *hashed = upto;
        }
        if pending.len() < header.frame_len() {
            return Ok(Some(MacCheck::Expect {
                next: state.frame(),
            }));
        }
        Ok(Some(MacCheck::Hashed {
            tag: state.tag(),
            frame: state.frame(),
            next: mac.next_frame(),
        }))
    }

    /// The least number of further bytes that could complete the next frame (a read-size hint;
    /// 0 when a frame is already complete or the decoder has failed).
    pub fn needed(&self) -> usize {
        if let Phase::Failed(_) = self.phase {
            return 0;
        }
        let pending = &self.buf[self.start..];
        match decode_header(pending, &self.limits) {
            Ok(Some(header)) => header.frame_len().saturating_sub(pending.len()),
            Ok(None) => HEADER_LEN - pending.len(),
            Err(_) => 0,
        }
    }

    /// Call when the link has closed: `Ok` if it closed between frames, the decoder's error if
    /// it had failed, [`WireError::Truncated`] if a partial frame was left.
    pub fn finish(&self) -> Result<(), WireError> {
        if let Phase::Failed(e) = &self.phase {
            return Err(e.clone());
        }
        match self.buffered() {
            0 => Ok(()),
            n => Err(WireError::Truncated {
                detail: format!("link closed with {n} byte(s) of an incomplete frame buffered"),
            }),
        }
    }
}
