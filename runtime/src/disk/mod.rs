//! Guest disks on the host: image files (`image`: the raw image, the sparse overlays), a VM's
//! disks laid end to end as the one block space colo-core replicates (`volume`), the
//! store that executes colo-core's disk commands over them (`store`), and [`ImageBackend`], the
//! virtio-blk backend of a VM that runs alone (`colo run`) straight on a raw image.
//!
//! Invariant: no I/O error is swallowed. A lone VM's failed request completes to the guest as
//! `VIRTIO_BLK_S_IOERR` with the error text kept; in the pair a failed command goes back to the
//! core as a `DiskIoError` (`DiskStore::execute`).

pub mod image;
pub mod store;
pub mod volume;

#[cfg(test)]
mod tests;

use crate::devices::virtio::blk::{BlkCompletion, BlkIoError, BlkOp, BlkRequest, BlockBackend};
pub use image::{ImageError, OverlayImage, RawImage};
use std::sync::Arc;
pub use store::DiskStore;
pub use volume::Volume;

/// The block backend of a VM alone: requests run synchronously on its raw image.
#[derive(Debug, Clone)]
pub struct ImageBackend {
    image: Arc<RawImage>,
}

impl ImageBackend {
    /// A backend over `image`.
    pub fn new(image: Arc<RawImage>) -> ImageBackend {
        ImageBackend { image }
    }
}

impl BlockBackend for ImageBackend {
    fn submit(&mut self, request: BlkRequest) -> Option<BlkCompletion> {
        let err = |e: ImageError| BlkIoError(e.to_string());
        Some(match request.op {
            BlkOp::Read { offset, len } => {
                let mut bytes = vec![0u8; len as usize];
                self.image
                    .read_at(offset, &mut bytes)
                    .map(|()| bytes)
                    .map_err(err)
            }
            BlkOp::Write { offset, data } => self
                .image
                .write_at(offset, &data)
                .map(|()| Vec::new())
                .map_err(err),
            BlkOp::Flush => self.image.flush().map(|()| Vec::new()).map_err(err),
        })
    }
}
