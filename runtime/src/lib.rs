//! colo-runtime: the real runtime. This crate holds the KVM VMM (Firecracker-like rooms:
//! `vstate` for KVM objects and vCPU threads, `memory`, `devices`, `loader`, `persist`), the
//! `Machine` that composes them into a VM with pause / capture / apply / resume, colo's test
//! guest build hook (`guest`), and the `colo` command-line tool (`src/main.rs`).
//!
//! Later issues add tap networking, virtio-mmio devices, block files, the peer transport and
//! the driver loop binding `colo-core`'s `Node` to all of this.

pub mod devices;
pub mod guest;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod persist;
pub mod vstate;

pub use machine::{CaptureStats, ConsoleOutput, Machine, MachineError, MachinePhase};
pub use persist::{Checkpoint, CheckpointKind, DeviceState, MachineConfig, PersistError};
