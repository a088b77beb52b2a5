//! `colo bench`: the replicated pair against the lone VM, same test guest, same workload, same
//! TCP client, one run. Inside a network namespace it creates (see `demo::net`, whose lab,
//! lone VM, pair processes and client it shares) it measures, first on a lone VM in this
//! process and then through a pair (arbiter, primary, secondary as child processes):
//! `INCR` request/response latency, on the pair the reply that differs between the guests
//! and the checkpoint it forces (`diverge.rs`), guest -> client throughput (`STREAM n`) and
//! client -> guest throughput (`SINK n`); then it SIGKILLs the primary while a client runs `INCR`s back
//! to back and times kill -> detection -> takeover -> the client's next reply; then, on a fresh
//! pair, it SIGKILLs the secondary the same way and measures the client's longest stall
//! (`secondary_kill.rs`).
//! The report (`report.rs`) ends with `key=value` lines for scripts.
//!
//! Invariant: the bench reports, it never judges figures; it fails only when something broke
//! (a child died, a reply was wrong, a write was lost or repeated, a deadline passed). Every
//! wait is bounded by the run's deadline and every child is reaped on every path (the
//! `PairRun` guard), as in the demo.

mod breakdown;
mod cpu;
mod diverge;
mod diverge_trace;
mod report;
mod secondary_kill;
mod sink_trace;
mod soak;

pub use breakdown::Breakdown;
pub use diverge::DivergeFigures;
pub use report::{BenchReport, FailoverFigures, SideFigures};
pub use soak::run as run_soak;

use crate::demo::net::{Client, LONE_IP, LoneVm, PAIR_IP, PairRun, lab};
use crate::demo::{DemoOptions, Percentiles, fields};
use colo_runtime::net::netns::NetNs;
use cpu::CpuSnapshot;
pub use cpu::PhaseCpu;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one bench run does.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Ports, binary and the bound on the whole run (`timeout`).
    pub pair: DemoOptions,
    /// `INCR` requests per latency measurement.
    pub requests: u32,
    /// `NONCE` requests (replies that differ between the guests) through the pair.
    pub diverge_requests: u32,
    /// Pages the guests write before each `NONCE` (`TOUCH n`).
    pub diverge_pages: u32,
    /// Bytes per `STREAM` / `SINK` request.
    pub bulk_bytes: u64,
    /// `STREAM` and `SINK` requests per side.
    pub bulk_rounds: u32,
    /// How long the failover run's client runs against the pair before the kill.
    pub before_kill: Duration,
    /// Extra arguments for both nodes (e.g. `--heartbeat-interval-ms=20`).
    pub node_args: Vec<String>,
    /// Words appended to the test guest's command line, the lone VM's and both nodes' alike
    /// (e.g. `colo.idle_spin_us=2000`).
    pub guest_cmdline: Option<String>,
}

impl BenchOptions {
    /// The nodes' extra arguments: `node_args`, then the guest's extra command line.
    pub fn all_node_args(&self) -> Vec<String> {
        let mut args = self.node_args.clone();
        if let Some(extra) = &self.guest_cmdline {
            args.push(format!("--cmdline={extra}"));
        }
        args
    }

    /// `--quick` (a smoke, about a minute here) or the full run.
    pub fn new(pair: DemoOptions, quick: bool) -> BenchOptions {
        if quick {
            BenchOptions {
                pair,
                requests: 300,
                diverge_requests: 50,
                diverge_pages: 256,
                bulk_bytes: 1 << 20,
                bulk_rounds: 2,
                before_kill: Duration::from_secs(1),
                node_args: Vec::new(),
                guest_cmdline: None,
            }
        } else {
            BenchOptions {
                pair,
                requests: 3000,
                diverge_requests: 300,
                diverge_pages: 256,
                bulk_bytes: 8 << 20,
                bulk_rounds: 4,
                before_kill: Duration::from_secs(3),
                node_args: Vec::new(),
                guest_cmdline: None,
            }
        }
    }
}

/// `colo bench --breakdown`: `requests` requests through a pair whose nodes record their hops
/// (see `breakdown.rs`).
pub fn run_breakdown(options: &BenchOptions) -> Result<Breakdown, String> {
    crate::demo::require_kvm()?;
    let deadline = Instant::now() + options.pair.timeout;
    let ns = lab("colo-bench")?;
    let mut pair = PairRun::start(
        &ns,
        &options.pair,
        deadline,
        &[("COLO_TRACE_HOPS", "1")],
        &options.all_node_args(),
    )?;
    pair.wait_paired()?;
    breakdown::run(
        &ns,
        &mut pair,
        options.requests,
        options.diverge_requests,
        options.diverge_pages,
    )
}

