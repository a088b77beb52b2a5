//! The peer link of the node loop: accepting or dialling the peer (each connection
//! authenticated with the pair key on a thread of its own before the loop sees it), the
//! reader's closure that stores page bulk in the RAM cache as it arrives, link up and down,
//! and sending a message on the current link.
//!
//! Invariant kept: every event of a link carries the link's generation (`NodeLoop::link`),
//! bumped at each new link and at each drop, so a late event of a dead link is ignored; at
//! most one peer link is up at a time (a second connection is refused while one is up).

use super::{LoopError, LoopEvent, NodeLoop, hops, liveness};
use crate::pair::peer::PeerReader;
use crate::pair::peer::auth::{AuthedLink, PairKey, handshake, log_refused, spawn_accept};
use colo_core::node::{Input, LinkState, PeerBulk};
use colo_core::time::Duration;
use colo_core::wire::{Limits, LinkSide, Message};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use tracing::{error, info, warn};

impl NodeLoop {
    pub(super) fn on_connected(&mut self, link: AuthedLink) {
        if self.writer.is_some() {
            warn!(role = self.name, "a second peer connection was refused");
            return;
        }
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
                Message::PageBatch { ranges, .. } | Message::SyncPages { ranges, .. } => {
                    let stored = cache.lock().store(ranges, bulk);
                    if let Err(why) = stored {
                        let why = format!("refused {:?} from the peer: {why}", message.kind());
                        let _ = tx.send(LoopEvent::PeerDown { link, why });
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
            let why = why.to_string();
            let _ = closed_tx.send(LoopEvent::PeerDown { link, why });
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
        info!(role = self.name, "link-up");
        self.input(Input::PeerLink(LinkState::Up));
    }

    pub(super) fn link_down(&mut self, why: &str) {
        self.receiving = None;
        if let Some(writer) = self.writer.take() {
            self.peer_watch = None;
            writer.close();
            info!(role = self.name, reason = ?why, "link-down");
            self.milestone(crate::pair::events::Milestone::LinkDown {
                reason: why.to_string(),
            });
            self.link += 1; // ignore whatever the old reader still posts
            self.input(Input::PeerLink(LinkState::Down));
            self.maybe_reconnect();
        }
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
            self.link_down(&e.to_string());
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

/// Connects to `addr` and authenticates as the connecting side. `Err(true)`: the peer
/// answered but refused or failed the handshake (logged; worth a slower retry).
pub(super) fn dial(
    addr: SocketAddr,
    key: &PairKey,
    name: &str,
    timeout: Duration,
) -> Result<AuthedLink, bool> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|_| false)?;
    handshake(stream, key, LinkSide::Connector).map_err(|e| {
        log_refused(name, &addr.to_string(), &e, key);
        true
    })
}

pub(super) fn spawn_connector(
    addr: SocketAddr,
    key: PairKey,
    name: &'static str,
    tx: mpsc::Sender<LoopEvent>,
) -> Result<(), LoopError> {
    std::thread::Builder::new()
        .name("colo-peer-connect".to_string())
        .spawn(move || {
            // The primary may start after us: retry until it answers (the demo starts both
            // at once; an operator may start them in any order), and until it accepts our key
            // (an operator may fix a wrong key file and restart it).
            loop {
                match dial(addr, &key, name, Duration::from_millis(500)) {
                    Ok(link) => {
                        let _ = tx.send(LoopEvent::Connected(link));
                        return;
                    }
                    Err(true) => std::thread::sleep(Duration::from_secs(1)),
                    Err(false) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map(|_| ())
        .map_err(|e| LoopError::Endpoint(format!("cannot start the connector: {e}")))
}
