//! The pair key and the authenticated link's I/O: `colo keygen`, loading a key file, and the
//! handshake over a fresh TCP connection (the pure parts, proofs and frame MACs, are in
//! `colo_core::wire::auth`; docs/protocol.md "Authentication").
//!
//! Invariant: a [`TcpStream`] becomes an [`AuthedLink`] only after the peer proved it holds the
//! pair key for this link's fresh nonces (drawn from the OS here); every failed handshake is
//! counted in the key's [`AuthCounts`] and ends the connection before any frame is read. The
//! key bytes are never printed (the `Debug` impls leave them out).

use colo_core::wire::auth::{
    AUTH_HELLO_LEN, AUTH_MAGIC, KEY_LEN, NONCE_LEN, Nonces, PROOF_LEN, auth_hello,
    parse_auth_hello, proof, session, verify_proof,
};
use colo_core::wire::{AuthError, FrameDecoder, Limits, LinkSide, MAGIC, Session};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::PeerWriter;

/// How long a peer has to complete its half of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many recent peer nonces a key remembers to name a replayed handshake as such (an
/// older replay still fails, as a proof that does not verify).
const REMEMBERED_NONCES: usize = 4096;

/// Handshakes a process runs at once (each on its own thread for up to the handshake timeout).
/// A connection beyond that is closed at once and counted as refused: a flood of silent
/// connections costs a bounded number of threads, and the real peer, which retries, gets in
/// once the flood's handshakes time out.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 16;

/// The pair's shared secret, with this process's counters of refused links and bad frames.
/// Clones share the counters and the memory of used nonces.
#[derive(Clone)]
pub struct PairKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    key: [u8; KEY_LEN],
    seen: Mutex<VecDeque<[u8; NONCE_LEN]>>,
    refused_links: AtomicU64,
    bad_frames: AtomicU64,
    /// Accepted connections whose handshake thread runs now.
    handshakes: AtomicUsize,
}

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairKey")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

/// What a key's links were refused for, since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthCounts {
    /// Connections whose handshake failed (wrong or missing key, replay, timeout).
    pub refused_links: u64,
    /// Authenticated links closed by a frame that failed its checks (MAC, CRC, format).
    pub bad_frames: u64,
}

impl PairKey {
    /// A key from its bytes.
    pub fn from_bytes(key: [u8; KEY_LEN]) -> PairKey {
        PairKey {
            inner: Arc::new(KeyInner {
                key,
                seen: Mutex::new(VecDeque::new()),
                refused_links: AtomicU64::new(0),
                bad_frames: AtomicU64::new(0),
                handshakes: AtomicUsize::new(0),
            }),
        }
    }

    /// A fresh key from the OS's random source.
    pub fn generate() -> Result<PairKey, KeyFileError> {
        Ok(PairKey::from_bytes(random_bytes()?))
    }

    /// Reads a key file written by [`write_key_file`]: 64 hex digits (one line), readable by
    /// its owner only. Anything else is an error naming the file and what is wrong.
    pub fn load(path: &Path) -> Result<PairKey, KeyFileError> {
        let path_buf = || path.to_path_buf();
        let io = |source| KeyFileError::Read {
            path: path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(KeyFileError::NotAFile { path: path_buf() });
        }
        // 64 digits and a newline; anything much longer is not a key file (and is not read).
        if meta.len() > 2 * KEY_LEN as u64 + 2 {
            return Err(KeyFileError::WrongLength {
                path: path_buf(),
                len: meta.len(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path_buf(),
                mode,
            });
        }
        let text = std::fs::read(path).map_err(io)?;
        let hex = text.strip_suffix(b"\n").unwrap_or(&text);
        if hex.len() != 2 * KEY_LEN {
            return Err(KeyFileError::WrongLength {
                path: path_buf(),
                len: text.len() as u64,
            });
        }
        let mut key = [0u8; KEY_LEN];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digits = std::str::from_utf8(pair).ok();
            key[i] = digits.and_then(|d| u8::from_str_radix(d, 16).ok()).ok_or(
                KeyFileError::NotHex {
                    path: path_buf(),
                    at: 2 * i,
                },
            )?;
        }
        Ok(PairKey::from_bytes(key))
    }

    /// The key's bytes (tests that play a restarted node holding the same key file).
    #[cfg(test)]
    pub(crate) fn bytes_for_tests(&self) -> &[u8; KEY_LEN] {
        &self.inner.key
    }

