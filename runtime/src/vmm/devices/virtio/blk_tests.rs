//! Unit tests of the virtio-blk device against a fake driver that lays its ring out in a small
//! guest memory, with an in-memory disk that completes at once or on demand, including hostile
//! descriptors and requests.

use super::*;
use crate::vmm::devices::bus::BusDevice;
use crate::vmm::devices::virtio::testkit::{self, Ring, SIZE};
use crate::vmm::devices::virtio::transport::DevicePhase;
use crate::vmm::devices::virtio::transport::{
    MAGIC, REG_CONFIG, REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL, REG_DEVICE_ID,
    REG_DRIVER_FEATURES, REG_MAGIC, REG_QUEUE_NOTIFY, REG_STATUS, REG_VERSION, STATUS_ACKNOWLEDGE,
    STATUS_DRIVER, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::vmm::memory;
use parking_lot::Mutex;
use std::sync::Arc;

const MEM: u64 = 8 << 20;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const BUFFERS: u64 = 0x4_0000;
const CAPACITY: u64 = 64 * SECTOR;

/// A RAM disk; with `deferred` set it queues requests until the test completes them.
#[derive(Clone, Default)]
struct RamDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    deferred: Arc<Mutex<Option<Vec<BlkRequest>>>>,
}

impl RamDisk {
    fn new() -> RamDisk {
        RamDisk {
            bytes: Arc::new(Mutex::new(vec![0; CAPACITY as usize])),
            ..RamDisk::default()
        }
    }

    fn execute(&self, op: &BlkOp) -> BlkCompletion {
        let mut disk = self.bytes.lock();
        match op {
            BlkOp::Read { offset, len } => {
                Ok(disk[*offset as usize..(offset + len) as usize].to_vec())
            }
            BlkOp::Write { offset, data } => {
                disk[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
                Ok(Vec::new())
            }
            BlkOp::Flush => Ok(Vec::new()),
        }
    }
}

impl BlockBackend for RamDisk {
    fn submit(&mut self, request: BlkRequest) -> Option<BlkCompletion> {
        if let Some(queue) = self.deferred.lock().as_mut() {
            queue.push(request);
            return None;
        }
        Some(self.execute(&request.op))
    }
}

struct Driver {
    mem: GuestMemory,
    dev: BlkDevice,
    disk: RamDisk,
    irq: EventFd,
    ring: Ring,
}

impl Driver {
    fn new() -> Driver {
        let mem = memory::create(MEM).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = BlkDevice::new(mem.clone(), Some(irq.try_clone().unwrap()));
        let disk = RamDisk::new();
        dev.set_backend(Box::new(disk.clone()), CAPACITY);
        Driver {
            ring: Ring::new(mem.clone(), (DESC, AVAIL, USED)),
            mem,
            dev,
            disk,
            irq,
        }
    }

    fn w(&mut self, offset: u64, value: u32) {
        testkit::w(&mut self.dev, offset, value);
    }

    fn r(&mut self, offset: u64) -> u32 {
        testkit::r(&mut self.dev, offset)
    }

    fn init() -> Driver {
        let mut d = Driver::new();
        assert!(testkit::negotiate(&mut d.dev, F_FLUSH as u32));
        testkit::setup_queue(&mut d.dev, 0, (DESC, AVAIL, USED));
        testkit::driver_ok(&mut d.dev);
        assert_eq!(d.dev.phase(), DevicePhase::Live);
        d
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.ring.desc(index, addr, len, flags, next);
    }

    fn offer(&mut self, head: u16) {
        self.ring.make_available(head);
        self.w(REG_QUEUE_NOTIFY, 0);
    }

    fn used_idx(&self) -> u16 {
        self.ring.used_idx()
    }

    fn used(&self, i: u16) -> (u32, u32) {
        self.ring.used(i)
    }

    /// Buffers of slot `head`: header, data (0x1000 later), status (0x3000 later).
    fn slot(head: u16) -> (u64, u64, u64) {
        let base = BUFFERS + 0x4000 * u64::from(head);
        (base, base + 0x1000, base + 0x3000)
    }

