//! Behaviour of the simulated guest: exact checkpoint/restore, divergence from VM-local
//! entropy only, dirty-page and disk bookkeeping, and ISN divergence after a checkpoint.

use colo_core::time::{Duration, Instant};
use etherparse::{SlicedPacket, TransportSlice};

use super::*;
use crate::world::{Endpoint, World, WorldSpec};

fn spec(requests: u64) -> WorldSpec {
    WorldSpec {
        requests_per_connection: requests,
        ..WorldSpec::default()
    }
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// Runs `world` until every client has at least `n` answers.
fn run_until_answers(world: &mut World, n: usize) {
    let ok = world.run_until(ms(30_000), |w| {
        w.clients.iter().all(|c| c.history().completed() >= n)
    });
    assert!(ok, "clients reached {n} answers");
}

#[test]
fn restore_reproduces_the_exact_state_hash() {
    let mut world = World::new(1, &spec(20));
    run_until_answers(&mut world, 8);
    let snap = world.guest.checkpoint();
    assert!(snap.steps() > 0);
    let restored = Guest::from_snapshot(&snap, SimRng::new(99));
    assert_eq!(restored.state_hash(), world.guest.state_hash());
    assert_eq!(restored.disk_hash(), world.guest.disk_hash());
    assert_eq!(restored.requests_served(), world.guest.requests_served());
    assert_eq!(restored.connections(), world.guest.connections());
}

#[test]
fn state_hash_tells_a_stale_snapshot_from_the_current_state() {
    let mut world = World::new(2, &spec(20));
    run_until_answers(&mut world, 4);
    let early = world.guest.checkpoint();
    let early_hash = world.guest.state_hash();
    run_until_answers(&mut world, 12);
    let late = world.guest.checkpoint();
    assert_ne!(early.history_digest(), late.history_digest());
    let mut b = Guest::from_snapshot(&early, SimRng::new(5));
    assert_eq!(b.state_hash(), early_hash);
    assert_ne!(b.state_hash(), world.guest.state_hash());
    b.restore(&late);
    assert_eq!(b.state_hash(), world.guest.state_hash());
    assert_eq!(b.history_digest(), world.guest.history_digest());
}

#[test]
fn snapshot_taken_twice_without_steps_is_the_same_state() {
    let mut world = World::new(3, &spec(10));
    run_until_answers(&mut world, 3);
    let a = world.guest.checkpoint();
    let b = world.guest.checkpoint();
    assert_eq!(a.history_digest(), b.history_digest());
    assert_eq!(a.steps(), b.steps());
    let (ra, rb) = (
        Guest::from_snapshot(&a, SimRng::new(1)),
        Guest::from_snapshot(&b, SimRng::new(2)),
    );
    assert_eq!(ra.state_hash(), rb.state_hash());
}

/// Two worlds identical up to a checkpoint; in one the guest is replaced by a restored copy.
fn fork_worlds(vm_b_seed: u64) -> (World, World) {
    let mut w1 = World::new(4, &spec(30));
    let mut w2 = World::new(4, &spec(30));
    run_until_answers(&mut w1, 5);
    run_until_answers(&mut w2, 5);
    assert_eq!(w1.now, w2.now);
    let snap = w2.guest.checkpoint();
    w2.guest = Guest::from_snapshot(&snap, SimRng::new(vm_b_seed));
    assert_eq!(w1.guest.state_hash(), w2.guest.state_hash());
    assert_eq!(w1.guest.history_digest(), w2.guest.history_digest());
    (w1, w2)
}

#[test]
fn restored_guest_diverges_only_through_its_own_entropy() {
    let (mut w1, mut w2) = fork_worlds(77);
    let (_, mut w3) = fork_worlds(77);
    let end = w1.now + Duration::from_millis(200);
    for w in [&mut w1, &mut w2, &mut w3] {
        w.run_until(end, |_| false);
    }
    // Same snapshot and same entropy: the same future, byte for byte.
    assert_eq!(w2.net.trace_hash(), w3.net.trace_hash());
    assert_eq!(w2.guest.state_hash(), w3.guest.state_hash());
    // Same snapshot, different entropy (PVM vs SVM): the guests' output differs.
    assert_ne!(w1.net.trace_hash(), w2.net.trace_hash());
    assert_ne!(w1.guest.history_digest(), w2.guest.history_digest());
}

fn syn_ack_isn(frames: &[Vec<u8>]) -> Option<u32> {
    frames.iter().find_map(|f| {
        let p = SlicedPacket::from_ethernet(f).ok()?;
        match p.transport {
            Some(TransportSlice::Tcp(t)) if t.syn() && t.ack() => Some(t.sequence_number()),
            _ => None,
        }
    })
}

#[test]
fn isn_of_a_connection_opened_after_a_checkpoint_differs_between_vms() {
    // Clients connect at 50 ms; the checkpoint is taken at 10 ms, before any SYN arrived, so
    // the two VMs answer the same SYN from the same state: only VM-local entropy differs.
    let spec = WorldSpec {
        client_start_at: ms(50),
        clients: 1,
        connections: 1,
        upstream: false,
        ..WorldSpec::default()
    };
    let mut differ = 0;
    let seeds = 0..8;
    for seed in seeds.clone() {
        let mut isns = Vec::new();
        for vm in ["pvm", "svm"] {
            let mut w = World::new(seed, &spec);
            w.run_until(ms(10), |_| false);
            let snap = w.guest.checkpoint();
            w.guest = Guest::from_snapshot(&snap, SimRng::new(seed).fork(vm));
            w.tap = Some(Vec::new());
            w.run_until(ms(100), |_| false);
            let frames: Vec<Vec<u8>> = w
                .tap
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, from, _)| *from == Endpoint::Guest)
                .map(|(_, _, f)| f)
                .collect();
            isns.push(syn_ack_isn(&frames).expect("the guest answered the SYN"));
        }
        if isns[0] != isns[1] {
            differ += 1;
        }
    }
    // Each arriving frame stirs 0..=31 ISN draws (ARP request, then SYN): equal ISNs happen
    // with probability about 2%.
    assert!(differ >= 7, "ISNs differed in {differ} of 8 seeds");
}

