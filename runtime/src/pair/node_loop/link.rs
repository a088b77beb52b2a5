//! The peer link of the node loop: executing the node's link orders (`Output::Link`: dial the
//! configured peer address, stop dialling, accept inbound connections or not, close the
//! link), accepting or dialling the peer (each connection authenticated with the pair key on a
//! thread of its own before the loop sees it), the reader's closure that stores page bulk in
//! the RAM cache as it arrives, link up and down, and sending a message on the current link.
//!
//! The node decides who dials, for how long after a drop (its reconnect window) and who accepts
//! (colo-core `node/link.rs`); this file keeps the mechanics: the address, the connect timeout,
//! the pacing of retries, the generations. What a dropped link costs is what was in flight: a
//! drop between checkpoints costs only heartbeats and the pair carries on in its term on the
//! new link; a drop inside a checkpoint makes each side restart that epoch on the new link
//! (docs/operations.md "Link drops"), or, if no link comes back before the heartbeat's
//! `lost_after`, the node fails over.
//!
//! Invariant kept: every event of a link carries the link's generation (`NodeLoop::link`),
//! bumped at each new link and at each drop, so a late event of a dead link is ignored; every
//! dial carries its own generation, so a connection of a dial the node stopped is closed
//! unused; at most one peer link is up at a time (an inbound connection is used only while the
//! node accepts and no link is up, every other one is closed at once).

use super::{LoopError, LoopEvent, NodeLoop, PeerEndpoint, hops, liveness};
use crate::pair::peer::PeerReader;
use crate::pair::peer::auth::{AuthedLink, PairKey, handshake, log_refused, spawn_accept};
use colo_core::node::{Input, LinkCommand, LinkState, PeerBulk};
use colo_core::time::Duration;
use colo_core::wire::{Limits, LinkSide, Message};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use tracing::{debug, error, info, warn};

/// A dial the node ordered and did not end yet.
#[derive(Debug)]
pub(super) struct Dialing {
    /// Its generation: a connection it posts is used only while it is the current dial.
    dial: u64,
    /// Tells its thread to give up.
    stop: Arc<AtomicBool>,
    /// The node was told this dial was refused (once per dial is enough).
    refusal_told: bool,
}

impl Dialing {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl NodeLoop {
    /// Executes one of the node's link orders.
    pub(super) fn on_link_command(&mut self, command: LinkCommand) {
        match command {
            LinkCommand::Dial => self.start_dial(),
            LinkCommand::StopDialing => {
                if let Some(d) = self.dialing.take() {
                    info!(role = self.name, "dial-stopped");
                    d.stop();
                }
            }
            LinkCommand::Accept(on) => {
                debug!(role = self.name, on, "accepting");
                self.accepting = on;
            }
            LinkCommand::Close => self.close_link(),
        }
    }

    fn start_dial(&mut self) {
        let PeerEndpoint::Connect(addr) = self.config.peer else {
            error!(
                role = self.name,
                "the node ordered a dial, but this node has no peer address to dial"
            );
            return;
        };
        if let Some(old) = self.dialing.take() {
            old.stop();
        }
        self.dials += 1;
        let stop = Arc::new(AtomicBool::new(false));
        info!(role = self.name, to = %addr, "dialing");
        let spawned = spawn_dialer(
            addr,
            self.config.key.clone(),
            self.name,
            self.tx.clone(),
            self.dials,
            stop.clone(),
        );
        match spawned {
            Ok(()) => {
                self.dialing = Some(Dialing {
                    dial: self.dials,
                    stop,
                    refusal_told: false,
                })
            }
            Err(e) => error!(role = self.name, "cannot start the dialler: {e}"),
        }
    }

    /// A dial got through: used if it is still the node's current dial and no link is up.
    pub(super) fn on_dialled(&mut self, dial: u64, link: AuthedLink) {
        let current = self.dialing.as_ref().is_some_and(|d| d.dial == dial);
        if !current || self.writer.is_some() {
            info!(role = self.name, dial, "dial-dropped (no longer wanted)");
            return;
        }
        if self.link > 0 {
            info!(role = self.name, "reconnected");
        }
        self.use_link(link);
    }

