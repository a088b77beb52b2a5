//! The virtio network device ([`Net`], on its [`MmioTransport`]: [`NetDevice`]): the RX (0)
//! and TX (1) split virtqueues, its config space (the MAC), and the host side as a
//! [`FrameSink`] (guest TX goes there) plus [`NetDevice::deliver`] (a frame for the guest).
//! Registers, feature negotiation, status and the device phases (`DevicePhase`) are the
//! transport's (`transport`).
//!
//! Offered features: VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MAC only (no offloads, no mergeable
//! buffers: every RX chain holds one whole frame). With VERSION_1 the `virtio_net_hdr` is 12
//! bytes on both queues (virtio 1.2 section 5.1.6). Status 0 drops (counts) the frames waiting
//! for RX buffers; the MAC and the counters stay.
//!
//! Invariant: guest values never panic the VMM nor reach outside RAM (see `queue`); a bad
//! chain drops one frame (counted in [`NetStats::bad_chains`]); frames for the guest wait in a
//! bounded queue while the driver has no RX buffer posted, and the oldest are dropped and
//! counted when it overflows. The driver-visible state is [`NetState`] (Persist), so a
//! restored or checkpoint-applied VM continues networking where its source was.

use super::queue::{ChainError, QueueState, Segment};
use super::transport::{
    DevicePhase, F_VERSION_1, MmioTransport, QueueIo, TransportState, VirtioDevice,
};
use crate::vmm::memory::GuestMemory;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const DEVICE_ID_NET: u32 = 1;

/// VIRTIO_NET_F_MAC.
pub const F_MAC: u64 = 1 << 5;
const DEVICE_FEATURES: u64 = F_VERSION_1 | F_MAC;

/// The RX queue's index.
pub const RX: usize = 0;
/// The TX queue's index.
pub const TX: usize = 1;
/// `virtio_net_hdr` with VIRTIO_F_VERSION_1 (num_buffers included).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame either way: an Ethernet frame without FCS, no offloads (1514), with room
/// for a VLAN tag.
pub const MAX_FRAME: usize = 1518;
/// Frames kept for a guest that has no RX buffer posted.
pub const PENDING_RX_LIMIT: usize = 256;

/// Where the guest's transmitted frames go (a tap, the node loop).
pub trait FrameSink: Send {
    /// One Ethernet frame, without the virtio header.
    fn send_frame(&mut self, frame: &[u8]);
}

/// A sink that drops every frame (a device nobody listens to).
#[derive(Debug, Default)]
pub struct DiscardSink;

impl FrameSink for DiscardSink {
    fn send_frame(&mut self, _frame: &[u8]) {}
}

/// Counters (part of the Persist state: they describe the guest-visible history).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames written into the guest's RX buffers.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames for the guest dropped: driver not ready, or the pending queue overflowed.
    pub rx_dropped: u64,
    /// Frames dropped because an RX chain was too small or a TX frame too large or small.
    pub oversize: u64,
    /// Chains dropped because a descriptor was invalid.
    pub bad_chains: u64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub device_errors: u64,
}

/// The driver-visible state of the device (its Persist state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC in config space.
    pub mac: [u8; 6],
    /// The transport: features, status, RX and TX, interrupt status.
    pub transport: TransportState<[QueueState; 2]>,
    /// Counters.
    pub stats: NetStats,
}

/// The network device on its virtio-mmio transport.
pub type NetDevice = MmioTransport<Net>;

/// The network device behind the transport: its MAC, counters and host side.
pub struct Net {
    mac: [u8; 6],
    stats: NetStats,
    sink: Box<dyn FrameSink>,
    pending_rx: VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("stats", &self.stats)
            .field("pending_rx", &self.pending_rx.len())
            .finish_non_exhaustive()
    }
}

impl MmioTransport<Net> {
    /// A device over `mem` with MAC `mac`, interrupting through `irq` (an irqfd), sending the
    /// guest's frames nowhere until [`NetDevice::set_sink`].
    pub fn new(mem: GuestMemory, mac: [u8; 6], irq: Option<EventFd>) -> NetDevice {
        let net = Net {
            mac,
            stats: NetStats::default(),
            sink: Box::new(DiscardSink),
            pending_rx: VecDeque::new(),
        };
        MmioTransport::with_device(mem, irq, net)
    }

    /// Replaces the host side of TX.
    pub fn set_sink(&mut self, sink: Box<dyn FrameSink>) {
        self.device_mut().sink = sink;
    }

    /// Sets the MAC the guest reads (before the guest reads it).
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.device_mut().mac = mac;
    }

    /// The MAC (without copying the whole state as [`NetDevice::save`] does).
    pub fn mac(&self) -> [u8; 6] {
        self.device().mac
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.device().stats
    }

    /// A frame for the guest: written into the next RX buffer now, or kept (bounded) until
    /// the driver posts one.
    pub fn deliver(&mut self, frame: &[u8]) {
        self.with_io(|net, io| net.deliver(frame, io));
    }
}

impl VirtioDevice for Net {
    type Queues = [QueueState; 2];
    type State = NetState;
    const DEVICE_ID: u32 = DEVICE_ID_NET;

    fn device_features(&self) -> u64 {
        DEVICE_FEATURES
    }

    /// Config space: the MAC, byte-addressable (virtio_net_config.mac).
    fn config_read(&self, offset: u64) -> u8 {
        usize::try_from(offset)
            .ok()
            .and_then(|i| self.mac.get(i))
            .copied()
            .unwrap_or(0)
    }

