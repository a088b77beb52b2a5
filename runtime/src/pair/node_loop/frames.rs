//! Frame routing between the node, its VM's virtio-net devices and the client links (one tap
//! per guest NIC): the runtime side of QEMU COLO's filter-mirror / filter-redirector /
//! colo-compare wiring, with the decisions (mirror, compare, rewrite, release) left to the
//! `Node`.
//!
//! Routes:
//! ```text
//!   client tap of NIC i --reader thread--> LoopEvent::ClientFrame --> Input::ClientFrame { nic: i }
//!   guest TX (virtio-net sinks, vCPU threads) --> LoopEvent::GuestFrame --> Input::GuestFrame
//!   Output::ToGuest { nic: i } --> NIC i's virtio-net RX (held while the VM is paused)
//!   Output::ToClient --> the tap of the NIC whose MAC is the frame's source (else NIC 0's)
//!   Output::ClaimClientLink --> RARP announcements of each NIC's MAC on its tap, and a
//!                              gratuitous ARP for the IPv4 address its guest sends from
//! ```
//! Both nodes' client taps are on the client network from the start: while paired, the
//! secondary's node ignores client frames (colo-core: the primary owns the link), so its tap
//! only keeps the client network up when the primary's tap disappears with its process. The
//! claim announces the guest's MACs from the survivor, as QEMU does after a migration
//! (`qemu_announce_self`: RARP frames), so learning switches move the MACs to its ports; it
//! also sends a gratuitous ARP (RFC 5227 announcement) for the IPv4 source address the NIC's
//! guest last sent from (learned from the guest's frames, on both roles), so hosts that
//! cache the address (and routers whose entry went stale) point it at the guest's MAC again.
//! Invariants: a frame for the guest is written into guest RAM only while the VM runs, so a
//! checkpoint's pages and device state never see a half-delivered frame (the node's own rule:
//! "a paused VM consumes it on resume"); held frames are bounded per NIC by colo-core's
//! `GUEST_HOLD_FRAMES_PER_NIC`, the simulator's bound too (the oldest dropped and counted, as
//! a NIC queue would); a guest frame sent before a pause reaches the node
//! before the pause's completion (see `NodeLoop::drain_guest_frames`), so it counts in the
//! epoch that produced it.

use super::{LoopError, LoopEvent};
use crate::net::tap::{Tap, TapLink};
use crate::vmm::devices::virtio::net::{FrameSink, NetDevice};
use crate::vmm::machine::{Machine, MachinePhase};
use colo_core::ids::NicId;
use colo_core::node::GUEST_HOLD_FRAMES_PER_NIC;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc;

/// One guest NIC's client link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLink {
    /// The tap towards the clients (created or attached in this process's namespace).
    pub tap: String,
    /// A bridge the tap joins at start (both roles).
    pub bridge: Option<String>,
}

/// The node's network settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The client link of each guest NIC, in device order (NIC `i` is the VM's virtio-net
    /// device `i`); empty: frames for clients are counted and dropped.
    pub links: Vec<ClientLink>,
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
        super::hops::mark("guest_out", frame);
        let _ = self.0.send(LoopEvent::GuestFrame(frame.to_vec()));
    }
}

/// One NIC: its device, its client tap and the frames held for it.
struct Nic {
    device: Arc<Mutex<NetDevice>>,
    client: Option<Tap>,
    _client_reader: Option<TapLink>,
    bridge: Option<String>,
    held: VecDeque<Vec<u8>>,
    /// The IPv4 address this NIC's guest last sent from (for the gratuitous ARP).
    guest_ip: Option<[u8; 4]>,
}

/// The routing state of one node.
pub struct GuestNet {
    nics: Vec<Nic>,
    stats: FrameStats,
}