    /// An attempt of the current dial was refused (connection refused: the peer's process is
    /// not there): the node is told once per dial (it decides what that means).
    pub(super) fn on_dial_refused(&mut self, dial: u64) {
        let Some(d) = self.dialing.as_mut() else {
            return;
        };
        if d.dial != dial || d.refusal_told || self.writer.is_some() {
            return;
        }
        d.refusal_told = true;
        info!(role = self.name, dial, "dial-refused");
        self.input(Input::PeerDialRefused);
    }

    /// An inbound connection (the primary's `--listen`, or a secondary's takeover address):
    /// used only while the node accepts and has no link.
    pub(super) fn on_inbound(&mut self, link: AuthedLink) {
        if !self.accepting || self.writer.is_some() {
            let mode = self.node.status(self.clock.now()).mode;
            let from = link.peer_addr();
            info!(role = self.name, from, mode = ?mode, "newcomer-refused");
            self.milestone(crate::pair::events::Milestone::NewcomerRefused {
                from: from.to_string(),
                mode: format!("{mode:?}"),
            });
            return;
        }
        self.use_link(link);
    }

    fn use_link(&mut self, link: AuthedLink) {
        let split = link
            .split(Limits::default())
            .and_then(|(stream, decoder, writer)| {
                let watch_half = stream.try_clone()?;
                Ok((stream, decoder, writer, watch_half))
            });
        let (stream, decoder, writer, watch_half) = match split {
            Ok(parts) => parts,
            Err(e) => {
                warn!(role = self.name, "peer socket: {e}");
                return;
            }
        };
        self.link += 1;
        let (link, tx, closed_tx) = (self.link, self.tx.clone(), self.tx.clone());
        let cache = self.exec.cache();
        let on_frame = move |message: Message, bulk: &[u8]| {
            let bulk = match &message {
                // QEMU's colo_cache: pages land in the cache on arrival, never in SVM memory.
                Message::PageBatch { ranges, zero, .. }
                | Message::SyncPages { ranges, zero, .. } => {
                    let stored = cache.lock().store(ranges, zero, bulk);
                    if let Err(why) = stored {
                        let why = format!("refused {:?} from the peer: {why}", message.kind());
                        let _ = tx.send(LoopEvent::PeerDown {
                            link,
                            why,
                            closed_by_peer: false,
                        });
                        return false;
                    }
                    PeerBulk::Stored {
                        len: bulk.len() as u64,
                    }
                }
                _ if bulk.is_empty() => PeerBulk::None,
                Message::MirroredFrame { .. } | Message::SecondaryOutput { .. } => {
                    hops::mark("peer_in", bulk);
                    PeerBulk::Frame(bulk.to_vec())
                }
                _ => PeerBulk::Frame(bulk.to_vec()),
            };
            tx.send(LoopEvent::Peer {
                link,
                message,
                bulk,
            })
            .is_ok()
        };
        let key = self.config.key.clone();
        let on_closed = move |why: crate::pair::peer::LinkClosed| {
            if let crate::pair::peer::LinkClosed::Wire(_) = why {
                // A frame that failed its MAC, CRC or format: nothing of it was applied.
                key.count_bad_frame();
            }
            let closed_by_peer = why.closed_by_peer();
            let why = why.to_string();
            let _ = closed_tx.send(LoopEvent::PeerDown {
                link,
                why,
                closed_by_peer,
            });
        };
        let spawned = PeerReader::spawn(stream, decoder, on_frame, on_closed);
        if let Err(e) = spawned {
            error!(role = self.name, "cannot start the peer reader: {e}");
            return;
        }
        // The socket's options are shared by its halves: the writer's sends time out too.
        let write_timeout = liveness::peer_write_timeout(self.config.node.heartbeat.lost_after());
        if let Err(e) = watch_half.set_write_timeout(Some(write_timeout)) {
            warn!(role = self.name, "peer socket write timeout: {e}");
        }
        self.peer_watch = Some(liveness::PeerSocketWatch::new(watch_half));
        self.writer = Some(writer);
        // The link ends whatever dial was running (the node counts it ended too).
        if let Some(d) = self.dialing.take() {
            d.stop();
        }
        info!(role = self.name, "link-up");
        self.input(Input::PeerLink(LinkState::Up));
    }

