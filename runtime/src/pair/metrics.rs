//! A node's Prometheus metrics: the registry ([`NodeMetrics`]) and the HTTP endpoint that
//! serves it in the text exposition format (`--metrics-listen ADDR`, `GET /metrics`).
//!
//! Two kinds of metric live here. Per-event ones the node loop observes as events happen
//! (checkpoints by reason, the pause / bytes / pages histograms, miscompares by reason, the
//! arbiter's lease round trip). Mirrored ones are counters and gauges the core's `Node` and
//! the loop's devices already keep (frames held and released, failovers, re-protections,
//! term, lease, disk writes forwarded, ...): [`NodeMetrics::mirror`] copies a [`Mirror`]
//! snapshot of them into the registry, so nothing is counted twice. Invariant: the loop is
//! the only writer; the HTTP thread only reads (encodes) the registry, and a scrape never
//! blocks the loop beyond the atomics each metric is made of.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{info, warn};

/// Labels of a family: one `(name, value)` pair.
type Label = Vec<(&'static str, String)>;

/// The values the node and its devices count themselves, copied into the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    /// The node's term.
    pub term: u64,
    /// Primary: the last completed checkpoint; secondary: the last applied.
    pub epoch: u64,
    /// Whether the fencing lease is held.
    pub lease_held: bool,
    /// Whether the peer link is up.
    pub link_up: bool,
    /// The node's mode (`Paired`, `Solo`, ...): exported as a gauge that is 1 for this mode.
    pub mode: &'static str,
    /// Frames released to clients.
    pub frames_released: u64,
    /// Frames put on hold.
    pub frames_held: u64,
    /// Frames held right now.
    pub frames_held_now: u64,
    /// Takeovers (failovers) this node made.
    pub failovers: u64,
    /// Re-protections this node completed.
    pub reprotections: u64,
    /// Peer messages refused as protocol errors.
    pub protocol_errors: u64,
    /// Guest disk writes on this node.
    pub disk_guest_writes: u64,
    /// Bytes of guest writes forwarded to the peer.
    pub disk_forwarded_bytes: u64,
    /// Forwarded writes received from the peer.
    pub disk_peer_writes: u64,
    /// The guest's workload step (test guest), 0 otherwise.
    pub guest_step: u64,
}

/// Every mode name the mode gauge family carries (one series each, so a dashboard sees a
/// mode go to 0 as well as to 1).
pub const MODES: [&str; 9] = [
    "Idle",
    "Connecting",
    "Syncing",
    "Paired",
    "TakingOver",
    "Solo",
    "Reprotecting",
    "Deposed",
    "Stopped",
];

/// A node's metrics registry and the handles the loop updates.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    checkpoints: Family<Label, Counter>,
    applied: Counter,
    pause: Histogram,
    bytes: Histogram,
    pages: Histogram,
    miscompares: Family<Label, Counter>,
    lease_round_trip: Histogram,
    heartbeat_round_trip: Histogram,
    sync_memory_bytes: Gauge,
    sync_disk_bytes: Gauge,
    sync_done_bytes: Gauge,
    sync_total_bytes: Gauge,
    syncs: Counter,
    term: Gauge,
    epoch: Gauge,
    lease_held: Gauge,
    link_up: Gauge,
    mode: Family<Label, Gauge>,
    frames_released: Counter,
    frames_held: Counter,
    frames_held_now: Gauge,
    failovers: Counter,
    reprotections: Counter,
    protocol_errors: Counter,
    disk_guest_writes: Counter,
    disk_forwarded_bytes: Counter,
    disk_peer_writes: Counter,
    guest_step: Gauge,
}

