//! `SimVm`: a simulated VM host platform that executes colo-core's [`VmCommand`]s against a
//! [`Guest`] and reports [`VmCompletion`]s, on either side of a pairing.
//!
//! Primary side: `Pause`/`Resume` take the configured latency (QEMU's `vm_stop` drains I/O);
//! `CollectDirty` harvests the guest's dirty log (the `KVM_GET_DIRTY_LOG` contract: read and
//! clear); `SendPages` streams `PageBatch` frames of at most [`PAGES_PER_BATCH`] pages, each
//! `pages × 4096` bulk bytes (the simulated guest has no page contents, so no page is sent as
//! a zero page), queued behind one another on the replication link at its
//! bandwidth, and reports `PagesSent` when the last one has left; `SaveDeviceState` captures
//! the guest (its snapshot rides on the `DeviceState` frame) and reports `DeviceStateSent`.
//!
//! Secondary side: [`SimVm::handle_repl`] stores what arrives into the RAM cache (pages of the
//! epoch in transfer, its device state, the totals of `CheckpointSent`) and hands the message
//! on for the `SecondaryCheckpointer`; `ApplyCheckpoint` restores the SVM from the cached
//! snapshot in one step (atomic: the guest is either the old state or the new one, never a mix)
//! and `DiscardPartial` forgets the epoch in transfer, keeping the last applied one.
//!
//! Phases (explicit, [`VmPhase`]):
//! ```text
//! Running --Pause--> Pausing --latency--> Paused           [Paused; trace Paused(e) hashes]
//! Paused  --Resume--> Resuming --latency--> Running        [Resumed]
//! Paused  --Pause--> Paused (completes at once); Running --Resume--> Running (at once)
//! ```
//! Invariant kept: the guest is stepped by the world only in `Running` (the host queues frames
//! for a paused VM), so the state captured at `SaveDeviceState` is the state at the pause.
//! Like the runtime's `Machine::resume`, a `Resume` of a VM that holds no guest (a
//! secondary's, before its first `ApplyCheckpoint`) fails.

use std::collections::VecDeque;

use colo_core::checkpoint::{VmCommand, VmCommandKind, VmCompletion};
use colo_core::ids::{Epoch, PageRange};
use colo_core::time::{Duration, Instant};
use colo_core::wire::{Message, ZeroPages};

use super::{Canary, ReplFrame};
use crate::guest::{Guest, GuestSnapshot};
use crate::trace::TraceEvent;

// The runtime's batch and page size, one definition in colo-core's wire module.
pub use colo_core::wire::{PAGE_SIZE, PAGES_PER_BATCH};
/// Bytes of a saved device state (vCPU registers, virtio queues, timers: QEMU's non-RAM
/// sections are tens of KiB for a small guest).
pub const DEVICE_STATE_BYTES: u64 = 48 * 1024;

/// Latencies and bandwidth of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmTiming {
    /// Pause latency.
    pub pause: Duration,
    /// Resume latency.
    pub resume: Duration,
    /// Time to load a checkpoint into the SVM.
    pub apply: Duration,
    /// Replication link bandwidth, bytes per second.
    pub bytes_per_sec: u64,
}

impl Default for VmTiming {
    fn default() -> Self {
        VmTiming {
            pause: Duration::from_micros(500),
            resume: Duration::from_micros(200),
            apply: Duration::from_micros(300),
            bytes_per_sec: 1_250_000_000,
        }
    }
}

/// Where the VM's vCPUs stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmPhase {
    /// Running: the world steps the guest.
    Running,
    /// Pause ordered; done at the instant.
    Pausing(Instant),
    /// Stopped.
    Paused,
    /// Resume ordered; done at the instant.
    Resuming(Instant),
}

/// The epoch being received into the secondary's RAM cache.
#[derive(Clone, Debug, Default)]
struct Incoming {
    epoch: Epoch,
    pages: u64,
    batches: Vec<u32>,
    snapshot: Option<GuestSnapshot>,
    expected_pages: Option<u64>,
}