    /// The link ended under the node (the peer closed it, an error): the node is told which
    /// (a peer that closed its end gets only a short grace to come back).
    pub(super) fn link_down(&mut self, why: &str, closed_by_peer: bool) {
        if self.end_link(why, closed_by_peer) {
            let state = if closed_by_peer {
                LinkState::PeerClosed
            } else {
                LinkState::Down
            };
            self.input(Input::PeerLink(state));
        }
    }

    /// The node closed the link (`LinkCommand::Close`): it counts the link down already.
    fn close_link(&mut self) {
        self.end_link("closed by this node: the pairing is over", false);
    }

    /// Closes the current link, if any (what was written is flushed first); returns whether
    /// there was one.
    fn end_link(&mut self, why: &str, peer_closed: bool) -> bool {
        self.receiving = None;
        let Some(writer) = self.writer.take() else {
            return false;
        };
        self.peer_watch = None;
        writer.close();
        info!(role = self.name, reason = ?why, peer_closed, "link-down");
        self.milestone(crate::pair::events::Milestone::LinkDown {
            reason: why.to_string(),
            peer_closed,
        });
        self.link += 1; // ignore whatever the old reader still posts
        true
    }

    pub(super) fn on_frame(&mut self, message: Message, bulk: PeerBulk) {
        let bulk = match (&message, bulk) {
            // The device state waits beside the cache until the apply.
            (Message::DeviceState { epoch }, PeerBulk::Frame(bytes)) => {
                let len = bytes.len() as u64;
                self.exec.store_device_state(*epoch, bytes);
                PeerBulk::Stored { len }
            }
            // Disk bulk (the initial copy, forwarded writes) goes to the disk files.
            (Message::SyncDisk { .. } | Message::DiskWrite { .. }, PeerBulk::Frame(bytes))
                if self.disk.is_some() =>
            {
                self.store_disk_bulk(&message, bytes)
            }
            (Message::MirroredFrame { .. } | Message::SecondaryOutput { .. }, bulk) => {
                if let PeerBulk::Frame(frame) = &bulk {
                    hops::mark("loop_peer", frame);
                }
                bulk
            }
            (_, bulk) => bulk,
        };
        self.input(Input::Peer { message, bulk });
    }

    pub(super) fn send(&mut self, message: &Message, bulk: &[u8]) {
        let Some(writer) = self.writer.as_mut() else {
            // Heartbeats and Hellos while the link is down: the heartbeat machine decides
            // what that means; counting them is enough.
            self.dropped_while_down += 1;
            return;
        };
        if let Err(e) = writer.send(message, bulk) {
            self.link_down(&e.to_string(), e.closed_by_peer());
        }
    }
}

pub(super) fn spawn_acceptor(
    listener: TcpListener,
    key: PairKey,
    name: &'static str,
    tx: mpsc::Sender<LoopEvent>,
) -> Result<(), LoopError> {
    std::thread::Builder::new()
        .name("colo-peer-accept".to_string())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let tx = tx.clone();
                        spawn_accept(s, &key, name, move |link| {
                            let _ = tx.send(LoopEvent::Connected(link));
                        });
                    }
                    Err(e) => warn!("accepting a peer failed: {e}"),
                }
            }
        })
        .map(|_| ())
        .map_err(|e| LoopError::Endpoint(format!("cannot start the acceptor: {e}")))
}

