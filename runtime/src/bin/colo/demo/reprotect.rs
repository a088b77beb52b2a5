//! `colo demo`'s re-protection phase, after the failover: the survivor (the former secondary,
//! now primary of term 2 and solo) is armed over its control socket (`reprotect`, and
//! `set-digests` so its checkpoint pauses log a memory digest), a fresh `colo secondary`
//! (node 3, the "newcomer") is started against the survivor's takeover address, and the demo
//! waits for the full copy and several checkpoints, comparing the newcomer's memory digest
//! after each apply with the survivor's at that checkpoint's pause. Then, a second failover
//! back: the survivor is killed and the newcomer must take over in term 3.
//!
//! Invariant: the phase succeeds only if at least [`COMPARED`] checkpoints of the new pairing
//! were compared and every compared digest was equal; one mismatch is an error. Like the rest
//! of the demo, every wait is bounded by the demo's deadline (through `next`).

use super::{Children, DemoError, Line, spawn};
use colo_runtime::pair::control::{Request, Response, call};
use colo_runtime::pair::events::Milestone;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Checkpoints of the new pairing whose digests must match.
pub const COMPARED: usize = 3;

/// A temp dir for the children's control sockets, disks and the pair key, removed with them.
#[derive(Debug)]
pub struct ControlDir(pub PathBuf);

impl ControlDir {
    /// Creates `colo-demo-<pid>` under the temp dir, with a fresh pair key in it.
    pub fn create() -> Result<ControlDir, DemoError> {
        let dir = std::env::temp_dir().join(format!("colo-demo-{}", std::process::id()));
        ControlDir::create_at(dir)
    }

