//! `GuestMachine`: the deterministic part of a simulated guest, and the replay log that makes
//! it checkpointable.
//!
//! It owns everything a checkpoint must copy: the smoltcp stack (interface, sockets, the PRNG
//! behind ISNs), the application and the disk. Invariant kept: the machine is a pure function
//! of its configuration, its boot instant and the sequence of [`Recorded`] steps (each step's
//! instant, the frame it received, and the entropy draws it consumed). That is what lets a
//! checkpoint be the log itself: smoltcp's `Interface` and `SocketSet` are neither `Clone` nor
//! serializable (checked in smoltcp 0.14.0: no derives, private fields), so a snapshot records
//! the inputs and `restore` replays them into a freshly booted machine (the "deterministic
//! replay of recorded inputs" option of issue 4; see docs/simulation.md).
//!
//! Nondeterminism enters only through [`Entropy`]: live, the guest's VM-local generator
//! (outside this state) answers and every draw is recorded; on replay the recording answers.
//! The machine also "stirs" smoltcp's PRNG with that entropy whenever a frame arrives (a
//! detached socket's `connect` draws one ISN, then `abort` discards it), so the primary's and
//! secondary's ISNs diverge after a checkpoint the way Linux's do (its ISN mixes a clock,
//! RFC 6528) although both start from the same PRNG state.

use std::fmt::Write as _;

use colo_core::time::Instant;
use smoltcp::socket::tcp;

use super::GuestConfig;
use super::app::KvApp;
use super::disk::{DiskWrite, SimDisk};
use super::memory::{RX_RING_PAGES, TX_RING_PAGES};
use crate::hash::Fnv64;
use crate::stack::NetStack;

/// Where the machine's random numbers come from.
pub(crate) trait Entropy {
    /// The next 64 random bits.
    fn draw(&mut self) -> u64;
}

/// Live entropy: draws from the VM-local generator and records each draw.
pub(crate) struct Recording<'a> {
    pub(crate) rng: &'a mut crate::rng::SimRng,
    pub(crate) draws: &'a mut Vec<u64>,
}

impl Entropy for Recording<'_> {
    fn draw(&mut self) -> u64 {
        let v = self.rng.next_u64();
        self.draws.push(v);
        v
    }
}

/// Replayed entropy: answers with a step's recorded draws, in order.
pub(crate) struct Replaying<'a> {
    draws: std::slice::Iter<'a, u64>,
}

impl Entropy for Replaying<'_> {
    fn draw(&mut self) -> u64 {
        *self
            .draws
            .next()
            .expect("guest replay diverged: a step drew more entropy than it recorded")
    }
}

/// One recorded step of a guest: the whole input that produced its state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) at: Instant,
    pub(crate) frame: Option<Vec<u8>>,
    pub(crate) draws: Vec<u64>,
}

impl Recorded {
    /// Mixes the step into a running history digest.
    pub(crate) fn digest_into(&self, h: &mut Fnv64) {
        h.write_u64(self.at.as_nanos());
        match &self.frame {
            Some(f) => h.write_field(f),
            None => h.write_u64(u64::MAX),
        }
        h.write_u64(self.draws.len() as u64);
        for d in &self.draws {
            h.write_u64(*d);
        }
    }
}

/// What a step produced for the host (not guest state: a replay discards it).
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub(crate) frames: Vec<Vec<u8>>,
    pub(crate) disk_writes: Vec<DiskWrite>,
    pub(crate) dirtied: Vec<u64>,
}

/// The checkpointable guest.
#[derive(Debug)]
pub(crate) struct GuestMachine {
    stack: NetStack,
    /// Never added to the socket set: only used to draw from smoltcp's PRNG.
    stirrer: tcp::Socket<'static>,
    pub(crate) app: KvApp,
    pub(crate) disk: SimDisk,
    rx_frames: u64,
    tx_frames: u64,
}

/// Feeds `fmt::Write` output straight into a hash (no intermediate string).
struct HashWriter<'a>(&'a mut Fnv64);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

impl GuestMachine {
    /// The machine as booted at `now` from `cfg` (its PRNG seeded with `cfg.boot_seed`).
    pub(crate) fn boot(cfg: &GuestConfig, now: Instant) -> GuestMachine {
        let mut stack = NetStack::new(cfg.addr, cfg.boot_seed, now);
        let app = KvApp::boot(cfg, &mut stack, now);
        GuestMachine {
            stack,
            stirrer: tcp::Socket::new(
                tcp::SocketBuffer::new(Vec::new()),
                tcp::SocketBuffer::new(Vec::new()),
            ),
            app,
            disk: SimDisk::new(cfg.disk_blocks),
            rx_frames: 0,
            tx_frames: 0,
        }
    }

