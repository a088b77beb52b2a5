//! Frame routing between the node, its VM's virtio-net device and the client link (a tap):
//! the runtime side of QEMU COLO's filter-mirror / filter-redirector / colo-compare wiring,
//! with the decisions (mirror, compare, rewrite, release) left to the `Node`.
//!
//! Routes:
//! ```text
//!   client tap  --reader thread--> LoopEvent::ClientFrame --> Input::ClientFrame
//!   guest TX (virtio-net sink, vCPU thread) --> LoopEvent::GuestFrame --> Input::GuestFrame
//!   Output::ToGuest  --> virtio-net RX (held while the VM is paused)
//!   Output::ToClient --> client tap
//!   Event::ClaimClientLink --> the survivor's tap joins the client bridge
//! ```
//! Invariants: a frame for the guest is written into guest RAM only while the VM runs, so a
//! checkpoint's pages and device state never see a half-delivered frame (the node's own rule:
//! "a paused VM consumes it on resume"); held frames are bounded (the oldest dropped and
//! counted, as a NIC queue would); a guest frame sent before a pause reaches the node before
//! the pause's completion (see `NodeLoop::drain_guest_frames`), so it counts in the epoch
//! that produced it.

use super::{LoopError, LoopEvent};
use crate::devices::virtio::net::{FrameSink, NetDevice, PENDING_RX_LIMIT};
use crate::machine::{Machine, MachinePhase};
use crate::net::tap::{Tap, TapLink};
use colo_core::ids::Role;
use std::collections::VecDeque;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// The node's network settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap towards the clients (created or attached in this process's namespace).
    pub client_tap: Option<String>,
    /// A bridge the client tap joins: the primary's at start, the secondary's when it claims
    /// the client link after a takeover.
    pub client_bridge: Option<String>,
}

/// Counters of the routing (printed with `colo` log lines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames handed to the guest's device.
    pub to_guest: u64,
    /// Frames written to the client tap.
    pub to_client: u64,
    /// Frames for the guest dropped while held (queue full).
    pub held_dropped: u64,
    /// Frames for a client with no client tap configured, or that the tap refused.
    pub client_dropped: u64,
}

/// The guest's TX: frames go to the node loop's channel.
struct ChannelSink(mpsc::Sender<LoopEvent>);

impl FrameSink for ChannelSink {
    fn send_frame(&mut self, frame: &[u8]) {
        // The loop is gone only while the process ends.
        let _ = self.0.send(LoopEvent::GuestFrame(frame.to_vec()));
    }
}

/// The routing state of one node.
pub struct GuestNet {
    net: Arc<Mutex<NetDevice>>,
    client: Option<Tap>,
    _client_reader: Option<TapLink>,
    bridge: Option<String>,
    held: VecDeque<Vec<u8>>,
    stats: FrameStats,
}

impl std::fmt::Debug for GuestNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestNet")
            .field("stats", &self.stats)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl GuestNet {
    /// Wires `machine`'s device to the loop's channel and opens the client tap, if any.
    pub fn new(
        config: &NetConfig,
        role: Role,
        machine: &Machine,
        tx: mpsc::Sender<LoopEvent>,
    ) -> Result<GuestNet, LoopError> {
        let net = machine.net();
        net.lock()
            .expect("net mutex poisoned")
            .set_sink(Box::new(ChannelSink(tx.clone())));
        let (client, reader) = match &config.client_tap {
            None => (None, None),
            Some(name) => {
                let tap = Tap::open(name)
                    .map_err(|e| LoopError::Endpoint(format!("client tap {name}: {e}")))?;
                let writer = tap
                    .try_clone()
                    .map_err(|e| LoopError::Endpoint(format!("client tap {name}: {e}")))?;
                let reader = TapLink::spawn(tap, move |frame| {
                    let _ = tx.send(LoopEvent::ClientFrame(frame.to_vec()));
                })
                .map_err(|e| LoopError::Endpoint(format!("client tap {name}: {e}")))?;
                (Some(writer), Some(reader))
            }
        };
        let guest_net = GuestNet {
            net,
            client,
            _client_reader: reader,
            bridge: config.client_bridge.clone(),
            held: VecDeque::new(),
            stats: FrameStats::default(),
        };
        if role == Role::Primary {
            guest_net.join_bridge().map_err(LoopError::Endpoint)?;
        }
        Ok(guest_net)
    }

    /// The counters.
    pub fn stats(&self) -> FrameStats {
        self.stats
    }

    fn join_bridge(&self) -> Result<(), String> {
        let (Some(tap), Some(bridge)) = (&self.client, &self.bridge) else {
            return Ok(());
        };
        ip(&["link", "set", tap.name(), "master", bridge])?;
        ip(&["link", "set", tap.name(), "up"])
    }

    /// `Output::ToGuest`: delivered now if the VM runs, else held until it does.
    pub fn handle_to_guest(&mut self, machine: &Machine, frame: Vec<u8>) {
        if self.held.len() >= PENDING_RX_LIMIT {
            self.held.pop_front();
            self.stats.held_dropped += 1;
        }
        self.held.push_back(frame);
        self.flush(machine);
    }

    /// Delivers held frames if the VM runs.
    pub fn flush(&mut self, machine: &Machine) {
        if self.held.is_empty() || machine.phase() != MachinePhase::Running {
            return;
        }
        let mut net = self.net.lock().expect("net mutex poisoned");
        for frame in self.held.drain(..) {
            net.deliver(&frame);
            self.stats.to_guest += 1;
        }
    }

    /// `Output::ToClient`.
    pub fn handle_to_client(&mut self, frame: &[u8]) {
        match &self.client {
            Some(tap) if matches!(tap.send(frame), Ok(true)) => self.stats.to_client += 1,
            _ => self.stats.client_dropped += 1,
        }
    }

    /// `Event::ClaimClientLink`: the survivor's tap joins the client bridge, so the clients'
    /// frames reach it (the dead primary's tap went away with its process). Returns what was
    /// done, for the log.
    pub fn claim_client_link(&self) -> String {
        match (&self.client, &self.bridge) {
            (Some(tap), Some(bridge)) => match self.join_bridge() {
                Ok(()) => format!("tap={} joined bridge={bridge}", tap.name()),
                Err(e) => format!("failed: {e}"),
            },
            (Some(tap), None) => format!("tap={} (no bridge to join)", tap.name()),
            (None, _) => "no client tap configured".to_string(),
        }
    }
}
