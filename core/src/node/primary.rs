//! The primary-side data paths: client frames to the PVM and mirrored to the secondary, PVM
//! frames and the secondary's frames into the comparator, comparator releases to the client,
//! comparator checkpoint requests into the checkpointer, and the checkpointer's
//! `ReleaseOutput(e)` back into the comparator.
//!
//! Invariant kept (output commit, architecture.md invariant 1): a PVM frame reaches the client
//! (a) when the comparator matched it with the secondary's frame, (b) at `ReleaseOutput(e)`,
//! which the checkpointer emits only on `CheckpointReceived(e)`, or (c) through the solo gate
//! (`solo.rs`) once this node runs alone under a lease. Secondary output of an epoch older
//! than the last released checkpoint is dropped and counted: it came from SVM state that
//! checkpoint replaced.

use super::{Event, Node, NodeConfig, NodeConfigError, OutBulk, Output, Side};
use crate::checkpoint::{CheckpointConfig, CheckpointOutput, PrimaryCheckpointer, PrimaryPhase};
use crate::compare::{Comparator, CompareOutput};
use crate::failover::Mode;
use crate::ids::{CheckpointReason, Epoch, NicId};
use crate::rewrite::{ClientTranslation, TRANSLATED_CONNS_PER_MESSAGE, TranslatedConn};
use crate::time::{Duration, Instant};
use crate::wire::Message;

/// The machines of a primary-side node.
#[derive(Debug)]
pub(super) struct PrimarySide {
    pub(super) comparator: Comparator,
    /// `None` until replication starts (`SyncDone`), replaced at each re-protection.
    pub(super) checkpointer: Option<PrimaryCheckpointer>,
    checkpoint_config: CheckpointConfig,
    /// The last epoch whose output was released; older secondary output is stale.
    pub(super) released: Epoch,
    /// The last completed checkpoint when no checkpointer exists.
    base_epoch: Epoch,
    /// A former secondary that took over keeps its rewriter (composed with what it inherited)
    /// as the client-facing translator: clients keep the old primary's sequence numbers for
    /// their connections' whole life.
    pub(super) client_xlate: Option<ClientTranslation>,
    /// The translation snapshot the secondary holds (sent on this link), `None` when nothing
    /// was sent on it yet: a new pairing and every link reset send it again.
    translation_sent: Option<Vec<TranslatedConn>>,
    /// Whether the PVM was ever started (created paused; the first checkpoint starts it).
    pub(super) pvm_started: bool,
}

impl PrimarySide {
    pub(super) fn new(config: &NodeConfig) -> Result<PrimarySide, NodeConfigError> {
        #[allow(unused_mut)]
        let mut comparator = Comparator::new(config.compare.clone())?;
        #[cfg(feature = "canaries")]
        if config.canary == Some(super::NodeCanary::ReleaseControlUnguarded) {
            // Planted (canary.rs): control segments leave without the secondary's.
            comparator.plant_unguarded_control();
        }
        Ok(PrimarySide {
            comparator,
            checkpointer: None,
            checkpoint_config: config.checkpoint,
            released: Epoch(0),
            base_epoch: Epoch(0),
            client_xlate: None,
            translation_sent: None,
            pvm_started: false,
        })
    }

    /// A former secondary becomes the primary of a new pair (re-protection): its comparator
    /// starts solo (it ran alone until now) and its rewriter translates at the client edge.
    pub(super) fn from_survivor(
        config: &NodeConfig,
        applied: Epoch,
        translation: ClientTranslation,
        now: Instant,
    ) -> Result<PrimarySide, NodeConfigError> {
        let mut p = PrimarySide::new(config)?;
        p.comparator.release_all(now);
        p.base_epoch = applied;
        p.released = applied;
        p.client_xlate = Some(translation);
        p.pvm_started = true;
        Ok(p)
    }

    /// The last completed checkpoint.
    pub(super) fn last_done(&self) -> Epoch {
        self.checkpointer
            .as_ref()
            .map_or(self.base_epoch, PrimaryCheckpointer::last_done)
    }

    /// Whether the current pairing completed a checkpoint: from then on the secondary has
    /// answered the accept, so a `Hello` from it can only come from a restarted node (a retry
    /// that crossed the accept arrives before anything the secondary sent after it).
    pub(super) fn replicated_once(&self) -> bool {
        self.checkpointer
            .as_ref()
            .is_some_and(|c| c.last_done() > self.base_epoch)
    }

    /// The first epoch a new pairing may use: above every number this node has used.
    pub(super) fn next_epoch(&self) -> Epoch {
        self.checkpointer
            .as_ref()
            .map_or(self.base_epoch.next(), PrimaryCheckpointer::epoch)
    }

    /// Replication with a fresh copy starts at checkpoint `epoch`.
    pub(super) fn start_replication(&mut self, now: Instant, epoch: Epoch) {
        let done = Epoch(epoch.0.saturating_sub(1));
        let ck = PrimaryCheckpointer::new(self.checkpoint_config, done, now)
            .expect("checkpoint config validated at Node::new");
        self.checkpointer = Some(ck);
        self.released = done;
        self.base_epoch = done;
        self.translation_sent = None;
        self.comparator.attach_secondary(now);
    }

