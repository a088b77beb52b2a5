//! What a node prints: its periodic report (guest step, frame and disk counters), the VM
//! milestones (`paused`, `applied`, with digests when asked) and one line per node event
//! (checkpoints, failover, handshake refusals), plus the loop's reactions that go with an
//! event (release the console at takeover, end the loop when the primary refused this node).
//! Stopping the VM when deposed or stopped and claiming the client link are the node's
//! outputs (`Output::Halt`, `Output::ClaimClientLink`), executed in `mod.rs`.
//!
//! Each milestone also goes to the typed event stream (`crate::pair::events`, `--events`),
//! which is what the demo, the tests and scripts read.
//!
//! Invariant: every event carries the node's role name (`role`) and its figures as typed
//! fields, which the human format renders as the `<role>: <what> key=value` lines operators
//! read (`crate::logging`); a milestone's log line and its event record carry the same
//! figures; nothing here feeds the node an input.

use super::NodeLoop;
use super::timeline::micros;
use crate::pair::events::{self, Milestone};
use crate::pair::progress::SyncProgress;
use crate::vmm::layout::{GUEST_WORKSET_BASE, PAGE_SIZE};
use colo_core::checkpoint::CheckpointEvent;
use colo_core::checkpoint::VmCompletion;
use colo_core::heartbeat::HeartbeatEvent;
use colo_core::node::{ConsoleCommand, Event, NodeMode};
use colo_core::time::Instant;
use colo_core::wire::HelloRejectReason;
use tracing::{debug, error, info, warn};
use vm_memory::{Bytes, GuestAddress};

impl NodeLoop {
    pub(super) fn report(&mut self, now: Instant) {
        let status = self.node.status(now);
        self.reports += 1;
        if !self.config.net.links.is_empty() && self.reports.is_multiple_of(4) {
            let f = self.net.stats();
            // The devices' counters, all NICs together.
            let (mut tx_frames, mut rx_frames, mut rx_dropped) = (0, 0, 0);
            for device in self.machine.nets() {
                let d = device.lock().stats();
                tx_frames += d.tx_frames;
                rx_frames += d.rx_frames;
                rx_dropped += d.rx_dropped;
            }
            let n = self.node.stats();
            info!(
                role = self.name,
                to_guest = f.to_guest,
                to_client = f.to_client,
                held_dropped = f.held_dropped,
                client_dropped = f.client_dropped,
                guest_tx = tx_frames,
                guest_rx = rx_frames,
                rx_dropped,
                released = n.released,
                held = n.held,
                stale_secondary_output = n.stale_secondary_output,
                "net"
            );
        }
        if self.reports.is_multiple_of(4) {
            self.report_disk();
        }
        if self.config.workload_pages > 0
            && matches!(status.mode, NodeMode::Paired | NodeMode::Solo)
        {
            let step = self.guest_step();
            info!(
                role = self.name,
                step,
                mode = ?status.mode,
                term = status.term.0,
                "guest-step"
            );
            self.milestone(Milestone::GuestStep {
                step,
                mode: format!("{:?}", status.mode),
                term: status.term.0,
            });
        }
    }

    /// The counter workload's step: word 0 of its last working-set page (the guest keeps
    /// every page's word 0 equal to the step it last completed).
    pub(super) fn guest_step(&self) -> u64 {
        if self.config.workload_pages == 0 {
            return 0;
        }
        let gpa = GUEST_WORKSET_BASE + (self.config.workload_pages - 1) * PAGE_SIZE;
        self.machine
            .memory()
            .read_obj::<u64>(GuestAddress(gpa))
            .unwrap_or(0)
    }

    pub(super) fn on_vm_done(&mut self, done: &VmCompletion) {
        match done {
            VmCompletion::DirtyCollected { epoch, ranges } => {
                // The PVM is paused here until the checkpoint completes: this is the state
                // the secondary will hold after applying `epoch`.
                let pages: u64 = ranges.iter().map(|r| r.count).sum();
                let digest = self
                    .config
                    .digests
                    .then(|| format!("{:08x}", self.machine.memory_digest()));
                let (disk_digest, disk_digest_error) = if self.config.digests {
                    self.disk_digest()
                } else {
                    (None, None)
                };
                let step = self.guest_step();
                info!(
                    role = self.name,
                    epoch = epoch.0,
                    step,
                    dirty_pages = pages,
                    digest = digest.as_deref(),
                    disk_digest = disk_digest.as_deref(),
                    disk_digest_error = disk_digest_error.as_deref(),
                    "paused"
                );
                self.milestone(Milestone::Paused {
                    epoch: epoch.0,
                    step,
                    dirty_pages: pages,
                    digest,
                    disk_digest,
                    disk_digest_error: disk_digest_error.map(|e| e.trim_matches('"').to_string()),
                });
            }
            VmCompletion::Applied { epoch } => {
                let digest = self
                    .config
                    .digests
                    .then(|| format!("{:08x}", self.machine.memory_digest()));
                let (step, pages_copied) = (self.guest_step(), self.exec.last_apply.pages_copied);
                let apply_us = self.exec.timings.apply.as_micros() as u64;
                info!(
                    role = self.name,
                    epoch = epoch.0,
                    step,
                    pages_copied,
                    digest = digest.as_deref(),
                    apply_us,
                    "applied"
                );
                self.milestone(Milestone::Applied {
                    epoch: epoch.0,
                    step,
                    pages_copied,
                    digest,
                    apply_us,
                });
            }
            _ => {}
        }
    }

