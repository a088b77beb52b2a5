//! The net-server workload: smoltcp over the virtio-net driver, serving the `kv` line
//! protocol on `colo.ip`:`colo.port` to several TCP clients at once.
//!
//! Loop: poll the interface, serve every socket's complete lines, tell the device about
//! re-posted RX buffers, then either keep polling (something happened in the last
//! `colo.idle_spin_us`, default 0) or halt until the RX interrupt or the LAPIC timer armed for
//! smoltcp's next deadline. Halting at once is the default: a polling vCPU holds a host core
//! the replicated pair's own threads need (docs/benchmarks.md, "The guest that halts"), and
//! on this host a halt and its wake-up cost the lone VM nothing measurable. Invariant: the
//! interrupt count is read before the poll, so a frame that arrives after the poll wakes the
//! halt at once (the shim's halt service compares it).

use crate::abi::VIRTIO_NET_GSI;
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::kv::{self, Bulk, MAX_LINE, Store};
use crate::virtio_net::VirtioNet;
use crate::{irq, println};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

const RX_VECTOR: u8 = 0x30;
const TIMER_VECTOR: u8 = 0x31;
/// Concurrent connections (each a listening socket when idle).
const SOCKETS: usize = 4;
/// Each direction of each socket: 32 KiB lets a `STREAM`/`SINK` keep a few MTU-size
/// segments in flight (smoltcp advertises at most 64 KiB without window scaling).
const SOCKET_BUFFER: usize = 32 * 1024;
/// Longest halt when smoltcp has no deadline.
const MAX_SLEEP_US: u64 = 100_000;

struct Conn {
    handle: SocketHandle,
    line: Vec<u8>,
    /// Body bytes of a `STREAM` still to send (and the offset of the next one): no further
    /// request of this connection is served until the body is out, so replies stay in order.
    stream_left: u64,
    stream_at: u64,
    /// A `SINK` being received: its id, its size and the bytes still expected.
    sink: Option<(u64, u64, u64)>,
    /// Bytes that arrived after a `STREAM` request, taken in once its body is out.
    after_stream: Vec<u8>,
}

impl Conn {
    fn reset(&mut self) {
        self.line.clear();
        self.stream_left = 0;
        self.stream_at = 0;
        self.sink = None;
        self.after_stream.clear();
    }
}

/// Serves one open connection: sends what is left of a `STREAM` body, takes in what arrived
/// (counting `SINK` bytes, splitting the rest into request lines) and answers every complete
/// line. Returns whether anything moved.
fn serve(
    conn: &mut Conn,
    socket: &mut tcp::Socket,
    store: &mut Store,
    clock: &Clock,
    served: &mut u64,
) -> bool {
    let mut active = false;
    loop {
        active |= send_stream(conn, socket);
        if conn.stream_left > 0 {
            // The body goes out first; later requests wait.
            return active;
        }
        if !conn.after_stream.is_empty() {
            let held = core::mem::take(&mut conn.after_stream);
            take_in(conn, socket, store, clock, served, &held);
            active = true;
            continue;
        }
        if !socket.can_recv() {
            return active;
        }
        let mut buf = [0u8; 4096];
        match socket.recv_slice(&mut buf) {
            Ok(n) if n > 0 => {
                active = true;
                take_in(conn, socket, store, clock, served, &buf[..n]);
            }
            _ => return active,
        }
    }
}

/// Takes in bytes the client sent: a `SINK`'s body is counted, the rest split into lines and
/// answered; bytes after a `STREAM` request wait in `after_stream` until its body is out.
fn take_in(
    conn: &mut Conn,
    socket: &mut tcp::Socket,
    store: &mut Store,
    clock: &Clock,
    served: &mut u64,
    mut data: &[u8],
) {
    while !data.is_empty() {
        if conn.stream_left > 0 {
            conn.after_stream.extend_from_slice(data);
            return;
        }
        if let Some((id, size, left)) = conn.sink {
            let take = (data.len() as u64).min(left) as usize;
            data = &data[take..];
            let left = left - take as u64;
            conn.sink = Some((id, size, left));
            if left == 0 {
                conn.sink = None;
                let _ = socket.send_slice(format!("{id} SUNK {size}\n").as_bytes());
                *served += 1;
            }
        } else if let Some(end) = data.iter().position(|&b| b == b'\n') {
            conn.line.extend_from_slice(&data[..end]);
            data = &data[end + 1..];
            answer(conn, socket, store, clock, served);
        } else {
            conn.line.extend_from_slice(data);
            data = &[];
            if conn.line.len() > MAX_LINE {
                conn.line.clear();
                let _ = socket.send_slice(b"? ERR\n");
            }
        }
    }
}

