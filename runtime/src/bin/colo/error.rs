//! Why a `colo` command failed: [`CliError`], with the library error it came from as its
//! source (an errno, a path, a config line), and the process exit code it ends with.
//!
//! Invariant: `main` prints every `CliError` as one line on stderr, `colo: <message>`, and
//! exits with [`CliError::exit_code`]; the codes are documented in docs/operations.md ("Exit
//! codes") and only ever added to. The messages keep the wording the command printed when its
//! errors were strings (tests match some of it).

use crate::demo::DemoError;
use colo_runtime::pair::arbiter::ArbiterError;
use colo_runtime::pair::config::ConfigError;
use colo_runtime::pair::control::CallError;
use colo_runtime::pair::events::EventsError;
use colo_runtime::pair::node_loop::LoopError;
use colo_runtime::pair::peer::auth::KeyFileError;
use colo_runtime::vm_spec::SpecError;
use colo_runtime::vmm::disk::ImageError;
use colo_runtime::vmm::machine::MachineError;
use colo_runtime::vmm::persist::PersistError;
use std::path::PathBuf;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A flag, a combination of flags or a value that cannot work (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// A file the command reads.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is (`guest image`, `initrd`, `disk image`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log subscriber could not be installed (a bad `--log-level` or `RUST_LOG`).
    #[error("{0}")]
    Logging(String),
    /// `--events` could not be set up.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// The VM could not be built, loaded or captured.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// A boot image did not load (`what` names it: `test guest`, the kernel's path, ...).
    #[error("{what}: {source}")]
    Boot {
        /// The image.
        what: String,
        /// Why.
        source: MachineError,
    },
    /// A state file could not be read or written.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// A disk image could not be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A read-only disk image could not be opened.
    #[error("read-only disk: {0}")]
    ReadOnlyDisk(ImageError),
    /// The VM description is not one colo supports (or its files cannot be read).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `colo config check`: the file's `[vm]` cannot be used.
    #[error("config file {}: [vm]: {source}", path.display())]
    ConfigVm {
        /// The file.
        path: PathBuf,
        /// Why.
        source: SpecError,
    },
    /// The pair config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pair key file.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The arbiter could not start.
    #[error(transparent)]
    Arbiter(#[from] ArbiterError),
    /// The node loop could not start or failed.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// The node ended because another node holds the term.
    #[error("this node was deposed (another node holds the term)")]
    Deposed,
    /// The node's own VM failed while paired; it left the pair to its peer.
    #[error(
        "this node's VM failed (see the log above); it left the pair and its peer serves: restart it to re-protect"
    )]
    VmFailed,
    /// The node ended because the primary refused it (the message says why and what to do).
    #[error("{0}")]
    RefusedByPrimary(String),
    /// A running node's control socket could not be asked.
    #[error(transparent)]
    Control(#[from] CallError),
    /// A running node refused a control command (its answer, rendered).
    #[error("{0}")]
    CommandRefused(String),
    /// `colo demo`.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// `colo bench` (its errors are still strings).
    #[error("{0}")]
    Bench(String),
    /// `colo run|restore`: a vCPU stopped on a fault (not a guest's own exit).
    #[error("vCPU {vcpu} stopped: {why}")]
    GuestFault {
        /// The vCPU.
        vcpu: u64,
        /// Why it stopped.
        why: String,
    },
}

impl CliError {
    /// The process's exit code for this failure: 2 for a guest fault, 1 for every other
    /// failure (a command's success is 0, a guest's own exit its code; clap's usage errors
    /// exit 2 before any command runs).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::GuestFault { .. } => 2,
            _ => 1,
        }
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::Invalid(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_fault_exits_2_and_every_other_failure_1() {
        let fault = CliError::GuestFault {
            vcpu: 0,
            why: "Fault".into(),
        };
        assert_eq!(fault.exit_code(), 2);
        assert_eq!(fault.to_string(), "vCPU 0 stopped: Fault");
        for other in [
            CliError::Deposed,
            CliError::VmFailed,
            CliError::Invalid("a node needs --arbiter".into()),
            CliError::Bench("timed out".into()),
        ] {
            assert_eq!(other.exit_code(), 1, "{other}");
        }
    }

    #[test]
    fn a_read_error_names_the_file_and_keeps_its_source() {
        let e = CliError::Read {
            what: "initrd",
            path: "/nonexistent/initrd.img".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string()
                .starts_with("cannot read initrd /nonexistent/initrd.img: "),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("the io error is kept");
        assert_eq!(
            source
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
    }
}
