//! A node's milestone stream: what happened to the pair (checkpoints taken and applied, the
//! peer lost, failovers, re-protection, disk replication; and the arbiter's leases), as
//! typed [`Milestone`]s written one
//! JSON object per line where the operator's global `--events DEST` says (`-`: stdout, else
//! a file, appended to). Programs (`colo demo`, the runtime's tests, an operator's scripts)
//! read this stream with [`Record::from_line`] instead of parsing the human log lines back;
//! the human log (`crate::logging`) keeps saying the same things for people.
//!
//! Invariant: every record is one line, written with one `write` call (so it never
//! interleaves with the guest console sharing stdout, nor with another record), and starts
//! with `{"event":"<kind>"`, which is what [`Record::from_line`] looks for; a record's fields
//! are only ever added to (a reader ignores fields it does not know), never renamed, so the
//! stream is an API checked at compile time on both ends. Without `--events` nothing is
//! written and emitting costs one atomic load.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One thing that happened to a node. Serialized internally tagged: `{"event":"paused",...}`
/// (the kebab-case name the human log line uses), followed by the variant's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Milestone {
    /// The node paired with its peer.
    Paired {
        /// The peer's node id.
        peer: u64,
        /// The pairing's term.
        term: u64,
        /// The node's side in the pairing: `Primary` or `Secondary`.
        side: String,
    },
    /// A primary's VM is paused for checkpoint `epoch` with its dirty pages collected: the
    /// state the secondary holds once it applied `epoch`.
    Paused {
        /// The checkpoint.
        epoch: u64,
        /// The counter workload's step at the pause (0 without it).
        step: u64,
        /// Dirty pages collected.
        dirty_pages: u64,
        /// The memory digest (hex), with digests on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        /// The disk's digest as the VM sees it (hex), with digests on and a disk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_digest: Option<String>,
        /// Why the disk digest could not be computed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_digest_error: Option<String>,
    },
    /// A secondary's VM now holds checkpoint `epoch`.
    Applied {
        /// The checkpoint.
        epoch: u64,
        /// The counter workload's step in it.
        step: u64,
        /// Pages copied from the RAM cache into the VM.
        pages_copied: u64,
        /// The memory digest (hex), with digests on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        /// How long the apply took (microseconds).
        apply_us: u64,
    },
    /// The secondary dropped what its guest printed since the last apply (rolled back with
    /// it); only written when there was something to drop.
    ConsoleDiscarded {
        /// Bytes dropped.
        bytes: u64,
    },
    /// The primary completed checkpoint `epoch` (the secondary acknowledged it).
    CheckpointDone {
        /// The checkpoint.
        epoch: u64,
        /// Why it was taken (`Periodic`, `Miscompare`, ...).
        reason: String,
        /// How long the primary's VM was paused (microseconds).
        pause_us: u64,
        /// Pages sent.
        pages: u64,
        /// Bulk bytes sent (pages and device state).
        bytes: u64,
        /// The counter workload's step after it.
        step: u64,
    },
    /// The secondary acknowledged checkpoint `epoch`.
    CheckpointApplied {
        /// The checkpoint.
        epoch: u64,
        /// How long the secondary's VM was paused (microseconds).
        pause_us: u64,
        /// Pages received.
        pages: u64,
        /// Bulk bytes received.
        bytes: u64,
        /// The counter workload's step after it.
        step: u64,
    },
    /// A checkpoint was abandoned.
    CheckpointAborted {
        /// The checkpoint.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// A checkpoint phase is taking too long.
    CheckpointStuck {
        /// The checkpoint.
        epoch: u64,
        /// The phase it is stuck in.
        phase: String,
    },
    /// A VM command failed.
    VmFailed {
        /// The checkpoint it belonged to.
        epoch: u64,
        /// The command.
        command: String,
    },
    /// The peer was silent too long.
    PeerLost {
        /// For how long (milliseconds).
        silent_ms: u64,
        /// The peer had closed the link and did not come back within the closed-link grace
        /// (`false`: the heartbeat's silence rule declared it).
        #[serde(default)]
        link_closed: bool,
    },
    /// The node asked the arbiter for the lease of `term` to take over.
    TakeoverStarted {
        /// The new term.
        term: u64,
        /// The node's role before.
        from: String,
        /// Why.
        reason: String,
        /// The counter workload's step.
        step: u64,
    },
    /// The node took over: it serves the guest alone in `term`.
    FailedOver {
        /// The new term.
        term: u64,
        /// Why.
        reason: String,
        /// The counter workload's step.
        step: u64,
    },
    /// The survivor released the guest console it had held since the last apply.
    ConsoleReleased {
        /// Bytes released.
        bytes: u64,
    },
    /// Another node holds a newer term: this one stops its VM.
    Deposed {
        /// The newer term.
        term: u64,
    },
    /// The node stopped (shutdown).
    Stopped,
    /// The node began the full copy of a re-protection (or first pairing).
    SyncStarted {
        /// The pairing's term.
        term: u64,
        /// Memory bytes to copy.
        memory_bytes: u64,
        /// Disk bytes to copy.
        disk_bytes: u64,
    },
    /// The primary side wrote the whole full copy on the link.
    SyncSent {
        /// Guest memory bytes copied (zero pages included).
        memory_bytes: u64,
        /// Disk bytes sent.
        disk_bytes: u64,
        /// Pages of the memory copy sent as zero pages (marked, no bulk): the link carried
        /// `memory_bytes - zero_pages * 4096` bytes of pages. 0 in streams of older nodes.
        #[serde(default)]
        zero_pages: u64,
    },
    /// A re-protection completed: the pair protects the guest again from `epoch`.
    Reprotected {
        /// The pairing's term.
        term: u64,
        /// Its first checkpoint.
        epoch: u64,
    },
    /// A re-protection failed.
    ReprotectFailed {
        /// The term.
        term: u64,
    },
    /// The survivor was armed to accept a new secondary on `listen`.
    ReprotectArmed {
        /// The takeover address newcomers connect to.
        listen: String,
        /// Armed by `--auto-reprotect` (not by a control command).
        auto: bool,
    },
    /// A newcomer's connection was refused (the node was not free to pair).
    NewcomerRefused {
        /// The newcomer's address.
        from: String,
        /// The node's mode.
        mode: String,
    },
    /// The peer link went down.
    LinkDown {
        /// Why.
        reason: String,
        /// The peer's end closed it (an end of stream or a reset), rather than the path
        /// failing or this node closing it.
        #[serde(default)]
        peer_closed: bool,
    },
    /// The survivor claimed the client link (announced the guest's MACs).
    ClaimClientLink {
        /// The term.
        term: u64,
        /// What it announced, per tap (as the log line says).
        announced: String,
    },
    /// The counter workload's progress (periodic).
    GuestStep {
        /// The step.
        step: u64,
        /// The node's mode (`Paired`, `Solo`).
        mode: String,
        /// The term.
        term: u64,
    },
    /// The replicated disk's counters (periodic, with a disk).
    Disk {
        /// Guest write requests.
        guest_writes: u64,
        /// Guest read requests.
        guest_reads: u64,
        /// Bytes forwarded to the secondary.
        forwarded_bytes: u64,
        /// Writes applied from the peer.
        peer_writes: u64,
        /// Disk commands executed.
        commands: u64,
        /// Disk commands that failed.
        command_errors: u64,
        /// Stale writes ignored.
        stale: u64,
        /// Blocks in the hidden overlay.
        hidden_blocks: u64,
        /// Blocks in the active overlay.
        active_blocks: u64,
    },
    /// `colo arbiter` serves leases on `addr`.
    Listening {
        /// The address.
        addr: String,
    },
    /// The arbiter granted (or renewed) the lease of `term` to `node`.
    LeaseGranted {
        /// The term.
        term: u64,
        /// The node.
        node: u64,
        /// For how long (milliseconds).
        valid_for_ms: u64,
    },
    /// The arbiter refused `node` the lease of `term`: `holder` holds `current_term`.
    LeaseDenied {
        /// The term asked for.
        term: u64,
        /// The node that asked.
        node: u64,
        /// The holder.
        holder: u64,
        /// The holder's term.
        current_term: u64,
    },
    /// The secondary emptied its overlays: its disk view is the primary's as of `epoch`.
    DiskReset {
        /// The checkpoint.
        epoch: u64,
        /// The disk digest (hex), with digests on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_digest: Option<String>,
    },
    /// The survivor merged its overlay blocks into its parent image at the failover.
    DiskMerged {
        /// Blocks merged.
        blocks: u64,
        /// The disk digest afterwards (hex).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_digest: Option<String>,
    },
}

