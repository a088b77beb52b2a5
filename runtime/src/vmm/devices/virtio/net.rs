//! The virtio-mmio (version 2) network device: its register window, feature negotiation,
//! the RX (0) and TX (1) split virtqueues, and the host side as a [`FrameSink`] (guest TX
//! goes there) plus [`NetDevice::deliver`] (a frame for the guest).
//!
//! Offered features: VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MAC only (no offloads, no mergeable
//! buffers: every RX chain holds one whole frame). With VERSION_1 the `virtio_net_hdr` is 12
//! bytes on both queues (virtio 1.2 section 5.1.6). Device phases (`DevicePhase`):
//! ```text
//!   Reset --driver writes status bits, FEATURES_OK accepted, DRIVER_OK--> Live
//!   Live --a broken ring (QueueError) or an invalid queue setup--> NeedsReset (status 0x40)
//!   any --status 0 written--> Reset
//! ```
//! Invariant: guest values never panic the VMM nor reach outside RAM (see `queue`); a bad
//! chain drops one frame (counted in [`NetStats::bad_chains`]); frames for the guest wait in a
//! bounded queue while the driver has no RX buffer posted, and the oldest are dropped and
//! counted when it overflows. The driver-visible state is [`NetState`] (Persist), so a
//! restored or checkpoint-applied VM continues networking where its source was.

use super::mmio;
use super::queue::{ChainError, Popped, QueueError, QueueState, Segment};
use crate::vmm::devices::bus::{BusDevice, DeviceAction};
use crate::vmm::memory::{self, GuestMemory};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

pub(super) const MAGIC: u32 = 0x7472_6976; // "virt"
pub(super) const VERSION: u32 = 2;
const DEVICE_ID_NET: u32 = 1;
pub(super) const VENDOR_ID: u32 = 0x4f4c_4f43; // "COLO"

pub(super) const REG_MAGIC: u64 = 0x000;
pub(super) const REG_VERSION: u64 = 0x004;
pub(super) const REG_DEVICE_ID: u64 = 0x008;
pub(super) const REG_VENDOR_ID: u64 = 0x00c;
pub(super) const REG_DEVICE_FEATURES: u64 = 0x010;
pub(super) const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub(super) const REG_DRIVER_FEATURES: u64 = 0x020;
pub(super) const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub(super) const REG_QUEUE_SEL: u64 = 0x030;
pub(super) const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub(super) const REG_QUEUE_NUM: u64 = 0x038;
pub(super) const REG_QUEUE_READY: u64 = 0x044;
pub(super) const REG_QUEUE_NOTIFY: u64 = 0x050;
pub(super) const REG_INTERRUPT_STATUS: u64 = 0x060;
pub(super) const REG_INTERRUPT_ACK: u64 = 0x064;
pub(super) const REG_STATUS: u64 = 0x070;
pub(super) const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub(super) const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub(super) const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub(super) const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub(super) const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub(super) const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub(super) const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub(super) const REG_CONFIG: u64 = 0x100;

/// VIRTIO_NET_F_MAC.
pub const F_MAC: u64 = 1 << 5;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
const DEVICE_FEATURES: u64 = F_VERSION_1 | F_MAC;

/// Device status bits (virtio 1.2 section 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// See [`STATUS_ACKNOWLEDGE`].
pub const STATUS_DRIVER: u32 = 2;
/// See [`STATUS_ACKNOWLEDGE`].
pub const STATUS_DRIVER_OK: u32 = 4;
/// See [`STATUS_ACKNOWLEDGE`].
pub const STATUS_FEATURES_OK: u32 = 8;
/// See [`STATUS_ACKNOWLEDGE`].
pub const STATUS_NEEDS_RESET: u32 = 0x40;

pub(super) const INT_USED_BUFFER: u32 = 1;
pub(super) const INT_CONFIG_CHANGE: u32 = 2;

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
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// Device status.
    pub status: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// RX and TX.
    pub queues: [QueueState; 2],
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Counters.
    pub stats: NetStats,
}

/// Where the device is in its life (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePhase {
    /// Status 0 or the driver is still initializing.
    Reset,
    /// DRIVER_OK and no error: queues are processed.
    Live,
    /// DEVICE_NEEDS_RESET: nothing is processed until the driver writes status 0.
    NeedsReset,
}

