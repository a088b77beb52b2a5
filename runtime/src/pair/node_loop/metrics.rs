//! The node loop's side of the Prometheus metrics (`crate::pair::metrics`): it observes the node's
//! events (checkpoints, miscompares), times the arbiter's lease round trips, and mirrors the
//! counters the node and the loop's devices keep into the registry at most every
//! [`MIRROR_EVERY`], so a scrape sees values at most that old.
//!
//! Invariant: only this thread writes the metrics; the HTTP thread (started here when the
//! node has `metrics_listen`) only reads them.

use super::NodeLoop;
use crate::pair::metrics::{Mirror, NodeMetrics};
use colo_core::checkpoint::CheckpointEvent;
use colo_core::failover::LeaseRequestId;
use colo_core::node::Event;
use colo_core::time::{Duration, Instant};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// How stale a scraped mirrored counter may be.
const MIRROR_EVERY: Duration = Duration::from_millis(100);

/// Lease requests older than this without a reply are forgotten (the node re-asks).
const LEASE_FORGET: Duration = Duration::from_secs(30);

/// The loop's metrics state.
#[derive(Debug)]
pub(super) struct LoopMetrics {
    /// The registry (shared with the HTTP thread).
    pub(super) registry: Arc<NodeMetrics>,
    /// When each outstanding lease request went out.
    lease_sent: HashMap<u64, Instant>,
    last_mirror: Option<Instant>,
    /// Heartbeat round trips already observed (the node counts them).
    heartbeat_round_trips: u64,
}

impl LoopMetrics {
    /// The metrics of the node named `role`, served at `listen` if given.
    pub(super) fn new(
        role: &'static str,
        listen: Option<SocketAddr>,
    ) -> Result<LoopMetrics, crate::pair::metrics::MetricsServeError> {
        let registry = Arc::new(NodeMetrics::new(role));
        if let Some(addr) = listen {
            crate::pair::metrics::serve(addr, role, registry.clone())?;
        }
        Ok(LoopMetrics {
            registry,
            lease_sent: HashMap::new(),
            last_mirror: None,
            heartbeat_round_trips: 0,
        })
    }

    pub(super) fn on_lease_request(&mut self, id: LeaseRequestId, now: Instant) {
        self.lease_sent
            .retain(|_, sent| now.saturating_duration_since(*sent) < LEASE_FORGET);
        self.lease_sent.insert(id.0, now);
    }

    pub(super) fn on_lease_reply(&mut self, id: LeaseRequestId, now: Instant) {
        if let Some(sent) = self.lease_sent.remove(&id.0) {
            let rtt = now.saturating_duration_since(sent);
            self.registry.on_lease_reply(rtt.as_micros() as f64 / 1e6);
        }
    }
}

impl NodeLoop {
    /// Observes one node event.
    pub(super) fn metrics_on_event(&self, event: &Event) {
        let m = &self.metrics.registry;
        match event {
            Event::Checkpoint(CheckpointEvent::CheckpointDone {
                reason,
                pause,
                pages,
                bytes,
                ..
            }) => m.on_checkpoint_done(
                reason.as_str(),
                pause.as_micros() as f64 / 1e6,
                *pages,
                *bytes,
            ),
            Event::Checkpoint(CheckpointEvent::CheckpointApplied {
                pause,
                pages,
                bytes,
                ..
            }) => m.on_checkpoint_applied(pause.as_micros() as f64 / 1e6, *pages, *bytes),
            Event::Miscompare { why, .. } => {
                // The variant's name (`TcpPayload`, `LengthDiffers`, ...), not its data.
                let reason = format!("{:?}", why.reason);
                let name = reason
                    .split(|c: char| !c.is_alphanumeric())
                    .next()
                    .unwrap_or("Unknown");
                m.on_miscompare(name);
            }
            _ => {}
        }
    }

    /// Copies the node's and the devices' counters into the registry (rate-limited).
    pub(super) fn mirror_metrics(&mut self, now: Instant) {
        if self
            .metrics
            .last_mirror
            .is_some_and(|t| now.saturating_duration_since(t) < MIRROR_EVERY)
        {
            return;
        }
        self.metrics.last_mirror = Some(now);
        let status = self.node.status(now);
        let stats = self.node.stats();
        if stats.heartbeat_round_trips > self.metrics.heartbeat_round_trips {
            // The last round trip since the previous look (one sample per look at most).
            self.metrics.heartbeat_round_trips = stats.heartbeat_round_trips;
            self.metrics
                .registry
                .on_heartbeat_round_trip(stats.last_heartbeat_round_trip.as_secs_f64());
        }
        let failover = self.node.failover().stats();
        let disk = self.disk.as_ref().map(|d| d.stats()).unwrap_or_default();
        let mode = format!("{:?}", status.mode);
        let mirror = Mirror {
            term: status.term.0,
            epoch: status.epoch.0,
            lease_held: status.lease_held,
            link_up: self.writer.is_some(),
            mode: mode_name(&mode),
            frames_released: stats.released,
            frames_held: stats.held,
            frames_held_now: status.held_frames,
            failovers: failover.takeovers,
            reprotections: failover.reprotections,
            protocol_errors: stats.protocol_errors,
            disk_guest_writes: disk.guest_writes,
            disk_forwarded_bytes: disk.forwarded_bytes,
            disk_peer_writes: disk.peer_writes,
            guest_step: self.guest_step(),
        };
        self.metrics.registry.mirror(&mirror);
    }
}

/// The static name of a mode's Debug form (the registry's label values are fixed).
fn mode_name(debug: &str) -> &'static str {
    crate::pair::metrics::MODES
        .iter()
        .find(|m| **m == debug)
        .copied()
        .unwrap_or("Unknown")
}
