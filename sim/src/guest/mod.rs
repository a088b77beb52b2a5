//! `Guest`: a simulated guest VM as colo sees it — a NIC that emits and takes Ethernet frames,
//! a disk it writes, memory pages it dirties — whose whole state can be checkpointed exactly.
//!
//! Inside runs a real TCP/IP stack (smoltcp) serving the key-value application of
//! [`crate::proto`] to clients, and opening a connection of its own to an upstream server, so
//! colo's comparator and rewriter meet real TCP in both directions: ISNs that differ between
//! primary and secondary, delayed ACKs, retransmissions, segmentation.
//!
//! Invariant kept: the checkpointable state ([`machine::GuestMachine`]) is separate from the
//! VM-local nondeterminism (the `entropy` generator: ISN stirring, processing delays, reply
//! tokens) and from host bookkeeping (the output queues and the dirty-page log). A checkpoint
//! ([`Guest::checkpoint`]) captures the state exactly; a guest restored from it
//! ([`Guest::restore`]) has the same [`Guest::state_hash`] and then continues with its *own*
//! entropy, so primary and secondary can diverge again, as real VMs do after a COLO checkpoint.
//!
//! The driving contract is the core's: `handle_frame(now, ..)` / `handle_timeout(now)` feed,
//! `poll_transmit()` / `poll_disk_write()` drain, `poll_timeout()` says when to come back, and
//! `now` never goes backwards.

mod app;
pub mod disk;
mod machine;
pub mod memory;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;

use colo_core::ids::PageRange;
use colo_core::time::{Duration, Instant};

use self::disk::DiskWrite;
use self::machine::{Effects, GuestMachine, Recorded, Recording};
use self::memory::DirtyLog;
use crate::hash::Fnv64;
use crate::rng::SimRng;
use crate::stack::Addr;

/// How a guest is built; part of its checkpointable state (a restored guest takes the
/// snapshot's configuration, whatever it was created with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// The guest's MAC and IP (primary and secondary VMs share them, as in QEMU COLO).
    pub addr: Addr,
    /// Seed of smoltcp's PRNG at boot (the "kernel RNG" state of the image).
    pub boot_seed: u64,
    /// TCP port of the key-value service.
    pub port: u16,
    /// Listening sockets kept ready (concurrent connection attempts the guest can take).
    pub backlog: usize,
    /// Server the guest connects out to and logs every write to, if any.
    pub upstream: Option<(Ipv4Addr, u16)>,
    /// Upper bound of the per-request processing delay.
    pub reply_jitter_max: Duration,
    /// Probability (ppm) that a reply carries a VM-local random token.
    pub token_ppm: u32,
    /// Guest memory size in pages.
    pub memory_pages: u64,
    /// Pages the guest's background activity (kernel, timers) dirties per millisecond.
    pub background_dirty_per_ms: u32,
    /// Disk size in blocks.
    pub disk_blocks: u64,
}

impl GuestConfig {
    /// A 64 MiB guest serving on port 7000 with modest jitter and tokens on 1 reply in 8.
    pub fn new(addr: Addr, boot_seed: u64) -> GuestConfig {
        GuestConfig {
            addr,
            boot_seed,
            port: 7000,
            backlog: 4,
            upstream: None,
            reply_jitter_max: Duration::from_micros(500),
            token_ppm: 125_000,
            memory_pages: 16_384,
            background_dirty_per_ms: 4,
            disk_blocks: 4096,
        }
    }
}

/// An exact copy of a guest's state at one instant: its configuration, boot instant and the
/// recorded steps since boot (shared, append-only chunks: taking a snapshot copies pointers,
/// not the log).
#[derive(Clone, Debug)]
pub struct GuestSnapshot {
    cfg: GuestConfig,
    boot_at: Instant,
    chunks: Vec<Arc<[Recorded]>>,
    taken_at: Instant,
    digest: u64,
}

impl GuestSnapshot {
    /// The instant of the last step the snapshot contains.
    pub fn taken_at(&self) -> Instant {
        self.taken_at
    }

    /// Digest of the recorded history the snapshot holds (see [`Guest::history_digest`]).
    pub fn history_digest(&self) -> u64 {
        self.digest
    }

    /// Recorded steps in the snapshot (restore replays this many).
    pub fn steps(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }
}

/// Counters of a guest's activity since boot (or restore).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames emitted.
    pub frames_out: u64,
    /// Disk block writes issued.
    pub disk_writes: u64,
    /// Restores performed.
    pub restores: u64,
    /// Of those, restores that replayed only the steps past the guest's own chunks (the
    /// incremental path of [`Guest::restore`]; a guest fresh from boot holds the empty prefix,
    /// so [`Guest::from_snapshot`] takes it too, replaying the whole log onto the booted
    /// machine).
    pub incremental_restores: u64,
    /// Recorded steps replayed by restores (incremental and from boot).
    pub replayed_steps: u64,
}

