//! Progress of a long transfer an operator waits for: the primary's initial copy of the
//! guest (memory, then the disk image) to a new secondary, at pairing and at re-protection,
//! as the primary sends it and as the secondary stores it.
//! On a terminal (stderr) it is an `indicatif` bar with bytes, rate and ETA; otherwise (a
//! systemd unit, a pipe) a `sync-progress` log event at most every [`LOG_EVERY`], with the
//! same figures as fields.
//!
//! Invariant: progress is only shown, never fed back: the transfer's outcome and its
//! `sync-sent` milestone do not depend on it, and a transfer that ends early (a dead link)
//! just leaves the bar where it was (it is cleared when the [`SyncProgress`] is dropped).

use crate::pair::metrics::NodeMetrics;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::Cell;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

/// How often the non-terminal form logs.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// One transfer's progress (see the module doc).
#[derive(Debug)]
pub struct SyncProgress {
    role: &'static str,
    what: &'static str,
    total: u64,
    done: Cell<u64>,
    started: Instant,
    /// The terminal form; `None`: log events.
    bar: Option<ProgressBar>,
    log_every: Duration,
    last_log: Cell<Instant>,
    /// Where the figures also go for `/metrics` (`sync_done_bytes`, `sync_total_bytes`).
    metrics: Option<Arc<NodeMetrics>>,
}

impl SyncProgress {
    /// Starts showing a transfer of `total` bytes (`what`: `initial-copy`, `re-protection`)
    /// by the node named `role`: a bar if stderr is a terminal, log events otherwise.
    pub fn start(role: &'static str, what: &'static str, total: u64) -> SyncProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message(format!("{role}: {what}"))
        });
        SyncProgress::with(role, what, total, bar, LOG_EVERY)
    }

    /// The log-event form with its own period (tests: `Duration::ZERO` logs every step).
    pub fn logging(
        role: &'static str,
        what: &'static str,
        total: u64,
        every: Duration,
    ) -> SyncProgress {
        SyncProgress::with(role, what, total, None, every)
    }

    fn with(
        role: &'static str,
        what: &'static str,
        total: u64,
        bar: Option<ProgressBar>,
        log_every: Duration,
    ) -> SyncProgress {
        let now = Instant::now();
        SyncProgress {
            role,
            what,
            total,
            done: Cell::new(0),
            started: now,
            bar,
            log_every,
            last_log: Cell::new(now),
            metrics: None,
        }
    }

    /// Also reports the figures to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> SyncProgress {
        metrics.on_sync_progress(0, self.total);
        self.metrics = Some(metrics);
        self
    }

    /// `bytes` more went out.
    pub fn advance(&self, bytes: u64) {
        let done = (self.done.get() + bytes).min(self.total);
        self.done.set(done);
        if let Some(m) = &self.metrics {
            m.on_sync_progress(done, self.total);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last_log.get()) < self.log_every && done < self.total {
            return;
        }
        self.last_log.set(now);
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let eta_s = if rate > 0.0 {
            ((self.total - done) as f64 / rate).ceil() as u64
        } else {
            0
        };
        info!(
            role = self.role,
            what = self.what,
            done_bytes = done,
            total_bytes = self.total,
            percent = (done * 100).checked_div(self.total).unwrap_or(100),
            rate_mib_s = (rate / (1 << 20) as f64 * 10.0).round() / 10.0,
            eta_s,
            "sync-progress"
        );
    }

    /// `done` bytes are through in all (the receiving side learns totals, not steps).
    pub fn set(&self, done: u64) {
        let before = self.done.get();
        if done > before {
            self.advance(done - before);
        }
    }

    /// Bytes sent so far.
    pub fn done(&self) -> u64 {
        self.done.get()
    }
}

impl Drop for SyncProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::Captured;

    fn events(every: Duration, steps: &[u64], total: u64) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let p = SyncProgress::logging("primary", "initial-copy", total, every);
            for &s in steps {
                p.advance(s);
            }
        });
        out.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn without_a_terminal_each_period_logs_the_bytes_sent_and_the_total() {
        let e = events(Duration::ZERO, &[1 << 20, 1 << 20, 2 << 20], 4 << 20);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0]["message"], "sync-progress");
        assert_eq!(e[0]["what"], "initial-copy");
        assert_eq!(e[0]["done_bytes"], 1 << 20);
        assert_eq!(e[1]["percent"], 50);
        assert_eq!(e[2]["done_bytes"], 4 << 20);
        assert_eq!(e[2]["total_bytes"], 4 << 20);
        assert_eq!(e[2]["eta_s"], 0);
    }

    #[test]
    fn within_one_period_only_the_end_of_the_transfer_is_logged() {
        let e = events(Duration::from_secs(3600), &[1, 1, 1, 1], 4);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0]["percent"], 100);
    }
}