    /// Replays a log into a freshly booted machine.
    pub(crate) fn replay<'a>(
        cfg: &GuestConfig,
        boot_at: Instant,
        steps: impl Iterator<Item = &'a Recorded>,
    ) -> GuestMachine {
        let mut m = GuestMachine::boot(cfg, boot_at);
        m.replay_onto(cfg, steps);
        m
    }

    /// Replays recorded steps onto this machine as it stands (the machine must be the state
    /// those steps were recorded from: the caller checks that with the chunk list, see
    /// `Guest::restore`). Effects are discarded: the guest the steps were recorded on emitted
    /// them.
    pub(crate) fn replay_onto<'a>(
        &mut self,
        cfg: &GuestConfig,
        steps: impl Iterator<Item = &'a Recorded>,
    ) {
        let mut fx = Effects::default();
        for step in steps {
            let mut ent = Replaying {
                draws: step.draws.iter(),
            };
            self.step(cfg, step.at, step.frame.clone(), &mut ent, &mut fx);
            assert!(
                ent.draws.next().is_none(),
                "guest replay diverged: a step at {:?} drew less entropy than it recorded",
                step.at
            );
            fx.frames.clear();
            fx.disk_writes.clear();
            fx.dirtied.clear();
        }
    }

    /// One step at `now`: take in `frame` (if any), let the stack and the application run,
    /// collect what they emitted into `fx`.
    pub(crate) fn step(
        &mut self,
        cfg: &GuestConfig,
        now: Instant,
        frame: Option<Vec<u8>>,
        ent: &mut dyn Entropy,
        fx: &mut Effects,
    ) {
        if let Some(frame) = frame {
            // The NIC writes the frame into an RX buffer page (a DMA write KVM does not see).
            fx.dirtied.push(self.rx_frames % RX_RING_PAGES);
            self.rx_frames += 1;
            if !self.is_repeat_syn(&frame) {
                self.stack.receive(frame);
            }
            self.stir(cfg, ent.draw() % 32);
        }
        self.stack.poll(now);
        self.app
            .service(now, cfg, &mut self.stack, &mut self.disk, ent, fx);
        self.stack.poll(now);
        while let Some(out) = self.stack.pop_transmit() {
            fx.dirtied
                .push(RX_RING_PAGES + self.tx_frames % TX_RING_PAGES);
            self.tx_frames += 1;
            fx.frames.push(out);
        }
    }

    /// Whether `frame` is a SYN (without ACK) for a connection a socket already holds.
    ///
    /// Linux looks a segment up among established and SYN_RECV sockets before listeners
    /// (`__inet_lookup_skb`: established first), so a retransmitted or duplicated SYN reaches
    /// the connection it opened (a SYN-ACK again, or a challenge ACK per RFC 5961 section 4).
    /// smoltcp offers a SYN to sockets in socket-set order, so a listener in an earlier slot
    /// would open a second connection with another ISN for the same 4-tuple, and its RST for the
    /// client's ACK of the first would reset the client (found by colo-sim seed 243, where held
    /// output delayed the SYN-ACK past the client's SYN retransmission). Dropping the repeat
    /// SYN keeps the guest's TCP Linux-like; the socket holding the connection retransmits on
    /// its own timer.
    fn is_repeat_syn(&self, frame: &[u8]) -> bool {
        let Ok(c) = colo_core::packet::classify(frame) else {
            return false;
        };
        let (
            colo_core::packet::Kind::Tcp(info),
            colo_core::packet::FlowKey::Ip {
                src,
                src_port,
                dst_port,
                ..
            },
        ) = (&c.kind, &c.key)
        else {
            return false;
        };
        use colo_core::packet::tcp_flags::{ACK, SYN};
        if !info.has(SYN) || info.has(ACK) {
            return false;
        }
        self.stack.sockets.iter().any(|(_, s)| {
            let Some(t) = <tcp::Socket as smoltcp::socket::AnySocket>::downcast(s) else {
                return false;
            };
            t.state() != tcp::State::Listen
                && t.local_endpoint().is_some_and(|l| l.port == *dst_port)
                && t.remote_endpoint()
                    .is_some_and(|r| r.port == *src_port && std::net::IpAddr::from(r.addr) == *src)
        })
    }

    /// Advances smoltcp's PRNG by `draws` ISN draws.
    fn stir(&mut self, cfg: &GuestConfig, draws: u64) {
        for _ in 0..draws {
            let cx = self.stack.iface.context();
            // Connecting a socket that is not in the set sends nothing: it only draws an ISN.
            if self
                .stirrer
                .connect(cx, (cfg.addr.ip, 9), (cfg.addr.ip, 9))
                .is_ok()
            {
                self.stirrer.abort();
            }
        }
    }

    /// When the machine next needs a step for its own sake (a TCP timer, a due reply).
    pub(crate) fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let stack = self.stack.poll_at(now);
        match (stack, self.app.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Digest of the whole observable state: every socket's full TCP state (smoltcp's `Debug`
    /// prints every field: sequence numbers, windows, timers, buffers), the application, the
    /// disk and the frame counters. Two machines with equal logs have equal hashes; the point
    /// of hashing state rather than the log is that a *wrong* restore (another epoch, a partial
    /// log) shows up as a different hash even if it replays cleanly.
    #[cfg(test)]
    pub(crate) fn state_hash(&self) -> u64 {
        self.hashes().0
    }

    /// `(state_hash, disk hash)`, hashing the disk once for both.
    pub(crate) fn hashes(&self) -> (u64, u64) {
        let disk = self.disk.hash();
        let mut h = Fnv64::new();
        for (handle, socket) in self.stack.sockets.iter() {
            let _ = write!(HashWriter(&mut h), "{handle:?}{socket:?}");
        }
        let _ = write!(HashWriter(&mut h), "{:?}", self.stirrer);
        self.app.hash_into(&mut h);
        h.write_u64(disk);
        h.write_u64(self.rx_frames);
        h.write_u64(self.tx_frames);
        (h.finish(), disk)
    }
}