/// A simulated guest VM.
#[derive(Debug)]
pub struct Guest {
    cfg: GuestConfig,
    boot_at: Instant,
    machine: GuestMachine,
    sealed: Vec<Arc<[Recorded]>>,
    current: Vec<Recorded>,
    digest: Fnv64,
    entropy: SimRng,
    background: SimRng,
    dirty: DirtyLog,
    background_owed_ns: u64,
    tx: VecDeque<Vec<u8>>,
    disk_out: VecDeque<DiskWrite>,
    last_now: Instant,
    stats: GuestStats,
    /// `(state_hash, disk_hash)` of the machine as it stands, once computed; cleared by every
    /// step and restore (the only things that change the machine).
    hashes: Cell<Option<(u64, u64)>>,
}

impl Guest {
    /// Boots a guest at `now`. `entropy` is the VM's own nondeterminism (never checkpointed).
    pub fn boot(cfg: GuestConfig, now: Instant, entropy: SimRng) -> Guest {
        let machine = GuestMachine::boot(&cfg, now);
        let background = entropy.fork("background-dirty");
        Guest {
            dirty: DirtyLog::new(cfg.memory_pages),
            boot_at: now,
            machine,
            sealed: Vec::new(),
            current: Vec::new(),
            digest: Fnv64::new(),
            entropy,
            background,
            background_owed_ns: 0,
            tx: VecDeque::new(),
            disk_out: VecDeque::new(),
            last_now: now,
            stats: GuestStats::default(),
            hashes: Cell::new(None),
            cfg,
        }
    }

    /// A guest whose state is `snap`, with its own VM-local `entropy` (a secondary VM).
    pub fn from_snapshot(snap: &GuestSnapshot, entropy: SimRng) -> Guest {
        let mut g = Guest::boot(snap.cfg.clone(), snap.boot_at, entropy);
        g.restore(snap);
        g
    }

    /// The configuration in force.
    pub fn config(&self) -> &GuestConfig {
        &self.cfg
    }

    /// A frame from the network reaches the guest's NIC at `now`.
    pub fn handle_frame(&mut self, now: Instant, frame: Vec<u8>) {
        self.stats.frames_in += 1;
        self.step(now, Some(frame));
    }

