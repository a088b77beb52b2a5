//! The virtio-mmio transport (version 2, virtio 1.2 section 4.2.2), one for every virtio
//! device: [`MmioTransport`] owns what the transport defines (the register window and its
//! constants, feature selection and the driver's features, the device status, queue
//! selection and the queues' configuration, the interrupt status and the interrupt line) and
//! drives a [`VirtioDevice`] (virtio-net, virtio-blk) that only says what it offers, what its
//! config space holds and what a notified queue does. Devices reach their queues through a
//! [`QueueIo`], which turns a broken ring into DEVICE_NEEDS_RESET in one place.
//!
//! Saved state: [`TransportState`] is embedded in each device's Persist state where the
//! devices kept these fields before the transport existed (`NetState`, `BlkState`); bincode
//! writes a nested struct's fields in order with no framing and a one-element queue array
//! as its element, so the checkpoint bytes (and `persist::STATE_VERSION`) did not change.
//!
//! Invariants kept for every device: queue configuration registers only change while the
//! queue is not ready (section 4.2.2.2); FEATURES_OK only sticks for a subset of the offered
//! features that includes VERSION_1 (section 3.1.1); DRIVER_OK needs FEATURES_OK; the
//! device's NEEDS_RESET bit survives any status write but 0, and every broken ring sets it,
//! counts one device error and raises a configuration-change interrupt; accesses that are not
//! 32-bit and aligned read as zero and are ignored on write; the config space is read-only.

use super::queue::{Popped, QUEUE_MAX, QueueError, QueueState};
use crate::vmm::devices::bus::{BusDevice, DeviceAction};
use crate::vmm::memory::{self, GuestMemory};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

/// MagicValue: "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// Version: virtio-mmio version 2 (no legacy).
pub const VERSION: u32 = 2;
/// VendorID: "COLO".
pub const VENDOR_ID: u32 = 0x4f4c_4f43;

/// Register offsets (virtio 1.2 section 4.2.2, table 4.1).
pub const REG_MAGIC: u64 = 0x000;
/// See [`REG_MAGIC`].
pub const REG_VERSION: u64 = 0x004;
/// See [`REG_MAGIC`].
pub const REG_DEVICE_ID: u64 = 0x008;
/// See [`REG_MAGIC`].
pub const REG_VENDOR_ID: u64 = 0x00c;
/// See [`REG_MAGIC`].
pub const REG_DEVICE_FEATURES: u64 = 0x010;
/// See [`REG_MAGIC`].
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
/// See [`REG_MAGIC`].
pub const REG_DRIVER_FEATURES: u64 = 0x020;
/// See [`REG_MAGIC`].
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_SEL: u64 = 0x030;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_NUM: u64 = 0x038;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_READY: u64 = 0x044;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
/// See [`REG_MAGIC`].
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
/// See [`REG_MAGIC`].
pub const REG_INTERRUPT_ACK: u64 = 0x064;
/// See [`REG_MAGIC`].
pub const REG_STATUS: u64 = 0x070;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// See [`REG_MAGIC`].
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// See [`REG_MAGIC`].
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Where the device's config space starts.
pub const REG_CONFIG: u64 = 0x100;

/// VIRTIO_F_VERSION_1: every device offers it and a driver must accept it.
pub const F_VERSION_1: u64 = 1 << 32;

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

/// InterruptStatus bit: the device returned buffers.
pub const INT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit: the configuration (here: the status, NEEDS_RESET) changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Where a device is in its life:
/// ```text
///   Reset --driver writes status bits, FEATURES_OK accepted, DRIVER_OK--> Live
///   Live --a broken ring (QueueError) or an invalid queue setup--> NeedsReset (status 0x40)
///   any --status 0 written--> Reset
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePhase {
    /// Status 0 or the driver is still initializing.
    Reset,
    /// DRIVER_OK and no error: queues are processed.
    Live,
    /// DEVICE_NEEDS_RESET: nothing is processed until the driver writes status 0.
    NeedsReset,
}

/// The transport's driver-visible state (part of each device's Persist state). `Q` is the
/// device's queue array (`[QueueState; N]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState<Q> {
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
    /// The device's queues, by index.
    pub queues: Q,
    /// InterruptStatus.
    pub interrupt_status: u32,
}

