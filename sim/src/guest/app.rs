//! `KvApp`: the simulated guest's application, a key-value store served over TCP, plus the
//! connection it opens itself to an upstream server.
//!
//! It owns the store, the per-connection parse and reply queues, and the upstream log, and keeps
//! two invariants: requests are applied in the order the guest reads them (across connections:
//! the order of the service pass, socket handle order), which is the single-copy order the
//! linearizability checker replays; and replies on one connection leave in request order even
//! though each gets its own random processing delay (a reply is due no earlier than the one
//! before it). Every random choice (processing delay, reply token, nonce) is drawn from the
//! [`Entropy`] it is handed, never from state, so the same inputs and draws give the same bytes.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use colo_core::time::{Duration, Instant};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use super::machine::{Effects, Entropy};
use super::memory::{HEAP_FIRST_PAGE, HEAP_PAGES};
use super::{GuestConfig, disk::SimDisk};
use crate::hash::{Fnv64, fnv64};
use crate::proto::{Reply, Request, take_lines};
use crate::stack::NetStack;

/// Socket buffer size of every guest connection. Small on purpose: requests and replies are
/// short lines, and `state_hash` formats every buffer byte (its cost is linear in this size).
const SOCKET_BUFFER: usize = 4 * 1024;
/// How long the guest waits before reconnecting to the upstream server after a failure.
const UPSTREAM_RETRY: Duration = Duration::from_millis(200);
/// First local port of guest-opened connections (IANA dynamic range, RFC 6335 section 6).
const EPHEMERAL_FIRST: u16 = 49152;

#[derive(Debug)]
struct Entry {
    value: String,
    version: u64,
}

#[derive(Debug, Default)]
struct Conn {
    inbuf: Vec<u8>,
    /// Replies not yet due, with their due instants (non-decreasing).
    replies: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes due but not yet accepted by the socket.
    outbuf: Vec<u8>,
}

/// State of the guest-opened connection to the upstream server.
///
/// ```text
/// Waiting{retry_at} --now >= retry_at, connect ok--> Connected{handle}   (resend unacked)
/// Waiting{retry_at} --connect refused locally-----> Waiting{now + retry}
/// Connected{handle} --socket Closed (RST, refused)-> Waiting{now + retry}
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No connection; the next attempt is due at `retry_at`.
    Waiting { retry_at: Instant },
    /// A socket is connecting or connected.
    Connected { handle: SocketHandle },
}

#[derive(Debug)]
struct Upstream {
    remote: (Ipv4Addr, u16),
    link: Link,
    next_port: u16,
    next_seq: u64,
    /// Log lines not yet acknowledged, by sequence number.
    unacked: VecDeque<(u64, String)>,
    /// Bytes of the current connection not yet accepted by its socket.
    outbuf: Vec<u8>,
    inbuf: Vec<u8>,
    connects: u64,
}

/// The key-value application and its connections.
#[derive(Debug)]
pub(crate) struct KvApp {
    port: u16,
    store: BTreeMap<String, Entry>,
    listeners: Vec<SocketHandle>,
    conns: BTreeMap<SocketHandle, Conn>,
    upstream: Option<Upstream>,
    served: u64,
}

fn new_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    )
}

fn listen(stack: &mut NetStack, port: u16) -> SocketHandle {
    let mut s = new_socket();
    s.listen(port)
        .expect("listening on a non-zero port of a fresh socket");
    stack.sockets.add(s)
}

impl KvApp {
    /// The application as it starts at boot: `backlog` listening sockets on the service port,
    /// and (if configured) an upstream connection to open at the first service pass.
    pub(crate) fn boot(cfg: &GuestConfig, stack: &mut NetStack, now: Instant) -> KvApp {
        let listeners = (0..cfg.backlog.max(1))
            .map(|_| listen(stack, cfg.port))
            .collect();
        KvApp {
            port: cfg.port,
            store: BTreeMap::new(),
            listeners,
            conns: BTreeMap::new(),
            upstream: cfg.upstream.map(|remote| Upstream {
                remote,
                link: Link::Waiting { retry_at: now },
                next_port: EPHEMERAL_FIRST,
                next_seq: 1,
                unacked: VecDeque::new(),
                outbuf: Vec::new(),
                inbuf: Vec::new(),
                connects: 0,
            }),
            served: 0,
        }
    }

    /// Requests answered so far.
    pub(crate) fn served(&self) -> u64 {
        self.served
    }

