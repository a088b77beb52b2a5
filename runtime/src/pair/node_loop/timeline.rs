//! One checkpoint's protocol timeline as this node's loop saw it: when each checkpoint message
//! of the epoch in progress left or reached the loop (`CheckpointRequest` -> `Ready` -> `Sent`
//! -> `Received` -> `Loaded`), so the checkpoint's log line can split its time into the
//! protocol's waits and the VM's work (docs/operations.md, the `checkpoint-done` and
//! `checkpoint-applied` lines; docs/benchmarks.md, "A reply that differs between the guests").
//! With `COLO_TRACE_HOPS=1` each point is also a hop record keyed by the epoch (`hops.rs`), on
//! the clock the bench's hop records share.
//!
//! Invariant: the timeline only ever holds the points of one epoch: a `CheckpointRequest` of
//! a newer epoch (sent by a primary, received by a secondary) starts it afresh, and a point of
//! another epoch is ignored, so a retried or aborted attempt never lends its times to the one
//! that completes. A span whose ends were not both seen reads as `None`, never as zero.

use super::hops;
use colo_core::wire::Message;
use std::time::{Duration, Instant};

/// The points of one epoch (each `None` until seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointTimeline {
    epoch: u64,
    request: Option<Instant>,
    ready: Option<Instant>,
    sent: Option<Instant>,
    received: Option<Instant>,
    loaded: Option<Instant>,
}

/// The spans of a completed checkpoint, in microseconds, as the primary's and the secondary's
/// log lines print them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spans {
    /// Primary: `CheckpointRequest` out -> `CheckpointReady` in (the secondary pauses its VM,
    /// plus one link round trip); secondary: `Request` in -> `Ready` out (its pause alone).
    pub request_ready: Option<Duration>,
    /// Primary: `Ready` in -> `CheckpointSent` out (its VM paused, dirty pages collected,
    /// device state and pages written).
    pub ready_sent: Option<Duration>,
    /// Primary: `Sent` out -> `CheckpointReceived` in (the bulk's tail reaches the secondary,
    /// which confirms it): the output of the epoch is released here.
    pub sent_received: Option<Duration>,
    /// Primary: `Received` in -> `CheckpointLoaded` in (the secondary's apply and resume).
    pub received_loaded: Option<Duration>,
}

fn span(from: Option<Instant>, to: Option<Instant>) -> Option<Duration> {
    Some(to?.saturating_duration_since(from?))
}

impl CheckpointTimeline {
    /// Records `message` crossing the loop now if it is a checkpoint step: the clock is read
    /// only for those, not for every mirrored frame on the hot path.
    pub fn record_now(&mut self, message: &Message) {
        self.record(message, Instant::now);
    }

    /// Records `message` crossing the loop (handed to the peer writer, or handed to the loop
    /// by the peer reader) at the time `clock` tells, if it is a checkpoint step of the
    /// timeline's epoch (the clock is read only then).
    fn record(&mut self, message: &Message, clock: impl FnOnce() -> Instant) {
        let (point, epoch) = match message {
            Message::CheckpointRequest { epoch, .. } => {
                if epoch.0 != self.epoch || self.request.is_none() {
                    *self = CheckpointTimeline {
                        epoch: epoch.0,
                        ..CheckpointTimeline::default()
                    };
                }
                self.request.get_or_insert_with(clock);
                ("ckpt_request", epoch.0)
            }
            Message::CheckpointReady { epoch } if epoch.0 == self.epoch => {
                self.ready.get_or_insert_with(clock);
                ("ckpt_ready", epoch.0)
            }
            Message::CheckpointSent { epoch, .. } if epoch.0 == self.epoch => {
                self.sent.get_or_insert_with(clock);
                ("ckpt_sent", epoch.0)
            }
            Message::CheckpointReceived { epoch } if epoch.0 == self.epoch => {
                self.received.get_or_insert_with(clock);
                ("ckpt_received", epoch.0)
            }
            Message::CheckpointLoaded { epoch } if epoch.0 == self.epoch => {
                self.loaded.get_or_insert_with(clock);
                ("ckpt_loaded", epoch.0)
            }
            _ => return,
        };
        hops::mark_key(point, epoch);
    }