/// A simulated VM and its host platform.
#[derive(Debug)]
pub struct SimVm {
    phase: VmPhase,
    timing: VmTiming,
    /// The epoch the last `Pause` belongs to (for the trace), set by the harness.
    pause_epoch: Epoch,
    completions: VecDeque<(Instant, VmCompletion)>,
    outbox: VecDeque<(Instant, ReplFrame)>,
    link_free_at: Instant,
    incoming: Option<Incoming>,
    /// The last applied snapshot (the secondary's RAM cache content), what a takeover runs.
    applied: Option<(Epoch, GuestSnapshot)>,
    trace: VecDeque<TraceEvent>,
    canary: Option<Canary>,
    /// Fail the next command of this kind (platform fault injection).
    pub fail_next: Option<VmCommandKind>,
    /// Whether a pause is traced (`Paused` with the guest's state hash); see
    /// [`SimVm::set_trace_pauses`].
    trace_pauses: bool,
    /// The VM holds a guest it could run: a primary's (its boot image), or a secondary's
    /// once a checkpoint applied. A `Resume` without one fails, as in the runtime.
    holds_guest: bool,
}

impl SimVm {
    /// A running VM platform (the guest itself is owned by the caller and passed to every
    /// call that touches it: the world steps it between commands).
    pub fn new(timing: VmTiming, canary: Option<Canary>) -> SimVm {
        SimVm {
            phase: VmPhase::Running,
            timing,
            pause_epoch: Epoch(0),
            completions: VecDeque::new(),
            outbox: VecDeque::new(),
            link_free_at: Instant::ZERO,
            incoming: None,
            applied: None,
            trace: VecDeque::new(),
            canary,
            fail_next: None,
            trace_pauses: true,
            holds_guest: true,
        }
    }

    /// Whether this VM's pauses are traced as a checkpoint's pause state (`Paused` with the
    /// guest's exact state hash). On by default; a harness turns it off while the VM is a
    /// secondary, whose own pause is not a checkpoint's pause state (the harness would drop
    /// the event) and whose state hash costs about a millisecond (docs/benchmarks.md).
    pub fn set_trace_pauses(&mut self, on: bool) {
        self.trace_pauses = on;
    }

    /// A VM platform whose VM is created paused (the Node starts VMs at the first checkpoint),
    /// holding a guest (a primary's boot image) or not (a secondary's, until its first apply).
    pub fn new_paused(timing: VmTiming, canary: Option<Canary>, holds_guest: bool) -> SimVm {
        let mut vm = SimVm::new(timing, canary);
        vm.phase = VmPhase::Paused;
        vm.holds_guest = holds_guest;
        vm
    }

    /// The VM's phase.
    pub fn phase(&self) -> VmPhase {
        self.phase
    }

    /// Whether the world may step the guest.
    pub fn is_running(&self) -> bool {
        self.phase == VmPhase::Running
    }

    /// The last applied checkpoint, if any.
    pub fn applied(&self) -> Option<&(Epoch, GuestSnapshot)> {
        self.applied.as_ref()
    }

    /// Secondary: the RAM cache starts with `snapshot` as applied epoch `epoch` (the initial
    /// full copy, colo's SyncStart/SyncDone).
    pub fn seed_applied(&mut self, epoch: Epoch, snapshot: GuestSnapshot) {
        self.applied = Some((epoch, snapshot));
    }

    /// Tells the VM which epoch its next pause belongs to (the trace names it).
    pub fn set_pause_epoch(&mut self, epoch: Epoch) {
        self.pause_epoch = epoch;
    }

    fn complete(&mut self, at: Instant, c: VmCompletion) {
        self.completions.push_back((at, c));
    }

    /// Queues a frame on the replication link behind what is already queued; returns when its
    /// last byte has left.
    fn transmit(&mut self, now: Instant, frame: ReplFrame) -> Instant {
        let bytes = frame.bulk_len + 64;
        let nanos = bytes.saturating_mul(1_000_000_000) / self.timing.bytes_per_sec.max(1);
        let leaves = self.link_free_at.max(now) + Duration::from_nanos(nanos);
        self.link_free_at = leaves;
        self.outbox.push_back((leaves, frame));
        leaves
    }

