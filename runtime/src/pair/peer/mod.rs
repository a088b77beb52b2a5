//! The peer transport: one TCP connection between a primary and a secondary carrying
//! `colo_core::wire` frames (header, message, bulk, crc32c trailer; docs/protocol.md). In the
//! runtime every link is authenticated first ([`auth`]: the pair key's handshake); its frames
//! are then sealed with a MAC by the writer and checked by the reader's decoder.
//!
//! A [`PeerReader`] thread owns the receiving half: it pushes whatever the socket gives into a
//! bounded [`FrameDecoder`] and hands every whole frame (message, bulk borrowed from the
//! decoder) to a callback on that thread. The first decoding error, a truncated frame at EOF, or a socket
//! error ends the link with a [`LinkClosed`] carrying a readable reason; a peer's bytes never
//! make it panic or buffer more than [`Limits::max_frame_len`](colo_core::wire::Limits::max_frame_len).
//!
//! A [`PeerWriter`] owns the sending half and is used by the node loop's thread only. Guest
//! pages are read from guest memory once per batch into the writer's batch buffer and streamed
//! from there into the socket with [`encode_head`] and a `FrameTail`
//! ([`PeerWriter::send_pages`]): all-zero pages are only marked in the frame's zero map, never
//! sent; the others are moved together in that buffer and written and hashed in one piece,
//! never copied into a message or through the core. The reader reads straight into its
//! decoder's buffer. Invariant: a frame is either written whole
//! or the writer reports an error and the link is considered down (a half-written frame is
//! never followed by another one); a frame reaches `on_frame` only after it verified.

use crate::vmm::layout::PAGE_SIZE;
use crate::vmm::memory::GuestMemory;
use colo_core::ids::PageRange;
use colo_core::wire::{
    FrameDecoder, FrameMac, Message, WireError, ZeroPages, encode, encode_head, encode_head_sealed,
    encode_sealed, is_zero_page,
};
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use vm_memory::{Bytes, GuestAddress};

pub mod auth;

/// Pages per `PageBatch` / `SyncPages` frame (one definition for core, runtime and simulator).
pub use colo_core::wire::PAGES_PER_BATCH;

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkClosed {
    /// The peer closed the connection between frames.
    #[error("the peer closed the link")]
    Eof,
    /// The bytes were not frames (corrupt, truncated, oversized, unknown version).
    #[error("corrupt peer frame: {0}")]
    Wire(#[from] WireError),
    /// The socket failed.
    #[error("peer socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The receiver refused a frame and stopped reading.
    #[error("the receiver stopped reading")]
    Stopped,
}

impl LinkClosed {
    /// Whether the peer's end closed the connection (an end of stream, even inside a frame,
    /// or a reset): its process exited or closed the link, as opposed to a path that failed
    /// or timed out, or a frame this side refused. The node gives such a peer only a short
    /// grace to come back (`LinkState::PeerClosed`).
    pub fn closed_by_peer(&self) -> bool {
        match self {
            LinkClosed::Eof | LinkClosed::Wire(WireError::Truncated { .. }) => true,
            LinkClosed::Io(e) => reset_by_peer(e),
            LinkClosed::Wire(_) | LinkClosed::Stopped => false,
        }
    }
}

/// Whether a socket error says the peer's end reset or closed the connection (a reset, an
/// abort, a broken pipe), rather than a path that failed or timed out.
pub fn reset_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// The receiving half, run on its own thread by [`PeerReader::spawn`].
#[derive(Debug)]
pub struct PeerReader;

impl PeerReader {
    /// Starts a thread that reads `stream` through `decoder` (a sealed one on an authenticated
    /// link) until it ends: `on_frame(message, bulk)` runs on
    /// that thread for every frame, with the bulk borrowed from the decoder (the caller stores
    /// it where it belongs, e.g. pages straight into the RAM cache, without an intermediate
    /// copy); it returns `false` to stop reading. `on_closed` runs once at the end.
    pub fn spawn(
        mut stream: TcpStream,
        decoder: FrameDecoder,
        mut on_frame: impl FnMut(Message, &[u8]) -> bool + Send + 'static,
        on_closed: impl FnOnce(LinkClosed) + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("colo-peer-rx".to_string())
            .spawn(move || {
                let closed = read_frames(&mut stream, decoder, &mut on_frame);
                // A refused or corrupt frame is reported with its reason (by `on_frame` or
                // `on_closed`): stop reading only, so the owner's writes until it handles
                // that report do not fail first and hide the reason behind a broken pipe.
                let how = match closed {
                    LinkClosed::Stopped | LinkClosed::Wire(_) => Shutdown::Read,
                    _ => Shutdown::Both,
                };
                let _ = stream.shutdown(how);
                on_closed(closed);
            })
    }
}

/// Reads and decodes with `decoder` until the link ends (or `on_frame` returns `false`,
/// reported as [`LinkClosed::Stopped`]); returns why it ended. The socket's bytes are read
/// straight into the decoder's buffer ([`FrameDecoder::read_with`]: a large frame's bulk in
/// reads as large as the socket gives, never copied again before `on_frame`), whose checks run
/// on each read's bytes as they arrive.
pub fn read_frames(
    stream: &mut impl Read,
    mut decoder: FrameDecoder,
    on_frame: &mut impl FnMut(Message, &[u8]) -> bool,
) -> LinkClosed {
    loop {
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => {
                    if !on_frame(frame.message, frame.bulk) {
                        return LinkClosed::Stopped;
                    }
                }
                Ok(None) => break,
                Err(e) => return LinkClosed::Wire(e),
            }
        }
        match decoder.read_with(|room| stream.read(room)) {
            Ok(0) => {
                return match decoder.finish() {
                    Ok(()) => LinkClosed::Eof,
                    Err(e) => LinkClosed::Wire(e),
                };
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return LinkClosed::Io(e),
        }
    }
}