    /// The counters so far.
    pub fn counts(&self) -> AuthCounts {
        AuthCounts {
            refused_links: self.inner.refused_links.load(Ordering::Relaxed),
            bad_frames: self.inner.bad_frames.load(Ordering::Relaxed),
        }
    }

    /// Counts an authenticated link closed by a bad frame.
    pub fn count_bad_frame(&self) {
        self.inner.bad_frames.fetch_add(1, Ordering::Relaxed);
    }

    fn count_refused(&self) {
        self.inner.refused_links.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers a peer's `nonce`; false if a peer already used it (a replayed handshake).
    fn first_use(&self, nonce: &[u8; NONCE_LEN]) -> bool {
        let mut seen = self.inner.seen.lock();
        if seen.contains(nonce) {
            return false;
        }
        if seen.len() == REMEMBERED_NONCES {
            seen.pop_front();
        }
        seen.push_back(*nonce);
        true
    }
}

/// Why a key file could not be read or written (each names the file; the text says what to do).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The OS's random source failed (no key could be made).
    #[error("the OS random source failed: {0}")]
    Random(getrandom::Error),
    /// The file could not be read (missing, unreadable).
    #[error("key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The path is a directory or something else than a regular file.
    #[error("key file {}: not a regular file", path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// The file does not hold exactly one key.
    #[error(
        "key file {}: {len} bytes; a key file holds {} hex digits (the {KEY_LEN}-byte key `colo keygen` writes)",
        path.display(),
        2 * KEY_LEN
    )]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
    /// Others than its owner may read the file.
    #[error(
        "key file {}: mode {mode:04o} lets others read it; the key must be readable by its owner only (chmod 600 {})",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A character of the key is not a hex digit.
    #[error("key file {}: byte {at} is not a hex digit", path.display())]
    NotHex {
        /// The file.
        path: PathBuf,
        /// The offset of the pair of digits that is wrong.
        at: usize,
    },
    /// `colo keygen` found a file at the path (it never overwrites a key).
    #[error(
        "key file {} already exists; colo keygen never overwrites a key (remove it first if you mean to replace the pair's key)",
        path.display()
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The new file could not be created or written.
    #[error("cannot write key file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// 32 bytes from the OS's random source.
pub fn random_bytes() -> Result<[u8; 32], KeyFileError> {
    let mut out = [0u8; 32];
    getrandom::fill(&mut out).map_err(KeyFileError::Random)?;
    Ok(out)
}

/// `colo keygen PATH`: writes a fresh key to a new file created with mode 0600 (an existing
/// file is never overwritten).
pub fn write_key_file(path: &Path) -> Result<(), KeyFileError> {
    let key = random_bytes()?;
    let mut text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    let write = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
                path: path.to_path_buf(),
            },
            _ => write(e),
        })?;
    // The umask may have narrowed the mode further, never widened it; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(write)
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer failed authentication.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The peer closed the connection before completing its half.
    #[error("the peer closed the link during the handshake (it may hold another key)")]
    Closed,
    /// The peer did not send its half in time.
    #[error("the peer did not complete the handshake in time (is it colo with a key file?)")]
    Timeout,
    /// The socket failed.
    #[error("socket error during the handshake: {0}")]
    Io(std::io::Error),
}

impl HandshakeError {
    /// Whether the peer closed or reset the connection before completing its half (an end of
    /// stream is already [`HandshakeError::Closed`]), as opposed to refusing it or timing out.
    pub fn closed_by_peer(&self) -> bool {
        match self {
            HandshakeError::Closed => true,
            HandshakeError::Io(e) => super::reset_by_peer(e),
            HandshakeError::Auth(_) | HandshakeError::Timeout => false,
        }
    }
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => HandshakeError::Closed,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                HandshakeError::Timeout
            }
            _ => HandshakeError::Io(e),
        }
    }
}

/// A connection whose peer proved it holds the pair key, with the link's session MACs.
#[derive(Debug)]
pub struct AuthedLink {
    /// The connection (blocking, no timeouts).
    pub stream: TcpStream,
    /// The frame MACs of both directions.
    pub session: Session,
}

impl AuthedLink {
    /// Splits the link into its receiving half (a stream and a decoder that checks every
    /// frame's MAC) and its sending half (a writer that seals every frame).
    pub fn split(self, limits: Limits) -> std::io::Result<(TcpStream, FrameDecoder, PeerWriter)> {
        let write_half = self.stream.try_clone()?;
        let decoder = FrameDecoder::sealed(limits, self.session.receive);
        let writer = PeerWriter::sealed(write_half, self.session.send);
        Ok((self.stream, decoder, writer))
    }