    /// Executes a command.
    pub fn handle_command(&mut self, now: Instant, cmd: VmCommand, guest: &mut Guest) {
        let kind = cmd.kind();
        if self.fail_next == Some(kind) {
            self.fail_next = None;
            self.complete(now, VmCompletion::Failed { command: kind });
            return;
        }
        if cmd == VmCommand::Resume && !self.holds_guest {
            // Nothing to run: the runtime's resume fails the same way.
            self.complete(now, VmCompletion::Failed { command: kind });
            return;
        }
        match cmd {
            VmCommand::Pause => match self.phase {
                VmPhase::Running | VmPhase::Resuming(_) => {
                    self.phase = VmPhase::Pausing(now + self.timing.pause);
                }
                VmPhase::Paused => {
                    // Already stopped (created paused, or paused by a takeover): its state now
                    // is the state at this pause.
                    if self.trace_pauses {
                        self.trace.push_back(TraceEvent::Paused {
                            at: now,
                            epoch: self.pause_epoch,
                            state_hash: guest.state_hash(),
                            disk_hash: guest.disk_hash(),
                        });
                    }
                    self.complete(now, VmCompletion::Paused)
                }
                VmPhase::Pausing(_) => self.complete(now, VmCompletion::Paused),
            },
            VmCommand::Resume => match self.phase {
                VmPhase::Paused | VmPhase::Pausing(_) => {
                    self.phase = VmPhase::Resuming(now + self.timing.resume);
                }
                VmPhase::Running | VmPhase::Resuming(_) => {
                    self.complete(now, VmCompletion::Resumed)
                }
            },
            VmCommand::CollectDirty { epoch } => {
                let ranges = guest.take_dirty_pages();
                self.complete(now, VmCompletion::DirtyCollected { epoch, ranges });
            }
            VmCommand::SendPages { epoch, ranges } => {
                let (mut batches, mut pages, mut bytes) = (0u32, 0u64, 0u64);
                let mut done = now;
                for chunk in split_batches(&ranges) {
                    let n: u64 = chunk.iter().map(|r| r.count).sum();
                    done = self.transmit(
                        now,
                        ReplFrame {
                            // The simulated guest has no page contents: no page is known
                            // to be zero, every one travels (the real link's worst case).
                            message: Message::PageBatch {
                                epoch,
                                batch: batches,
                                ranges: chunk,
                                zero: ZeroPages::none(n),
                            },
                            bulk_len: n * PAGE_SIZE,
                            snapshot: None,
                        },
                    );
                    batches += 1;
                    pages += n;
                    bytes += n * PAGE_SIZE;
                }
                self.complete(
                    done,
                    VmCompletion::PagesSent {
                        epoch,
                        batches,
                        pages,
                        bytes,
                    },
                );
            }
            VmCommand::SaveDeviceState { epoch } => {
                let snapshot = guest.checkpoint();
                let done = self.transmit(
                    now,
                    ReplFrame {
                        message: Message::DeviceState { epoch },
                        bulk_len: DEVICE_STATE_BYTES,
                        snapshot: Some(snapshot),
                    },
                );
                self.complete(
                    done,
                    VmCompletion::DeviceStateSent {
                        epoch,
                        bytes: DEVICE_STATE_BYTES,
                    },
                );
            }
            VmCommand::ApplyCheckpoint { epoch } => self.apply(now, epoch, guest),
            VmCommand::DiscardPartial { epoch } => {
                if self.incoming.as_ref().is_some_and(|i| i.epoch == epoch) {
                    self.incoming = None;
                }
                self.trace
                    .push_back(TraceEvent::Discarded { at: now, epoch });
                self.complete(now, VmCompletion::Discarded { epoch });
            }
        }
    }

    fn apply(&mut self, now: Instant, epoch: Epoch, guest: &mut Guest) {
        let incoming = match self.incoming.take() {
            Some(i) if i.epoch == epoch => i,
            other => {
                self.incoming = other;
                self.complete(
                    now,
                    VmCompletion::Failed {
                        command: VmCommandKind::ApplyCheckpoint,
                    },
                );
                return;
            }
        };
        let Some(snapshot) = incoming.snapshot else {
            self.complete(
                now,
                VmCompletion::Failed {
                    command: VmCommandKind::ApplyCheckpoint,
                },
            );
            return;
        };
        let mut pages_applied = incoming.pages;
        // Planted (the only canary the VM platform carries; the others are the Node's): the
        // last batch is lost from the cache and the epoch applied anyway.
        if self.canary == Some(Canary::ApplyPartialEpoch) && pages_applied > 0 {
            pages_applied -= pages_applied.clamp(1, PAGES_PER_BATCH);
        }
        guest.restore(&snapshot);
        self.holds_guest = true;
        self.applied = Some((epoch, snapshot));
        self.trace.push_back(TraceEvent::Applied {
            at: now,
            epoch,
            state_hash: guest.state_hash(),
            disk_hash: guest.disk_hash(),
            pages_applied,
            pages_expected: incoming.expected_pages.unwrap_or(incoming.pages),
        });
        self.complete(now + self.timing.apply, VmCompletion::Applied { epoch });
    }