    /// Established or closing client connections.
    pub(crate) fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Upstream log entries not yet acknowledged, and the upstream connections opened.
    pub(crate) fn upstream_backlog(&self) -> (usize, u64) {
        self.upstream
            .as_ref()
            .map_or((0, 0), |u| (u.unacked.len(), u.connects))
    }

    /// One service pass at `now`: accept, read and apply requests, release due replies, keep
    /// the upstream connection going.
    pub(crate) fn service(
        &mut self,
        now: Instant,
        cfg: &GuestConfig,
        stack: &mut NetStack,
        disk: &mut SimDisk,
        ent: &mut dyn Entropy,
        fx: &mut Effects,
    ) {
        self.accept(stack);
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for h in handles {
            self.service_conn(now, cfg, h, stack, disk, ent, fx);
        }
        self.service_upstream(now, stack);
    }

    /// Listeners that got a SYN become connections; each is replaced so the backlog stays full
    /// (smoltcp has no accept queue: one socket per connection).
    fn accept(&mut self, stack: &mut NetStack) {
        for i in 0..self.listeners.len() {
            let h = self.listeners[i];
            if !stack.sockets.get::<tcp::Socket>(h).is_listening() {
                self.conns.insert(h, Conn::default());
                self.listeners[i] = listen(stack, self.port);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn service_conn(
        &mut self,
        now: Instant,
        cfg: &GuestConfig,
        h: SocketHandle,
        stack: &mut NetStack,
        disk: &mut SimDisk,
        ent: &mut dyn Entropy,
        fx: &mut Effects,
    ) {
        let sock = stack.sockets.get_mut::<tcp::Socket>(h);
        if sock.state() == tcp::State::Closed {
            // Reset by the peer or fully closed: free the socket.
            self.conns.remove(&h);
            stack.sockets.remove(h);
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
        for line in take_lines(&mut conn.inbuf) {
            let reply = apply_request(
                &mut self.store,
                &mut self.upstream,
                disk,
                cfg,
                ent,
                fx,
                &line,
            );
            self.served += 1;
            // Processing delay: the guest's own timing nondeterminism. Replies stay in order.
            let jitter = Duration::from_nanos(
                ent.draw() % (u64::try_from(cfg.reply_jitter_max.as_nanos()).unwrap_or(0) + 1),
            );
            let floor = conn.replies.back().map_or(now, |(due, _)| *due);
            conn.replies.push_back(((now + jitter).max(floor), reply));
        }
        while conn.replies.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, bytes)) = conn.replies.pop_front() {
                conn.outbuf.extend_from_slice(&bytes);
            }
        }
        if !conn.outbuf.is_empty()
            && sock.can_send()
            && let Ok(n) = sock.send_slice(&conn.outbuf)
        {
            conn.outbuf.drain(..n);
        }
        // The client closed its half and everything owed to it is written: close ours.
        if !sock.may_recv()
            && sock.state() == tcp::State::CloseWait
            && conn.replies.is_empty()
            && conn.outbuf.is_empty()
        {
            sock.close();
        }
    }

    fn service_upstream(&mut self, now: Instant, stack: &mut NetStack) {
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        if let Link::Connected { handle: h } = up.link {
            let sock = stack.sockets.get_mut::<tcp::Socket>(h);
            if sock.state() == tcp::State::Closed {
                // Connected --socket Closed--> Waiting: refused, reset or timed out; reconnect
                // later and resend what is unacknowledged.
                stack.sockets.remove(h);
                up.link = Link::Waiting {
                    retry_at: now + UPSTREAM_RETRY,
                };
            } else {
                let mut buf = [0u8; 1024];
                while sock.can_recv() {
                    match sock.recv_slice(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => up.inbuf.extend_from_slice(&buf[..n]),
                    }
                }
                for line in take_lines(&mut up.inbuf) {
                    if let Some(n) = line
                        .strip_prefix("ACK ")
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        while up.unacked.front().is_some_and(|(seq, _)| *seq <= n) {
                            up.unacked.pop_front();
                        }
                    }
                }
                if sock.may_send()
                    && !up.outbuf.is_empty()
                    && let Ok(n) = sock.send_slice(&up.outbuf)
                {
                    up.outbuf.drain(..n);
                }
                if !sock.may_recv() && sock.state() == tcp::State::CloseWait {
                    sock.close();
                }
                return;
            }
        }
        if let Link::Waiting { retry_at } = up.link
            && now >= retry_at
        {
            let local_port = up.next_port;
            up.next_port = if up.next_port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                up.next_port + 1
            };
            let mut sock = new_socket();
            let cx = stack.iface.context();
            if sock.connect(cx, up.remote, local_port).is_ok() {
                // Waiting --connect--> Connected: the new stream starts with every unacked line.
                up.link = Link::Connected {
                    handle: stack.sockets.add(sock),
                };
                up.connects += 1;
                up.outbuf = up.unacked.iter().flat_map(|(_, l)| l.bytes()).collect();
                up.inbuf.clear();
            } else {
                up.link = Link::Waiting {
                    retry_at: now + UPSTREAM_RETRY,
                };
            }
        }
    }

    /// The earliest instant the application needs a service pass for its own sake.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let replies = self
            .conns
            .values()
            .filter_map(|c| c.replies.front().map(|(due, _)| *due));
        let retry = self.upstream.as_ref().and_then(|u| match u.link {
            Link::Waiting { retry_at } => Some(retry_at),
            Link::Connected { .. } => None,
        });
        replies.chain(retry).min()
    }

    /// Mixes the application's whole state into `h`.
    pub(crate) fn hash_into(&self, h: &mut Fnv64) {
        h.write_u64(self.store.len() as u64);
        for (k, e) in &self.store {
            h.write_field(k.as_bytes());
            h.write_field(e.value.as_bytes());
            h.write_u64(e.version);
        }
        h.write_u64(self.served);
        for l in &self.listeners {
            h.write_field(format!("{l:?}").as_bytes());
        }
        for (handle, c) in &self.conns {
            h.write_field(format!("{handle:?}").as_bytes());
            h.write_field(&c.inbuf);
            h.write_field(&c.outbuf);
            for (due, bytes) in &c.replies {
                h.write_u64(due.as_nanos());
                h.write_field(bytes);
            }
        }
        if let Some(u) = &self.upstream {
            h.write_field(format!("{:?}", u.link).as_bytes());
            h.write_u64(u64::from(u.next_port));
            h.write_u64(u.next_seq);
            for (seq, line) in &u.unacked {
                h.write_u64(*seq);
                h.write_field(line.as_bytes());
            }
            h.write_field(&u.outbuf);
            h.write_field(&u.inbuf);
            h.write_u64(u.connects);
        }
    }
}

