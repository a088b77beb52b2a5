//! Peer messages: validation (direction for our role, bulk length, term), the handshake
//! (`Hello` / `HelloAccept` / `HelloReject`), liveness replies, goodbyes and term
//! announcements, then dispatch to the side, sync or failover machinery.
//!
//! Invariant kept: nothing a peer sends panics the node or bypasses a check: a message in the
//! wrong direction, with a bulk that does not fit, or that cannot come in the node's phase is
//! an [`Event::ProtocolError`]; a message of an older term, or a replication message after a
//! takeover, is counted as stale and ignored; a newer term deposes this node (fencing).

use super::{
    CommandRefusal, Event, HaltReason, Node, Output, PeerBulk, Phase, ProtocolViolation, Side,
};
use crate::failover::{Failover, FailoverReason, Mode};
use crate::ids::Role;
use crate::time::Instant;
use crate::wire::{
    Direction, GoodbyeReason, HelloRejectReason, Message, MessageKind, PROTOCOL_VERSION,
};

/// Kinds that remain meaningful after this node stopped replicating with its old peer.
fn survives_failover(kind: MessageKind) -> bool {
    matches!(
        kind,
        MessageKind::Hello
            | MessageKind::Heartbeat
            | MessageKind::HeartbeatEcho
            | MessageKind::Goodbye
            | MessageKind::TermAnnounce
            | MessageKind::SyncProgress
    )
}

/// The fields of a peer's `Hello` the handshake checks.
struct PeerHello {
    version: u16,
    cluster: crate::ids::ClusterId,
    node_id: crate::ids::NodeId,
    role: Role,
    term: crate::ids::Term,
    vm_fingerprint: u64,
}

impl Node {
    pub(super) fn protocol_error(&mut self, kind: MessageKind, violation: ProtocolViolation) {
        self.stats.protocol_errors += 1;
        self.event(Event::ProtocolError { kind, violation });
    }

