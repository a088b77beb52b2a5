//! A polling virtio-blk driver for ring 3 (virtio-mmio version 2, one split queue), one request
//! at a time: header, data and status in three descriptors, one notify, then the driver spins
//! on the used ring (no interrupt: `VIRTQ_AVAIL_F_NO_INTERRUPT`).
//!
//! Invariant: the three descriptors and the request buffers belong to the device from the
//! publication of the request until its used entry appears, and the driver touches them only
//! after that; ring memory is identity mapped, so guest-virtual = guest-physical.

use crate::abi::VIRTIO_BLK_BASE;
use crate::virtio_mmio::{HandshakeError, Mmio, REG_CONFIG, REG_QUEUE_NOTIFY, page_alloc};
use core::sync::atomic::{Ordering, fence};

const F_FLUSH_LOW: u32 = 1 << 9;
/// Size of one virtio-mmio window: block device `i` sits `i` windows after the first.
const WINDOW: u64 = 0x1000;

const QSIZE: u16 = 4;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// Bytes per sector.
pub const SECTOR: usize = 512;
/// The largest transfer of one request (the data page).
pub const MAX_BYTES: usize = 4096;

/// Why the device could not be brought up or a request failed.
#[derive(Debug)]
pub enum BlkError {
    /// Nothing (or not a version 2 block device) at the address.
    NoDevice,
    /// The device refused the features.
    FeaturesRefused,
    /// The device returned a status other than OK.
    Status(#[allow(dead_code)] u8),
}

/// The device, initialized.
pub struct VirtioBlk {
    /// The device's window.
    mmio: Mmio,
    /// Descriptor table at +0, available ring at +512, used ring at +1024; the request
    /// header at +2048 and the status byte at +2064.
    ring: *mut u8,
    /// The data page.
    data: *mut u8,
    avail_idx: u16,
    capacity: u64,
}

impl VirtioBlk {
    /// Runs the virtio initialization (virtio 1.2 section 3.1.1) of block device `index` (the
    /// VMM places device `i` at `VIRTIO_BLK_BASE + i * 4 KiB`).
    pub fn init(index: u64) -> Result<VirtioBlk, BlkError> {
        let mmio = Mmio::new(VIRTIO_BLK_BASE + index * WINDOW);
        mmio.handshake(2, F_FLUSH_LOW).map_err(|e| match e {
            HandshakeError::NoDevice => BlkError::NoDevice,
            HandshakeError::FeaturesRefused => BlkError::FeaturesRefused,
        })?;
        if mmio.select_queue(0) < u32::from(QSIZE) {
            return Err(BlkError::NoDevice);
        }
        let ring = page_alloc(4096);
        let data = page_alloc(MAX_BYTES);
        mmio.setup_queue(QSIZE, ring as u64);
        // SAFETY: the available ring's flags word lies inside the ring page.
        unsafe { core::ptr::write_volatile((ring as u64 + 512) as *mut u16, AVAIL_F_NO_INTERRUPT) };
        let capacity =
            u64::from(mmio.read(REG_CONFIG)) | (u64::from(mmio.read(REG_CONFIG + 4)) << 32);
        mmio.driver_ok();
        Ok(VirtioBlk {
            mmio,
            ring,
            data,
            avail_idx: 0,
            capacity,
        })
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn desc(&self, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.ring as u64 + 16 * u64::from(id);
        // SAFETY: descriptor `id` < QSIZE lies inside the ring page.
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
            core::ptr::write_volatile((d + 12) as *mut u16, flags);
            core::ptr::write_volatile((d + 14) as *mut u16, next);
        }
    }

    /// Runs one request and waits for it.
    fn request(&mut self, kind: u32, sector: u64, len: usize) -> Result<(), BlkError> {
        let base = self.ring as u64;
        let (header, status) = (base + 2048, base + 2064);
        // SAFETY: header and status lie inside the ring page, owned by the driver now.
        unsafe {
            core::ptr::write_volatile(header as *mut u32, kind);
            core::ptr::write_volatile((header + 4) as *mut u32, 0);
            core::ptr::write_volatile((header + 8) as *mut u64, sector);
            core::ptr::write_volatile(status as *mut u8, 0xff);
        }
        // header (0) -> data (1, absent for a flush) -> status (2)
        if len > 0 {
            let flags = if kind == T_IN { DESC_F_WRITE } else { 0 };
            self.desc(0, header, 16, DESC_F_NEXT, 1);
            self.desc(1, self.data as u64, len as u32, flags | DESC_F_NEXT, 2);
        } else {
            self.desc(0, header, 16, DESC_F_NEXT, 2);
        }
        self.desc(2, status, 1, DESC_F_WRITE, 0);
        let avail = base + 512;
        let used = base + 1024;
        // SAFETY: ring entries and indices lie inside the ring page.
        unsafe {
            let slot = u64::from(self.avail_idx % QSIZE);
            core::ptr::write_volatile((avail + 4 + 2 * slot) as *mut u16, 0);
            fence(Ordering::Release);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            core::ptr::write_volatile((avail + 2) as *mut u16, self.avail_idx);
        }
        self.mmio.write(REG_QUEUE_NOTIFY, 0);
        // SAFETY: the used index lies inside the ring page; the device writes it.
        while unsafe { core::ptr::read_volatile((used + 2) as *const u16) } != self.avail_idx {
            core::hint::spin_loop();
        }
        fence(Ordering::Acquire);
        // SAFETY: the device returned the chain: the status byte is the driver's again.
        match unsafe { core::ptr::read_volatile(status as *const u8) } {
            0 => Ok(()),
            s => Err(BlkError::Status(s)),
        }
    }

    /// Writes `bytes` (whole sectors, at most [`MAX_BYTES`]) at `sector`.
    pub fn write(&mut self, sector: u64, bytes: &[u8]) -> Result<(), BlkError> {
        assert!(bytes.len() <= MAX_BYTES && bytes.len() % SECTOR == 0);
        // SAFETY: the data page holds MAX_BYTES and is the driver's between requests.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data, bytes.len()) };
        self.request(T_OUT, sector, bytes.len())
    }

    /// Reads `buf.len()` bytes (whole sectors, at most [`MAX_BYTES`]) at `sector`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        assert!(buf.len() <= MAX_BYTES && buf.len() % SECTOR == 0);
        self.request(T_IN, sector, buf.len())?;
        // SAFETY: as in `write`; the device filled the page.
        unsafe { core::ptr::copy_nonoverlapping(self.data, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.request(T_FLUSH, 0, 0)
    }
}
