//! Why `colo demo` (and `colo demo --net`) failed: [`DemoError`], one variant per way a step
//! can go wrong, with the I/O or library error it came from as its source.
//!
//! Invariant: each variant's message is the one line `colo: ...` the operator reads (the
//! wording the demo printed when its errors were strings: tests and scripts match some of
//! it, e.g. `the demo needs /dev/kvm, which cannot be opened`, `port N is not free`), and
//! names the child, port, file or checkpoint concerned.

use std::path::PathBuf;
use std::process::ExitStatus;

/// A failed demo step.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The KVM device cannot be opened.
    #[error("the demo needs {device}, which cannot be opened: {source}")]
    NoKvm {
        /// The device path.
        device: String,
        /// Why.
        source: std::io::Error,
    },
    /// A loopback port the demo uses is taken.
    #[error("port {port} is not free: {source}")]
    PortBusy {
        /// The port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory of the demo's temp dir.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// `create`, `write`.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pair key file could not be written.
    #[error(transparent)]
    Key(#[from] colo_runtime::pair::peer::auth::KeyFileError),
    /// A pipe for a child's output.
    #[error("cannot {action} a pipe: {source}")]
    Pipe {
        /// `create`, `clone`.
        action: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A child could not be started.
    #[error("cannot start the {who} ({}): {source}", binary.display())]
    Spawn {
        /// The child's name.
        who: &'static str,
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A child could not be killed or reaped.
    #[error("cannot {action} the {who}: {source}")]
    Signal {
        /// `kill`, `reap`.
        action: &'static str,
        /// The child's name.
        who: String,
        /// Why.
        source: std::io::Error,
    },
    /// The demo asked to kill a child it does not have.
    #[error("no child {0}")]
    NoChild(String),
    /// A child exited on its own.
    #[error("the {who} exited early ({status})")]
    ExitedEarly {
        /// The child's name.
        who: &'static str,
        /// How it ended.
        status: ExitStatus,
    },
    /// A child's guest or node printed a panic.
    #[error("the {0}'s guest or node panicked")]
    Panicked(&'static str),
    /// The demo's deadline passed.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// Every child's output ended.
    #[error("every child ended before {0}")]
    ChildrenEnded(String),
    /// The survivor's state is not the primary's at the checkpoint it applied last.
    #[error(
        "checkpoint {epoch} holds step {held} on the secondary but the primary paused at step {paused}"
    )]
    StepMismatch {
        /// The checkpoint.
        epoch: u64,
        /// The step the secondary holds.
        held: u64,
        /// The step the primary paused at.
        paused: u64,
    },
    /// The survivor's guest stopped counting.
    #[error("the survivor's guest did not advance: step {step} after {floor}")]
    Stalled {
        /// The step reported.
        step: u64,
        /// The step it had to exceed.
        floor: u64,
    },
    /// The newcomer's memory differs from the survivor's at a checkpoint.
    #[error(
        "checkpoint {epoch}: the newcomer's memory digest {newcomer} differs from the survivor's {survivor}"
    )]
    DigestMismatch {
        /// The checkpoint.
        epoch: u64,
        /// The newcomer's digest.
        newcomer: String,
        /// The survivor's digest.
        survivor: String,
    },
    /// A node's control socket could not be asked.
    #[error(transparent)]
    Control(#[from] colo_runtime::pair::control::CallError),
    /// A node refused a control command.
    #[error("`{command}` refused: {answer}")]
    Refused {
        /// The command.
        command: &'static str,
        /// The node's answer.
        answer: String,
    },
    /// The network lab (namespace, bridge, taps) could not be set up.
    #[error("{what}: {source}")]
    Lab {
        /// What was being set up.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The lone VM could not be built or booted.
    #[error("the lone VM: {0}")]
    LoneVm(#[from] colo_runtime::vmm::machine::MachineError),
    /// The test guest's image could not be read.
    #[error("cannot read the test guest: {0}")]
    TestGuest(std::io::Error),
    /// The lone VM's server never said it listens.
    #[error("the lone VM's server did not start: {0}")]
    LoneVmDown(String),
    /// The client's connection or a reply went wrong.
    #[error("{0}")]
    Client(String),
    /// The client thread failed while the demo watched the pair.
    #[error("the client failed: {0}")]
    ClientFailed(String),
}

/// `colo bench` (its own module, which keeps string errors for now) uses the demo's parts
/// with `?`.
impl From<DemoError> for String {
    fn from(e: DemoError) -> String {
        e.to_string()
    }
}