    /// Lays out a three-descriptor request at descriptors head, head+1, head+2 and offers it.
    fn request(&mut self, head: u16, kind: u32, sector: u64, data: &[u8], data_len: u32) {
        let (hdr, buf, status) = Self::slot(head);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        self.mem.write_slice(data, GuestAddress(buf)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let data_flags = if kind == T_OUT { 1 } else { 1 | 2 };
        self.desc(head, hdr, 16, 1, head + 1);
        self.desc(head + 1, buf, data_len, data_flags, head + 2);
        self.desc(head + 2, status, 1, 2, 0);
        self.offer(head);
    }

    fn status(&self, head: u16) -> u8 {
        self.mem.read_obj(GuestAddress(Self::slot(head).2)).unwrap()
    }

    fn data(&self, head: u16, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(Self::slot(head).1))
            .unwrap();
        v
    }
}

fn pattern(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect()
}

#[test]
fn registers_identify_a_version_2_block_device_with_its_capacity() {
    let mut d = Driver::new();
    assert_eq!(d.r(REG_MAGIC), MAGIC);
    assert_eq!(d.r(REG_VERSION), 2);
    assert_eq!(d.r(REG_DEVICE_ID), 2);
    d.w(REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(d.r(REG_DEVICE_FEATURES), 1);
    d.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(u64::from(d.r(REG_DEVICE_FEATURES)), F_FLUSH);
    let mut cap = [0u8; 8];
    d.dev.read(REG_CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), CAPACITY / SECTOR);
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let mut d = Driver::new();
    d.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    d.w(REG_DRIVER_FEATURES, F_FLUSH as u32);
    d.w(
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(d.r(REG_STATUS) & STATUS_FEATURES_OK, 0);
}

#[test]
fn write_then_read_round_trips_and_the_read_dirties_its_page() {
    let mut d = Driver::init();
    let data = pattern(1024, 0x5a);
    d.request(0, T_OUT, 3, &data, 1024);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used(0), (0, 1), "a write returns only the status byte");
    assert_eq!(d.status(0), S_OK);
    assert_eq!(&d.disk.bytes.lock()[3 * 512..5 * 512], &data[..]);
    assert_eq!(d.irq.read().unwrap(), 1);

    memory::take_vmm_dirty(&d.mem);
    d.request(3, T_IN, 3, &[0; 1024], 1024);
    assert_eq!(d.used(1), (3, 1025));
    assert_eq!(d.status(3), S_OK);
    assert_eq!(d.data(3, 1024), data);
    let dirty = memory::take_vmm_dirty(&d.mem);
    let page = Driver::slot(3).1 / 4096;
    assert!(
        dirty
            .ranges()
            .iter()
            .any(|r| r.first <= page && page < r.first + r.count),
        "the read's page is in the VMM dirty bitmap"
    );
    assert_eq!(d.dev.stats().reads, 1);
    assert_eq!(d.dev.stats().writes, 1);
}

#[test]
fn flush_and_get_id_complete_ok() {
    let mut d = Driver::init();
    d.request(0, T_FLUSH, 0, &[], 0);
    assert_eq!(d.status(0), S_OK);
    d.request(3, T_GET_ID, 0, &[0; 20], 20);
    assert_eq!(d.status(3), S_OK);
    assert_eq!(d.used(1), (3, 21));
    assert_eq!(&d.data(3, 20)[..DEVICE_SERIAL.len()], DEVICE_SERIAL);
    assert_eq!(d.dev.stats().flushes, 1);
}

#[test]
fn requests_beyond_capacity_or_not_whole_sectors_fail_with_ioerr() {
    let mut d = Driver::init();
    d.request(0, T_IN, 63, &[0; 1024], 1024); // one sector past the end
    assert_eq!(d.status(0), S_IOERR);
    d.request(3, T_OUT, 0, &[1; 100], 100); // not a whole sector
    assert_eq!(d.status(3), S_IOERR);
    d.request(0, T_IN, u64::MAX / 2, &[0; 512], 512); // offset overflows
    assert_eq!(d.status(0), S_IOERR);
    d.request(3, 77, 0, &[0; 512], 512);
    assert_eq!(d.status(3), S_UNSUPP);
    assert_eq!(d.dev.stats().bad_requests, 4);
    assert_eq!(d.used_idx(), 4, "every bad request is returned");
    assert!(d.disk.bytes.lock().iter().all(|&b| b == 0));
}

#[test]
fn hostile_descriptors_drop_one_chain_and_the_queue_keeps_working() {
    let mut d = Driver::init();
    // Data buffer outside RAM.
    let (hdr, _, status) = Driver::slot(0);
    d.desc(0, hdr, 16, 1, 1);
    d.desc(1, MEM - 10, 512, 3, 2);
    d.desc(2, status, 1, 2, 0);
    d.offer(0);
    assert_eq!(d.used(0), (0, 0));
    // A loop.
    d.desc(4, hdr, 16, 1, 5);
    d.desc(5, hdr, 16, 1, 4);
    d.offer(4);
    assert_eq!(d.used(1), (4, 0));
    // No writable status byte.
    d.desc(6, hdr, 16, 0, 0);
    d.offer(6);
    assert_eq!(d.used(2), (6, 0));
    // Readable after writable.
    d.desc(6, status, 1, 3, 7);
    d.desc(7, hdr, 16, 0, 0);
    d.offer(6);
    assert_eq!(d.used(3), (6, 0));
    assert_eq!(d.dev.stats().bad_chains, 4);
    // A request larger than the device takes, on a disk large enough for it: IOERR before
    // the backend sees it (no multi-megabyte allocation for a hostile length).
    d.dev.set_backend(Box::new(d.disk.clone()), 1 << 30);
    *d.disk.deferred.lock() = Some(Vec::new());
    d.desc(0, hdr, 16, 1, 1);
    d.desc(1, 0x30_0000, (MAX_REQUEST_BYTES + 512) as u32, 3, 2);
    d.desc(2, status, 1, 2, 0);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&T_IN.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    d.offer(0);
    assert_eq!(d.used_idx(), 5);
    assert_eq!(d.status(0), S_IOERR);
    assert_eq!(d.dev.stats().bad_requests, 1);
    assert!(d.disk.deferred.lock().take().unwrap().is_empty());
    d.dev.set_backend(Box::new(d.disk.clone()), CAPACITY);
    // Still working.
    d.request(0, T_OUT, 0, &pattern(512, 1), 512);
    assert_eq!(d.status(0), S_OK);
    assert_eq!(d.dev.phase(), DevicePhase::Live);
}

#[test]
fn a_broken_ring_needs_reset_until_the_driver_resets() {
    let mut d = Driver::init();
    d.ring.make_available(SIZE + 3);
    d.w(REG_QUEUE_NOTIFY, 0);
    assert_eq!(d.dev.phase(), DevicePhase::NeedsReset);
    assert_ne!(d.r(REG_STATUS) & STATUS_NEEDS_RESET, 0);
    assert_eq!(d.dev.stats().device_errors, 1);
    d.w(REG_STATUS, 0);
    assert_eq!(d.dev.phase(), DevicePhase::Reset);
}

#[test]
fn deferred_completions_may_arrive_out_of_order() {
    let mut d = Driver::init();
    *d.disk.deferred.lock() = Some(Vec::new());
    d.request(0, T_OUT, 0, &pattern(512, 1), 512);
    d.request(3, T_OUT, 1, &pattern(512, 2), 512);
    assert_eq!(d.used_idx(), 0);
    assert_eq!(d.dev.inflight(), 2);
    let reqs = d.disk.deferred.lock().take().unwrap();
    d.dev.complete(reqs[1].id, d.disk.execute(&reqs[1].op));
    assert_eq!(d.used(0), (3, 1));
    d.dev
        .complete(reqs[0].id, Err(BlkIoError("injected".into())));
    assert_eq!(d.used(1), (0, 1));
    assert_eq!(d.status(0), S_IOERR);
    assert_eq!(d.dev.stats().io_errors, 1);
    d.dev.complete(reqs[0].id, Ok(Vec::new()));
    assert_eq!(d.dev.stats().stale_completions, 1);
    assert_eq!(d.used_idx(), 2);
}

#[test]
fn a_read_completion_of_the_wrong_length_is_an_ioerr() {
    let mut d = Driver::init();
    *d.disk.deferred.lock() = Some(Vec::new());
    d.request(0, T_IN, 0, &[0; 512], 512);
    let reqs = d.disk.deferred.lock().take().unwrap();
    d.dev.complete(reqs[0].id, Ok(vec![1; 10]));
    assert_eq!(d.status(0), S_IOERR);
}

#[test]
fn restored_state_resubmits_requests_that_were_in_flight() {
    let mut d = Driver::init();
    *d.disk.deferred.lock() = Some(Vec::new());
    let data = pattern(512, 9);
    d.request(0, T_OUT, 5, &data, 512);
    let saved = d.dev.save();
    assert_eq!(saved.inflight.len(), 1);

    // A copy of the guest on a new device and disk (as a checkpoint's target).
    let mem2 = memory::create(MEM).unwrap();
    let pages = memory::read_pages(&d.mem, memory::DirtyPages::all(&d.mem).ranges()).unwrap();
    memory::write_pages(&mem2, memory::DirtyPages::all(&mem2).ranges(), &pages).unwrap();
    let disk2 = RamDisk::new();
    let mut dev2 = BlkDevice::new(mem2.clone(), None);
    dev2.set_backend(Box::new(disk2.clone()), CAPACITY);
    dev2.restore(&saved);
    assert_eq!(dev2.inflight(), 0, "resubmitted and completed at once");
    assert_eq!(&disk2.bytes.lock()[5 * 512..6 * 512], &data[..]);
    let used: u16 = mem2.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used, 1);
    let status: u8 = mem2.read_obj(GuestAddress(Driver::slot(0).2)).unwrap();
    assert_eq!(status, S_OK);
}

