//! The control socket's answers as serde types: [`Response`], what a node sends back for one
//! [`Request`], and its rendering for a person (`colo status` as a table, other answers as
//! their message).
//!
//! On the wire an answer is one JSON object: `{"ok":false,"error":"..."}` when the node
//! refused the request, else `{"ok":true,...}` with the fields of the request's answer
//! ([`Status`], [`CheckpointAnswer`], [`Answer`]). The object does not name its kind: the
//! asker knows what it asked, so [`Response::from_value`] takes the request.
//!
//! Invariant: the wire shape is the one `colo status --json` and scripts have read since the
//! answers were built as untyped JSON (same field names, numbers as numbers, `null` for
//! what is not known yet); fields are only ever added, and a reader ignores the ones it does
//! not know.

use super::Request;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A node's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The node did not take the request.
    Refused(Refusal),
    /// `status`.
    Status(Box<Status>),
    /// `checkpoint`: the checkpoint that completed after the request.
    Checkpoint(CheckpointAnswer),
    /// Every other request the node took.
    Done(Answer),
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The reason, for a person.
    pub error: String,
}

/// A taken request's answer (`failover`, `set-checkpoint-interval`, `reprotect`,
/// `set-digests`, `shutdown`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// What happened, for a person.
    pub message: String,
    /// `failover`: the node's mode after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `set-checkpoint-interval`: the new interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_ms: Option<u64>,
    /// `reprotect`: where the newcomer connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl Answer {
    /// An answer that is only its message.
    pub fn message(message: impl Into<String>) -> Answer {
        Answer {
            message: message.into(),
            mode: None,
            checkpoint_interval_ms: None,
            listen: None,
        }
    }
}

/// `checkpoint`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAnswer {
    /// What happened, for a person.
    pub message: String,
    /// The checkpoint.
    pub epoch: u64,
    /// Why it was taken (`Forced`, or `Periodic` when the request joined one in progress).
    pub reason: String,
    /// The primary's pause (microseconds).
    pub pause_us: u64,
    /// Pages sent.
    pub pages: u64,
    /// Bulk bytes sent.
    pub bytes: u64,
}

/// `status`: the node's state and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The process's role name (`primary`, `secondary`): its log lines' prefix.
    pub process: String,
    /// The node's id.
    pub node_id: u64,
    /// Its role now (`Primary`, `Secondary`).
    pub role: String,
    /// Its mode (`Paired`, `Solo`, ...).
    pub mode: String,
    /// The term.
    pub term: u64,
    /// The checkpoint epoch.
    pub epoch: u64,
    /// The last checkpoint completed or applied.
    pub last_checkpoint: Option<LastCheckpoint>,
    /// The peer.
    pub peer: Peer,
    /// Whether the node holds the arbiter's lease.
    pub lease_held: bool,
    /// Why the last failover happened.
    pub last_failover_reason: Option<String>,
    /// The counter workload's step.
    pub guest_step: u64,
    /// Whether checkpoints log digests.
    pub digests: bool,
    /// The periodic checkpoint interval.
    pub checkpoint_interval_ms: u64,
    /// Re-protection.
    pub reprotect: Reprotect,
    /// The node's counters, by name.
    pub stats: BTreeMap<String, u64>,
    /// The link authentication's counters.
    #[serde(default)]
    pub auth: Option<Auth>,
}

/// [`Status::last_checkpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheckpoint {
    /// The checkpoint.
    pub epoch: u64,
    /// Its pause (microseconds).
    pub pause_us: u64,
    /// Its bulk bytes.
    pub bytes: u64,
    /// How long ago (milliseconds).
    pub ago_ms: u64,
}

/// [`Status::peer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's node id, once known.
    pub peer_id: Option<u64>,
    /// `up` or `down`.
    pub link: String,
    /// The heartbeat's view of the peer (`Alive`, `Suspect`, ...).
    pub heartbeat: Option<String>,
}

/// [`Status::reprotect`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reprotect {
    /// Armed for the next newcomer.
    pub armed: bool,
    /// Re-armed whenever the node runs solo.
    pub auto: bool,
    /// Where newcomers connect.
    pub listen: Option<String>,
}

