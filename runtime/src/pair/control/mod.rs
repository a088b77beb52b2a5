//! The control socket of a running node: what an operator asks it (QEMU's QMP commands for
//! COLO: `query-colo-status`, `x-colo-lost-heartbeat`, `migrate-set-parameters
//! x-checkpoint-delay`, and re-protection), spoken as JSON, one request and one response per
//! line over a Unix socket.
//!
//! This file owns the protocol: [`Request`], a serde type (internally tagged by `cmd`, names
//! in kebab case), and its parsing (every malformed line becomes a [`ControlError`], never a
//! panic; an unknown command is named in the error, a bad argument names its command);
//! `response.rs` owns the answers ([`Response`], `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`). `server.rs` owns the
//! socket (stale-file replacement, removal on exit) and hands requests to the node loop as
//! [`ControlCall`]s: the loop owns the `Node`, the control thread never touches it.
//! `client.rs` is the `colo status|checkpoint|...` side.
//!
//! Request lines:
//!
//! ```text
//! {"cmd":"status"}
//! {"cmd":"checkpoint"}
//! {"cmd":"failover"}
//! {"cmd":"set-checkpoint-interval","ms":200}
//! {"cmd":"reprotect"}
//! {"cmd":"set-digests","on":true}
//! {"cmd":"shutdown"}
//! ```
//!
//! `set-digests` (an addition to QEMU's set) turns the per-checkpoint memory digest log lines
//! on or off on a live node, so a re-protection can be verified without paying the digest's
//! pass over memory during the whole earlier pairing.

mod client;
mod response;
mod server;

pub use client::{CallError, call};
pub use response::{
    Answer, Auth, CheckpointAnswer, LastCheckpoint, Peer, Refusal, Reprotect, Response, Status,
};
pub use server::{ControlServer, ControlServerError, default_path};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::mpsc;

/// The longest request line accepted (a request is a few dozen bytes; a longer line is an
/// error, not an allocation).
pub const MAX_REQUEST_BYTES: usize = 4096;

/// One operator request: on the wire, a JSON object whose `cmd` names the variant in kebab
/// case, with the variant's fields beside it (other fields are ignored, so an older node
/// accepts a newer operator's extra hints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The node's state and counters.
    Status,
    /// Take a checkpoint now (a primary-side node that is paired).
    Checkpoint,
    /// Stop depending on the peer now (QEMU's `x-colo-lost-heartbeat`).
    Failover,
    /// Change the periodic checkpoint interval (milliseconds, > 0).
    SetCheckpointInterval {
        /// The new interval.
        ms: u64,
    },
    /// Arm a solo survivor to accept the next secondary.
    Reprotect,
    /// Log (or stop logging) a memory digest at every checkpoint.
    SetDigests {
        /// On or off.
        on: bool,
    },
    /// Say goodbye to the peer and exit.
    Shutdown,
}

/// The command names, in the order the usage text lists them.
pub const COMMANDS: [&str; 7] = [
    "status",
    "checkpoint",
    "failover",
    "set-checkpoint-interval",
    "reprotect",
    "set-digests",
    "shutdown",
];

/// Why a request line was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but not an object with a string `cmd`.
    #[error("a request is a JSON object with a string \"cmd\" field")]
    NoCommand,
    /// A `cmd` this node does not know.
    #[error(
        "unknown command \"{0}\" (known: status, checkpoint, failover, set-checkpoint-interval, reprotect, set-digests, shutdown)"
    )]
    Unknown(String),
    /// A known command with a missing or bad argument.
    #[error("{command}: {why}")]
    BadArgument {
        /// The command.
        command: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The line is longer than [`MAX_REQUEST_BYTES`].
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
}

