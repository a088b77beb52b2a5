//! The `colo` command line as clap types: the global flags, every subcommand and its
//! arguments (`node_cli` holds `colo primary` / `colo secondary`'s). Parsing only: what a
//! command does is in `main.rs`.
//!
//! Invariant: a value clap accepts here is well-formed for the command (sizes, addresses,
//! enumerations, durations are parsed by their value parsers); what depends on the host
//! (files, sockets, /dev/kvm) is checked when the command runs, with a one-line error. A
//! duration flag takes a bare number in the unit its name or help gives (seconds for
//! `--timeout` and `--run-for`, milliseconds for `--*-ms`, `--save-after` and `set
//! checkpoint-interval`), as it always has, or a duration with its unit (`humantime`:
//! `500ms`, `2s`, `1m 30s`).

use crate::node_cli::{PrimaryArgs, SecondaryArgs};
use clap::{Parser, Subcommand, ValueEnum};
use colo_runtime::vm_spec::parse_size;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A duration flag's value: a bare number counts `unit`s (`unit_name` for the error), else a
/// humantime duration.
fn duration(text: &str, unit: Duration, unit_name: &str) -> Result<Duration, String> {
    let text = text.trim();
    let help = || {
        format!("a number of {unit_name}, or a duration with its unit such as 500ms, 2s or 1m 30s")
    };
    if let Ok(n) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(n * unit.as_secs_f64())
            .map_err(|_| format!("{text} is not {}", help()));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (give {})", help()))
}

/// `--timeout`, `--run-for`: seconds, or a duration with its unit.
pub(crate) fn seconds(text: &str) -> Result<Duration, String> {
    duration(text, Duration::from_secs(1), "seconds")
}

/// `--*-ms`, `--save-after`, `set checkpoint-interval`: whole milliseconds, or a duration with
/// its unit (rounded down to whole milliseconds).
pub(crate) fn millis(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.trim().parse::<u64>() {
        return Ok(ms);
    }
    let d = duration(text, Duration::from_millis(1), "milliseconds")?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{text} is too long"))
}

