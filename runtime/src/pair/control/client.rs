//! The operator side of the control socket (`colo status|checkpoint|failover|reprotect|
//! shutdown|set checkpoint-interval`): one request line out, one response line back, and a
//! readable rendering of the response.
//!
//! Invariant: every wait is bounded (connect, write and read time out), so a wedged node
//! never hangs the operator's shell; a response that is not JSON is reported as such.

use super::Request;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nobody serves the socket (or it cannot be opened).
    #[error("cannot reach the node's control socket {}: {source}", path.display())]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connected socket could not be set up.
    #[error("control socket: {0}")]
    Socket(std::io::Error),
    /// The request could not be written.
    #[error("sending the request: {0}")]
    Send(std::io::Error),
    /// The answer could not be read (or did not come in time).
    #[error("reading the node's answer: {0}")]
    Receive(std::io::Error),
    /// The node closed the connection without a line.
    #[error("the node closed the control connection without answering")]
    NoAnswer,
    /// The answer is not a response.
    #[error("the node's answer is not JSON ({0})")]
    NotJson(serde_json::Error),
}

/// Sends `request` to the node serving `path` and returns its JSON response.
pub fn call(path: &Path, request: Request, timeout: Duration) -> Result<Value, CallError> {
    let stream = UnixStream::connect(path).map_err(|source| CallError::Unreachable {
        path: path.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(CallError::Socket)?;
    let mut out = stream.try_clone().map_err(CallError::Socket)?;
    let mut line = request.to_line();
    line.push('\n');
    out.write_all(line.as_bytes()).map_err(CallError::Send)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(CallError::Receive)?;
    if answer.is_empty() {
        return Err(CallError::NoAnswer);
    }
    serde_json::from_str(&answer).map_err(CallError::NotJson)
}

/// A response for a person: the status as a two-column table (one row per item: role, mode,
/// term, epoch, peer, last checkpoint, last failover and why, ...), other answers as their
/// message.
pub fn render(request: Request, response: &Value) -> String {
    if response["ok"] != Value::Bool(true) {
        return format!(
            "error: {}",
            response["error"].as_str().unwrap_or("(no reason given)")
        );
    }
    if request != Request::Status {
        return response["message"]
            .as_str()
            .map_or_else(|| response.to_string(), str::to_string);
    }
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows: Vec<(&str, String)> = vec![
        (
            "node",
            format!("{} ({})", s(&response["node_id"]), s(&response["process"])),
        ),
        ("role", s(&response["role"])),
        ("mode", s(&response["mode"])),
        ("term", s(&response["term"])),
        ("epoch", s(&response["epoch"])),
    ];
    let peer = &response["peer"];
    rows.push((
        "peer",
        format!(
            "node {}, link {}, heartbeat {}",
            s(&peer["peer_id"]),
            s(&peer["link"]),
            s(&peer["heartbeat"])
        ),
    ));
    let last = &response["last_checkpoint"];
    rows.push((
        "last checkpoint",
        if last.is_null() {
            "none yet".to_string()
        } else {
            format!(
                "epoch {}, pause {} us, {} bytes, {} ms ago",
                s(&last["epoch"]),
                s(&last["pause_us"]),
                s(&last["bytes"]),
                s(&last["ago_ms"])
            )
        },
    ));
    rows.push((
        "last failover",
        match &response["last_failover_reason"] {
            Value::Null => "none".to_string(),
            why => format!("why: {}", s(why)),
        },
    ));
    rows.push(("lease held", s(&response["lease_held"])));
    rows.push(("guest step", s(&response["guest_step"])));
    rows.push((
        "interval",
        format!(
            "{} ms between checkpoints",
            s(&response["checkpoint_interval_ms"])
        ),
    ));
    let r = &response["reprotect"];
    rows.push((
        "re-protection",
        format!(
            "armed {}, auto {}, newcomers accepted on {}",
            s(&r["armed"]),
            s(&r["auto"]),
            s(&r["listen"])
        ),
    ));
    let auth = &response["auth"];
    if !auth.is_null() {
        rows.push((
            "authentication",
            format!(
                "refused links {}, bad frames {}",
                s(&auth["refused_links"]),
                s(&auth["bad_frames"])
            ),
        ));
    }
    if let Value::Object(stats) = &response["stats"] {
        let nonzero: Vec<String> = stats
            .iter()
            .filter(|(_, v)| v.as_u64() != Some(0))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        rows.push(("counters", nonzero.join(" ")));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:width$}  {v}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_and_messages_render_as_one_line() {
        let err = json!({"ok": false, "error": "unknown command \"x\""});
        assert_eq!(
            render(Request::Checkpoint, &err),
            "error: unknown command \"x\""
        );
        let ok = json!({"ok": true, "message": "checkpoint requested"});
        assert_eq!(render(Request::Checkpoint, &ok), "checkpoint requested");
    }

    #[test]
    fn status_renders_a_table_with_one_row_per_item() {
        let status = json!({
            "ok": true, "node_id": 2, "process": "secondary", "role": "Primary",
            "mode": "Solo", "term": 2, "epoch": 9, "last_checkpoint": null,
            "peer": {"peer_id": null, "link": "down", "heartbeat": null},
            "lease_held": true, "last_failover_reason": "PeerLost", "guest_step": 7,
            "checkpoint_interval_ms": 500,
            "reprotect": {"armed": false, "auto": false, "listen": "127.0.0.1:9"},
            "stats": {"peer_sent": 3, "held": 0},
            "auth": {"refused_links": 2, "bad_frames": 1}
        });
        let text = render(Request::Status, &status);
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
}
