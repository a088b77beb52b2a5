//! The figures of `colo bench` and how they are printed: a table for people, then `key=value`
//! lines for scripts (the last lines of the output, in a fixed order).
//!
//! Invariant: every ratio is the pair's figure over the lone VM's from the same run, computed
//! here and only here; a figure that could not be measured (a zero denominator) prints as
//! `nan`, never as a made-up number.

use crate::demo::Percentiles;
use std::collections::BTreeMap;
use std::time::Duration;

/// Figures of one guest set-up (the lone VM or the pair) under the same client.
#[derive(Clone, Debug, Default)]
pub struct SideFigures {
    /// `INCR` request/response latency.
    pub latency: Percentiles,
    /// Bulk bytes the guest sent to the client (`STREAM`) and how long they took in total.
    pub out_bytes: u64,
    /// See [`SideFigures::out_bytes`].
    pub out_time: Duration,
    /// Bulk bytes the client sent to the guest (`SINK`, until the guest's answer), and the time.
    pub in_bytes: u64,
    /// See [`SideFigures::in_bytes`].
    pub in_time: Duration,
    /// Host CPU time spent during the `STREAM`s and during the `SINK`s by every thread of the
    /// bench process (its client, and the lone VM when it is in this process) and of the
    /// pair's processes, in total and by thread ([`super::PhaseCpu`]); `None` where the
    /// kernel did not tell.
    pub out_cpu: Option<super::PhaseCpu>,
    /// See [`SideFigures::out_cpu`].
    pub in_cpu: Option<super::PhaseCpu>,
}

impl SideFigures {
    /// Guest -> client throughput in bytes per second (0 when nothing was measured).
    pub fn out_rate(&self) -> f64 {
        rate(self.out_bytes, self.out_time)
    }

    /// Client -> guest throughput in bytes per second.
    pub fn in_rate(&self) -> f64 {
        rate(self.in_bytes, self.in_time)
    }

    /// Host CPU per MiB of `STREAM` and of `SINK`, and the share of the host's `cores` busy
    /// meanwhile.
    pub fn cpu_figures(&self, cores: u32) -> CpuFigures {
        let per_mib = |cpu: Option<Duration>, bytes: u64| {
            cpu.filter(|_| bytes > 0)
                .map(|c| c.as_secs_f64() * 1e3 / (bytes as f64 / f64::from(1u32 << 20)))
        };
        let busy = |cpu: Option<Duration>, wall: Duration| {
            cpu.filter(|_| !wall.is_zero() && cores > 0)
                .map(|c| c.as_secs_f64() / (wall.as_secs_f64() * f64::from(cores)))
        };
        let out = self.out_cpu.as_ref().map(|c| c.total);
        let inn = self.in_cpu.as_ref().map(|c| c.total);
        CpuFigures {
            out_ms_per_mib: per_mib(out, self.out_bytes),
            out_busy: busy(out, self.out_time),
            in_ms_per_mib: per_mib(inn, self.in_bytes),
            in_busy: busy(inn, self.in_time),
        }
    }
}

/// [`SideFigures::cpu_figures`]: `None` where nothing was measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuFigures {
    /// Host CPU milliseconds per MiB of `STREAM` (guest -> client).
    pub out_ms_per_mib: Option<f64>,
    /// The share of the host's cores busy during the `STREAM`s (1.0: every core all the time).
    pub out_busy: Option<f64>,
    /// Host CPU milliseconds per MiB of `SINK` (client -> guest).
    pub in_ms_per_mib: Option<f64>,
    /// The share of the host's cores busy during the `SINK`s.
    pub in_busy: Option<f64>,
}

fn rate(bytes: u64, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        bytes as f64 / time.as_secs_f64()
    }
}

/// `a / b`, NaN when `b` is zero (a figure that was not measured).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

/// The failover run: times from the primary's SIGKILL, as this process saw the lines.
#[derive(Clone, Debug, Default)]
pub struct FailoverFigures {
    /// Kill -> the secondary's `peer-lost` line (detection).
    pub detected: Option<Duration>,
    /// Kill -> its `failed-over` line (lease taken, VM running solo, client link claimed).
    pub took_over: Option<Duration>,
    /// Kill -> the reply to the client's first request sent once the primary was dead
    /// (reaped): the first reply only the survivor can have sent.
    pub next_reply: Duration,
    /// The counter in the last reply before the kill and the first after it.
    pub around_kill: (u64, u64),
    /// `peer-lost` lines of either node before the kill (false failure detections).
    pub false_alarms: u32,
    /// Kill -> the primary counted dead (its sockets closed, or the process reaped).
    pub dead: Option<Duration>,
    /// Kill -> the process reaped (its VM's teardown included).
    pub reaped: Option<Duration>,
    /// The client's longest wait for a reply among the requests answered after the kill.
    pub stall: Duration,
}

