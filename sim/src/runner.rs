//! The `colo-sim` runner's logic: run a seed (safety phase, then liveness phase), judge it with
//! every checker, classify the outcome, and say how to replay it.
//!
//! Invariant kept: the verdict of a seed is a pure function of (seed, canary, commit); the
//! binary (`src/bin/colo-sim.rs`) only parses arguments and prints. Exit codes
//! ([`Verdict::exit_code`]) are documented in docs/simulation.md.

use std::panic::{AssertUnwindSafe, catch_unwind};

use colo_core::time::{Duration, Instant};

use crate::check::{self, liveness::LivenessBounds};
use crate::client::History;
use crate::platform::Canary;
use crate::swarm::{CrashPoint, Cut, CutMode, Host, HostCrash, LinkFault, SwarmOptions};
use crate::trace::{Trace, TraceEvent, Violation};

/// How long after the faults stop every unfinished client must complete a request (and a
/// still-paired cluster must complete a checkpoint, on top of its interval). A TCP
/// retransmission timer (the client's or the guest's) may have backed off for seconds during
/// the faults (RFC 6298 section 5.5 doubles it per timeout; smoltcp caps it at 60 s), so the
/// first retransmission after the heal can come that late: 14 s covers four doublings of a
/// 1 s timer. colo-sim seed 107 needed more than 5 s.
pub const PROGRESS_BOUND: Duration = Duration::from_secs(14);

/// The outcome class of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every checker passed (or, with a canary, its checker caught it).
    Pass,
    /// A safety checker failed.
    Correctness(Vec<Violation>),
    /// Only the liveness checker failed.
    Liveness(Vec<Violation>),
    /// The run panicked.
    Panic(String),
    /// Two runs of the seed differed.
    Nondeterministic {
        /// Digest of the first run.
        first: u64,
        /// Digest of the second.
        second: u64,
    },
    /// A planted canary was not caught by its checker.
    CanaryMissed(Vec<Violation>),
}

impl Verdict {
    /// The process exit code of this class.
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Pass => 0,
            Verdict::Correctness(_) => 1,
            Verdict::Liveness(_) => 2,
            Verdict::Panic(_) => 3,
            Verdict::Nondeterministic { .. } => 4,
            Verdict::CanaryMissed(_) => 5,
        }
    }

    /// A short name of the class.
    pub fn class(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Correctness(_) => "correctness",
            Verdict::Liveness(_) => "liveness",
            Verdict::Panic(_) => "panic",
            Verdict::Nondeterministic { .. } => "nondeterminism",
            Verdict::CanaryMissed(_) => "canary-missed",
        }
    }
}

/// When the seed of a canary that needs a failover crashes the primary: early, while the
/// clients still have work (colo-sim seed 26, 100 requests a connection, finished in 0.3 s).
const FAILOVER_CANARY_CRASH: Duration = Duration::from_millis(100);

/// The least work per connection the seed of a canary that needs a failover gets, so the
/// clients still talk to the survivor after the takeover.
const FAILOVER_CANARY_REQUESTS: u64 = 300;

/// How long host B's arbiter link is cut from the crash in the seed of `release-without-lease`.
/// The survivor goes solo about 1 s after the crash (heartbeat loss), and the client, whose
/// segments the crash lost, retransmits after 1 s, then 2 s more (RFC 6298 section 5.5): a gap
/// of 4 s holds the retransmission at ~3.1 s too (colo-sim seed 8 under madsim: with a 2 s
/// cut the lease came at 2.1 s and no client frame fell into the gap).
const FAILOVER_CANARY_LEASE_GAP: Duration = Duration::from_secs(4);

/// The options of `seed` as run with `canary`. A canary that only shows after a failover
/// (`release-without-lease`, [`Canary::needs_failover`]) gets a primary crash at
/// [`FAILOVER_CANARY_CRASH`] instead of the seed's crashes, at least
/// [`FAILOVER_CANARY_REQUESTS`] requests per connection, and host B's arbiter link cut for
/// [`FAILOVER_CANARY_LEASE_GAP`] from the crash, so the survivor runs a while without a lease (a lease answered within milliseconds would leave the
/// planted bug a window too short for any frame to fall into).
pub fn options_for(seed: u64, canary: Option<Canary>) -> SwarmOptions {
    let mut o = SwarmOptions::generate(seed);
    let Some(c) = canary.filter(|c| c.needs_failover()) else {
        return o;
    };
    let at = Instant::ZERO + FAILOVER_CANARY_CRASH;
    o.crashes = vec![HostCrash {
        host: Host::A,
        not_before: at,
        point: CrashPoint::At,
        down_for: Duration::from_millis(500),
        power_loss: false,
    }];
    o.requests_per_connection = o.requests_per_connection.max(FAILOVER_CANARY_REQUESTS);
    if c == Canary::ReleaseWithoutLease {
        o.link_faults.push(LinkFault {
            cut: Cut::HostArbiter(Host::B),
            mode: CutMode::Symmetric,
            from: at,
            until: at + FAILOVER_CANARY_LEASE_GAP,
        });
        o.link_faults.sort_by_key(|f| (f.from, f.cut, f.mode));
    }
    o
}