    /// The node's order to the console gate ([`Output::Console`](colo_core::node::Output)).
    pub(super) fn on_console(&mut self, command: ConsoleCommand) {
        match command {
            // The SVM is the checkpoint now: what its guest printed since the last apply was
            // rolled back with it.
            ConsoleCommand::Discard => {
                let dropped = self.machine.output_gate().discard() as u64;
                if dropped > 0 {
                    info!(role = self.name, bytes = dropped, "console-discarded");
                    self.milestone(Milestone::ConsoleDiscarded { bytes: dropped });
                }
            }
            // The survivor's guest output is real from now on, starting with what it printed
            // since the last apply.
            ConsoleCommand::Release => {
                let released = self.machine.output_gate().release() as u64;
                info!(role = self.name, bytes = released, "console-released");
                self.milestone(Milestone::ConsoleReleased { bytes: released });
            }
        }
    }

    /// What an operator reads when the primary refused this node for good.
    pub(super) fn refusal_text(&self, reason: HelloRejectReason) -> String {
        match reason {
            HelloRejectReason::VmMismatch { expected } => format!(
                "the primary refused this node: its VM description (fingerprint {expected:016x}) differs from this node's ({:016x}); compare the `vm` lines both nodes print at start (memory, vCPUs, boot image, initrd, command line, disk sizes, MACs)",
                self.config.node.vm_fingerprint
            ),
            other => format!("the primary refused this node: {other:?}"),
        }
    }

    /// Writes `milestone` of this node to the event stream.
    pub(super) fn milestone(&self, milestone: Milestone) {
        events::emit(self.name, milestone);
    }

    pub(super) fn on_node_event(&mut self, event: Event) {
        self.ctl_on_event(&event);
        self.metrics_on_event(&event);
        if let Some(milestone) = self.milestone_of(&event) {
            self.milestone(milestone);
        }
        let n = self.name;
        match &event {
            Event::Checkpoint(CheckpointEvent::CheckpointDone {
                epoch,
                reason,
                pause,
                pages,
                bytes,
            }) => {
                let t = self.exec.timings;
                let spans = self.timeline.spans(epoch.0);
                info!(
                    role = n,
                    epoch = epoch.0,
                    reason = ?reason,
                    pause_us = pause.as_micros() as u64,
                    pages,
                    bytes,
                    step = self.guest_step(),
                    vm_pause_us = t.pause.as_micros() as u64,
                    vm_collect_us = t.collect.as_micros() as u64,
                    vm_send_us = t.send_pages.as_micros() as u64,
                    vm_save_us = t.save_devices.as_micros() as u64,
                    vm_resume_us = t.resume.as_micros() as u64,
                    request_ready_us = micros(spans.request_ready),
                    ready_sent_us = micros(spans.ready_sent),
                    sent_received_us = micros(spans.sent_received),
                    received_loaded_us = micros(spans.received_loaded),
                    "checkpoint-done"
                );
            }
            Event::Checkpoint(CheckpointEvent::CheckpointApplied {
                epoch,
                pause,
                pages,
                bytes,
            }) => {
                // The first apply of a pairing ends its copy.
                self.receiving = None;
                info!(
                    role = n,
                    epoch = epoch.0,
                    pause_us = pause.as_micros() as u64,
                    pages,
                    bytes,
                    step = self.guest_step(),
                    request_ready_us = micros(self.timeline.spans(epoch.0).request_ready),
                    "checkpoint-applied"
                )
            }
            Event::Peer(HeartbeatEvent::PeerLost {
                silent_for,
                link_closed,
            }) => {
                info!(
                    role = n,
                    silent_ms = silent_for.as_millis() as u64,
                    link_closed,
                    "peer-lost"
                )
            }
            Event::TakeoverStarted { term, from, reason } => info!(
                role = n,
                term = term.0,
                from = ?from,
                reason = ?reason,
                step = self.guest_step(),
                "takeover-started"
            ),
            Event::FailedOver { term, reason } => {
                info!(
                    role = n,
                    term = term.0,
                    reason = ?reason,
                    step = self.guest_step(),
                    "failed-over"
                );
            }
            // The node's `Output::Halt` that follows stops the VM; the line reads
            // `<role>: deposed term=T`.
            Event::Deposed { term, .. } => info!(role = n, term = term.0, "deposed"),
            Event::Stopped => info!(role = n, "stopped"),
            Event::HandshakeRejected {
                reason: HelloRejectReason::VmMismatch { expected },
                by_peer: true,
            } => {
                // The node's `Output::Halt(Refused)` that follows ends the loop with it.
                let why = self.refusal_text(HelloRejectReason::VmMismatch {
                    expected: *expected,
                });
                error!(role = n, "{why}");
            }
            Event::HandshakeRejected {
                reason: HelloRejectReason::VmMismatch { .. },
                by_peer: false,
            } => warn!(
                role = n,
                "refused a secondary whose VM description differs from this node's (fingerprint {:016x}); waiting for a matching one",
                self.config.node.vm_fingerprint
            ),
            Event::ProtocolError { kind, violation } => {
                warn!(role = n, "protocol error: {kind:?}: {violation:?}")
            }
            Event::Checkpoint(CheckpointEvent::VmFailed { epoch, command }) => {
                error!(role = n, "VM command {command:?} failed in {epoch:?}")
            }
            Event::Disk(disk_event) => self.on_disk_event(*disk_event),
            Event::SyncStarted {
                term,
                memory_bytes,
                disk_bytes,
            } => {
                info!(
                    role = n,
                    term = term.0,
                    memory_bytes,
                    disk_bytes,
                    "sync-started"
                );
                // The primary shows its own sending (`mod.rs`); the secondary its storing.
                if !self.node.is_primary_side() {
                    let progress = SyncProgress::start(n, "receiving", memory_bytes + disk_bytes)
                        .with_metrics(self.metrics.registry.clone());
                    self.receiving = Some(progress);
                }
            }
            Event::SyncProgress {
                memory_bytes_done,
                disk_bytes_done,
                ..
            } => match &self.receiving {
                Some(p) => p.set(memory_bytes_done + disk_bytes_done),
                None => debug!(
                    role = n,
                    memory_bytes_done, disk_bytes_done, "sync-progress-acked"
                ),
            },
            other => info!(role = n, "event {other:?}"),
        }
    }

