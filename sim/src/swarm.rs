//! Swarm options: every knob of one simulated run, all drawn from the run's seed.
//!
//! Swarm testing (Groce et al., "Swarm Testing", ISSTA 2012; FoundationDB's and TigerBeetle's
//! VOPR habit) means each seed picks its own *mix* of faults instead of every run having every
//! fault at a fixed low rate: a seed without loss but with long partitions explores states a
//! seed with everything enabled never reaches. Invariant kept: [`SwarmOptions::generate`] is a
//! pure function of the seed (it draws only from `SimRng::new(seed).fork("swarm")`, so the
//! world's own streams are untouched), and [`SwarmOptions`]'s `Display` prints every option,
//! one `name = value` line each, so a failing seed's report says exactly what ran.

use std::fmt;

use colo_core::checkpoint::VmCommandKind;
use colo_core::time::{Duration, Instant};

use crate::netem::LinkConfig;
use crate::rng::SimRng;

/// One of the two colo hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// The host that starts as primary.
    A,
    /// The host that starts as secondary.
    B,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Host::A => "host-a",
            Host::B => "host-b",
        })
    }
}

/// Which link a partition or clog cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cut {
    /// The replication link between the two hosts.
    HostHost,
    /// A host's link to the arbiter.
    HostArbiter(Host),
    /// The link between every client and a host.
    ClientsHost(Host),
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::HostHost => f.write_str("host-a<->host-b"),
            Cut::HostArbiter(h) => write!(f, "{h}<->arbiter"),
            Cut::ClientsHost(h) => write!(f, "clients<->{h}"),
        }
    }
}

/// How a link is cut during a fault window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CutMode {
    /// Both directions drop frames.
    Symmetric,
    /// Only the first-named side's frames toward the second are dropped.
    OneWay,
    /// Frames are held (not dropped) until the window ends (madsim's `clog_link`).
    Clog,
}

/// A window of simulated time during which a link is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFault {
    /// The link.
    pub cut: Cut,
    /// How.
    pub mode: CutMode,
    /// Start of the window.
    pub from: Instant,
    /// End of the window (healed or unclogged then).
    pub until: Instant,
}

/// The replication link's TCP connection breaks at `at` and the secondary's reconnection
/// succeeds `down_for` later: everything in flight is lost, both nodes see the link go down
/// and come back (`Input::PeerLink`), and nothing crosses meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkReset {
    /// When the connection breaks.
    pub at: Instant,
    /// How long until the new connection is up.
    pub down_for: Duration,
}

/// The VM platform of `host` fails the first command of kind `command` it is ordered at or
/// after `at` (`SimVm::fail_next`): the command completes `VmCompletion::Failed`, as the
/// runtime reports a `machine` error, and the node handles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmFailure {
    /// The host whose VM fails (whichever incarnation runs then).
    pub host: Host,
    /// From when the failure is armed.
    pub at: Instant,
    /// The command that fails.
    pub command: VmCommandKind,
}

/// The VM commands a [`VmFailure`] picks from: the four a checkpoint orders on either side
/// whatever the link does (`SendPages` and `SaveDeviceState` fail in the runtime when the
/// peer link is down, which the replication link's resets already drive).
pub const FAILING_VM_COMMANDS: [VmCommandKind; 4] = [
    VmCommandKind::Pause,
    VmCommandKind::Resume,
    VmCommandKind::CollectDirty,
    VmCommandKind::ApplyCheckpoint,
];

/// The supervisor's restart delays a seed draws [`SwarmOptions::restart_delay`] from: how long
/// after a node halted for good (it stopped because its own VM failed, or was deposed) its
/// process is started again, as systemd's
/// `RestartSec` (docs/operations.md uses 2 s for the secondary's unit) or an operator would.
pub const RESTART_DELAYS_MS: [u64; 4] = [100, 500, 1_000, 2_000];

/// Where a crash lands relative to the checkpoint protocol. `At` is a plain instant; the phase
/// variants make the platform crash the host when the checkpointer next *enters* that phase
/// (so crashes inside every checkpoint phase are reached on purpose, not by luck).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrashPoint {
    /// At a simulated instant.
    At,
    /// When the host's VM is told to pause for a checkpoint.
    OnPause,
    /// While pages are being transferred.
    OnTransfer,
    /// After the secondary received the epoch, before it applied it.
    OnReceived,
    /// While the secondary applies the checkpoint.
    OnApply,
    /// During failover (after a takeover started).
    OnFailover,
}

