//! The virtio-mmio transport (version 2, virtio 1.2 section 4.2.2) shared by the net and
//! block devices: the register decode of a 32-bit access, feature negotiation, the status
//! write rules and queue configuration. The devices keep their own Persist state (its layout
//! is part of the checkpoint format); this module works on borrowed views of its fields.
//!
//! Invariants kept for every device: queue configuration registers only change while the
//! queue is not ready (section 4.2.2.2); FEATURES_OK only sticks for a subset of the offered
//! features that includes VERSION_1 (section 3.1.1); DRIVER_OK needs FEATURES_OK; the
//! device's NEEDS_RESET bit survives any status write but 0; accesses that are not 32-bit
//! and aligned read as zero and are ignored on write.

use super::net::DevicePhase;
use super::net::INT_CONFIG_CHANGE;
use super::net::{
    F_VERSION_1, MAGIC, REG_CONFIG, REG_CONFIG_GENERATION, REG_DEVICE_FEATURES,
    REG_DEVICE_FEATURES_SEL, REG_DEVICE_ID, REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL,
    REG_INTERRUPT_ACK, REG_INTERRUPT_STATUS, REG_MAGIC, REG_QUEUE_DESC_HIGH, REG_QUEUE_DESC_LOW,
    REG_QUEUE_DEVICE_HIGH, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DRIVER_HIGH, REG_QUEUE_DRIVER_LOW,
    REG_QUEUE_NOTIFY, REG_QUEUE_NUM, REG_QUEUE_NUM_MAX, REG_QUEUE_READY, REG_QUEUE_SEL, REG_STATUS,
    REG_VENDOR_ID, REG_VERSION, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
    VENDOR_ID, VERSION,
};
use super::queue::{QUEUE_MAX, QueueError, QueueState};
use vmm_sys_util::eventfd::EventFd;

/// Raises the device's interrupt line (none in unit tests). A full eventfd counter still means
/// "raised", so its error is ignored.
pub(super) fn raise_irq(irq: Option<&EventFd>) {
    if let Some(irq) = irq {
        let _ = irq.write(1);
    }
}

/// A broken ring (section 2.1.2): the device sets NEEDS_RESET, counts the error and tells the
/// driver with a configuration-change interrupt.
pub(super) fn enter_needs_reset(
    status: &mut u32,
    interrupt_status: &mut u32,
    device_errors: &mut u64,
    irq: Option<&EventFd>,
) {
    *status |= STATUS_NEEDS_RESET;
    *device_errors += 1;
    *interrupt_status |= INT_CONFIG_CHANGE;
    raise_irq(irq);
}

/// The phase a device status gives: NEEDS_RESET wins over DRIVER_OK (section 2.1.2: the
/// device stops until the driver resets it).
pub(super) fn phase(status: u32) -> DevicePhase {
    if status & STATUS_NEEDS_RESET != 0 {
        DevicePhase::NeedsReset
    } else if status & STATUS_DRIVER_OK != 0 {
        DevicePhase::Live
    } else {
        DevicePhase::Reset
    }
}

/// What a device shows through the common registers on a read.
pub(super) struct RegisterView<'a> {
    /// DeviceID (virtio 1.2 section 5).
    pub device_id: u32,
    /// The features the device offers.
    pub device_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// The queue QueueSel selects, if it exists.
    pub queue: Option<&'a QueueState>,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Status.
    pub status: u32,
}

/// A register read (offset below the config space).
pub(super) fn read_register(view: &RegisterView<'_>, offset: u64) -> u32 {
    match offset {
        REG_MAGIC => MAGIC,
        REG_VERSION => VERSION,
        REG_DEVICE_ID => view.device_id,
        REG_VENDOR_ID => VENDOR_ID,
        REG_DEVICE_FEATURES => match view.device_features_sel {
            0 => view.device_features as u32,
            1 => (view.device_features >> 32) as u32,
            _ => 0,
        },
        REG_QUEUE_NUM_MAX => view.queue.map_or(0, |_| u32::from(QUEUE_MAX)),
        REG_QUEUE_READY => view.queue.map_or(0, |q| u32::from(q.ready)),
        REG_INTERRUPT_STATUS => view.interrupt_status,
        REG_STATUS => view.status,
        REG_CONFIG_GENERATION => 0,
        _ => 0,
    }
}

/// Which address of a queue a configuration write sets, and which half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QueueField {
    Size,
    DescLow,
    DescHigh,
    DriverLow,
    DriverHigh,
    DeviceLow,
    DeviceHigh,
}

