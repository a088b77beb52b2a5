//! `colo bench --soak SECS`: false failovers under load. The pair runs for `SECS` seconds
//! under the bench's heaviest load at once, bulk both ways (one client streaming `STREAM`s,
//! one sending `SINK`s, back to back) and a third client's `INCR`s, with its checkpoints, and
//! nobody is killed: every `peer-lost` either node prints is a false failure detection (both
//! nodes were alive). After one, the pair has split (the survivor took over or the primary
//! went solo), so the soak counts it, ends that pair and starts a fresh one until the time is
//! up. Run it with the heartbeat under test: `--node-arg=--heartbeat-interval-ms=20`.
//!
//! Invariant: the soak reports, it never judges: its figures are counts over the time the pairs
//! were protecting (from each pair's first checkpoint), and a pair that broke for any other
//! reason (a child died without a `peer-lost`) fails the run with that reason.

use crate::demo::fields;
use crate::demo::net::{Client, PAIR_IP, PairRun, lab};
use colo_runtime::net::netns::NetNs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BenchOptions;

/// What a soak counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SoakReport {
    /// Time the pairs were protecting the guest (from each one's first checkpoint).
    pub protected: Duration,
    /// Pairs started.
    pub pairs: u32,
    /// `peer-lost` lines with both nodes alive, and when each came (seconds into the soak).
    pub false_failovers: u32,
    /// See [`SoakReport::false_failovers`].
    pub at_s: Vec<f64>,
    /// `PeerSuspect` events (silence of half the misses, not yet a loss): the margin.
    pub suspects: u32,
    /// The primaries' completed checkpoints.
    pub checkpoints: u64,
    /// Bytes the clients received (`STREAM`) and sent (`SINK`), and `INCR`s answered.
    pub bytes_out: u64,
    /// See [`SoakReport::bytes_out`].
    pub bytes_in: u64,
    /// See [`SoakReport::bytes_out`].
    pub requests: u64,
    /// The extra node arguments (the heartbeat under test).
    pub node_args: Vec<String>,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "colo bench --soak: {:.1} s protected over {} pair(s), node args {:?}: {} false failure detection(s){}, {} peer-suspect events; {} checkpoints, {} MiB out, {} MiB in, {} INCRs",
            self.protected.as_secs_f64(),
            self.pairs,
            self.node_args,
            self.false_failovers,
            if self.at_s.is_empty() {
                String::new()
            } else {
                format!(" at {:?} s", self.at_s)
            },
            self.suspects,
            self.checkpoints,
            self.bytes_out >> 20,
            self.bytes_in >> 20,
            self.requests
        )?;
        writeln!(f, "soak_protected_s={:.1}", self.protected.as_secs_f64())?;
        writeln!(f, "soak_checkpoints={}", self.checkpoints)?;
        writeln!(f, "soak_peer_suspect={}", self.suspects)?;
        write!(f, "soak_false_failovers={}", self.false_failovers)
    }
}