/// [`options_for`] scaled to a run of `duration` simulated seconds in total when one is given
/// (`colo-sim --duration`, [`SwarmOptions::with_duration`]): the seed's fault mix in a fixed
/// 2:3 split of safety and liveness phases.
pub fn scenario_options(
    seed: u64,
    canary: Option<Canary>,
    duration: Option<Duration>,
) -> SwarmOptions {
    let o = options_for(seed, canary);
    match duration {
        Some(d) => o.with_duration(d),
        None => o,
    }
}

/// Everything one seed produced.
#[derive(Debug)]
pub struct SeedReport {
    /// The options run.
    pub options: SwarmOptions,
    /// The run (absent if it panicked).
    pub output: Option<RunOutput>,
    /// Every violation found (safety and liveness).
    pub violations: Vec<Violation>,
    /// The verdict.
    pub verdict: Verdict,
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Checkpoints the primary completed.
    pub checkpoints: u64,
    /// Frames released to clients.
    pub released: u64,
    /// Takeovers completed (a host went solo).
    pub failovers: u64,
    /// Crashes applied.
    pub crashes: u64,
}

/// The end state of a run, as judged.
#[derive(Debug)]
pub struct RunOutput {
    /// Every event.
    pub trace: Trace,
    /// Each client's history, by index.
    pub histories: Vec<History>,
    /// Counters.
    pub stats: RunStats,
    /// Digest of the trace and the histories (determinism check).
    pub digest: u64,
}

/// Runs `seed` under the Node engine (two colo-core `Node`s on the fabric, [`crate::fabric`])
/// once (twice with `check_determinism`) and judges it, with `canary` planted in the Node
/// ([`Canary::node_canary`]) or, for `apply-partial-epoch`, in the VM. Built with `--cfg
/// madsim`, the executor is the madsim cluster ([`crate::cluster_run`]); otherwise the plain
/// loop ([`crate::node_run`]).
pub fn run_seed(seed: u64, canary: Option<Canary>, check_determinism: bool) -> SeedReport {
    run_options(options_for(seed, canary), canary, check_determinism)
}

/// [`run_seed`] with the options given (e.g. [`scenario_options`]).
pub fn run_options(
    options: SwarmOptions,
    canary: Option<Canary>,
    check_determinism: bool,
) -> SeedReport {
    let guarded = |o: &SwarmOptions| {
        catch_unwind(AssertUnwindSafe(|| {
            // Under `--cfg madsim` the Node engine is the madsim cluster (hosts, arbiter and
            // clients as madsim nodes, crashes as node kills); otherwise the plain event loop.
            #[cfg(madsim)]
            let out = crate::cluster_run::run(o, canary);
            #[cfg(not(madsim))]
            let out = crate::node_run::NodeRun::new(o, None, canary).run();
            out
        }))
        .map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned())
        })
    };
    let out = match guarded(&options) {
        Ok(o) => o,
        Err(msg) => {
            return SeedReport {
                options,
                output: None,
                violations: Vec::new(),
                verdict: Verdict::Panic(msg),
            };
        }
    };
    let failovers = out
        .trace
        .events
        .iter()
        .filter(|e| matches!(e, TraceEvent::TermStarted { solo: true, .. }))
        .count() as u64;
    let crashes = out
        .trace
        .events
        .iter()
        .filter(|e| matches!(e, TraceEvent::Crash { .. }))
        .count() as u64;
    let output = RunOutput {
        trace: out.trace,
        histories: out.histories,
        stats: RunStats {
            checkpoints: out.checkpoints,
            released: out.released,
            failovers,
            crashes,
        },
        digest: out.digest,
    };
    let mut report = judge(options, output, canary);
    if check_determinism && report.verdict == Verdict::Pass {
        match guarded(&report.options) {
            Ok(again) => {
                let first = report.output.as_ref().map_or(0, |o| o.digest);
                if again.digest != first {
                    report.verdict = Verdict::Nondeterministic {
                        first,
                        second: again.digest,
                    };
                }
            }
            Err(msg) => report.verdict = Verdict::Panic(msg),
        }
    }
    report
}

