//! `Netem`: a seeded, sans-IO network emulator for Ethernet frames between named endpoints.
//!
//! It owns every frame in flight between the simulated hosts, guests and clients, and the
//! faults applied to them: per-link delay and jitter, loss, duplication, reordering, partitions
//! (symmetric or one-way) and clogging. Like str0m's `netem` crate and Linux `tc netem` it is a
//! queue with a clock passed in, not a task: `send(now, ..)` enqueues, `poll_deliver(now)`
//! drains what is due, `poll_timeout()` says when to call again.
//!
//! Invariant kept: the delivery trace (which frame reaches which endpoint at which instant) is a
//! pure function of the seed, the configuration and the sequence of calls. All draws come from
//! the emulator's own [`SimRng`]; frames due at the same instant leave in the order they were
//! scheduled (a monotonically increasing ticket breaks ties), and link tables are `BTreeMap`s.
//! [`Netem::trace_hash`] digests the trace so two runs can be compared byte for byte.
//!
//! Fault semantics (chosen to match what a real network does to frames, see `docs/simulation.md`):
//! - loss, duplication, jitter and reordering are drawn per frame at `send`;
//! - a partition drops frames at `send` *and* frames already in flight when they come due (a cut
//!   cable loses what is on it);
//! - a clog holds frames (sent or coming due) without dropping them, like madsim's `clog_link`;
//!   `unclog` releases them, in their original order, each with a fresh link delay.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

use colo_core::time::{Duration, Instant};

use crate::hash::Fnv64;
use crate::rng::SimRng;

#[cfg(test)]
mod tests;

/// Impairments of one directed link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Fixed one-way latency.
    pub delay: Duration,
    /// Extra latency drawn uniformly from `0..=jitter` per frame; frames closer together than
    /// the jitter may overtake each other, as with Linux netem's jitter.
    pub jitter: Duration,
    /// Probability (parts per million) that a frame is lost.
    pub loss_ppm: u32,
    /// Probability (ppm) that a frame is delivered twice (the copy has its own latency draw).
    pub duplicate_ppm: u32,
    /// Probability (ppm) that a frame is held back by `reorder_delay` so later frames pass it.
    pub reorder_ppm: u32,
    /// Extra hold of a reordered frame.
    pub reorder_delay: Duration,
}

impl LinkConfig {
    /// A perfect link: no delay, no loss.
    pub const PERFECT: LinkConfig = LinkConfig {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss_ppm: 0,
        duplicate_ppm: 0,
        reorder_ppm: 0,
        reorder_delay: Duration::ZERO,
    };

    /// A clean LAN link with a fixed latency.
    pub const fn with_delay(delay: Duration) -> LinkConfig {
        LinkConfig {
            delay,
            ..LinkConfig::PERFECT
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig::PERFECT
    }
}

/// A frame handed to its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<E> {
    /// Sender.
    pub from: E,
    /// Receiver.
    pub to: E,
    /// The instant it was due (`<=` the `now` of the `poll_deliver` that returned it).
    pub at: Instant,
    /// The frame's bytes.
    pub frame: Vec<u8>,
}

/// Counters of what the emulator did; `sent + duplicated = delivered + lost + cut + in flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetemStats {
    /// Frames passed to `send`.
    pub sent: u64,
    /// Frames handed out by `poll_deliver` (duplicates included).
    pub delivered: u64,
    /// Frames dropped by the loss draw.
    pub lost: u64,
    /// Extra copies created by the duplication draw.
    pub duplicated: u64,
    /// Frames held back by the reorder draw.
    pub reordered: u64,
    /// Frames dropped because their link was partitioned (at send or while in flight).
    pub cut: u64,
    /// Frames that were held by a clog at some point.
    pub clogged: u64,
}

struct InFlight<E> {
    from: E,
    to: E,
    frame: Vec<u8>,
}

