//! `Client`: a simulated client machine with its own smoltcp stack, running a request workload
//! against the guest over several TCP connections and recording its [`History`]; and
//! [`UpstreamServer`], the client-side server the guest connects out to.
//!
//! Invariant kept: the client's behaviour is a function of its seed and what it receives — its
//! own generator picks requests, keys, values and think times; smoltcp's ISNs come from a seed
//! drawn from that generator — and its history records exactly what it sent and received.
//! Requests on one connection are pipelined up to `pipeline` deep; replies must come back in
//! request order with matching ids, and anything else is recorded as an [`history::Anomaly`].

pub mod history;
mod upstream;

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use colo_core::time::{Duration, Instant};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

pub use self::history::{Anomaly, Completion, History, Op, StreamEnd, StreamLog};
pub use self::upstream::UpstreamServer;
use crate::proto::{Reply, Request, take_lines};
use crate::rng::SimRng;
use crate::stack::{Addr, NetStack};

/// What a client does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The client's own MAC and IP.
    pub addr: Addr,
    /// The service it talks to.
    pub server: (Ipv4Addr, u16),
    /// Connections it opens (all at start).
    pub connections: u32,
    /// Requests per connection before it closes the connection.
    pub requests_per_connection: u64,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Distinct keys the workload touches (small: contention is the point).
    pub keys: u32,
    /// Upper bound of the pause between two requests on a connection.
    pub think_max: Duration,
    /// Local port of connection 0 (connection i uses `first_port + i`).
    pub first_port: u16,
    /// When the connections are opened (a client can arrive after a checkpoint or failover).
    pub start_at: Instant,
}

impl ClientConfig {
    /// Two connections of 20 requests each over 8 keys, two requests in flight.
    pub fn new(addr: Addr, server: (Ipv4Addr, u16)) -> ClientConfig {
        ClientConfig {
            addr,
            server,
            connections: 2,
            requests_per_connection: 20,
            pipeline: 2,
            keys: 8,
            think_max: Duration::from_millis(5),
            first_port: 40_000,
            start_at: Instant::ZERO,
        }
    }
}

/// Phase of one client connection.
///
/// ```text
/// Idle --now >= start_at, connect--> Connecting --Established--> Open
/// Open --workload issued and answered, close()--> Closing --Closed|TimeWait--> Done (Closed)
/// Connecting|Open --socket Closed (RST, handshake failed)--> Done (Broken, an anomaly)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not opened yet (before `start_at`).
    Idle,
    /// SYN sent, waiting for the handshake.
    Connecting,
    /// Issuing requests and reading replies.
    Open,
    /// All replies in; our FIN sent, waiting for the close to finish.
    Closing,
    /// Finished (cleanly or not: the stream log says which).
    Done,
}

#[derive(Debug)]
struct Conn {
    index: u32,
    handle: SocketHandle,
    phase: Phase,
    next_send_at: Instant,
    issued: u64,
    /// Indices into `History::ops` of requests awaiting replies, in request order.
    outstanding: VecDeque<usize>,
    outbuf: Vec<u8>,
    inbuf: Vec<u8>,
}

/// A simulated client.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    stack: NetStack,
    rng: SimRng,
    conns: Vec<Conn>,
    history: History,
    next_id: u64,
    last_now: Instant,
}

