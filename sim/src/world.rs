//! `World`: one guest, its clients and the upstream server on a switched LAN behind the network
//! emulator, driven as a single discrete-event loop on simulated time.
//!
//! It owns the event loop that ties the models together and keeps one invariant: events are
//! processed in a fixed order at each instant — frames due from the emulator first (in its
//! delivery order), then timers of the guest, the clients (by index) and the upstream server —
//! and every frame a model emits is handed to the emulator right away, so a run is a pure
//! function of the seed and the configuration. This is the plain (non-madsim) harness; the
//! colo `Node`s will sit between the clients and the guest(s) once they exist.

use colo_core::time::{Duration, Instant};

use crate::client::{Client, ClientConfig, UpstreamServer};
use crate::guest::{Guest, GuestConfig};
use crate::lan::Lan;
use crate::netem::{LinkConfig, Netem};
use crate::rng::SimRng;
use crate::stack::Addr;

/// The guest's address on the LAN.
pub const GUEST_ADDR: Addr = Addr::lan(1);
/// The upstream server's address.
pub const UPSTREAM_ADDR: Addr = Addr::lan(2);
/// The upstream server's port.
pub const UPSTREAM_PORT: u16 = 9000;

/// Client `i`'s address.
pub fn client_addr(i: u32) -> Addr {
    Addr::lan(10u8.saturating_add(u8::try_from(i).unwrap_or(u8::MAX)))
}

/// What to build: the knobs of a standard world (one guest, `clients` clients, upstream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldSpec {
    /// Impairments of every link.
    pub link: LinkConfig,
    /// Number of clients.
    pub clients: u32,
    /// Connections per client.
    pub connections: u32,
    /// Requests per connection.
    pub requests_per_connection: u64,
    /// When the clients open their connections.
    pub client_start_at: Instant,
    /// Whether the guest logs its writes to an upstream server it connects to.
    pub upstream: bool,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            link: LinkConfig::with_delay(Duration::from_micros(200)),
            clients: 2,
            connections: 2,
            requests_per_connection: 20,
            client_start_at: Instant::ZERO,
            upstream: true,
        }
    }
}

/// An endpoint of the simulated LAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// The guest's NIC.
    Guest,
    /// Client `i`.
    Client(u32),
    /// The server the guest connects out to.
    Upstream,
}

/// The simulated world.
#[derive(Debug)]
pub struct World {
    /// Current simulated time.
    pub now: Instant,
    /// The network between all endpoints.
    pub net: Netem<Endpoint>,
    /// MAC table.
    pub lan: Lan<Endpoint>,
    /// The guest VM.
    pub guest: Guest,
    /// The clients, by index.
    pub clients: Vec<Client>,
    /// The upstream server, if any.
    pub upstream: Option<UpstreamServer>,
    /// Loop iterations so far (a cost measure).
    pub iterations: u64,
    /// When `Some`, every frame an endpoint emits is recorded here (instant, sender, bytes).
    pub tap: Option<Vec<(Instant, Endpoint, Vec<u8>)>>,
    /// When set, the guest's frames are queued in `guest_out` instead of being sent: colo's
    /// host holds guest output (the output-commit buffer) and releases it with
    /// [`World::release_from_guest`].
    pub hold_guest_output: bool,
    /// Guest frames held (see `hold_guest_output`).
    pub guest_out: std::collections::VecDeque<Vec<u8>>,
    /// When set, the guest is not stepped: frames for it wait in `guest_inbox` (a paused VM's
    /// host queues them) and its timers do not run.
    pub guest_paused: bool,
    /// Frames that arrived for a paused guest, delivered in order when it runs again.
    pub guest_inbox: std::collections::VecDeque<Vec<u8>>,
    /// When set, frames for the guest are not delivered but queued in `guest_in`: a colo
    /// `Node` takes them (`Input::ClientFrame`) and hands them to its guest itself.
    pub intercept_guest_input: bool,
    /// Frames for the guest taken by the host (see `intercept_guest_input`).
    pub guest_in: std::collections::VecDeque<Vec<u8>>,
}

/// The smallest step the loop takes when a model asks to be polled "now" again (smoltcp's time
/// resolution is a microsecond, so nothing finer can matter to it).
const MIN_STEP: Duration = Duration::from_micros(1);