    /// Time passed: let the guest's timers run. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.step(now, None);
    }

    fn step(&mut self, now: Instant, frame: Option<Vec<u8>>) {
        assert!(
            now >= self.last_now,
            "Guest: time went backwards ({now:?} < {:?}); `now` must never decrease",
            self.last_now
        );
        self.background_dirt(now);
        self.last_now = now;
        self.hashes.set(None);
        let mut draws = Vec::new();
        let mut fx = Effects::default();
        let mut ent = Recording {
            rng: &mut self.entropy,
            draws: &mut draws,
        };
        self.machine
            .step(&self.cfg, now, frame.clone(), &mut ent, &mut fx);
        let step = Recorded {
            at: now,
            frame,
            draws,
        };
        step.digest_into(&mut self.digest);
        self.current.push(step);
        for page in fx.dirtied {
            self.dirty.mark(page);
        }
        self.stats.frames_out += fx.frames.len() as u64;
        self.stats.disk_writes += fx.disk_writes.len() as u64;
        self.tx.extend(fx.frames);
        self.disk_out.extend(fx.disk_writes);
    }

    /// The guest's background activity dirties pages at a steady rate, at random places.
    fn background_dirt(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_now);
        let owed = u128::from(self.background_owed_ns)
            + elapsed.as_nanos() * u128::from(self.cfg.background_dirty_per_ms);
        let pages = owed / 1_000_000;
        self.background_owed_ns = (owed % 1_000_000) as u64;
        let memory = self.dirty.memory_pages();
        for _ in 0..pages.min(u128::from(memory)) {
            let page = self.background.below(memory);
            self.dirty.mark(page);
        }
    }

    /// The next frame the guest transmitted.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// The next disk write the guest issued.
    pub fn poll_disk_write(&mut self) -> Option<DiskWrite> {
        self.disk_out.pop_front()
    }

    /// When the guest next needs `handle_timeout`.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.machine.poll_timeout(self.last_now)
    }

    /// Harvests the dirty pages as ranges (clears the log, like `KVM_GET_DIRTY_LOG`).
    pub fn take_dirty_pages(&mut self) -> Vec<PageRange> {
        self.dirty.harvest()
    }

    /// Pages dirty since the last harvest.
    pub fn dirty_page_count(&self) -> u64 {
        self.dirty.dirty_pages()
    }

    /// Captures the guest's state exactly (the VM is taken as paused at its last step).
    pub fn checkpoint(&mut self) -> GuestSnapshot {
        if !self.current.is_empty() {
            let chunk: Arc<[Recorded]> = std::mem::take(&mut self.current).into();
            self.sealed.push(chunk);
        }
        GuestSnapshot {
            cfg: self.cfg.clone(),
            boot_at: self.boot_at,
            chunks: self.sealed.clone(),
            taken_at: self.last_now,
            digest: self.digest.finish(),
        }
    }

    /// Replaces this guest's state with `snap`. The VM-local entropy is kept; pending outputs
    /// and the dirty log are dropped (they were the old state's; the snapshot's own outputs
    /// were emitted by the guest it was taken from).
    ///
    /// The machine is always the replay of `sealed` followed by `current` (boot, step,
    /// checkpoint and restore all keep that). So when this guest took no step since its last
    /// checkpoint or restore and its sealed chunks are, pointer for pointer, a prefix of the
    /// snapshot's (the same `Arc`s: the snapshot extends the history this guest already
    /// holds), replaying only the snapshot's further chunks onto the machine as it stands
    /// gives the same state as replaying everything from boot: an SVM that is not run between
    /// checkpoints (the removed platform engine's) restores in O(new steps) instead of O(history).
    /// Otherwise (the guest ran on its own, or the snapshot is older or from another history)
    /// it boots a fresh machine and replays the whole log. The test
    /// `incremental_restore_equals_restore_from_boot` holds both paths to the same state hash.
    pub fn restore(&mut self, snap: &GuestSnapshot) {
        let prefix = self.current.is_empty()
            && self.cfg == snap.cfg
            && self.boot_at == snap.boot_at
            && self.sealed.len() <= snap.chunks.len()
            && self
                .sealed
                .iter()
                .zip(&snap.chunks)
                .all(|(mine, theirs)| Arc::ptr_eq(mine, theirs));
        if prefix {
            let further = &snap.chunks[self.sealed.len()..];
            self.stats.replayed_steps += further.iter().map(|c| c.len() as u64).sum::<u64>();
            self.machine
                .replay_onto(&snap.cfg, further.iter().flat_map(|c| c.iter()));
            self.stats.incremental_restores += 1;
        } else {
            self.stats.replayed_steps += snap.steps() as u64;
            let steps = snap.chunks.iter().flat_map(|c| c.iter());
            self.machine = GuestMachine::replay(&snap.cfg, snap.boot_at, steps);
        }
        self.hashes.set(None);
        self.cfg = snap.cfg.clone();
        self.boot_at = snap.boot_at;
        self.sealed = snap.chunks.clone();
        self.current.clear();
        self.digest = Fnv64::resume(snap.digest);
        self.tx.clear();
        self.disk_out.clear();
        self.dirty.clear();
        self.last_now = self.last_now.max(snap.taken_at);
        self.stats.restores += 1;
    }

    /// Digest of the checkpointable state itself: every socket's full TCP state, the
    /// application, the disk. Exact but costly (it formats every socket buffer byte: about a
    /// millisecond for a busy guest, see docs/benchmarks.md); checkers that run at every
    /// checkpoint can compare [`Guest::history_digest`] and sample this one.
    ///
    /// Computed once per machine state (kept until the next step or restore): a VM hashed
    /// again without having run in between, like an SVM paused after it loaded a checkpoint,
    /// costs nothing the second time.
    pub fn state_hash(&self) -> u64 {
        self.hashes().0
    }

    /// [`Guest::state_hash`] computed afresh, bypassing the cache (what one hash costs: the
    /// criterion benchmark `world/state_hash_after_10_simulated_seconds`).
    pub fn state_hash_uncached(&self) -> u64 {
        self.machine.hashes().0
    }

    fn hashes(&self) -> (u64, u64) {
        if let Some(h) = self.hashes.get() {
            return h;
        }
        let h = self.machine.hashes();
        self.hashes.set(Some(h));
        h
    }

    /// Running digest of every recorded step since boot (instant, frame, entropy draws): O(1)
    /// to read. The guest is a pure function of its history, so equal digests mean equal
    /// states; a guest restored from a snapshot carries the snapshot's digest on.
    pub fn history_digest(&self) -> u64 {
        self.digest.finish()
    }

    /// Digest of the disk's content.
    pub fn disk_hash(&self) -> u64 {
        self.hashes().1
    }

    /// Requests the application answered.
    pub fn requests_served(&self) -> u64 {
        self.machine.app.served()
    }

    /// Client connections the application holds.
    pub fn connections(&self) -> usize {
        self.machine.app.connections()
    }

    /// Upstream log entries not yet acknowledged, and upstream connections opened so far.
    pub fn upstream_backlog(&self) -> (usize, u64) {
        self.machine.app.upstream_backlog()
    }

    /// Activity counters.
    pub fn stats(&self) -> GuestStats {
        self.stats
    }
}