/// Latency, then `between` (the pair's differing replies), then both bulk directions, against
/// the server at `ip`; the bulk phases' host CPU is that of the `processes` (name, pid).
fn measure(
    ns: &NetNs,
    ip: &str,
    processes: &[(&str, u32)],
    options: &BenchOptions,
    between: &mut dyn FnMut() -> Result<(), String>,
) -> Result<SideFigures, String> {
    let mut client = Client::connect(ns, ip)?;
    // A few requests first: ARP, the connection's first segments, the guest's first faults.
    for _ in 0..20 {
        client.incr()?;
    }
    let mut latencies = Vec::with_capacity(options.requests as usize);
    for _ in 0..options.requests {
        let t = Instant::now();
        client.incr()?;
        latencies.push(t.elapsed());
    }
    let mut side = SideFigures {
        latency: Percentiles::of(&latencies),
        ..SideFigures::default()
    };
    between()?;
    let cpu_before = CpuSnapshot::take(processes);
    for _ in 0..options.bulk_rounds {
        let t = Instant::now();
        client.stream(options.bulk_bytes)?;
        side.out_time += t.elapsed();
        side.out_bytes += options.bulk_bytes;
    }
    let cpu_between = CpuSnapshot::take(processes);
    let body: Vec<u8> = (0..options.bulk_bytes).map(|i| (i % 251) as u8).collect();
    for _ in 0..options.bulk_rounds {
        let t = Instant::now();
        client.sink(&body)?;
        side.in_time += t.elapsed();
        side.in_bytes += options.bulk_bytes;
    }
    let cpu_after = CpuSnapshot::take(processes);
    side.out_cpu = PhaseCpu::between(cpu_before.as_ref(), cpu_between.as_ref());
    side.in_cpu = PhaseCpu::between(cpu_between.as_ref(), cpu_after.as_ref());
    Ok(side)
}

/// Runs the bench (see the module doc).
pub fn run(options: &BenchOptions) -> Result<BenchReport, String> {
    crate::demo::require_kvm()?;
    let deadline = Instant::now() + options.pair.timeout;
    let ns = lab("colo-bench")?;
    let mut report = BenchReport {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        ..BenchReport::default()
    };
    {
        let _vm = LoneVm::start(&ns, options.guest_cmdline.as_deref())?;
        let me = [("bench", std::process::id())];
        report.lone = measure(&ns, LONE_IP, &me, options, &mut || Ok(()))?;
        println!("[bench] lone VM measured");
    }
    let mut pair = PairRun::start(&ns, &options.pair, deadline, &[], &options.all_node_args())?;
    pair.wait_paired()?;
    let started = Instant::now();
    let mut diverge = DivergeFigures::default();
    let mut processes = vec![("bench", std::process::id())];
    processes.extend(pair.children.named_pids());
    report.pair = measure(&ns, PAIR_IP, &processes, options, &mut || {
        diverge = diverge::run(
            &ns,
            &mut pair,
            options.diverge_requests,
            options.diverge_pages,
            started,
        )?;
        println!("[bench] differing replies measured");
        Ok(())
    })?;
    let measured = Instant::now();
    println!("[bench] pair measured");
    // The lines the differing replies' phase read are counted there.
    for (reason, n) in &diverge.seen_checkpoints {
        *report.checkpoints.entry(reason.clone()).or_default() += n;
    }
    report.failover.false_alarms += diverge.false_alarms;
    report.diverge = diverge;
    // Count the checkpoints of the measured window from the lines that queued meanwhile.
    while let Some(line) = pair.next("the pair's lines")? {
        report.failover.false_alarms += u32::from(false_alarm(&line.text));
        if line.at > measured {
            break;
        }
        if line.at >= started
            && let Some(f) = fields(&line.text, "primary", "checkpoint-done")
        {
            let reason = f.get("reason").cloned().unwrap_or_default();
            *report.checkpoints.entry(reason).or_default() += 1;
        }
    }
    let before = report.failover.false_alarms;
    report.failover = failover(&ns, &mut pair, options)?;
    report.failover.false_alarms += before;
    drop(pair);
    report.secondary_kill = secondary_kill::run(&ns, options, deadline)?;
    Ok(report)
}

