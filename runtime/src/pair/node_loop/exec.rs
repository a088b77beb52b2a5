//! Executing the node's outputs: each [`Output`] of colo-core's `Node` becomes its effect
//! (a peer send, a VM command, a frame to a guest or a client, a disk command, an arbiter
//! request, a link order, a halt), in the order the node emitted them.
//!
//! Invariant kept: outputs are executed in order and completely before the next input (VM
//! completions are queued as inputs, never handled re-entrantly); an output the runtime cannot
//! execute is logged as an error, never dropped silently.

use super::{LoopEnd, NodeLoop, disk, hops};
use crate::pair::events::Milestone;
use crate::pair::progress::SyncProgress;
use colo_core::checkpoint::VmCommand;
use colo_core::node::{HaltReason, Input, NodeMode, OutBulk, Output, SyncCommand};
use colo_core::wire::{Message, PAGE_SIZE};
use tracing::{info, warn};

impl NodeLoop {
    pub(super) fn execute(&mut self, output: Output) {
        match output {
            Output::ToPeer { message, bulk } => {
                let bytes = match bulk {
                    OutBulk::None => Vec::new(),
                    OutBulk::Frame(f) => f,
                    OutBulk::GuestWrite(io) => match self.guest_write_bulk(&message, io) {
                        Some(bytes) => bytes,
                        None => return,
                    },
                };
                self.before_disk_send(&message);
                if matches!(
                    message,
                    Message::MirroredFrame { .. } | Message::SecondaryOutput { .. }
                ) {
                    hops::mark("peer_out", &bytes);
                }
                self.timeline.record_now(&message);
                self.send(&message, &bytes);
            }
            Output::Vm(command) => {
                self.release_held_pause();
                let pausing = matches!(command, VmCommand::Pause);
                if matches!(command, VmCommand::ApplyCheckpoint { .. }) {
                    self.before_apply();
                }
                let result = self
                    .exec
                    .execute(&mut self.machine, self.writer.as_mut(), command);
                let done = match result {
                    Ok(done) => done,
                    Err((done, why)) => {
                        self.link_down(&why.to_string(), why.closed_by_peer());
                        done
                    }
                };
                self.on_vm_done(&done);
                if pausing {
                    self.drain_guest_frames();
                }
                if let Some(done) = self.hold_pause(done) {
                    self.pending.push_back(Input::VmDone(done));
                }
            }
            Output::Sync(SyncCommand::SendAll { term }) => {
                let Some(writer) = self.writer.as_mut() else {
                    warn!(role = self.name, "initial copy ordered with the link down");
                    return;
                };
                let what = match self.node.status(self.clock.now()).mode {
                    NodeMode::Reprotecting => "re-protection",
                    _ => "initial-copy",
                };
                let total =
                    self.machine.mem_bytes() + self.disk.as_ref().map_or(0, |d| d.image_size());
                let progress = SyncProgress::start(self.name, what, total)
                    .with_metrics(self.metrics.registry.clone());
                let sent = self
                    .exec
                    .send_all(&mut self.machine, writer, term, &progress)
                    .map_err(disk::SyncSendError::Link)
                    .and_then(|memory| match self.disk.as_ref() {
                        // The loop handles no guest request until SyncDone is out (the node
                        // answers SyncSent in this same drain), so the image is stable here.
                        Some(d) => d
                            .send_image(writer, term, &progress)
                            .map(|disk| (memory, disk)),
                        None => Ok((memory, 0)),
                    });
                drop(progress);
                match sent {
                    Ok((pages, disk)) => {
                        // Guest memory copied, zero pages included; the link carried
                        // `memory_wire_bytes` of it.
                        let memory = pages.pages * PAGE_SIZE;
                        info!(
                            role = self.name,
                            memory_bytes = memory,
                            zero_pages = pages.zero_pages,
                            memory_wire_bytes = pages.bytes,
                            disk_bytes = disk,
                            "sync-sent"
                        );
                        self.milestone(Milestone::SyncSent {
                            memory_bytes: memory,
                            disk_bytes: disk,
                            zero_pages: pages.zero_pages,
                        });
                        self.metrics.registry.on_sync_sent(memory, disk);
                        self.pending.push_back(Input::SyncSent {
                            memory_bytes: memory,
                            disk_bytes: disk,
                        });
                    }
                    Err(e) => self.link_down(&e.to_string(), e.closed_by_peer()),
                }
            }
            Output::Arbiter(request) => {
                info!(
                    role = self.name,
                    id = request.id.0,
                    term = request.term.0,
                    "lease-request"
                );
                self.metrics.on_lease_request(request.id, self.clock.now());
                self.arbiter.request(request);
            }
            Output::ClaimClientLink { term } => {
                let announced = self.net.claim_client_link();
                info!(
                    role = self.name,
                    term = term.0,
                    "claim-client-link {announced}"
                );
                self.milestone(Milestone::ClaimClientLink {
                    term: term.0,
                    announced,
                });
            }
            Output::Halt(reason) => {
                // The VM stops for good and the loop ends after this drain.
                self.machine.pause();
                self.end = Some(match reason {
                    HaltReason::Deposed => LoopEnd::Deposed,
                    HaltReason::Stopped => LoopEnd::Stopped,
                    HaltReason::VmFailed => LoopEnd::VmFailed,
                    HaltReason::Refused(reason) => LoopEnd::Refused(self.refusal_text(reason)),
                });
            }
            Output::Console(command) => self.on_console(command),
            Output::Link(command) => self.on_link_command(command),
            Output::Event(event) => self.on_node_event(event),
            Output::Disk(command) => self.on_disk(command),
            Output::ToGuest { nic, frame } => self.net.handle_to_guest(&self.machine, nic, frame),
            Output::ToClient(frame) | Output::WindowUpdate(frame) => {
                self.net.handle_to_client(&frame)
            }
            Output::GuestDiskDone { io, result } => self.on_guest_disk_done(io, result),
        }
    }
}