    /// The stream's record of a node event (the periodic and per-step figures the log line
    /// adds come from the loop: the guest step).
    fn milestone_of(&self, event: &Event) -> Option<Milestone> {
        let step = self.guest_step();
        Some(match event {
            Event::Paired { peer, term, role } => Milestone::Paired {
                peer: peer.0,
                term: term.0,
                side: format!("{role:?}"),
            },
            Event::Checkpoint(CheckpointEvent::CheckpointDone {
                epoch,
                reason,
                pause,
                pages,
                bytes,
            }) => Milestone::CheckpointDone {
                epoch: epoch.0,
                reason: format!("{reason:?}"),
                pause_us: pause.as_micros() as u64,
                pages: *pages,
                bytes: *bytes,
                step,
            },
            Event::Checkpoint(CheckpointEvent::CheckpointApplied {
                epoch,
                pause,
                pages,
                bytes,
            }) => Milestone::CheckpointApplied {
                epoch: epoch.0,
                pause_us: pause.as_micros() as u64,
                pages: *pages,
                bytes: *bytes,
                step,
            },
            Event::Checkpoint(CheckpointEvent::Aborted { epoch, reason }) => {
                Milestone::CheckpointAborted {
                    epoch: epoch.0,
                    reason: format!("{reason:?}"),
                }
            }
            Event::Checkpoint(CheckpointEvent::Stuck { epoch, phase }) => {
                Milestone::CheckpointStuck {
                    epoch: epoch.0,
                    phase: format!("{phase:?}"),
                }
            }
            Event::Checkpoint(CheckpointEvent::VmFailed { epoch, command }) => {
                Milestone::VmFailed {
                    epoch: epoch.0,
                    command: format!("{command:?}"),
                }
            }
            Event::Peer(HeartbeatEvent::PeerLost {
                silent_for,
                link_closed,
            }) => Milestone::PeerLost {
                silent_ms: silent_for.as_millis() as u64,
                link_closed: *link_closed,
            },
            Event::TakeoverStarted { term, from, reason } => Milestone::TakeoverStarted {
                term: term.0,
                from: format!("{from:?}"),
                reason: format!("{reason:?}"),
                step,
            },
            Event::FailedOver { term, reason } => Milestone::FailedOver {
                term: term.0,
                reason: format!("{reason:?}"),
                step,
            },
            Event::Deposed { term, .. } => Milestone::Deposed { term: term.0 },
            Event::Stopped => Milestone::Stopped,
            Event::SyncStarted {
                term,
                memory_bytes,
                disk_bytes,
            } => Milestone::SyncStarted {
                term: term.0,
                memory_bytes: *memory_bytes,
                disk_bytes: *disk_bytes,
            },
            Event::Reprotected { term, epoch } => Milestone::Reprotected {
                term: term.0,
                epoch: epoch.0,
            },
            Event::ReprotectFailed { term } => Milestone::ReprotectFailed { term: term.0 },
            _ => return None,
        })
    }
}