    pub(super) fn on_peer(&mut self, now: Instant, message: Message, bulk: PeerBulk) {
        self.stats.peer_received += 1;
        let kind = message.kind();
        if self.phase == Phase::Idle {
            self.stats.ignored_before_start += 1;
            return;
        }
        // Direction for the role this node holds: P->S messages are for a secondary-side node.
        let receiving_as = if self.is_primary_side() {
            Role::Primary
        } else {
            Role::Secondary
        };
        let direction_ok = match kind.direction() {
            Direction::Either => true,
            Direction::PrimaryToSecondary => receiving_as == Role::Secondary,
            Direction::SecondaryToPrimary => receiving_as == Role::Primary,
            Direction::NodeToArbiter | Direction::ArbiterToNode => false,
        };
        let replicating_peer = self.failover.is_paired() || self.sync.is_some();
        if !replicating_peer && !survives_failover(kind) {
            // Stragglers from the peer this node failed over from (or sent to a deposed node).
            self.stats.stale_messages += 1;
            return;
        }
        if !direction_ok {
            return self.protocol_error(kind, ProtocolViolation::WrongDirection);
        }
        let len = bulk.len();
        let needs_bytes = matches!(
            kind,
            MessageKind::MirroredFrame | MessageKind::SecondaryOutput
        );
        let bytes_ok = !needs_bytes || matches!(bulk, PeerBulk::Frame(_));
        if !message.bulk_rule().allows(len) || !bytes_ok {
            return self.protocol_error(kind, ProtocolViolation::BadBulk { len });
        }
        if let Some(term) = message.term() {
            let ours = self.failover.term();
            let handshake = matches!(kind, MessageKind::Hello | MessageKind::HelloAccept);
            if term < ours && !handshake {
                self.stats.stale_messages += 1;
                return;
            }
            if term > ours
                && !handshake
                && kind != MessageKind::HelloReject
                && self.phase == Phase::Connecting
                && !self.is_primary_side()
            {
                // A newcomer still knocking holds no role in any term, so a newer term is news,
                // not fencing: deposed here, it would never pair (the survivor announces its
                // term when its lease is granted, often while the newcomer knocks; colo-sim
                // under `--node` with restarts). The HelloAccept carries the term it joins.
                self.stats.stale_messages += 1;
                return;
            }
            if term > ours && !handshake && kind != MessageKind::HelloReject {
                // Someone runs a newer term: this node's role is over (fencing).
                let holder = match message {
                    Message::TermAnnounce { node_id, .. } => Some(node_id),
                    _ => None,
                };
                self.failover.handle_peer_term(now, term, holder);
                return;
            }
        }
        if kind == MessageKind::Hello && self.paired_secondary_restarted() {
            // The secondary this node replicates to knocks again: it restarted and lost its
            // state. Not liveness of the old incarnation: fail over now instead of waiting
            // for a stuck checkpoint (the newcomer is accepted once re-protection is armed).
            self.stats.hellos_ignored += 1;
            self.trigger_failover(now, crate::failover::FailoverReason::PeerRestarted);
            return;
        }
        if self.heartbeat_active() {
            self.heartbeat.handle_peer_traffic(now);
        }
        let frame = match bulk {
            PeerBulk::Frame(f) => f,
            _ => Vec::new(),
        };
        match message {
            Message::Hello {
                protocol_version,
                cluster_id,
                node_id,
                role,
                term,
                vm_fingerprint,
                ..
            } => self.on_hello(
                now,
                PeerHello {
                    version: protocol_version,
                    cluster: cluster_id,
                    node_id,
                    role,
                    term,
                    vm_fingerprint,
                },
            ),
            Message::HelloAccept {
                protocol_version,
                cluster_id,
                node_id,
                role,
                term,
                ..
            } => self.on_hello_accept(now, protocol_version, cluster_id, node_id, role, term),
            Message::HelloReject { reason, .. } => {
                let connecting = self.phase == Phase::Connecting;
                if connecting {
                    // Refused: stop knocking; an operator must fix the cause and start again.
                    self.phase = Phase::Idle;
                    self.hello_retry_at = None;
                }
                self.event(Event::HandshakeRejected {
                    reason,
                    by_peer: true,
                });
                if connecting && matches!(reason, HelloRejectReason::VmMismatch { .. }) {
                    // A different VM: no retry, no later pairing can fix it, so the node
                    // ends with the reason rather than idling (the runtime exits with it).
                    self.phase = Phase::Stopped;
                    self.link_before_halt(now);
                    self.out.push(Output::Halt(HaltReason::Refused(reason)));
                }
            }
            Message::Heartbeat { seq, .. } => {
                let term = self.failover.term();
                let epoch = self.current_epoch();
                self.send(Message::HeartbeatEcho { term, seq, epoch });
            }
            Message::HeartbeatEcho { seq, .. } => {
                // The echo of the last heartbeat sent: its round trip (an echo of an older one,
                // overtaken by a newer heartbeat, is not timed).
                if let Some((sent_seq, at)) = self.heartbeat_probe
                    && sent_seq == seq
                {
                    self.heartbeat_probe = None;
                    self.stats.heartbeat_round_trips += 1;
                    self.stats.last_heartbeat_round_trip = now.saturating_duration_since(at);
                }
            }
            Message::Ack { .. } | Message::TermAnnounce { .. } => {}
            Message::Goodbye { reason, .. } => self.on_goodbye(now, reason),
            m @ (Message::SyncStart { .. }
            | Message::SyncPages { .. }
            | Message::SyncDisk { .. }
            | Message::SyncDone { .. }
            | Message::SyncProgress { .. }) => self.on_sync_message(now, m, len),
            m => {
                if self.phase != Phase::Running {
                    return self.protocol_error(m.kind(), ProtocolViolation::UnexpectedInPhase);
                }
                if self.is_primary_side() {
                    self.primary_peer_message(now, m, frame);
                } else {
                    self.secondary_peer_message(now, m, frame, len);
                }
            }
        }
    }

    fn on_goodbye(&mut self, now: Instant, reason: GoodbyeReason) {
        if self.sync.is_some() && self.failover.mode() == Mode::Reprotecting {
            return self.abandon_reprotect(now);
        }
        match reason {
            // The peer stops in order: take over at once instead of waiting for the heartbeat.
            GoodbyeReason::Shutdown | GoodbyeReason::ProtocolError => {
                if self.failover.is_paired() && self.phase == Phase::Running {
                    self.trigger_failover(now, FailoverReason::PeerGoodbye);
                }
            }
            // Its newer term (already handled above) or its loss of the lease says it all.
            GoodbyeReason::FailedOver | GoodbyeReason::Fenced => {}
        }
    }

    /// `Command::Start`; refused (the caller counts and reports it) unless the node is idle.
    pub(super) fn on_start(&mut self, now: Instant) -> Result<(), CommandRefusal> {
        if self.phase != Phase::Idle {
            return Err(CommandRefusal::AlreadyStarted);
        }
        // Idle --Start--> Connecting
        self.phase = Phase::Connecting;
        if !self.is_primary_side() {
            self.send_hello(now);
        }
        Ok(())
    }