    /// The link to the secondary was replaced: what was sent on the old one may be lost.
    pub(super) fn handle_link_reset(&mut self, now: Instant) {
        self.translation_sent = None;
        if let Some(c) = self.checkpointer.as_mut() {
            c.handle_link_reset(now);
        }
    }

    /// The client-facing translation's parts to send before the next checkpoint request, if
    /// the secondary's copy is not current (see `Message::ClientTranslation`).
    fn translation_update(&mut self) -> Vec<Message> {
        let Some(x) = &self.client_xlate else {
            return Vec::new();
        };
        let snapshot = x.snapshot();
        if self.translation_sent.as_ref() == Some(&snapshot) {
            return Vec::new();
        }
        let mut parts: Vec<Message> = snapshot
            .chunks(TRANSLATED_CONNS_PER_MESSAGE)
            .enumerate()
            .map(|(i, conns)| Message::ClientTranslation {
                part: i as u32,
                last: false,
                conns: conns.to_vec(),
            })
            .collect();
        if parts.is_empty() {
            parts.push(Message::ClientTranslation {
                part: 0,
                last: true,
                conns: Vec::new(),
            });
        }
        if let Some(Message::ClientTranslation { last, .. }) = parts.last_mut() {
            *last = true;
        }
        self.translation_sent = Some(snapshot);
        parts
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let c = self.comparator.poll_timeout();
        let k = self.checkpointer.as_ref().and_then(|k| k.poll_timeout());
        match (c, k) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.comparator.handle_timeout(now);
        if let Some(k) = &mut self.checkpointer {
            k.handle_timeout(now);
        }
    }

    pub(super) fn force_checkpoint(&mut self, now: Instant) {
        if let Some(k) = &mut self.checkpointer {
            k.handle_trigger(now, CheckpointReason::Forced);
        }
    }

    /// A zero interval is refused (it would checkpoint continuously, and the next pairing's
    /// checkpointer could not be built with it); returns whether the interval was taken.
    /// The periodic checkpoint interval in force.
    pub(super) fn checkpoint_interval(&self) -> Duration {
        self.checkpoint_config.checkpoint_interval
    }

    pub(super) fn set_interval(&mut self, now: Instant, interval: Duration) -> bool {
        if interval.is_zero() {
            return false;
        }
        self.checkpoint_config.checkpoint_interval = interval;
        if let Some(k) = &mut self.checkpointer {
            k.handle_set_interval(now, interval);
        }
        true
    }

    /// Whether the checkpointer issues no VM command now (so the node may pause the guest
    /// for backpressure without interleaving with a checkpoint).
    pub(super) fn vm_idle(&self) -> bool {
        self.checkpointer
            .as_ref()
            .is_none_or(|k| k.phase() == PrimaryPhase::Solo)
    }
}

impl Node {
    /// Whether mirrored frames and checkpoints flow to a secondary now.
    pub(super) fn primary_replicating(&self) -> bool {
        matches!(&self.side, Side::Primary(p) if p.checkpointer.is_some())
            && self.failover.is_paired()
            && self.peer.is_some()
    }

    pub(super) fn primary_client_frame(&mut self, now: Instant, nic: NicId, mut frame: Vec<u8>) {
        let replicating = self.primary_replicating();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        if let Some(x) = &mut p.client_xlate {
            x.translate_inbound(now, &mut frame);
        }
        if replicating {
            // QEMU's filter-mirror: the SVM sees exactly the PVM's input. The tag is the first
            // checkpoint whose state includes the PVM's consumption of the frame: the one in
            // progress or next, or the one after it when the PVM will only see the frame after
            // that checkpoint's pause (a paused or never-started PVM consumes it on resume).
            let epoch = p.checkpointer.as_ref().map_or(Epoch(0), |k| {
                let after_pause = !matches!(
                    k.phase(),
                    PrimaryPhase::Idle { .. } | PrimaryPhase::Requested | PrimaryPhase::Solo
                );
                if after_pause || !p.pvm_started {
                    k.epoch().next()
                } else {
                    k.epoch()
                }
            });
            self.out.push(Output::ToGuest {
                nic,
                frame: frame.clone(),
            });
            self.send_with(Message::MirroredFrame { epoch, nic }, OutBulk::Frame(frame));
        } else {
            // Alone, or before the pairing's copy (which covers what the PVM saw until then).
            self.out.push(Output::ToGuest { nic, frame });
        }
    }

    pub(super) fn primary_guest_frame(&mut self, now: Instant, frame: Vec<u8>) {
        if let Side::Primary(p) = &mut self.side {
            p.comparator.handle_primary(now, frame);
        }
    }

    pub(super) fn primary_secondary_output(&mut self, now: Instant, epoch: Epoch, frame: Vec<u8>) {
        let replicating = self.primary_replicating();
        let Side::Primary(p) = &mut self.side else {
            return;
        };
        if !replicating || epoch < p.released {
            self.stats.stale_secondary_output += 1;
            return;
        }
        p.comparator.handle_secondary(now, frame);
    }