#[test]
fn reset_forgets_inflight_requests() {
    let mut d = Driver::init();
    *d.disk.deferred.lock() = Some(Vec::new());
    d.request(0, T_IN, 0, &[0; 512], 512);
    d.w(REG_STATUS, 0);
    assert_eq!(d.dev.inflight(), 0);
    let reqs = d.disk.deferred.lock().take().unwrap();
    d.dev.complete(reqs[0].id, Ok(vec![0; 512]));
    assert_eq!(d.dev.stats().stale_completions, 1);
    assert_eq!(d.dev.capacity(), CAPACITY);
}

#[test]
fn a_read_only_disk_offers_ro_and_refuses_writes_across_reset_and_restore() {
    let mut d = Driver::new();
    d.dev.set_read_only(true);
    d.disk.bytes.lock()[..512].copy_from_slice(&pattern(512, 0x33));
    d.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(u64::from(d.r(REG_DEVICE_FEATURES)), F_FLUSH | F_RO);
    // A driver may accept RO (Linux does): FEATURES_OK sticks.
    assert!(testkit::negotiate(&mut d.dev, (F_FLUSH | F_RO) as u32));
    testkit::setup_queue(&mut d.dev, 0, (DESC, AVAIL, USED));
    testkit::driver_ok(&mut d.dev);
    d.request(0, T_OUT, 0, &[9; 512], 512);
    assert_eq!(d.status(0), S_IOERR);
    assert_eq!(
        &d.disk.bytes.lock()[..512],
        &pattern(512, 0x33)[..],
        "the write never reached the disk"
    );
    d.request(3, T_IN, 0, &[0; 512], 512);
    assert_eq!(d.status(3), S_OK);
    assert_eq!(d.data(3, 512), pattern(512, 0x33));
    // The mode is device state: kept by a driver reset and carried by save/restore.
    d.w(REG_STATUS, 0);
    d.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(u64::from(d.r(REG_DEVICE_FEATURES)) & F_RO, F_RO);
    let saved = d.dev.save();
    assert!(saved.read_only);
    let mut other = Driver::new();
    other.dev.restore(&saved);
    other.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(u64::from(other.r(REG_DEVICE_FEATURES)) & F_RO, F_RO);
}