    fn process(&mut self, queue: usize, io: &mut QueueIo<'_, Self::Queues>) {
        match queue {
            RX => self.process_rx(io),
            TX => self.process_tx(io),
            _ => {}
        }
    }

    fn on_status(&mut self, io: &mut QueueIo<'_, Self::Queues>) {
        if io.phase() == DevicePhase::Live {
            self.process_rx(io);
        }
    }

    fn reset(&mut self) {
        self.stats.rx_dropped += self.pending_rx.len() as u64;
        self.pending_rx.clear();
    }

    fn record_device_errors(&mut self, count: u64) {
        self.stats.device_errors += count;
    }

    fn save(&self, transport: &TransportState<Self::Queues>) -> NetState {
        NetState {
            mac: self.mac,
            transport: transport.clone(),
            stats: self.stats,
        }
    }

    fn transport_state(state: &NetState) -> &TransportState<Self::Queues> {
        &state.transport
    }

    /// Frames waiting for RX buffers are host-side in-flight packets, not guest state: they
    /// are dropped (counted), as a lost packet.
    fn restore(&mut self, state: &NetState, _io: &mut QueueIo<'_, Self::Queues>) {
        self.mac = state.mac;
        self.stats = state.stats;
        self.stats.rx_dropped += self.pending_rx.len() as u64;
        self.pending_rx.clear();
    }
}

impl Net {
    fn deliver(&mut self, frame: &[u8], io: &mut QueueIo<'_, [QueueState; 2]>) {
        if !io.live(RX) {
            self.stats.rx_dropped += 1;
            return;
        }
        if frame.len() > MAX_FRAME {
            self.stats.oversize += 1;
            return;
        }
        if self.pending_rx.len() >= PENDING_RX_LIMIT {
            self.pending_rx.pop_front();
            self.stats.rx_dropped += 1;
        }
        self.pending_rx.push_back(frame.to_vec());
        self.process_rx(io);
    }

    /// Moves pending frames into posted RX buffers.
    fn process_rx(&mut self, io: &mut QueueIo<'_, [QueueState; 2]>) {
        let mut returned = false;
        while !self.pending_rx.is_empty() && io.live(RX) {
            let Some(popped) = io.pop(RX) else { break };
            let frame = self.pending_rx.pop_front().expect("checked non-empty");
            let written = match popped.chain {
                Ok(segments) => match write_rx(io.mem(), &segments, &frame) {
                    Ok(n) => {
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += frame.len() as u64;
                        n
                    }
                    Err(ChainError::Length(_)) => {
                        self.stats.oversize += 1;
                        0
                    }
                    Err(_) => {
                        self.stats.bad_chains += 1;
                        0
                    }
                },
                Err(_) => {
                    self.stats.bad_chains += 1;
                    0
                }
            };
            returned |= io.push_used(RX, popped.head, written);
        }
        if returned {
            io.interrupt_if_wanted(RX);
        }
    }

    /// Sends every frame the driver queued on TX.
    fn process_tx(&mut self, io: &mut QueueIo<'_, [QueueState; 2]>) {
        let mut returned = false;
        while io.live(TX) {
            let Some(popped) = io.pop(TX) else { break };
            match popped
                .chain
                .and_then(|segments| read_tx(io.mem(), &segments))
            {
                Ok(frame) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                    self.sink.send_frame(&frame);
                }
                Err(ChainError::Length(_)) => self.stats.oversize += 1,
                Err(_) => self.stats.bad_chains += 1,
            }
            returned |= io.push_used(TX, popped.head, 0);
        }
        if returned {
            io.interrupt_if_wanted(TX);
        }
    }
}

/// Writes header + frame into a device-writable chain; returns the bytes written.
fn write_rx(mem: &GuestMemory, segments: &[Segment], frame: &[u8]) -> Result<u32, ChainError> {
    if segments.iter().any(|s| !s.writable) {
        return Err(ChainError::Direction);
    }
    let capacity: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
    let needed = (NET_HDR_LEN + frame.len()) as u64;
    if capacity < needed {
        return Err(ChainError::Length(capacity));
    }
    // num_buffers = 1 (the last two header bytes); no offloads, so the rest is zero.
    let mut header = [0u8; NET_HDR_LEN];
    header[10] = 1;
    let mut data = header.iter().chain(frame.iter()).copied();
    let mut buf = Vec::new();
    for s in segments {
        buf.clear();
        buf.extend(data.by_ref().take(s.len as usize));
        if buf.is_empty() {
            break;
        }
        // Through vm-memory: the write marks the VMM's dirty bitmap for the checkpoint.
        mem.write_slice(&buf, GuestAddress(s.addr))
            .map_err(|_| ChainError::OutOfRange {
                addr: s.addr,
                len: s.len,
            })?;
    }
    Ok(needed as u32)
}

/// Gathers a device-readable chain and strips the virtio header.
fn read_tx(mem: &GuestMemory, segments: &[Segment]) -> Result<Vec<u8>, ChainError> {
    if segments.iter().any(|s| s.writable) {
        return Err(ChainError::Direction);
    }
    let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
    if total < NET_HDR_LEN as u64 + 14 || total > (NET_HDR_LEN + MAX_FRAME) as u64 {
        return Err(ChainError::Length(total));
    }
    let mut bytes = vec![0u8; total as usize];
    let mut at = 0;
    for s in segments {
        let end = at + s.len as usize;
        mem.read_slice(&mut bytes[at..end], GuestAddress(s.addr))
            .map_err(|_| ChainError::OutOfRange {
                addr: s.addr,
                len: s.len,
            })?;
        at = end;
    }
    bytes.drain(..NET_HDR_LEN);
    Ok(bytes)
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
