//! Guest disks as host files: image files (`image`: the raw image, the sparse overlays) and
//! [`ImageBackend`], the virtio-blk backend of a VM that runs alone (`colo run`) straight on a
//! raw image. The pair's replicated block space over these files (the volume and the store
//! executing colo-core's disk commands) is `crate::pair::disk`.
//!
//! Invariant: no I/O error is swallowed. A lone VM's failed request completes to the guest as
//! `VIRTIO_BLK_S_IOERR` with the error text kept; in the pair a failed command goes back to the
//! core as a `DiskIoError` (`DiskStore::execute`).

pub mod image;

use crate::vmm::devices::virtio::blk::{
    BlkCompletion, BlkIoError, BlkOp, BlkRequest, BlockBackend,
};
pub use image::{ImageError, OverlayImage, RawImage};
use std::sync::Arc;

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
