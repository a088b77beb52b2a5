//! Routing of the local inputs (client frames, guest frames, guest disk requests) to the side
//! that owns them, and the pumps that drain the heartbeat, the side's machines and the disk
//! machines into the node's output queue.
//!
//! Invariant kept: every input frame ends in exactly one place: delivered (guest or client),
//! sent (peer), held by the comparator or the solo hold, or counted by a named statistic; the
//! pumps move every sub-machine output to the node's queue in the order it was produced.

use super::{Event, GuestDiskRequest, Node, OutBulk, Output, Phase, Side};
use crate::disk::{DiskEvent, DiskOutput};
use crate::failover::{FailoverReason, Mode};
use crate::heartbeat::HeartbeatEvent;
use crate::ids::NicId;
use crate::time::Instant;
use crate::wire::Message;

impl Node {
    pub(super) fn on_client_frame(&mut self, now: Instant, nic: NicId, frame: Vec<u8>) {
        if self.phase == Phase::Idle {
            self.stats.ignored_before_start += 1;
            return;
        }
        if self.failover.mode() == Mode::Deposed {
            // A deposed node's VM must not act on client input any more: its output would
            // never be released and its state is being replaced.
            self.stats.fenced_frames += 1;
            return;
        }
        if self.is_primary_side() {
            self.primary_client_frame(now, nic, frame);
        } else {
            self.secondary_client_frame(now, nic, frame);
        }
    }

    pub(super) fn on_guest_frame(&mut self, now: Instant, frame: Vec<u8>) {
        if self.failover.mode() == Mode::Deposed {
            self.stats.fenced_frames += 1;
            return;
        }
        if self.is_primary_side() {
            self.primary_guest_frame(now, frame);
        } else {
            self.secondary_guest_frame(now, frame);
        }
    }

    pub(super) fn on_guest_disk(&mut self, _now: Instant, req: GuestDiskRequest) {
        match req {
            GuestDiskRequest::Read { io, offset, len } => {
                self.disks.handle_guest_read(io, offset, len);
            }
            GuestDiskRequest::Write { io, offset, len } => {
                // The epoch the write belongs to: the checkpoint that will cover it.
                let epoch = match &self.side {
                    Side::Primary(p) => p.next_epoch(),
                    Side::Secondary(s) => s.applied().next(),
                };
                self.disks.handle_guest_write(io, epoch, offset, len);
            }
        }
    }

    /// Drains the heartbeat: probes to send, state changes to act on.
    pub(super) fn pump_heartbeat(&mut self, now: Instant) -> bool {
        if !self.heartbeat_active() {
            return false;
        }
        let mut progressed = false;
        if let Some(beat) = self.heartbeat.poll_send() {
            progressed = true;
            let term = self.failover.term();
            let epoch = self.current_epoch();
            self.heartbeat_probe = Some((beat.seq, now));
            self.send(Message::Heartbeat {
                term,
                seq: beat.seq,
                epoch,
            });
        }
        while let Some(ev) = self.heartbeat.poll_event() {
            progressed = true;
            self.event(Event::Peer(ev));
            match ev {
                HeartbeatEvent::PeerSuspect { .. } | HeartbeatEvent::PeerRecovered => {}
                HeartbeatEvent::PeerLost { .. } => {
                    // Nothing arrives on this link any more: close it, so that the peer's
                    // next incarnation (a power loss sends no FIN) finds this node free.
                    self.close_link(now);
                    if self.sync.is_some() && self.failover.mode() == Mode::Reprotecting {
                        self.abandon_reprotect(now);
                    } else if self.phase == Phase::Syncing {
                        // The copy's source is gone; this node has nothing to serve with.
                        self.sync = None;
                        self.peer = None;
                        self.phase = Phase::Idle;
                    } else {
                        self.trigger_failover(now, FailoverReason::PeerLost);
                    }
                }
            }
        }
        progressed
    }

    pub(super) fn pump_side(&mut self, now: Instant) -> bool {
        if self.is_primary_side() {
            self.pump_primary(now)
        } else {
            self.pump_secondary(now)
        }
    }

    pub(super) fn pump_disks(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        while let Some(o) = self.disks.poll_output() {
            progressed = true;
            match o {
                DiskOutput::Command(c) => self.out.push(Output::Disk(c)),
                DiskOutput::GuestDone { io, result } => {
                    self.out.push(Output::GuestDiskDone { io, result });
                }
                DiskOutput::Forward {
                    write_id,
                    epoch,
                    offset,
                    len,
                    io,
                } => self.send_with(
                    Message::DiskWrite {
                        epoch,
                        write_id,
                        offset,
                        len,
                    },
                    OutBulk::GuestWrite(io),
                ),
                DiskOutput::Ack { write_id, result } => {
                    self.send_checkpoint_message(Message::DiskAck { write_id, result });
                }
                DiskOutput::Event(e) => {
                    self.event(Event::Disk(e));
                    match e {
                        DiskEvent::OverlaysReset { epoch } => self.secondary_disk_reset(now, epoch),
                        DiskEvent::PeerWriteFailed { .. } => {
                            self.trigger_failover(now, FailoverReason::PeerDiskFailed);
                        }
                        _ => {}
                    }
                }
            }
        }
        progressed
    }
}