    /// Secondary: a frame arrived from the primary. Stores its bulk into the RAM cache and
    /// returns the message and bulk length for the `SecondaryCheckpointer`.
    pub fn handle_repl(&mut self, frame: ReplFrame) -> (Message, u64) {
        let epoch = frame.message.epoch();
        match (&frame.message, epoch) {
            (Message::PageBatch { batch, ranges, .. }, Some(e)) => {
                if let Some(i) = self.slot(e)
                    && !i.batches.contains(batch)
                {
                    i.batches.push(*batch);
                    i.pages += ranges.iter().map(|r| r.count).sum::<u64>();
                }
            }
            (Message::DeviceState { .. }, Some(e)) => {
                if let Some(i) = self.slot(e) {
                    i.snapshot = frame.snapshot.clone();
                }
            }
            (Message::CheckpointSent { pages, .. }, Some(e)) => {
                if let Some(i) = self.slot(e) {
                    i.expected_pages = Some(*pages);
                }
            }
            _ => {}
        }
        (frame.message, frame.bulk_len)
    }

    /// The cache slot of epoch `e`, started fresh if `e` is newer than what is arriving;
    /// `None` for a stale epoch (the cache keeps the applied state).
    fn slot(&mut self, e: Epoch) -> Option<&mut Incoming> {
        if self.applied.as_ref().is_some_and(|(a, _)| *a >= e) {
            return None;
        }
        if self.incoming.as_ref().is_none_or(|i| i.epoch < e) {
            self.incoming = Some(Incoming {
                epoch: e,
                ..Incoming::default()
            });
        }
        self.incoming.as_mut().filter(|i| i.epoch == e)
    }

    /// Advances the VM's own latencies to `now`.
    pub fn handle_timeout(&mut self, now: Instant, guest: &mut Guest) {
        match self.phase {
            VmPhase::Pausing(t) if t <= now => {
                self.phase = VmPhase::Paused;
                // Stamped when observed: the harness wakes at `t` (poll_timeout), so `now == t`.
                if self.trace_pauses {
                    self.trace.push_back(TraceEvent::Paused {
                        at: now,
                        epoch: self.pause_epoch,
                        state_hash: guest.state_hash(),
                        disk_hash: guest.disk_hash(),
                    });
                }
                self.complete(t, VmCompletion::Paused);
            }
            VmPhase::Resuming(t) if t <= now => {
                self.phase = VmPhase::Running;
                self.complete(t, VmCompletion::Resumed);
            }
            _ => {}
        }
    }

    /// A completion due by `now`, in order.
    pub fn poll_completion(&mut self, now: Instant, guest: &mut Guest) -> Option<VmCompletion> {
        self.handle_timeout(now, guest);
        if self.completions.front().is_some_and(|(t, _)| *t <= now) {
            return self.completions.pop_front().map(|(_, c)| c);
        }
        None
    }

    /// A replication frame whose last byte has left by `now`, in order.
    pub fn poll_repl(&mut self, now: Instant) -> Option<ReplFrame> {
        if self.outbox.front().is_some_and(|(t, _)| *t <= now) {
            return self.outbox.pop_front().map(|(_, f)| f);
        }
        None
    }

    /// Queues a small control message on the replication link (behind the bulk).
    pub fn send_control(&mut self, now: Instant, message: Message) {
        self.transmit(
            now,
            ReplFrame {
                message,
                bulk_len: 0,
                snapshot: None,
            },
        );
    }

    /// A trace event the VM produced.
    pub fn poll_trace(&mut self) -> Option<TraceEvent> {
        self.trace.pop_front()
    }

    /// The next instant the VM has something to report.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            VmPhase::Pausing(t) | VmPhase::Resuming(t) => Some(t),
            _ => None,
        };
        [
            phase,
            self.completions.front().map(|(t, _)| *t),
            self.outbox.front().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Drops everything in flight (the host crashed): queued frames and completions.
    pub fn crash(&mut self) {
        self.completions.clear();
        self.outbox.clear();
        self.incoming = None;
    }
}

/// Splits page ranges into batches of at most [`PAGES_PER_BATCH`] pages (a range may span
/// batches).
fn split_batches(ranges: &[PageRange]) -> Vec<Vec<PageRange>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut room = PAGES_PER_BATCH;
    for r in ranges {
        let (mut first, mut count) = (r.first, r.count);
        while count > 0 {
            let take = count.min(room);
            cur.push(PageRange { first, count: take });
            first += take;
            count -= take;
            room -= take;
            if room == 0 {
                out.push(std::mem::take(&mut cur));
                room = PAGES_PER_BATCH;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests;