/// A node declared its peer lost (before the bench killed anyone: a false alarm).
pub(crate) fn false_alarm(text: &str) -> bool {
    fields(text, "primary", "peer-lost").is_some()
        || fields(text, "secondary", "peer-lost").is_some()
}

/// A reply the failover run's client got: when its request was sent, when the reply ended
/// and the counter it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reply {
    sent: Instant,
    end: Instant,
    value: u64,
}

/// The client's next reply after the kill: the first reply to a request sent once the primary
/// was dead (`dead`: SIGKILL sent and its kernel closed its sockets, which it does once every
/// thread of the process has stopped; or the process reaped, if that came first), so only
/// the survivor can have answered it, and the reply before it. (Until 2026-12-06 evening
/// `dead` waited for the reap, which under kvm_pvm takes 20-330 ms of the dead VM's teardown
/// after the survivor already answers: the figure measured the teardown.) A reply read just after the kill to a request sent
/// before it may have left the primary before it died (the 0.1 ms `failover_next_reply_ms`
/// of an earlier version, which took the first reply read after the kill); the request in
/// flight at the kill, if the primary died before answering, is answered by the survivor
/// first, and the next request's reply comes one round trip after it.
fn next_reply_after(replies: &[Reply], dead: Instant) -> Option<(Reply, Reply)> {
    let at = replies.iter().position(|r| r.sent >= dead)?;
    let before = *replies.get(at.checked_sub(1)?)?;
    Some((before, replies[at]))
}

/// The client's longest wait for a reply among the requests answered after `killed` (the
/// request in flight at the kill included): how long the failover held the client up.
fn longest_wait_across(replies: &[Reply], killed: Instant) -> Duration {
    replies
        .iter()
        .filter(|r| r.end >= killed)
        .map(|r| r.end - r.sent)
        .max()
        .unwrap_or_default()
}

/// The failover run: a client runs `INCR`s back to back, the primary is killed, the
/// survivor must go on from the same count.
fn failover(
    ns: &NetNs,
    pair: &mut PairRun,
    options: &BenchOptions,
) -> Result<FailoverFigures, String> {
    let requests = RequestLoop::start(ns)?;
    let result = kill_and_watch(pair, options, &requests.replies, &requests.failure);
    requests.stop();
    result
}

/// A client sending `INCR`s back to back on a thread of its own and recording each reply,
/// until stopped: the load both kill runs watch.
struct RequestLoop {
    /// Every reply, in order.
    replies: Arc<Mutex<Vec<Reply>>>,
    /// The client's error, which ended its thread.
    failure: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    /// The client's socket, shut down to unblock a request in flight at the stop.
    unblock: std::net::TcpStream,
    worker: std::thread::JoinHandle<()>,
}

impl RequestLoop {
    /// Connects to the pair and starts sending. The latency client's connection counted on the
    /// same key: this one goes on from its count.
    fn start(ns: &NetNs) -> Result<RequestLoop, String> {
        let mut client = Client::connect(ns, PAIR_IP)?;
        client.count = first_value(&mut client)?;
        let unblock = client
            .conn
            .stream()
            .try_clone()
            .map_err(|e| e.to_string())?;
        let replies: Arc<Mutex<Vec<Reply>>> = Arc::default();
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (replies, failure, stop) = (replies.clone(), failure.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match client.incr() {
                        Ok(value) => replies.lock().push(Reply {
                            sent,
                            end: Instant::now(),
                            value,
                        }),
                        Err(e) => {
                            *failure.lock() = Some(e);
                            return;
                        }
                    }
                }
            })
        };
        Ok(RequestLoop {
            replies,
            failure,
            stop,
            unblock,
            worker,
        })
    }

    /// Stops the client and waits for its thread.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.unblock.shutdown(std::net::Shutdown::Both);
        let _ = self.worker.join();
    }
}

/// Reads the counter without changing it (`GET n`): the latency phase's connection counted on
/// the same key, and this client's checks go on from there.
fn first_value(client: &mut Client) -> Result<u64, String> {
    let line = client.conn.ask("0 GET n")?;
    match line
        .strip_prefix("0 VAL ")
        .and_then(|r| r.split(' ').next())
    {
        Some(v) => v.parse::<u64>().map_err(|_| format!("GET n got {line:?}")),
        None if line == "0 NONE" => Ok(0),
        None => Err(format!("GET n got {line:?}")),
    }
}