/// The device.
pub struct NetDevice {
    mem: GuestMemory,
    mem_bytes: u64,
    sink: Box<dyn FrameSink>,
    irq: Option<EventFd>,
    state: NetState,
    pending_rx: VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("state", &self.state)
            .field("pending_rx", &self.pending_rx.len())
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    /// A device over `mem` with MAC `mac`, interrupting through `irq` (an irqfd), sending the
    /// guest's frames nowhere until [`NetDevice::set_sink`].
    pub fn new(mem: GuestMemory, mac: [u8; 6], irq: Option<EventFd>) -> NetDevice {
        let mem_bytes = memory::size(&mem);
        NetDevice {
            mem,
            mem_bytes,
            sink: Box::new(DiscardSink),
            irq,
            state: NetState {
                mac,
                ..NetState::default()
            },
            pending_rx: VecDeque::new(),
        }
    }

    /// Replaces the host side of TX.
    pub fn set_sink(&mut self, sink: Box<dyn FrameSink>) {
        self.sink = sink;
    }

    /// Sets the MAC the guest reads (before the guest reads it).
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.state.mac = mac;
    }

    /// The MAC (without copying the whole state as [`NetDevice::save`] does).
    pub fn mac(&self) -> [u8; 6] {
        self.state.mac
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.state.stats
    }

    /// The phase.
    pub fn phase(&self) -> DevicePhase {
        mmio::phase(self.state.status)
    }

    /// Persist: the driver-visible state.
    pub fn save(&self) -> NetState {
        self.state.clone()
    }

    /// Persist: continue from a saved state. Frames waiting for RX buffers are host-side
    /// in-flight packets, not guest state: they are dropped (counted), as a lost packet.
    pub fn restore(&mut self, state: &NetState) {
        self.state = state.clone();
        self.state.stats.rx_dropped += self.pending_rx.len() as u64;
        self.pending_rx.clear();
    }

    /// A frame for the guest: written into the next RX buffer now, or kept (bounded) until
    /// the driver posts one.
    pub fn deliver(&mut self, frame: &[u8]) {
        if self.phase() != DevicePhase::Live || !self.state.queues[RX].ready {
            self.state.stats.rx_dropped += 1;
            return;
        }
        if frame.len() > MAX_FRAME {
            self.state.stats.oversize += 1;
            return;
        }
        if self.pending_rx.len() >= PENDING_RX_LIMIT {
            self.pending_rx.pop_front();
            self.state.stats.rx_dropped += 1;
        }
        self.pending_rx.push_back(frame.to_vec());
        self.process_rx();
    }

    fn reset(&mut self) {
        let dropped = self.pending_rx.len() as u64;
        self.pending_rx.clear();
        self.state = NetState {
            mac: self.state.mac,
            stats: NetStats {
                rx_dropped: self.state.stats.rx_dropped + dropped,
                ..self.state.stats
            },
            ..NetState::default()
        };
    }

    fn fail(&mut self, _error: QueueError) {
        mmio::enter_needs_reset(
            &mut self.state.status,
            &mut self.state.interrupt_status,
            &mut self.state.stats.device_errors,
            self.irq.as_ref(),
        );
    }

    fn raise_irq(&self) {
        mmio::raise_irq(self.irq.as_ref());
    }

    fn selected(&mut self) -> Option<&mut QueueState> {
        self.state.queues.get_mut(self.state.queue_sel as usize)
    }

    fn live_queue(&self, index: usize) -> bool {
        self.phase() == DevicePhase::Live && self.state.queues[index].ready
    }

    /// Ends a batch: interrupts if any buffer was returned and the driver wants to know.
    fn finish(&mut self, index: usize, returned: bool) {
        if returned && self.state.queues[index].wants_interrupt(&self.mem) {
            self.state.interrupt_status |= INT_USED_BUFFER;
            self.raise_irq();
        }
    }

    fn pop(&mut self, index: usize) -> Option<Popped> {
        match self.state.queues[index].pop(&self.mem, self.mem_bytes) {
            Ok(popped) => popped,
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    fn push_used(&mut self, index: usize, head: u16, len: u32) -> bool {
        match self.state.queues[index].push_used(&self.mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// Moves pending frames into posted RX buffers.
    fn process_rx(&mut self) {
        let mut returned = false;
        while !self.pending_rx.is_empty() && self.live_queue(RX) {
            let Some(popped) = self.pop(RX) else { break };
            let frame = self.pending_rx.pop_front().expect("checked non-empty");
            let written = match popped.chain {
                Ok(segments) => match self.write_rx(&segments, &frame) {
                    Ok(n) => {
                        self.state.stats.rx_frames += 1;
                        self.state.stats.rx_bytes += frame.len() as u64;
                        n
                    }
                    Err(ChainError::Length(_)) => {
                        self.state.stats.oversize += 1;
                        0
                    }
                    Err(_) => {
                        self.state.stats.bad_chains += 1;
                        0
                    }
                },
                Err(_) => {
                    self.state.stats.bad_chains += 1;
                    0
                }
            };
            returned |= self.push_used(RX, popped.head, written);
        }
        self.finish(RX, returned);
    }

    /// Writes header + frame into a device-writable chain; returns the bytes written.
    fn write_rx(&self, segments: &[Segment], frame: &[u8]) -> Result<u32, ChainError> {
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
            self.mem
                .write_slice(&buf, GuestAddress(s.addr))
                .map_err(|_| ChainError::OutOfRange {
                    addr: s.addr,
                    len: s.len,
                })?;
        }
        Ok(needed as u32)
    }

    /// Sends every frame the driver queued on TX.
    fn process_tx(&mut self) {
        let mut returned = false;
        while self.live_queue(TX) {
            let Some(popped) = self.pop(TX) else { break };
            match popped.chain.and_then(|segments| self.read_tx(&segments)) {
                Ok(frame) => {
                    self.state.stats.tx_frames += 1;
                    self.state.stats.tx_bytes += frame.len() as u64;
                    self.sink.send_frame(&frame);
                }
                Err(ChainError::Length(_)) => self.state.stats.oversize += 1,
                Err(_) => self.state.stats.bad_chains += 1,
            }
            returned |= self.push_used(TX, popped.head, 0);
        }
        self.finish(TX, returned);
    }

    /// Gathers a device-readable chain and strips the virtio header.
    fn read_tx(&self, segments: &[Segment]) -> Result<Vec<u8>, ChainError> {
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
            self.mem
                .read_slice(&mut bytes[at..end], GuestAddress(s.addr))
                .map_err(|_| ChainError::OutOfRange {
                    addr: s.addr,
                    len: s.len,
                })?;
            at = end;
        }
        bytes.drain(..NET_HDR_LEN);
        Ok(bytes)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let s = &self.state;
        let view = mmio::RegisterView {
            device_id: DEVICE_ID_NET,
            device_features: DEVICE_FEATURES,
            device_features_sel: s.device_features_sel,
            queue: s.queues.get(s.queue_sel as usize),
            interrupt_status: s.interrupt_status,
            status: s.status,
        };
        mmio::read_register(&view, offset)
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        use mmio::RegisterWrite as W;
        match mmio::decode_write(offset, value) {
            W::DeviceFeaturesSel(v) => self.state.device_features_sel = v,
            W::DriverFeaturesSel(v) => self.state.driver_features_sel = v,
            W::DriverFeatures(v) => mmio::write_driver_features(
                &mut self.state.driver_features,
                self.state.driver_features_sel,
                v,
            ),
            W::QueueSel(v) => self.state.queue_sel = v,
            // Queue configuration registers are only writable while the queue is not ready
            // (virtio 1.2 section 4.2.2.2).
            W::QueueConfig(field, v) => {
                if let Some(q) = self.selected()
                    && !q.ready
                {
                    mmio::configure_queue(q, field, v);
                }
            }
            W::QueueReady(ready) => {
                let mem_bytes = self.mem_bytes;
                let Some(q) = self.selected() else { return };
                if let Err(e) = mmio::set_queue_ready(q, ready, mem_bytes) {
                    self.fail(e);
                }
            }
            W::QueueNotify(q) => match q as usize {
                RX => self.process_rx(),
                TX => self.process_tx(),
                _ => {}
            },
            W::InterruptAck(v) => self.state.interrupt_status &= !v,
            W::Status(v) => self.write_status(v),
            W::Ignored => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        self.state.status = mmio::next_status(
            self.state.status,
            value,
            self.state.driver_features,
            DEVICE_FEATURES,
        );
        if self.phase() == DevicePhase::Live {
            self.process_rx();
        }
    }
}

impl BusDevice for NetDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let this = &*self;
        // Config space: the MAC, byte-addressable (virtio_net_config.mac).
        let config_byte = |at: u64| {
            usize::try_from(at)
                .ok()
                .and_then(|i| this.state.mac.get(i))
                .copied()
                .unwrap_or(0)
        };
        mmio::bus_read(offset, data, config_byte, |r| this.read_register(r));
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let Some((offset, value)) = mmio::bus_write(offset, data) {
            self.write_register(offset, value);
        }
        DeviceAction::Continue
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