impl<Q> TransportState<Q> {
    /// The phase the status gives: NEEDS_RESET wins over DRIVER_OK (section 2.1.2: the
    /// device stops until the driver resets it).
    pub fn phase(&self) -> DevicePhase {
        if self.status & STATUS_NEEDS_RESET != 0 {
            DevicePhase::NeedsReset
        } else if self.status & STATUS_DRIVER_OK != 0 {
            DevicePhase::Live
        } else {
            DevicePhase::Reset
        }
    }
}

/// A device's queue array: any fixed number of queues.
pub trait Queues: AsRef<[QueueState]> + AsMut<[QueueState]> + Clone + Default + Send {}

impl<const N: usize> Queues for [QueueState; N] where [QueueState; N]: Default {}

/// A virtio device behind [`MmioTransport`]: what it offers and what its queues do. The
/// transport calls it with the device lock held (a vCPU's MMIO exit, or the host side through
/// the device's own methods), so nothing here may block on the device again.
pub trait VirtioDevice: Send {
    /// The queues (`[QueueState; N]`: N is the device's queue count).
    type Queues: Queues;
    /// The device's Persist state, which embeds the transport's.
    type State: Clone;
    /// DeviceID (virtio 1.2 section 5).
    const DEVICE_ID: u32;

    /// The features offered ([`F_VERSION_1`] among them).
    fn device_features(&self) -> u64;

    /// Byte `offset` of the config space (read-only; beyond it reads as zero).
    fn config_read(&self, offset: u64) -> u8;