impl NodeMetrics {
    /// A registry for the node named `role` (a constant `role` label on every series).
    pub fn new(role: &'static str) -> NodeMetrics {
        let mut registry =
            Registry::with_prefix_and_labels("colo", [("role".into(), role.into())].into_iter());
        let m = NodeMetrics {
            registry: Registry::default(),
            checkpoints: Family::default(),
            applied: Counter::default(),
            // 100 us .. ~3.3 s.
            pause: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 4 KiB .. 512 MiB.
            bytes: Histogram::new(exponential_buckets(4096.0, 4.0, 14)),
            // 1 .. 2^26 pages.
            pages: Histogram::new(exponential_buckets(1.0, 4.0, 14)),
            miscompares: Family::default(),
            // 100 us .. ~3.3 s.
            lease_round_trip: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            heartbeat_round_trip: Histogram::new(exponential_buckets(0.00001, 2.0, 18)),
            sync_memory_bytes: Gauge::default(),
            sync_disk_bytes: Gauge::default(),
            sync_done_bytes: Gauge::default(),
            sync_total_bytes: Gauge::default(),
            syncs: Counter::default(),
            term: Gauge::default(),
            epoch: Gauge::default(),
            lease_held: Gauge::default(),
            link_up: Gauge::default(),
            mode: Family::default(),
            frames_released: Counter::default(),
            frames_held: Counter::default(),
            frames_held_now: Gauge::default(),
            failovers: Counter::default(),
            reprotections: Counter::default(),
            protocol_errors: Counter::default(),
            disk_guest_writes: Counter::default(),
            disk_forwarded_bytes: Counter::default(),
            disk_peer_writes: Counter::default(),
            guest_step: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "checkpoints",
            "Checkpoints completed (primary), by reason",
            m.checkpoints.clone(),
        );
        r.register(
            "checkpoints_applied",
            "Checkpoints applied (secondary)",
            m.applied.clone(),
        );
        r.register(
            "checkpoint_pause_seconds",
            "PVM pause per checkpoint (primary) or apply pause (secondary)",
            m.pause.clone(),
        );
        r.register(
            "checkpoint_bytes",
            "Bulk bytes (pages and device state) per checkpoint",
            m.bytes.clone(),
        );
        r.register(
            "checkpoint_pages",
            "Dirty pages per checkpoint",
            m.pages.clone(),
        );
        r.register(
            "miscompares",
            "Output miscompares between the two VMs, by reason",
            m.miscompares.clone(),
        );
        r.register(
            "lease_round_trip_seconds",
            "Arbiter lease request to reply",
            m.lease_round_trip.clone(),
        );
        r.register(
            "heartbeat_round_trip_seconds",
            "Peer heartbeat to its echo (heartbeats go out on an idle link; sampled at most every 100 ms)",
            m.heartbeat_round_trip.clone(),
        );
        r.register(
            "sync_memory_bytes",
            "Guest memory bytes copied by the last initial copy or re-protection (zero pages included)",
            m.sync_memory_bytes.clone(),
        );
        r.register(
            "sync_disk_bytes",
            "Disk bytes sent by the last initial copy or re-protection",
            m.sync_disk_bytes.clone(),
        );
        r.register(
            "sync_done_bytes",
            "Bytes of the current (or last) initial copy through so far (sent, or stored by a secondary)",
            m.sync_done_bytes.clone(),
        );
        r.register(
            "sync_total_bytes",
            "Bytes the current (or last) initial copy sends in all",
            m.sync_total_bytes.clone(),
        );
        r.register(
            "syncs",
            "Initial copies sent (pairings and re-protections)",
            m.syncs.clone(),
        );
        r.register("term", "The node's current term", m.term.clone());
        r.register(
            "epoch",
            "Last completed (primary) or applied (secondary) checkpoint",
            m.epoch.clone(),
        );
        r.register(
            "lease_held",
            "1 while the fencing lease is held",
            m.lease_held.clone(),
        );
        r.register(
            "peer_link_up",
            "1 while the peer link is up",
            m.link_up.clone(),
        );
        r.register("mode", "1 for the node's current mode", m.mode.clone());
        r.register(
            "frames_released",
            "Guest frames released to clients",
            m.frames_released.clone(),
        );
        r.register(
            "frames_held",
            "Guest frames put on hold until a checkpoint",
            m.frames_held.clone(),
        );
        r.register(
            "frames_held_now",
            "Guest frames held right now",
            m.frames_held_now.clone(),
        );
        r.register("failovers", "Takeovers this node made", m.failovers.clone());
        r.register(
            "reprotections",
            "Re-protections this node completed",
            m.reprotections.clone(),
        );
        r.register(
            "protocol_errors",
            "Peer messages refused as protocol errors",
            m.protocol_errors.clone(),
        );
        r.register(
            "disk_guest_writes",
            "Guest disk writes on this node",
            m.disk_guest_writes.clone(),
        );
        r.register(
            "disk_forwarded_bytes",
            "Bytes of guest disk writes forwarded to the peer",
            m.disk_forwarded_bytes.clone(),
        );
        r.register(
            "disk_peer_writes",
            "Forwarded disk writes received from the peer",
            m.disk_peer_writes.clone(),
        );
        r.register(
            "guest_step",
            "The test guest's workload step",
            m.guest_step.clone(),
        );
        for mode in MODES {
            let _ = m.mode.get_or_create(&vec![("mode", mode.to_string())]);
        }
        NodeMetrics { registry, ..m }
    }

