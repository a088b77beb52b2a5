//! The authenticated link: the pair key's handshake and the per-frame keyed MAC
//! (docs/protocol.md, "Authentication"). Pure functions only: the runtime draws the nonces
//! from the OS, moves the bytes over its sockets and keeps the key file.
//!
//! Handshake (both sides send without waiting for the other, so neither can deadlock):
//!
//! ```text
//! 1. each side sends   AuthHello = "COLA" | version u16 BE | 0u16 | nonce (32 random bytes)
//! 2. each side sends   proof = BLAKE3-keyed(key, "colo auth v1 proof" | side | Nc | Na)
//! 3. each side checks the other side's proof; a mismatch closes the link
//! ```
//!
//! `Nc` is the connecting side's nonce, `Na` the accepting side's, `side` one byte (`c` or
//! `a`) naming who sends the proof, so a proof can never be reflected back to its sender.
//! Invariant: a proof is bound to both fresh nonces, so a recorded handshake replayed to a
//! node that draws a new nonce never verifies; each direction's frames are then keyed by
//! its own session key (derived from the pair key and both nonces) and by a frame counter
//! that is never sent, so a frame replayed, reordered, dropped or moved to another session
//! or direction fails its MAC. Tags are compared in constant time ([`blake3::Hash`]'s `==`).

use super::message::PROTOCOL_VERSION;

/// Length of the pair key (a BLAKE3 key).
pub const KEY_LEN: usize = 32;
/// Length of each side's handshake nonce.
pub const NONCE_LEN: usize = 32;
/// The four bytes an [`auth_hello`] starts with (a frame starts with `COLO`).
pub const AUTH_MAGIC: [u8; 4] = *b"COLA";
/// Length of an [`auth_hello`].
pub const AUTH_HELLO_LEN: usize = 8 + NONCE_LEN;
/// Length of a handshake proof.
pub const PROOF_LEN: usize = 32;

const PROOF_CONTEXT: &[u8] = b"colo auth v1 proof";
const SESSION_CONTEXT: &[u8] = b"colo auth v1 session";

/// Which end of the TCP connection a node is (it fixes the labels of proofs and session keys).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinkSide {
    /// The side that connected.
    Connector,
    /// The side that accepted.
    Acceptor,
}

impl LinkSide {
    fn label(self) -> u8 {
        match self {
            LinkSide::Connector => b'c',
            LinkSide::Acceptor => b'a',
        }
    }

    /// The other end.
    pub fn peer(self) -> LinkSide {
        match self {
            LinkSide::Connector => LinkSide::Acceptor,
            LinkSide::Acceptor => LinkSide::Connector,
        }
    }
}

/// Why a handshake failed. Every variant ends the link before any frame is read.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer started with a frame instead of a handshake: it runs without a key.
    #[error(
        "the peer sent a frame without authenticating (it has no key file, or is not colo with authentication)"
    )]
    MissingKey,
    /// The first bytes are neither a handshake nor a frame.
    #[error("the peer's first bytes are not a colo handshake (found {found:02x?})")]
    NotAHandshake {
        /// The first four bytes received.
        found: [u8; 4],
    },
    /// The peer's handshake names another protocol version.
    #[error("the peer's handshake is protocol version {found} (this node speaks {supported})")]
    UnsupportedVersion {
        /// The version in the handshake.
        found: u16,
        /// [`PROTOCOL_VERSION`].
        supported: u16,
    },
    /// The peer's handshake sets reserved bits.
    #[error("the peer's handshake sets reserved bits {bits:#06x}")]
    Reserved {
        /// The reserved field as sent.
        bits: u16,
    },
    /// The peer sent back this node's own nonce, or a nonce this node has already seen: a
    /// recorded handshake is being replayed (or reflected).
    #[error("replayed handshake: the peer's nonce was already used on an earlier link")]
    Replayed,
    /// The peer's proof does not verify under this node's key and this link's nonces.
    #[error(
        "the peer does not hold this pair's key (its handshake proof does not verify: wrong key file, or a replayed handshake)"
    )]
    WrongKey,
}

/// The first handshake message: magic, version, reserved, this side's nonce.
pub fn auth_hello(nonce: &[u8; NONCE_LEN]) -> [u8; AUTH_HELLO_LEN] {
    let mut out = [0u8; AUTH_HELLO_LEN];
    out[0..4].copy_from_slice(&AUTH_MAGIC);
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out[8..].copy_from_slice(nonce);
    out
}

