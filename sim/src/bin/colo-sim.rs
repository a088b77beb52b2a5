//! `colo-sim`: the simulator's command line. Parses arguments, runs seeds through
//! [`colo_sim::runner`], prints the seed and every option it expanded to, the verdict, and on
//! failure the exact replay command; exits with the failure class's code (docs/simulation.md).

use std::process::ExitCode;

use colo_core::time::Duration;

use colo_sim::platform::Canary;
use colo_sim::runner::{self, Verdict};
use colo_sim::trace::TraceEvent;

const USAGE: &str = "usage: colo-sim (--seed N | --seeds A..B) [--check-determinism] \
[--canary NAME] [--trace] [--quiet] [--node] [--duration T]
       colo-sim --list-canaries
--quiet: with --seeds, print only failing seeds and the summary line
--node: accepted and ignored (old replay commands): the Node engine (two colo-core Nodes) is the
  only engine; a --cfg madsim build runs it as a madsim cluster, a normal build as a plain loop
--duration T: run T in total (e.g. 10s, 2500ms): the seed's fault mix scaled into a safety
  phase of 2/5 of T, liveness the rest (the throughput scenario of docs/benchmarks.md)
exit codes: 0 pass, 1 correctness, 2 liveness, 3 panic, 4 nondeterminism, 5 canary missed, \
64 usage";

struct Args {
    seeds: std::ops::Range<u64>,
    determinism: bool,
    canary: Option<Canary>,
    trace: bool,
    quiet: bool,
    duration: Option<Duration>,
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

fn parse() -> Result<Option<Args>, String> {
    let mut args = Args {
        seeds: 0..0,
        determinism: false,
        canary: None,
        trace: false,
        quiet: false,
        duration: None,
    };
    let mut it = std::env::args().skip(1);
    let mut have_seed = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => {
                let n: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seed takes a number")?;
                args.seeds = n..n + 1;
                have_seed = true;
            }
            "--seeds" => {
                let s = it.next().ok_or("--seeds takes A..B")?;
                let (a, b) = s.split_once("..").ok_or("--seeds takes A..B")?;
                let a: u64 = a.parse().map_err(|_| "bad start of --seeds")?;
                let b: u64 = b.parse().map_err(|_| "bad end of --seeds")?;
                args.seeds = a..b;
                have_seed = true;
            }
            "--check-determinism" => args.determinism = true,
            "--canary" => {
                let name = it.next().ok_or("--canary takes a name")?;
                args.canary =
                    Some(Canary::from_name(&name).ok_or(format!("unknown canary {name}"))?);
            }
            "--list-canaries" => {
                for c in Canary::ALL {
                    println!("{}", c.name());
                }
                return Ok(None);
            }
            "--trace" => args.trace = true,
            "--quiet" => args.quiet = true,
            // The only engine is the Node engine: kept so old replay commands work.
            "--node" => {}
            "--duration" => {
                let d = it.next().ok_or("--duration takes a length, e.g. 10s")?;
                args.duration = Some(parse_duration(&d)?);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !have_seed {
        return Err("one of --seed or --seeds is required".to_owned());
    }
    Ok(Some(args))
}

fn print_trace(events: &[TraceEvent]) {
    for e in events {
        println!("  {e:?}");
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("colo-sim: {e}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    // A panic inside a run is a verdict, not a crash of the runner: keep its message short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let single = args.seeds.end - args.seeds.start == 1;
    let mut worst = Verdict::Pass;
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in args.seeds.clone() {
        let options = runner::scenario_options(seed, args.canary, args.duration);
        let report = runner::run_options(options, args.canary, args.determinism);
        let ok = report.verdict == Verdict::Pass;
        if single || (!ok && !args.quiet) || !args.quiet && args.seeds.end - args.seeds.start <= 20
        {
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