/// A host crash and its restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCrash {
    /// The host.
    pub host: Host,
    /// Earliest instant the crash may happen (exactly then for [`CrashPoint::At`]).
    pub not_before: Instant,
    /// Where it lands.
    pub point: CrashPoint,
    /// How long the host stays down before it restarts (and is re-protected).
    pub down_for: Duration,
    /// A power loss rather than a process crash: the host's end of the replication connection
    /// vanishes without a FIN, so its peer's end stays up and silent until the peer closes
    /// it (`fabric/link.rs`).
    pub power_loss: bool,
}

/// Every option of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmOptions {
    /// The seed everything here was drawn from.
    pub seed: u64,
    /// Number of clients.
    pub clients: u32,
    /// Connections per client.
    pub connections: u32,
    /// Requests per connection.
    pub requests_per_connection: u64,
    /// Whether the guest also opens a connection of its own (to the upstream server).
    pub upstream: bool,
    /// Impairments of every link (loss, duplication, reordering, jitter).
    pub link: LinkConfig,
    /// Partitions and clogs.
    pub link_faults: Vec<LinkFault>,
    /// Resets of the replication link's connection (drawn last, so the other options of a
    /// seed are those it had before resets existed).
    pub link_resets: Vec<LinkReset>,
    /// Host crashes.
    pub crashes: Vec<HostCrash>,
    /// VM commands that fail (drawn after the link resets, so a seed's other options are those
    /// it had before VM failures existed).
    pub vm_failures: Vec<VmFailure>,
    /// How long after a node halted for good (it stopped, leaving the pair because its own VM
    /// failed: a failed `Resume` or `ApplyCheckpoint`, or a VM step stuck; or it was deposed:
    /// the peer holds a newer term) the supervisor starts the host's
    /// process again, as a fresh secondary that joins as a newcomer (drawn last, from
    /// [`RESTART_DELAYS_MS`], so a seed's other options are those it had before).
    pub restart_delay: Duration,
    /// Probability (ppm) that a disk write fails.
    pub disk_write_error_ppm: u32,
    /// Periodic checkpoint interval.
    pub checkpoint_interval: Duration,
    /// How long the comparator holds an unmatched primary frame before forcing a checkpoint.
    pub compare_timeout: Duration,
    /// Pause latency of a simulated VM (vCPU stop and I/O drain).
    pub vm_pause_latency: Duration,
    /// Resume latency of a simulated VM.
    pub vm_resume_latency: Duration,
    /// Replication link bandwidth, bytes per simulated second (prices page transfer).
    pub replication_bytes_per_sec: u64,
    /// Length of the safety phase (faults active).
    pub safety: Duration,
    /// Length of the liveness phase (faults stopped, everything healed).
    pub liveness: Duration,
}

/// The safety phase's share (numerator, denominator) of a fixed-length scenario
/// ([`SwarmOptions::with_duration`]); the liveness phase gets the rest.
pub const FIXED_SAFETY_SHARE: (u32, u32) = (2, 5);

/// Picks one of `choices` uniformly.
fn pick<T: Copy>(rng: &mut SimRng, choices: &[T]) -> T {
    choices[rng.below(choices.len() as u64) as usize]
}

/// A rate that is off for half the seeds and otherwise one of a few orders of magnitude: swarm
/// testing wants "feature off" to be common.
fn swarm_ppm(rng: &mut SimRng, rates: &[u32]) -> u32 {
    if rng.chance_ppm(500_000) {
        0
    } else {
        pick(rng, rates)
    }
}

fn instant_within(rng: &mut SimRng, from: Duration, to: Duration) -> Instant {
    let span = to.saturating_sub(from);
    Instant::ZERO + from + rng.duration_upto(span)
}

