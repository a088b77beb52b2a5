//! The operator side of the control socket (`colo status|checkpoint|failover|reprotect|
//! shutdown|set checkpoint-interval`): one request line out, one typed [`Response`] back
//! (`response.rs` renders it for a person).
//!
//! Invariant: every wait is bounded (connect, write and read time out), so a wedged node
//! never hangs the operator's shell; an answer that is not JSON, or not the answer to the
//! request sent, is a [`CallError`] saying so.

use super::{Request, Response};
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
    /// The answer is not JSON.
    #[error("the node's answer is not JSON ({0})")]
    NotJson(serde_json::Error),
    /// The answer is JSON but not an answer to the request.
    #[error("the node's answer to `{command}` is not one ({source})")]
    Unexpected {
        /// The request's name.
        command: &'static str,
        /// What did not fit.
        source: serde_json::Error,
    },
}

/// Sends `request` to the node serving `path` and returns its answer.
pub fn call(path: &Path, request: Request, timeout: Duration) -> Result<Response, CallError> {
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
    let value = serde_json::from_str(&answer).map_err(CallError::NotJson)?;
    Response::from_value(request, value).map_err(|source| CallError::Unexpected {
        command: request.name(),
        source,
    })
}
