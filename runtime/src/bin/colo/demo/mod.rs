//! `colo demo`: a replicated pair of the test guest on this host, with a failover, on built-in
//! defaults (`colo demo --net`, in `net.rs`: the same with the guest's TCP server and a real
//! client across the failover, inside a network namespace). Starts `colo arbiter`, `colo
//! primary` and `colo secondary` (both nodes from one pair config file it writes, `pair.toml`
//! in its temp dir, as an operator would on two hosts) as child processes of
//! the same binary on loopback, waits for several checkpoints, kills the primary (SIGKILL),
//! and watches the secondary detect the loss, take the lease in a new term and keep running
//! its guest from the last checkpoint. Then it re-protects the survivor with a new secondary
//! and fails back (`demo/reprotect.rs`). Returns a [`DemoSummary`] or a one-line error.
//!
//! Invariant: every child is killed and reaped on every path out of [`run`] (the `Children`
//! guard), and every wait is bounded by the demo's deadline, so the demo always ends.
//! Every child runs with `--events -`: the demo judges only from their typed milestone
//! records (`colo_runtime::pair::events`, deserialized, never log text parsed back) and from
//! its own clock, and echoes their human log lines prefixed.

mod error;
pub(crate) mod net;

pub use error::DemoError;
pub use net::{Percentiles, run as run_net};

use colo_runtime::pair::events::{Milestone, Record};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod reprotect;

pub use reprotect::ReprotectSummary;

/// The demo's guest disk: each node's image and overlays live in the demo's temp dir, and the
/// counter guest writes one 4 KiB slot of it per step.
pub const DEMO_DISK_SIZE: &str = "4M";

/// What the demo runs with.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Loopback port of the arbiter.
    pub arbiter_port: u16,
    /// Loopback port of the primary's peer listener.
    pub peer_port: u16,
    /// Loopback port where the secondary accepts a new secondary after it took over.
    pub reprotect_port: u16,
    /// Checkpoints to complete before the kill.
    pub checkpoints: u32,
    /// Bound on the whole demo.
    pub timeout: Duration,
    /// The `colo` binary to start the children from.
    pub binary: PathBuf,
    /// Client requests per measured phase of the network demo (`colo demo --net`).
    pub requests: u32,
}

/// The demo's figures.
#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    /// Checkpoints completed by the primary before the kill.
    pub checkpoints: u32,
    /// PVM pause of the pairing's first checkpoint (microseconds): it applies the whole
    /// initial copy on the secondary, so it is reported apart.
    pub first_pause_us: u64,
    /// PVM pause per periodic checkpoint (microseconds, as the primary's node measured it).
    pub pauses_us: Vec<u64>,
    /// Bulk bytes (pages and device state) per periodic checkpoint.
    pub bytes: Vec<u64>,
    /// The last checkpoint the secondary applied before the kill, and the guest step in it.
    pub last_applied: (u64, u64),
    /// The guest step the primary was paused at for that checkpoint.
    pub primary_step_at_last: u64,
    /// From the kill to the secondary's peer-lost / failed-over lines.
    pub kill_to_peer_lost: Duration,
    /// See [`DemoSummary::kill_to_peer_lost`].
    pub kill_to_failed_over: Duration,
    /// The term the secondary runs in after the failover.
    pub term: u64,
    /// Guest steps the survivor reported after the failover.
    pub steps_after: Vec<u64>,
    /// The re-protection phase.
    pub reprotect: Option<ReprotectSummary>,
    /// Disk replication before the kill: guest writes on the primary and the bytes it
    /// forwarded (its last `disk` line), and the checkpoints at which the secondary emptied
    /// its overlays.
    pub disk_writes: u64,
    /// See [`DemoSummary::disk_writes`].
    pub disk_forwarded_bytes: u64,
    /// See [`DemoSummary::disk_writes`].
    pub disk_resets: u64,
    /// Overlay blocks the survivor merged into its parent image at the failover.
    pub disk_merged_blocks: Option<u64>,
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let median = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        writeln!(f, "colo demo: OK")?;
        writeln!(
            f,
            "  checkpoints before the kill: {} (the pairing's first, which applies the initial copy: PVM pause {} us)",
            self.checkpoints, self.first_pause_us
        )?;
        writeln!(
            f,
            "  periodic checkpoints: PVM pause median {} us, max {} us; bulk median {} bytes/checkpoint",
            median(&self.pauses_us),
            self.pauses_us.iter().max().copied().unwrap_or(0),
            median(&self.bytes)
        )?;
        writeln!(
            f,
            "  last checkpoint applied by the secondary: epoch {} at guest step {} (the primary paused at step {})",
            self.last_applied.0, self.last_applied.1, self.primary_step_at_last
        )?;
        writeln!(
            f,
            "  primary killed (SIGKILL): peer lost after {} ms, failed over (lease granted, term {}) after {} ms",
            self.kill_to_peer_lost.as_millis(),
            self.term,
            self.kill_to_failed_over.as_millis()
        )?;
        writeln!(
            f,
            "  disk (virtio-blk, {DEMO_DISK_SIZE}, one 4 KiB slot written per guest step): {} guest writes forwarded ({} bytes) before the kill, overlays emptied at {} checkpoints; survivor merged {} overlay blocks into its parent image",
            self.disk_writes,
            self.disk_forwarded_bytes,
            self.disk_resets,
            self.disk_merged_blocks
                .map_or("no".to_string(), |b| b.to_string())
        )?;
        write!(
            f,
            "  survivor's guest continued: steps {:?} after the failover (from {} at the last checkpoint; the guest checks its disk slots at every step)",
            self.steps_after, self.last_applied.1
        )?;
        if let Some(r) = &self.reprotect {
            write!(f, "\n{r}")?;
        }
        Ok(())
    }
}

