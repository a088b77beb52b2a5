//! The full copy that starts every pairing: the initial one, and re-protection of a solo
//! survivor with a new secondary (roles may swap: the survivor is always the new primary).
//!
//! ```text
//! primary                                   secondary
//!   <------------------------------------ Hello{role S, term}
//!   HelloAccept{term}, SyncStart{mem, disk} -->        (Connecting --> Syncing)
//!   [SyncCommand::SendAll: runtime streams SyncPages / SyncDisk, tracking dirty pages]
//!   <------------------------------------ SyncProgress (every sync_progress_step bytes)
//!   [Input::SyncSent]
//!   SyncDone{e} ------------------------------>        (Syncing --> Running, checkpointer at e-1)
//!   checkpoint e (Forced): the SVM becomes a copy of the PVM and starts
//! ```
//!
//! Invariant kept: a secondary's VM serves a takeover only after it applied checkpoint `e`
//! (`has_state`), and the primary's output produced during the copy is released only under the
//! solo lease (re-protection) or by checkpoint `e`'s receipt, which covers it.

use super::{Event, Node, Output, Phase, ProtocolViolation, Side, SyncCommand};
use crate::failover::Mode;
use crate::ids::{Epoch, Term};
use crate::time::Instant;
use crate::wire::{GoodbyeReason, Message, PAGE_SIZE, pages_in};

/// The copy in progress (either side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sync {
    term: Term,
    /// Announced by `SyncStart` (secondary: 0 until it arrives).
    memory_bytes: u64,
    disk_bytes: u64,
    /// Stored by the secondary (as counted there, or as reported to the primary).
    memory_done: u64,
    disk_done: u64,
    /// Secondary: total at the last progress report.
    reported: u64,
    /// Secondary: `SyncStart` arrived.
    started: bool,
}

impl Sync {
    fn new(term: Term) -> Sync {
        Sync {
            term,
            memory_bytes: 0,
            disk_bytes: 0,
            memory_done: 0,
            disk_done: 0,
            reported: 0,
            started: false,
        }
    }
}

impl Node {
    pub(super) fn on_reprotect_command(&mut self) {
        if self.phase == Phase::Running && self.failover.mode() == Mode::Solo {
            self.reprotect_armed = true;
        } else {
            self.stats.commands_ignored += 1;
        }
    }

    /// Primary: the handshake succeeded; order the copy.
    pub(super) fn begin_sync(&mut self, _now: Instant) {
        let term = self.failover.term();
        let mut sync = Sync::new(term);
        sync.memory_bytes = self.config.guest_memory_bytes;
        sync.disk_bytes = self.config.disk.disk_size;
        sync.started = true;
        self.sync = Some(sync);
        self.send(Message::SyncStart {
            term,
            memory_bytes: sync.memory_bytes,
            disk_bytes: sync.disk_bytes,
        });
        self.out.push(Output::Sync(SyncCommand::SendAll { term }));
        self.event(Event::SyncStarted {
            term,
            memory_bytes: sync.memory_bytes,
            disk_bytes: sync.disk_bytes,
        });
    }

    /// Primary: the runtime streamed the whole copy.
    pub(super) fn on_sync_sent(&mut self, now: Instant, _memory: u64, _disk: u64) {
        let Some(sync) = self.sync else {
            self.stats.commands_ignored += 1;
            return;
        };
        if !self.is_primary_side() || self.phase != Phase::Running {
            self.stats.commands_ignored += 1;
            return;
        }
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        let epoch = p.next_epoch();
        self.sync = None;
        self.send(Message::SyncDone {
            term: sync.term,
            epoch,
        });
        if let Side::Primary(p) = &mut self.side {
            p.start_replication(now, epoch);
        }
        // What the comparator held while alone goes out now, through the gate, while the lease
        // still rules release.
        self.pump_primary(now);
        self.disks.start_forwarding();
        if self.failover.mode() == Mode::Reprotecting {
            // Reprotecting --sync done--> Paired: from here release needs the peer again.
            self.failover.handle_reprotect_done(now, true);
        }
        self.event(Event::Reprotected {
            term: sync.term,
            epoch,
        });
        if let Side::Primary(p) = &mut self.side {
            // Checkpoint e makes the SVM a copy of the PVM (pages dirtied since SendAll) and
            // starts both VMs.
            p.force_checkpoint(now);
        }
    }