impl Milestone {
    /// The kebab-case name (`"checkpoint-done"`), as in the record's `event` field.
    pub fn name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map
                .get("event")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        }
    }
}

/// One line of the stream: the milestone and the node (`role`: `primary`, `secondary`, as
/// its log lines name it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What happened.
    #[serde(flatten)]
    pub milestone: Milestone,
    /// The node's name.
    pub role: String,
}

/// What a record line starts with.
const MARK: &str = "{\"event\":";

impl Record {
    /// The record in `line`, if it holds one. Text before the record is skipped (a guest
    /// console line the node's record was written after, on a shared stdout), as is text
    /// after it; a line without a well-formed record is `None`.
    pub fn from_line(line: &str) -> Option<Record> {
        Record::split(line).1
    }

    /// The text before the record in `line` (all of it without one) and the record: a
    /// reader of a stdout shared with the guest console keeps the console's part.
    pub fn split(line: &str) -> (&str, Option<Record>) {
        let Some(at) = line.find(MARK) else {
            return (line, None);
        };
        let mut values = serde_json::Deserializer::from_str(&line[at..]).into_iter::<Record>();
        match values.next() {
            Some(Ok(record)) => (&line[..at], Some(record)),
            _ => (line, None),
        }
    }

    /// The record as one line (without the newline).
    pub fn to_line(&self) -> String {
        // A record of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where the stream goes (`--events`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsTo {
    /// The process's stdout (shared with the guest console, line by line).
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

impl EventsTo {
    /// `-` is stdout, anything else a file path.
    pub fn parse(dest: &str) -> EventsTo {
        if dest == "-" {
            EventsTo::Stdout
        } else {
            EventsTo::File(PathBuf::from(dest))
        }
    }
}

/// Why the stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The events file could not be opened for appending.
    #[error("--events {}: cannot open for appending: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The stream was already set up in this process.
    #[error("the event stream is already set up")]
    AlreadySet,
}

/// A destination the records are written to.
pub struct Sink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// A sink writing to `to`.
    pub fn open(to: &EventsTo) -> Result<Sink, EventsError> {
        let out: Box<dyn Write + Send> = match to {
            EventsTo::Stdout => Box::new(std::io::stdout()),
            EventsTo::File(path) => Box::new(open_append(path)?),
        };
        Ok(Sink::new(out))
    }