/// Applies one request line to the store and returns the reply line. Writes go to the disk
/// and the upstream log and dirty the key's heap page.
fn apply_request(
    store: &mut BTreeMap<String, Entry>,
    upstream: &mut Option<Upstream>,
    disk: &mut SimDisk,
    cfg: &GuestConfig,
    ent: &mut dyn Entropy,
    fx: &mut Effects,
    line: &str,
) -> Vec<u8> {
    let Some((id, req)) = Request::parse(line) else {
        return Reply::Error.to_line(0, None).into_bytes();
    };
    let reply = match &req {
        Request::Set { key, value } => {
            let version = write(store, upstream, disk, fx, key, value.clone());
            Reply::Ok { version }
        }
        Request::Get { key } => match store.get(key) {
            Some(e) => Reply::Value {
                value: e.value.clone(),
                version: e.version,
            },
            None => Reply::Missing,
        },
        Request::Incr { key } => {
            let current = store
                .get(key)
                .map_or(Some(0), |e| e.value.parse::<u64>().ok());
            match current {
                Some(n) => {
                    let value = (n + 1).to_string();
                    let version = write(store, upstream, disk, fx, key, value.clone());
                    Reply::Value { value, version }
                }
                None => Reply::Error,
            }
        }
        Request::Nonce => Reply::Nonce { token: ent.draw() },
    };
    // "Some replies carry a VM-local random token" (issue 4): the PVM and SVM differ here.
    let token = (ent.draw() % 1_000_000 < u64::from(cfg.token_ppm)).then(|| ent.draw());
    reply.to_line(id, token).into_bytes()
}

