//! The net-server's application: a key-value store whose replies depend on history, spoken
//! as a line protocol (the same requests and replies as colo-sim's `proto.rs`):
//! `<id> SET k v` -> `<id> OK <version>`, `<id> GET k` -> `<id> VAL <v> <version>` or
//! `<id> NONE`, `<id> INCR k` -> `<id> VAL <n> <version>`, `<id> NONCE` -> `<id> NONCE <hex>`.
//! `<id> TOUCH n` -> `<id> TOUCHED n` writes one byte into each of `n` pages (at most
//! [`MAX_TOUCH`]) of a buffer the store keeps, so the next checkpoint carries them (`colo
//! bench`'s differing replies: the pause for a few hundred dirty pages; colo-sim has no pages
//! and does not speak it).
//! Two bulk requests (for throughput, `colo bench`) are recognised by [`bulk`] and carried out
//! by the server: `<id> STREAM n` -> the line `<id> STREAM n` followed by `n` bytes of
//! [`stream_byte`]; `<id> SINK n` followed by `n` raw bytes -> `<id> SUNK n` once all arrived.
//!
//! Every write bumps the key's version, so a reply names the history that produced it: a
//! lost or repeated write across a failover shows in the versions. `NONCE` answers with the
//! raw TSC, a value outside the checkpointed state: the primary's and the secondary's guests
//! answer it differently, which is how tests provoke a real output miscompare (as QEMU COLO's
//! comparator exists for guests with such nondeterminism). Invariant: the store is a
//! BTreeMap, so nothing depends on hash order.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// Longest request line accepted; a longer one is answered `? ERR` and dropped.
pub const MAX_LINE: usize = 512;

/// Largest `n` of a `STREAM` or `SINK` request (1 GiB); a larger one is answered `ERR`.
pub const MAX_BULK: u64 = 1 << 30;

/// A bulk request line: the server streams or sinks the bytes itself, outside the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bulk {
    /// Send `n` bytes of [`stream_byte`] after the header line.
    Stream { id: u64, n: u64 },
    /// Read `n` raw bytes, then answer `<id> SUNK n`.
    Sink { id: u64, n: u64 },
}

/// `Some` for a well-formed `STREAM`/`SINK` line within [`MAX_BULK`]; anything else goes to
/// [`Store::apply`] (which answers a malformed one `ERR`).
pub fn bulk(line: &str) -> Option<Bulk> {
    let mut it = line.split(' ');
    let id = it.next()?.parse::<u64>().ok()?;
    let verb = it.next()?;
    let n = it.next()?.parse::<u64>().ok().filter(|&n| n <= MAX_BULK)?;
    if it.next().is_some() {
        return None;
    }
    match verb {
        "STREAM" => Some(Bulk::Stream { id, n }),
        "SINK" => Some(Bulk::Sink { id, n }),
        _ => None,
    }
}

/// Byte `offset` of a `STREAM` reply's body: `a`..`z` repeating, so a client can check every
/// byte and both guests of a pair send the same stream.
pub fn stream_byte(offset: u64) -> u8 {
    b'a' + (offset % 26) as u8
}

/// Most pages one `TOUCH` writes (4 MiB of the heap, taken at the first `TOUCH`).
pub const MAX_TOUCH: usize = 1024;

const PAGE: usize = 4096;

/// The store.
#[derive(Default)]
pub struct Store {
    entries: BTreeMap<String, (String, u64)>,
    /// `TOUCH`'s pages (empty until the first `TOUCH`).
    touched: Vec<u8>,
    /// `TOUCH`es so far: the byte each writes, so every write changes the page.
    touches: u8,
}

fn word_ok(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic() && b != b'~')
}

impl Store {
    /// Writes one byte into each of the first `n` pages of the `TOUCH` buffer.
    fn touch(&mut self, n: usize) {
        if self.touched.is_empty() {
            self.touched = vec![0u8; MAX_TOUCH * PAGE];
        }
        self.touches = self.touches.wrapping_add(1);
        for page in self.touched.chunks_mut(PAGE).take(n) {
            // SAFETY: `page` is a live, exclusively borrowed slice of PAGE bytes; the volatile
            // write keeps the compiler from dropping a store nothing reads back.
            unsafe { core::ptr::write_volatile(page.as_mut_ptr(), self.touches) };
        }
    }

    /// Applies one request line (without its newline) and returns the reply line (with it).
    /// `nonce` is read only for `NONCE`.
    pub fn apply(&mut self, line: &str, nonce: impl FnOnce() -> u64) -> String {
        let mut it = line.split(' ');
        let Some(id) = it.next().and_then(|w| w.parse::<u64>().ok()) else {
            return String::from("? ERR\n");
        };
        let reply = match (it.next(), it.next(), it.next(), it.next()) {
            (Some("SET"), Some(k), Some(v), None) if word_ok(k) && word_ok(v) => {
                let version = self.entries.get(k).map_or(0, |e| e.1) + 1;
                self.entries.insert(k.to_string(), (v.to_string(), version));
                format!("OK {version}")
            }
            (Some("GET"), Some(k), None, None) if word_ok(k) => match self.entries.get(k) {
                Some((v, version)) => format!("VAL {v} {version}"),
                None => String::from("NONE"),
            },
            (Some("INCR"), Some(k), None, None) if word_ok(k) => {
                let (value, version) = self
                    .entries
                    .get(k)
                    .cloned()
                    .unwrap_or((String::from("0"), 0));
                match value.parse::<u64>() {
                    Ok(n) => {
                        let n = n + 1;
                        self.entries
                            .insert(k.to_string(), (format!("{n}"), version + 1));
                        format!("VAL {n} {}", version + 1)
                    }
                    Err(_) => String::from("ERR"),
                }
            }
            (Some("NONCE"), None, None, None) => format!("NONCE {:016x}", nonce()),
            (Some("TOUCH"), Some(n), None, None) => match n.parse::<usize>() {
                Ok(n) if n <= MAX_TOUCH => {
                    self.touch(n);
                    format!("TOUCHED {n}")
                }
                _ => String::from("ERR"),
            },
            _ => String::from("ERR"),
        };
        format!("{id} {reply}\n")
    }
}
