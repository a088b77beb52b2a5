//! The node loop's disk routing (`impl NodeLoop`): guest block requests to the node, disk
//! commands to the files, disk bulk from the peer into the store, and the disk's log lines.
//! The files and the bytes in flight are `disk.rs`'s [`GuestDisk`](super::disk); this file
//! only connects it to the loop, so that a node without a disk keeps the old behaviour.
//!
//! Invariant: with a disk every data command runs on the files and its outcome goes back to
//! the node; without one a data command fails loudly (logged) and only the secondary's
//! overlay reset completes, because a zero-size disk has empty overlays.

use super::NodeLoop;
use crate::pair::events::Milestone;
use crate::vmm::devices::virtio::blk::BlkRequest;
use colo_core::disk::{DiskCommand, DiskEvent, DiskIoError, GuestIoError, GuestIoId};
use colo_core::node::{Input, PeerBulk};
use colo_core::wire::message::Message;
use tracing::{error, info};

impl NodeLoop {
    /// A request the guest's virtio-blk device posted.
    pub(super) fn on_guest_blk(&mut self, disk: usize, generation: u64, request: BlkRequest) {
        let input = match self.disk.as_mut() {
            Some(d) => d.on_request(disk, generation, request),
            None => None, // a device without medium never posts
        };
        if let Some(input) = input {
            self.input(input);
        }
    }

    /// Disk bulk from the peer (`SyncDisk`, `DiskWrite`) into the files or the staging; the
    /// bulk the node then sees (its length only).
    pub(super) fn store_disk_bulk(&mut self, message: &Message, bytes: Vec<u8>) -> PeerBulk {
        let len = bytes.len() as u64;
        let Some(d) = self.disk.as_mut() else {
            return PeerBulk::Frame(bytes);
        };
        match *message {
            // The initial copy of the disk goes straight into the parent image.
            Message::SyncDisk { offset, .. } => {
                if let Err(e) = d.on_sync_disk(offset, &bytes) {
                    error!(role = self.name, "error: initial disk copy: {e}");
                    // Not counted as received: the node's SyncDone check fails the copy.
                    return PeerBulk::Stored { len: 0 };
                }
            }
            // A forwarded write's bytes wait in the store until the node acknowledges it.
            Message::DiskWrite {
                write_id, offset, ..
            } => d.on_peer_write(write_id, offset, bytes),
            _ => return PeerBulk::Frame(bytes),
        }
        PeerBulk::Stored { len }
    }

    /// `Output::GuestDiskDone`: the guest's request completes.
    pub(super) fn on_guest_disk_done(&mut self, io: GuestIoId, result: Result<(), GuestIoError>) {
        match self.disk.as_mut() {
            Some(d) => d.on_guest_done(io, result),
            None => error!(
                role = self.name,
                "error: completion of guest disk request {io:?}, but this VM has no disk"
            ),
        }
    }

    /// A checkpoint is about to be applied: the device state it loads replaces this VM's
    /// requests, so what the old VM asked for becomes stale.
    pub(super) fn before_apply(&mut self) {
        if let Some(d) = self.disk.as_mut() {
            d.new_generation();
        }
    }

    /// The bytes of guest write `io` for an outgoing `DiskWrite` (logged and `None` if this
    /// node does not hold them).
    pub(super) fn guest_write_bulk(&mut self, message: &Message, io: GuestIoId) -> Option<Vec<u8>> {
        let bytes = self.disk.as_mut().and_then(|d| d.forward_bulk(io));
        if bytes.is_none() {
            error!(
                role = self.name,
                "error: {:?} needs guest write {io:?}, which this node does not hold",
                message.kind()
            );
        }
        bytes
    }

    /// An outgoing `DiskAck` ends its forwarded write: its staged bytes go.
    pub(super) fn before_disk_send(&mut self, message: &Message) {
        if let (Message::DiskAck { write_id, .. }, Some(d)) = (message, self.disk.as_mut()) {
            d.on_ack_sent(*write_id);
        }
    }

    /// With a disk the files execute the command. Without one the only disk command a node
    /// issues is the secondary's per-checkpoint overlay reset: on a zero-size disk the overlays
    /// are empty, so it is done. Anything touching data cannot be executed: it fails, loudly.
    pub(super) fn on_disk(&mut self, command: DiskCommand) {
        if let Some(d) = self.disk.as_mut() {
            let done = d.on_command(command);
            self.pending.push_back(done);
            return;
        }
        let op = command.op();
        let result = match command {
            DiskCommand::ResetOverlays { .. } => Ok(()),
            other => {
                error!(
                    role = self.name,
                    "error: disk command {other:?}, but this VM has no disk"
                );
                Err(DiskIoError::Io)
            }
        };
        self.pending.push_back(Input::DiskDone { op, result });
    }

    /// The node's disk events: milestones get their own log lines.
    pub(super) fn on_disk_event(&mut self, event: DiskEvent) {
        let n = self.name;
        match event {
            DiskEvent::OverlaysReset { epoch } => {
                // The SVM's disk view now equals the primary's disk as of `epoch`.
                let (disk_digest, disk_digest_error) = if self.config.digests {
                    self.disk_digest()
                } else {
                    (None, None)
                };
                info!(
                    role = n,
                    epoch = epoch.0,
                    disk_digest = disk_digest.as_deref(),
                    disk_digest_error = disk_digest_error.as_deref(),
                    "disk-reset"
                );
                self.milestone(Milestone::DiskReset {
                    epoch: epoch.0,
                    disk_digest,
                });
            }
            DiskEvent::Merged { blocks } => {
                let (disk_digest, disk_digest_error) = self.disk_digest();
                info!(
                    role = n,
                    blocks,
                    disk_digest = disk_digest.as_deref(),
                    disk_digest_error = disk_digest_error.as_deref(),
                    "disk-merged"
                );
                self.milestone(Milestone::DiskMerged {
                    blocks,
                    disk_digest,
                });
            }
            other => info!(role = n, "event Disk({other:?})"),
        }
    }

    /// The crc32c of the disk as this VM sees it (hex), or why it could not be computed
    /// (quoted); neither without a disk.
    pub(super) fn disk_digest(&self) -> (Option<String>, Option<String>) {
        match self.disk.as_ref().map(|d| d.store().view_digest()) {
            None => (None, None),
            Some(Ok(crc)) => (Some(format!("{crc:08x}")), None),
            Some(Err(e)) => (None, Some(format!("\"{e}\""))),
        }
    }

    /// The `disk ...` counters line (with a disk only).
    pub(super) fn report_disk(&self) {
        let Some(d) = self.disk.as_ref() else { return };
        let st = d.stats();
        let (hidden, active) = d.store().overlay_blocks();
        info!(
            role = self.name,
            guest_writes = st.guest_writes,
            guest_reads = st.guest_reads,
            forwarded_bytes = st.forwarded_bytes,
            peer_writes = st.peer_writes,
            commands = st.commands,
            command_errors = st.command_errors,
            stale = st.stale,
            hidden_blocks = hidden,
            active_blocks = active,
            "disk"
        );
        self.milestone(Milestone::Disk {
            guest_writes: st.guest_writes,
            guest_reads: st.guest_reads,
            forwarded_bytes: st.forwarded_bytes,
            peer_writes: st.peer_writes,
            commands: st.commands,
            command_errors: st.command_errors,
            stale: st.stale,
            hidden_blocks: hidden as u64,
            active_blocks: active as u64,
        });
    }
}
