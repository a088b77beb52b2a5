//! An operator's view of a running pair on real KVM over loopback: the Prometheus endpoint
//! (`--metrics-listen`) scraped with curl while the pair runs, whose counters move between
//! two scrapes; the JSON log lines (`--log-format json`), each a JSON object with the event's
//! typed fields; `--log-level` / `RUST_LOG` choosing the events; and `colo status`'s human
//! table next to its `--json` form.

mod common;

use colo_runtime::pair::events::Milestone;
use common::procs::{Procs, args, free_addr};
use std::time::Duration;

/// `curl -sf http://ADDR/metrics`: the body (a real HTTP client, as Prometheus would be).
fn scrape(addr: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-f",
            "--max-time",
            "10",
            &format!("http://{addr}/metrics"),
        ])
        .output()
        .expect("curl must be installed (scripts/test-all.sh installs it)");
    assert!(
        out.status.success(),
        "curl {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the exposition format is UTF-8")
}

/// The value of the first sample whose series starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let rest = l.strip_prefix(series)?;
            let value = rest.rsplit(' ').next()?;
            value.parse().ok()
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Starts an arbiter, a JSON-logging primary and a human-logging secondary, both serving
/// metrics; returns (procs, primary index, secondary index, primary metrics, secondary
/// metrics, primary control socket).
fn start_pair() -> (Procs, usize, usize, String, String, String) {
    let (arbiter, peer) = (free_addr(), free_addr());
    let (p_metrics, s_metrics) = (free_addr(), free_addr());
    let p_ctl = common::control_path();
    let mut procs = Procs::new();
    let a = procs.spawn(&args(&["arbiter", "--listen", &arbiter]));
    procs.wait_until(Duration::from_secs(10), a, |m| {
        matches!(m, Milestone::Listening { .. })
    });
    let p = procs.spawn(&args(&[
        "--log-format",
        "json",
        "primary",
        "--listen",
        &peer,
        "--arbiter",
        &arbiter,
        "--checkpoint-interval-ms",
        "200",
        // A patient heartbeat (2 s): a loaded machine must not fail the pair over mid-test.
        "--heartbeat-misses",
        "20",
        "--metrics-listen",
        &p_metrics,
        "--control",
        &p_ctl,
    ]));
    let s = procs.spawn(&args(&[
        "secondary",
        "--peer",
        &peer,
        "--arbiter",
        &arbiter,
        "--heartbeat-misses",
        "20",
        "--metrics-listen",
        &s_metrics,
    ]));
    (procs, p, s, p_metrics, s_metrics, p_ctl)
}

