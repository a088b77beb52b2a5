//! The line protocol of the simulated guest's application, shared by the guest and the clients.
//!
//! The application is a small key-value store whose replies depend on history (every write
//! bumps a per-key version; `INCR` returns the running count), so a reply tells which sequence
//! of writes produced it: the linearizability checker can replay a client history against a
//! single copy of the store. Requests and replies are ASCII lines ending in `\n`, each tagged
//! with the client's request id so a reply names the request it answers.
//!
//! The guest-opened direction (the guest connects out to an "upstream" server run by the client
//! side) carries `LOG <n> <key> <value>` lines, one per write in commit order, acknowledged by
//! `ACK <n>`.
//!
//! A reply may carry a VM-local random token (` ~<16 hex digits>`): the guest draws it from a
//! source outside its checkpointable state, so the primary and secondary VMs answer the same
//! request differently, as real guests do (QEMU COLO's comparator exists because of such
//! divergence). Checkers strip the token with [`Reply::parse`].

use std::fmt;

/// A request a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Store `value` under `key`; reply `Ok(version)`.
    Set { key: String, value: String },
    /// Read `key`; reply `Value` or `Missing`.
    Get { key: String },
    /// Add one to the integer under `key` (missing = 0); reply `Value` with the new count.
    Incr { key: String },
    /// Ask for a fresh random token; reply `Nonce`.
    Nonce,
}

/// A reply the guest sends, without its optional token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The write was applied; the key's new version.
    Ok { version: u64 },
    /// The key's value and version.
    Value { value: String, version: u64 },
    /// The key has never been written.
    Missing,
    /// A random token (not a function of the store).
    Nonce { token: u64 },
    /// The request could not be applied (for example `INCR` of a non-integer).
    Error,
}

/// Keys and values are single words of printable ASCII; this is the longest accepted line.
pub const MAX_LINE: usize = 512;

fn word_ok(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic() && b != b'~')
}

impl Request {
    /// The request as a line with id `id` (with the trailing newline).
    pub fn to_line(&self, id: u64) -> String {
        match self {
            Request::Set { key, value } => format!("{id} SET {key} {value}\n"),
            Request::Get { key } => format!("{id} GET {key}\n"),
            Request::Incr { key } => format!("{id} INCR {key}\n"),
            Request::Nonce => format!("{id} NONCE\n"),
        }
    }

    /// Parses a line (without its newline) into (id, request).
    pub fn parse(line: &str) -> Option<(u64, Request)> {
        let mut it = line.split(' ');
        let id = it.next()?.parse().ok()?;
        let req = match (it.next()?, it.next(), it.next()) {
            ("SET", Some(k), Some(v)) if word_ok(k) && word_ok(v) => Request::Set {
                key: k.to_owned(),
                value: v.to_owned(),
            },
            ("GET", Some(k), None) if word_ok(k) => Request::Get { key: k.to_owned() },
            ("INCR", Some(k), None) if word_ok(k) => Request::Incr { key: k.to_owned() },
            ("NONCE", None, None) => Request::Nonce,
            _ => return None,
        };
        if it.next().is_some() {
            return None;
        }
        Some((id, req))
    }

    /// Whether the request changes the store.
    pub fn is_write(&self) -> bool {
        matches!(self, Request::Set { .. } | Request::Incr { .. })
    }
}

impl Reply {
    /// The reply to request `id` as a line, with `token` appended when given.
    pub fn to_line(&self, id: u64, token: Option<u64>) -> String {
        let mut s = format!("{id} {self}");
        if let Some(t) = token {
            s.push_str(&format!(" ~{t:016x}"));
        }
        s.push('\n');
        s
    }

    /// Parses a reply line (without newline) into (id, reply, token).
    pub fn parse(line: &str) -> Option<(u64, Reply, Option<u64>)> {
        let (body, token) = match line.rsplit_once(" ~") {
            Some((b, t)) => (b, Some(u64::from_str_radix(t, 16).ok()?)),
            None => (line, None),
        };
        let mut it = body.split(' ');
        let id = it.next()?.parse().ok()?;
        let reply = match (it.next()?, it.next(), it.next(), it.next()) {
            ("OK", Some(v), None, None) => Reply::Ok {
                version: v.parse().ok()?,
            },
            ("VAL", Some(val), Some(v), None) => Reply::Value {
                value: val.to_owned(),
                version: v.parse().ok()?,
            },
            ("NONE", None, None, None) => Reply::Missing,
            ("NONCE", Some(t), None, None) => Reply::Nonce {
                token: u64::from_str_radix(t, 16).ok()?,
            },
            ("ERR", None, None, None) => Reply::Error,
            _ => return None,
        };
        Some((id, reply, token))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok { version } => write!(f, "OK {version}"),
            Reply::Value { value, version } => write!(f, "VAL {value} {version}"),
            Reply::Missing => write!(f, "NONE"),
            Reply::Nonce { token } => write!(f, "NONCE {token:016x}"),
            Reply::Error => write!(f, "ERR"),
        }
    }
}

/// Splits complete lines off the front of `buf` (leaving a partial line in place). A line
/// longer than [`MAX_LINE`] without a newline is returned as is, so a garbage stream cannot
/// grow the buffer without bound.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let line: Vec<u8> = buf.drain(..=i).take(i).collect();
                lines.push(String::from_utf8_lossy(&line).into_owned());
            }
            None if buf.len() > MAX_LINE => {
                lines.push(String::from_utf8_lossy(buf).into_owned());
                buf.clear();
            }
            None => return lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_their_line_form() {
        let reqs = [
            Request::Set {
                key: "k1".into(),
                value: "v".into(),
            },
            Request::Get { key: "k1".into() },
            Request::Incr { key: "c".into() },
            Request::Nonce,
        ];
        for (i, r) in reqs.iter().enumerate() {
            let line = r.to_line(i as u64);
            assert_eq!(Request::parse(line.trim_end()), Some((i as u64, r.clone())));
        }
        assert_eq!(Request::parse("1 SET k"), None);
        assert_eq!(Request::parse("x GET k"), None);
        assert_eq!(Request::parse("1 GET k extra"), None);
    }

    #[test]
    fn replies_round_trip_with_and_without_token() {
        let replies = [
            Reply::Ok { version: 3 },
            Reply::Value {
                value: "abc".into(),
                version: 9,
            },
            Reply::Missing,
            Reply::Nonce { token: 0xdead },
            Reply::Error,
        ];
        for r in replies {
            for token in [None, Some(0x0123_4567_89ab_cdef)] {
                let line = r.to_line(7, token);
                assert_eq!(Reply::parse(line.trim_end()), Some((7, r.clone(), token)));
            }
        }
    }

    #[test]
    fn take_lines_keeps_partial_line_and_bounds_garbage() {
        let mut buf = b"a\nbc\nd".to_vec();
        assert_eq!(take_lines(&mut buf), vec!["a", "bc"]);
        assert_eq!(buf, b"d");
        let mut junk = vec![b'x'; MAX_LINE + 1];
        assert_eq!(take_lines(&mut junk).len(), 1);
        assert!(junk.is_empty());
    }
}
