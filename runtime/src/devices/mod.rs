//! Emulated devices and the buses the vCPU threads dispatch exits to.
//!
//! Rooms as in Firecracker's devices: one module per device with its Persist state next to
//! it. Now: the MMIO console of the test guest (`console`) and the 16550 serial of Linux guests
//! (`serial`, vm-superio). virtio-mmio net/blk (next issue) plug into the same [`bus::Bus`].

pub mod bus;
pub mod console;
pub mod serial;

pub use bus::{Bus, BusDevice, DeviceAction};