fn write(
    store: &mut BTreeMap<String, Entry>,
    upstream: &mut Option<Upstream>,
    disk: &mut SimDisk,
    fx: &mut Effects,
    key: &str,
    value: String,
) -> u64 {
    let entry = store.entry(key.to_owned()).or_insert(Entry {
        value: String::new(),
        version: 0,
    });
    entry.version += 1;
    entry.value = value;
    let version = entry.version;
    let key_hash = fnv64(key.as_bytes());
    fx.dirtied.push(HEAP_FIRST_PAGE + key_hash % HEAP_PAGES);
    let record = format!("{key}={}@{version}", entry.value);
    fx.disk_writes.push(disk.write(key_hash, record.as_bytes()));
    if let Some(up) = upstream.as_mut() {
        let seq = up.next_seq;
        up.next_seq += 1;
        let line = format!("LOG {seq} {key} {}\n", entry.value);
        if matches!(up.link, Link::Connected { .. }) {
            up.outbuf.extend_from_slice(line.as_bytes());
        }
        up.unacked.push_back((seq, line));
    }
    version
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Addr;

    struct Counter(u64);
    impl Entropy for Counter {
        fn draw(&mut self) -> u64 {
            self.0 += 1;
            self.0
        }
    }

    fn apply(store: &mut BTreeMap<String, Entry>, cfg: &GuestConfig, line: &str) -> String {
        let mut disk = SimDisk::new(cfg.disk_blocks);
        let mut fx = Effects::default();
        let mut up = None;
        let out = apply_request(
            store,
            &mut up,
            &mut disk,
            cfg,
            &mut Counter(0),
            &mut fx,
            line,
        );
        String::from_utf8(out).expect("ascii reply")
    }

    #[test]
    fn replies_encode_the_history_of_writes() {
        let mut cfg = GuestConfig::new(Addr::lan(1), 1);
        cfg.token_ppm = 0;
        let mut store = BTreeMap::new();
        assert_eq!(apply(&mut store, &cfg, "1 GET a"), "1 NONE\n");
        assert_eq!(apply(&mut store, &cfg, "2 SET a x"), "2 OK 1\n");
        assert_eq!(apply(&mut store, &cfg, "3 SET a y"), "3 OK 2\n");
        assert_eq!(apply(&mut store, &cfg, "4 GET a"), "4 VAL y 2\n");
        assert_eq!(apply(&mut store, &cfg, "5 INCR n"), "5 VAL 1 1\n");
        assert_eq!(apply(&mut store, &cfg, "6 INCR n"), "6 VAL 2 2\n");
        assert_eq!(
            apply(&mut store, &cfg, "7 INCR a"),
            "7 ERR\n",
            "y is not a count"
        );
    }

    #[test]
    fn garbage_line_gets_an_error_reply() {
        let cfg = GuestConfig::new(Addr::lan(1), 1);
        let mut store = BTreeMap::new();
        let reply = apply(&mut store, &cfg, "hello there");
        assert!(reply.starts_with("0 ERR"), "{reply}");
        assert!(store.is_empty());
    }

    #[test]
    fn tokens_come_from_entropy_at_the_configured_rate() {
        let mut cfg = GuestConfig::new(Addr::lan(1), 1);
        cfg.token_ppm = 1_000_000;
        let mut store = BTreeMap::new();
        let (_, reply, token) =
            Reply::parse(apply(&mut store, &cfg, "1 GET a").trim_end()).expect("parses");
        assert_eq!(reply, Reply::Missing);
        assert!(token.is_some(), "every reply carries a token at 100%");
    }

    #[test]
    fn writes_go_to_disk_and_upstream_log_and_dirty_the_key_page() {
        let cfg = GuestConfig::new(Addr::lan(1), 1);
        let mut store = BTreeMap::new();
        let mut disk = SimDisk::new(cfg.disk_blocks);
        let mut fx = Effects::default();
        let mut up = Some(Upstream {
            remote: (Addr::lan(2).ip, 9000),
            link: Link::Waiting {
                retry_at: Instant::ZERO,
            },
            next_port: EPHEMERAL_FIRST,
            next_seq: 1,
            unacked: VecDeque::new(),
            outbuf: Vec::new(),
            inbuf: Vec::new(),
            connects: 0,
        });
        let mut ent = Counter(0);
        apply_request(
            &mut store,
            &mut up,
            &mut disk,
            &cfg,
            &mut ent,
            &mut fx,
            "1 SET k v",
        );
        assert_eq!(fx.disk_writes.len(), 1);
        assert_eq!(disk.hash(), {
            let mut d = SimDisk::new(cfg.disk_blocks);
            d.apply(&fx.disk_writes[0]);
            d.hash()
        });
        let key_page = HEAP_FIRST_PAGE + fnv64(b"k") % HEAP_PAGES;
        assert_eq!(fx.dirtied, vec![key_page]);
        let up = up.expect("upstream");
        assert_eq!(up.unacked.len(), 1);
        assert_eq!(up.unacked[0], (1, "LOG 1 k v\n".to_owned()));
    }
}
