//! Unit tests of the virtio-net device against a fake driver that lays its rings out in a
//! small guest memory, including hostile descriptors and rings.

use super::*;
use crate::vmm::devices::bus::BusDevice;
use crate::vmm::devices::virtio::queue::QUEUE_MAX;
use crate::vmm::devices::virtio::testkit::{self, Ring, SIZE};
use crate::vmm::devices::virtio::transport::*;
use crate::vmm::memory;
use parking_lot::Mutex;
use std::sync::Arc;

const MEM: u64 = 1 << 20;
/// (descriptor table, available ring, used ring) per queue.
const RINGS: [(u64, u64, u64); 2] = [
    (0x1_0000, 0x1_1000, 0x1_2000),
    (0x2_0000, 0x2_1000, 0x2_2000),
];
const BUFFERS: u64 = 0x4_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xc0, 0x10, 0x01];

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Vec<u8>>>>);

impl FrameSink for Collect {
    fn send_frame(&mut self, frame: &[u8]) {
        self.0.lock().push(frame.to_vec());
    }
}

/// A driver that writes its rings straight into guest memory.
struct Driver {
    mem: GuestMemory,
    dev: NetDevice,
    sent: Collect,
    irq: EventFd,
    rings: [Ring; 2],
}

impl Driver {
    fn new() -> Driver {
        let mem = memory::create(MEM).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = NetDevice::new(mem.clone(), MAC, Some(irq.try_clone().unwrap()));
        let sent = Collect::default();
        dev.set_sink(Box::new(sent.clone()));
        Driver {
            rings: RINGS.map(|addrs| Ring::new(mem.clone(), addrs)),
            mem,
            dev,
            sent,
            irq,
        }
    }

    fn w(&mut self, offset: u64, value: u32) {
        testkit::w(&mut self.dev, offset, value);
    }

    fn r(&mut self, offset: u64) -> u32 {
        testkit::r(&mut self.dev, offset)
    }

    /// Virtio 1.2 section 3.1.1 initialization, both queues at `RINGS`.
    fn init() -> Driver {
        let mut d = Driver::new();
        assert!(testkit::negotiate(&mut d.dev, F_MAC as u32));
        for (q, addrs) in RINGS.iter().enumerate() {
            testkit::setup_queue(&mut d.dev, q as u32, *addrs);
        }
        testkit::driver_ok(&mut d.dev);
        assert_eq!(d.dev.phase(), DevicePhase::Live);
        d
    }

    fn desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.rings[q].desc(index, addr, len, flags, next);
    }

    /// Makes chain `head` available and notifies the queue.
    fn offer(&mut self, q: usize, head: u16) {
        self.rings[q].make_available(head);
        self.w(REG_QUEUE_NOTIFY, q as u32);
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.rings[q].used_idx()
    }

    /// (head, len) of used element `i`.
    fn used(&self, q: usize, i: u16) -> (u32, u32) {
        self.rings[q].used(i)
    }

    /// Queues one frame on TX as header + payload in two descriptors.
    fn transmit(&mut self, head: u16, frame: &[u8]) {
        let hdr = BUFFERS + 0x1000 * u64::from(head);
        self.mem
            .write_slice(&[0u8; NET_HDR_LEN], GuestAddress(hdr))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(hdr + 0x100))
            .unwrap();
        self.desc(TX, head, hdr, NET_HDR_LEN as u32, 1, head + 1);
        self.desc(TX, head + 1, hdr + 0x100, frame.len() as u32, 0, 0);
        self.offer(TX, head);
    }

    /// Posts one writable RX buffer of `len` bytes as descriptor `head`.
    fn post_rx(&mut self, head: u16, len: u32) -> u64 {
        let addr = BUFFERS + 0x8_0000 + 0x1000 * u64::from(head);
        self.desc(RX, head, addr, len, 2, 0);
        self.offer(RX, head);
        addr
    }
}