/// Totals of a page stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagesSent {
    /// Frames written.
    pub batches: u32,
    /// Pages the frames cover, zero pages included.
    pub pages: u64,
    /// Of those, pages sent as zero pages (marked in the frame's map, no bulk).
    pub zero_pages: u64,
    /// Bulk bytes written (`PAGE_SIZE` per page that is not a zero page).
    pub bytes: u64,
}

/// The sending half.
#[derive(Debug)]
pub struct PeerWriter {
    stream: BufWriter<TcpStream>,
    scratch: Vec<u8>,
    /// One batch of pages read from guest memory (grown to at most
    /// `PAGES_PER_BATCH * PAGE_SIZE` on the first page stream).
    pages: Vec<u8>,
    /// The sending MAC of an authenticated link (None: unsealed frames).
    mac: Option<FrameMac>,
}

impl PeerWriter {
    /// Wraps the sending side of a connected stream; its frames are not sealed (tests and
    /// benchmarks of the unauthenticated format only: the runtime's links use [`Self::sealed`]).
    pub fn new(stream: TcpStream) -> PeerWriter {
        // Heartbeats and checkpoint control messages are small: never let Nagle hold them.
        let _ = stream.set_nodelay(true);
        PeerWriter {
            stream: BufWriter::with_capacity(256 * 1024, stream),
            scratch: Vec::new(),
            pages: Vec::new(),
            mac: None,
        }
    }

    /// Wraps the sending side of an authenticated link: every frame is sealed with `mac`.
    pub fn sealed(stream: TcpStream, mac: FrameMac) -> PeerWriter {
        PeerWriter {
            mac: Some(mac),
            ..PeerWriter::new(stream)
        }
    }