fn kill_and_watch(
    pair: &mut PairRun,
    options: &BenchOptions,
    replies: &Mutex<Vec<Reply>>,
    failure: &Mutex<Option<String>>,
) -> Result<FailoverFigures, String> {
    let check = || match failure.lock().clone() {
        Some(e) => Err(format!("the failover run's client failed: {e}")),
        None => Ok(()),
    };
    let until = Instant::now() + options.before_kill;
    let mut false_alarms = 0;
    while Instant::now() < until || replies.lock().is_empty() {
        check()?;
        if let Some(line) = pair.next("the client's requests before the kill")? {
            false_alarms += u32::from(false_alarm(&line.text));
        }
    }
    println!("[bench] killing the primary (SIGKILL) while the client runs");
    let killed = Instant::now();
    pair.children.signal_kill("primary")?;
    // The secondary's `link-down`: the dead primary's kernel closed its sockets, so every
    // thread of it has stopped and nothing it had not sent yet can leave any more.
    let mut closed = None;
    let mut figures = FailoverFigures {
        false_alarms,
        ..FailoverFigures::default()
    };
    loop {
        check()?;
        if let Some(line) = pair.next("the failover")? {
            if closed.is_none() && fields(&line.text, "secondary", "link-down").is_some() {
                closed = Some(line.at);
            } else if fields(&line.text, "secondary", "peer-lost").is_some() {
                figures.detected = Some(line.at.saturating_duration_since(killed));
            } else if fields(&line.text, "secondary", "failed-over").is_some() {
                figures.took_over = Some(line.at.saturating_duration_since(killed));
                break;
            }
        }
    }
    pair.children.kill("primary")?;
    let reaped = Instant::now();
    let dead = closed.map_or(reaped, |c: Instant| c.min(reaped));
    figures.dead = Some(dead - killed);
    figures.reaped = Some(reaped - killed);
    // The survivor answers: wait for a few replies to requests sent after the kill.
    loop {
        check()?;
        let after = replies.lock().iter().filter(|r| r.sent >= dead).count();
        if after >= 20 {
            break;
        }
        pair.next("the client's requests to the survivor")?;
    }
    let replies = replies.lock().clone();
    if let Some((b, a)) = next_reply_after(&replies, dead) {
        figures.around_kill = (b.value, a.value);
        figures.next_reply = a.end - killed;
    }
    figures.stall = longest_wait_across(&replies, killed);
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(base: Instant, sent_us: u64, end_us: u64, value: u64) -> Reply {
        Reply {
            sent: base + Duration::from_micros(sent_us),
            end: base + Duration::from_micros(end_us),
            value,
        }
    }

    #[test]
    fn a_reply_to_a_request_sent_before_the_kill_is_not_the_next_reply() {
        let base = Instant::now();
        // Killed at 1,000 us, reaped at 1,050 us. The reply read at 1,100 us answers a
        // request sent at 900 us (it left the primary before it died); the survivor answers
        // the request sent at 1,100 us after the takeover, at 400,000 us.
        let replies = [
            reply(base, 0, 900, 7),
            reply(base, 900, 1_100, 8),
            reply(base, 1_100, 400_000, 9),
            reply(base, 400_000, 400_200, 10),
        ];
        let dead = base + Duration::from_micros(1_050);
        let (before, after) = next_reply_after(&replies, dead).expect("a reply after the kill");
        assert_eq!((before.value, after.value), (8, 9));
        assert_eq!(after.end - base, Duration::from_micros(400_000));
        // Reaped only after the request at 1,100 us was sent: the next request counts.
        let dead = base + Duration::from_micros(1_500);
        let (before, after) = next_reply_after(&replies, dead).expect("a later request");
        assert_eq!((before.value, after.value), (9, 10));
    }

    #[test]
    fn the_stall_is_the_longest_wait_of_a_request_answered_after_the_kill() {
        let base = Instant::now();
        let replies = [
            reply(base, 0, 5_000, 1), // slow, but answered before the kill
            reply(base, 5_000, 5_100, 2),
            reply(base, 5_100, 8_300, 3), // in flight at the kill (6,000 us)
            reply(base, 8_300, 8_500, 4),
        ];
        let killed = base + Duration::from_micros(6_000);
        assert_eq!(
            longest_wait_across(&replies, killed),
            Duration::from_micros(3_200)
        );
        assert_eq!(longest_wait_across(&replies[..2], killed), Duration::ZERO);
    }

    #[test]
    fn without_a_reply_before_the_kill_there_is_no_figure() {
        let base = Instant::now();
        let replies = [reply(base, 10, 20, 1)];
        assert_eq!(next_reply_after(&replies, base), None);
    }
}