    /// The peer's address, for log lines.
    pub fn peer_addr(&self) -> String {
        self.stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string())
    }
}

/// Runs `side`'s half of the handshake on `stream` with `key`, giving the peer
/// [`HANDSHAKE_TIMEOUT`]; a failure is counted in the key's [`AuthCounts::refused_links`] and
/// the connection is shut down.
pub fn handshake(
    stream: TcpStream,
    key: &PairKey,
    side: LinkSide,
) -> Result<AuthedLink, HandshakeError> {
    handshake_within(stream, key, side, HANDSHAKE_TIMEOUT)
}

/// [`handshake`] with another limit for each of the peer's two messages (the arbiter client
/// uses its reply timeout, so a silent arbiter costs no more than an unanswered request).
pub fn handshake_within(
    stream: TcpStream,
    key: &PairKey,
    side: LinkSide,
    limit: Duration,
) -> Result<AuthedLink, HandshakeError> {
    match exchange(&stream, key, side, limit) {
        Ok(session) => Ok(AuthedLink { stream, session }),
        Err(e) => {
            key.count_refused();
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Err(e)
        }
    }
}

fn exchange(
    mut stream: &TcpStream,
    key: &PairKey,
    side: LinkSide,
    limit: Duration,
) -> Result<Session, HandshakeError> {
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let own = random_bytes().map_err(|e| HandshakeError::Io(std::io::Error::other(e)))?;
    stream.write_all(&auth_hello(&own))?;
    let mut hello = [0u8; AUTH_HELLO_LEN];
    // The magic first: a keyless peer's first frame may be shorter than a whole hello.
    stream.read_exact(&mut hello[..4])?;
    if hello[..4] == MAGIC {
        return Err(AuthError::MissingKey.into());
    }
    if hello[..4] != AUTH_MAGIC {
        return Err(AuthError::NotAHandshake {
            found: [hello[0], hello[1], hello[2], hello[3]],
        }
        .into());
    }
    stream.read_exact(&mut hello[4..])?;
    let peer = parse_auth_hello(&hello)?;
    // Our own nonce sent back is a reflection; a peer nonce seen before, a replay.
    if peer == own || !key.first_use(&peer) {
        return Err(AuthError::Replayed.into());
    }
    let nonces = Nonces::new(side, own, peer);
    stream.write_all(&proof(&key.inner.key, side, &nonces))?;
    let mut received = [0u8; PROOF_LEN];
    stream.read_exact(&mut received)?;
    verify_proof(&key.inner.key, side, &nonces, &received)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(session(&key.inner.key, side, &nonces))
}

/// Authenticates an accepted connection on its own thread (a silent peer never holds up the
/// acceptor) and hands the link to `on_link`; a refusal is logged as `<who>: link-refused`.
/// At most [`MAX_CONCURRENT_HANDSHAKES`] run at once: a connection beyond them is closed
/// unanswered and counted as refused.
pub fn spawn_accept(
    stream: TcpStream,
    key: &PairKey,
    who: &'static str,
    on_link: impl FnOnce(AuthedLink) + Send + 'static,
) {
    let from = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let Some(slot) = HandshakeSlot::take(key) else {
        key.count_refused();
        tracing::warn!(
            role = who,
            from,
            refused_links = key.counts().refused_links,
            limit = MAX_CONCURRENT_HANDSHAKES,
            "link-refused: too many handshakes in progress"
        );
        return;
    };
    let key = key.clone();
    let spawned = std::thread::Builder::new()
        .name("colo-handshake".to_string())
        .spawn(move || {
            let _slot = slot;
            match handshake(stream, &key, LinkSide::Acceptor) {
                Ok(link) => on_link(link),
                Err(e) => log_refused(who, &from, &e, &key),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(role = who, "cannot start a handshake thread: {e}");
    }
}

/// One of the key's [`MAX_CONCURRENT_HANDSHAKES`] handshake places, given back on drop.
struct HandshakeSlot {
    key: PairKey,
}

impl HandshakeSlot {
    fn take(key: &PairKey) -> Option<HandshakeSlot> {
        key.inner
            .handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONCURRENT_HANDSHAKES).then_some(n + 1)
            })
            .ok()
            .map(|_| HandshakeSlot { key: key.clone() })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.key.inner.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The log event of a refused link.
pub fn log_refused(who: &str, from: &str, why: &HandshakeError, key: &PairKey) {
    tracing::warn!(
        role = who,
        from,
        refused_links = key.counts().refused_links,
        reason = %why,
        "link-refused"
    );
}
