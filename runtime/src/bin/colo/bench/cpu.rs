//! Where the host's CPU goes during a bench phase: every thread's time on a CPU, read from
//! `/proc/PID/task/TID/schedstat` (nanoseconds, the scheduler's own accounting) for the bench
//! process and the pair's processes, before and after the phase, and grouped by process and
//! thread name (`primary/vcpu0`, `secondary/colo-peer-rx`, `bench/colo`).
//!
//! Invariant: a figure is a difference of two readings of the same threads; a thread that
//! appears or ends between them counts only for the time it was seen (the bench's processes
//! keep their threads for the whole phase), and a process that cannot be read at all makes
//! the whole snapshot `None` rather than a smaller number.

use std::collections::BTreeMap;
use std::time::Duration;

/// Every thread's CPU time at one moment, by `(process name, thread name)` (threads of the same
/// name summed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSnapshot {
    by_thread: BTreeMap<(String, String), u64>,
}

impl CpuSnapshot {
    /// Reads every thread of each `(name, pid)`; `None` if a process could not be read.
    pub fn take(processes: &[(&str, u32)]) -> Option<CpuSnapshot> {
        let mut snapshot = CpuSnapshot::default();
        for (name, pid) in processes {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            for task in tasks.flatten() {
                let path = task.path();
                // A thread that ended while the directory was read has no files any more.
                let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) else {
                    continue;
                };
                let Some(ns) = schedstat_run_ns(&stat) else {
                    continue;
                };
                let comm = std::fs::read_to_string(path.join("comm"))
                    .map(|c| c.trim_end().to_string())
                    .unwrap_or_else(|_| "?".to_string());
                *snapshot
                    .by_thread
                    .entry((name.to_string(), comm))
                    .or_default() += ns;
            }
        }
        Some(snapshot)
    }

    /// The CPU time of every thread together.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.by_thread.values().sum())
    }

    /// What each thread ran since `earlier`, largest first, as `process/thread`.
    pub fn since(&self, earlier: &CpuSnapshot) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = self
            .by_thread
            .iter()
            .map(|((process, thread), ns)| {
                let before = earlier
                    .by_thread
                    .get(&(process.clone(), thread.clone()))
                    .copied()
                    .unwrap_or(0);
                (
                    format!("{process}/{thread}"),
                    Duration::from_nanos(ns.saturating_sub(before)),
                )
            })
            .filter(|(_, d)| !d.is_zero())
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// The time on a CPU in one `schedstat` line (`run_ns wait_ns slices`).
fn schedstat_run_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The CPU of one phase: in total and by thread (largest first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseCpu {
    /// Every thread together.
    pub total: Duration,
    /// Each `process/thread` that ran during the phase.
    pub threads: Vec<(String, Duration)>,
}

impl PhaseCpu {
    /// The difference of two snapshots (`None` if either is missing).
    pub fn between(before: Option<&CpuSnapshot>, after: Option<&CpuSnapshot>) -> Option<Self> {
        let (before, after) = (before?, after?);
        Some(PhaseCpu {
            total: after.total().saturating_sub(before.total()),
            threads: after.since(before),
        })
    }

    /// The `n` busiest threads as `name share%` of `wall` (100 % = one core all the time).
    pub fn top(&self, n: usize, wall: Duration) -> String {
        if wall.is_zero() {
            return String::new();
        }
        self.threads
            .iter()
            .take(n)
            .map(|(name, d)| {
                format!(
                    "{name} {:.0}%",
                    d.as_secs_f64() * 100.0 / wall.as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(entries: &[(&str, &str, u64)]) -> CpuSnapshot {
        CpuSnapshot {
            by_thread: entries
                .iter()
                .map(|(p, t, ns)| ((p.to_string(), t.to_string()), *ns))
                .collect(),
        }
    }

    #[test]
    fn schedstat_gives_the_time_on_a_cpu() {
        assert_eq!(schedstat_run_ns("123456 789 10\n"), Some(123_456));
        assert_eq!(schedstat_run_ns(""), None);
        assert_eq!(schedstat_run_ns("x 1 2"), None);
    }

    #[test]
    fn this_process_is_read_and_a_missing_one_spoils_the_snapshot() {
        let own = CpuSnapshot::take(&[("bench", std::process::id())]).expect("own threads");
        assert!(own.total() > Duration::ZERO);
        assert!(own.by_thread.keys().all(|(p, _)| p == "bench"));
        assert_eq!(CpuSnapshot::take(&[("gone", u32::MAX)]), None);
    }

    #[test]
    fn a_phase_is_the_difference_by_thread_largest_first() {
        let before = snapshot(&[("primary", "vcpu0", 1_000), ("secondary", "vcpu0", 500)]);
        let after = snapshot(&[
            ("primary", "vcpu0", 4_000),
            ("secondary", "vcpu0", 500),
            ("secondary", "colo-peer-rx", 2_000), // appeared during the phase
        ]);
        let phase = PhaseCpu::between(Some(&before), Some(&after)).unwrap();
        assert_eq!(phase.total, Duration::from_nanos(5_000));
        assert_eq!(
            phase.threads,
            vec![
                ("primary/vcpu0".to_string(), Duration::from_nanos(3_000)),
                (
                    "secondary/colo-peer-rx".to_string(),
                    Duration::from_nanos(2_000)
                ),
            ],
            "an idle thread is left out"
        );
        assert_eq!(
            phase.top(1, Duration::from_nanos(6_000)),
            "primary/vcpu0 50%"
        );
        assert_eq!(PhaseCpu::between(None, Some(&after)), None);
    }
}