/// Kills and reaps every child when dropped.
pub(crate) struct Children(pub(crate) Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Children {
    /// The children still listed, by name, with their process ids (the colo processes
    /// themselves: `ip netns exec` execs them).
    pub(crate) fn named_pids(&self) -> Vec<(&'static str, u32)> {
        self.0
            .iter()
            .map(|(name, child)| (*name, child.id()))
            .collect()
    }

    /// Sends SIGKILL to child `who` without waiting for it: it stays listed, and a later
    /// [`Children::kill`] (or the drop) reaps it.
    pub(crate) fn signal_kill(&mut self, who: &str) -> Result<(), DemoError> {
        let at = self.position(who)?;
        self.0[at].1.kill().map_err(signal_failed("kill", who))
    }

    pub(crate) fn kill(&mut self, who: &str) -> Result<(), DemoError> {
        let at = self.position(who)?;
        let (_, mut child) = self.0.remove(at);
        child.kill().map_err(signal_failed("kill", who))?;
        child.wait().map_err(signal_failed("reap", who))?;
        Ok(())
    }

    fn position(&self, who: &str) -> Result<usize, DemoError> {
        self.0
            .iter()
            .position(|(name, _)| *name == who)
            .ok_or_else(|| DemoError::NoChild(who.to_string()))
    }

    /// A child that exited on its own is a failure of the demo.
    pub(crate) fn check_alive(&mut self) -> Result<(), DemoError> {
        for (who, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(DemoError::ExitedEarly { who, status });
            }
        }
        Ok(())
    }
}

/// The error of signalling (`action`: kill or reap) child `who`.
fn signal_failed(action: &'static str, who: &str) -> impl FnOnce(std::io::Error) -> DemoError {
    let who = who.to_string();
    move |source| DemoError::Signal {
        action,
        who,
        source,
    }
}

/// A line one child printed, and when this process read it.
pub(crate) struct Line {
    pub(crate) who: &'static str,
    pub(crate) text: String,
    pub(crate) at: Instant,
    /// The milestone record on the line, if it is one (`--events -`).
    pub(crate) record: Option<Record>,
}

impl Line {
    /// The milestone on this line if child `who` printed it.
    pub(crate) fn milestone(&self, who: &str) -> Option<&Milestone> {
        match &self.record {
            Some(record) if self.who == who => Some(&record.milestone),
            _ => None,
        }
    }
}