    /// A checkpoint completed on the primary.
    pub fn on_checkpoint_done(&self, reason: &str, pause_s: f64, pages: u64, bytes: u64) {
        self.checkpoints
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
        self.observe_checkpoint(pause_s, pages, bytes);
    }

    /// A checkpoint was applied on the secondary.
    pub fn on_checkpoint_applied(&self, pause_s: f64, pages: u64, bytes: u64) {
        self.applied.inc();
        self.observe_checkpoint(pause_s, pages, bytes);
    }

    fn observe_checkpoint(&self, pause_s: f64, pages: u64, bytes: u64) {
        self.pause.observe(pause_s);
        self.pages.observe(pages as f64);
        self.bytes.observe(bytes as f64);
    }

    /// The comparator found the VMs' outputs different.
    pub fn on_miscompare(&self, reason: &str) {
        self.miscompares
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// An arbiter reply arrived this long after its request.
    pub fn on_lease_reply(&self, round_trip_s: f64) {
        self.lease_round_trip.observe(round_trip_s);
    }

    /// A heartbeat's echo came back after `round_trip_s` seconds.
    pub fn on_heartbeat_round_trip(&self, round_trip_s: f64) {
        self.heartbeat_round_trip.observe(round_trip_s);
    }

    /// An initial copy is under way: `sent` of `total` bytes are out (scrapes during the copy
    /// see it move: the HTTP thread reads while the loop sends).
    pub fn on_sync_progress(&self, sent: u64, total: u64) {
        self.sync_done_bytes.set(sent as i64);
        self.sync_total_bytes.set(total as i64);
    }

    /// An initial copy (pairing or re-protection) was sent.
    pub fn on_sync_sent(&self, memory_bytes: u64, disk_bytes: u64) {
        self.syncs.inc();
        self.sync_memory_bytes.set(memory_bytes as i64);
        self.sync_disk_bytes.set(disk_bytes as i64);
    }

    /// Copies the node's own counters into the registry.
    pub fn mirror(&self, m: &Mirror) {
        let set = |c: &Counter, v: u64| c.inner().store(v, Ordering::Relaxed);
        self.term.set(m.term as i64);
        self.epoch.set(m.epoch as i64);
        self.lease_held.set(i64::from(m.lease_held));
        self.link_up.set(i64::from(m.link_up));
        for mode in MODES {
            self.mode
                .get_or_create(&vec![("mode", mode.to_string())])
                .set(i64::from(mode == m.mode));
        }
        set(&self.frames_released, m.frames_released);
        set(&self.frames_held, m.frames_held);
        self.frames_held_now.set(m.frames_held_now as i64);
        set(&self.failovers, m.failovers);
        set(&self.reprotections, m.reprotections);
        set(&self.protocol_errors, m.protocol_errors);
        set(&self.disk_guest_writes, m.disk_guest_writes);
        set(&self.disk_forwarded_bytes, m.disk_forwarded_bytes);
        set(&self.disk_peer_writes, m.disk_peer_writes);
        self.guest_step.set(m.guest_step as i64);
    }

    /// The registry in the text exposition format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Why the metrics endpoint cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServeError {
    /// The address cannot be listened on.
    #[error("--metrics-listen {addr}: cannot listen: {why}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why (the HTTP server's error).
        why: String,
    },
    /// The bound address is not an IP address.
    #[error("--metrics-listen {addr}: not an IP address")]
    NotIp {
        /// The address.
        addr: SocketAddr,
    },
    /// The content type header is malformed (a bug).
    #[error("a malformed Content-Type header")]
    Header,
    /// The serving thread cannot be started.
    #[error("cannot start the metrics server: {0}")]
    Thread(std::io::Error),
}

