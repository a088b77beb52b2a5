//! The secondary-side data paths: mirrored frames through the rewriter into the SVM, SVM frames
//! through the rewriter to the primary's comparator (tagged with the last applied epoch),
//! checkpoint messages into the checkpointer, forwarded disk writes into the overlays, and the
//! checkpointer's `ResetDisk` / `ResetRewriter` into the disk machine and the rewriter. After a
//! takeover the same rewriter keeps translating between the clients (who hold the old primary's
//! sequence numbers) and the SVM, followed by the client-facing translation the primary sent
//! (`Message::ClientTranslation`, non-empty when that primary had itself taken over), and SVM
//! frames go to the client through the solo gate.
//!
//! The SVM's TCP segments the client has not acknowledged are kept (`rewrite::resend`) and
//! sent again at the takeover (`solo.rs`), instead of waiting for the guest's own
//! retransmission timer.
//!
//! Invariant kept: while the primary lives, no SVM frame reaches a client (architecture.md
//! invariant 1, last sentence): SVM output goes only to the peer until this node's takeover
//! holds a lease.

use super::{Event, Node, NodeConfig, OutBulk, Output, Phase, ProtocolViolation, Side};
use crate::checkpoint::{
    CheckpointConfig, CheckpointOutput, SecondaryCheckpointer, SecondaryPhase,
};
use crate::ids::{Epoch, NicId};
use crate::rewrite::{ClientTranslation, Rewriter, RewriterConfig, TranslatedConn};

use crate::rewrite::resend::{ResendBuffer, ResendConfig};
use crate::time::Instant;
use crate::wire::Message;

/// The machines of a secondary-side node.
#[derive(Debug)]
pub(super) struct SecondarySide {
    /// The rewriter (SVM -> primary guest numbering), followed after a takeover by the
    /// primary's client-facing translation as of its last complete `ClientTranslation`
    /// snapshot (empty unless that primary had itself taken over).
    pub(super) xlate: ClientTranslation,
    /// Parts of a snapshot still arriving, and the next part number expected.
    incoming: Vec<TranslatedConn>,
    incoming_part: u32,
    rewriter_config: RewriterConfig,
    /// The SVM's TCP output the client has not acknowledged, resent at takeover.
    pub(super) resend: ResendBuffer,
    /// `None` until replication starts (`SyncDone`).
    pub(super) checkpointer: Option<SecondaryCheckpointer>,
    checkpoint_config: CheckpointConfig,
    /// Mirrored frames that arrived while the SVM was paused for a checkpoint, with the epoch
    /// of the first checkpoint whose state includes them (see [`SecondarySide::release_backlog`]).
    backlog: std::collections::VecDeque<(Epoch, NicId, Vec<u8>)>,
    /// Backlog frames dropped because the applied checkpoint already contains their effect.
    pub(super) covered_frames: u64,
}

impl SecondarySide {
    pub(super) fn new(config: &NodeConfig) -> SecondarySide {
        SecondarySide {
            xlate: ClientTranslation::new(config.rewriter),
            incoming: Vec::new(),
            incoming_part: 0,
            rewriter_config: config.rewriter,
            resend: ResendBuffer::new(ResendConfig::default()),
            checkpointer: None,
            checkpoint_config: config.checkpoint,
            backlog: std::collections::VecDeque::new(),
            covered_frames: 0,
        }
    }

    /// One part of the primary's client-facing translation snapshot. Returns false for a part
    /// out of order (a protocol error; the parts so far are dropped).
    fn translation_part(
        &mut self,
        now: Instant,
        part: u32,
        last: bool,
        conns: Vec<TranslatedConn>,
    ) -> bool {
        if part == 0 {
            self.incoming.clear();
        } else if part != self.incoming_part {
            self.incoming.clear();
            self.incoming_part = 0;
            return false;
        }
        // More than the table holds is refused by `from_translated`; never buffer beyond it.
        let room = self
            .rewriter_config
            .connections_max
            .saturating_sub(self.incoming.len());
        self.incoming.extend(conns.into_iter().take(room));
        self.incoming_part = part.wrapping_add(1);
        if last {
            let conns = std::mem::take(&mut self.incoming);
            self.xlate
                .inherit(Rewriter::from_translated(self.rewriter_config, now, &conns));
            self.incoming_part = 0;
        }
        true
    }

    /// Whether the SVM is paused for a checkpoint (so a mirrored frame must wait).
    fn paused(&self) -> bool {
        self.checkpointer
            .as_ref()
            .is_some_and(|k| !matches!(k.phase(), SecondaryPhase::Running | SecondaryPhase::Solo))
    }

