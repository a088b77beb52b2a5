//! virtio devices on the virtio-mmio transport (version 2, virtio 1.2 section 4.2): the one
//! transport every device sits behind (`transport`: `MmioTransport` and the `VirtioDevice`
//! trait a device implements), the split virtqueue (`queue`), the network device (`net`) and
//! the block device (`blk`). The test guest and Linux guests (`virtio_mmio.device=` on the
//! command line) find them at `layout::VIRTIO_MMIO_BASE`. A new device is one file: its
//! queues, its config space, what a notified queue does, and its Persist state.
//!
//! Invariant shared by every device here: what the guest puts in its rings is untrusted, it
//! is checked before use and a fault becomes a counted drop or the DEVICE_NEEDS_RESET status,
//! never a panic; every device write into guest RAM goes through vm-memory so that the VMM's
//! dirty bitmap carries it into the next checkpoint.

pub mod blk;
pub mod net;
pub mod queue;
#[cfg(test)]
mod testkit;
pub mod transport;