/// `key=value` fields of a log line `<who>: <what> k=v ...`, if it is `what` (`colo bench`
/// still reads its figures this way; the demo reads [`Line::milestone`]).
pub(crate) fn fields(text: &str, who: &str, what: &str) -> Option<BTreeMap<String, String>> {
    let rest = text.strip_prefix(who)?.strip_prefix(": ")?;
    let rest = rest.strip_prefix(what)?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn spawn(
    binary: &PathBuf,
    who: &'static str,
    args: &[String],
    lines: &mpsc::Sender<Line>,
) -> Result<Child, DemoError> {
    spawn_in(None, binary, who, args, &[], lines)
}

/// Starts `binary --events - args` (inside network namespace `netns` through `ip netns exec`,
/// which execs the binary: the child is the colo process itself) with `envs` added to its
/// environment and its lines, with the milestone records on them, sent to `lines`.
pub(crate) fn spawn_in(
    netns: Option<&str>,
    binary: &PathBuf,
    who: &'static str,
    args: &[String],
    envs: &[(&str, &str)],
    lines: &mpsc::Sender<Line>,
) -> Result<Child, DemoError> {
    let mut command = match netns {
        None => Command::new(binary),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary);
            c
        }
    };
    // One pipe for the child's stdout (guest console) and stderr (log lines): its lines come
    // in the order it wrote them.
    let pipe_error = |action| move |source| DemoError::Pipe { action, source };
    let (pipe, writer) = std::io::pipe().map_err(pipe_error("create"))?;
    let stdout = writer.try_clone().map_err(pipe_error("clone"))?;
    let child = command
        .args(["--events", "-"])
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(writer)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            who,
            binary: binary.clone(),
            source,
        })?;
    // The parent's copies of the write end are gone with `command`: the reader sees EOF
    // when the child exits.
    drop(command);
    let tx = lines.clone();
    std::thread::spawn(move || {
        for text in BufReader::new(pipe).lines().map_while(Result::ok) {
            let at = Instant::now();
            let record = Record::from_line(&text);
            if tx
                .send(Line {
                    who,
                    text,
                    at,
                    record,
                })
                .is_err()
            {
                return;
            }
        }
    });
    Ok(child)
}

pub(crate) fn require_kvm() -> Result<(), DemoError> {
    let kvm = colo_runtime::vmm::vstate::vm::kvm_device_path();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&kvm)
    {
        Ok(_) => Ok(()),
        Err(source) => Err(DemoError::NoKvm {
            device: kvm.to_string(),
            source,
        }),
    }
}

