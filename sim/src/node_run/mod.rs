//! `node_run`: the plain-loop executor of the Node engine — the same fabric as the madsim
//! executor ([`crate::fabric`]: two [`SimHost`]s, each its colo-core `Node`, VM, disk and own
//! guest; colo-core's `Arbiter`; the clients and upstream server; the two emulators; one crash
//! and restart module), stepped by an ordinary loop instead of madsim tasks. Time is the
//! earliest instant any actor is due; at that instant the controller, the hosts (A, B), the
//! arbiter and the LAN models (clients, upstream) are stepped in that order, then again those
//! whose bell rang, until none did. A crash drops the host's `SimHost` (everything it had in
//! memory), a restart boots a fresh one ([`Shared::boot_host`]).
//!
//! The two executors differ only in how time, tasks and kills are provided, so a seed's digest
//! differs between them (madsim's scheduler orders equal-instant steps its own way) but the
//! output is judged by the same checkers, canaries and exit classes.
//!
//! Invariant kept: a fixed step order at every instant, so a run is a pure function of
//! (options, seed).

use colo_core::failover::Arbiter;
use colo_core::time::{Duration, Instant};

use crate::client::{Client, UpstreamServer};
pub use crate::fabric::{NodeRunOutput, node_config};
use crate::fabric::{Shared, Waiter};
use crate::host::SimHost;
use crate::platform::Canary;
use crate::swarm::{CrashPoint, Host, HostCrash, SwarmOptions};
use crate::world::Endpoint;

/// How long a host killed by `crash_primary_at` stays down: past any run.
const FOREVER: Duration = Duration::from_secs(1_000_000);

/// One run under the plain loop (see the module documentation).
pub struct NodeRun {
    fabric: Shared,
    hosts: [Option<SimHost>; 2],
    arbiter: Arbiter,
    clients: Vec<Client>,
    upstream: Option<UpstreamServer>,
    /// When each actor is next due: controller, host A, host B, arbiter, then LAN models.
    due: Vec<Option<Instant>>,
}

impl std::fmt::Debug for NodeRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRun")
            .field("seed", &self.fabric.opts.seed)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

const CONTROLLER: usize = 0;
const ARBITER: usize = 3;
const LAN: usize = 4;

impl NodeRun {
    /// Builds the run; `crash_primary_at` adds a crash of host A at that instant which never
    /// restarts (it fires under the crash rules, like every crash of the seed); `canary` plants
    /// a known bug: in both Nodes ([`node_config`]) or, if the Node cannot plant it
    /// (`apply-partial-epoch`), in both VMs.
    pub fn new(
        opts: &SwarmOptions,
        crash_primary_at: Option<Instant>,
        canary: Option<Canary>,
    ) -> NodeRun {
        let mut opts = opts.clone();
        if let Some(at) = crash_primary_at {
            opts.crashes.push(HostCrash {
                host: Host::A,
                not_before: at,
                point: CrashPoint::At,
                down_for: FOREVER,
                power_loss: false,
            });
        }
        let mut fabric = Shared::new(&opts, canary);
        let now = Instant::ZERO;
        let clients: Vec<Client> = (0..opts.clients).map(|i| fabric.client(i, now)).collect();
        let upstream = fabric.upstream(now);
        let hosts = [
            Some(fabric.boot_host(0, now)),
            Some(fabric.boot_host(1, now)),
        ];
        let due = vec![Some(now); LAN + clients.len() + usize::from(upstream.is_some())];
        NodeRun {
            fabric,
            hosts,
            arbiter: Arbiter::new(Duration::from_secs(10), now),
            clients,
            upstream,
            due,
        }
    }

    /// The actor's bell: whether it has new work at the current instant (cleared).
    fn rung(&mut self, actor: usize) -> bool {
        let w = match actor {
            CONTROLLER => Waiter::Controller,
            1 | 2 => Waiter::Host(actor - 1),
            ARBITER => Waiter::Arbiter,
            i if i - LAN < self.clients.len() => Waiter::Lan(Endpoint::Client((i - LAN) as u32)),
            _ => Waiter::Lan(Endpoint::Upstream),
        };
        self.fabric.bells.take_rung(w)
    }

    /// Steps `actor` at `now`.
    fn step(&mut self, now: Instant, actor: usize) {
        let f = &mut self.fabric;
        self.due[actor] = match actor {
            CONTROLLER => {
                let (kills, restarts, next) = f.step_controller(now);
                for h in kills {
                    self.hosts[h] = None;
                    self.due[h + 1] = None;
                }
                for h in restarts {
                    self.hosts[h] = Some(f.boot_host(h, now));
                    self.due[h + 1] = Some(now);
                }
                next
            }
            1 | 2 => {
                let h = actor - 1;
                let Some(sim) = self.hosts[h].as_mut() else {
                    return;
                };
                match f.step_host(now, h, sim) {
                    Some(next) => next,
                    None => {
                        // Crashed: the controller drops it at this instant.
                        self.hosts[h] = None;
                        None
                    }
                }
            }
            ARBITER => f.step_arbiter(now, &mut self.arbiter),
            i if i - LAN < self.clients.len() => {
                let c = i - LAN;
                f.step_lan(now, &mut self.clients[c], Endpoint::Client(c as u32))
            }
            _ => match self.upstream.as_mut() {
                Some(u) => f.step_lan(now, u, Endpoint::Upstream),
                None => None,
            },
        };
    }

    /// Runs to the end of the liveness phase.
    pub fn run(mut self) -> NodeRunOutput {
        let until = self.fabric.opts.ends();
        let mut now = Instant::ZERO;
        loop {
            let actors = self.due.len();
            for a in 0..actors {
                if self.due[a].is_some_and(|t| t <= now) || self.rung(a) {
                    self.step(now, a);
                }
            }
            // Whatever rang at this instant steps again at it.
            let mut rounds = 0;
            loop {
                let rung: Vec<usize> = (0..actors).filter(|a| self.rung(*a)).collect();
                if rung.is_empty() {
                    break;
                }
                rounds += 1;
                assert!(rounds < 10_000, "node_run: actors keep ringing at {now:?}");
                for a in rung {
                    self.step(now, a);
                }
            }
            if now >= until {
                break;
            }
            let next = self
                .due
                .iter()
                .flatten()
                .copied()
                .chain(self.fabric.next_delivery())
                .filter(|t| *t > now)
                .min()
                .unwrap_or(until);
            now = next.min(until);
        }
        for (i, c) in self.clients.iter().enumerate() {
            self.fabric.histories[i] = Some(c.history().clone());
        }
        self.fabric.finish()
    }
}

#[cfg(test)]
mod tests;