/// [`Status::auth`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// Connections that failed the handshake.
    pub refused_links: u64,
    /// Frames whose MAC did not verify.
    pub bad_frames: u64,
}

impl Response {
    /// A refusal.
    pub fn refused(why: impl Into<String>) -> Response {
        Response::Refused(Refusal { error: why.into() })
    }

    /// Whether the node took the request.
    pub fn ok(&self) -> bool {
        !matches!(self, Response::Refused(_))
    }

    /// The answer as the JSON object sent on the wire.
    pub fn to_value(&self) -> Value {
        let fields = match self {
            Response::Refused(r) => serde_json::to_value(r),
            Response::Status(s) => serde_json::to_value(s),
            Response::Checkpoint(c) => serde_json::to_value(c),
            Response::Done(a) => serde_json::to_value(a),
        };
        // Structs of strings, integers, booleans and maps with string keys always serialize.
        let mut value = fields.unwrap_or_else(|_| Value::Object(Default::default()));
        if let Value::Object(map) = &mut value {
            map.insert("ok".to_string(), Value::Bool(self.ok()));
        }
        value
    }

    /// The answer as one line (without the newline).
    pub fn to_line(&self) -> String {
        self.to_value().to_string()
    }

    /// The node's answer `value` to `request`.
    pub fn from_value(request: Request, value: Value) -> Result<Response, serde_json::Error> {
        if value.get("ok") != Some(&Value::Bool(true)) {
            return Ok(Response::Refused(serde_json::from_value(value)?));
        }
        Ok(match request {
            Request::Status => Response::Status(Box::new(serde_json::from_value(value)?)),
            Request::Checkpoint => Response::Checkpoint(serde_json::from_value(value)?),
            _ => Response::Done(serde_json::from_value(value)?),
        })
    }

    /// The answer for a person: the status as a two-column table (one row per item: role,
    /// mode, term, epoch, peer, last checkpoint, last failover and why, ...), a refusal as
    /// `error: <why>`, other answers as their message.
    pub fn render(&self) -> String {
        match self {
            Response::Refused(r) => format!("error: {}", r.error),
            Response::Status(s) => s.render(),
            Response::Checkpoint(c) => c.message.clone(),
            Response::Done(a) => a.message.clone(),
        }
    }
}