    pub(super) fn send_hello(&mut self, now: Instant) {
        let hello = Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.config.cluster_id,
            node_id: self.config.node_id,
            role: self.failover.role(),
            term: self.failover.term(),
            last_applied_epoch: self.current_epoch(),
            vm_fingerprint: self.config.vm_fingerprint,
        };
        self.send(hello);
        self.hello_retry_at = Some(now + self.config.heartbeat.lost_after());
    }

    fn reject(&mut self, reason: HelloRejectReason) {
        let term = self.failover.term();
        self.send(Message::HelloReject { reason, term });
        self.event(Event::HandshakeRejected {
            reason,
            by_peer: false,
        });
    }

    /// Whether this primary replicates to a secondary that completed a checkpoint with it.
    fn paired_secondary_restarted(&self) -> bool {
        self.phase == Phase::Running
            && self.failover.is_paired()
            && matches!(&self.side, Side::Primary(p) if p.replicated_once())
    }

    fn on_hello(&mut self, now: Instant, hello: PeerHello) {
        let PeerHello {
            version,
            cluster,
            node_id,
            role,
            term,
            vm_fingerprint,
        } = hello;
        let ours = self.failover.term();
        let initial = self.phase == Phase::Connecting
            && self.is_primary_side()
            && self.failover.mode() == Mode::Paired;
        let reprotect = self.phase == Phase::Running
            && self.reprotect_armed
            && self.failover.mode() == Mode::Solo;
        if !initial && !reprotect {
            if !self.is_primary_side() {
                return self.reject(HelloRejectReason::RoleConflict {
                    ours: Role::Secondary,
                });
            }
            // Paired already (a retry that crossed our accept), or solo without an operator's
            // Reprotect: not now; the newcomer keeps knocking.
            self.stats.hellos_ignored += 1;
            return;
        }
        if version != PROTOCOL_VERSION {
            return self.reject(HelloRejectReason::VersionMismatch {
                supported: PROTOCOL_VERSION,
            });
        }
        if cluster != self.config.cluster_id {
            return self.reject(HelloRejectReason::ClusterMismatch {
                expected: self.config.cluster_id,
            });
        }
        if role != Role::Secondary {
            return self.reject(HelloRejectReason::RoleConflict {
                ours: Role::Primary,
            });
        }
        let expected = self.config.vm_fingerprint;
        if expected != 0 && vm_fingerprint != 0 && vm_fingerprint != expected {
            return self.reject(HelloRejectReason::VmMismatch { expected });
        }
        if term > ours {
            // The newcomer knows a newer term than ours: we missed a failover.
            self.failover.handle_peer_term(now, term, None);
            return;
        }
        if initial && term < ours {
            return self.reject(HelloRejectReason::StaleTerm { current: ours });
        }
        self.accept_secondary(now, node_id, reprotect);
    }

    fn on_hello_accept(
        &mut self,
        now: Instant,
        version: u16,
        cluster: crate::ids::ClusterId,
        node_id: crate::ids::NodeId,
        role: Role,
        term: crate::ids::Term,
    ) {
        if self.phase != Phase::Connecting || self.is_primary_side() {
            self.stats.stale_messages += 1;
            return;
        }
        if version != PROTOCOL_VERSION || cluster != self.config.cluster_id || role != Role::Primary
        {
            return self.protocol_error(
                MessageKind::HelloAccept,
                ProtocolViolation::UnexpectedInPhase,
            );
        }
        let ours = self.failover.term();
        if term < ours {
            return self.reject(HelloRejectReason::StaleTerm { current: ours });
        }
        if term > ours {
            // A survivor re-protecting: join its term as its secondary.
            self.failover = Failover::new(
                self.config.lease,
                self.config.node_id,
                Role::Secondary,
                term,
                now,
            )
            .expect("lease config validated at Node::new");
        }
        // Connecting --HelloAccept--> Syncing
        self.phase = Phase::Syncing;
        self.peer = Some(node_id);
        self.hello_retry_at = None;
        self.heartbeat.reset(now);
        self.event(Event::Paired {
            peer: node_id,
            term,
            role: Role::Secondary,
        });
    }

    /// The handshake succeeded on the primary side: start the copy.
    fn accept_secondary(&mut self, now: Instant, peer: crate::ids::NodeId, reprotect: bool) {
        let term = self.failover.term();
        if reprotect {
            self.reprotect_armed = false;
            self.failover.handle_reprotect_start(now);
            self.become_primary_side(now);
        }
        self.peer = Some(peer);
        self.phase = Phase::Running;
        self.heartbeat.reset(now);
        let epoch = self.current_epoch();
        self.send(Message::HelloAccept {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.config.cluster_id,
            node_id: self.config.node_id,
            role: Role::Primary,
            term,
            last_applied_epoch: epoch,
        });
        self.event(Event::Paired {
            peer,
            term,
            role: Role::Primary,
        });
        self.begin_sync(now);
    }

    /// A former secondary that runs solo becomes the primary of a new pair.
    fn become_primary_side(&mut self, now: Instant) {
        if let Side::Secondary(s) = &self.side {
            let applied = s.applied();
            let placeholder = Side::Secondary(super::secondary::SecondarySide::new(&self.config));
            let Side::Secondary(old) = std::mem::replace(&mut self.side, placeholder) else {
                return;
            };
            let mut translation = old.xlate;
            translation.enter_failover();
            let primary =
                super::primary::PrimarySide::from_survivor(&self.config, applied, translation, now)
                    .expect("compare config validated at Node::new");
            self.side = Side::Primary(primary);
        }
    }
}