/// Serves `metrics` at `http://ADDR/metrics` on a thread of its own; returns the bound
/// address (port 0 picks one). Any other path is a 404.
pub fn serve(
    addr: SocketAddr,
    role: &'static str,
    metrics: Arc<NodeMetrics>,
) -> Result<SocketAddr, MetricsServeError> {
    let server = tiny_http::Server::http(addr).map_err(|e| MetricsServeError::Listen {
        addr,
        why: e.to_string(),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or(MetricsServeError::NotIp { addr })?;
    let content_type = tiny_http::Header::from_bytes(
        "Content-Type",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .map_err(|()| MetricsServeError::Header)?;
    std::thread::Builder::new()
        .name("colo-metrics".to_string())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    tiny_http::Response::from_string(metrics.encode())
                        .with_header(content_type.clone())
                } else {
                    tiny_http::Response::from_string("not found: try /metrics\n")
                        .with_status_code(404)
                };
                if let Err(e) = request.respond(response) {
                    warn!(role, "metrics: answering a scrape failed: {e}");
                }
            }
        })
        .map_err(MetricsServeError::Thread)?;
    info!(role, listen = %bound, "metrics-listening");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn events_and_mirrored_counters_appear_in_the_text_format() {
        let m = NodeMetrics::new("primary");
        m.on_checkpoint_done("Periodic", 0.002, 10, 40960);
        m.on_checkpoint_done("Periodic", 0.003, 12, 49152);
        m.on_checkpoint_done("Forced", 0.001, 1, 4096);
        m.on_miscompare("BytesDiffer");
        m.mirror(&Mirror {
            term: 2,
            mode: "Paired",
            frames_released: 7,
            lease_held: true,
            ..Mirror::default()
        });
        let text = m.encode();
        let get = |s: &str| value(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
        assert_eq!(
            get(r#"colo_checkpoints_total{role="primary",reason="Periodic"}"#),
            2.0
        );
        assert_eq!(
            get(r#"colo_checkpoints_total{role="primary",reason="Forced"}"#),
            1.0
        );
        assert_eq!(
            get(r#"colo_checkpoint_pause_seconds_count{role="primary"}"#),
            3.0
        );
        assert_eq!(get(r#"colo_checkpoint_pages_sum{role="primary"}"#), 23.0);
        assert_eq!(
            get(r#"colo_miscompares_total{role="primary",reason="BytesDiffer"}"#),
            1.0
        );
        assert_eq!(get(r#"colo_frames_released_total{role="primary"}"#), 7.0);
        assert_eq!(get(r#"colo_term{role="primary"}"#), 2.0);
        assert_eq!(get(r#"colo_lease_held{role="primary"}"#), 1.0);
        assert_eq!(get(r#"colo_mode{role="primary",mode="Paired"}"#), 1.0);
        assert_eq!(get(r#"colo_mode{role="primary",mode="Solo"}"#), 0.0);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