/// The next JSON event of child `who` whose message is `message`, parsed.
fn json_event(procs: &mut Procs, who: usize, message: &str) -> serde_json::Value {
    let want = format!("\"message\":\"{message}\"");
    let line = procs.wait_for(Duration::from_secs(60), |w, l| {
        w == who && l.contains(&want)
    });
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn metrics_move_between_scrapes_and_json_logs_carry_typed_fields() {
    if !common::kvm_available("metrics_move_between_scrapes_and_json_logs_carry_typed_fields") {
        return;
    }
    let (mut procs, p, s, p_metrics, s_metrics, p_ctl) = start_pair();

    // Every line the JSON node writes is one JSON object; its checkpoint events carry the
    // figures as numbers.
    let done = json_event(&mut procs, p, "checkpoint-done");
    assert_eq!(done["role"], "primary", "{done}");
    assert_eq!(done["level"], "INFO", "{done}");
    assert!(done["timestamp"].is_string(), "{done}");
    for key in ["epoch", "pause_us", "pages", "bytes", "step"] {
        assert!(done[key].is_u64(), "{key} is not a number: {done}");
    }
    assert!(done["reason"].is_string(), "{done}");
    let first_epoch = done["epoch"].as_u64().unwrap();

    // The node's gauges (mode, link, term) are copied from its status at most every 100 ms:
    // the first scrape right after the first checkpoint may still show the pairing's start.
    let paired = "colo_mode{role=\"primary\",mode=\"Paired\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let p1 = loop {
        let p1 = scrape(&p_metrics);
        if sample(&p1, paired) == 1.0 || std::time::Instant::now() > deadline {
            break p1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let s1 = loop {
        let s1 = scrape(&s_metrics);
        let done = sample(&s1, "colo_sync_done_bytes{role=\"secondary\"}");
        let total = sample(&s1, "colo_sync_total_bytes{role=\"secondary\"}");
        if (total > 0.0 && done == total) || std::time::Instant::now() > deadline {
            break s1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let series = |role: &str, name: &str| format!("colo_{name}{{role=\"{role}\"}}");
    let done1 = sample(&p1, &series("primary", "checkpoint_pause_seconds_count"));
    let bytes1 = sample(&p1, &series("primary", "checkpoint_bytes_sum"));
    let applied1 = sample(&s1, &series("secondary", "checkpoints_applied_total"));
    // The secondary counted the copy it stored up to its end.
    assert_eq!(
        sample(&s1, &series("secondary", "sync_done_bytes")),
        sample(&s1, &series("secondary", "sync_total_bytes")),
        "{s1}"
    );
    assert!(
        sample(&s1, &series("secondary", "sync_total_bytes")) > 0.0,
        "{s1}"
    );
    assert!(done1 >= 1.0, "{p1}");
    assert_eq!(sample(&p1, &series("primary", "term")), 1.0, "{p1}");
    assert_eq!(
        sample(&p1, "colo_mode{role=\"primary\",mode=\"Paired\"}"),
        1.0,
        "{p1}"
    );
    assert_eq!(sample(&p1, &series("primary", "peer_link_up")), 1.0, "{p1}");
    assert_eq!(sample(&p1, &series("primary", "syncs_total")), 1.0, "{p1}");
    assert!(
        sample(&p1, &series("primary", "sync_memory_bytes")) > 0.0,
        "{p1}"
    );
    assert_eq!(
        sample(&p1, &series("primary", "sync_done_bytes")),
        sample(&p1, &series("primary", "sync_total_bytes")),
        "{p1}"
    );
    assert!(
        sample(&p1, "colo_checkpoints_total{role=\"primary\",reason=\"") >= 1.0,
        "{p1}"
    );

    // Three more checkpoints later every per-checkpoint series has moved on both nodes.
    loop {
        let next = json_event(&mut procs, p, "checkpoint-done");
        if next["epoch"].as_u64().unwrap() >= first_epoch + 3 {
            break;
        }
    }
    procs.wait_until(Duration::from_secs(30), s, |m| {
        matches!(m, Milestone::CheckpointApplied { .. })
    });
    // Mirrored counters are refreshed every 100 ms by the loop.
    std::thread::sleep(Duration::from_millis(300));
    let p2 = scrape(&p_metrics);
    let s2 = scrape(&s_metrics);
    assert!(
        sample(&p2, &series("primary", "checkpoint_pause_seconds_count")) >= done1 + 3.0,
        "{p1}\n---\n{p2}"
    );
    assert!(
        sample(&p2, &series("primary", "checkpoint_bytes_sum")) > bytes1,
        "{p2}"
    );
    assert!(
        sample(&s2, &series("secondary", "checkpoints_applied_total")) > applied1,
        "{s1}\n---\n{s2}"
    );
    assert!(
        sample(&p2, &series("primary", "epoch")) >= (first_epoch + 3) as f64,
        "{p2}"
    );
    assert!(sample(&p2, &series("primary", "guest_step")) > 0.0, "{p2}");
    // Between checkpoints the link idles and heartbeats go out: their echoes are timed.
    let echoes = sample(
        &p2,
        &series("primary", "heartbeat_round_trip_seconds_count"),
    ) + sample(
        &s2,
        &series("secondary", "heartbeat_round_trip_seconds_count"),
    );
    assert!(echoes >= 1.0, "{p2}\n---\n{s2}");

    // `colo status`: a short human table; `--json` the machine form.
    let table = std::process::Command::new(common::procs::COLO)
        .args(["status", "--control", &p_ctl])
        .output()
        .expect("running colo status");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    for row in [
        "role",
        "mode",
        "term",
        "epoch",
        "peer",
        "last checkpoint",
        "last failover",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(row)),
            "no `{row}` row in:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("mode") && l.contains("Paired")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("last failover") && l.contains("none")),
        "{text}"
    );
    let json = std::process::Command::new(common::procs::COLO)
        .args(["status", "--control", &p_ctl, "--json"])
        .output()
        .expect("running colo status --json");
    let v: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("colo status --json prints one JSON object");
    assert_eq!(v["mode"], "Paired", "{v}");
    assert_eq!(v["term"], 1, "{v}");

    // Any other path is a 404, not a crash of the endpoint.
    let missing = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{p_metrics}/nope"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
    assert!(scrape(&p_metrics).contains("colo_term"));
}

/// `colo arbiter` for a moment with `log_args` before the subcommand and `env`; its stderr.
fn arbiter_stderr(log_args: &[&str], env: Option<(&str, &str)>) -> String {
    let key = common::procs::TestKey::new();
    let mut command = std::process::Command::new(common::procs::COLO);
    command
        .args(log_args)
        .args(["arbiter", "--listen", "127.0.0.1:0", "--run-for", "0.3"])
        .args(["--key-file", key.path()]);
    command.env_remove("RUST_LOG");
    if let Some((k, v)) = env {
        command.env(k, v);
    }
    let out = command.output().expect("running colo arbiter");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn log_level_and_rust_log_choose_the_events_and_the_flag_wins() {
    assert!(arbiter_stderr(&[], None).contains("arbiter: listening on 127.0.0.1:"));
    assert!(!arbiter_stderr(&["--log-level", "warn"], None).contains("listening"));
    assert!(!arbiter_stderr(&[], Some(("RUST_LOG", "warn"))).contains("listening"));
    assert!(
        arbiter_stderr(&["--log-level", "info"], Some(("RUST_LOG", "warn")))
            .contains("arbiter: listening on")
    );
    // Every line is a JSON event (an arbiter without --state warns first).
    let json = arbiter_stderr(&["--log-format", "json"], None);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let listening = events
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on"))
        })
        .unwrap_or_else(|| panic!("no listening event in {json}"));
    assert_eq!(listening["role"], "arbiter", "{listening}");
    assert_eq!(listening["level"], "INFO", "{listening}");
}

#[test]
fn a_bad_log_level_is_a_clear_error() {
    let out = std::process::Command::new(common::procs::COLO)
        .args([
            "--log-level",
            "loud=[",
            "config",
            "check",
            "/nonexistent.toml",
        ])
        .output()
        .expect("running colo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("colo: --log-level"), "{err}");
}

#[test]
fn a_busy_metrics_address_is_a_clear_error() {
    if !common::kvm_available("a_busy_metrics_address_is_a_clear_error") {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let key = common::procs::TestKey::new();
    let out = std::process::Command::new(common::procs::COLO)
        .args([
            "primary",
            "--listen",
            &free_addr(),
            "--arbiter",
            &free_addr(),
            "--key-file",
            key.path(),
            "--control",
            &common::control_path(),
            "--metrics-listen",
            &addr,
        ])
        .output()
        .expect("running colo primary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--metrics-listen {addr}: cannot listen")),
        "{err}"
    );
}