    /// The spans of `epoch`, if the timeline holds it (all `None` otherwise).
    pub fn spans(&self, epoch: u64) -> Spans {
        if epoch != self.epoch {
            return Spans::default();
        }
        Spans {
            request_ready: span(self.request, self.ready),
            ready_sent: span(self.ready, self.sent),
            sent_received: span(self.sent, self.received),
            received_loaded: span(self.received, self.loaded),
        }
    }
}

/// A span in whole microseconds for a log field; `None` (not seen) stays absent.
pub fn micros(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use colo_core::ids::{CheckpointReason, Epoch};

    fn at(base: Instant, us: u64) -> Instant {
        base + Duration::from_micros(us)
    }

    #[test]
    fn a_primarys_checkpoint_splits_into_the_protocol_steps() {
        let base = Instant::now();
        let mut t = CheckpointTimeline::default();
        let e = Epoch(7);
        t.record(
            &Message::CheckpointRequest {
                epoch: e,
                reason: CheckpointReason::Miscompare,
            },
            || at(base, 0),
        );
        t.record(&Message::CheckpointReady { epoch: e }, || at(base, 90));
        t.record(
            &Message::CheckpointSent {
                epoch: e,
                batches: 1,
                pages: 3,
                bytes: 12_288,
            },
            || at(base, 400),
        );
        t.record(&Message::CheckpointReceived { epoch: e }, || at(base, 450));
        t.record(&Message::CheckpointLoaded { epoch: e }, || at(base, 700));
        let s = t.spans(7);
        assert_eq!(micros(s.request_ready), Some(90));
        assert_eq!(micros(s.ready_sent), Some(310));
        assert_eq!(micros(s.sent_received), Some(50));
        assert_eq!(micros(s.received_loaded), Some(250));
        assert_eq!(t.spans(6), Spans::default(), "another epoch has no spans");
    }

    #[test]
    fn a_retry_starts_afresh_and_a_stale_step_is_ignored() {
        let base = Instant::now();
        let mut t = CheckpointTimeline::default();
        let request = |e| Message::CheckpointRequest {
            epoch: Epoch(e),
            reason: CheckpointReason::Periodic,
        };
        t.record(&request(3), || at(base, 0));
        t.record(&Message::CheckpointReady { epoch: Epoch(3) }, || {
            at(base, 10)
        });
        // Epoch 3 was aborted; its retry is epoch 4.
        t.record(&request(4), || at(base, 1_000));
        // A late step of epoch 3 does not count for epoch 4.
        t.record(&Message::CheckpointReceived { epoch: Epoch(3) }, || {
            at(base, 1_010)
        });
        t.record(&Message::CheckpointReady { epoch: Epoch(4) }, || {
            at(base, 1_040)
        });
        let s = t.spans(4);
        assert_eq!(micros(s.request_ready), Some(40));
        assert_eq!(s.ready_sent, None, "Sent of epoch 4 not seen yet");
        assert_eq!(s.sent_received, None);
        assert_eq!(t.spans(3), Spans::default());
    }

    #[test]
    fn a_secondary_times_its_own_hold_between_request_and_ready() {
        let base = Instant::now();
        let mut t = CheckpointTimeline::default();
        t.record(
            &Message::CheckpointRequest {
                epoch: Epoch(2),
                reason: CheckpointReason::Miscompare,
            },
            || at(base, 5),
        );
        t.record(&Message::CheckpointReady { epoch: Epoch(2) }, || {
            at(base, 65)
        });
        assert_eq!(micros(t.spans(2).request_ready), Some(60));
    }
}
