//! The seed's faults applied to a [`NodeRun`]: host-arbiter and host-host cuts are applied
//! where messages are sent (see `mod.rs`); here the first crash, the client-link cuts of the
//! link owner and the start of the liveness phase. Invariant kept: faults act only during the
//! safety phase, and at most one crash is applied, before any failover.

use colo_core::time::Instant;

use super::{NodeRun, host};
use crate::swarm::{CrashPoint, Cut, CutMode, Host};
use crate::trace::TraceEvent;
use crate::world::Endpoint;

impl NodeRun {
    /// The seed's faults due at `now` (the first crash of either host, link cuts, the start of
    /// the liveness phase); returns whether anything changed.
    pub(super) fn apply_faults(&mut self, now: Instant) -> bool {
        let mut changed = false;
        if !self.faults_stopped && now >= self.opts.liveness_starts() {
            self.faults_stopped = true;
            self.world.net.heal_all();
            for c in 0..self.opts.clients {
                self.world
                    .net
                    .unclog(now, &Endpoint::Client(c), &Endpoint::Guest);
            }
            self.applied_cuts.clear();
            let delay = self.opts.link.delay;
            self.world
                .net
                .set_default_link(crate::netem::LinkConfig::with_delay(delay));
            self.trace.push(TraceEvent::FaultsStopped { at: now });
            return true;
        }
        if self.faults_stopped {
            return false;
        }
        // Without re-protection driven here, one crash per run, before any failover: a crash of
        // the survivor would leave no host. `At` (and `OnFailover`, taken as its instant) fire
        // here; the checkpoint-phase points fire in `crash_at_point`.
        if !self.crash_done
            && self.failed_over
            && self
                .opts
                .crashes
                .first()
                .is_some_and(|c| c.not_before <= now)
        {
            self.crash_done = true;
        }
        if !self.crash_done
            && let Some(c) = self.opts.crashes.first().copied()
            && c.not_before <= now
            && matches!(c.point, CrashPoint::At | CrashPoint::OnFailover)
        {
            self.crash_done = true;
            let h = if c.host == Host::A { 0 } else { 1 };
            self.crash(now, h);
            changed = true;
        }
        for (i, lf) in self.opts.link_faults.clone().iter().enumerate() {
            let Cut::ClientsHost(hh) = lf.cut else {
                continue;
            };
            let on = lf.from <= now && now < lf.until && hh == host(self.client_target);
            let applied = self.applied_cuts.contains(&i);
            if on == applied {
                continue;
            }
            changed = true;
            for c in 0..self.opts.clients {
                let client = Endpoint::Client(c);
                match (on, lf.mode) {
                    (true, CutMode::Symmetric) => self.world.net.partition(client, Endpoint::Guest),
                    (true, CutMode::OneWay) => {
                        self.world.net.partition_one_way(client, Endpoint::Guest)
                    }
                    (true, CutMode::Clog) => self.world.net.clog(client, Endpoint::Guest),
                    (false, CutMode::Clog) => self.world.net.unclog(now, &client, &Endpoint::Guest),
                    (false, _) => self.world.net.heal(&client, &Endpoint::Guest),
                }
            }
            if on {
                self.applied_cuts.push(i);
            } else {
                self.applied_cuts.retain(|x| *x != i);
            }
        }
        changed
    }

    /// The checkpoint of some host just entered `point`: the seed's crash fires if it waits for
    /// that point and its earliest instant has passed.
    pub(super) fn crash_at_point(&mut self, now: Instant, point: CrashPoint) {
        if self.crash_done || self.failed_over || self.faults_stopped {
            return;
        }
        if let Some(c) = self.opts.crashes.first().copied()
            && c.point == point
            && c.not_before <= now
        {
            self.crash_done = true;
            let h = if c.host == Host::A { 0 } else { 1 };
            self.crash(now, h);
        }
    }

    pub(super) fn crash(&mut self, now: Instant, h: usize) {
        if !self.alive[h] {
            return;
        }
        self.alive[h] = false;
        self.vms[h].crash();
        self.trace.push(TraceEvent::Crash {
            at: now,
            host: host(h),
        });
        if self.world_host == h {
            self.world.guest_paused = true;
            self.world.guest_inbox.clear();
        }
    }
}
