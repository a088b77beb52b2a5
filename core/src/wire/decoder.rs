//! The streaming frame decoder: bytes arrive from the link in arbitrary chunks, whole frames
//! come out. The bytes either are pushed ([`FrameDecoder::push`], a copy) or read by the caller
//! straight into the decoder's own buffer ([`FrameDecoder::read_with`], no copy); either way
//! each frame's CRC (and on an authenticated link its MAC) is computed over its bytes as they
//! arrive, so a large frame is checked moments after its last byte.
//!
//! Invariants: its buffer never holds more than [`Limits::max_frame_len`] bytes (so a peer
//! cannot make a receiver buffer without bound: [`FrameDecoder::push`] and
//! [`FrameDecoder::read_with`] take only what fits, and a frame too large is refused from its
//! header); no frame is yielded before all of its checks passed; the frames it yields are
//! exactly those [`super::decode`] (or [`super::decode_sealed`]) yields on the concatenated
//! stream, whatever the chunking; after the first error it stays failed and yields that error
//! again, because a stream that lost framing cannot be resynchronised: the link must be reset.

use super::auth::{FrameMac, MacState};
use super::error::WireError;
use super::frame::{Decoded, HEADER_LEN, Limits, MacCheck, decode_header, decode_with};

/// The least room [`FrameDecoder::read_with`] offers a read while a frame needs fewer bytes
/// (so small frames do not cost a read each).
pub const READ_CHUNK: usize = 64 * 1024;

/// The tag is fed in pieces that end on this boundary of its input (the 8-byte frame counter,
/// then the frame), except the last: BLAKE3 hashes aligned runs of whole 1 KiB chunks with its
/// widest SIMD, where reads of arbitrary sizes would feed it ragged pieces.
const MAC_STEP: usize = 16 * 1024;

/// Bytes the tag's input holds before the frame (the frame counter).
const MAC_COUNTER_LEN: usize = 8;