/// Checks a peer's [`auth_hello`] and returns its nonce.
pub fn parse_auth_hello(bytes: &[u8; AUTH_HELLO_LEN]) -> Result<[u8; NONCE_LEN], AuthError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic == super::frame::MAGIC {
        return Err(AuthError::MissingKey);
    }
    if magic != AUTH_MAGIC {
        return Err(AuthError::NotAHandshake { found: magic });
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(AuthError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let bits = u16::from_be_bytes([bytes[6], bytes[7]]);
    if bits != 0 {
        return Err(AuthError::Reserved { bits });
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[8..]);
    Ok(nonce)
}

/// The nonces of one handshake, named by side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Nonces {
    /// The connecting side's nonce.
    pub connector: [u8; NONCE_LEN],
    /// The accepting side's nonce.
    pub acceptor: [u8; NONCE_LEN],
}

impl Nonces {
    /// The nonces from one side's view: its own and the peer's.
    pub fn new(side: LinkSide, own: [u8; NONCE_LEN], peer: [u8; NONCE_LEN]) -> Nonces {
        match side {
            LinkSide::Connector => Nonces {
                connector: own,
                acceptor: peer,
            },
            LinkSide::Acceptor => Nonces {
                connector: peer,
                acceptor: own,
            },
        }
    }

    fn hash(&self, key: &[u8; KEY_LEN], context: &[u8], side: LinkSide) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(context);
        h.update(&[side.label()]);
        h.update(&self.connector);
        h.update(&self.acceptor);
        h.finalize()
    }
}

/// The proof `side` sends: it shows the key without revealing it, bound to both nonces.
pub fn proof(key: &[u8; KEY_LEN], side: LinkSide, nonces: &Nonces) -> [u8; PROOF_LEN] {
    *nonces.hash(key, PROOF_CONTEXT, side).as_bytes()
}

/// Checks the proof the peer of `side` sent (in constant time).
pub fn verify_proof(
    key: &[u8; KEY_LEN],
    side: LinkSide,
    nonces: &Nonces,
    received: &[u8; PROOF_LEN],
) -> Result<(), AuthError> {
    let expected = nonces.hash(key, PROOF_CONTEXT, side.peer());
    if expected == blake3::Hash::from_bytes(*received) {
        Ok(())
    } else {
        Err(AuthError::WrongKey)
    }
}

/// The two frame MACs of an authenticated link, from one side's view.
#[derive(Clone, Debug)]
pub struct Session {
    /// Seals the frames this side sends.
    pub send: FrameMac,
    /// Checks the frames this side receives.
    pub receive: FrameMac,
}

/// The session of a verified handshake: one key per direction, each counter at 0.
pub fn session(key: &[u8; KEY_LEN], side: LinkSide, nonces: &Nonces) -> Session {
    let key_of =
        |sender: LinkSide| FrameMac::new(*nonces.hash(key, SESSION_CONTEXT, sender).as_bytes());
    Session {
        send: key_of(side),
        receive: key_of(side.peer()),
    }
}

/// One direction's frame MAC: a session key and the number of the next frame. The tag of
/// frame `n` is BLAKE3-keyed(session key, n as u64 BE | header | message | bulk).
#[derive(Clone)]
pub struct FrameMac {
    key: [u8; KEY_LEN],
    next: u64,
}

impl std::fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the session key.
        f.debug_struct("FrameMac")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl FrameMac {
    /// A direction keyed by `key`, its first frame numbered 0.
    pub fn new(key: [u8; KEY_LEN]) -> FrameMac {
        FrameMac { key, next: 0 }
    }

    /// The number the next frame gets.
    pub fn next_frame(&self) -> u64 {
        self.next
    }

    /// Starts the tag of the next frame and advances the counter.
    pub(crate) fn start(&mut self) -> MacState {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.next.to_be_bytes());
        let state = MacState {
            hasher: h,
            frame: self.next,
        };
        self.next += 1;
        state
    }
}

/// The running tag of one frame.
#[derive(Clone, Debug)]
pub(crate) struct MacState {
    hasher: blake3::Hasher,
    frame: u64,
}

impl MacState {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    pub(crate) fn frame(&self) -> u64 {
        self.frame
    }

    pub(crate) fn tag(&self) -> blake3::Hash {
        self.hasher.finalize()
    }
}