#[test]
fn traffic_dirties_ring_and_heap_pages_and_harvest_clears() {
    let mut world = World::new(6, &spec(10));
    run_until_answers(&mut world, 5);
    let ranges = world.guest.take_dirty_pages();
    let pages: u64 = ranges.iter().map(|r| r.count).sum();
    assert!(pages > 0);
    let has = |p: u64| ranges.iter().any(|r| r.first <= p && p < r.first + r.count);
    assert!(has(0), "first RX ring page");
    assert!(has(memory::RX_RING_PAGES), "first TX ring page");
    assert!(
        ranges
            .iter()
            .any(|r| r.first + r.count > memory::HEAP_FIRST_PAGE
                && r.first < memory::HEAP_FIRST_PAGE + memory::HEAP_PAGES),
        "a heap page of a written key"
    );
    assert_eq!(world.guest.dirty_page_count(), 0);
}

#[test]
fn idle_guest_dirties_pages_at_its_background_rate() {
    let cfg = GuestConfig::new(crate::stack::Addr::lan(1), 1);
    let rate = u64::from(cfg.background_dirty_per_ms);
    let mut g = Guest::boot(cfg, Instant::ZERO, SimRng::new(1));
    g.handle_timeout(ms(100));
    let dirty = g.dirty_page_count();
    // 100 ms at `rate` pages/ms, minus the few pages hit twice.
    assert!(dirty <= 100 * rate && dirty > 90 * rate, "dirty {dirty}");
}

#[test]
fn disk_writes_replayed_on_a_replica_give_the_same_disk() {
    let mut world = World::new(7, &spec(15));
    run_until_answers(&mut world, 15);
    let mut replica = disk::SimDisk::new(world.guest.config().disk_blocks);
    let mut n = 0;
    while let Some(w) = world.guest.poll_disk_write() {
        replica.apply(&w);
        n += 1;
    }
    assert!(n > 0);
    assert_eq!(n, world.guest.stats().disk_writes);
    assert_eq!(replica.hash(), world.guest.disk_hash());
}

#[test]
#[should_panic(expected = "time went backwards")]
fn time_going_backwards_is_a_caller_bug() {
    let cfg = GuestConfig::new(crate::stack::Addr::lan(1), 1);
    let mut g = Guest::boot(cfg, ms(10), SimRng::new(1));
    g.handle_timeout(ms(9));
}

#[test]
fn garbage_frames_never_panic_the_guest_and_leave_it_serving() {
    let mut world = World::new(8, &spec(10));
    run_until_answers(&mut world, 2);
    let mut rng = SimRng::new(8);
    let valid = {
        world.tap = Some(Vec::new());
        world.run_until(world.now + Duration::from_millis(20), |_| false);
        world.tap.take().unwrap_or_default()
    };
    assert!(!valid.is_empty(), "real frames to corrupt");
    let mut t = world.now;
    for i in 0..2_000u64 {
        t += Duration::from_micros(10);
        let frame = match i % 3 {
            // Random bytes of random length.
            0 => (0..rng.below(200)).map(|_| rng.next_u64() as u8).collect(),
            // A real frame with a few bytes flipped (bad checksums, lying lengths).
            1 if !valid.is_empty() => {
                let mut f = valid[rng.below(valid.len() as u64) as usize].2.clone();
                for _ in 0..3 {
                    let at = rng.below(f.len() as u64) as usize;
                    f[at] ^= rng.next_u64() as u8 | 1;
                }
                f
            }
            // A real frame cut short.
            _ if !valid.is_empty() => {
                let f = &valid[rng.below(valid.len() as u64) as usize].2;
                f[..rng.below(f.len() as u64) as usize].to_vec()
            }
            _ => Vec::new(),
        };
        world.guest.handle_frame(t, frame);
    }
    world.now = t;
    let done = world.run_until(ms(120_000), World::clients_done);
    assert!(done, "the guest kept serving after garbage");
}