#[derive(Parser, Debug)]
#[command(
    name = "colo",
    version,
    about = "COLO VM fault tolerance (KVM runtime)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log lines on stderr: `human` (`<role>: <event> key=value ...`) or `json` (one object
    /// per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Human)]
    pub(crate) log_format: LogFormatArg,
    /// Which events to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// `RUST_LOG`-style directives; overrides RUST_LOG (default `info`).
    #[arg(long, global = true)]
    pub(crate) log_level: Option<String>,
    /// Write the node's milestones (checkpoints, failover, re-protection, ...) as one JSON
    /// object per line, for programs: `-` for stdout (beside the guest console), or a file
    /// (appended to).
    #[arg(long, global = true, value_name = "FILE|-")]
    pub(crate) events: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormatArg {
    /// `<role>: <event> key=value ...`
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Boot one VM (unreplicated), console on stdout.
    Run(RunArgs),
    /// Continue a VM from a state file written by `colo run --save-after`.
    Restore(RestoreArgs),
    /// Run the primary node of a replicated pair (it boots the VM: the test guest or --kernel).
    Primary(PrimaryArgs),
    /// Run the secondary node of a replicated pair (its VM becomes a copy of the primary's).
    Secondary(SecondaryArgs),
    /// Serve fencing leases to a pair's nodes.
    Arbiter(ArbiterArgs),
    /// Create a pair key file (32 random bytes, mode 0600; never overwrites a file). Copy the
    /// same file to both hosts and the arbiter and pass it as --key-file.
    Keygen {
        /// The key file to create.
        path: PathBuf,
    },
    /// Start an arbiter, a primary and a secondary on loopback, kill the primary, show the
    /// failover, re-protect the survivor with a new secondary and fail back to it; exits 0
    /// with a summary if every step checked out.
    Demo(DemoArgs),
    /// Measure the pair against the lone VM (same guest, workload and client, one run):
    /// latency, throughput both ways, failover time; the last lines are `key=value`.
    Bench(BenchArgs),
    /// Show a running node's state and counters (control socket).
    Status(CtlArgs),
    /// Make a paired primary take a checkpoint now.
    Checkpoint(CtlArgs),
    /// Declare the peer lost now (QEMU's x-colo-lost-heartbeat).
    Failover(CtlArgs),
    /// Arm a solo survivor to accept a new secondary.
    Reprotect(CtlArgs),
    /// Stop a node (it says goodbye to its peer).
    Shutdown(CtlArgs),
    /// Change a running node's setting.
    #[command(subcommand)]
    Set(SetCommand),
    /// Pair config files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Parse and check a pair config file (TOML) without starting anything; prints each
    /// host's part and the VM's description with its fingerprint.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SetCommand {
    /// The primary's periodic checkpoint interval.
    CheckpointInterval {
        /// Milliseconds (> 0), or a duration with its unit (`200ms`, `1s`).
        #[arg(value_parser = millis)]
        ms: u64,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Log a memory digest at every checkpoint (`on`) or not (`off`).
    Digests {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        ctl: CtlArgs,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct CtlArgs {
    /// The node's control socket (it prints `<role>: control socket=PATH` at start).
    #[arg(long)]
    pub(crate) control: PathBuf,
    /// Print the node's JSON response as is.
    #[arg(long)]
    pub(crate) json: bool,
    /// Give up after this many seconds (or a duration with its unit: `500ms`, `1m`).
    #[arg(long, default_value = "15", value_parser = seconds)]
    pub(crate) timeout: Duration,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ArbiterArgs {
    /// Where nodes ask for leases.
    #[arg(long)]
    pub(crate) listen: SocketAddr,
    /// The pair's key file (`colo keygen`): nodes without it are refused.
    #[arg(long)]
    pub(crate) key_file: PathBuf,
    /// Exit after this many seconds (or a duration with its unit: `90s`, `2h`).
    #[arg(long, value_parser = seconds)]
    pub(crate) run_for: Option<Duration>,
    /// Record the current term and its holder in FILE and start from it: an arbiter restarted
    /// without it forgets the term and could grant it to a second node.
    #[arg(long, value_name = "FILE")]
    pub(crate) state: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Loopback port of the arbiter.
    #[arg(long, default_value_t = 17600)]
    pub(crate) arbiter_port: u16,
    /// Loopback port of the primary's peer link.
    #[arg(long, default_value_t = 17601)]
    pub(crate) peer_port: u16,
    /// Loopback port where the survivor accepts the new secondary.
    #[arg(long, default_value_t = 17602)]
    pub(crate) reprotect_port: u16,
    /// Checkpoints to complete before the primary is killed.
    #[arg(long, default_value_t = 5)]
    pub(crate) checkpoints: u32,
    /// Give up (exit 1) after this many seconds (or a duration with its unit: `2m`).
    #[arg(long, default_value = "60", value_parser = seconds)]
    pub(crate) timeout: Duration,
    /// The guest's TCP server and a real client across the failover, in a network
    /// namespace the demo creates (root, iproute2, /dev/net/tun).
    #[arg(long)]
    pub(crate) net: bool,
    /// `--net`: client requests per measured phase (lone VM, pair, survivor).
    #[arg(long, default_value_t = 200)]
    pub(crate) requests: u32,
}

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// A short run (a smoke: fewer requests, 1 MiB bulk transfers).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Instead of the comparison: the time of each hop of a request and its reply through
    /// the pair (the nodes record them with COLO_TRACE_HOPS=1), as medians; then of a reply
    /// that differs between the guests and the checkpoint it forces.
    #[arg(long)]
    pub(crate) breakdown: bool,
    /// Instead of the comparison: run the pair this many seconds (or a duration with its
    /// unit: `90s`, `10m`) under bulk both ways and requests at once, nobody killed, and count
    /// false failure detections (`peer-lost`).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub(crate) soak: Option<Duration>,
    /// Loopback port of the arbiter (inside the bench's network namespace).
    #[arg(long, default_value_t = 17610)]
    pub(crate) arbiter_port: u16,
    /// Loopback port of the primary's peer link (inside the namespace).
    #[arg(long, default_value_t = 17611)]
    pub(crate) peer_port: u16,
    /// Give up (exit 1) after this many seconds, or a duration with its unit (default: 120
    /// with --quick, 600 without).
    #[arg(long, value_parser = seconds)]
    pub(crate) timeout: Option<Duration>,
    /// An extra argument for both nodes, e.g. `--node-arg=--heartbeat-interval-ms=20`
    /// (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub(crate) node_args: Vec<String>,
    /// Words appended to the test guest's command line on the lone VM and both nodes alike,
    /// e.g. `--guest-cmdline colo.idle_spin_us=2000` (a guest that polls 2 ms before halting).
    #[arg(long, value_name = "WORDS")]
    pub(crate) guest_cmdline: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ImageKind {
    /// bzImage -> Linux, ELF -> colo's test guest.
    Auto,
    /// colo's test guest (ELF).
    TestGuest,
    /// A Linux kernel (bzImage or vmlinux ELF).
    Linux,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Guest image: colo's test guest (ELF) or a Linux bzImage / vmlinux. The word
    /// `test-guest` names the test guest this colo binary was built with.
    #[arg(long)]
    pub(crate) guest: PathBuf,
    /// How to boot the image.
    #[arg(long, value_enum, default_value_t = ImageKind::Auto)]
    pub(crate) kind: ImageKind,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    pub(crate) memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub(crate) vcpus: u8,
    /// Kernel / test-guest command line (defaults: Linux `console=ttyS0 reboot=k panic=1`,
    /// test guest: the counter workload).
    #[arg(long)]
    pub(crate) cmdline: Option<String>,
    /// Initial ramdisk (Linux only).
    #[arg(long)]
    pub(crate) initrd: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) disk: DiskArgs,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DiskArgs {
    /// A raw disk image for the guest's virtio-blk device (created sparse if missing, extended
    /// to --disk-size if shorter). Without it the device has no medium.
    #[arg(long)]
    pub(crate) disk: Option<PathBuf>,
    /// The disk's size in bytes, or with a K, M or G suffix (powers of 1024).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub(crate) disk_size: u64,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RestoreArgs {
    /// State file to continue from.
    #[arg(long)]
    pub(crate) state: PathBuf,
    /// The raw image the saved VM's disk continues on (its size is the saved capacity). The
    /// state file does not hold the disk: pass the image as it was when the state was saved.
    #[arg(long)]
    pub(crate) disk: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CommonArgs {
    /// Stop after this many seconds (pausing the VM) instead of waiting for the guest (or a
    /// duration with its unit: `1.5` or `1500ms`).
    #[arg(long, value_parser = seconds)]
    pub(crate) timeout: Option<Duration>,
    /// After this many milliseconds (or a duration with its unit: `2s`), pause the VM, save
    /// its full state to --state-out and exit.
    #[arg(long, requires = "state_out", value_parser = millis)]
    pub(crate) save_after: Option<u64>,
    /// Where --save-after writes the state.
    #[arg(long)]
    pub(crate) state_out: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_keep_their_unit_and_units_are_humantime() {
        assert_eq!(seconds("15"), Ok(Duration::from_secs(15)));
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(millis("200"), Ok(200));
        assert_eq!(millis("2s"), Ok(2000));
        assert_eq!(millis("1.5"), Ok(1));
        assert_eq!(millis("250ms"), Ok(250));
    }

    #[test]
    fn a_bad_duration_says_what_is_expected() {
        for bad in ["soon", "NaN", "inf", "5 parsecs"] {
            let err = seconds(bad).expect_err(bad);
            assert!(
                err.contains("a number of seconds, or a duration"),
                "{bad}: {err}"
            );
        }
        let err = millis("fast").unwrap_err();
        assert!(err.contains("a number of milliseconds"), "{err}");
    }
}