impl Request {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Request, ControlError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| ControlError::Malformed(e.to_string()))?;
        let cmd = value
            .get("cmd")
            .and_then(Value::as_str)
            .ok_or(ControlError::NoCommand)?;
        let Some(command) = COMMANDS.iter().copied().find(|c| *c == cmd) else {
            return Err(ControlError::Unknown(cmd.to_string()));
        };
        let bad = |why: String| ControlError::BadArgument { command, why };
        let request: Request = serde_json::from_value(value.clone()).map_err(|e| {
            bad(match command {
                "set-checkpoint-interval" => {
                    format!("needs \"ms\", a whole number of milliseconds greater than 0 ({e})")
                }
                "set-digests" => format!("needs \"on\": true or false ({e})"),
                _ => e.to_string(),
            })
        })?;
        if request == (Request::SetCheckpointInterval { ms: 0 }) {
            return Err(bad("\"ms\" must be greater than 0".to_string()));
        }
        Ok(request)
    }

    /// The request as one JSON line (without the newline).
    pub fn to_line(self) -> String {
        serde_json::to_string(&self).expect("a request always serializes")
    }

    /// The command's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Checkpoint => "checkpoint",
            Request::Failover => "failover",
            Request::SetCheckpointInterval { .. } => "set-checkpoint-interval",
            Request::Reprotect => "reprotect",
            Request::SetDigests { .. } => "set-digests",
            Request::Shutdown => "shutdown",
        }
    }
}

/// A request handed to the node loop, with where its response goes.
#[derive(Debug)]
pub struct ControlCall {
    /// The request.
    pub request: Request,
    /// Where the answer goes.
    pub reply: mpsc::Sender<Response>,
}

/// A refusal, `{"ok":false,"error":why}` on the wire.
pub fn error_response(why: &str) -> Response {
    Response::refused(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips_through_its_line() {
        for request in [
            Request::Status,
            Request::Checkpoint,
            Request::Failover,
            Request::SetCheckpointInterval { ms: 250 },
            Request::Reprotect,
            Request::SetDigests { on: true },
            Request::SetDigests { on: false },
            Request::Shutdown,
        ] {
            assert_eq!(Request::parse(&request.to_line()), Ok(request));
            assert!(COMMANDS.contains(&request.name()));
        }
    }

    #[test]
    fn malformed_lines_are_typed_errors() {
        assert!(matches!(
            Request::parse("{\"cmd\":"),
            Err(ControlError::Malformed(_))
        ));
        assert!(matches!(
            Request::parse(""),
            Err(ControlError::Malformed(_))
        ));
        assert_eq!(Request::parse("[1,2]"), Err(ControlError::NoCommand));
        assert_eq!(Request::parse("{\"cmd\":7}"), Err(ControlError::NoCommand));
        assert_eq!(Request::parse("\"status\""), Err(ControlError::NoCommand));
        assert_eq!(
            Request::parse("{\"cmd\":\"status\",\"extra\":1}"),
            Ok(Request::Status)
        );
    }

    #[test]
    fn lines_keep_the_documented_form() {
        assert_eq!(Request::Status.to_line(), r#"{"cmd":"status"}"#);
        assert_eq!(
            Request::SetCheckpointInterval { ms: 200 }.to_line(),
            r#"{"cmd":"set-checkpoint-interval","ms":200}"#
        );
        assert_eq!(
            Request::SetDigests { on: true }.to_line(),
            r#"{"cmd":"set-digests","on":true}"#
        );
    }

    #[test]
    fn unknown_command_is_named_in_the_error() {
        let err = Request::parse("{\"cmd\":\"reboot\"}").unwrap_err();
        assert_eq!(err, ControlError::Unknown("reboot".into()));
        assert!(err.to_string().contains("\"reboot\""));
    }

    #[test]
    fn checkpoint_interval_needs_a_positive_whole_ms() {
        let parse = |line: &str| Request::parse(line);
        assert_eq!(
            parse("{\"cmd\":\"set-checkpoint-interval\",\"ms\":100}"),
            Ok(Request::SetCheckpointInterval { ms: 100 })
        );
        for bad in [
            "{\"cmd\":\"set-checkpoint-interval\"}",
            "{\"cmd\":\"set-checkpoint-interval\",\"ms\":0}",
            "{\"cmd\":\"set-checkpoint-interval\",\"ms\":-5}",
            "{\"cmd\":\"set-checkpoint-interval\",\"ms\":1.5}",
            "{\"cmd\":\"set-checkpoint-interval\",\"ms\":\"100\"}",
            "{\"cmd\":\"set-digests\"}",
            "{\"cmd\":\"set-digests\",\"on\":1}",
        ] {
            assert!(
                matches!(parse(bad), Err(ControlError::BadArgument { .. })),
                "{bad} must be refused"
            );
        }
    }
}