/// Why a dial attempt failed.
enum DialFailure {
    /// Nobody answered in time, or the path failed (the primary may start after us).
    Unanswered,
    /// The peer's host refused the connection: nothing listens at the address.
    Refused,
    /// The peer answered but refused or failed the handshake (logged; worth a slower retry).
    Handshake,
    /// The connection was accepted and then closed or reset before the peer said anything:
    /// a peer with another key does this, and so does a listener whose process is dying (its
    /// kernel accepted the connection a moment before it closed the listening socket). Retried
    /// at once, so a dying peer's next answer is a refusal.
    ClosedInHandshake,
}

/// Connects to `addr` and authenticates as the connecting side.
fn dial(
    addr: SocketAddr,
    key: &PairKey,
    name: &str,
    timeout: Duration,
) -> Result<AuthedLink, DialFailure> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            DialFailure::Refused
        } else {
            DialFailure::Unanswered
        }
    })?;
    handshake(stream, key, LinkSide::Connector).map_err(|e| {
        log_refused(name, &addr.to_string(), &e, key);
        if e.closed_by_peer() {
            DialFailure::ClosedInHandshake
        } else {
            DialFailure::Handshake
        }
    })
}

/// Dials `addr` until it gets through (posted as dial `dial`) or `stop` is set: retried every
/// 50 ms while nobody answers (the primary may start after us), every second while the peer
/// answers but refuses the handshake (an operator may fix a wrong key file and restart it),
/// except that the first handshake the peer closes is retried after 5 ms: after a peer's
/// process died, that retry is refused and the node hears of it (`DialRefused`) at once.
fn spawn_dialer(
    addr: SocketAddr,
    key: PairKey,
    name: &'static str,
    tx: mpsc::Sender<LoopEvent>,
    dial_gen: u64,
    stop: Arc<AtomicBool>,
) -> Result<(), LoopError> {
    std::thread::Builder::new()
        .name("colo-peer-dial".to_string())
        .spawn(move || {
            let mut quick_retry = true;
            while !stop.load(Ordering::Relaxed) {
                match dial(addr, &key, name, Duration::from_millis(500)) {
                    Ok(link) => {
                        let _ = tx.send(LoopEvent::Dialled {
                            dial: dial_gen,
                            link,
                        });
                        return;
                    }
                    Err(DialFailure::ClosedInHandshake) if quick_retry => {
                        quick_retry = false;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(DialFailure::Handshake | DialFailure::ClosedInHandshake) => {
                        std::thread::sleep(Duration::from_secs(1))
                    }
                    Err(DialFailure::Refused) => {
                        let _ = tx.send(LoopEvent::DialRefused { dial: dial_gen });
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(DialFailure::Unanswered) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map(|_| ())
        .map_err(|e| LoopError::Endpoint(format!("cannot start the dialler: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(r: Result<AuthedLink, DialFailure>) -> &'static str {
        match r {
            Ok(_) => "linked",
            Err(DialFailure::Unanswered) => "unanswered",
            Err(DialFailure::Refused) => "refused",
            Err(DialFailure::Handshake) => "handshake",
            Err(DialFailure::ClosedInHandshake) => "closed in handshake",
        }
    }

    #[test]
    fn a_listener_that_closes_the_accepted_connection_is_told_from_a_refusal() {
        let key = PairKey::from_bytes([7; 32]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts one connection and closes it without a word (a dying peer's last accept).
        let closer = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let first = dial(addr, &key, "test", std::time::Duration::from_secs(2));
        closer.join().unwrap();
        assert_eq!(outcome(first), "closed in handshake");
        // The listener is gone with the thread: the next dial is refused.
        let second = dial(addr, &key, "test", std::time::Duration::from_secs(2));
        assert_eq!(outcome(second), "refused");
    }

    #[test]
    fn an_authentication_failure_is_not_a_close() {
        use crate::pair::peer::auth::HandshakeError;
        let bad = HandshakeError::Timeout;
        assert!(!bad.closed_by_peer());
        assert!(HandshakeError::Closed.closed_by_peer());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(HandshakeError::Io(reset).closed_by_peer());
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!HandshakeError::Io(other).closed_by_peer());
    }
}
