//! Emulated devices and the buses the vCPU threads dispatch exits to.
//!
//! Rooms as in Firecracker's devices: one module per device with its Persist state next to
//! it: the MMIO console of the test guest (`console`), the 16550 serial of Linux guests
//! (`serial`, vm-superio) and the virtio-mmio network device (`virtio`); virtio-blk (a later
//! issue) plugs into the same [`bus::Bus`].

pub mod bus;
pub mod console;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, DeviceAction};