    /// The SVM runs again with checkpoint `applied`: frames the PVM consumed before that
    /// checkpoint's pause are part of its state already (delivering them again would make the
    /// SVM consume them twice); the rest go to the SVM in arrival order.
    fn release_backlog(&mut self) -> Vec<(NicId, Vec<u8>)> {
        if self.paused() {
            return Vec::new();
        }
        let applied = self.applied();
        let mut frames = Vec::new();
        while let Some((epoch, nic, frame)) = self.backlog.pop_front() {
            if epoch <= applied {
                self.covered_frames += 1;
            } else {
                frames.push((nic, frame));
            }
        }
        frames
    }

    /// The last applied checkpoint.
    pub(super) fn applied(&self) -> Epoch {
        self.checkpointer
            .as_ref()
            .map_or(Epoch(0), SecondaryCheckpointer::applied)
    }

    /// Replication starts; the next checkpoint is `epoch`.
    pub(super) fn start_replication(&mut self, now: Instant, epoch: Epoch) {
        let applied = Epoch(epoch.0.saturating_sub(1));
        let ck = SecondaryCheckpointer::before_first_apply(self.checkpoint_config, applied, now)
            .expect("checkpoint config validated at Node::new");
        self.checkpointer = Some(ck);
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.checkpointer.as_ref().and_then(|k| k.poll_timeout())
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if let Some(k) = &mut self.checkpointer {
            k.handle_timeout(now);
        }
    }

    pub(super) fn vm_idle(&self) -> bool {
        self.checkpointer
            .as_ref()
            .is_none_or(|k| k.phase() == SecondaryPhase::Solo)
    }
}

impl Node {
    /// A frame the SVM sent.
    pub(super) fn secondary_guest_frame(&mut self, now: Instant, mut frame: Vec<u8>) {
        let paired = self.failover.is_paired();
        let replicating = paired && self.phase == Phase::Running && self.peer.is_some();
        let Side::Secondary(s) = &mut self.side else {
            return;
        };
        if !paired {
            // After the takeover: to the client, in the numbering the client holds.
            s.xlate.translate_outbound(now, &mut frame);
            self.emit_solo(now, frame);
            return;
        }
        s.xlate.own_mut().rewrite_outbound(now, &mut frame);
        if self.phase == Phase::Running {
            // Kept for a resend at takeover while the client has not acknowledged it; also
            // when the peer link is down (the frame then reaches nobody: the primary may have
            // died just after mirroring the request this answers).
            let rewriter = s.xlate.own();
            s.resend.record_guest(&frame, |key| {
                rewriter.phase(key).and_then(|p| p.offset()).is_some()
            });
        }
        if replicating {
            // QEMU's filter-redirector: SVM output goes to the primary's comparator, tagged
            // with the state it came from so the primary can drop output of replaced state.
            let epoch = s.applied();
            self.send_with(Message::SecondaryOutput { epoch }, OutBulk::Frame(frame));
        } else {
            // Paired but not replicating yet (the SVM is created paused; nothing should come):
            // never to a client while the primary lives.
            self.stats.stale_secondary_output += 1;
        }
    }

    /// A client frame: only after a takeover does the client link lead here.
    pub(super) fn secondary_client_frame(&mut self, now: Instant, nic: NicId, mut frame: Vec<u8>) {
        if self.failover.is_paired() {
            self.stats.client_frames_on_secondary += 1;
            return;
        }
        if let Side::Secondary(s) = &mut self.side {
            s.xlate.translate_inbound(now, &mut frame);
            self.out.push(Output::ToGuest { nic, frame });
        }
    }

    /// Peer messages for the secondary side (validated for direction, bulk and term).
    pub(super) fn secondary_peer_message(
        &mut self,
        now: Instant,
        message: Message,
        frame: Vec<u8>,
        bulk_len: u64,
    ) {
        let Side::Secondary(s) = &mut self.side else {
            return;
        };
        match message {
            Message::MirroredFrame { epoch, nic } => {
                let mut frame = frame;
                // The client's ACK, in the numbering the resend buffer keeps.
                s.resend.record_client(&frame);
                s.xlate.own_mut().rewrite_inbound(now, &mut frame);
                if s.paused() || !s.backlog.is_empty() {
                    s.backlog.push_back((epoch, nic, frame));
                } else {
                    self.out.push(Output::ToGuest { nic, frame });
                }
            }
            Message::DiskWrite {
                epoch,
                write_id,
                offset,
                len,
            } => self.disks.handle_peer_write(write_id, epoch, offset, len),
            Message::ClientTranslation { part, last, conns } => {
                if !s.translation_part(now, part, last, conns) {
                    self.protocol_error(
                        crate::wire::MessageKind::ClientTranslation,
                        ProtocolViolation::UnexpectedInPhase,
                    );
                }
            }
            m @ (Message::CheckpointRequest { .. }
            | Message::PageBatch { .. }
            | Message::DeviceState { .. }
            | Message::CheckpointSent { .. }
            | Message::CheckpointAbort { .. }) => match &mut s.checkpointer {
                Some(k) => k.handle_message(now, &m, bulk_len),
                None => self.protocol_error(m.kind(), ProtocolViolation::UnexpectedInPhase),
            },
            m => self.protocol_error(m.kind(), ProtocolViolation::UnexpectedInPhase),
        }
    }