/// Everything one `colo bench` run measured.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    /// The lone VM.
    pub lone: SideFigures,
    /// The pair.
    pub pair: SideFigures,
    /// The primary's checkpoints while the client ran against the pair, by reason.
    pub checkpoints: BTreeMap<String, u32>,
    /// The failover run.
    pub failover: FailoverFigures,
    /// The secondary's SIGKILL.
    pub secondary_kill: super::secondary_kill::SecondaryKillFigures,
    /// The replies that differ between the guests (`NONCE`), and the checkpoints they forced.
    pub diverge: super::DivergeFigures,
    /// The host's cores (for the CPU figures' busy share).
    pub cores: u32,
}

impl BenchReport {
    /// The `key=value` lines, in order.
    pub fn key_values(&self) -> Vec<(&'static str, String)> {
        let lat = |p: &Percentiles| (p.median_us as f64, p.p99_us as f64);
        let (lone50, lone99) = lat(&self.lone.latency);
        let (pair50, pair99) = lat(&self.pair.latency);
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        let (lone_cpu, pair_cpu) = (
            self.lone.cpu_figures(self.cores),
            self.pair.cpu_figures(self.cores),
        );
        let opt_ms = |d: Option<Duration>| d.map_or_else(|| "nan".to_string(), ms);
        vec![
            ("lone_p50_us", format!("{}", self.lone.latency.median_us)),
            ("lone_p99_us", format!("{}", self.lone.latency.p99_us)),
            ("pair_p50_us", format!("{}", self.pair.latency.median_us)),
            ("pair_p99_us", format!("{}", self.pair.latency.p99_us)),
            ("lone_out_mbps", mbps(self.lone.out_rate())),
            ("pair_out_mbps", mbps(self.pair.out_rate())),
            ("lone_in_mbps", mbps(self.lone.in_rate())),
            ("pair_in_mbps", mbps(self.pair.in_rate())),
            ("failover_detect_ms", opt_ms(self.failover.detected)),
            ("failover_takeover_ms", opt_ms(self.failover.took_over)),
            (
                "secondary_kill_detect_ms",
                opt_ms(self.secondary_kill.detected),
            ),
            ("secondary_kill_stall_ms", ms(self.secondary_kill.stall)),
            ("failover_stall_ms", ms(self.failover.stall)),
            (
                "peer_lost_before_kill",
                self.failover.false_alarms.to_string(),
            ),
            (
                "diverge_p50_us",
                opt_num(self.diverge_latency().map(|p| p.median_us)),
            ),
            (
                "diverge_p99_us",
                opt_num(self.diverge_latency().map(|p| p.p99_us)),
            ),
            (
                "diverge_bound_us",
                opt_num(self.diverge.bound_us(self.lone.latency.median_us)),
            ),
            (
                "checkpoint_pause_p50_us",
                opt_num((self.diverge.pause.count > 0).then_some(self.diverge.pause.median_us)),
            ),
            (
                "checkpoint_pause_pages_p50",
                opt_num(self.diverge.pages_p50),
            ),
            ("link_rtt_p50_us", opt_num(self.diverge.rtt_p50_us)),
            ("lone_out_busy", opt_share(lone_cpu.out_busy)),
            ("pair_out_busy", opt_share(pair_cpu.out_busy)),
            ("lone_in_busy", opt_share(lone_cpu.in_busy)),
            ("pair_in_busy", opt_share(pair_cpu.in_busy)),
            ("latency_p50_ratio", fmt_ratio(ratio(pair50, lone50))),
            ("latency_p99_ratio", fmt_ratio(ratio(pair99, lone99))),
            (
                "throughput_ratio",
                fmt_ratio(ratio(self.pair.out_rate(), self.lone.out_rate())),
            ),
            (
                "throughput_in_ratio",
                fmt_ratio(ratio(self.pair.in_rate(), self.lone.in_rate())),
            ),
            ("failover_next_reply_ms", ms(self.failover.next_reply)),
        ]
    }
}

impl BenchReport {
    /// The `NONCE` latency, if any was measured.
    fn diverge_latency(&self) -> Option<&Percentiles> {
        (self.diverge.latency.count > 0).then_some(&self.diverge.latency)
    }
}