impl std::fmt::Debug for GuestNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestNet")
            .field("stats", &self.stats)
            .field("nics", &self.nics.len())
            .field("held", &self.held())
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
    /// Wires each of `machine`'s network devices to the loop's channel and opens the client
    /// tap of each NIC that has one (on its bridge, if one is given, for either role: see the
    /// module doc). NIC `i` is device `i`; more links than devices is the caller's error.
    pub fn new(
        config: &NetConfig,
        machine: &Machine,
        tx: mpsc::Sender<LoopEvent>,
    ) -> Result<GuestNet, LoopError> {
        if config.links.len() > machine.nets().len() {
            return Err(LoopError::Endpoint(format!(
                "{} client links for a VM with {} network devices",
                config.links.len(),
                machine.nets().len()
            )));
        }
        let mut nics = Vec::with_capacity(machine.nets().len());
        for (index, device) in machine.nets().iter().enumerate() {
            device.lock().set_sink(Box::new(ChannelSink(tx.clone())));
            let link = config.links.get(index);
            let (client, reader) = match link {
                None => (None, None),
                Some(link) => {
                    let name = &link.tap;
                    let fail = |source| LoopError::Tap {
                        name: name.clone(),
                        source,
                    };
                    let tap = Tap::open(name).map_err(fail)?;
                    let writer = tap.try_clone().map_err(fail)?;
                    let tx = tx.clone();
                    let nic = NicId(index as u8);
                    let reader = TapLink::spawn(tap, move |frame| {
                        super::hops::mark("tap_in", frame);
                        let _ = tx.send(LoopEvent::ClientFrame {
                            nic,
                            frame: frame.to_vec(),
                        });
                    })
                    .map_err(fail)?;
                    (Some(writer), Some(reader))
                }
            };
            let nic = Nic {
                device: device.clone(),
                client,
                _client_reader: reader,
                bridge: link.and_then(|l| l.bridge.clone()),
                held: VecDeque::new(),
                guest_ip: None,
            };
            nic.join_bridge().map_err(LoopError::Endpoint)?;
            nics.push(nic);
        }
        Ok(GuestNet {
            nics,
            stats: FrameStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> FrameStats {
        self.stats
    }

    /// Frames held for the guest, all NICs.
    pub fn held(&self) -> usize {
        self.nics.iter().map(|n| n.held.len()).sum()
    }

    /// `Output::ToGuest`: delivered now if the VM runs, else held until it does. A NIC this
    /// VM does not have (a peer with another VM shape; refused at the handshake) drops it.
    pub fn handle_to_guest(&mut self, machine: &Machine, nic: NicId, frame: Vec<u8>) {
        let Some(n) = self.nics.get_mut(usize::from(nic.0)) else {
            self.stats.held_dropped += 1;
            return;
        };
        if n.held.len() >= GUEST_HOLD_FRAMES_PER_NIC {
            n.held.pop_front();
            self.stats.held_dropped += 1;
        }
        n.held.push_back(frame);
        self.flush(machine);
    }

    /// Delivers held frames if the VM runs.
    pub fn flush(&mut self, machine: &Machine) {
        if machine.phase() != MachinePhase::Running {
            return;
        }
        for nic in &mut self.nics {
            if nic.held.is_empty() {
                continue;
            }
            let mut device = nic.device.lock();
            for frame in nic.held.drain(..) {
                super::hops::mark("to_guest", &frame);
                device.deliver(&frame);
                self.stats.to_guest += 1;
            }
        }
    }

    /// `Output::ToClient`: out of the tap of the NIC whose MAC is the frame's source (a
    /// guest NIC sends with its own MAC), or NIC 0's if none matches.
    pub fn handle_to_client(&mut self, frame: &[u8]) {
        let source = frame.get(6..12);
        let nic = self
            .nics
            .iter()
            .position(|n| source == Some(&n.mac()[..]))
            .unwrap_or(0);
        super::hops::mark("to_client", frame);
        match self.nics.get(nic).and_then(|n| n.client.as_ref()) {
            Some(tap) if matches!(tap.send(frame), Ok(true)) => self.stats.to_client += 1,
            _ => self.stats.client_dropped += 1,
        }
    }

    /// A frame the guest sent: remembers its IPv4 source address for the NIC whose MAC sent
    /// it. Costs a header read per frame; the NIC's MAC is looked up only when the address is
    /// new.
    pub fn learn_guest_ip(&mut self, frame: &[u8]) {
        let Some(ip) = ipv4_source(frame) else {
            return;
        };
        if self.nics.iter().any(|n| n.guest_ip == Some(ip)) {
            return;
        }
        let source = frame.get(6..12);
        if let Some(nic) = self.nics.iter_mut().find(|n| source == Some(&n.mac()[..])) {
            nic.guest_ip = Some(ip);
        }
    }

    /// `Output::ClaimClientLink`: announces each NIC's MAC on its client tap (three RARP frames
    /// each, QEMU's announce format), so the client networks deliver the guest's traffic to
    /// this node, and sends three gratuitous ARPs for the guest's IPv4 address when one was
    /// learned. Returns what was done, for the log.
    pub fn claim_client_link(&mut self) -> String {
        let done: Vec<String> = self
            .nics
            .iter()
            .filter_map(|nic| {
                let tap = nic.client.as_ref()?;
                let mac = nic.mac();
                let frame = rarp_announce(mac);
                let sent = (0..ANNOUNCE_FRAMES)
                    .filter(|_| matches!(tap.send(&frame), Ok(true)))
                    .count();
                let garp = match nic.guest_ip {
                    Some(ip) => {
                        let frame = gratuitous_arp(mac, ip);
                        let sent = (0..ANNOUNCE_FRAMES)
                            .filter(|_| matches!(tap.send(&frame), Ok(true)))
                            .count();
                        let [a, b, c, d] = ip;
                        format!(" garp ip={a}.{b}.{c}.{d} frames={sent}")
                    }
                    None => " garp none (no IPv4 address seen from the guest)".to_string(),
                };
                Some(format!(
                    "tap={} announced mac={} frames={sent}{garp}",
                    tap.name(),
                    crate::vm_spec::format_mac(mac)
                ))
            })
            .collect();
        if done.is_empty() {
            "no client tap configured".to_string()
        } else {
            done.join(" ")
        }
    }
}

impl Nic {
    fn mac(&self) -> [u8; 6] {
        // Per released frame: read the MAC alone, not a copy of the device's whole state.
        self.device.lock().mac()
    }

    fn join_bridge(&self) -> Result<(), String> {
        let (Some(tap), Some(bridge)) = (&self.client, &self.bridge) else {
            return Ok(());
        };
        ip(&["link", "set", tap.name(), "master", bridge])?;
        ip(&["link", "set", tap.name(), "up"])
    }
}

/// RARP announcements sent on a claim (QEMU sends five, spaced out; the loop has no timer for
/// the spacing, so three go at once).
const ANNOUNCE_FRAMES: usize = 3;

/// QEMU's self-announcement (net/announce.c): a broadcast RARP "request reverse" (opcode 3)
/// from `mac` about `mac`, zero protocol addresses, padded to the 60-byte minimum frame.
fn rarp_announce(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x8035u16.to_be_bytes()); // ETH_P_RARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&3u16.to_be_bytes()); // reverse request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.resize(60, 0);
    f
}

/// The IPv4 source address of an untagged Ethernet/IPv4 frame, or the sender address of an
/// ARP frame (a guest answering ARP for its address); `None` for anything else or 0.0.0.0.
fn ipv4_source(frame: &[u8]) -> Option<[u8; 4]> {
    let ip: [u8; 4] = match frame.get(12..14)? {
        [0x08, 0x00] => frame.get(26..30)?.try_into().ok()?,
        [0x08, 0x06] => frame.get(28..32)?.try_into().ok()?,
        _ => return None,
    };
    (ip != [0; 4]).then_some(ip)
}

/// A gratuitous ARP (RFC 5227 "ARP Announcement"): a broadcast request from `mac` whose sender
/// and target protocol addresses are both `ip`, target hardware address zero, padded to 60
/// bytes. Receivers that have `ip` in their cache update it to `mac`.
fn gratuitous_arp(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes()); // ETH_P_ARP
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip);
    f.resize(60, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_is_a_broadcast_rarp_about_the_guest_mac() {
        let mac = [0x52, 0x54, 0, 0xc0, 0x10, 1];
        let f = rarp_announce(mac);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3], "opcode: reverse request");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[32..38], &mac, "target hardware address");
    }

    #[test]
    fn gratuitous_arp_announces_the_address_from_the_guest_mac() {
        let mac = [0x52, 0x54, 0, 0xc0, 0x10, 1];
        let f = gratuitous_arp(mac, [10, 0, 0, 2]);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "opcode: request");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &[10, 0, 0, 2], "sender protocol address");
        assert_eq!(&f[32..38], &[0; 6], "target hardware address");
        assert_eq!(&f[38..42], &[10, 0, 0, 2], "target protocol address");
        assert_eq!(ipv4_source(&f), Some([10, 0, 0, 2]));
    }

    #[test]
    fn the_guest_address_is_read_from_ipv4_and_arp_frames_only() {
        let mut ipv4 = vec![0u8; 60];
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        ipv4[26..30].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(ipv4_source(&ipv4), Some([10, 0, 0, 2]));
        ipv4[26..30].copy_from_slice(&[0; 4]);
        assert_eq!(ipv4_source(&ipv4), None, "0.0.0.0 is no address");
        let rarp = rarp_announce([2; 6]);
        assert_eq!(ipv4_source(&rarp), None);
        assert_eq!(ipv4_source(&[0u8; 13]), None, "a runt frame");
    }
}
