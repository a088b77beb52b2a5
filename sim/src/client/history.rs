//! What a client saw: every request it issued with the reply it got, and every byte each of its
//! connections sent and received.
//!
//! It owns the record the checkers will judge, and keeps one invariant: the history is only
//! appended to, in the order the client observed things, with the simulated instant of each
//! observation — never corrected after the fact — so a checker sees exactly what a real client
//! would have seen (Jepsen's history model: invocation, then completion or nothing).

use colo_core::time::Instant;

use crate::proto::{Reply, Request};

/// A reply as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// When the reply's last byte was read.
    pub at: Instant,
    /// The reply, token stripped.
    pub reply: Reply,
    /// The VM-local token the reply carried, if any.
    pub token: Option<u64>,
}

/// One request and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client's connection index.
    pub conn: u32,
    /// The request id (unique per client).
    pub id: u64,
    /// What was asked.
    pub request: Request,
    /// When the request was written to the socket.
    pub invoked: Instant,
    /// The reply, if one arrived.
    pub completion: Option<Completion>,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Still open.
    Open,
    /// Closed by both sides after all replies.
    Closed,
    /// Reset or timed out with the connection open.
    Broken,
}

/// Every byte of one connection, both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLog {
    /// The client's connection index.
    pub conn: u32,
    /// The client's local port.
    pub local_port: u16,
    /// When the handshake completed.
    pub established: Option<Instant>,
    /// Bytes written, in order.
    pub sent: Vec<u8>,
    /// Bytes read, in order.
    pub received: Vec<u8>,
    /// How it ended.
    pub end: StreamEnd,
}

/// Something a client saw that a correct server never causes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// When.
    pub at: Instant,
    /// Which connection.
    pub conn: u32,
    /// What, in words (the offending line quoted).
    pub what: String,
}

/// A client's complete history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Requests in invocation order.
    pub ops: Vec<Op>,
    /// One log per connection, by connection index.
    pub streams: Vec<StreamLog>,
    /// Protocol-level surprises (unparsable reply, reply to the wrong request, reset).
    pub anomalies: Vec<Anomaly>,
}

impl History {
    /// Requests that got a reply.
    pub fn completed(&self) -> usize {
        self.ops.iter().filter(|o| o.completion.is_some()).count()
    }

    /// Requests still waiting for a reply.
    pub fn pending(&self) -> usize {
        self.ops.len() - self.completed()
    }
}