/// The checks of the frame being received.
#[derive(Clone, Debug)]
struct Progress {
    /// The running tag (authenticated links only), over the frame's first `mac_done` bytes.
    mac: Option<MacState>,
    mac_done: usize,
    /// The running CRC32C over the part of the frame the trailer's CRC covers before the tag,
    /// over its first `crc_done` bytes.
    crc: u32,
    crc_done: usize,
}

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
/// Use: [`push`](Self::push) received bytes (it returns how many it took), or let a read fill
/// the buffer with [`read_with`](Self::read_with), then drain [`poll_frame`](Self::poll_frame)
/// until `Ok(None)`; repeat while bytes remain. After draining, the buffer holds less than one
/// frame, so the next push always takes at least one byte (and a read gets room).
/// When the link closes, [`finish`](Self::finish) tells whether it closed between frames.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    limits: Limits,
    /// The buffer (initialised bytes; its length only grows, up to the limit): received bytes
    /// are `buf[..end]`, of which `buf[start..end]` are not yet yielded.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    phase: Phase,
    frames: u64,
    /// The receiving MAC of an authenticated link (None: frames are unsealed).
    mac: Option<FrameMac>,
    /// The checks of the frame being received (computed as its bytes arrive).
    progress: Option<Progress>,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`. It allocates lazily, as bytes arrive.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            limits,
            buf: Vec::new(),
            start: 0,
            end: 0,
            phase: Phase::Open,
            frames: 0,
            mac: None,
            progress: None,
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
        self.end - self.start
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
        let room = self.make_room(data.len());
        let take = data.len().min(room);
        self.buf[self.end..self.end + take].copy_from_slice(&data[..take]);
        self.end += take;
        take
    }

    /// Lets `read` fill the decoder's buffer directly (a socket read without the copy of
    /// [`push`](Self::push)) and takes the bytes it reports (at most the slice's length);
    /// returns that count, or `read`'s error. Call it, as `push`, once every whole frame has
    /// been drained with [`poll_frame`](Self::poll_frame): the slice is then never empty. It
    /// holds the rest of the pending frame when that is large (so a read never has to move a
    /// large frame's bytes), otherwise [`READ_CHUNK`] bytes, never more than the limit leaves.
    ///
    /// Once failed, the bytes read are dropped (as `push` does), so a read loop still ends.
    pub fn read_with<E>(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        if let Phase::Failed(_) = self.phase {
            self.start = 0;
            self.end = 0;
            let room = self.make_room(READ_CHUNK);
            return read(&mut self.buf[..room]).map(|n| n.min(room));
        }
        let want = self.needed().max(READ_CHUNK);
        let room = self.make_room(want);
        let n = read(&mut self.buf[self.end..self.end + room])?.min(room);
        self.end += n;
        Ok(n)
    }

    /// Drops the frames already yielded and grows the buffer (geometrically, never past the
    /// limit) so that up to `want` more bytes fit; returns how many fit (at most `want`).
    fn make_room(&mut self, want: usize) -> usize {
        if self.start > 0 {
            // Frames already yielded are dropped only now, so the slices they lent stay valid
            // until the caller pushes or reads again.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let cap = self.capacity();
        let room = want.min(cap - self.end);
        let needed = self.end + room;
        if needed > self.buf.len() {
            let target = needed.max(self.buf.len().saturating_mul(2)).min(cap);
            self.buf.resize(target, 0);
        }
        room
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the error that ends the
    /// link (repeated on every later call).
    pub fn poll_frame(&mut self) -> Result<Option<Decoded<'_>>, WireError> {
        if let Phase::Failed(e) = &self.phase {
            return Err(e.clone());
        }
        let check = match self.check_arrived() {
            Err(e) => {
                self.progress = None;
                // Open --decode error--> Failed
                self.phase = Phase::Failed(e.clone());
                return Err(e);
            }
            Ok(check) => check,
        };
        match decode_with(&self.buf[self.start..self.end], &self.limits, check) {
            Ok(Some(frame)) => {
                self.progress = None;
                self.start += frame.consumed;
                self.frames += 1;
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.progress = None;
                // Open --decode error--> Failed
                self.phase = Phase::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// Feeds the pending frame's newly arrived bytes (up to the end of its bulk) to its CRC
    /// and, on an authenticated link, its tag, and says how [`decode_with`] checks it: with
    /// both when the frame is whole, otherwise only its header's flag.
    fn check_arrived(&mut self) -> Result<MacCheck<'static>, WireError> {
        let sealed = self.mac.is_some();
        let next = self.mac.as_ref().map_or(0, FrameMac::next_frame);
        let pending = &self.buf[self.start..self.end];
        let header = match decode_header(pending, &self.limits)? {
            Some(h) if h.mac == sealed => h,
            // No header yet, or a frame of the other kind: decode_with waits or refuses it.
            _ => return Ok(MacCheck::Expect { sealed, next }),
        };
        let mac = &mut self.mac;
        let progress = self.progress.get_or_insert_with(|| Progress {
            mac: mac.as_mut().map(FrameMac::start),
            mac_done: 0,
            crc: 0,
            crc_done: 0,
        });
        let (crc_end, bulk_end) = (header.crc_end(), header.bulk_end());
        let crc_upto = pending.len().min(crc_end);
        if crc_upto > progress.crc_done {
            let part = &pending[progress.crc_done..crc_upto];
            progress.crc = crc32c::crc32c_append(progress.crc, part);
            progress.crc_done = crc_upto;
        }
        if let Some(state) = &mut progress.mac {
            let mac_upto = if pending.len() >= bulk_end {
                bulk_end
            } else {
                let input = MAC_COUNTER_LEN + pending.len();
                (input - input % MAC_STEP).saturating_sub(MAC_COUNTER_LEN)
            };
            if mac_upto > progress.mac_done {
                state.update(&pending[progress.mac_done..mac_upto]);
                progress.mac_done = mac_upto;
            }
        }
        if pending.len() < header.frame_len() {
            return Ok(MacCheck::Expect {
                sealed,
                next: progress.mac.as_ref().map_or(next, MacState::frame),
            });
        }
        Ok(MacCheck::Streamed {
            crc: progress.crc,
            tag: progress.mac.as_ref().map(|m| (m.tag(), m.frame())),
            next: self.mac.as_ref().map_or(0, FrameMac::next_frame),
        })
    }

    /// The least number of further bytes that could complete the next frame (a read-size hint;
    /// 0 when a frame is already complete or the decoder has failed).
    pub fn needed(&self) -> usize {
        if let Phase::Failed(_) = self.phase {
            return 0;
        }
        let pending = &self.buf[self.start..self.end];
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