/// The state a snapshot stands for, computed the slow way: a fresh machine replaying the whole
/// log from boot.
fn hash_from_boot(snap: &GuestSnapshot) -> u64 {
    let steps = snap.chunks.iter().flat_map(|c| c.iter());
    GuestMachine::replay(&snap.cfg, snap.boot_at, steps).state_hash()
}

#[test]
fn incremental_restore_equals_restore_from_boot() {
    // Random histories: a primary runs and checkpoints at random instants; a replica is
    // restored to the newest snapshot most of the time, to a stale one sometimes, and now and
    // then runs on its own in between (as an SVM does), which must force the full replay.
    let (mut incremental, mut full) = (0u64, 0u64);
    for seed in 0..6u64 {
        let mut rng = SimRng::new(seed).fork("incremental-restore-test");
        let mut world = World::new(seed, &spec(25));
        let mut snaps = vec![world.guest.checkpoint()];
        let mut replica = Guest::from_snapshot(&snaps[0], SimRng::new(seed + 100));
        for round in 0..14 {
            let until = world.now + Duration::from_millis(rng.range_inclusive(1, 400));
            world.run_until(until, |_| false);
            let snap = world.guest.checkpoint();
            let (stepped, stale) = (rng.chance_ppm(250_000), rng.chance_ppm(200_000));
            if stepped {
                // The replica runs on its own: its machine leaves the recorded history.
                replica.handle_timeout(world.now.max(replica.last_now));
            }
            let target = if stale {
                snaps[rng.below(snaps.len() as u64) as usize].clone()
            } else {
                snap.clone()
            };
            snaps.push(snap);
            let before = replica.stats();
            replica.restore(&target);
            let after = replica.stats();
            let took_increment = after.incremental_restores > before.incremental_restores;
            if stepped {
                assert!(
                    !took_increment,
                    "seed {seed} round {round}: a guest that ran on its own must replay from boot"
                );
            }
            if took_increment {
                incremental += 1;
            } else {
                full += 1;
            }
            assert_eq!(
                replica.state_hash(),
                hash_from_boot(&target),
                "seed {seed} round {round}: restore (incremental: {took_increment}) differs from a replay from boot"
            );
            assert_eq!(replica.history_digest(), target.history_digest());
        }
    }
    // Both paths were exercised.
    assert!(
        incremental >= 20 && full >= 10,
        "incremental {incremental}, full {full}"
    );
}

#[test]
fn stale_snapshot_after_a_newer_one_replays_from_boot_and_back() {
    let mut world = World::new(11, &spec(20));
    run_until_answers(&mut world, 3);
    let old = world.guest.checkpoint();
    run_until_answers(&mut world, 8);
    let new = world.guest.checkpoint();
    let mut b = Guest::from_snapshot(&old, SimRng::new(3));
    b.restore(&new);
    assert_eq!(
        b.stats().incremental_restores,
        2,
        "boot -> old -> new extend each other"
    );
    assert_eq!(b.state_hash(), hash_from_boot(&new));
    // Back to the older snapshot: its chunks are not an extension of what b holds.
    b.restore(&old);
    assert_eq!(b.stats().incremental_restores, 2);
    assert_eq!(b.state_hash(), hash_from_boot(&old));
    // And forward again: old's chunks are a prefix of new's, so only the delta replays.
    let replayed = b.stats().replayed_steps;
    b.restore(&new);
    assert_eq!(b.stats().incremental_restores, 3);
    assert_eq!(
        b.stats().replayed_steps - replayed,
        (new.steps() - old.steps()) as u64
    );
    assert_eq!(b.state_hash(), world.guest.state_hash());
}

#[test]
fn cached_hashes_follow_every_step_and_restore() {
    let mut world = World::new(12, &spec(20));
    run_until_answers(&mut world, 3);
    let snap = world.guest.checkpoint();
    let mut b = Guest::from_snapshot(&snap, SimRng::new(4));
    let first = (b.state_hash(), b.disk_hash());
    assert_eq!(first, (b.machine.state_hash(), b.machine.disk.hash()));
    // A step changes the machine (its frame counter at least for a frame; timers for time):
    // the cached value must not survive it.
    let later = world.now + Duration::from_secs(2);
    b.handle_timeout(later);
    assert_eq!(b.state_hash(), b.machine.state_hash());
    run_until_answers(&mut world, 6);
    let newer = world.guest.checkpoint();
    b.restore(&newer);
    assert_eq!(
        (b.state_hash(), b.disk_hash()),
        (world.guest.state_hash(), world.guest.disk_hash())
    );
    assert_ne!(b.state_hash(), first.0);
}
