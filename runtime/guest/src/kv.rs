//! The net-server's application: a key-value store whose replies depend on history, spoken
//! as a line protocol (the same requests and replies as colo-sim's `proto.rs`):
//! `<id> SET k v` -> `<id> OK <version>`, `<id> GET k` -> `<id> VAL <v> <version>` or
//! `<id> NONE`, `<id> INCR k` -> `<id> VAL <n> <version>`, `<id> NONCE` -> `<id> NONCE <hex>`.
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

/// The store.
#[derive(Default)]
pub struct Store {
    entries: BTreeMap<String, (String, u64)>,
}

fn word_ok(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic() && b != b'~')
}

impl Store {
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
            _ => String::from("ERR"),
        };
        format!("{id} {reply}\n")
    }
}
