//! Checker 4, TCP continuity: every client connection stays gap-free and duplicate-free across
//! checkpoints and failovers, and the request history is consistent with one copy of the
//! key-value application (linearizable).
//!
//! Continuity, per connection: the replies read from the byte stream answer the requests written
//! on it, one each, in order (the guest keeps request order per connection), so a reply whose id
//! is not the next unanswered request is a duplicate or a gap; a connection that closed cleanly
//! has every request answered and no partial line; and every anomaly the client recorded (a
//! reset while in use, an unparsable reply) is reported.
//!
//! Linearizability: the application is a set of versioned registers (every write bumps its
//! key's version, replies carry it), which makes the check polynomial (Gibbons and Korach 1997 is
//! NP-complete for plain registers; versions give the write order away). Per key: completed
//! writes have distinct versions; if op `a` completed before op `b` was invoked then
//! `version(b) >= version(a)`, strictly if `b` is a write; a read's value equals the value
//! written at the version it reports (when that write's reply is known), and an `INCR` that
//! produced version `v` returned one more than the value of version `v - 1`.

use std::collections::BTreeMap;

use colo_core::time::Instant;

use crate::client::{History, StreamEnd};
use crate::proto::{Reply, Request};
use crate::trace::Violation;

/// This checker's name.
pub const NAME: &str = "tcp_continuity";

/// Checks every client's connections and the combined history.
pub fn check(histories: &[&History]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (c, h) in histories.iter().enumerate() {
        out.extend(continuity(c, h));
    }
    out.extend(linearizable(histories));
    out
}

fn violation(at: Instant, what: String) -> Violation {
    Violation {
        checker: NAME,
        at,
        what,
    }
}

fn lines(bytes: &[u8]) -> (Vec<&str>, bool) {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    let complete = text.is_empty() || text.ends_with('\n');
    let mut v: Vec<&str> = text.split('\n').collect();
    v.pop();
    (v, complete)
}

fn continuity(client: usize, h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for a in &h.anomalies {
        out.push(violation(
            a.at,
            format!("client {client} conn {}: {}", a.conn, a.what),
        ));
    }
    for s in &h.streams {
        let at = s.established.unwrap_or(Instant::ZERO);
        let (sent, _) = lines(&s.sent);
        let sent_ids: Vec<u64> = sent
            .iter()
            .filter_map(|l| Request::parse(l).map(|(id, _)| id))
            .collect();
        let (received, complete) = lines(&s.received);
        let mut next = 0usize;
        for l in received {
            let Some((id, _, _)) = Reply::parse(l) else {
                out.push(violation(
                    at,
                    format!("client {client} conn {}: unparsable reply {l:?}", s.conn),
                ));
                continue;
            };
            match sent_ids.get(next) {
                Some(want) if *want == id => next += 1,
                want => {
                    let kind = if sent_ids[..next].contains(&id) {
                        "duplicate"
                    } else {
                        "gap or stray"
                    };
                    out.push(violation(
                        at,
                        format!(
                            "client {client} conn {}: reply {id} ({kind}) where {want:?} was next",
                            s.conn
                        ),
                    ));
                }
            }
        }
        if s.end == StreamEnd::Closed && (!complete || next != sent_ids.len()) {
            out.push(violation(
                at,
                format!(
                    "client {client} conn {}: closed with {} of {} requests answered",
                    s.conn,
                    next,
                    sent_ids.len()
                ),
            ));
        }
    }
    out
}

/// One completed operation on a key.
struct KeyOp {
    invoked: Instant,
    completed: Instant,
    version: u64,
    write: bool,
    incr: bool,
    value: Option<String>,
    label: String,
}

