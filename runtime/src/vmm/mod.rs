//! The VMM half of the runtime: a KVM virtual machine built from Firecracker-like rooms and
//! nothing of replication. `vstate` (KVM objects and vCPU threads), `memory` (guest RAM and
//! its dirty-page tracking), `devices` (the bus, console, serial, the gate and the virtio-mmio
//! devices), `loader` (the test guest's ELF, Linux via PVH and bzImage, ACPI tables), `layout`
//! (the guest physical address map), `persist` (the versioned, checksummed device and vCPU
//! state), `disk` (image files and the lone VM's block backend), `machine` (the `Machine`
//! that composes them with pause / capture / apply / resume), `checkpoint` (the secondary's
//! RAM cache and the apply of a streamed checkpoint) and `guest` (where colo's test
//! guest image is).
//!
//! Invariant: nothing under `vmm` depends on `crate::pair`: the pair drives a `Machine`
//! through its public methods, never the other way round.

pub mod checkpoint;
pub mod devices;
pub mod disk;
pub mod guest;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod persist;
pub mod vstate;
