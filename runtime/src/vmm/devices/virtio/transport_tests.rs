//! Tests of the transport's own rules, apart from any one device: the saved state keeps the
//! byte layout the devices had before the transport was extracted (so `STATE_VERSION` holds),
//! and a broken queue setup is counted once on the device behind it.

use super::*;
use crate::vmm::devices::virtio::blk::{BlkState, BlkStats};
use crate::vmm::devices::virtio::net::{NetDevice, NetState, NetStats};
use crate::vmm::devices::virtio::testkit;
use std::collections::BTreeMap;

/// `NetState` as it was written before the transport existed (fields flat, in order).
#[derive(Serialize)]
struct FlatNetState {
    mac: [u8; 6],
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    queues: [QueueState; 2],
    interrupt_status: u32,
    stats: NetStats,
}

/// `BlkState` as it was written before the transport existed (`queue` a single field).
#[derive(Serialize)]
struct FlatBlkState {
    capacity: u64,
    read_only: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    queue: QueueState,
    interrupt_status: u32,
    next_id: u64,
    inflight: BTreeMap<crate::vmm::devices::virtio::blk::BlkRequestId, ()>,
    stats: BlkStats,
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
}

fn queue(seed: u64) -> QueueState {
    QueueState {
        size: 64,
        ready: true,
        desc: 0x1000 + seed,
        avail: 0x2000 + seed,
        used: 0x3000 + seed,
        next_avail: 7,
        next_used: 5,
    }
}

fn transport<Q>(queues: Q) -> TransportState<Q> {
    TransportState {
        device_features_sel: 1,
        driver_features_sel: 1,
        driver_features: F_VERSION_1 | 0x20,
        status: 0x0f,
        queue_sel: 1,
        queues,
        interrupt_status: INT_USED_BUFFER,
    }
}

#[test]
fn net_state_encodes_as_the_flat_layout_before_the_transport() {
    let stats = NetStats {
        tx_frames: 3,
        rx_bytes: 900,
        device_errors: 1,
        ..NetStats::default()
    };
    let t = transport([queue(0), queue(0x10)]);
    let nested = NetState {
        mac: [2, 0, 0, 0, 0, 1],
        transport: t.clone(),
        stats,
    };
    let flat = FlatNetState {
        mac: nested.mac,
        device_features_sel: t.device_features_sel,
        driver_features_sel: t.driver_features_sel,
        driver_features: t.driver_features,
        status: t.status,
        queue_sel: t.queue_sel,
        queues: t.queues,
        interrupt_status: t.interrupt_status,
        stats,
    };
    assert_eq!(encode(&nested), encode(&flat));
}

#[test]
fn blk_state_encodes_as_the_flat_layout_before_the_transport() {
    let stats = BlkStats {
        reads: 4,
        write_bytes: 4096,
        ..BlkStats::default()
    };
    let t = transport([queue(0)]);
    let nested = BlkState {
        capacity: 1 << 20,
        read_only: true,
        transport: t.clone(),
        next_id: 9,
        inflight: BTreeMap::new(),
        stats,
    };
    let flat = FlatBlkState {
        capacity: nested.capacity,
        read_only: nested.read_only,
        device_features_sel: t.device_features_sel,
        driver_features_sel: t.driver_features_sel,
        driver_features: t.driver_features,
        status: t.status,
        queue_sel: t.queue_sel,
        queue: t.queues[0],
        interrupt_status: t.interrupt_status,
        next_id: nested.next_id,
        inflight: BTreeMap::new(),
        stats,
    };
    assert_eq!(encode(&nested), encode(&flat));
}

#[test]
fn a_queue_that_does_not_fit_in_ram_needs_a_reset_and_counts_one_device_error() {
    let mem = memory::create(1 << 20).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut dev = NetDevice::new(mem, [2, 0, 0, 0, 0, 1], Some(irq.try_clone().unwrap()));
    assert!(testkit::negotiate(&mut dev, 1 << 5));
    testkit::w(&mut dev, REG_QUEUE_SEL, 0);
    testkit::w(&mut dev, REG_QUEUE_NUM, 8);
    // A descriptor table past the end of guest RAM.
    testkit::w(&mut dev, REG_QUEUE_DESC_LOW, 0x20_0000);
    testkit::w(&mut dev, REG_QUEUE_READY, 1);
    assert_eq!(dev.phase(), DevicePhase::NeedsReset);
    assert_eq!(testkit::r(&mut dev, REG_QUEUE_READY), 0);
    assert_eq!(dev.stats().device_errors, 1);
    assert_eq!(
        testkit::r(&mut dev, REG_INTERRUPT_STATUS) & INT_CONFIG_CHANGE,
        INT_CONFIG_CHANGE
    );
    assert_eq!(irq.read().unwrap(), 1, "one configuration-change interrupt");
    // Status 0 resets the transport; the device's counters stay.
    testkit::w(&mut dev, REG_STATUS, 0);
    assert_eq!(dev.phase(), DevicePhase::Reset);
    assert_eq!(testkit::r(&mut dev, REG_INTERRUPT_STATUS), 0);
    assert_eq!(dev.stats().device_errors, 1);
}
