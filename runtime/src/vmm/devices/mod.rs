//! Emulated devices and the buses the vCPU threads dispatch exits to.
//!
//! Rooms as in Firecracker's devices: one module per device with its Persist state next to
//! it: the MMIO console of the test guest (`console`), the 16550 serial of Linux guests
//! (`serial`, vm-superio), the virtio-mmio network and block devices (`virtio`), and the
//! output gate both consoles write through (`gate`: a replicated secondary's speculative
//! console output is held there until a checkpoint apply drops it or a takeover releases it).

pub mod bus;
pub mod console;
pub mod gate;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, DeviceAction};