/// Answers the complete line at the end of `conn.line` (a bulk request starts its body).
fn answer(
    conn: &mut Conn,
    socket: &mut tcp::Socket,
    store: &mut Store,
    clock: &Clock,
    served: &mut u64,
) {
    let line: Vec<u8> = core::mem::take(&mut conn.line);
    let text = core::str::from_utf8(&line).unwrap_or("");
    let text = text.trim_end_matches('\r');
    match kv::bulk(text) {
        Some(Bulk::Stream { id, n }) => {
            let _ = socket.send_slice(format!("{id} STREAM {n}\n").as_bytes());
            conn.stream_left = n;
            conn.stream_at = 0;
            *served += 1;
        }
        Some(Bulk::Sink { id, n }) => {
            if n == 0 {
                let _ = socket.send_slice(format!("{id} SUNK 0\n").as_bytes());
                *served += 1;
            } else {
                conn.sink = Some((id, n, n));
            }
        }
        None => {
            let reply = store.apply(text, || clock.raw());
            // The send buffer holds SOCKET_BUFFER bytes; a client that never reads loses replies.
            let _ = socket.send_slice(reply.as_bytes());
            *served += 1;
        }
    }
}

/// Puts as much of the current `STREAM` body into the send buffer as fits.
fn send_stream(conn: &mut Conn, socket: &mut tcp::Socket) -> bool {
    let mut moved = false;
    while conn.stream_left > 0 && socket.can_send() {
        let (left, at) = (conn.stream_left, conn.stream_at);
        let sent = socket.send(|buf| {
            let k = (buf.len() as u64).min(left) as usize;
            for (i, b) in buf[..k].iter_mut().enumerate() {
                *b = kv::stream_byte(at + i as u64);
            }
            (k, k)
        });
        match sent {
            Ok(k) if k > 0 => {
                conn.stream_left -= k as u64;
                conn.stream_at += k as u64;
                moved = true;
            }
            _ => break,
        }
    }
    moved
}

fn listen(socket: &mut tcp::Socket, port: u16) {
    socket.abort();
    // A fresh socket in Closed always accepts listen(); a failure would be a smoltcp bug.
    socket.listen(port).expect("listen on a closed socket");
}

/// The IOAPIC input of network device `index` (mirrors `layout::virtio_net_window`).
fn net_gsi(index: u64) -> u32 {
    match index {
        0 => VIRTIO_NET_GSI,
        i => 12 + i as u32,
    }
}

pub fn run(config: &Config) -> ! {
    irq::enable_lapic();
    irq::route(net_gsi(config.net_index), RX_VECTOR);
    clock::timer_init(TIMER_VECTOR);
    let clock = Clock::new(config.tsc_khz);
    let mut dev = match VirtioNet::init(config.net_index) {
        Ok(dev) => dev,
        Err(e) => panic!("virtio-net: {e:?}"),
    };
    let mac = dev.mac();
    let mut iface_config = IfaceConfig::new(EthernetAddress(mac).into());
    iface_config.random_seed = config.seed;
    let now = Instant::from_micros(clock.now_us() as i64);
    let mut iface = Interface::new(iface_config, &mut dev, now);
    let ([a, b, c, d], prefix) = config.ip;
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::new(
                IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)),
                prefix,
            ))
            .expect("one address fits");
    });
    let mut sockets = SocketSet::new(vec![]);
    let mut conns = Vec::new();
    for _ in 0..SOCKETS {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        );
        listen(&mut socket, config.port);
        conns.push(Conn {
            handle: sockets.add(socket),
            line: Vec::new(),
            stream_left: 0,
            stream_at: 0,
            sink: None,
            after_stream: Vec::new(),
        });
    }
    println!(
        "colo-guest: net-server on {a}.{b}.{c}.{d}/{prefix} port {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        config.port, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    let mut store = Store::default();
    let mut last_activity = clock.now_us();
    let mut served = 0u64;
    loop {
        let seen = irq::count();
        let now = Instant::from_micros(clock.now_us() as i64);
        let mut active = iface.poll(now, &mut dev, &mut sockets) != PollResult::None;
        for conn in &mut conns {
            let socket = sockets.get_mut::<tcp::Socket>(conn.handle);
            if !socket.is_open() || socket.state() == tcp::State::CloseWait {
                // The client is gone (or closed its half): free the slot for the next one.
                socket.close();
                if !socket.is_active() {
                    listen(socket, config.port);
                    conn.reset();
                }
                continue;
            }
            active |= serve(conn, socket, &mut store, &clock, &mut served);
        }
        if active {
            // Replies queued above go out now rather than after the next wake-up.
            let now = Instant::from_micros(clock.now_us() as i64);
            iface.poll(now, &mut dev, &mut sockets);
        }
        dev.flush();
        let now_us = clock.now_us();
        if active || dev.rx_pending() {
            last_activity = now_us;
            continue;
        }
        if now_us.saturating_sub(last_activity) < config.idle_spin_us {
            core::hint::spin_loop();
            continue;
        }
        let now = Instant::from_micros(now_us as i64);
        let sleep_us = iface
            .poll_delay(now, &sockets)
            .map_or(MAX_SLEEP_US, |d| d.total_micros().min(MAX_SLEEP_US));
        if sleep_us == 0 {
            continue;
        }
        clock::timer_arm(sleep_us);
        irq::halt_until_interrupt(seen);
        if config.steps != 0 && served >= config.steps {
            println!("colo-guest: net-server served {served} requests");
            crate::console::exit(0);
        }
    }
}