/// A decoded register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RegisterWrite {
    DeviceFeaturesSel(u32),
    DriverFeaturesSel(u32),
    /// The word DriverFeaturesSel selects.
    DriverFeatures(u32),
    QueueSel(u32),
    /// Only while the selected queue is not ready: see [`configure_queue`].
    QueueConfig(QueueField, u32),
    QueueReady(bool),
    QueueNotify(u32),
    InterruptAck(u32),
    Status(u32),
    Ignored,
}

/// Decodes a write of `value` at `offset`.
pub(super) fn decode_write(offset: u64, value: u32) -> RegisterWrite {
    use RegisterWrite as W;
    match offset {
        REG_DEVICE_FEATURES_SEL => W::DeviceFeaturesSel(value),
        REG_DRIVER_FEATURES_SEL => W::DriverFeaturesSel(value),
        REG_DRIVER_FEATURES => W::DriverFeatures(value),
        REG_QUEUE_SEL => W::QueueSel(value),
        REG_QUEUE_NUM => W::QueueConfig(QueueField::Size, value),
        REG_QUEUE_DESC_LOW => W::QueueConfig(QueueField::DescLow, value),
        REG_QUEUE_DESC_HIGH => W::QueueConfig(QueueField::DescHigh, value),
        REG_QUEUE_DRIVER_LOW => W::QueueConfig(QueueField::DriverLow, value),
        REG_QUEUE_DRIVER_HIGH => W::QueueConfig(QueueField::DriverHigh, value),
        REG_QUEUE_DEVICE_LOW => W::QueueConfig(QueueField::DeviceLow, value),
        REG_QUEUE_DEVICE_HIGH => W::QueueConfig(QueueField::DeviceHigh, value),
        REG_QUEUE_READY => W::QueueReady(value == 1),
        REG_QUEUE_NOTIFY => W::QueueNotify(value),
        REG_INTERRUPT_ACK => W::InterruptAck(value),
        REG_STATUS => W::Status(value),
        _ => W::Ignored,
    }
}

fn set_low(old: u64, value: u32) -> u64 {
    (old & !0xffff_ffff) | u64::from(value)
}

fn set_high(old: u64, value: u32) -> u64 {
    (old & 0xffff_ffff) | (u64::from(value) << 32)
}

/// Stores the driver's feature word `sel` (0 low, 1 high; others are ignored).
pub(super) fn write_driver_features(features: &mut u64, sel: u32, value: u32) {
    match sel {
        0 => *features = set_low(*features, value),
        1 => *features = set_high(*features, value),
        _ => {}
    }
}

/// A queue configuration write; the caller passes the selected queue only while it is not
/// ready (section 4.2.2.2).
pub(super) fn configure_queue(q: &mut QueueState, field: QueueField, value: u32) {
    match field {
        QueueField::Size => q.size = value.min(0xffff) as u16,
        QueueField::DescLow => q.desc = set_low(q.desc, value),
        QueueField::DescHigh => q.desc = set_high(q.desc, value),
        QueueField::DriverLow => q.avail = set_low(q.avail, value),
        QueueField::DriverHigh => q.avail = set_high(q.avail, value),
        QueueField::DeviceLow => q.used = set_low(q.used, value),
        QueueField::DeviceHigh => q.used = set_high(q.used, value),
    }
}

/// QueueReady: 0 stops the queue; 1 starts it from index 0 if its rings fit in guest memory,
/// else the error the device turns into NEEDS_RESET.
pub(super) fn set_queue_ready(
    q: &mut QueueState,
    ready: bool,
    mem_bytes: u64,
) -> Result<(), QueueError> {
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
pub(super) fn next_status(old: u32, value: u32, driver_features: u64, offered: u64) -> u32 {
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

/// A bus read: config space bytes from `config_byte` (offset within config space), else the
/// 32-bit register from `register`; other widths read as zero.
pub(super) fn bus_read(
    offset: u64,
    data: &mut [u8],
    config_byte: impl Fn(u64) -> u8,
    register: impl FnOnce(u64) -> u32,
) {
    if offset >= REG_CONFIG {
        for (i, b) in data.iter_mut().enumerate() {
            *b = config_byte(offset - REG_CONFIG + i as u64);
        }
        return;
    }
    let value = if data.len() == 4 && offset.is_multiple_of(4) {
        register(offset)
    } else {
        0 // registers are 32-bit; other widths read as zero
    };
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(i).copied().unwrap_or(0);
    }
}

/// A bus write: the register and value of an aligned 32-bit write below config space (the
/// config space of both devices is read-only), else `None`.
pub(super) fn bus_write(offset: u64, data: &[u8]) -> Option<(u64, u32)> {
    let bytes: [u8; 4] = data.try_into().ok()?;
    (offset < REG_CONFIG && offset.is_multiple_of(4)).then(|| (offset, u32::from_le_bytes(bytes)))
}
