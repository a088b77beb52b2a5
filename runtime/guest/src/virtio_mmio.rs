//! The driver side of the virtio-mmio transport (version 2, virtio 1.2 section 4.2.2) shared
//! by the guest's polling virtio-blk and virtio-net drivers: register access to one device's
//! window, the initialization handshake up to FEATURES_OK (section 3.1.1), queue setup and
//! page-aligned ring memory.
//!
//! Invariant: every access is a 32-bit volatile load or store to the device's identity-mapped
//! MMIO window (an exit to the VMM, never a memory access), in the order the drivers always
//! used, so a device sees the same register sequence from either driver.

use alloc::alloc::{Layout, alloc_zeroed};

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC: u64 = 0x080;
pub const REG_QUEUE_DRIVER: u64 = 0x090;
pub const REG_QUEUE_DEVICE: u64 = 0x0a0;
pub const REG_CONFIG: u64 = 0x100;

pub const STATUS_ACK: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
const F_VERSION_1_HIGH: u32 = 1; // bit 32

/// Why the handshake stopped.
#[derive(Debug)]
pub enum HandshakeError {
    /// Nothing (or not a version 2 device of the wanted type) at the address.
    NoDevice,
    /// The device refused the features (FEATURES_OK did not stick).
    FeaturesRefused,
}

/// One device's MMIO window.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The window at `base` (identity mapped with the U bit, no memslot behind it).
    pub const fn new(base: u64) -> Mmio {
        Mmio { base }
    }

    pub fn read(self, offset: u64) -> u32 {
        // SAFETY: the virtio-mmio window is identity mapped with the U bit and has no memslot:
        // the load exits to the VMM's device and touches no memory.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    pub fn write(self, offset: u64, value: u32) {
        // SAFETY: as in `read`; the store exits to the VMM.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// A 64-bit address register pair, low word first.
    pub fn write64(self, offset: u64, value: u64) {
        self.write(offset, value as u32);
        self.write(offset + 4, (value >> 32) as u32);
    }

    /// One byte of config space.
    pub fn config_byte(self, at: u64) -> u8 {
        // SAFETY: config space byte of the MMIO window (an exit, no memory access).
        unsafe { core::ptr::read_volatile((self.base + REG_CONFIG + at) as *const u8) }
    }

    /// Section 3.1.1 steps 1-6: checks magic, version 2 and `device_id`, resets, then
    /// offers `features_low` with VERSION_1 and confirms FEATURES_OK stuck.
    pub fn handshake(self, device_id: u32, features_low: u32) -> Result<(), HandshakeError> {
        if self.read(REG_MAGIC) != 0x7472_6976 || self.read(REG_VERSION) != 2 {
            return Err(HandshakeError::NoDevice);
        }
        if self.read(REG_DEVICE_ID) != device_id {
            return Err(HandshakeError::NoDevice);
        }
        self.write(REG_STATUS, 0);
        self.write(REG_STATUS, STATUS_ACK | STATUS_DRIVER);
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, features_low);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, F_VERSION_1_HIGH);
        self.write(REG_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        if self.read(REG_STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(HandshakeError::FeaturesRefused);
        }
        Ok(())
    }

    /// Selects queue `index` and returns its QueueNumMax.
    pub fn select_queue(self, index: u32) -> u32 {
        self.write(REG_QUEUE_SEL, index);
        self.read(REG_QUEUE_NUM_MAX)
    }

    /// Programs the selected queue: `size` entries, its descriptor table at `rings`, the
    /// available ring at +512 and the used ring at +1024 (one page), then QueueReady.
    pub fn setup_queue(self, size: u16, rings: u64) {
        self.write(REG_QUEUE_NUM, u32::from(size));
        self.write64(REG_QUEUE_DESC, rings);
        self.write64(REG_QUEUE_DRIVER, rings + 512);
        self.write64(REG_QUEUE_DEVICE, rings + 1024);
        self.write(REG_QUEUE_READY, 1);
    }

    /// Section 3.1.1 step 8: the driver is ready.
    pub fn driver_ok(self) {
        self.write(
            REG_STATUS,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }
}

/// Zeroed, page-aligned memory that lives as long as the guest (never freed).
pub fn page_alloc(bytes: usize) -> *mut u8 {
    let layout = Layout::from_size_align(bytes, 4096).expect("valid layout");
    // SAFETY: a non-zero size; the memory lives as long as the guest (never freed).
    let p = unsafe { alloc_zeroed(layout) };
    assert!(!p.is_null(), "out of guest heap for the virtio rings");
    p
}
