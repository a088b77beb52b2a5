//! Counters of every decision the comparator takes.
//!
//! Invariant kept (checked by the tests and the fuzz body): every primary frame handed in is
//! counted exactly once as released (one of four ways) or is still held, and every secondary
//! frame exactly once as matched, dropped (one of four reasons) or still held:
//!
//! - `primary_frames == released_matched + released_uncompared + released_by_checkpoint
//!   + released_solo + held_primary`
//! - `secondary_frames == secondary_matched + secondary_dropped_zero_payload
//!   + secondary_dropped_retransmit + secondary_dropped_by_checkpoint + secondary_dropped_solo
//!   + held_secondary`

/// Counters and gauges of a [`Comparator`](super::Comparator). Counters only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompareStats {
    /// Primary frames handed to `handle_primary`.
    pub primary_frames: u64,
    /// Secondary frames handed to `handle_secondary`.
    pub secondary_frames: u64,
    /// Primary frames released because the secondary produced the same bytes.
    pub released_matched: u64,
    /// Primary frames released without comparison by rule: zero-payload TCP segments (SYN, FIN,
    /// RST, pure ACK) and retransmissions of already-released TCP data, at once or after being
    /// held (see `uncompared_held`).
    pub released_uncompared: u64,
    /// Primary TCP segments needing no comparison (zero payload, retransmission) that had to be
    /// held on arrival: the min-ACK guard refused their ACK (the secondary had not acknowledged
    /// as far), or a segment of their flow was held ahead of them (stream order).
    pub uncompared_held: u64,
    /// Primary frames released by `checkpoint_done` (the checkpoint covers them).
    pub released_by_checkpoint: u64,
    /// Primary frames released by `release_all` or while running without a secondary.
    pub released_solo: u64,
    /// Payload bytes of primary frames released as matched (TCP payload, IP payload or whole
    /// frame, whatever was compared).
    pub bytes_matched: u64,
    /// Secondary frames consumed by a successful comparison.
    pub secondary_matched: u64,
    /// Secondary TCP segments without payload (SYN, FIN, pure ACK), dropped uncompared.
    pub secondary_dropped_zero_payload: u64,
    /// Secondary TCP segments whose payload lies entirely in already-released data.
    pub secondary_dropped_retransmit: u64,
    /// Secondary frames still queued when a checkpoint completed.
    pub secondary_dropped_by_checkpoint: u64,
    /// Secondary frames dropped by `release_all` or while running without a secondary.
    pub secondary_dropped_solo: u64,
    /// Flows whose bytes differed (each emits one `Miscompare` event).
    pub miscompares: u64,
    /// `handle_timeout` calls that found at least one frame older than `compare_timeout`.
    pub timeouts: u64,
    /// Frames found older than `compare_timeout` (each counted once).
    pub timed_out_frames: u64,
    /// Checkpoint requests emitted.
    pub checkpoint_requests: u64,
    /// Triggers (miscompare, timeout, full queue or table) absorbed by a pending request.
    pub coalesced_requests: u64,
    /// Frames (either side) that had to be held while a checkpoint request was pending: the
    /// comparator keeps comparing then, it never drops, and this shows the backlog it carried.
    pub held_while_pending: u64,
    /// Frames held in a queue that already had `max_queue_frames` frames.
    pub queue_full_events: u64,
    /// Flows created past `max_flows` because no idle flow could be evicted.
    pub flow_table_full_events: u64,
    /// Flows created.
    pub flows_created: u64,
    /// Idle flows forgotten after `flow_idle_timeout` / `closed_flow_linger`.
    pub flows_expired: u64,
    /// Idle flows forgotten early to make room in a full table.
    pub flows_evicted: u64,
    /// Checkpoints completed (`checkpoint_done` calls).
    pub checkpoints_done: u64,
    /// Primary TCP segments released with their window lowered to the secondary's right edge
    /// (the window clamp, `docs/comparator.md`).
    pub windows_clamped: u64,
    /// Window updates the comparator built and released after a clamp, once the secondary
    /// opened its window (`CompareOutput::WindowUpdate`); not primary frames.
    pub window_updates: u64,
    /// Gauge: primary frames held now.
    pub held_primary: u64,
    /// Gauge: secondary frames held now.
    pub held_secondary: u64,
    /// Gauge: flows in the table now.
    pub flows: u64,
}

impl CompareStats {
    /// True if the conservation equations of the module doc hold.
    pub fn is_conserved(&self) -> bool {
        let primary = self.released_matched
            + self.released_uncompared
            + self.released_by_checkpoint
            + self.released_solo
            + self.held_primary;
        let secondary = self.secondary_matched
            + self.secondary_dropped_zero_payload
            + self.secondary_dropped_retransmit
            + self.secondary_dropped_by_checkpoint
            + self.secondary_dropped_solo
            + self.held_secondary;
        primary == self.primary_frames && secondary == self.secondary_frames
    }

    /// All primary frames released so far, however.
    pub fn released(&self) -> u64 {
        self.released_matched
            + self.released_uncompared
            + self.released_by_checkpoint
            + self.released_solo
    }
}
