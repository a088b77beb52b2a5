//! Test-only pieces of a fake virtio-mmio driver shared by the device unit tests
//! (`blk_tests`, `net_tests`): register access, the virtio 1.2 section 3.1.1 initialization
//! steps, and split rings the fake lays out straight in guest memory.
//!
//! Invariant: the fake writes rings exactly as a guest would (descriptor table, available
//! ring index after the entry, used ring read back), so the device under test sees nothing a
//! real driver could not produce unless a test writes it on purpose.

use super::transport::{
    REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL, REG_QUEUE_DESC_HIGH, REG_QUEUE_DESC_LOW,
    REG_QUEUE_DEVICE_HIGH, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DRIVER_HIGH, REG_QUEUE_DRIVER_LOW,
    REG_QUEUE_NUM, REG_QUEUE_READY, REG_QUEUE_SEL, REG_STATUS, STATUS_ACKNOWLEDGE, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use crate::vmm::devices::bus::BusDevice;
use crate::vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// Queue size every test ring uses.
pub(super) const SIZE: u16 = 8;

/// Writes a 32-bit register.
pub(super) fn w(dev: &mut impl BusDevice, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

/// Reads a 32-bit register.
pub(super) fn r(dev: &mut impl BusDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Feature negotiation with VERSION_1 (bit 32) and `features_low`; returns whether the
/// device kept FEATURES_OK set (virtio 1.2 section 3.1.1 step 6).
pub(super) fn negotiate(dev: &mut impl BusDevice, features_low: u32) -> bool {
    w(dev, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(dev, REG_DRIVER_FEATURES_SEL, 1);
    w(dev, REG_DRIVER_FEATURES, 1);
    w(dev, REG_DRIVER_FEATURES_SEL, 0);
    w(dev, REG_DRIVER_FEATURES, features_low);
    w(
        dev,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    r(dev, REG_STATUS) & STATUS_FEATURES_OK != 0
}

/// Sets DRIVER_OK after negotiation and queue setup.
pub(super) fn driver_ok(dev: &mut impl BusDevice) {
    w(
        dev,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
}

/// Where one queue's three parts live: (descriptor table, available ring, used ring).
pub(super) type RingAddrs = (u64, u64, u64);

/// Programs queue `q` at `addrs` with [`SIZE`] entries and marks it ready.
pub(super) fn setup_queue(dev: &mut impl BusDevice, q: u32, (desc, avail, used): RingAddrs) {
    w(dev, REG_QUEUE_SEL, q);
    w(dev, REG_QUEUE_NUM, u32::from(SIZE));
    w(dev, REG_QUEUE_DESC_LOW, desc as u32);
    w(dev, REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
    w(dev, REG_QUEUE_DRIVER_LOW, avail as u32);
    w(dev, REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
    w(dev, REG_QUEUE_DEVICE_LOW, used as u32);
    w(dev, REG_QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    w(dev, REG_QUEUE_READY, 1);
}

/// The driver's side of a split ring in guest memory.
pub(super) struct Ring {
    mem: GuestMemory,
    addrs: RingAddrs,
    avail_idx: u16,
}

impl Ring {
    pub(super) fn new(mem: GuestMemory, addrs: RingAddrs) -> Ring {
        Ring {
            mem,
            addrs,
            avail_idx: 0,
        }
    }

    /// Goes on with the same ring in `mem`, a copy of the memory it was in (as a restored
    /// VM's would be); the driver's available index carries over.
    pub(super) fn move_to(&mut self, mem: GuestMemory) {
        self.mem = mem;
    }

    /// Writes descriptor `index` (virtio 1.2 section 2.7.5 layout).
    pub(super) fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.addrs.0 + 16 * u64::from(index);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Puts chain `head` in the available ring, then publishes the new index (the caller
    /// notifies the device).
    pub(super) fn make_available(&mut self, head: u16) {
        let avail = self.addrs.1;
        let slot = u64::from(self.avail_idx % SIZE);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(avail + 2))
            .unwrap();
    }

    /// The device's used index.
    pub(super) fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.addrs.2 + 2)).unwrap()
    }

    /// (head, len) of used element `i`.
    pub(super) fn used(&self, i: u16) -> (u32, u32) {
        let at = self.addrs.2 + 4 + 8 * u64::from(i % SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}