impl World {
    /// Builds the standard world for `seed` at time zero. Each model gets its own fork of the
    /// seed (the guest's VM-local entropy is the fork `"vm-a"`).
    pub fn new(seed: u64, spec: &WorldSpec) -> World {
        let root = SimRng::new(seed);
        let now = Instant::ZERO;
        let mut cfg = GuestConfig::new(GUEST_ADDR, root.fork("guest-image").next_u64());
        if spec.upstream {
            cfg.upstream = Some((UPSTREAM_ADDR.ip, UPSTREAM_PORT));
        }
        let guest = Guest::boot(cfg, now, root.fork("vm-a"));
        let mut lan = Lan::new();
        lan.attach(GUEST_ADDR.mac, Endpoint::Guest);
        let clients = (0..spec.clients)
            .map(|i| {
                lan.attach(client_addr(i).mac, Endpoint::Client(i));
                let mut c = ClientConfig::new(client_addr(i), (GUEST_ADDR.ip, 7000));
                c.connections = spec.connections;
                c.requests_per_connection = spec.requests_per_connection;
                c.start_at = spec.client_start_at;
                Client::new(c, now, root.fork(&format!("client-{i}")))
            })
            .collect();
        let upstream = spec.upstream.then(|| {
            lan.attach(UPSTREAM_ADDR.mac, Endpoint::Upstream);
            let seed = root.fork("upstream").next_u64();
            UpstreamServer::new(UPSTREAM_ADDR, UPSTREAM_PORT, 2, seed, now)
        });
        World {
            now,
            net: Netem::new(root.fork("netem"), spec.link),
            lan,
            guest,
            clients,
            upstream,
            iterations: 0,
            tap: None,
            hold_guest_output: false,
            guest_out: std::collections::VecDeque::new(),
            guest_paused: false,
            guest_inbox: std::collections::VecDeque::new(),
            intercept_guest_input: false,
            guest_in: std::collections::VecDeque::new(),
        }
    }

    /// Delivers due frames and runs due timers until `deadline` or until `stop` holds (checked
    /// after each instant). Returns whether `stop` held.
    pub fn run_until(&mut self, deadline: Instant, mut stop: impl FnMut(&World) -> bool) -> bool {
        loop {
            self.flush_outputs();
            while !self.guest_paused
                && let Some(f) = self.guest_inbox.pop_front()
            {
                self.guest.handle_frame(self.now, f);
                self.flush_outputs();
            }
            while let Some(d) = self.net.poll_deliver(self.now) {
                let now = self.now;
                match d.to {
                    Endpoint::Guest if self.intercept_guest_input => {
                        self.guest_in.push_back(d.frame)
                    }
                    Endpoint::Guest if self.guest_paused => self.guest_inbox.push_back(d.frame),
                    Endpoint::Guest => self.guest.handle_frame(now, d.frame),
                    Endpoint::Client(i) => {
                        if let Some(c) = self.clients.get_mut(i as usize) {
                            c.handle_frame(now, d.frame);
                        }
                    }
                    Endpoint::Upstream => {
                        if let Some(u) = self.upstream.as_mut() {
                            u.handle_frame(now, d.frame);
                        }
                    }
                }
                self.flush_outputs();
            }
            self.run_timers();
            self.flush_outputs();
            self.iterations += 1;
            if stop(self) {
                return true;
            }
            if self.now >= deadline {
                return false;
            }
            let next = self.next_event().unwrap_or(deadline);
            self.now = next.max(self.now + MIN_STEP).min(deadline);
        }
    }

    fn run_timers(&mut self) {
        let now = self.now;
        if !self.guest_paused && self.guest.poll_timeout().is_some_and(|t| t <= now) {
            self.guest.handle_timeout(now);
        }
        for c in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        if let Some(u) = self.upstream.as_mut()
            && u.poll_timeout().is_some_and(|t| t <= now)
        {
            u.handle_timeout(now);
        }
    }

    fn next_event(&mut self) -> Option<Instant> {
        let mut next = self.net.poll_timeout();
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if !self.guest_paused {
            take(self.guest.poll_timeout());
        }
        for c in &mut self.clients {
            take(c.poll_timeout());
        }
        if let Some(u) = self.upstream.as_mut() {
            take(u.poll_timeout());
        }
        next
    }

    /// Hands every frame the models emitted to the emulator.
    fn flush_outputs(&mut self) {
        let now = self.now;
        while let Some(f) = self.guest.poll_transmit() {
            if self.hold_guest_output {
                self.guest_out.push_back(f);
            } else {
                self.send(now, Endpoint::Guest, f);
            }
        }
        for i in 0..self.clients.len() {
            while let Some(f) = self.clients[i].poll_transmit() {
                self.send(now, Endpoint::Client(i as u32), f);
            }
        }
        while let Some(f) = self.upstream.as_mut().and_then(|u| u.poll_transmit()) {
            self.send(now, Endpoint::Upstream, f);
        }
    }

    fn send(&mut self, now: Instant, from: Endpoint, frame: Vec<u8>) {
        if let Some(tap) = self.tap.as_mut() {
            tap.push((now, from, frame.clone()));
        }
        let dests = self.lan.destinations(&from, &frame);
        if let Some((last, rest)) = dests.split_last() {
            for to in rest {
                self.net.send(now, from, *to, frame.clone());
            }
            self.net.send(now, from, *last, frame);
        }
    }

    /// Sends a frame the guest emitted earlier (held by colo) onto the LAN now.
    pub fn release_from_guest(&mut self, frame: Vec<u8>) {
        let now = self.now;
        self.send(now, Endpoint::Guest, frame);
    }

    /// Whether every client finished its workload.
    pub fn clients_done(&self) -> bool {
        self.clients.iter().all(Client::is_done)
    }
}