/// A whole number, or `nan` when it was not measured.
fn opt_num(v: Option<u64>) -> String {
    v.map_or_else(|| "nan".to_string(), |v| v.to_string())
}

/// A share of the host's cores (two decimals), or `nan`.
fn opt_share(v: Option<f64>) -> String {
    v.map_or_else(|| "nan".to_string(), |v| format!("{v:.2}"))
}

/// Megabits per second, one decimal.
fn mbps(bytes_per_s: f64) -> String {
    format!("{:.1}", bytes_per_s * 8.0 / 1e6)
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "nan".to_string()
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |f: &mut std::fmt::Formatter<'_>, name: &str, s: &SideFigures| {
            writeln!(
                f,
                "  {name:<9} latency {}; guest->client {} Mbit/s ({} bytes in {:.3} s); client->guest {} Mbit/s ({} bytes in {:.3} s)",
                s.latency,
                mbps(s.out_rate()),
                s.out_bytes,
                s.out_time.as_secs_f64(),
                mbps(s.in_rate()),
                s.in_bytes,
                s.in_time.as_secs_f64()
            )
        };
        writeln!(f, "colo bench: OK")?;
        side(f, "lone VM:", &self.lone)?;
        side(f, "pair:", &self.pair)?;
        let cpu = |f: &mut std::fmt::Formatter<'_>, name: &str, s: &SideFigures| {
            let c = s.cpu_figures(self.cores);
            let ms = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |v| format!("{v:.1}"));
            let pct =
                |v: Option<f64>| v.map_or_else(|| "?".to_string(), |v| format!("{:.0}", v * 100.0));
            writeln!(
                f,
                "  {name:<9} host CPU {} ms per MiB guest->client ({} % of {} cores busy), {} ms per MiB client->guest ({} %)",
                ms(c.out_ms_per_mib),
                pct(c.out_busy),
                self.cores,
                ms(c.in_ms_per_mib),
                pct(c.in_busy)
            )
        };
        cpu(f, "lone VM:", &self.lone)?;
        cpu(f, "pair:", &self.pair)?;
        for (name, s) in [("lone VM", &self.lone), ("pair", &self.pair)] {
            for (what, phase, wall) in [
                ("guest->client", &s.out_cpu, s.out_time),
                ("client->guest", &s.in_cpu, s.in_time),
            ] {
                if let Some(phase) = phase {
                    writeln!(
                        f,
                        "    {name} {what}, busiest threads (100 % = one core): {}",
                        phase.top(6, wall)
                    )?;
                }
            }
        }
        let reasons: Vec<String> = self
            .checkpoints
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        writeln!(
            f,
            "  checkpoints while the client ran against the pair: {}",
            if reasons.is_empty() {
                "none".to_string()
            } else {
                reasons.join(", ")
            }
        )?;
        self.fmt_diverge(f)?;
        let ms = |d: Option<Duration>| {
            d.map_or("not seen".to_string(), |d| format!("{} ms", d.as_millis()))
        };
        writeln!(
            f,
            "  failover: primary SIGKILL -> detection (peer-lost) {} -> takeover (failed-over) {} -> the client's next reply {:.1} ms (INCR {} before, {} after: no write lost or repeated); the client's longest wait {:.1} ms; the primary's sockets closed {}, the process reaped {}",
            ms(self.failover.detected),
            ms(self.failover.took_over),
            self.failover.next_reply.as_secs_f64() * 1e3,
            self.failover.around_kill.0,
            self.failover.around_kill.1,
            self.failover.stall.as_secs_f64() * 1e3,
            ms(self.failover.dead),
            ms(self.failover.reaped)
        )?;
        writeln!(
            f,
            "  secondary SIGKILL -> the primary's peer-lost {} ; the client's longest stall {} ms ({} replies after the kill, the count unbroken)",
            ms(self.secondary_kill.detected),
            self.secondary_kill.stall.as_millis(),
            self.secondary_kill.replies_after
        )?;
        let lines: Vec<String> = self
            .key_values()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{}", lines.join("\n"))
    }
}

