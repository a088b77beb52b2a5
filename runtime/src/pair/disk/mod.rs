//! The pair's guest disks: a VM's disks laid end to end as the one block space colo-core
//! replicates (`volume`) and the store that executes colo-core's disk commands over the image
//! files of `crate::vmm::disk` (`store`: the primary's image, or the secondary's parent with its
//! hidden and active overlays).
//!
//! Invariant: no I/O error is swallowed: a failed command goes back to the core as a
//! `DiskIoError` (`DiskStore::execute`), never a panic.

pub mod store;
pub mod volume;

#[cfg(test)]
mod tests;

pub use crate::vmm::disk::ImageError;
pub use store::DiskStore;
pub use volume::Volume;