/// The load: three clients on their own threads until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    out: Arc<AtomicU64>,
    inn: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Load {
    fn start(ns: &NetNs, bulk: u64) -> Result<Load, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (out, inn, requests) = (Arc::default(), Arc::default(), Arc::default());
        let mut workers = Vec::new();
        for kind in 0..3 {
            let mut client = Client::connect(ns, PAIR_IP)?;
            let (stop, out, inn, requests): (
                Arc<AtomicBool>,
                Arc<AtomicU64>,
                Arc<AtomicU64>,
                Arc<AtomicU64>,
            ) = (
                stop.clone(),
                Arc::clone(&out),
                Arc::clone(&inn),
                Arc::clone(&requests),
            );
            workers.push(std::thread::spawn(move || {
                let body: Vec<u8> = (0..bulk).map(|i| (i % 251) as u8).collect();
                // A client error ends its thread: the pair broke (counted by the soak loop).
                while !stop.load(Ordering::Relaxed) {
                    let done = match kind {
                        0 => client
                            .stream(bulk)
                            .map(|()| out.fetch_add(bulk, Ordering::Relaxed)),
                        1 => client
                            .sink(&body)
                            .map(|()| inn.fetch_add(bulk, Ordering::Relaxed)),
                        _ => client
                            .incr()
                            .map(|_| requests.fetch_add(1, Ordering::Relaxed))
                            .map_err(crate::demo::DemoError::Client),
                    };
                    if done.is_err() {
                        return;
                    }
                }
            }));
        }
        Ok(Load {
            stop,
            workers,
            out,
            inn,
            requests,
        })
    }

    /// Stops the clients (a blocked one ends when its pair is torn down) and adds up.
    fn finish(self, report: &mut SoakReport) {
        self.stop.store(true, Ordering::Relaxed);
        report.bytes_out += self.out.load(Ordering::Relaxed);
        report.bytes_in += self.inn.load(Ordering::Relaxed);
        report.requests += self.requests.load(Ordering::Relaxed);
        // Detached: a client blocked on a dead pair's connection ends with the namespace.
        drop(self.workers);
    }
}

/// Runs the soak for `soak` (see the module doc).
pub fn run(options: &BenchOptions, soak: Duration) -> Result<SoakReport, String> {
    crate::demo::require_kvm()?;
    let started = Instant::now();
    let ns = lab("colo-bench")?;
    let mut report = SoakReport {
        node_args: options.node_args.clone(),
        ..SoakReport::default()
    };
    while started.elapsed() < soak {
        // Each pair (its children's `--run-for` included) gets the run's bound for its start
        // plus the whole soak.
        let pair_options = crate::demo::DemoOptions {
            timeout: options.pair.timeout + soak,
            ..options.pair.clone()
        };
        let deadline = Instant::now() + pair_options.timeout;
        let mut pair = PairRun::start(&ns, &pair_options, deadline, &[], &options.all_node_args())?;
        pair.wait_paired()?;
        report.pairs += 1;
        let protected_from = Instant::now();
        let load = Load::start(&ns, options.bulk_bytes)?;
        let mut split = false;
        while started.elapsed() < soak {
            let line = match pair.next("the soak") {
                Ok(Some(line)) => line,
                Ok(None) => continue,
                Err(e) if split => {
                    // The split pair's nodes end their own way; the count is already in.
                    println!("[bench] the split pair ended: {e}");
                    break;
                }
                Err(e) => {
                    load.finish(&mut report);
                    return Err(e.into());
                }
            };
            if fields(&line.text, "primary", "checkpoint-done").is_some() {
                report.checkpoints += 1;
            }
            if line.text.contains(": event PeerSuspect") {
                report.suspects += 1;
            }
            if fields(&line.text, "primary", "peer-lost").is_some()
                || fields(&line.text, "secondary", "peer-lost").is_some()
            {
                report.false_failovers += 1;
                report.at_s.push(started.elapsed().as_secs_f64());
                println!("[bench] false failure detection: {}", line.text);
                split = true;
                break;
            }
        }
        report.protected += protected_from.elapsed();
        load.finish(&mut report);
        drop(pair);
        if split {
            println!("[bench] starting a fresh pair");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_report_ends_with_its_keys_and_names_each_false_detection() {
        let report = SoakReport {
            protected: Duration::from_secs(178),
            pairs: 2,
            false_failovers: 1,
            at_s: vec![23.5],
            suspects: 8,
            checkpoints: 351,
            ..SoakReport::default()
        };
        let text = report.to_string();
        assert!(text.contains("1 false failure detection(s) at [23.5] s, 8 peer-suspect events"));
        let keys: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            keys,
            [
                "soak_protected_s=178.0",
                "soak_checkpoints=351",
                "soak_peer_suspect=8",
                "soak_false_failovers=1"
            ]
        );
    }
}
