//! colo-runtime: the real runtime. This crate holds the KVM VMM (Firecracker-like rooms:
//! `vstate` for KVM objects and vCPU threads, `memory`, `devices`, `loader`, `persist`), the
//! `Machine` that composes them into a VM with pause / capture / apply / resume, colo's test
//! guest build hook (`guest`), and the `colo` command-line tool (`src/main.rs`).
//!
//! The replicated pair: `peer` (the TCP peer transport carrying `colo_core::wire` frames),
//! `node_loop` (the thread driving a `colo_core::node::Node` and its machine, with the
//! secondary's RAM cache), `arbiter` (the lease arbiter server and client) and `demo` (the
//! one-host pair with a failover). Guest networking: `devices::virtio` (the virtio-mmio network
//! device), `net` (taps and network namespaces) and the node loop's frame routing. Guest disks:
//! `devices::virtio::blk` (the virtio-mmio block device) and `disk` (image and overlay files,
//! the store executing the core's disk commands). `vm_spec`: the VM description a user gives
//! both nodes (boot image, memory, vCPUs, disks, NICs) and its handshake fingerprint; `config`:
//! the pair config file (TOML) that carries the same description, the pair and each host.

pub mod arbiter;
pub mod bench;
pub mod config;
pub mod control;
pub mod demo;
pub mod devices;
pub mod disk;
pub mod guest;
pub mod layout;
pub mod loader;
pub mod logging;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod node_loop;
pub mod peer;
pub mod persist;
pub mod progress;
pub mod vm_spec;
pub mod vstate;

pub use machine::{CaptureStats, ConsoleOutput, Machine, MachineError, MachinePhase};
pub use persist::{Checkpoint, CheckpointKind, DeviceState, MachineConfig, PersistError};