/// Runs every checker over a finished run and classifies it.
fn judge(options: SwarmOptions, output: RunOutput, canary: Option<Canary>) -> SeedReport {
    let histories: Vec<&History> = output.histories.iter().collect();
    let safety = check::check_safety(&output.trace, &histories, Some(options.liveness_starts()));
    let paired_at_end = output.stats.failovers == 0;
    let bounds = LivenessBounds {
        checkpoint_within: paired_at_end.then_some(options.checkpoint_interval + PROGRESS_BOUND),
        progress_within: PROGRESS_BOUND.min(options.liveness),
        require_finish: false,
    };
    let live = check::liveness::check(&output.trace, &histories, bounds);
    let mut violations = safety.clone();
    violations.extend(live.iter().cloned());
    let verdict = if let Some(c) = canary {
        if violations.iter().any(|v| v.checker == c.caught_by()) {
            Verdict::Pass
        } else {
            Verdict::CanaryMissed(violations.clone())
        }
    } else if !safety.is_empty() {
        Verdict::Correctness(safety)
    } else if !live.is_empty() {
        Verdict::Liveness(live)
    } else {
        Verdict::Pass
    };
    SeedReport {
        options,
        output: Some(output),
        violations,
        verdict,
    }
}

/// The command that replays `seed` (with `canary`).
pub fn replay_command(seed: u64, canary: Option<Canary>) -> String {
    replay_command_for(seed, canary, None)
}

/// [`replay_command`] of a seed run with `--duration` (whole milliseconds, as parsed).
pub fn replay_command_for(seed: u64, canary: Option<Canary>, duration: Option<Duration>) -> String {
    // A madsim build replays with the madsim target dir and cfg (the same engine).
    let mut cmd = if cfg!(madsim) {
        format!(
            "CARGO_TARGET_DIR=target/sim RUSTFLAGS=\"--cfg madsim\" \
             cargo run -p colo-sim --bin colo-sim -- --seed {seed}"
        )
    } else {
        format!("cargo run -p colo-sim --bin colo-sim -- --seed {seed}")
    };
    if let Some(d) = duration {
        cmd.push_str(&format!(" --duration {}ms", d.as_millis()));
    }
    if let Some(c) = canary {
        cmd.push_str(" --canary ");
        cmd.push_str(c.name());
    }
    cmd.push_str(" --trace");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_class() {
        let codes = [
            Verdict::Pass.exit_code(),
            Verdict::Correctness(Vec::new()).exit_code(),
            Verdict::Liveness(Vec::new()).exit_code(),
            Verdict::Panic(String::new()).exit_code(),
            Verdict::Nondeterministic {
                first: 0,
                second: 1,
            }
            .exit_code(),
            Verdict::CanaryMissed(Vec::new()).exit_code(),
        ];
        let mut sorted = codes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
    }

    #[test]
    fn replay_command_names_the_seed_and_canary() {
        let c = replay_command(42, Some(Canary::ApplyPartialEpoch));
        assert!(c.contains("--seed 42") && c.contains("--canary apply-partial-epoch"));
    }

    #[test]
    fn replay_command_keeps_the_duration() {
        let c = replay_command_for(9, None, Some(Duration::from_secs(10)));
        assert!(c.contains("--seed 9 --duration 10000ms"), "{c}");
        assert!(!replay_command(9, None).contains("--duration"));
    }

    #[test]
    fn a_scenario_duration_scales_the_lease_canary_crash_too() {
        let o = scenario_options(
            5,
            Some(Canary::ReleaseWithoutLease),
            Some(Duration::from_secs(10)),
        );
        assert_eq!(o.ends(), Instant::ZERO + Duration::from_secs(10));
        assert_eq!(o.crashes.len(), 1);
        assert!(o.crashes[0].not_before < o.liveness_starts());
    }

    #[test]
    fn the_lease_canary_always_gets_a_failover() {
        for seed in 0..20 {
            let o = options_for(seed, Some(Canary::ReleaseWithoutLease));
            assert_eq!(o.crashes.len(), 1);
            assert!(
                o.link_faults
                    .iter()
                    .any(|lf| lf.cut == Cut::HostArbiter(Host::B))
            );
        }
    }
}
