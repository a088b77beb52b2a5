//! The host side of guest networking: Linux tap devices (`tap`), network namespaces for
//! tests and the demo (`netns`), and the glue between a tap and the VM's virtio-net device
//! (`TapLink` in `tap`), and the client of the test guest's key-value server (`kvclient`).
//!
//! Invariant: everything here touches only interfaces in namespaces colo itself created
//! (or a tap the caller named); a namespace is removed when its guard drops, on every path.

pub mod kvclient;
pub mod netns;
pub mod tap;
