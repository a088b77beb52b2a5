//! The host side of guest networking: Linux tap devices (`tap`), network namespaces for
//! tests and the demo (`netns`), and the glue between a tap and the VM's virtio-net device
//! (`TapLink` in `tap`), the client of the test guest's key-value server (`kvclient`), and the
//! tools of the two-host tests: a user-space link emulator between two taps (`linkem`, delay,
//! loss, duplication, reordering, cuts) and a raw-socket frame capture (`capture`).
//!
//! Invariant: everything here touches only interfaces in namespaces colo itself created
//! (or a tap the caller named); a namespace is removed when its guard drops, on every path.

pub mod capture;
pub mod kvclient;
pub mod linkem;
pub mod netns;
pub mod tap;