impl SwarmOptions {
    /// Every option of the run of `seed`.
    pub fn generate(seed: u64) -> SwarmOptions {
        let mut rng = SimRng::new(seed).fork("swarm");
        let safety = Duration::from_secs(rng.range_inclusive(4, 10));
        // Long enough for a TCP retransmission timer that backed off during the faults to fire
        // again (RFC 6298 section 5.5 doubles it per timeout; smoltcp caps it at 60 s).
        let liveness = Duration::from_secs(15);

        let link = LinkConfig {
            delay: Duration::from_micros(rng.range_inclusive(50, 500)),
            jitter: if rng.chance_ppm(500_000) {
                Duration::ZERO
            } else {
                Duration::from_micros(rng.range_inclusive(10, 400))
            },
            loss_ppm: swarm_ppm(&mut rng, &[1_000, 10_000, 50_000]),
            duplicate_ppm: swarm_ppm(&mut rng, &[1_000, 10_000, 30_000]),
            reorder_ppm: swarm_ppm(&mut rng, &[1_000, 10_000, 50_000]),
            reorder_delay: Duration::from_micros(rng.range_inclusive(100, 2_000)),
        };

        let cuts = [
            Cut::HostHost,
            Cut::HostArbiter(Host::A),
            Cut::HostArbiter(Host::B),
            Cut::ClientsHost(Host::A),
            Cut::ClientsHost(Host::B),
        ];
        let modes = [CutMode::Symmetric, CutMode::OneWay, CutMode::Clog];
        let n_faults = if rng.chance_ppm(400_000) {
            0
        } else {
            rng.range_inclusive(1, 4)
        };
        let mut link_faults: Vec<LinkFault> = (0..n_faults)
            .map(|_| {
                let from = instant_within(&mut rng, Duration::from_millis(200), safety);
                let len = Duration::from_millis(rng.range_inclusive(50, 3_000));
                LinkFault {
                    cut: pick(&mut rng, &cuts),
                    mode: pick(&mut rng, &modes),
                    from,
                    until: from + len,
                }
            })
            .collect();
        link_faults.sort_by_key(|f| (f.from, f.cut, f.mode));

        let points = [
            CrashPoint::At,
            CrashPoint::OnPause,
            CrashPoint::OnTransfer,
            CrashPoint::OnReceived,
            CrashPoint::OnApply,
            CrashPoint::OnFailover,
        ];
        let n_crashes = if rng.chance_ppm(500_000) {
            0
        } else {
            rng.range_inclusive(1, 2)
        };
        // Drawn from a fork of their own, so that the draws before this field was added keep
        // their values.
        let mut losses = SimRng::new(seed).fork("power-losses");
        let mut crashes: Vec<HostCrash> = (0..n_crashes)
            .map(|_| HostCrash {
                host: pick(&mut rng, &[Host::A, Host::B]),
                not_before: instant_within(&mut rng, Duration::from_millis(300), safety),
                point: pick(&mut rng, &points),
                down_for: Duration::from_millis(rng.range_inclusive(100, 2_000)),
                power_loss: losses.chance_ppm(500_000),
            })
            .collect();
        crashes.sort_by_key(|c| (c.not_before, c.host, c.point));

        let mut options = SwarmOptions {
            seed,
            clients: rng.range_inclusive(1, 4) as u32,
            connections: rng.range_inclusive(1, 3) as u32,
            requests_per_connection: rng.range_inclusive(5, 40),
            upstream: rng.chance_ppm(500_000),
            link,
            link_faults,
            crashes,
            disk_write_error_ppm: swarm_ppm(&mut rng, &[100, 1_000, 20_000]),
            checkpoint_interval: Duration::from_millis(pick(
                &mut rng,
                &[100, 250, 500, 1_000, 3_000],
            )),
            compare_timeout: Duration::from_millis(pick(&mut rng, &[5, 20, 100, 500])),
            vm_pause_latency: Duration::from_micros(rng.range_inclusive(100, 5_000)),
            vm_resume_latency: Duration::from_micros(rng.range_inclusive(50, 1_000)),
            replication_bytes_per_sec: pick(&mut rng, &[125_000_000, 1_250_000_000]),
            safety,
            liveness,
            link_resets: Vec::new(),
            vm_failures: Vec::new(),
            restart_delay: Duration::ZERO,
        };
        // Mostly blips shorter than the heartbeat's detection (500 ms), which the pair must
        // carry on through; the 800 ms one outlives it, so a takeover races the reconnection.
        let n_resets = if rng.chance_ppm(500_000) {
            0
        } else {
            rng.range_inclusive(1, 3)
        };
        options.link_resets = (0..n_resets)
            .map(|_| LinkReset {
                at: instant_within(&mut rng, Duration::from_millis(200), safety),
                down_for: Duration::from_millis(pick(&mut rng, &[1, 20, 100, 300, 800])),
            })
            .collect();
        options.link_resets.sort_by_key(|r| (r.at, r.down_for));
        let n_vm_failures = if rng.chance_ppm(500_000) {
            0
        } else {
            rng.range_inclusive(1, 3)
        };
        options.vm_failures = (0..n_vm_failures)
            .map(|_| VmFailure {
                host: pick(&mut rng, &[Host::A, Host::B]),
                at: instant_within(&mut rng, Duration::from_millis(200), safety),
                command: pick(&mut rng, &FAILING_VM_COMMANDS),
            })
            .collect();
        options
            .vm_failures
            .sort_by_key(|v| (v.at, v.host, v.command));
        options.restart_delay = Duration::from_millis(pick(&mut rng, &RESTART_DELAYS_MS));
        options
    }