    /// Drains the checkpointer, then the comparator. Returns whether anything came out.
    pub(super) fn pump_primary(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        loop {
            let Side::Primary(p) = &mut self.side else {
                return progressed;
            };
            let Some(o) = p.checkpointer.as_mut().and_then(|k| k.poll_output()) else {
                break;
            };
            progressed = true;
            match o {
                CheckpointOutput::Send(m) => {
                    if matches!(m, Message::CheckpointRequest { .. }) {
                        // The secondary must hold the client-facing translation of the state
                        // it may take over from: it travels ahead of the checkpoint.
                        for part in p.translation_update() {
                            self.send_checkpoint_message(part);
                        }
                    }
                    #[cfg(feature = "canaries")]
                    if let Message::CheckpointSent { epoch, .. } = &m
                        && self.canary(super::NodeCanary::ReleaseBeforeReceived)
                    {
                        // Planted (canary.rs): the output commit point moved to "sent".
                        self.commit_output(now, *epoch);
                    }
                    self.send_checkpoint_message(m);
                }
                CheckpointOutput::Vm(c) => self.out.push(Output::Vm(c)),
                CheckpointOutput::ReleaseOutput { epoch } => self.commit_output(now, epoch),
                CheckpointOutput::ResetDisk { .. } | CheckpointOutput::ResetRewriter { .. } => {}
                CheckpointOutput::Event(e) => self.on_checkpoint_event(now, e),
            }
        }
        loop {
            let Side::Primary(p) = &mut self.side else {
                return progressed;
            };
            let Some(o) = p.comparator.poll_output() else {
                break;
            };
            progressed = true;
            match o {
                CompareOutput::Release(frame) => self.primary_release(now, frame),
                CompareOutput::WindowUpdate(frame) => self.primary_window_update(now, frame),
                CompareOutput::CheckpointRequest(reason) => {
                    let replicating = self.primary_replicating();
                    if let Side::Primary(p) = &mut self.side
                        && let Some(k) = &mut p.checkpointer
                        && replicating
                    {
                        k.handle_trigger(now, reason);
                    }
                }
                CompareOutput::Miscompare { flow, why } => {
                    self.event(Event::Miscompare { flow, why });
                }
            }
        }
        progressed
    }

    /// The output commit point of checkpoint `epoch` (`ReleaseOutput(e)`: the secondary has it
    /// whole): everything held for it goes to the client.
    fn commit_output(&mut self, now: Instant, epoch: Epoch) {
        // Frames held while the lease was missing predate this checkpoint's pause, so it covers
        // them too: they go first, in arrival order.
        self.release_hold_covered();
        if let Side::Primary(p) = &mut self.side {
            p.released = p.released.max(epoch);
            p.comparator.checkpoint_done(now);
        }
    }

    /// A frame the comparator let go: to the client if paired (confirmed by the secondary or a
    /// received checkpoint), else through the solo gate.
    fn primary_release(&mut self, now: Instant, mut frame: Vec<u8>) {
        if let Side::Primary(p) = &mut self.side
            && let Some(x) = &mut p.client_xlate
        {
            x.translate_outbound(now, &mut frame);
        }
        if self.failover.mode() == Mode::Paired {
            self.release_to_client(frame);
        } else {
            self.emit_solo(now, frame);
        }
    }

    /// A window update from the comparator (`compare::window_update`): translated like a
    /// release, sent only while paired (solo, every primary frame leaves unclamped anyway).
    fn primary_window_update(&mut self, now: Instant, mut frame: Vec<u8>) {
        if let Side::Primary(p) = &mut self.side
            && let Some(x) = &mut p.client_xlate
        {
            x.translate_outbound(now, &mut frame);
        }
        if self.failover.mode() == Mode::Paired {
            self.out.push(Output::WindowUpdate(frame));
        }
    }

    /// Checkpointer messages go to the peer only while this node replicates with it: after a
    /// takeover the old peer must not be told anything that confirms its role.
    pub(super) fn send_checkpoint_message(&mut self, m: Message) {
        if self.failover.is_paired() && self.peer.is_some() {
            self.send(m);
        } else {
            self.stats.sends_suppressed += 1;
        }
    }

    /// Peer messages for the primary side (already validated for direction, bulk and term).
    pub(super) fn primary_peer_message(&mut self, now: Instant, message: Message, frame: Vec<u8>) {
        match message {
            Message::SecondaryOutput { epoch } => self.primary_secondary_output(now, epoch, frame),
            Message::DiskAck { write_id, result } => self.disks.handle_peer_ack(write_id, result),
            m @ (Message::CheckpointReady { .. }
            | Message::CheckpointReceived { .. }
            | Message::CheckpointLoaded { .. }
            | Message::CheckpointAbort { .. }) => {
                if let Side::Primary(p) = &mut self.side
                    && let Some(k) = &mut p.checkpointer
                {
                    k.handle_message(now, &m);
                } else {
                    self.protocol_error(m.kind(), super::ProtocolViolation::UnexpectedInPhase);
                }
            }
            m => self.protocol_error(m.kind(), super::ProtocolViolation::UnexpectedInPhase),
        }
    }
}
