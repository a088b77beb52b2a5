//! `colo-sim`: the simulator's command line. Parses arguments, runs seeds through
//! [`colo_sim::runner`], prints the seed and every option it expanded to, the verdict, and on
//! failure the exact replay command; exits with the failure class's code (docs/simulation.md).

use std::ops::Range;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};

use colo_core::time::Duration;

use colo_sim::platform::Canary;
use colo_sim::runner::{self, Verdict};
use colo_sim::trace::TraceEvent;

/// The simulator's command line (docs/simulation.md, "Running it").
#[derive(Debug, Parser)]
#[command(
    name = "colo-sim",
    about = "Runs colo-core's Nodes in the deterministic simulator: seeds, checkers, canaries",
    after_help = "exit codes: 0 pass, 1 correctness, 2 liveness, 3 panic, 4 nondeterminism, \
                  5 canary missed, 64 usage",
    group(ArgGroup::new("which").required(true).args(["seed", "seeds", "list_canaries"]))
)]
struct Args {
    /// Run one seed (prints its options, verdict and, on failure, the replay command).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Run every seed in A..B (end excluded).
    #[arg(long, value_name = "A..B", value_parser = parse_seed_range)]
    seeds: Option<Range<u64>>,
    /// Run each seed twice and compare the trace digests.
    #[arg(long)]
    check_determinism: bool,
    /// Plant a known bug; the run passes only if a checker catches it.
    #[arg(long, value_name = "NAME", value_parser = parse_canary)]
    canary: Option<Canary>,
    /// Print every trace event of each printed seed.
    #[arg(long)]
    trace: bool,
    /// With --seeds, print only failing seeds and the summary line.
    #[arg(long)]
    quiet: bool,
    /// Run T in total (e.g. 10s, 2500ms): the seed's fault mix scaled into a safety phase of
    /// 2/5 of T, liveness the rest (the throughput scenario of docs/benchmarks.md).
    #[arg(long, value_name = "T", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print the canaries' names, one per line, and exit.
    #[arg(long)]
    list_canaries: bool,
}

/// `A..B` with A <= B.
fn parse_seed_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("--seeds takes A..B, not {s}"))?;
    let a: u64 = a
        .parse()
        .map_err(|_| format!("bad start of --seeds: {a}"))?;
    let b: u64 = b.parse().map_err(|_| format!("bad end of --seeds: {b}"))?;
    if a > b {
        return Err(format!("--seeds {s}: the start is after the end"));
    }
    Ok(a..b)
}

/// A canary by its name (`--list-canaries`).
fn parse_canary(name: &str) -> Result<Canary, String> {
    Canary::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = Canary::ALL.iter().map(|c| c.name()).collect();
        format!("unknown canary {name} (known: {})", known.join(", "))
    })
}

/// `10s`, `2500ms` or a bare number of seconds; at least 1 s (the liveness phase must hold a
/// checkpoint interval and the progress bound, see docs/simulation.md).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("--duration takes seconds or milliseconds (10s, 2500ms), not {s}");
    let d = if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.parse().map_err(|_| bad())?)
    } else {
        Duration::from_secs(
            s.strip_suffix('s')
                .unwrap_or(s)
                .parse()
                .map_err(|_| bad())?,
        )
    };
    if d < Duration::from_secs(1) {
        return Err("--duration must be at least 1s".to_owned());
    }
    Ok(d)
}

fn print_trace(events: &[TraceEvent]) {
    for e in events {
        println!("  {e:?}");
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap's text on stdout, success.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64);
        }
    };
    if args.list_canaries {
        for c in Canary::ALL {
            println!("{}", c.name());
        }
        return ExitCode::SUCCESS;
    }
    let seeds = match (args.seed, args.seeds.clone()) {
        (Some(n), _) => n..n.saturating_add(1),
        (None, Some(r)) => r,
        (None, None) => {
            eprintln!("colo-sim: one of --seed or --seeds is required");
            return ExitCode::from(64);
        }
    };
    // A panic inside a run is a verdict, not a crash of the runner: keep its message short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let single = seeds.end - seeds.start == 1;
    let mut worst = Verdict::Pass;
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in seeds.clone() {
        let options = runner::scenario_options(seed, args.canary, args.duration);
        let report = runner::run_options(options, args.canary, args.check_determinism);
        let ok = report.verdict == Verdict::Pass;
        if single || (!ok && !args.quiet) || !args.quiet && seeds.end - seeds.start <= 20 {
            println!("{}", report.options);
            if let Some(d) = args.duration {
                println!(
                    "duration = {}ms (fixed: safety 2/5, liveness 3/5)",
                    d.as_millis()
                );
            }
            if let Some(c) = args.canary {
                println!(
                    "canary = {} (must be caught by {})",
                    c.name(),
                    c.caught_by()
                );
            }
        }
        if ok && args.quiet && !single {
            passed += 1;
            continue;
        }
        if let Some(out) = &report.output {
            let s = out.stats;
            println!(
                "seed {seed}: {} (checkpoints {}, released {}, failovers {}, crashes {}, \
                 trace {:#018x})",
                report.verdict.class(),
                s.checkpoints,
                s.released,
                s.failovers,
                s.crashes,
                out.digest
            );
            if args.trace {
                print_trace(&out.trace.events);
            }
        } else {
            println!("seed {seed}: {}", report.verdict.class());
        }
        match &report.verdict {
            Verdict::Pass => {
                if args.canary.is_some() {
                    for v in &report.violations {
                        println!("  caught: {v}");
                    }
                }
            }
            Verdict::Correctness(v) | Verdict::Liveness(v) | Verdict::CanaryMissed(v) => {
                for x in v {
                    println!("  violation: {x}");
                }
            }
            Verdict::Panic(m) => println!("  panic: {m}"),
            Verdict::Nondeterministic { first, second } => {
                println!("  trace digests differ: {first:#018x} vs {second:#018x}")
            }
        }
        if ok {
            passed += 1;
        } else {
            failed += 1;
            println!(
                "  replay: {}",
                runner::replay_command_for(seed, args.canary, args.duration)
            );
            if worst == Verdict::Pass || report.verdict.exit_code() < worst.exit_code() {
                worst = report.verdict.clone();
            }
        }
    }
    println!("colo-sim: {passed} passed, {failed} failed");
    ExitCode::from(worst.exit_code() as u8)
}
