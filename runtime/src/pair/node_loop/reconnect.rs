//! A secondary's reconnection after its peer link drops while the primary may be alive.
//!
//! The node does not need a new handshake for this: `Input::PeerLink` is informative and the
//! heartbeat alone decides that a peer is lost (core/src/node/input.rs), so a link that comes
//! back within the heartbeat's `lost_after` simply carries the pair's traffic again. What a
//! dropped link cost is the frames in flight: a drop between checkpoints costs only heartbeats
//! (nothing else is on the link), and the pair carries on in its term; a drop inside a
//! checkpoint loses part of it, the checkpointer waiting on the peer reports `Stuck` after
//! `checkpoint_phase_timeout` and the node fails over (docs/state-machines.md: "Paired -->
//! TakingOver: checkpoint stuck on the peer"), as it would have without the reconnection,
//! only later. Resuming an interrupted checkpoint on the new link needs the node to restart
//! that epoch (see docs/operations.md "Link drops").
//!
//! Invariants: only a secondary (the side that connects) reconnects, only while it still
//! depends on its primary (Connecting, Syncing or Paired), and only within twice the
//! heartbeat's `lost_after` (after that the node has failed over and the connection would be
//! refused anyway); a connection that arrives when the node no longer wants it is closed.

use super::link::dial;
use super::{LoopEvent, NodeLoop, PeerEndpoint};
use crate::pair::peer::auth::{AuthedLink, PairKey};
use colo_core::node::NodeMode;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{error, info};

/// Whether a node in `mode` still depends on its primary's link.
fn depends_on_primary(mode: NodeMode) -> bool {
    matches!(
        mode,
        NodeMode::Connecting | NodeMode::Syncing | NodeMode::Paired
    )
}

impl NodeLoop {
    /// After a link-down: a secondary still depending on its primary dials it again.
    pub(super) fn maybe_reconnect(&mut self) {
        let PeerEndpoint::Connect(addr) = self.config.peer else {
            return;
        };
        let status = self.node.status(self.clock.now());
        if status.role != colo_core::ids::Role::Secondary || !depends_on_primary(status.mode) {
            return;
        }
        let window = self.config.node.heartbeat.lost_after().saturating_mul(2);
        info!(
            role = self.name,
            to = %addr,
            for_ms = window.as_millis() as u64,
            "reconnecting"
        );
        spawn_reconnector(
            addr,
            window,
            self.config.key.clone(),
            self.name,
            self.tx.clone(),
        );
    }

    /// The reconnector got through: use the link if the node still wants it.
    pub(super) fn on_reconnected(&mut self, stream: AuthedLink) {
        let status = self.node.status(self.clock.now());
        if self.writer.is_some() || !depends_on_primary(status.mode) {
            info!(
                role = self.name,
                mode = ?status.mode,
                "reconnect-dropped (no longer needed)"
            );
            return;
        }
        info!(role = self.name, "reconnected");
        self.on_connected(stream);
    }
}

fn spawn_reconnector(
    addr: SocketAddr,
    window: Duration,
    key: PairKey,
    name: &'static str,
    tx: mpsc::Sender<LoopEvent>,
) {
    let spawned = std::thread::Builder::new()
        .name("colo-peer-reconnect".to_string())
        .spawn(move || {
            let until = Instant::now() + window;
            while Instant::now() < until {
                match dial(addr, &key, name, Duration::from_millis(200)) {
                    Ok(link) => {
                        let _ = tx.send(LoopEvent::Reconnected(link));
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
    if let Err(e) = spawned {
        error!("cannot start the reconnector: {e}");
    }
}
