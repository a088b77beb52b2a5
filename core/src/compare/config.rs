//! The comparator's configuration: every knob with its default and the rule that validates it.
//!
//! Invariant kept: a [`CompareConfig`] that passed [`CompareConfig::validate`] has no zero
//! bound and no zero duration, so the comparator can never divide its work into empty queues
//! or arm a deadline that is already due when it is armed.

use crate::time::Duration;

/// Knobs of the [`Comparator`](super::Comparator). Build one with `CompareConfig::default()` and
/// override fields; [`Comparator::new`](super::Comparator::new) validates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareConfig {
    /// How long a frame (primary or secondary) may wait for its counterpart before the
    /// comparator requests a checkpoint. QEMU's `compare_timeout` default: 3000 ms, kept
    /// here; the `colo` nodes default to 20 ms (`--compare-timeout-ms`: a secondary whose TCP
    /// fell out of step otherwise stalls the client until the next periodic checkpoint,
    /// docs/benchmarks.md "The compare timeout").
    pub compare_timeout: Duration,
    /// Frames held per flow and per side before the comparator requests a checkpoint
    /// (reason `QueueFull`). QEMU's `max_queue_size` default: 1024 (where QEMU drops instead).
    pub max_queue_frames: usize,
    /// Flows in the table before an idle flow is evicted or, when none is idle, a checkpoint is
    /// requested (reason `FlowTableFull`). QEMU's `HASHTABLE_MAX_SIZE`: 16384 (where QEMU clears
    /// the whole table and loses the queued frames).
    pub max_flows: usize,
    /// A flow with empty queues and no frame for this long is forgotten.
    pub flow_idle_timeout: Duration,
    /// A TCP flow whose primary sent FIN or RST is forgotten after this much idle time instead
    /// of `flow_idle_timeout` (the connection is over; keep the table small).
    pub closed_flow_linger: Duration,
    /// How far out of order (in datagrams) the secondary may emit a datagram flow's frames and
    /// still match without a checkpoint: each secondary datagram is matched against every held
    /// primary datagram of its flow, and a primary datagram still unmatched once `window`
    /// datagrams of the secondary have arrived after the flow's last release is a miscompare.
    /// 1 is QEMU's rule (the primary's oldest against any queued secondary frame).
    pub datagram_reorder_window: usize,
    /// Bytes of each TCP flow's released stream kept to check primary retransmissions: a
    /// retransmitted byte must equal the byte released at its sequence number. A
    /// retransmission reaching back further than this cannot be checked and is held for a
    /// checkpoint. Allocated per flow as its stream grows, up to this bound.
    pub retransmit_history: usize,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            compare_timeout: Duration::from_millis(3000),
            max_queue_frames: 1024,
            max_flows: 16384,
            flow_idle_timeout: Duration::from_secs(60),
            closed_flow_linger: Duration::from_secs(5),
            datagram_reorder_window: 8,
            retransmit_history: 64 * 1024,
        }
    }
}

/// Why a [`CompareConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompareConfigError {
    /// `compare_timeout` is zero: every held frame would time out on arrival.
    #[error("compare_timeout must be positive")]
    ZeroCompareTimeout,
    /// `max_queue_frames` is zero: every held frame would overflow its queue.
    #[error("max_queue_frames must be at least 1")]
    ZeroQueue,
    /// `datagram_reorder_window` is zero: no datagram could ever match.
    #[error("datagram_reorder_window must be at least 1")]
    ZeroReorderWindow,
    /// `retransmit_history` is zero: no retransmission could be checked.
    #[error("retransmit_history must be at least 1 byte")]
    ZeroHistory,
    /// `max_flows` is zero: every frame would overflow the flow table.
    #[error("max_flows must be at least 1")]
    ZeroFlows,
    /// `flow_idle_timeout` or `closed_flow_linger` is zero: TCP state would be forgotten
    /// between two segments of the same burst.
    #[error("flow_idle_timeout and closed_flow_linger must be positive")]
    ZeroIdle,
}

impl CompareConfig {
    /// Checks every knob (see [`CompareConfigError`] for the rules).
    pub fn validate(&self) -> Result<(), CompareConfigError> {
        if self.compare_timeout.is_zero() {
            return Err(CompareConfigError::ZeroCompareTimeout);
        }
        if self.max_queue_frames == 0 {
            return Err(CompareConfigError::ZeroQueue);
        }
        if self.datagram_reorder_window == 0 {
            return Err(CompareConfigError::ZeroReorderWindow);
        }
        if self.retransmit_history == 0 {
            return Err(CompareConfigError::ZeroHistory);
        }
        if self.max_flows == 0 {
            return Err(CompareConfigError::ZeroFlows);
        }
        if self.flow_idle_timeout.is_zero() || self.closed_flow_linger.is_zero() {
            return Err(CompareConfigError::ZeroIdle);
        }
        Ok(())
    }
}