    /// A sink writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Sink {
        Sink {
            out: Mutex::new(out),
        }
    }

    /// Writes one record line (best effort: a closed stdout or a full disk must not stop
    /// the node; the human log still has the event).
    pub fn write(&self, role: &str, milestone: Milestone) {
        let record = Record {
            milestone,
            role: role.to_string(),
        };
        let mut line = record.to_line();
        line.push('\n');
        let mut out = self.out.lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, EventsError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| EventsError::Open {
            path: path.to_path_buf(),
            source,
        })
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets up the process's stream (once, like the log subscriber).
pub fn init(to: &EventsTo) -> Result<(), EventsError> {
    let sink = Sink::open(to)?;
    SINK.set(sink).map_err(|_| EventsError::AlreadySet)
}

/// Writes `milestone` of node `role` to the process's stream, if one was set up.
pub fn emit(role: &str, milestone: Milestone) {
    if let Some(sink) = SINK.get() {
        sink.write(role, milestone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn applied() -> Milestone {
        Milestone::Applied {
            epoch: 4,
            step: 1200,
            pages_copied: 70,
            digest: Some("0badcafe".into()),
            apply_us: 900,
        }
    }

    #[test]
    fn a_written_record_reads_back_as_the_same_milestone_and_role() {
        let shared = Shared::default();
        let sink = Sink::new(Box::new(shared.clone()));
        sink.write("secondary", applied());
        sink.write("primary", Milestone::Stopped);
        let text = String::from_utf8(shared.0.lock().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "one line per record: {text:?}");
        assert!(
            lines[0].starts_with("{\"event\":\"applied\","),
            "{}",
            lines[0]
        );
        let first = Record::from_line(lines[0]).unwrap();
        assert_eq!(first.role, "secondary");
        assert_eq!(first.milestone, applied());
        let second = Record::from_line(lines[1]).unwrap();
        assert_eq!(
            (second.role.as_str(), second.milestone),
            ("primary", Milestone::Stopped)
        );
    }

    #[test]
    fn a_record_is_found_after_console_text_and_before_trailing_text() {
        let line = Record {
            milestone: Milestone::FailedOver {
                term: 2,
                reason: "PeerLost".into(),
                step: 77,
            },
            role: "secondary".into(),
        }
        .to_line();
        let glued = format!("colo-guest: step 76{line}trailing console bytes");
        let (console, record) = Record::split(&glued);
        assert_eq!(console, "colo-guest: step 76");
        let record = record.unwrap();
        assert_eq!(record.milestone.name(), "failed-over");
        assert!(matches!(
            record.milestone,
            Milestone::FailedOver {
                term: 2,
                step: 77,
                ..
            }
        ));
    }

    #[test]
    fn lines_without_a_well_formed_record_are_none() {
        assert_eq!(
            Record::from_line("secondary: applied epoch=4 step=1200"),
            None
        );
        assert_eq!(Record::from_line("{\"event\":\"applied\",\"epoch\":"), None);
        assert_eq!(
            Record::from_line("{\"event\":\"no-such-kind\",\"role\":\"p\"}"),
            None
        );
        assert_eq!(Record::from_line("{\"other\":1}"), None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_absent_digests_are_none() {
        let line = r#"{"event":"paused","epoch":3,"step":9,"dirty_pages":5,"new_field":true,"role":"primary"}"#;
        let record = Record::from_line(line).unwrap();
        assert_eq!(
            record.milestone,
            Milestone::Paused {
                epoch: 3,
                step: 9,
                dirty_pages: 5,
                digest: None,
                disk_digest: None,
                disk_digest_error: None,
            }
        );
    }

    #[test]
    fn dash_is_stdout_and_anything_else_a_file() {
        assert_eq!(EventsTo::parse("-"), EventsTo::Stdout);
        assert_eq!(
            EventsTo::parse("/var/log/colo/events.jsonl"),
            EventsTo::File("/var/log/colo/events.jsonl".into())
        );
    }

    #[test]
    fn an_unopenable_events_file_is_a_clear_error() {
        let err = Sink::open(&EventsTo::File("/nonexistent-dir/events".into()))
            .expect_err("a missing directory cannot hold the file");
        let text = err.to_string();
        assert!(text.contains("--events /nonexistent-dir/events"), "{text}");
        assert!(text.contains("cannot open"), "{text}");
    }
}
