//! Block requests drained at a pause (`impl NodeLoop`): a capture must not carry virtio-blk
//! requests in flight (QEMU drains with `bdrv_drain_all` before it stops a VM), so the loop
//! holds back the `Paused` completion of a `VmCommand::Pause` until the paused machine's
//! virtio-blk devices have none left, and only then hands it to the node, whose checkpoint then
//! collects dirty pages and saves the device state.
//!
//! The loop is one thread and delivers those completions itself (guest requests to the node,
//! disk commands to the files, the peer's acknowledgements back), so it never blocks here:
//! the held completion is a state (`PauseDrain`) that the run loop re-checks after every
//! event. The vCPUs are paused first, so no new request can appear (a request is posted during
//! its MMIO exit, which the pause completes). Invariants: VM completions reach the node in
//! command order (a new VM command first releases a held `Paused`), and the hold is bounded
//! ([`DRAIN_BOUND`]): past it the pause is reported failed with the count left, the checkpoint
//! is aborted by the node (the VM resumes, the next attempt drains again), and nothing is
//! captured with a request in flight (`Machine::save_devices` refuses that in any case).

use super::NodeLoop;
use colo_core::checkpoint::{VmCommandKind, VmCompletion};
use colo_core::node::Input;
use colo_core::time::{Duration, Instant};
use tracing::{info, warn};

/// Longest wait for in-flight block requests after a pause. A primary's guest write completes
/// after the secondary's acknowledgement, so this covers a peer round trip and two file
/// writes with a wide margin; a peer slower than that is handled by the heartbeat.
pub const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// A `Paused` completion held back until the block device has no request in flight.
#[derive(Debug)]
pub(super) struct PauseDrain {
    /// The completion to hand in.
    done: VmCompletion,
    /// When the wait fails.
    deadline: Instant,
    /// Requests in flight when the pause completed.
    at_pause: usize,
    /// When the pause completed.
    since: Instant,
}

impl NodeLoop {
    fn blk_in_flight(&self) -> usize {
        self.machine.blk_in_flight()
    }

    /// After a pause's execution: the completion to queue now, or `None` when it is held
    /// until the block requests in flight complete.
    pub(super) fn hold_pause(&mut self, done: VmCompletion) -> Option<VmCompletion> {
        let in_flight = self.blk_in_flight();
        if !matches!(done, VmCompletion::Paused) || in_flight == 0 {
            return Some(done);
        }
        let now = self.clock.now();
        self.drain = Some(PauseDrain {
            done,
            deadline: now.saturating_add(DRAIN_BOUND),
            at_pause: in_flight,
            since: now,
        });
        None
    }

    /// The held completion, released because another VM command is about to run (order of
    /// completions is command order). The requests still in flight stay in flight: no
    /// capture follows (`save_devices` would refuse it), the command is an abort's resume.
    pub(super) fn release_held_pause(&mut self) {
        if let Some(d) = self.drain.take() {
            self.pending.push_back(Input::VmDone(d.done));
        }
    }

    /// When the run loop must wake to check the drain's bound.
    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        self.drain.as_ref().map(|d| d.deadline)
    }

    /// The held completion once it can go: every request completed (`Paused`), or the bound
    /// passed (`Failed`, with a log line naming the count).
    pub(super) fn poll_drain(&mut self) -> Option<Input> {
        let d = self.drain.as_ref()?;
        let left = self.blk_in_flight();
        let now = self.clock.now();
        if left > 0 && now < d.deadline {
            return None;
        }
        let d = self.drain.take().expect("checked above");
        let waited = now.saturating_duration_since(d.since);
        if left == 0 {
            info!(
                role = self.name,
                blk_requests = d.at_pause,
                wait_us = waited.as_micros() as u64,
                "drained"
            );
            Some(Input::VmDone(d.done))
        } else {
            warn!(
                role = self.name,
                "pause failed: {left} of {} virtio-blk requests still in flight after {} ms; the checkpoint is aborted and retried",
                d.at_pause,
                waited.as_millis()
            );
            Some(Input::VmDone(VmCompletion::Failed {
                command: VmCommandKind::Pause,
            }))
        }
    }
}
