//! The bench's second failover run: the secondary is SIGKILLed while a client runs `INCR`s back
//! to back against a fresh pair, and the bench measures how long the client stalled (issue 10:
//! "Secondary SIGKILL -> no client stall over 200 ms"). While paired, the primary's output
//! waits for the secondary's (the comparator), so the client waits until the primary stops
//! comparing: at its `peer-lost` (the heartbeat) or earlier if the dead link tells it.
//!
//! Invariant: the stall is measured from the client's replies only: the longest wait of a
//! request in flight at the kill or sent after it, counted from the later of its sending and
//! the kill; the counter must go on without a gap or a repeat (checked on every reply).

use super::{BenchOptions, Reply, RequestLoop};
use crate::demo::fields;
use crate::demo::net::PairRun;
use colo_runtime::net::netns::NetNs;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// What the secondary's SIGKILL did to the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecondaryKillFigures {
    /// Kill -> the primary's `peer-lost` line, if seen.
    pub detected: Option<Duration>,
    /// The client's longest stall (see the module doc).
    pub stall: Duration,
    /// Replies after the kill that were checked.
    pub replies_after: usize,
}

/// The longest wait of a reply ending after `killed`, counted from the later of its sending
/// and the kill.
fn longest_stall(replies: &[Reply], killed: Instant) -> Duration {
    replies
        .iter()
        .filter(|r| r.end > killed)
        .map(|r| r.end - r.sent.max(killed))
        .max()
        .unwrap_or_default()
}

/// Runs it on a pair of its own (the caller's pair was consumed by the primary's kill).
pub fn run(
    ns: &NetNs,
    options: &BenchOptions,
    deadline: Instant,
) -> Result<SecondaryKillFigures, String> {
    let mut pair = PairRun::start(ns, &options.pair, deadline, &[], &options.all_node_args())?;
    pair.wait_paired()?;
    let requests = RequestLoop::start(ns)?;
    let result = watch(&mut pair, options, &requests.replies, &requests.failure);
    requests.stop();
    result
}

fn watch(
    pair: &mut PairRun,
    options: &BenchOptions,
    replies: &Mutex<Vec<Reply>>,
    failure: &Mutex<Option<String>>,
) -> Result<SecondaryKillFigures, String> {
    let check = || match failure.lock().clone() {
        Some(e) => Err(format!("the secondary-kill run's client failed: {e}")),
        None => Ok(()),
    };
    let until = Instant::now() + options.before_kill;
    while Instant::now() < until || replies.lock().is_empty() {
        check()?;
        pair.next("the client's requests before the secondary's kill")?;
    }
    println!("[bench] killing the secondary (SIGKILL) while the client runs");
    let killed = Instant::now();
    pair.children.kill("secondary")?;
    let mut figures = SecondaryKillFigures::default();
    // Until the primary declared the loss (or 3 s passed) and 20 requests sent after it were
    // answered.
    loop {
        check()?;
        if let Some(line) = pair.next("the primary going on alone")?
            && fields(&line.text, "primary", "peer-lost").is_some()
        {
            figures.detected = Some(line.at.saturating_duration_since(killed));
        }
        let settled = figures
            .detected
            .map_or(killed + Duration::from_secs(3), |d| killed + d);
        let after = replies.lock().iter().filter(|r| r.sent >= settled).count();
        if Instant::now() >= settled && after >= 20 {
            break;
        }
    }
    let replies = replies.lock().clone();
    for w in replies.windows(2) {
        if w[1].value != w[0].value + 1 {
            return Err(format!(
                "the counter went from {} to {} across the secondary's kill",
                w[0].value, w[1].value
            ));
        }
    }
    figures.stall = longest_stall(&replies, killed);
    figures.replies_after = replies.iter().filter(|r| r.end > killed).count();
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_counts_from_the_kill_for_a_request_already_in_flight() {
        let base = Instant::now();
        let at = |us: u64| base + Duration::from_micros(us);
        let replies = [
            Reply {
                sent: at(0),
                end: at(100),
                value: 1,
            },
            // In flight at the kill (1,000 us), answered at 501,000 us: 500 ms.
            Reply {
                sent: at(900),
                end: at(501_000),
                value: 2,
            },
            Reply {
                sent: at(501_000),
                end: at(501_200),
                value: 3,
            },
        ];
        assert_eq!(
            longest_stall(&replies, at(1_000)),
            Duration::from_millis(500)
        );
        assert_eq!(longest_stall(&replies, at(600_000)), Duration::ZERO);
    }
}