    /// Re-protection failed (the newcomer left or was lost): back to solo.
    pub(super) fn abandon_reprotect(&mut self, now: Instant) {
        let term = self.failover.term();
        self.sync = None;
        self.peer = None;
        self.failover.handle_reprotect_done(now, false);
        self.event(Event::ReprotectFailed { term });
        // The newcomer is gone: its link is free for the next one.
        self.close_link(now);
    }

    pub(super) fn on_sync_message(&mut self, now: Instant, m: Message, bulk_len: u64) {
        if let Message::SyncProgress {
            term,
            memory_bytes_done,
            disk_bytes_done,
        } = m
        {
            let primary = self.is_primary_side();
            match &mut self.sync {
                Some(s) if primary => {
                    s.memory_done = memory_bytes_done;
                    s.disk_done = disk_bytes_done;
                    self.event(Event::SyncProgress {
                        term,
                        memory_bytes_done,
                        disk_bytes_done,
                    });
                }
                _ => self.stats.stale_messages += 1,
            }
            return;
        }
        if self.phase != Phase::Syncing {
            return self.protocol_error(m.kind(), ProtocolViolation::UnexpectedInPhase);
        }
        let term = self.failover.term();
        let sync = self.sync.get_or_insert(Sync::new(term));
        match m {
            Message::SyncStart {
                memory_bytes,
                disk_bytes,
                ..
            } => {
                sync.memory_bytes = memory_bytes;
                sync.disk_bytes = disk_bytes;
                sync.started = true;
                self.event(Event::SyncStarted {
                    term,
                    memory_bytes,
                    disk_bytes,
                });
            }
            Message::SyncPages { .. } | Message::SyncDisk { .. } if !sync.started => {
                self.protocol_error(m.kind(), ProtocolViolation::UnexpectedInPhase);
            }
            Message::SyncPages { ranges, .. } => {
                // Guest memory covered, zero pages included (they carry no bulk).
                let pages = pages_in(&ranges).unwrap_or(u64::MAX);
                let covered = pages.saturating_mul(PAGE_SIZE);
                sync.memory_done = sync.memory_done.saturating_add(covered);
                self.maybe_report_progress(false);
            }
            Message::SyncDisk { .. } => {
                sync.disk_done = sync.disk_done.saturating_add(bulk_len);
                self.maybe_report_progress(false);
            }
            Message::SyncDone { epoch, .. } => {
                let complete = sync.started
                    && sync.memory_done >= sync.memory_bytes
                    && sync.disk_done >= sync.disk_bytes
                    && epoch > Epoch(0);
                if !complete {
                    self.protocol_error(m.kind(), ProtocolViolation::SyncMismatch);
                    self.send(Message::Goodbye {
                        term,
                        reason: GoodbyeReason::ProtocolError,
                    });
                    // Syncing --bad copy--> Idle: the operator starts over.
                    self.sync = None;
                    self.peer = None;
                    self.phase = Phase::Idle;
                    return;
                }
                self.maybe_report_progress(true);
                self.sync = None;
                // Syncing --SyncDone(e)--> Running
                self.phase = Phase::Running;
                if let Side::Secondary(s) = &mut self.side {
                    s.start_replication(now, epoch);
                }
                self.disks.start_secondary(Epoch(epoch.0 - 1));
                self.event(Event::Reprotected { term, epoch });
            }
            _ => {}
        }
    }

    fn maybe_report_progress(&mut self, last: bool) {
        let step = self.config.sync_progress_step;
        let Some(sync) = &mut self.sync else {
            return;
        };
        let total = sync.memory_done.saturating_add(sync.disk_done);
        if !last && total - sync.reported < step {
            return;
        }
        sync.reported = total;
        let (term, memory_bytes_done, disk_bytes_done) =
            (sync.term, sync.memory_done, sync.disk_done);
        self.send(Message::SyncProgress {
            term,
            memory_bytes_done,
            disk_bytes_done,
        });
        self.event(Event::SyncProgress {
            term,
            memory_bytes_done,
            disk_bytes_done,
        });
    }
}
