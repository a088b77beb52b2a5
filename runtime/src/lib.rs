//! colo-runtime: the real runtime, in two halves and a few shared rooms.
//!
//! - `vmm`: the KVM VMM (Firecracker-like rooms: `vstate`, `memory`, `devices`, `loader`,
//!   `layout`, `persist`, the disk image files) and the `Machine` that composes them into a VM
//!   with pause / capture / apply / resume; colo's test guest build hook (`vmm::guest`).
//! - `pair`: the replication: `node_loop` (the thread driving a `colo_core::node::Node` and its
//!   machine), `peer` (the TCP peer transport), `arbiter`, `control`, the replicated disk store,
//!   the pair config file, metrics and sync progress.
//! - shared: `vm_spec` (the VM description a user gives both nodes and its handshake
//!   fingerprint), `net` (taps, the host side of virtio-net, and the network tools of the
//!   tests and the demo: namespaces, the key-value client, the link emulator, the capture;
//!   they stay in the library because `runtime/tests` use them) and `logging`.
//!
//! The `colo` command-line tool, with `colo demo` and `colo bench`, is the binary
//! (`src/bin/colo/`), not the library.

pub mod logging;
pub mod net;
pub mod pair;
pub mod vm_spec;
pub mod vmm;

pub use vmm::machine::{CaptureStats, ConsoleOutput, Machine, MachineError, MachinePhase};
pub use vmm::persist::{Checkpoint, CheckpointKind, DeviceState, MachineConfig, PersistError};