    /// Drains the checkpointer. Returns whether anything came out.
    pub(super) fn pump_secondary(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        loop {
            let Side::Secondary(s) = &mut self.side else {
                return progressed;
            };
            let Some(o) = s.checkpointer.as_mut().and_then(|k| k.poll_output()) else {
                if !s.backlog.is_empty() {
                    for (nic, frame) in s.release_backlog() {
                        self.out.push(Output::ToGuest { nic, frame });
                    }
                }
                return progressed;
            };
            progressed = true;
            match o {
                CheckpointOutput::Send(m) => self.send_checkpoint_message(m),
                CheckpointOutput::Vm(c) => self.out.push(Output::Vm(c)),
                CheckpointOutput::ResetDisk { epoch } => self.disks.handle_checkpoint(epoch),
                CheckpointOutput::ResetRewriter { .. } => {
                    #[cfg(feature = "canaries")]
                    if self.canary(super::NodeCanary::SkipRewriterReset) {
                        // Planted (canary.rs): the stale offsets stay.
                        continue;
                    }
                    if let Side::Secondary(s) = &mut self.side {
                        s.xlate.own_mut().reset_offsets();
                        // The SVM's earlier output belongs to replaced state.
                        s.resend.clear();
                    }
                }
                CheckpointOutput::ReleaseOutput { .. } => {}
                CheckpointOutput::Event(e) => self.on_checkpoint_event(now, e),
            }
        }
    }

    /// A VM command of a checkpoint failed. Most failures abort the checkpoint in progress (the
    /// checkpointers' rule) and the VM is as it was. Two leave this node's VM unusable: a
    /// failed `Resume` leaves it paused (a PVM, or an SVM that then could only take over
    /// paused), and a secondary whose `ApplyCheckpoint` failed holds a half-applied SVM, no
    /// copy of any checkpoint, which must never serve a takeover (found by colo-sim's
    /// `vm_failure`, seeds 188, 231, 332, and 194 for the SVM's resume). Either way this node
    /// is the broken one: while paired it says goodbye and stops, so that the peer serves (the
    /// supervisor restarts it as a newcomer); a secondary also gives up its state for good,
    /// so no later trigger makes it take over.
    ///
    /// Neither is retried. The runtime's apply (`VmExecutor::apply`, then
    /// `vmm::checkpoint::apply_checkpoint`) takes the epoch's device state out before it can
    /// fail and reads and clears the SVM's dirty log before the copy,
    /// so a second attempt would have no device state and would not know which pages the SVM
    /// wrote; and each way it fails (a device state that does not decode or load, a page range
    /// outside memory, a dirty-log or register ioctl error) fails again on the same input. Its
    /// `Machine::resume` cannot fail on a VM holding a guest, and fails for good on one that
    /// never received a checkpoint. A fresh process with a full copy is the recovery.
    fn on_vm_command_failed(&mut self, command: crate::checkpoint::VmCommandKind) {
        use crate::checkpoint::VmCommandKind as K;
        match (&self.side, command) {
            (Side::Primary(_), K::Resume) => self.on_own_vm_stuck(),
            (Side::Secondary(_), K::ApplyCheckpoint | K::Resume) => {
                self.has_state = false;
                self.on_own_vm_stuck();
            }
            _ => {}
        }
    }

    /// The disk machine emptied its overlays for `epoch`: the apply may finish.
    pub(super) fn secondary_disk_reset(&mut self, now: Instant, epoch: Epoch) {
        if let Side::Secondary(s) = &mut self.side
            && let Some(k) = &mut s.checkpointer
        {
            k.handle_disk_reset(now, epoch);
        }
    }