    /// The same seed's fault mix as a run of `total` simulated seconds (`colo-sim --duration`):
    /// the safety phase becomes [`FIXED_SAFETY_SHARE`] of `total` and the liveness phase the
    /// rest, and every fault instant (link fault windows, crash instants) is scaled by the
    /// ratio of the new safety phase to the seed's own, so each fault lands at the same
    /// relative point of the safety phase and the windows keep their proportions. Everything
    /// else (workload, link impairments, checkpoint interval, latencies, crash downtimes) is
    /// the seed's. Issue 4's throughput figure is measured at `total` = 10 s: 4 s of faults,
    /// 6 s of liveness (see docs/simulation.md for why 6 s covers the liveness bound).
    pub fn with_duration(mut self, total: Duration) -> SwarmOptions {
        let safety = Duration::from_nanos(
            (total.as_nanos() * u128::from(FIXED_SAFETY_SHARE.0) / u128::from(FIXED_SAFETY_SHARE.1))
                as u64,
        );
        let (old, new) = (self.safety.as_nanos(), safety.as_nanos());
        // Scaled by new / old (old >= 4 s, never zero); instants stay inside the safety phase
        // because the seed's were inside its own.
        let scale =
            |i: Instant| Instant::from_nanos((u128::from(i.as_nanos()) * new / old.max(1)) as u64);
        for lf in &mut self.link_faults {
            lf.from = scale(lf.from);
            lf.until = scale(lf.until).max(lf.from + Duration::from_nanos(1));
        }
        for c in &mut self.crashes {
            c.not_before = scale(c.not_before);
        }
        for r in &mut self.link_resets {
            r.at = scale(r.at);
        }
        for v in &mut self.vm_failures {
            v.at = scale(v.at);
        }
        self.safety = safety;
        self.liveness = total.saturating_sub(safety);
        self
    }

    /// When faults stop and the liveness phase begins.
    pub fn liveness_starts(&self) -> Instant {
        Instant::ZERO + self.safety
    }

