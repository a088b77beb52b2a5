//! Loaders: put a guest image into guest memory and say where the boot vCPU starts.
//!
//! `acpi` writes the ACPI tables every VM gets (RSDP, XSDT, FADT, DSDT, MADT); `elf` loads colo's test guest (an ELF64 executable with physical load addresses);
//! `linux` follows the Linux boot protocol (bzImage or vmlinux, zero page, e820, command line,
//! initrd); `pvh` writes the PVH start info for a vmlinux with a PVH entry note. Invariant: a loader either fully succeeds or returns an error naming what is wrong
//! with the image; it never panics on malformed input.

pub mod acpi;
pub mod elf;
pub mod linux;
pub mod pvh;

/// Errors loading a guest image.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The image file cannot be read.
    #[error("cannot read guest image {path}: {source}")]
    Unreadable {
        /// The path given.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image is not a loadable ELF (truncated, wrong class or machine, bad headers).
    #[error("guest image is not a loadable x86-64 ELF: {reason}")]
    MalformedElf {
        /// linux-loader's or our reason.
        reason: String,
    },
    /// The kernel image is not a loadable bzImage or vmlinux.
    #[error("kernel image is not a loadable bzImage or vmlinux: {reason}")]
    MalformedKernel {
        /// linux-loader's or our reason.
        reason: String,
    },
    /// The image does not fit in guest memory.
    #[error("guest image needs memory up to {end:#x}, the VM has only {mem:#x} bytes")]
    DoesNotFit {
        /// End of the image.
        end: u64,
        /// Guest RAM size.
        mem: u64,
    },
    /// The command line is too long or contains a NUL.
    #[error("command line is invalid: {reason}")]
    Cmdline {
        /// Why.
        reason: String,
    },
    /// The ACPI tables cannot be built for this VM.
    #[error("cannot build the ACPI tables: {reason}")]
    Acpi {
        /// Why.
        reason: String,
    },
    /// Writing the command line or boot structures failed.
    #[error("cannot write {what} into guest memory at {gpa:#x}")]
    GuestMemory {
        /// What.
        what: &'static str,
        /// Where.
        gpa: u64,
    },
}

/// Where the boot vCPU starts, as decided by a loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// Entry point (guest-physical, identity-mapped).
    pub entry: u64,
    /// First byte after the loaded image.
    pub end: u64,
}
