//! `UpstreamServer`: the client-side server that simulated guests connect out to, so colo's
//! rewriter also meets connections the guest opened (issue 4: "connections opened by clients
//! and by the guest both survive").
//!
//! It accepts any number of connections, reads `LOG <n> <key> <value>` lines and answers
//! `ACK <m>` with `m` the highest `n` such that every entry `1..=m` has arrived (cumulative, so
//! a guest that reconnects and resends is acknowledged correctly). Invariant kept: every line
//! received is recorded in arrival order with its connection and instant; entries are never
//! merged or corrected, so a duplicate or a gap a checker must judge stays visible.

use std::collections::{BTreeMap, VecDeque};

use colo_core::time::Instant;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::proto::take_lines;
use crate::stack::{Addr, NetStack};

/// One log line as the upstream server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// When it was read.
    pub at: Instant,
    /// The accepted connection's ordinal (0 = first accepted).
    pub conn: u32,
    /// The entry's sequence number (0 if the line did not parse).
    pub seq: u64,
    /// The whole line as received.
    pub line: String,
}

#[derive(Debug)]
struct Accepted {
    ordinal: u32,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

/// The server guests connect out to.
#[derive(Debug)]
pub struct UpstreamServer {
    stack: NetStack,
    port: u16,
    listeners: VecDeque<SocketHandle>,
    conns: BTreeMap<SocketHandle, Accepted>,
    accepted: u32,
    received: Vec<LogLine>,
    entries: BTreeMap<u64, String>,
    last_now: Instant,
}

fn listen(stack: &mut NetStack, port: u16) -> SocketHandle {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 16 * 1024]),
        tcp::SocketBuffer::new(vec![0; 16 * 1024]),
    );
    s.listen(port)
        .expect("listening on a non-zero port of a fresh socket");
    stack.sockets.add(s)
}

impl UpstreamServer {
    /// A server at `addr` listening on `port` (with `backlog` sockets ready), its ISNs seeded
    /// from `random_seed`.
    pub fn new(addr: Addr, port: u16, backlog: usize, random_seed: u64, now: Instant) -> Self {
        let mut stack = NetStack::new(addr, random_seed, now);
        let listeners = (0..backlog.max(1))
            .map(|_| listen(&mut stack, port))
            .collect();
        UpstreamServer {
            stack,
            port,
            listeners,
            conns: BTreeMap::new(),
            accepted: 0,
            received: Vec::new(),
            entries: BTreeMap::new(),
            last_now: now,
        }
    }

    /// A frame reaches the server at `now`.
    pub fn handle_frame(&mut self, now: Instant, frame: Vec<u8>) {
        self.stack.receive(frame);
        self.step(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.step(now);
    }

    /// The next frame the server transmitted.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.stack.pop_transmit()
    }

    /// When the server next needs `handle_timeout`.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.stack.poll_at(self.last_now)
    }

    /// Every line received, in arrival order.
    pub fn received(&self) -> &[LogLine] {
        &self.received
    }

    /// The distinct log entries received, by sequence number (first copy wins).
    pub fn entries(&self) -> &BTreeMap<u64, String> {
        &self.entries
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted
    }

    /// The highest `m` such that entries `1..=m` have all arrived.
    pub fn contiguous(&self) -> u64 {
        let mut m = 0;
        while self.entries.contains_key(&(m + 1)) {
            m += 1;
        }
        m
    }

    fn step(&mut self, now: Instant) {
        assert!(
            now >= self.last_now,
            "UpstreamServer: time went backwards ({now:?} < {:?})",
            self.last_now
        );
        self.last_now = now;
        self.stack.poll(now);
        for _ in 0..self.listeners.len() {
            let Some(h) = self.listeners.pop_front() else {
                break;
            };
            if self.stack.sockets.get::<tcp::Socket>(h).is_listening() {
                self.listeners.push_back(h);
            } else {
                self.conns.insert(
                    h,
                    Accepted {
                        ordinal: self.accepted,
                        inbuf: Vec::new(),
                        outbuf: Vec::new(),
                    },
                );
                self.accepted += 1;
                let fresh = listen(&mut self.stack, self.port);
                self.listeners.push_back(fresh);
            }
        }
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for h in handles {
            self.service(now, h);
        }
        self.stack.poll(now);
    }

    fn service(&mut self, now: Instant, h: SocketHandle) {
        let sock = self.stack.sockets.get_mut::<tcp::Socket>(h);
        if sock.state() == tcp::State::Closed {
            self.conns.remove(&h);
            self.stack.sockets.remove(h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&h) else {
            return;
        };
        let mut buf = [0u8; 2048];
        while sock.can_recv() {
            match sock.recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.inbuf.extend_from_slice(&buf[..n]),
            }
        }
        let mut got_any = false;
        for line in take_lines(&mut conn.inbuf) {
            let mut words = line.splitn(3, ' ');
            let seq = match (words.next(), words.next().and_then(|n| n.parse().ok())) {
                (Some("LOG"), Some(n)) => n,
                _ => 0,
            };
            if seq > 0 {
                self.entries
                    .entry(seq)
                    .or_insert_with(|| words.next().unwrap_or("").to_owned());
                got_any = true;
            }
            self.received.push(LogLine {
                at: now,
                conn: conn.ordinal,
                seq,
                line,
            });
        }
        if got_any {
            let mut m = 0;
            while self.entries.contains_key(&(m + 1)) {
                m += 1;
            }
            conn.outbuf
                .extend_from_slice(format!("ACK {m}\n").as_bytes());
        }
        if !conn.outbuf.is_empty()
            && sock.can_send()
            && let Ok(n) = sock.send_slice(&conn.outbuf)
        {
            conn.outbuf.drain(..n);
        }
        if !sock.may_recv() && sock.state() == tcp::State::CloseWait {
            sock.close();
        }
    }
}