    /// End of the run.
    pub fn ends(&self) -> Instant {
        Instant::ZERO + self.safety + self.liveness
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

fn at(i: Instant) -> String {
    ms(i.saturating_duration_since(Instant::ZERO))
}

impl fmt::Display for SwarmOptions {
    /// One `name = value` line per option, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed = {}", self.seed)?;
        writeln!(f, "clients = {}", self.clients)?;
        writeln!(f, "connections = {}", self.connections)?;
        writeln!(
            f,
            "requests_per_connection = {}",
            self.requests_per_connection
        )?;
        writeln!(f, "upstream = {}", self.upstream)?;
        writeln!(f, "link.delay = {}", ms(self.link.delay))?;
        writeln!(f, "link.jitter = {}", ms(self.link.jitter))?;
        writeln!(f, "link.loss_ppm = {}", self.link.loss_ppm)?;
        writeln!(f, "link.duplicate_ppm = {}", self.link.duplicate_ppm)?;
        writeln!(f, "link.reorder_ppm = {}", self.link.reorder_ppm)?;
        writeln!(f, "link.reorder_delay = {}", ms(self.link.reorder_delay))?;
        if self.link_faults.is_empty() {
            writeln!(f, "link_fault = none")?;
        }
        for lf in &self.link_faults {
            writeln!(
                f,
                "link_fault = {:?} {} from {} until {}",
                lf.mode,
                lf.cut,
                at(lf.from),
                at(lf.until)
            )?;
        }
        if self.link_resets.is_empty() {
            writeln!(f, "link_reset = none")?;
        }
        for r in &self.link_resets {
            writeln!(
                f,
                "link_reset = host-a<->host-b at {} down for {}",
                at(r.at),
                ms(r.down_for)
            )?;
        }
        if self.crashes.is_empty() {
            writeln!(f, "crash = none")?;
        }
        for c in &self.crashes {
            writeln!(
                f,
                "crash = {} {:?} not before {} down for {}{}",
                c.host,
                c.point,
                at(c.not_before),
                ms(c.down_for),
                if c.power_loss { " (power loss)" } else { "" }
            )?;
        }
        if self.vm_failures.is_empty() {
            writeln!(f, "vm_failure = none")?;
        }
        for v in &self.vm_failures {
            writeln!(
                f,
                "vm_failure = {} {:?} from {}",
                v.host,
                v.command,
                at(v.at)
            )?;
        }
        writeln!(
            f,
            "vm_failure_rule = a failure that takes its node out of the pair (Resume; \
             ApplyCheckpoint) fires only while that node is paired with a peer holding the \
             guest's state, else it waits for the host's next such command"
        )?;
        writeln!(
            f,
            "restart_delay = {} (the supervisor starts a node that stopped or was \
             deposed again, as a newcomer)",
            ms(self.restart_delay)
        )?;
        writeln!(
            f,
            "replication_link = one TCP connection: in order, no loss or duplication; a \
             host-a<->host-b cut holds its messages (delay only) and one longer than the \
             runtime's peer write timeout resets the connection (in flight lost, both nodes \
             see it down); it comes back when the secondary redials (within its reconnect \
             window, while it depends on its primary) or a restarted host dials; a crashed \
             host's connection closes after what it sent"
        )?;
        writeln!(
            f,
            "crash_rule = every crash, each restarted after its downtime and re-protected; a \
             crash that would leave no host with the guest's state (or hits a host taking \
             over) waits, and is dropped at the liveness phase"
        )?;
        writeln!(f, "disk_write_error_ppm = {}", self.disk_write_error_ppm)?;
        writeln!(f, "checkpoint_interval = {}", ms(self.checkpoint_interval))?;
        writeln!(f, "compare_timeout = {}", ms(self.compare_timeout))?;
        writeln!(f, "vm_pause_latency = {}", ms(self.vm_pause_latency))?;
        writeln!(f, "vm_resume_latency = {}", ms(self.vm_resume_latency))?;
        writeln!(
            f,
            "replication_bytes_per_sec = {}",
            self.replication_bytes_per_sec
        )?;
        writeln!(f, "safety = {}", ms(self.safety))?;
        write!(f, "liveness = {}", ms(self.liveness))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_expands_to_the_same_options() {
        for seed in 0..50 {
            assert_eq!(SwarmOptions::generate(seed), SwarmOptions::generate(seed));
        }
    }

    #[test]
    fn seeds_pick_different_fault_mixes() {
        let runs: Vec<SwarmOptions> = (0..200).map(SwarmOptions::generate).collect();
        // Swarm testing: each fault is off in some seeds and on in others.
        let some = |p: &dyn Fn(&SwarmOptions) -> bool| {
            let n = runs.iter().filter(|o| p(o)).count();
            n > 20 && n < 180
        };
        assert!(some(&|o| o.link.loss_ppm > 0));
        assert!(some(&|o| o.link.duplicate_ppm > 0));
        assert!(some(&|o| o.link.reorder_ppm > 0));
        assert!(some(&|o| !o.crashes.is_empty()));
        assert!(some(&|o| !o.link_faults.is_empty()));
        assert!(some(&|o| o.disk_write_error_ppm > 0));
        assert!(some(&|o| !o.vm_failures.is_empty()));
        for command in FAILING_VM_COMMANDS {
            assert!(
                runs.iter()
                    .any(|o| o.vm_failures.iter().any(|v| v.command == command))
            );
        }
        for delay in RESTART_DELAYS_MS {
            assert!(
                runs.iter()
                    .any(|o| o.restart_delay == Duration::from_millis(delay))
            );
        }
        // Every cut, mode and crash point is reached by some seed.
        for cut in [
            Cut::HostHost,
            Cut::HostArbiter(Host::A),
            Cut::HostArbiter(Host::B),
            Cut::ClientsHost(Host::A),
            Cut::ClientsHost(Host::B),
        ] {
            assert!(
                runs.iter()
                    .any(|o| o.link_faults.iter().any(|f| f.cut == cut))
            );
        }
        for mode in [CutMode::Symmetric, CutMode::OneWay, CutMode::Clog] {
            assert!(
                runs.iter()
                    .any(|o| o.link_faults.iter().any(|f| f.mode == mode))
            );
        }
        for point in [
            CrashPoint::At,
            CrashPoint::OnPause,
            CrashPoint::OnTransfer,
            CrashPoint::OnReceived,
            CrashPoint::OnApply,
            CrashPoint::OnFailover,
        ] {
            assert!(
                runs.iter()
                    .any(|o| o.crashes.iter().any(|c| c.point == point))
            );
        }
    }

    #[test]
    fn faults_fall_inside_the_safety_phase() {
        for seed in 0..200 {
            let o = SwarmOptions::generate(seed);
            for lf in &o.link_faults {
                assert!(lf.from < lf.until);
                assert!(lf.from <= o.liveness_starts(), "seed {seed}: {lf:?}");
            }
            for c in &o.crashes {
                assert!(c.not_before <= o.liveness_starts(), "seed {seed}: {c:?}");
            }
            for v in &o.vm_failures {
                assert!(v.at <= o.liveness_starts(), "seed {seed}: {v:?}");
            }
            assert!(o.clients >= 1 && o.connections >= 1);
        }
    }

    #[test]
    fn a_fixed_duration_keeps_the_fault_mix_inside_its_safety_phase() {
        let total = Duration::from_secs(10);
        for seed in 0..200 {
            let o = SwarmOptions::generate(seed);
            let f = o.clone().with_duration(total);
            assert_eq!(f.ends(), Instant::ZERO + total, "seed {seed}");
            assert_eq!(f.safety, Duration::from_secs(4));
            assert_eq!(f.liveness, Duration::from_secs(6));
            // Same mix: same number, links and modes of faults, same crash hosts and points.
            assert_eq!(f.link_faults.len(), o.link_faults.len());
            for (a, b) in f.link_faults.iter().zip(&o.link_faults) {
                assert_eq!((a.cut, a.mode), (b.cut, b.mode));
                assert!(a.from < a.until && a.from <= f.liveness_starts());
                // The relative position in the safety phase is kept.
                let rel = |i: Instant, s: Duration| i.as_nanos() as f64 / s.as_nanos() as f64;
                assert!((rel(a.from, f.safety) - rel(b.from, o.safety)).abs() < 1e-6);
            }
            assert_eq!(f.crashes.len(), o.crashes.len());
            for (a, b) in f.crashes.iter().zip(&o.crashes) {
                assert_eq!((a.host, a.point, a.down_for), (b.host, b.point, b.down_for));
                assert!(a.not_before <= f.liveness_starts(), "seed {seed}: {a:?}");
            }
            // Everything that is not a phase length or a fault instant is the seed's.
            let strip = |mut x: SwarmOptions| {
                x.link_faults.clear();
                x.crashes.clear();
                x.link_resets.clear();
                x.vm_failures.clear();
                x.safety = Duration::ZERO;
                x.liveness = Duration::ZERO;
                x
            };
            assert_eq!(strip(f), strip(o));
        }
    }

    #[test]
    fn display_prints_one_line_per_option() {
        let o = SwarmOptions::generate(7);
        let text = o.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.contains(" = ")), "{text}");
        // 20 drawn options, the printed VM failure, link and crash rules, and one line per link
        // fault, link reset, crash and VM failure.
        let expected = 23
            + o.link_faults.len().max(1)
            + o.link_resets.len().max(1)
            + o.crashes.len().max(1)
            + o.vm_failures.len().max(1);
        assert_eq!(lines.len(), expected, "{text}");
        assert_eq!(lines[0], "seed = 7");
        assert!(text.contains("checkpoint_interval = "));
        assert!(text.contains("crash_rule = "));
    }
}
