//! A polling virtio-net driver for ring 3 (virtio-mmio version 2, split queues) and its
//! smoltcp `Device`.
//!
//! Exits cost 12-35 µs under kvm_pvm (pvm-guest-spike.md), so the driver reads the used
//! rings from memory (no exit) and touches the MMIO window only to notify: once per sent
//! frame (TX) and once per poll that re-posted receive buffers (RX). TX buffers ask for no
//! interrupt (`VIRTQ_AVAIL_F_NO_INTERRUPT`); RX interrupts only wake a halted vCPU.
//! Invariant: a descriptor is owned either by the driver (free list / being filled) or by
//! the device (between publication in the available ring and its appearance in the used
//! ring), never both; ring memory is identity mapped, so guest-virtual = guest-physical.

use crate::abi::VIRTIO_NET_BASE;
use crate::virtio_mmio::{HandshakeError, Mmio, REG_INTERRUPT_ACK, REG_QUEUE_NOTIFY, page_alloc};
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

const F_MAC_LOW: u32 = 1 << 5;
/// The network device's window.
/// Window of network device `index`: the first at `VIRTIO_NET_BASE`, the others after the
/// four block devices' windows (mirrors `layout::virtio_net_window`).
pub fn window(index: u64) -> u64 {
    match index {
        0 => VIRTIO_NET_BASE,
        i => VIRTIO_NET_BASE + (1 + 4 + i - 1) * 0x1000,
    }
}

const QSIZE: u16 = 32;
const BUF_LEN: usize = 2048;
const HDR_LEN: usize = 12;
const RX: u32 = 0;
const TX: u32 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Why the device could not be brought up.
#[derive(Debug)]
pub enum InitError {
    /// Nothing (or not a version 2 net device) at the address.
    NoDevice,
    /// The device refused the features (FEATURES_OK did not stick).
    FeaturesRefused,
    /// A queue is smaller than the driver's.
    QueueTooSmall(#[allow(dead_code)] u32),
}

/// One split queue with its buffers: descriptor i always points at buffer i.
struct Queue {
    /// Descriptor table (16 * QSIZE), available ring at +512, used ring at +1024.
    rings: *mut u8,
    bufs: *mut u8,
    /// Driver's next available index.
    avail_idx: u16,
    /// Next used index the driver will read.
    last_used: u16,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            rings: page_alloc(4096),
            bufs: page_alloc(BUF_LEN * usize::from(QSIZE)),
            avail_idx: 0,
            last_used: 0,
        }
    }

    fn desc_addr(&self) -> u64 {
        self.rings as u64
    }
    fn avail_addr(&self) -> u64 {
        self.rings as u64 + 512
    }
    fn used_addr(&self) -> u64 {
        self.rings as u64 + 1024
    }

    fn buf(&self, id: u16) -> *mut u8 {
        // SAFETY: id < QSIZE, inside the buffer allocation.
        unsafe { self.bufs.add(usize::from(id) * BUF_LEN) }
    }

    fn set_desc(&mut self, id: u16, len: u32, flags: u16) {
        let d = self.desc_addr() + 16 * u64::from(id);
        // SAFETY: descriptor `id` lies inside the ring page this queue owns.
        unsafe {
            core::ptr::write_volatile(d as *mut u64, self.buf(id) as u64);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
            core::ptr::write_volatile((d + 12) as *mut u16, flags);
            core::ptr::write_volatile((d + 14) as *mut u16, 0);
        }
    }

    fn set_avail_flags(&mut self, flags: u16) {
        // SAFETY: the available ring's flags word, inside the ring page.
        unsafe { core::ptr::write_volatile(self.avail_addr() as *mut u16, flags) }
    }

    /// Publishes descriptor `id` in the available ring.
    fn publish(&mut self, id: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        // SAFETY: the ring entry and index lie inside the ring page.
        unsafe {
            core::ptr::write_volatile((self.avail_addr() + 4 + 2 * slot) as *mut u16, id);
            // The device must see the entry (and the buffer) before the index.
            fence(Ordering::Release);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            core::ptr::write_volatile((self.avail_addr() + 2) as *mut u16, self.avail_idx);
        }
    }

    /// The next (id, len) the device returned, if any.
    fn take_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: the used ring lies inside the ring page; the device writes it.
        unsafe {
            let idx = core::ptr::read_volatile((self.used_addr() + 2) as *const u16);
            if idx == self.last_used {
                return None;
            }
            fence(Ordering::Acquire);
            let elem = self.used_addr() + 4 + 8 * u64::from(self.last_used % QSIZE);
            let id = core::ptr::read_volatile(elem as *const u32);
            let len = core::ptr::read_volatile((elem + 4) as *const u32);
            self.last_used = self.last_used.wrapping_add(1);
            Some(((id as u16) % QSIZE, len))
        }
    }

    fn has_used(&self) -> bool {
        // SAFETY: as in `take_used`.
        let idx = unsafe { core::ptr::read_volatile((self.used_addr() + 2) as *const u16) };
        idx != self.last_used
    }
}