    /// Sends one frame with its bulk bytes and flushes it.
    pub fn send(&mut self, message: &Message, bulk: &[u8]) -> Result<(), LinkClosed> {
        self.scratch.clear();
        match &mut self.mac {
            Some(mac) => encode_sealed(message, bulk, &mut self.scratch, mac)?,
            None => encode(message, bulk, &mut self.scratch)?,
        };
        self.stream.write_all(&self.scratch)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Streams `ranges` of `mem` as frames built by `frame(batch, ranges, zero)` (a
    /// `PageBatch` or `SyncPages`), at most [`PAGES_PER_BATCH`] pages each. Each batch is read
    /// from guest memory once, its all-zero pages found ([`is_zero_page`]) and marked in the
    /// frame's map, and only the other pages, moved together, written and hashed as its bulk. Ranges outside `mem` are a
    /// caller error reported as [`LinkClosed::Io`] with `InvalidInput` before anything of the
    /// frame is written.
    pub fn send_pages(
        &mut self,
        mem: &GuestMemory,
        ranges: &[PageRange],
        frame: impl Fn(u32, Vec<PageRange>, ZeroPages) -> Message,
    ) -> Result<PagesSent, LinkClosed> {
        let mut sent = PagesSent::default();
        for batch in split_batches(ranges, PAGES_PER_BATCH) {
            let pages: u64 = batch.iter().map(|r| r.count).sum();
            self.read_batch(mem, &batch, pages)?;
            let zero = ZeroPages::from_flags(
                self.pages
                    .chunks_exact(PAGE_SIZE as usize)
                    .map(is_zero_page),
            );
            let zero_pages = zero.count();
            let bulk_len = (pages - zero_pages) * PAGE_SIZE;
            // The bulk: the batch's pages the map does not mark, moved together so they go to
            // the socket and the MAC in one piece (BLAKE3 is fastest on long inputs).
            compact_carried(&mut self.pages, &zero, pages);
            let message = frame(sent.batches, batch, zero);
            self.scratch.clear();
            let mut tail = match &mut self.mac {
                Some(mac) => {
                    encode_head_sealed(&message, bulk_len as usize, &mut self.scratch, mac)?
                }
                None => encode_head(&message, bulk_len as usize, &mut self.scratch)?,
            };
            self.stream.write_all(&self.scratch)?;
            let bulk = &self.pages[..bulk_len as usize];
            self.stream.write_all(bulk)?;
            tail.update(bulk);
            self.stream.write_all(&tail.finish())?;
            sent.batches += 1;
            sent.pages += pages;
            sent.zero_pages += zero_pages;
            sent.bytes += bulk_len;
        }
        self.stream.flush()?;
        Ok(sent)
    }

    /// Reads the `pages` pages of `ranges` from `mem` into `self.pages`, in order.
    fn read_batch(
        &mut self,
        mem: &GuestMemory,
        ranges: &[PageRange],
        pages: u64,
    ) -> Result<(), LinkClosed> {
        self.pages.resize((pages * PAGE_SIZE) as usize, 0);
        let mut at = 0usize;
        for r in ranges {
            let len = (r.count * PAGE_SIZE) as usize;
            mem.read_slice(
                &mut self.pages[at..at + len],
                GuestAddress(r.first * PAGE_SIZE),
            )
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("page range {r:?} outside guest memory: {e}"),
                )
            })?;
            at += len;
        }
        Ok(())
    }

    /// Closes the connection both ways (the peer's reader sees EOF).
    pub fn close(mut self) {
        let _ = self.stream.flush();
        let _ = self.stream.get_ref().shutdown(Shutdown::Both);
    }
}

/// Moves the pages of `batch` (`pages` pages in order) that `zero` does not mark to its front,
/// keeping their order, and returns them: the frame's bulk. Pages before the first zero page
/// do not move.
fn compact_carried<'b>(batch: &'b mut [u8], zero: &ZeroPages, pages: u64) -> &'b [u8] {
    let page = PAGE_SIZE as usize;
    let mut kept = 0usize;
    for i in 0..pages {
        if zero.is_zero(i) {
            continue;
        }
        let at = i as usize * page;
        if at != kept {
            batch.copy_within(at..at + page, kept);
        }
        kept += page;
    }
    &batch[..kept]
}

/// Splits `ranges` into batches of at most `max_pages` pages, splitting a range if needed.
pub fn split_batches(ranges: &[PageRange], max_pages: u64) -> Vec<Vec<PageRange>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut in_current = 0u64;
    for r in ranges {
        let mut first = r.first;
        let mut left = r.count;
        while left > 0 {
            let take = left.min(max_pages - in_current);
            current.push(PageRange { first, count: take });
            in_current += take;
            first += take;
            left -= take;
            if in_current == max_pages {
                out.push(std::mem::take(&mut current));
                in_current = 0;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests;
