//! The seed's faults applied to a [`ColoRun`]: crashes (at an instant or when the checkpoint
//! enters a phase), client-link cuts of the host serving the clients, and the start of the
//! liveness phase (everything healed, impairments off). Invariant kept: faults act only during
//! the safety phase, and at most one crash is applied, before any failover (re-protection is
//! the Node's), so every run can end with a host serving the clients.

use colo_core::time::Instant;

use super::{ColoRun, HostPhase};
use crate::swarm::{CrashPoint, Cut, CutMode, Host};
use crate::trace::TraceEvent;
use crate::world::Endpoint;

impl ColoRun {
    pub(super) fn crash_at_point(&mut self, now: Instant, point: CrashPoint) {
        for i in 0..self.crashes.len() {
            let (c, done) = self.crashes[i];
            if !done && c.point == point && c.not_before <= now {
                self.crashes[i].1 = true;
                self.crash(now, c.host);
            }
        }
    }

    fn crash(&mut self, now: Instant, host: Host) {
        // Without re-protection (the Node's), only the first loss of a host is survivable: a
        // run applies at most one crash, before any failover.
        if self.stats.crashes > 0 || self.stats.failovers > 0 {
            return;
        }
        self.stats.crashes += 1;
        let side = self.side(host);
        side.phase = HostPhase::Down;
        side.vm.crash();
        side.held.clear();
        self.trace.push(TraceEvent::Crash { at: now, host });
        if self.active == host {
            self.world.guest_paused = true;
            self.world.guest_inbox.clear();
            self.world.guest_out.clear();
        }
    }

    pub(super) fn apply_faults(&mut self, now: Instant) {
        if !self.faults_stopped && now >= self.opts.liveness_starts() {
            self.faults_stopped = true;
            self.world.net.heal_all();
            // Loss, duplication, reordering and jitter stop too: only the fixed latency stays.
            let delay = self.opts.link.delay;
            self.world
                .net
                .set_default_link(crate::netem::LinkConfig::with_delay(delay));
            for i in std::mem::take(&mut self.applied_cuts) {
                let lf = self.opts.link_faults[i];
                if lf.mode == CutMode::Clog {
                    self.unclog_clients(now);
                }
            }
            self.trace.push(TraceEvent::FaultsStopped { at: now });
        }
        if self.faults_stopped {
            return;
        }
        for i in 0..self.crashes.len() {
            let (c, done) = self.crashes[i];
            if !done && c.point == CrashPoint::At && c.not_before <= now {
                self.crashes[i].1 = true;
                self.crash(now, c.host);
            }
            if done
                && c.not_before + c.down_for <= now
                && self.side(c.host).phase == HostPhase::Down
            {
                // Restarted, but stays out of the pairing until re-protection (the Node's).
                self.trace.push(TraceEvent::Restart {
                    at: now,
                    host: c.host,
                });
                self.side(c.host).phase = HostPhase::Fenced;
            }
        }
        // Client-link cuts apply to the host currently serving the clients.
        for (i, lf) in self.opts.link_faults.clone().iter().enumerate() {
            let Cut::ClientsHost(h) = lf.cut else {
                continue;
            };
            let on = lf.from <= now && now < lf.until && h == self.active;
            let applied = self.applied_cuts.contains(&i);
            if on && !applied {
                self.applied_cuts.push(i);
                for c in 0..self.opts.clients {
                    let client = Endpoint::Client(c);
                    match lf.mode {
                        CutMode::Symmetric => self.world.net.partition(client, Endpoint::Guest),
                        CutMode::OneWay => {
                            self.world.net.partition_one_way(client, Endpoint::Guest)
                        }
                        CutMode::Clog => self.world.net.clog(client, Endpoint::Guest),
                    }
                }
            } else if !on && applied {
                self.applied_cuts.retain(|x| *x != i);
                for c in 0..self.opts.clients {
                    let client = Endpoint::Client(c);
                    match lf.mode {
                        CutMode::Clog => self.world.net.unclog(now, &client, &Endpoint::Guest),
                        _ => self.world.net.heal(&client, &Endpoint::Guest),
                    }
                }
            }
        }
    }

    fn unclog_clients(&mut self, now: Instant) {
        for c in 0..self.opts.clients {
            self.world
                .net
                .unclog(now, &Endpoint::Client(c), &Endpoint::Guest);
        }
    }
}