    /// A checkpoint milestone or fault, from either role's checkpointer: acted on, then
    /// reported as it came ([`Event::Checkpoint`]), except a protocol error (reported as the
    /// node's own) and the readiness for a takeover (acted on only).
    pub(super) fn on_checkpoint_event(
        &mut self,
        now: Instant,
        e: crate::checkpoint::CheckpointEvent,
    ) {
        use crate::checkpoint::CheckpointEvent as C;
        match e {
            C::ProtocolError {
                epoch,
                kind,
                message_epoch,
            } => {
                return self.protocol_error(
                    kind,
                    ProtocolViolation::Checkpoint {
                        epoch,
                        message_epoch,
                    },
                );
            }
            C::ReadyForTakeover { .. } => return self.on_ready_for_takeover(now),
            C::CheckpointDone { .. } => {
                if let Side::Primary(p) = &mut self.side {
                    p.pvm_started = true;
                }
            }
            // The SVM is now a copy of the PVM: it may serve a takeover.
            C::CheckpointApplied { .. } => self.has_state = true,
            C::Aborted { .. } | C::Stuck { .. } | C::VmFailed { .. } => {}
        }
        // Reported before what it causes (a failover, a goodbye and a halt).
        self.event(Event::Checkpoint(e.clone()));
        match e {
            C::Stuck { phase, .. } => match phase {
                // The peer stopped answering: stop depending on it.
                crate::checkpoint::StuckPhase::AwaitingPeer => {
                    self.trigger_failover(now, crate::failover::FailoverReason::CheckpointStuck)
                }
                // Our own VM stopped answering: this node is the broken one. Taking over
                // would leave the service on a stuck VM; say goodbye so the peer takes
                // over, and stop.
                crate::checkpoint::StuckPhase::AwaitingVm => self.on_own_vm_stuck(),
            },
            C::VmFailed { command, .. } => self.on_vm_command_failed(command),
            _ => {}
        }
    }
}

#[cfg(test)]
mod translation_tests {
    use super::*;
    use crate::rewrite::ConnKey;

    fn conn(port: u16) -> TranslatedConn {
        TranslatedConn {
            key: ConnKey {
                vlan: None,
                guest_addr: "10.0.0.2".parse().unwrap(),
                guest_port: 80,
                peer_addr: "10.0.0.9".parse().unwrap(),
                peer_port: port,
            },
            offset: 5,
        }
    }

    fn side(connections_max: usize) -> SecondarySide {
        let mut config = NodeConfig::new(crate::ids::NodeId(2), crate::ids::ClusterId(7));
        config.rewriter.connections_max = connections_max;
        SecondarySide::new(&config)
    }

    #[test]
    fn a_snapshot_in_parts_replaces_the_inherited_translation_when_its_last_part_arrives() {
        let mut s = side(16);
        let t = Instant::from_nanos(1);
        assert!(s.translation_part(t, 0, false, vec![conn(1), conn(2)]));
        assert_eq!(
            s.xlate.inherited().connections(),
            0,
            "nothing before the last part"
        );
        assert!(s.translation_part(t, 1, true, vec![conn(3)]));
        assert_eq!(s.xlate.inherited().translated().count(), 3);
        // A new snapshot replaces the old one whole.
        assert!(s.translation_part(t, 0, true, vec![conn(9)]));
        let kept: Vec<u16> = s
            .xlate
            .inherited()
            .translated()
            .map(|c| c.key.peer_port)
            .collect();
        assert_eq!(kept, vec![9]);
    }

    #[test]
    fn a_part_out_of_order_is_refused_and_the_parts_so_far_dropped() {
        let mut s = side(16);
        let t = Instant::from_nanos(1);
        assert!(s.translation_part(t, 0, true, vec![conn(7)]));
        assert!(s.translation_part(t, 0, false, vec![conn(1)]));
        assert!(!s.translation_part(t, 2, true, vec![conn(2)]));
        assert!(
            !s.translation_part(t, 1, true, vec![conn(3)]),
            "the snapshot restarts at 0"
        );
        let kept: Vec<u16> = s
            .xlate
            .inherited()
            .translated()
            .map(|c| c.key.peer_port)
            .collect();
        assert_eq!(kept, vec![7], "the last complete snapshot stays");
    }

    #[test]
    fn a_snapshot_larger_than_the_table_keeps_what_fits() {
        let mut s = side(2);
        let t = Instant::from_nanos(1);
        assert!(s.translation_part(t, 0, false, vec![conn(1), conn(2), conn(3)]));
        assert!(s.translation_part(t, 1, true, vec![conn(4)]));
        assert_eq!(s.xlate.inherited().connections(), 2);
    }
}