/// Writes the demo's pair config file (`pair.toml` in its temp dir): the test guest with the
/// primary's disk, the loopback arbiter, host `a` (the primary) and host `b` (the secondary,
/// which accepts a newcomer on `takeover` once it survives). Returns its path.
fn write_pair_config(
    dir: &reprotect::ControlDir,
    arbiter: SocketAddr,
    peer: SocketAddr,
    takeover: SocketAddr,
) -> Result<PathBuf, DemoError> {
    let key_file = dir.key_file();
    let key_file = key_file.display();
    let text = format!(
        r#"# Written by `colo demo`: both nodes of the demo's pair run from this file.
[vm]
guest = "test-guest"
memory_mib = 32

[[vm.disk]]
path = "{primary_disk}"
size = "{DEMO_DISK_SIZE}"

[pair]
arbiter = "{arbiter}"
key_file = "{key_file}"
checkpoint_interval_ms = 500

[host.a]
role = "primary"
listen = "{peer}"
node_id = 1
control = "{primary_ctl}"

[host.b]
role = "secondary"
peer = "{peer}"
listen = "{takeover}"
node_id = 2
control = "{secondary_ctl}"
"#,
        primary_disk = dir.disk("primary").display(),
        primary_ctl = dir.socket("primary").display(),
        secondary_ctl = dir.socket("secondary").display(),
    );
    let path = dir.0.join("pair.toml");
    std::fs::write(&path, text).map_err(|source| DemoError::File {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Runs the demo (see the module doc).
pub fn run(options: &DemoOptions) -> Result<DemoSummary, DemoError> {
    require_kvm()?;
    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (arbiter, peer) = (local(options.arbiter_port), local(options.peer_port));
    let takeover = local(options.reprotect_port);
    for addr in [arbiter, peer, takeover] {
        TcpListener::bind(addr).map_err(|source| DemoError::PortBusy {
            port: addr.port(),
            source,
        })?;
    }
    let deadline = Instant::now() + options.timeout;
    let (tx, rx) = mpsc::channel();
    // Should this process die without its guard running (SIGKILL), the children still end.
    let lifetime = format!("{}", options.timeout.as_secs() + 10);
    // Declared before the children: dropped after they are killed.
    let control = reprotect::ControlDir::create()?;
    let key_file = control.key_file().to_string_lossy().into_owned();
    let mut children = Children(Vec::new());
    let arbiter_args = vec![
        "arbiter".into(),
        "--listen".into(),
        arbiter.to_string(),
        "--key-file".into(),
        key_file.clone(),
        "--run-for".into(),
        lifetime.clone(),
    ];
    children.0.push((
        "arbiter",
        spawn(&options.binary, "arbiter", &arbiter_args, &tx)?,
    ));
    // The two nodes run from one pair config file, as on two hosts; the secondary's own disk
    // copy is a command-line flag overriding the file's (one host here, two images).
    let config = write_pair_config(&control, arbiter, peer, takeover)?;
    println!("[demo] pair config file: {}", config.display());
    let config = config.to_string_lossy().into_owned();
    let primary_args: Vec<String> = ["primary", "--config", &config, "--host", "a"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--run-for".to_string(), lifetime.clone()])
        .collect();
    children.0.push((
        "primary",
        spawn(&options.binary, "primary", &primary_args, &tx)?,
    ));
    let secondary_disk = control.disk("secondary").to_string_lossy().into_owned();
    let secondary_args: Vec<String> = [
        "secondary",
        "--config",
        &config,
        "--host",
        "b",
        "--disk",
        &secondary_disk,
        "--disk-size",
        DEMO_DISK_SIZE,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--run-for".to_string(), lifetime.clone()])
    .collect();
    children.0.push((
        "secondary",
        spawn(&options.binary, "secondary", &secondary_args, &tx)?,
    ));
    let newcomer_lines = tx.clone();
    drop(tx);

    let mut summary = DemoSummary::default();
    let mut paused_steps: BTreeMap<u64, u64> = BTreeMap::new();
    let next = |children: &mut Children, what: &str| -> Result<Line, DemoError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DemoError::Timeout(what.to_string()));
            }
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    // A record says what the log line beside it says: not echoed twice.
                    if line.record.is_none() {
                        println!("[{}] {}", line.who, line.text);
                    }
                    if line.who != "arbiter"
                        && (line.text.contains("PANIC") || line.text.contains("panicked"))
                    {
                        return Err(DemoError::Panicked(line.who));
                    }
                    return Ok(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => children.check_alive()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(DemoError::ChildrenEnded(what.to_string()));
                }
            }
        }
    };

    // Phase 1: paired, checkpoints complete on both sides. The two processes' lines arrive
    // in either order, so wait until the secondary applied the last checkpoint the primary
    // completed.
    let mut last_done = 0;
    while summary.checkpoints < options.checkpoints || summary.last_applied.0 < last_done {
        let line = next(&mut children, "the checkpoints")?;
        match (line.milestone("primary"), line.milestone("secondary")) {
            (Some(Milestone::Paused { epoch, step, .. }), _) => {
                paused_steps.insert(*epoch, *step);
            }
            (
                Some(Milestone::CheckpointDone {
                    epoch,
                    pause_us,
                    bytes,
                    ..
                }),
                _,
            ) => {
                summary.checkpoints += 1;
                last_done = *epoch;
                if summary.checkpoints == 1 {
                    summary.first_pause_us = *pause_us;
                } else {
                    summary.pauses_us.push(*pause_us);
                    summary.bytes.push(*bytes);
                }
            }
            (
                Some(Milestone::Disk {
                    guest_writes,
                    forwarded_bytes,
                    ..
                }),
                _,
            ) => {
                summary.disk_writes = *guest_writes;
                summary.disk_forwarded_bytes = *forwarded_bytes;
            }
            (_, Some(Milestone::Applied { epoch, step, .. })) => {
                summary.last_applied = (*epoch, *step);
            }
            (_, Some(Milestone::DiskReset { .. })) => summary.disk_resets += 1,
            _ => {}
        }
    }

    // Phase 2: kill the primary; the secondary must take over.
    println!("[demo] killing the primary (SIGKILL)");
    // The clock starts at the signal: reaping a VM process can take longer than the
    // peer's failover (its exit tears down the VM), which once made this read 0 ms.
    let killed = Instant::now();
    children.kill("primary")?;
    loop {
        let line = next(&mut children, "the failover")?;
        match line.milestone("secondary") {
            // A checkpoint fully received before the kill may still be applied.
            Some(Milestone::Applied { epoch, step, .. }) => {
                summary.last_applied = (*epoch, *step);
            }
            Some(Milestone::PeerLost { .. }) => summary.kill_to_peer_lost = killed.elapsed(),
            Some(Milestone::DiskMerged { blocks, .. }) => {
                summary.disk_merged_blocks = Some(*blocks);
            }
            Some(Milestone::FailedOver { term, .. }) => {
                summary.kill_to_failed_over = killed.elapsed();
                summary.term = *term;
                break;
            }
            _ => {}
        }
    }

    // The survivor's state is the primary's at the pause of the last checkpoint it applied.
    summary.primary_step_at_last = paused_steps
        .get(&summary.last_applied.0)
        .copied()
        .unwrap_or(0);
    if summary.primary_step_at_last != summary.last_applied.1 {
        return Err(DemoError::StepMismatch {
            epoch: summary.last_applied.0,
            held: summary.last_applied.1,
            paused: summary.primary_step_at_last,
        });
    }

    // Phase 3: the survivor's guest keeps counting from the last checkpoint.
    while summary.steps_after.len() < 3 {
        let line = next(&mut children, "the survivor's progress")?;
        if let Some(Milestone::DiskMerged { blocks, .. }) = line.milestone("secondary") {
            summary.disk_merged_blocks = Some(*blocks);
        }
        if let Some(Milestone::GuestStep { step, .. }) = line.milestone("secondary") {
            let step = *step;
            let floor = summary
                .steps_after
                .last()
                .copied()
                .unwrap_or(summary.last_applied.1);
            if step <= floor {
                return Err(DemoError::Stalled { step, floor });
            }
            summary.steps_after.push(step);
        }
    }

    // Phase 4: re-protect the survivor with a new secondary, then fail back to it.
    let phase = reprotect::Phase {
        binary: &options.binary,
        arbiter,
        takeover,
        dir: &control,
        lifetime: &lifetime,
        lines: &newcomer_lines,
    };
    summary.reprotect = Some(reprotect::run(&phase, &mut children, &next)?);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestone_fields_parse_only_the_named_line() {
        let f = fields(
            "secondary: applied epoch=4 step=1200 pages_copied=70",
            "secondary",
            "applied",
        )
        .unwrap();
        assert_eq!(f["epoch"], "4");
        assert_eq!(f["step"], "1200");
        assert!(fields("secondary: applied-x epoch=4", "secondary", "applied").is_none());
        assert!(fields("primary: applied epoch=4", "secondary", "applied").is_none());
    }

    #[test]
    fn a_line_yields_its_milestone_only_for_the_child_that_printed_it() {
        let record = Record {
            milestone: Milestone::FailedOver {
                term: 3,
                reason: "PeerLost".into(),
                step: 10,
            },
            role: "secondary".into(),
        };
        let text = record.to_line();
        let line = Line {
            who: "newcomer",
            record: Record::from_line(&text),
            text,
            at: Instant::now(),
        };
        assert_eq!(line.milestone("newcomer"), Some(&record.milestone));
        assert_eq!(line.milestone("secondary"), None);
        let log = Line {
            who: "newcomer",
            text: "secondary: failed-over term=3".into(),
            at: Instant::now(),
            record: None,
        };
        assert_eq!(log.milestone("newcomer"), None);
    }
}