impl BenchReport {
    /// The differing replies' lines of the table.
    fn fmt_diverge(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.diverge;
        let us = |v: Option<u64>| v.map_or("not seen".to_string(), |v| format!("{v} us"));
        let reasons: Vec<String> = d.reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        writeln!(
            f,
            "  differing replies (NONCE, each forcing a checkpoint: {}): latency {}",
            if reasons.is_empty() {
                "none".to_string()
            } else {
                reasons.join(", ")
            },
            d.latency
        )?;
        writeln!(
            f,
            "    the goal's bound: lone median {} us + PVM pause median {} us ({} pages median) + link round trip median {} = {}",
            self.lone.latency.median_us,
            d.pause.median_us,
            opt_num(d.pages_p50),
            us(d.rtt_p50_us),
            us(d.bound_us(self.lone.latency.median_us))
        )?;
        for (part, v) in &d.parts {
            writeln!(f, "    {:>9}  {part}", us(*v))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(p50: u64, p99: u64, out: (u64, u64), inn: (u64, u64)) -> SideFigures {
        SideFigures {
            latency: Percentiles {
                count: 100,
                median_us: p50,
                p99_us: p99,
                max_us: p99,
            },
            out_bytes: out.0,
            out_time: Duration::from_millis(out.1),
            in_bytes: inn.0,
            in_time: Duration::from_millis(inn.1),
            out_cpu: None,
            in_cpu: None,
        }
    }

    #[test]
    fn cpu_figures_are_per_mib_and_a_share_of_the_cores() {
        // 8 MiB out in 1 s using 1.5 s of CPU on 2 cores; nothing known for the SINK.
        let s = SideFigures {
            out_cpu: Some(super::super::PhaseCpu {
                total: Duration::from_millis(1500),
                threads: Vec::new(),
            }),
            ..side(100, 100, (8 << 20, 1000), (4 << 20, 500))
        };
        let c = s.cpu_figures(2);
        assert_eq!(c.out_ms_per_mib, Some(187.5));
        assert_eq!(c.out_busy, Some(0.75));
        assert_eq!((c.in_ms_per_mib, c.in_busy), (None, None));
        let report = BenchReport {
            pair: s,
            cores: 2,
            ..BenchReport::default()
        };
        assert_eq!(value(&report, "pair_out_busy"), "0.75");
        assert_eq!(value(&report, "pair_in_busy"), "nan");
        assert_eq!(value(&report, "lone_out_busy"), "nan", "nothing measured");
    }

    fn value(report: &BenchReport, key: &str) -> String {
        report
            .key_values()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {key}"))
    }

    #[test]
    fn ratios_are_the_pair_over_the_lone_vm() {
        let report = BenchReport {
            lone: side(100, 400, (10_000_000, 1000), (4_000_000, 1000)),
            pair: side(150, 1000, (8_000_000, 1000), (4_000_000, 2000)),
            failover: FailoverFigures {
                next_reply: Duration::from_micros(123_450),
                ..FailoverFigures::default()
            },
            ..BenchReport::default()
        };
        assert_eq!(value(&report, "latency_p50_ratio"), "1.50");
        assert_eq!(value(&report, "latency_p99_ratio"), "2.50");
        assert_eq!(value(&report, "throughput_ratio"), "0.80");
        assert_eq!(value(&report, "throughput_in_ratio"), "0.50");
        assert_eq!(value(&report, "lone_out_mbps"), "80.0");
        assert_eq!(value(&report, "failover_next_reply_ms"), "123.5");
        assert_eq!(value(&report, "failover_detect_ms"), "nan");
    }

    #[test]
    fn a_figure_not_measured_gives_nan_not_a_number() {
        let report = BenchReport::default();
        assert_eq!(value(&report, "latency_p50_ratio"), "nan");
        assert_eq!(value(&report, "throughput_ratio"), "nan");
    }

    #[test]
    fn the_differing_replys_keys_come_before_the_ratios_and_read_nan_unmeasured() {
        let keys: Vec<&str> = BenchReport::default()
            .key_values()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let at = |k: &str| keys.iter().position(|x| *x == k).expect(k);
        assert!(at("peer_lost_before_kill") < at("diverge_p50_us"));
        assert!(at("link_rtt_p50_us") < at("latency_p50_ratio"));
        let report = BenchReport::default();
        for key in [
            "diverge_p50_us",
            "diverge_bound_us",
            "checkpoint_pause_p50_us",
            "checkpoint_pause_pages_p50",
            "link_rtt_p50_us",
        ] {
            assert_eq!(value(&report, key), "nan", "{key}");
        }
    }

    #[test]
    fn the_output_ends_with_the_scripts_keys_in_order() {
        let text = BenchReport::default().to_string();
        let last: Vec<&str> = text
            .lines()
            .rev()
            .take(5)
            .map(|l| l.split('=').next().unwrap())
            .collect();
        assert_eq!(
            last,
            [
                "failover_next_reply_ms",
                "throughput_in_ratio",
                "throughput_ratio",
                "latency_p99_ratio",
                "latency_p50_ratio"
            ]
        );
    }
}