fn frame(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

#[test]
fn registers_identify_a_version_2_net_device_with_its_mac() {
    let mut d = Driver::new();
    assert_eq!(d.r(REG_MAGIC), MAGIC);
    assert_eq!(d.r(REG_VERSION), 2);
    assert_eq!(d.r(REG_DEVICE_ID), 1);
    d.w(REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(d.r(REG_DEVICE_FEATURES), F_MAC as u32);
    d.w(REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(d.r(REG_DEVICE_FEATURES), 1);
    d.w(REG_QUEUE_SEL, 1);
    assert_eq!(d.r(REG_QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
    d.w(REG_QUEUE_SEL, 2);
    assert_eq!(d.r(REG_QUEUE_NUM_MAX), 0, "only two queues exist");
    let mut mac = [0u8; 6];
    d.dev.read(REG_CONFIG, &mut mac);
    assert_eq!(mac, MAC);
}

#[test]
fn features_ok_is_refused_without_version_1_or_with_unoffered_bits() {
    let mut d = Driver::new();
    d.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    d.w(REG_DRIVER_FEATURES, F_MAC as u32);
    d.w(
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(
        d.r(REG_STATUS) & STATUS_FEATURES_OK,
        0,
        "legacy driver refused"
    );
    d.w(REG_STATUS, 0);
    d.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    d.w(REG_DRIVER_FEATURES_SEL, 1);
    d.w(REG_DRIVER_FEATURES, 1);
    d.w(REG_DRIVER_FEATURES_SEL, 0);
    d.w(REG_DRIVER_FEATURES, (F_MAC | 1 << 15) as u32); // MRG_RXBUF is not offered
    d.w(
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(d.r(REG_STATUS) & STATUS_FEATURES_OK, 0);
    d.w(REG_STATUS, 0xf);
    assert_eq!(
        d.dev.phase(),
        DevicePhase::Reset,
        "DRIVER_OK needs FEATURES_OK"
    );
}

#[test]
fn transmitted_frame_reaches_the_sink_without_the_virtio_header() {
    let mut d = Driver::init();
    let f = frame(60, 7);
    d.transmit(0, &f);
    assert_eq!(*d.sent.0.lock(), vec![f.clone()]);
    assert_eq!(d.used_idx(TX), 1);
    assert_eq!(d.used(TX, 0), (0, 0));
    assert_eq!(d.irq.read().unwrap(), 1, "a used TX buffer interrupts");
    assert_ne!(d.r(REG_INTERRUPT_STATUS) & INT_USED_BUFFER, 0);
    d.w(REG_INTERRUPT_ACK, INT_USED_BUFFER);
    assert_eq!(d.r(REG_INTERRUPT_STATUS), 0);
    assert_eq!(d.dev.stats().tx_frames, 1);
    assert_eq!(d.dev.stats().tx_bytes, 60);
}

#[test]
fn delivered_frame_waits_for_a_buffer_then_lands_with_a_header_and_dirties_its_page() {
    let mut d = Driver::init();
    memory::take_vmm_dirty(&d.mem);
    let f = frame(100, 3);
    d.dev.deliver(&f);
    assert_eq!(d.used_idx(RX), 0, "no buffer posted yet");
    let addr = d.post_rx(0, 2048);
    assert_eq!(d.used_idx(RX), 1);
    assert_eq!(d.used(RX, 0), (0, (NET_HDR_LEN + 100) as u32));
    let mut got = vec![0u8; NET_HDR_LEN + 100];
    d.mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
    assert_eq!(got[10], 1, "num_buffers = 1");
    assert_eq!(&got[NET_HDR_LEN..], &f[..]);
    let dirty = memory::take_vmm_dirty(&d.mem);
    let page = addr / 4096;
    assert!(
        dirty
            .ranges()
            .iter()
            .any(|r| r.first <= page && page < r.first + r.count),
        "the RX write is in the VMM's dirty bitmap: {:?}",
        dirty.ranges()
    );
    assert_eq!(d.dev.stats().rx_frames, 1);
}

#[test]
fn a_frame_spanning_two_rx_descriptors_is_split_across_them() {
    let mut d = Driver::init();
    let a = BUFFERS + 0x9_0000;
    let b = BUFFERS + 0x9_8000;
    d.desc(RX, 3, a, 40, 2 | 1, 4);
    d.desc(RX, 4, b, 2000, 2, 0);
    d.offer(RX, 3);
    let f = frame(200, 9);
    d.dev.deliver(&f);
    let mut first = vec![0u8; 40];
    let mut rest = vec![0u8; NET_HDR_LEN + 200 - 40];
    d.mem.read_slice(&mut first, GuestAddress(a)).unwrap();
    d.mem.read_slice(&mut rest, GuestAddress(b)).unwrap();
    first.extend(rest);
    assert_eq!(&first[NET_HDR_LEN..], &f[..]);
    assert_eq!(d.used(RX, 0), (3, (NET_HDR_LEN + 200) as u32));
}

#[test]
fn descriptor_outside_ram_drops_one_frame_and_the_queue_keeps_working() {
    let mut d = Driver::init();
    d.desc(TX, 0, MEM - 8, 64, 0, 0);
    d.offer(TX, 0);
    assert_eq!(d.dev.stats().bad_chains, 1);
    assert_eq!(d.used(TX, 0), (0, 0), "the bad chain is returned");
    d.desc(TX, 1, u64::MAX - 4, 64, 0, 0);
    d.offer(TX, 1);
    assert_eq!(
        d.dev.stats().bad_chains,
        2,
        "address overflow is out of range"
    );
    let f = frame(64, 1);
    d.transmit(2, &f);
    assert_eq!(*d.sent.0.lock(), vec![f]);
    assert_eq!(d.dev.phase(), DevicePhase::Live);
}

#[test]
fn looping_and_indirect_chains_are_dropped_not_followed_forever() {
    let mut d = Driver::init();
    d.desc(TX, 0, BUFFERS, 16, 1, 1);
    d.desc(TX, 1, BUFFERS, 16, 1, 0);
    d.offer(TX, 0);
    d.desc(TX, 2, BUFFERS, 16, 4, 0);
    d.offer(TX, 2);
    d.desc(TX, 3, BUFFERS, 16, 1, 200);
    d.offer(TX, 3);
    assert_eq!(d.dev.stats().bad_chains, 3);
    assert!(d.sent.0.lock().is_empty());
    assert_eq!(d.used_idx(TX), 3);
}

#[test]
fn wrong_direction_and_wrong_size_chains_are_counted() {
    let mut d = Driver::init();
    // A TX chain with a device-writable buffer.
    d.desc(TX, 0, BUFFERS, 80, 2, 0);
    d.offer(TX, 0);
    // A TX frame larger than MAX_FRAME.
    d.desc(TX, 1, BUFFERS, (NET_HDR_LEN + MAX_FRAME + 1) as u32, 0, 0);
    d.offer(TX, 1);
    // An RX buffer too small for the frame.
    d.post_rx(0, 50);
    d.dev.deliver(&frame(100, 0));
    let s = d.dev.stats();
    assert_eq!((s.bad_chains, s.oversize), (1, 2));
    assert_eq!(d.used(RX, 0), (0, 0));
    d.dev.deliver(&frame(MAX_FRAME + 1, 0));
    assert_eq!(d.dev.stats().oversize, 3);
}

#[test]
fn head_outside_the_table_puts_the_device_in_needs_reset_until_the_driver_resets() {
    let mut d = Driver::init();
    d.offer(TX, SIZE + 3);
    assert_eq!(d.dev.phase(), DevicePhase::NeedsReset);
    assert_ne!(d.r(REG_STATUS) & STATUS_NEEDS_RESET, 0);
    assert_eq!(d.dev.stats().device_errors, 1);
    d.transmit(0, &frame(60, 0));
    assert!(d.sent.0.lock().is_empty(), "nothing processed");
    d.dev.deliver(&frame(60, 0));
    assert_eq!(d.dev.stats().rx_dropped, 1);
    d.w(REG_STATUS, 0);
    assert_eq!(d.dev.phase(), DevicePhase::Reset);
    assert_eq!(d.r(REG_QUEUE_READY), 0);
    let mac = d.dev.save().mac;
    assert_eq!(mac, MAC, "reset keeps the MAC");
}

#[test]
fn available_index_running_ahead_of_the_ring_is_a_device_error() {
    let mut d = Driver::init();
    d.mem
        .write_obj(SIZE + 1, GuestAddress(RINGS[TX].1 + 2))
        .unwrap();
    d.w(REG_QUEUE_NOTIFY, TX as u32);
    assert_eq!(d.dev.phase(), DevicePhase::NeedsReset);
}

#[test]
fn queue_setup_outside_ram_or_misaligned_is_refused() {
    for (desc, size) in [
        (MEM - 16, SIZE),
        (0x1_0008, SIZE),
        (0x1_0000, 3),
        (0x1_0000, 512),
    ] {
        let mut d = Driver::new();
        d.w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        d.w(REG_QUEUE_SEL, 0);
        d.w(REG_QUEUE_NUM, u32::from(size));
        d.w(REG_QUEUE_DESC_LOW, desc as u32);
        d.w(REG_QUEUE_DRIVER_LOW, 0x1_1000);
        d.w(REG_QUEUE_DEVICE_LOW, 0x1_2000);
        d.w(REG_QUEUE_READY, 1);
        assert_eq!(d.r(REG_QUEUE_READY), 0, "desc {desc:#x} size {size}");
        assert_eq!(d.dev.phase(), DevicePhase::NeedsReset);
    }
}

#[test]
fn queue_registers_are_frozen_while_the_queue_is_ready() {
    let mut d = Driver::init();
    d.w(REG_QUEUE_SEL, TX as u32);
    d.w(REG_QUEUE_DESC_LOW, 0x9_0000);
    assert_eq!(d.dev.save().transport.queues[TX].desc, RINGS[TX].0);
}

#[test]
fn pending_frames_are_bounded_and_the_oldest_dropped() {
    let mut d = Driver::init();
    for i in 0..PENDING_RX_LIMIT + 5 {
        d.dev.deliver(&frame(60, i as u8));
    }
    assert_eq!(d.dev.stats().rx_dropped, 5);
    let addr = d.post_rx(0, 2048);
    let mut got = vec![0u8; 60];
    d.mem
        .read_slice(&mut got, GuestAddress(addr + NET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, frame(60, 5), "frames 0..5 were dropped");
}

#[test]
fn restored_state_continues_the_rings_on_a_copy_of_memory() {
    let mut d = Driver::init();
    d.transmit(0, &frame(60, 1));
    d.post_rx(0, 2048);
    let state = d.dev.save();

    // A second VM: the same memory content (as a checkpoint would carry) and the state.
    let mem2 = memory::create(MEM).unwrap();
    let all = memory::read_pages(&d.mem, memory::DirtyPages::all(&d.mem).ranges()).unwrap();
    memory::write_pages(&mem2, memory::DirtyPages::all(&mem2).ranges(), &all).unwrap();
    let mut dev2 = NetDevice::new(mem2.clone(), [0; 6], None);
    let sent2 = Collect::default();
    dev2.set_sink(Box::new(sent2.clone()));
    dev2.restore(&state);
    assert_eq!(dev2.phase(), DevicePhase::Live);
    assert_eq!(dev2.save(), state);

    // The posted RX buffer is still there for the restored device.
    let f = frame(80, 4);
    dev2.deliver(&f);
    let used: u16 = mem2.read_obj(GuestAddress(RINGS[RX].2 + 2)).unwrap();
    assert_eq!(used, 1);
    // And TX continues at the next available index.
    for ring in &mut d.rings {
        ring.move_to(mem2.clone());
    }
    d.mem = mem2;
    d.dev = dev2;
    d.sent = sent2;
    let g = frame(70, 2);
    d.transmit(2, &g);
    assert_eq!(*d.sent.0.lock(), vec![g]);
    assert_eq!(d.used_idx(TX), 2);
}
