//! The node loop's disk routing (`impl NodeLoop`): guest block requests to the node, disk
//! commands to the files, disk bulk from the peer into the store, and the disk's log lines.
//! The files and the bytes in flight are `disk.rs`'s [`GuestDisk`](super::disk); this file
//! only connects it to the loop, so that a node without a disk keeps the old behaviour.
//!
//! Invariant: with a disk every data command runs on the files and its outcome goes back to
//! the node; without one a data command fails loudly (logged) and only the secondary's
//! overlay reset completes, because a zero-size disk has empty overlays.

use super::NodeLoop;
use crate::devices::virtio::blk::BlkRequest;
use colo_core::disk::{DiskCommand, DiskEvent, DiskIoError, GuestIoError, GuestIoId};
use colo_core::node::{Input, PeerBulk};
use colo_core::wire::message::Message;

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
                    eprintln!("colo {}: error: initial disk copy: {e}", self.name);
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
            None => eprintln!(
                "colo {}: error: completion of guest disk request {io:?}, but this VM has no disk",
                self.name
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
            eprintln!(
                "colo {}: error: {:?} needs guest write {io:?}, which this node does not hold",
                self.name,
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
                eprintln!(
                    "colo {}: error: disk command {other:?}, but this VM has no disk",
                    self.name
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
                let digest = if self.config.digests {
                    self.disk_digest()
                } else {
                    String::new()
                };
                println!("{n}: disk-reset epoch={}{digest}", epoch.0);
            }
            DiskEvent::Merged { blocks } => {
                println!("{n}: disk-merged blocks={blocks}{}", self.disk_digest());
            }
            other => println!("{n}: event Disk({other:?})"),
        }
    }

    /// ` disk_digest=<crc32c>` of the disk as this VM sees it (empty without a disk).
    pub(super) fn disk_digest(&self) -> String {
        match self.disk.as_ref().map(|d| d.store().view_digest()) {
            None => String::new(),
            Some(Ok(crc)) => format!(" disk_digest={crc:08x}"),
            Some(Err(e)) => format!(" disk_digest_error=\"{e}\""),
        }
    }

    /// The `disk ...` counters line (with a disk only).
    pub(super) fn report_disk(&self) {
        let Some(d) = self.disk.as_ref() else { return };
        let st = d.stats();
        let (hidden, active) = d.store().overlay_blocks();
        println!(
            "{}: disk guest_writes={} guest_reads={} forwarded_bytes={} peer_writes={} commands={} command_errors={} stale={} hidden_blocks={hidden} active_blocks={active}",
            self.name,
            st.guest_writes,
            st.guest_reads,
            st.forwarded_bytes,
            st.peer_writes,
            st.commands,
            st.command_errors,
            st.stale
        );
    }
}