impl Status {
    fn render(&self) -> String {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        let mut rows: Vec<(&str, String)> = vec![
            ("node", format!("{} ({})", self.node_id, self.process)),
            ("role", self.role.clone()),
            ("mode", self.mode.clone()),
            ("term", self.term.to_string()),
            ("epoch", self.epoch.to_string()),
            (
                "peer",
                format!(
                    "node {}, link {}, heartbeat {}",
                    or_dash(self.peer.peer_id.map(|p| p.to_string())),
                    self.peer.link,
                    or_dash(self.peer.heartbeat.clone())
                ),
            ),
            (
                "last checkpoint",
                match &self.last_checkpoint {
                    None => "none yet".to_string(),
                    Some(c) => format!(
                        "epoch {}, pause {} us, {} bytes, {} ms ago",
                        c.epoch, c.pause_us, c.bytes, c.ago_ms
                    ),
                },
            ),
            (
                "last failover",
                match &self.last_failover_reason {
                    None => "none".to_string(),
                    Some(why) => format!("why: {why}"),
                },
            ),
            ("lease held", self.lease_held.to_string()),
            ("guest step", self.guest_step.to_string()),
            (
                "interval",
                format!("{} ms between checkpoints", self.checkpoint_interval_ms),
            ),
            (
                "re-protection",
                format!(
                    "armed {}, auto {}, newcomers accepted on {}",
                    self.reprotect.armed,
                    self.reprotect.auto,
                    or_dash(self.reprotect.listen.clone())
                ),
            ),
        ];
        if let Some(auth) = &self.auth {
            rows.push((
                "authentication",
                format!(
                    "refused links {}, bad frames {}",
                    auth.refused_links, auth.bad_frames
                ),
            ));
        }
        let nonzero: Vec<String> = self
            .stats
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        rows.push(("counters", nonzero.join(" ")));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:width$}  {v}").trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status() -> Status {
        Status {
            process: "secondary".into(),
            node_id: 2,
            role: "Primary".into(),
            mode: "Solo".into(),
            term: 2,
            epoch: 9,
            last_checkpoint: None,
            peer: Peer {
                peer_id: None,
                link: "down".into(),
                heartbeat: None,
            },
            lease_held: true,
            last_failover_reason: Some("PeerLost".into()),
            guest_step: 7,
            digests: false,
            checkpoint_interval_ms: 500,
            reprotect: Reprotect {
                armed: false,
                auto: false,
                listen: Some("127.0.0.1:9".into()),
            },
            stats: [("peer_sent".to_string(), 3), ("held".to_string(), 0)].into(),
            auth: Some(Auth {
                refused_links: 2,
                bad_frames: 1,
            }),
        }
    }

    #[test]
    fn errors_and_messages_render_as_one_line() {
        assert_eq!(
            Response::refused("unknown command \"x\"").render(),
            "error: unknown command \"x\""
        );
        let ok = Response::Done(Answer::message("checkpoint digests on"));
        assert_eq!(ok.render(), "checkpoint digests on");
    }

    #[test]
    fn status_renders_a_table_with_one_row_per_item() {
        let text = Response::Status(Box::new(status())).render();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows[0], "node             2 (secondary)", "{text}");
        assert_eq!(rows[1], "role             Primary", "{text}");
        assert_eq!(rows[2], "mode             Solo", "{text}");
        assert_eq!(rows[3], "term             2", "{text}");
        assert_eq!(rows[4], "epoch            9", "{text}");
        assert_eq!(
            rows[5], "peer             node -, link down, heartbeat -",
            "{text}"
        );
        assert_eq!(rows[6], "last checkpoint  none yet", "{text}");
        assert_eq!(rows[7], "last failover    why: PeerLost", "{text}");
        assert!(text.contains("newcomers accepted on 127.0.0.1:9"));
        assert!(text.contains("refused links 2, bad frames 1"), "{text}");
        assert!(text.ends_with("counters         peer_sent=3"), "{text}");
    }

    #[test]
    fn the_wire_shape_keeps_ok_and_the_documented_fields() {
        let refused = Response::refused("not paired").to_value();
        assert_eq!(refused, json!({"ok": false, "error": "not paired"}));
        let interval = Response::Done(Answer {
            checkpoint_interval_ms: Some(150),
            ..Answer::message("checkpoint interval set to 150 ms")
        });
        assert_eq!(
            interval.to_value(),
            json!({"ok": true, "message": "checkpoint interval set to 150 ms", "checkpoint_interval_ms": 150})
        );
        let value = Response::Status(Box::new(status())).to_value();
        assert_eq!(value["ok"], true);
        assert_eq!(value["peer"]["link"], "down");
        assert_eq!(value["last_checkpoint"], Value::Null);
        assert_eq!(value["stats"]["peer_sent"], 3);
    }

    #[test]
    fn every_answer_reads_back_as_the_response_to_its_request() {
        let cases = [
            (Request::Status, Response::Status(Box::new(status()))),
            (
                Request::Checkpoint,
                Response::Checkpoint(CheckpointAnswer {
                    message: "checkpoint 4 done".into(),
                    epoch: 4,
                    reason: "Forced".into(),
                    pause_us: 900,
                    pages: 12,
                    bytes: 50_000,
                }),
            ),
            (
                Request::Reprotect,
                Response::Done(Answer {
                    listen: Some("127.0.0.1:7".into()),
                    ..Answer::message("re-protection armed")
                }),
            ),
            (Request::Failover, Response::refused("not paired")),
        ];
        for (request, response) in cases {
            let line = response.to_line();
            let value: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(Response::from_value(request, value).unwrap(), response);
        }
    }

    #[test]
    fn an_answer_of_the_wrong_shape_is_an_error_and_a_newer_field_is_ignored() {
        let truncated = json!({"ok": true, "process": "primary"});
        assert!(Response::from_value(Request::Status, truncated).is_err());
        let newer = json!({"ok": true, "message": "shutting down", "uptime_s": 4});
        assert_eq!(
            Response::from_value(Request::Shutdown, newer).unwrap(),
            Response::Done(Answer::message("shutting down"))
        );
    }
}