    /// The driver notified queue `queue` (an index that exists).
    fn process(&mut self, queue: usize, io: &mut QueueIo<'_, Self::Queues>);

    /// The driver wrote a nonzero status (the transport applied it): a device with host-side
    /// work waiting (received frames) can start it once the device is live.
    fn on_status(&mut self, _io: &mut QueueIo<'_, Self::Queues>) {}

    /// The driver wrote status 0: forget what belongs to the driver's session; what is
    /// not negotiated (the disk, the MAC, the counters) stays. The transport resets itself.
    fn reset(&mut self);

    /// The transport saw `count` broken rings since the last call: add them to the device's
    /// error counter (part of its Persist state).
    fn record_device_errors(&mut self, count: u64);

    /// Persist: the device's state around the transport's.
    fn save(&self, transport: &TransportState<Self::Queues>) -> Self::State;

    /// The transport's part of a saved state.
    fn transport_state(state: &Self::State) -> &TransportState<Self::Queues>;

    /// Persist: continue from `state`, whose transport part is already in place in `io`.
    fn restore(&mut self, state: &Self::State, io: &mut QueueIo<'_, Self::Queues>);
}

/// A device's access to its queues during one call: guest memory, the transport's state and
/// the interrupt line. Every ring error goes through [`QueueIo::fail`].
#[derive(Debug)]
pub struct QueueIo<'a, Q> {
    mem: &'a GuestMemory,
    mem_bytes: u64,
    irq: Option<&'a EventFd>,
    state: &'a mut TransportState<Q>,
    errors: u64,
}

impl<Q: Queues> QueueIo<'_, Q> {
    /// Guest memory (writes through it mark the dirty bitmap for the next checkpoint).
    pub fn mem(&self) -> &GuestMemory {
        self.mem
    }

    /// The device's phase.
    pub fn phase(&self) -> DevicePhase {
        self.state.phase()
    }

    /// Whether queue `index` is processed: the device is live and the queue ready.
    pub fn live(&self, index: usize) -> bool {
        self.phase() == DevicePhase::Live
            && self
                .state
                .queues
                .as_ref()
                .get(index)
                .is_some_and(|q| q.ready)
    }

    /// The next chain the driver made available on `index`; `None` when there is none or the
    /// ring is broken (then the device needs a reset). Live queues only.
    pub fn pop(&mut self, index: usize) -> Option<Popped> {
        let (mem, mem_bytes) = (self.mem, self.mem_bytes);
        let q = self.state.queues.as_mut().get_mut(index)?;
        match q.pop(mem, mem_bytes) {
            Ok(popped) => popped,
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// Returns chain `head` with `len` bytes written on `index`; whether it was returned.
    pub fn push_used(&mut self, index: usize, head: u16, len: u32) -> bool {
        let mem = self.mem;
        let Some(q) = self.state.queues.as_mut().get_mut(index) else {
            return false;
        };
        match q.push_used(mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// After returning buffers on `index`: interrupts if the queue is ready and the driver
    /// wants to know (`VIRTQ_AVAIL_F_NO_INTERRUPT` clear).
    pub fn interrupt_if_wanted(&mut self, index: usize) {
        let wanted = self
            .state
            .queues
            .as_ref()
            .get(index)
            .is_some_and(|q| q.ready && q.wants_interrupt(self.mem));
        if wanted {
            self.state.interrupt_status |= INT_USED_BUFFER;
            raise_irq(self.irq);
        }
    }

    /// A broken ring (section 2.1.2): the device needs a reset, the error is counted and the
    /// driver is told with a configuration-change interrupt.
    pub fn fail(&mut self, _error: QueueError) {
        enter_needs_reset(self.state, self.irq);
        self.errors += 1;
    }
}

/// The virtio-mmio register window of one device `D`: the bus device a VM maps at its
/// virtio-mmio slot. `NetDevice` and `BlkDevice` are this transport over their device.
pub struct MmioTransport<D: VirtioDevice> {
    mem: GuestMemory,
    mem_bytes: u64,
    irq: Option<EventFd>,
    state: TransportState<D::Queues>,
    device: D,
}

impl<D: VirtioDevice + std::fmt::Debug> std::fmt::Debug for MmioTransport<D>
where
    D::Queues: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("state", &self.state)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` over `mem`, interrupting through `irq` (an irqfd; none in unit tests), in
    /// the reset state.
    pub fn with_device(mem: GuestMemory, irq: Option<EventFd>, device: D) -> MmioTransport<D> {
        let mem_bytes = memory::size(&mem);
        MmioTransport {
            mem,
            mem_bytes,
            irq,
            state: TransportState::default(),
            device,
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, for host-side settings that do not touch the queues.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The phase.
    pub fn phase(&self) -> DevicePhase {
        self.state.phase()
    }

    /// Runs `f` on the device with access to its queues, then counts the rings it broke.
    pub fn with_io<R>(&mut self, f: impl FnOnce(&mut D, &mut QueueIo<'_, D::Queues>) -> R) -> R {
        let mut io = QueueIo {
            mem: &self.mem,
            mem_bytes: self.mem_bytes,
            irq: self.irq.as_ref(),
            state: &mut self.state,
            errors: 0,
        };
        let result = f(&mut self.device, &mut io);
        let errors = io.errors;
        if errors > 0 {
            self.device.record_device_errors(errors);
        }
        result
    }

    /// Persist: the driver-visible state of the device and its transport.
    pub fn save(&self) -> D::State {
        self.device.save(&self.state)
    }

    /// Persist: continue from a saved state (see each device's `restore` for what happens to
    /// host-side work in flight).
    pub fn restore(&mut self, state: &D::State) {
        self.state = D::transport_state(state).clone();
        self.with_io(|device, io| device.restore(state, io));
    }

    fn read_register(&self, offset: u64) -> u32 {
        let s = &self.state;
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => D::DEVICE_ID,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = self.device.device_features();
                match s.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected().map_or(0, |_| u32::from(QUEUE_MAX)),
            REG_QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => s.interrupt_status,
            REG_STATUS => s.status,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn selected(&self) -> Option<&QueueState> {
        self.state
            .queues
            .as_ref()
            .get(self.state.queue_sel as usize)
    }

    fn selected_mut(&mut self) -> Option<&mut QueueState> {
        let sel = self.state.queue_sel as usize;
        self.state.queues.as_mut().get_mut(sel)
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.state.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.state.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                let f = &mut self.state.driver_features;
                match self.state.driver_features_sel {
                    0 => *f = set_low(*f, value),
                    1 => *f = set_high(*f, value),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.state.queue_sel = value,
            REG_QUEUE_NUM
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                // Only while the queue is not ready (virtio 1.2 section 4.2.2.2).
                if let Some(q) = self.selected_mut()
                    && !q.ready
                {
                    configure_queue(q, offset, value);
                }
            }
            REG_QUEUE_READY => {
                let mem_bytes = self.mem_bytes;
                let Some(q) = self.selected_mut() else { return };
                if let Err(e) = set_queue_ready(q, value == 1, mem_bytes) {
                    self.with_io(|_, io| io.fail(e));
                }
            }
            REG_QUEUE_NOTIFY => {
                let index = value as usize;
                if index < self.state.queues.as_ref().len() {
                    self.with_io(|device, io| device.process(index, io));
                }
            }
            REG_INTERRUPT_ACK => self.state.interrupt_status &= !value,
            REG_STATUS if value == 0 => {
                self.state = TransportState::default();
                self.device.reset();
            }
            REG_STATUS => {
                let offered = self.device.device_features();
                self.state.status = next_status(
                    self.state.status,
                    value,
                    self.state.driver_features,
                    offered,
                );
                self.with_io(|device, io| device.on_status(io));
            }
            _ => {}
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.device.config_read(offset - REG_CONFIG + i as u64);
            }
            return;
        }
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0 // registers are 32-bit; other widths read as zero
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        // Aligned 32-bit writes below the (read-only) config space; the rest is ignored.
        if let Ok(bytes) = <[u8; 4]>::try_from(data)
            && offset < REG_CONFIG
            && offset.is_multiple_of(4)
        {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
        DeviceAction::Continue
    }
}

/// Raises the device's interrupt line (none in unit tests). A full eventfd counter still means
/// "raised", so its error is ignored.
fn raise_irq(irq: Option<&EventFd>) {
    if let Some(irq) = irq {
        let _ = irq.write(1);
    }
}

fn enter_needs_reset<Q>(state: &mut TransportState<Q>, irq: Option<&EventFd>) {
    state.status |= STATUS_NEEDS_RESET;
    state.interrupt_status |= INT_CONFIG_CHANGE;
    raise_irq(irq);
}

fn set_low(old: u64, value: u32) -> u64 {
    (old & !0xffff_ffff) | u64::from(value)
}

fn set_high(old: u64, value: u32) -> u64 {
    (old & 0xffff_ffff) | (u64::from(value) << 32)
}

/// A queue configuration write at register `offset`; the caller passes the selected queue
/// only while it is not ready.
fn configure_queue(q: &mut QueueState, offset: u64, value: u32) {
    match offset {
        REG_QUEUE_NUM => q.size = value.min(0xffff) as u16,
        REG_QUEUE_DESC_LOW => q.desc = set_low(q.desc, value),
        REG_QUEUE_DESC_HIGH => q.desc = set_high(q.desc, value),
        REG_QUEUE_DRIVER_LOW => q.avail = set_low(q.avail, value),
        REG_QUEUE_DRIVER_HIGH => q.avail = set_high(q.avail, value),
        REG_QUEUE_DEVICE_LOW => q.used = set_low(q.used, value),
        REG_QUEUE_DEVICE_HIGH => q.used = set_high(q.used, value),
        _ => {}
    }
}

/// QueueReady: 0 stops the queue; 1 starts it from index 0 if its rings fit in guest memory,
/// else the error the transport turns into NEEDS_RESET.
fn set_queue_ready(q: &mut QueueState, ready: bool, mem_bytes: u64) -> Result<(), QueueError> {
    if !ready {
        q.ready = false;
        return Ok(());
    }
    q.validate(mem_bytes)?;
    q.ready = true;
    q.next_avail = 0;
    q.next_used = 0;
    Ok(())
}

/// The status a nonzero write of `value` leaves (a write of 0 is the device's reset).
fn next_status(old: u32, value: u32, driver_features: u64, offered: u64) -> u32 {
    let mut value = value & !STATUS_NEEDS_RESET;
    // FEATURES_OK only sticks for a subset of the offered features that includes
    // VERSION_1 (a legacy-only driver cannot use these devices; section 3.1.1).
    if value & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
        let f = driver_features;
        if f & !offered != 0 || f & F_VERSION_1 == 0 {
            value &= !STATUS_FEATURES_OK;
        }
    }
    if value & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK == 0 {
        value &= !STATUS_DRIVER_OK;
    }
    value | (old & STATUS_NEEDS_RESET)
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
