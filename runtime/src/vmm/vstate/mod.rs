//! KVM state: the VM file descriptor with its in-kernel devices (`vm`), the vCPUs' register
//! state (`vcpu`) and the vCPU threads with their run loop (`thread`).
//!
//! Room layout after Firecracker's `vstate`: each file owns one KVM object, its set-up and its
//! Persist-style `save` / `restore`.

pub mod thread;
pub mod vcpu;
pub mod vm;

/// A failed KVM ioctl, named by the operation.
#[derive(Debug, thiserror::Error)]
#[error("KVM {op} failed: {source}")]
pub struct KvmOpError {
    /// The operation (ioctl) that failed.
    pub op: &'static str,
    /// The kernel's errno.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// Adds the operation name to a kvm-ioctls result.
pub(crate) trait KvmResultExt<T> {
    fn op(self, op: &'static str) -> Result<T, KvmOpError>;
}

impl<T> KvmResultExt<T> for Result<T, kvm_ioctls::Error> {
    fn op(self, op: &'static str) -> Result<T, KvmOpError> {
        self.map_err(|source| KvmOpError { op, source })
    }
}