    /// Creates `dir`, with a fresh pair key in it.
    pub fn create_at(dir: PathBuf) -> Result<ControlDir, DemoError> {
        std::fs::create_dir_all(&dir).map_err(|source| DemoError::File {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let dir = ControlDir(dir);
        // A key left by an earlier process of the same pid is replaced, never reused.
        let _ = std::fs::remove_file(dir.key_file());
        colo_runtime::pair::peer::auth::write_key_file(&dir.key_file())?;
        Ok(dir)
    }

    /// The pair key every child is started with (`--key-file`).
    pub fn key_file(&self) -> PathBuf {
        self.0.join("pair.key")
    }

    /// The socket of `who`.
    pub fn socket(&self, who: &str) -> PathBuf {
        self.0.join(format!("{who}.sock"))
    }

    /// The disk image of `who` (its overlays sit beside it).
    pub fn disk(&self, who: &str) -> PathBuf {
        self.0.join(format!("{who}.img"))
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the phase measured.
#[derive(Clone, Debug, Default)]
pub struct ReprotectSummary {
    /// From `colo reprotect` to the survivor's `sync-sent` (the whole memory on the link).
    pub to_synced: Duration,
    /// Memory bytes of the full copy (zero pages included).
    pub sync_bytes: u64,
    /// Pages of it sent as zero pages (no bulk).
    pub sync_zero_pages: u64,
    /// Compared checkpoints: (epoch, digest) equal on both sides.
    pub compared: Vec<(u64, String)>,
    /// The second failover: survivor killed -> newcomer failed over, and its term.
    pub failback: Option<(Duration, u64)>,
}

impl std::fmt::Display for ReprotectSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let epochs: Vec<String> = self.compared.iter().map(|(e, _)| e.to_string()).collect();
        writeln!(
            f,
            "  re-protected: survivor armed over its control socket, newcomer (node 3) got the full copy ({} bytes, {} of its pages sent as zero pages) {} ms after `reprotect`",
            self.sync_bytes,
            self.sync_zero_pages,
            self.to_synced.as_millis()
        )?;
        write!(
            f,
            "  newcomer's memory digest equals the survivor's at checkpoints {} (last {})",
            epochs.join(", "),
            self.compared.last().map_or("-", |(_, d)| d.as_str())
        )?;
        if let Some((took, term)) = self.failback {
            write!(
                f,
                "\n  survivor killed (SIGKILL): newcomer failed over (lease granted, term {term}) after {} ms",
                took.as_millis()
            )?;
        }
        Ok(())
    }
}

/// Where the phase runs.
pub struct Phase<'a> {
    /// The `colo` binary.
    pub binary: &'a PathBuf,
    /// The arbiter.
    pub arbiter: SocketAddr,
    /// The survivor's takeover address (its `--listen`).
    pub takeover: SocketAddr,
    /// The control sockets.
    pub dir: &'a ControlDir,
    /// The children's lifetime (`--run-for`).
    pub lifetime: &'a str,
    /// Where children's lines go.
    pub lines: &'a mpsc::Sender<Line>,
}

fn ask(path: &Path, request: Request) -> Result<Response, DemoError> {
    let response = call(path, request, Duration::from_secs(10))?;
    if !response.ok() {
        return Err(DemoError::Refused {
            command: request.name(),
            answer: response.render(),
        });
    }
    Ok(response)
}

/// Prints the node's status as `colo status` would, prefixed.
fn show_status(who: &str, path: &Path) -> Result<(), DemoError> {
    let status = ask(path, Request::Status)?;
    for line in status.render().lines() {
        println!("[demo] {who} status: {line}");
    }
    Ok(())
}

/// Runs the phase (see the module doc).
pub fn run(
    phase: &Phase<'_>,
    children: &mut Children,
    next: &dyn Fn(&mut Children, &str) -> Result<Line, DemoError>,
) -> Result<ReprotectSummary, DemoError> {
    let survivor_ctl = phase.dir.socket("secondary");
    show_status("survivor", &survivor_ctl)?;
    println!("[demo] colo set digests on; colo reprotect (survivor's control socket)");
    ask(&survivor_ctl, Request::SetDigests { on: true })?;
    ask(&survivor_ctl, Request::Reprotect)?;
    let armed = Instant::now();
    let newcomer_ctl = phase.dir.socket("newcomer");
    let newcomer_disk = phase.dir.disk("newcomer");
    let args: Vec<String> = [
        "secondary",
        "--peer",
        &phase.takeover.to_string(),
        "--node-id",
        "3",
        "--arbiter",
        &phase.arbiter.to_string(),
        "--key-file",
        &phase.dir.key_file().to_string_lossy(),
        "--run-for",
        phase.lifetime,
        "--digests",
        "--control",
        &newcomer_ctl.to_string_lossy(),
        "--disk",
        &newcomer_disk.to_string_lossy(),
        "--disk-size",
        super::DEMO_DISK_SIZE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!("[demo] starting a new secondary (node 3) against the survivor");
    children.0.push((
        "newcomer",
        spawn(phase.binary, "newcomer", &args, phase.lines)?,
    ));

    let mut summary = ReprotectSummary::default();
    let mut survivor: BTreeMap<u64, String> = BTreeMap::new();
    let mut newcomer: BTreeMap<u64, String> = BTreeMap::new();
    while summary.compared.len() < COMPARED {
        let line = next(children, "the re-protection's checkpoints")?;
        let (map, epoch, digest) = match (line.milestone("secondary"), line.milestone("newcomer")) {
            (
                Some(Milestone::SyncSent {
                    memory_bytes,
                    zero_pages,
                    ..
                }),
                _,
            ) => {
                summary.to_synced = armed.elapsed();
                summary.sync_bytes = *memory_bytes;
                summary.sync_zero_pages = *zero_pages;
                continue;
            }
            (Some(Milestone::Paused { epoch, digest, .. }), _) => (&mut survivor, *epoch, digest),
            (_, Some(Milestone::Applied { epoch, digest, .. })) => (&mut newcomer, *epoch, digest),
            _ => continue,
        };
        let Some(digest) = digest.clone() else {
            continue;
        };
        map.insert(epoch, digest);
        if let (Some(a), Some(b)) = (survivor.get(&epoch), newcomer.get(&epoch)) {
            if a != b {
                return Err(DemoError::DigestMismatch {
                    epoch,
                    newcomer: b.clone(),
                    survivor: a.clone(),
                });
            }
            summary.compared.push((epoch, a.clone()));
        }
    }
    show_status("survivor", &survivor_ctl)?;

    println!("[demo] killing the survivor (SIGKILL): the newcomer must take over");
    // The clock starts at the signal: reaping a VM process can take longer than the
    // peer's failover (its exit tears down the VM), which once made this read 0 ms.
    let killed = Instant::now();
    children.kill("secondary")?;
    loop {
        let line = next(children, "the second failover")?;
        if let Some(Milestone::FailedOver { term, .. }) = line.milestone("newcomer") {
            summary.failback = Some((killed.elapsed(), *term));
            break;
        }
    }
    show_status("newcomer", &newcomer_ctl)?;
    Ok(summary)
}