/// The network emulator. `E` names endpoints (a host, a guest NIC, a client); it only needs a
/// total order (for deterministic tables) and `Debug` (for the trace digest).
pub struct Netem<E> {
    rng: SimRng,
    default_link: LinkConfig,
    links: BTreeMap<(E, E), LinkConfig>,
    /// Directed links that drop everything.
    cut: BTreeSet<(E, E)>,
    /// Directed links that hold everything, with the frames they hold in arrival order.
    clogs: BTreeMap<(E, E), VecDeque<Vec<u8>>>,
    /// Frames in flight by (due instant, ticket); the ticket keeps ties in scheduling order.
    queue: BTreeMap<(Instant, u64), InFlight<E>>,
    next_ticket: u64,
    last_now: Instant,
    stats: NetemStats,
    trace: Fnv64,
}

impl<E: Debug> Debug for Netem<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netem")
            .field("default_link", &self.default_link)
            .field("cut", &self.cut)
            .field("clogged_links", &self.clogs.keys().collect::<Vec<_>>())
            .field("in_flight", &self.queue.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<E: Clone + Ord + Debug> Netem<E> {
    /// An emulator whose every random draw comes from `rng`, with `default_link` on every link
    /// that has no configuration of its own.
    pub fn new(rng: SimRng, default_link: LinkConfig) -> Netem<E> {
        Netem {
            rng,
            default_link,
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            clogs: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_ticket: 0,
            last_now: Instant::ZERO,
            stats: NetemStats::default(),
            trace: Fnv64::new(),
        }
    }

    /// Sets the impairments of every link without its own configuration.
    pub fn set_default_link(&mut self, cfg: LinkConfig) {
        self.default_link = cfg;
    }

    /// Sets the impairments of the directed link `from -> to` (affects frames sent from now on).
    pub fn set_link(&mut self, from: E, to: E, cfg: LinkConfig) {
        self.links.insert((from, to), cfg);
    }

    /// Sets the same impairments on both directions between `a` and `b`.
    pub fn set_link_symmetric(&mut self, a: E, b: E, cfg: LinkConfig) {
        self.set_link(a.clone(), b.clone(), cfg);
        self.set_link(b, a, cfg);
    }

    /// The impairments in force on `from -> to`.
    pub fn link(&self, from: &E, to: &E) -> LinkConfig {
        self.links
            .get(&(from.clone(), to.clone()))
            .copied()
            .unwrap_or(self.default_link)
    }

    /// Cuts `from -> to` only (a one-way partition: `to` can still reach `from`).
    pub fn partition_one_way(&mut self, from: E, to: E) {
        self.cut.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&mut self, a: E, b: E) {
        self.cut.insert((a.clone(), b.clone()));
        self.cut.insert((b, a));
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal(&mut self, a: &E, b: &E) {
        self.cut.remove(&(a.clone(), b.clone()));
        self.cut.remove(&(b.clone(), a.clone()));
    }

    /// Removes every partition.
    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Whether `from -> to` is cut.
    pub fn is_partitioned(&self, from: &E, to: &E) -> bool {
        self.cut.contains(&(from.clone(), to.clone()))
    }

    /// Starts holding every frame on `from -> to`, including those already in flight (nothing
    /// is dropped, and the held frames keep the order in which they were due).
    pub fn clog(&mut self, from: E, to: E) {
        let link = (from, to);
        if self.clogs.contains_key(&link) {
            return;
        }
        let caught: Vec<(Instant, u64)> = self
            .queue
            .iter()
            .filter(|(_, f)| f.from == link.0 && f.to == link.1)
            .map(|(k, _)| *k)
            .collect();
        let mut held = VecDeque::with_capacity(caught.len());
        for key in caught {
            if let Some(f) = self.queue.remove(&key) {
                self.stats.clogged += 1;
                held.push_back(f.frame);
            }
        }
        self.clogs.insert(link, held);
    }

    /// Stops holding frames on `from -> to`; the held frames leave in order, each after a fresh
    /// link latency counted from `now`.
    pub fn unclog(&mut self, now: Instant, from: &E, to: &E) {
        self.advance(now);
        if let Some(held) = self.clogs.remove(&(from.clone(), to.clone())) {
            let cfg = self.link(from, to);
            for frame in held {
                let at = now + cfg.delay + self.rng.duration_upto(cfg.jitter);
                self.schedule(at, from.clone(), to.clone(), frame);
            }
        }
    }

    /// Whether `from -> to` is clogged.
    pub fn is_clogged(&self, from: &E, to: &E) -> bool {
        self.clogs.contains_key(&(from.clone(), to.clone()))
    }

    /// Hands a frame to the network at `now`.
    ///
    /// # Panics
    /// If `now` is earlier than an instant passed before (time never goes backwards).
    pub fn send(&mut self, now: Instant, from: E, to: E, frame: Vec<u8>) {
        self.advance(now);
        self.stats.sent += 1;
        if self.is_partitioned(&from, &to) {
            self.stats.cut += 1;
            return;
        }
        let cfg = self.link(&from, &to);
        if self.rng.chance_ppm(cfg.loss_ppm) {
            self.stats.lost += 1;
            return;
        }
        let mut copies = vec![frame];
        if self.rng.chance_ppm(cfg.duplicate_ppm) {
            self.stats.duplicated += 1;
            copies.push(copies[0].clone());
        }
        for frame in copies {
            if let Some(held) = self.clogs.get_mut(&(from.clone(), to.clone())) {
                self.stats.clogged += 1;
                held.push_back(frame);
                continue;
            }
            let mut at = now + cfg.delay + self.rng.duration_upto(cfg.jitter);
            if self.rng.chance_ppm(cfg.reorder_ppm) {
                self.stats.reordered += 1;
                at += cfg.reorder_delay;
            }
            self.schedule(at, from.clone(), to.clone(), frame);
        }
    }

    /// Drops every frame in flight or held from `from` to `to` (one way: the receiving end of
    /// a TCP connection closed, what was on its way there is gone); counted as cut. Returns
    /// how many.
    pub fn drop_toward(&mut self, from: &E, to: &E) -> usize {
        let before = self.in_flight();
        self.queue.retain(|_, f| !(&f.from == from && &f.to == to));
        if let Some(held) = self.clogs.get_mut(&(from.clone(), to.clone())) {
            held.clear();
        }
        let dropped = before - self.in_flight();
        self.stats.cut += dropped as u64;
        dropped
    }

    /// Drops every frame in flight or held between `a` and `b`, both ways (a TCP connection
    /// reset: what was on its way is gone); counted as cut. Returns how many.
    pub fn drop_between(&mut self, a: &E, b: &E) -> usize {
        let between = |from: &E, to: &E| (from == a && to == b) || (from == b && to == a);
        let before = self.in_flight();
        self.queue.retain(|_, f| !between(&f.from, &f.to));
        for ((from, to), held) in &mut self.clogs {
            if between(from, to) {
                held.clear();
            }
        }
        let dropped = before - self.in_flight();
        self.stats.cut += dropped as u64;
        dropped
    }

    /// The next frame due at or before `now`, if any. Call until it returns `None`.
    ///
    /// # Panics
    /// If `now` is earlier than an instant passed before.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Delivery<E>> {
        self.advance(now);
        while let Some(entry) = self.queue.first_entry() {
            let (at, _) = *entry.key();
            if at > now {
                return None;
            }
            let InFlight { from, to, frame } = entry.remove();
            let link = (from.clone(), to.clone());
            if self.cut.contains(&link) {
                self.stats.cut += 1;
                continue;
            }
            self.stats.delivered += 1;
            self.trace.write_u64(at.as_nanos());
            self.trace
                .write_field(format!("{from:?}>{to:?}").as_bytes());
            self.trace.write_field(&frame);
            return Some(Delivery {
                from,
                to,
                at,
                frame,
            });
        }
        None
    }

    /// The instant the next frame in flight comes due (held frames of a clog do not count:
    /// they wait for `unclog`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    /// Frames scheduled and not yet delivered or cut, plus frames held by clogs.
    pub fn in_flight(&self) -> usize {
        self.queue.len() + self.clogs.values().map(VecDeque::len).sum::<usize>()
    }

    /// What the emulator did so far.
    pub fn stats(&self) -> NetemStats {
        self.stats
    }

    /// Digest of every delivery so far (instant, endpoints, bytes), in delivery order.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    fn schedule(&mut self, at: Instant, from: E, to: E, frame: Vec<u8>) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue
            .insert((at, ticket), InFlight { from, to, frame });
    }

    fn advance(&mut self, now: Instant) {
        assert!(
            now >= self.last_now,
            "Netem: time went backwards ({now:?} < {:?}); `now` must never decrease",
            self.last_now
        );
        self.last_now = now;
    }
}