fn linearizable(histories: &[&History]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<KeyOp>> = BTreeMap::new();
    for (c, h) in histories.iter().enumerate() {
        for op in &h.ops {
            let Some(done) = &op.completion else { continue };
            let label = format!("client {c} conn {} id {}", op.conn, op.id);
            let (key, version, write, incr, value) = match (&op.request, &done.reply) {
                (Request::Set { key, value }, Reply::Ok { version }) => {
                    (key, *version, true, false, Some(value.clone()))
                }
                (Request::Incr { key }, Reply::Value { value, version }) => {
                    (key, *version, true, true, Some(value.clone()))
                }
                (Request::Get { key }, Reply::Value { value, version }) => {
                    (key, *version, false, false, Some(value.clone()))
                }
                (Request::Get { key }, Reply::Missing) => (key, 0, false, false, None),
                (Request::Nonce, Reply::Nonce { .. }) | (Request::Incr { .. }, Reply::Error) => {
                    continue;
                }
                (req, reply) => {
                    out.push(violation(
                        done.at,
                        format!("{label}: reply {reply:?} does not answer {req:?}"),
                    ));
                    continue;
                }
            };
            by_key.entry(key.as_str()).or_default().push(KeyOp {
                invoked: op.invoked,
                completed: done.at,
                version,
                write,
                incr,
                value,
                label,
            });
        }
    }
    for (key, mut ops) in by_key {
        // Distinct write versions, and the value of each version.
        let mut written: BTreeMap<u64, &KeyOp> = BTreeMap::new();
        for op in ops.iter().filter(|o| o.write) {
            if let Some(prev) = written.insert(op.version, op) {
                out.push(violation(
                    op.completed,
                    format!(
                        "key {key}: version {} written twice ({} and {})",
                        op.version, prev.label, op.label
                    ),
                ));
            }
        }
        for op in &ops {
            if !op.write
                && let Some(w) = written.get(&op.version)
                && w.value != op.value
            {
                out.push(violation(
                    op.completed,
                    format!(
                        "key {key}: {} read {:?} at version {} but {} wrote {:?}",
                        op.label, op.value, op.version, w.label, w.value
                    ),
                ));
            }
            if op.incr {
                let before = op.version.checked_sub(1);
                let prev_value = match before {
                    Some(0) => Some(Some(0u64)),
                    Some(v) => written
                        .get(&v)
                        .map(|w| w.value.as_deref().and_then(|s| s.parse().ok())),
                    None => None,
                };
                let got: Option<u64> = op.value.as_deref().and_then(|s| s.parse().ok());
                if let Some(Some(p)) = prev_value
                    && got != Some(p + 1)
                {
                    out.push(violation(
                        op.completed,
                        format!(
                            "key {key}: {} INCR to version {} returned {got:?}, expected {}",
                            op.label,
                            op.version,
                            p + 1
                        ),
                    ));
                }
            }
        }
        // Real-time order: sort by completion, prefix maximum of versions.
        ops.sort_by_key(|o| (o.completed, o.version));
        let mut prefix_max = Vec::with_capacity(ops.len());
        let mut m = 0u64;
        for o in &ops {
            m = m.max(o.version);
            prefix_max.push(m);
        }
        for op in &ops {
            let n = ops.partition_point(|o| o.completed < op.invoked);
            if n == 0 {
                continue;
            }
            let floor = prefix_max[n - 1];
            let ok = if op.write {
                op.version > floor
            } else {
                op.version >= floor
            };
            if !ok {
                out.push(violation(
                    op.completed,
                    format!(
                        "key {key}: {} saw version {} although version {floor} was complete \
                         before it was invoked (not linearizable)",
                        op.label, op.version
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Completion, Op, StreamLog};

    fn op(conn: u32, id: u64, request: Request, inv: u64, done: u64, reply: Reply) -> Op {
        Op {
            conn,
            id,
            request,
            invoked: Instant::from_millis(inv),
            completion: Some(Completion {
                at: Instant::from_millis(done),
                reply,
                token: None,
            }),
        }
    }

    fn set(k: &str, v: &str) -> Request {
        Request::Set {
            key: k.into(),
            value: v.into(),
        }
    }

    fn get(k: &str) -> Request {
        Request::Get { key: k.into() }
    }

    fn history(ops: Vec<Op>) -> History {
        History {
            ops,
            streams: Vec::new(),
            anomalies: Vec::new(),
        }
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let h = history(vec![
            op(0, 1, set("a", "x"), 0, 1, Reply::Ok { version: 1 }),
            op(
                0,
                2,
                get("a"),
                2,
                3,
                Reply::Value {
                    value: "x".into(),
                    version: 1,
                },
            ),
            op(
                0,
                3,
                Request::Incr { key: "b".into() },
                4,
                5,
                Reply::Value {
                    value: "1".into(),
                    version: 1,
                },
            ),
        ]);
        assert!(check(&[&h]).is_empty(), "{:?}", check(&[&h]));
    }

    #[test]
    fn a_write_applied_twice_is_caught() {
        // A rollback behind released output: the client saw version 1 acknowledged, the
        // restored state lost it, and the next write got version 1 again.
        let h = history(vec![
            op(0, 1, set("a", "x"), 0, 1, Reply::Ok { version: 1 }),
            op(1, 1, set("a", "y"), 2, 3, Reply::Ok { version: 1 }),
        ]);
        let v = check(&[&h]);
        assert!(v.iter().any(|v| v.what.contains("written twice")), "{v:?}");
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = history(vec![
            op(0, 1, set("a", "x"), 0, 1, Reply::Ok { version: 1 }),
            op(1, 1, get("a"), 2, 3, Reply::Missing),
        ]);
        let v = check(&[&h]);
        assert!(
            v.iter().any(|v| v.what.contains("not linearizable")),
            "{v:?}"
        );
    }

    #[test]
    fn a_read_of_a_value_never_written_at_that_version_is_caught() {
        let h = history(vec![
            op(0, 1, set("a", "x"), 0, 1, Reply::Ok { version: 1 }),
            op(
                1,
                1,
                get("a"),
                2,
                3,
                Reply::Value {
                    value: "z".into(),
                    version: 1,
                },
            ),
        ]);
        assert_eq!(check(&[&h]).len(), 1);
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let h = history(vec![
            op(0, 1, set("a", "x"), 0, 10, Reply::Ok { version: 2 }),
            op(1, 1, set("a", "y"), 1, 9, Reply::Ok { version: 1 }),
        ]);
        assert!(check(&[&h]).is_empty());
    }

    #[test]
    fn duplicated_and_missing_replies_on_a_stream_are_caught() {
        let mut h = history(Vec::new());
        h.streams.push(StreamLog {
            conn: 0,
            local_port: 1000,
            established: Some(Instant::ZERO),
            sent: b"1 GET a\n2 GET a\n".to_vec(),
            received: b"1 NONE\n1 NONE\n".to_vec(),
            end: StreamEnd::Closed,
        });
        let v = check(&[&h]);
        assert!(v.iter().any(|v| v.what.contains("duplicate")), "{v:?}");
        assert!(
            v.iter().any(|v| v.what.contains("closed with 1 of 2")),
            "{v:?}"
        );
    }
}