/// The device, initialized.
pub struct VirtioNet {
    /// The device's window.
    mmio: Mmio,
    rx: Queue,
    tx: Queue,
    tx_free: Vec<u16>,
    rx_reposted: bool,
    mac: [u8; 6],
}

impl VirtioNet {
    /// Runs the virtio initialization (virtio 1.2 section 3.1.1) and posts every RX buffer.
    pub fn init(index: u64) -> Result<VirtioNet, InitError> {
        let mmio = Mmio::new(window(index));
        mmio.handshake(1, F_MAC_LOW).map_err(|e| match e {
            HandshakeError::NoDevice => InitError::NoDevice,
            HandshakeError::FeaturesRefused => InitError::FeaturesRefused,
        })?;
        let mut dev = VirtioNet {
            mmio,
            rx: Queue::new(),
            tx: Queue::new(),
            tx_free: (0..QSIZE).rev().collect(),
            rx_reposted: false,
            mac: [0; 6],
        };
        for (index, q) in [(RX, &dev.rx), (TX, &dev.tx)] {
            let max = mmio.select_queue(index);
            if max < u32::from(QSIZE) {
                return Err(InitError::QueueTooSmall(max));
            }
            mmio.setup_queue(QSIZE, q.desc_addr());
        }
        for (i, b) in dev.mac.iter_mut().enumerate() {
            *b = mmio.config_byte(i as u64);
        }
        dev.tx.set_avail_flags(AVAIL_F_NO_INTERRUPT);
        for id in 0..QSIZE {
            dev.rx.set_desc(id, BUF_LEN as u32, DESC_F_WRITE);
            dev.rx.publish(id);
        }
        mmio.driver_ok();
        mmio.write(REG_QUEUE_NOTIFY, RX);
        Ok(dev)
    }

    /// The MAC from config space.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether a received frame waits (a memory read, no exit).
    pub fn rx_pending(&self) -> bool {
        self.rx.has_used()
    }

    /// Tells the device about re-posted RX buffers (one exit), if any, and acknowledges the
    /// interrupt status so the VMM's edge-triggered line is raised for the next frame.
    pub fn flush(&mut self) {
        if self.rx_reposted {
            self.rx_reposted = false;
            self.mmio.write(REG_INTERRUPT_ACK, 3);
            self.mmio.write(REG_QUEUE_NOTIFY, RX);
        }
    }

    fn reclaim_tx(&mut self) {
        while let Some((id, _)) = self.tx.take_used() {
            self.tx_free.push(id);
        }
    }
}

/// A received frame, copied out of its buffer (the buffer is re-posted at once).
pub struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

/// The right to send one frame.
pub struct TxToken<'a>(&'a mut VirtioNet);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let dev = self.0;
        let id = dev
            .tx_free
            .pop()
            .expect("transmit() checked a free descriptor");
        let len = len.min(BUF_LEN - HDR_LEN);
        // SAFETY: buffer `id` is owned by the driver (on the free list until now) and is
        // BUF_LEN bytes long.
        let buf = unsafe { core::slice::from_raw_parts_mut(dev.tx.buf(id), BUF_LEN) };
        buf[..HDR_LEN].fill(0);
        let result = f(&mut buf[HDR_LEN..HDR_LEN + len]);
        dev.tx.set_desc(id, (HDR_LEN + len) as u32, 0);
        dev.tx.publish(id);
        dev.mmio.write(REG_QUEUE_NOTIFY, TX);
        result
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        self.reclaim_tx();
        if self.tx_free.is_empty() {
            return None;
        }
        let (id, len) = self.rx.take_used()?;
        let len = (len as usize).clamp(HDR_LEN, BUF_LEN);
        // SAFETY: the device returned buffer `id` (now the driver's); len is clamped to it.
        let frame =
            unsafe { core::slice::from_raw_parts(self.rx.buf(id).add(HDR_LEN), len - HDR_LEN) };
        let frame = frame.to_vec();
        self.rx.publish(id);
        self.rx_reposted = true;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.reclaim_tx();
        if self.tx_free.is_empty() {
            None
        } else {
            Some(TxToken(self))
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(usize::from(QSIZE));
        caps
    }
}