impl Client {
    /// A client created at `now`; it opens its connections at `cfg.start_at`.
    pub fn new(cfg: ClientConfig, now: Instant, mut rng: SimRng) -> Client {
        let mut stack = NetStack::new(cfg.addr, rng.next_u64(), now);
        let mut conns = Vec::new();
        let mut history = History::default();
        for index in 0..cfg.connections {
            let sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 16 * 1024]),
                tcp::SocketBuffer::new(vec![0; 16 * 1024]),
            );
            let local_port = cfg.first_port.wrapping_add(index as u16);
            let handle = stack.sockets.add(sock);
            history.streams.push(StreamLog {
                conn: index,
                local_port,
                established: None,
                sent: Vec::new(),
                received: Vec::new(),
                end: StreamEnd::Open,
            });
            conns.push(Conn {
                index,
                handle,
                phase: Phase::Idle,
                next_send_at: cfg.start_at,
                issued: 0,
                outstanding: VecDeque::new(),
                outbuf: Vec::new(),
                inbuf: Vec::new(),
            });
        }
        let mut client = Client {
            cfg,
            stack,
            rng,
            conns,
            history,
            next_id: 1,
            last_now: now,
        };
        client.step(now, None);
        client
    }

    /// A frame from the network reaches the client at `now`.
    pub fn handle_frame(&mut self, now: Instant, frame: Vec<u8>) {
        self.step(now, Some(frame));
    }

    /// Time passed. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.step(now, None);
    }

    /// The next frame the client transmitted.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.stack.pop_transmit()
    }

    /// When the client next needs `handle_timeout`.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let now = self.last_now;
        let own = self
            .conns
            .iter()
            .filter(|c| c.phase == Phase::Idle || (c.phase == Phase::Open && self.wants_to_send(c)))
            .map(|c| c.next_send_at.max(now))
            .min();
        match (self.stack.poll_at(now), own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether every connection finished (cleanly or not).
    pub fn is_done(&self) -> bool {
        self.conns.iter().all(|c| c.phase == Phase::Done)
    }

    /// Everything the client saw.
    pub fn history(&self) -> &History {
        &self.history
    }

    fn wants_to_send(&self, c: &Conn) -> bool {
        c.issued < self.cfg.requests_per_connection && c.outstanding.len() < self.cfg.pipeline
    }

    fn step(&mut self, now: Instant, frame: Option<Vec<u8>>) {
        assert!(
            now >= self.last_now,
            "Client: time went backwards ({now:?} < {:?}); `now` must never decrease",
            self.last_now
        );
        self.last_now = now;
        if let Some(f) = frame {
            self.stack.receive(f);
        }
        self.stack.poll(now);
        for i in 0..self.conns.len() {
            self.service(now, i);
        }
        self.stack.poll(now);
    }

    fn service(&mut self, now: Instant, i: usize) {
        let handle = self.conns[i].handle;
        let index = self.conns[i].index as usize;
        let stream = &mut self.history.streams[index];
        let conn = &mut self.conns[i];
        if conn.phase == Phase::Idle {
            if now < self.cfg.start_at {
                return;
            }
            let local_port = stream.local_port;
            let cx = self.stack.iface.context();
            let sock = self.stack.sockets.get_mut::<tcp::Socket>(handle);
            if sock.connect(cx, self.cfg.server, local_port).is_ok() {
                conn.phase = Phase::Connecting;
            } else {
                stream.end = StreamEnd::Broken;
                self.history.anomalies.push(Anomaly {
                    at: now,
                    conn: conn.index,
                    what: format!("connect to {:?} refused locally", self.cfg.server),
                });
                conn.phase = Phase::Done;
                return;
            }
        }
        let sock = self.stack.sockets.get_mut::<tcp::Socket>(handle);
        if conn.phase == Phase::Connecting && sock.state() == tcp::State::Established {
            conn.phase = Phase::Open;
            stream.established = Some(now);
        }
        let mut buf = [0u8; 2048];
        while sock.can_recv() {
            match sock.recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    conn.inbuf.extend_from_slice(&buf[..n]);
                    stream.received.extend_from_slice(&buf[..n]);
                }
            }
        }
        for line in take_lines(&mut conn.inbuf) {
            let parsed = Reply::parse(&line);
            let expected = conn.outstanding.front().copied();
            match (parsed, expected) {
                (Some((id, reply, token)), Some(op)) if self.history.ops[op].id == id => {
                    conn.outstanding.pop_front();
                    self.history.ops[op].completion = Some(Completion {
                        at: now,
                        reply,
                        token,
                    });
                }
                _ => self.history.anomalies.push(Anomaly {
                    at: now,
                    conn: conn.index,
                    what: format!("unexpected reply line {line:?}"),
                }),
            }
        }
        // A reset (or a handshake that failed) while the client still needed the connection.
        if matches!(conn.phase, Phase::Connecting | Phase::Open)
            && sock.state() == tcp::State::Closed
        {
            stream.end = StreamEnd::Broken;
            self.history.anomalies.push(Anomaly {
                at: now,
                conn: conn.index,
                what: format!("connection closed while {:?}", conn.phase),
            });
            conn.phase = Phase::Done;
            return;
        }
        match conn.phase {
            Phase::Open => {
                let cfg = &self.cfg;
                while conn.issued < cfg.requests_per_connection
                    && conn.outstanding.len() < cfg.pipeline
                    && now >= conn.next_send_at
                {
                    let request = random_request(&mut self.rng, cfg.keys);
                    let id = self.next_id;
                    self.next_id += 1;
                    conn.outbuf
                        .extend_from_slice(request.to_line(id).as_bytes());
                    conn.outstanding.push_back(self.history.ops.len());
                    self.history.ops.push(Op {
                        conn: conn.index,
                        id,
                        request,
                        invoked: now,
                        completion: None,
                    });
                    conn.issued += 1;
                    conn.next_send_at = now + self.rng.duration_upto(cfg.think_max);
                }
                if !conn.outbuf.is_empty()
                    && sock.can_send()
                    && let Ok(n) = sock.send_slice(&conn.outbuf)
                {
                    stream.sent.extend_from_slice(&conn.outbuf[..n]);
                    conn.outbuf.drain(..n);
                }
                if conn.issued == cfg.requests_per_connection
                    && conn.outstanding.is_empty()
                    && conn.outbuf.is_empty()
                {
                    sock.close();
                    conn.phase = Phase::Closing;
                }
            }
            Phase::Closing => {
                if matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) {
                    stream.end = StreamEnd::Closed;
                    conn.phase = Phase::Done;
                }
            }
            Phase::Idle | Phase::Connecting | Phase::Done => {}
        }
    }
}

/// A random request: writes and reads in roughly equal measure, some counters, a few nonces.
fn random_request(rng: &mut SimRng, keys: u32) -> Request {
    let key = format!("k{}", rng.below(u64::from(keys.max(1))));
    match rng.below(10) {
        0..=3 => Request::Set {
            key,
            value: format!("v{}", rng.below(1_000_000)),
        },
        4..=6 => Request::Get { key },
        7..=8 => Request::Incr {
            key: format!("n{}", rng.below(u64::from(keys.max(1)))),
        },
        _ => Request::Nonce,
    }
}
