//! The node side of the control socket: binds the Unix socket, accepts operators, reads one
//! JSON request per line, posts each as a [`ControlCall`] to the node loop and writes the
//! loop's response back as one line.
//!
//! Invariants: a socket file that no process answers on (left by a killed node) is replaced,
//! one a live node answers on is an error, and a path that is not a socket is never deleted;
//! the socket file is removed when the [`ControlServer`] is dropped (the loop's end); a
//! malformed or over-long line gets a JSON error and the connection stays usable; a loop that
//! does not answer within [`REPLY_TIMEOUT`] (it is gone) gets the operator an error, not a hang.

use super::{ControlCall, ControlError, MAX_REQUEST_BYTES, Request, Response, error_response};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// How long an operator waits for the loop (a checkpoint in progress takes milliseconds; a
/// full copy to a newcomer can take a second on a loaded host).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a node's control socket goes without `--control`: `/run/colo` when it can be
/// created (root, as KVM needs), else the temp dir; one file per role and node id.
pub fn default_path(role: &str, node_id: u64) -> PathBuf {
    let run = Path::new("/run/colo");
    let dir = if std::fs::create_dir_all(run).is_ok() {
        run.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("colo-{role}-{node_id}.sock"))
}

/// The bound control socket; removes its file when dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// Requests read whose response is not written yet: the drop waits for them (briefly), so
    /// a `shutdown` is answered before the process exits.
    in_flight: Arc<AtomicUsize>,
}

/// Why the control socket cannot be served (each names the path; sources kept).
#[derive(Debug, thiserror::Error)]
pub enum ControlServerError {
    /// Something that is not a socket is at the path: never deleted.
    #[error("{} exists and is not a socket: not replacing it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A running node answers on the path.
    #[error("a running node already serves the control socket {}", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket file cannot be removed.
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket cannot be bound.
    #[error("cannot bind the control socket {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The serving thread cannot be started.
    #[error("cannot start the control thread: {0}")]
    Thread(std::io::Error),
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket file) and serves it on a thread; every request
    /// goes to `post`, which returns false once the loop is gone.
    pub fn bind<F>(path: &Path, post: F) -> Result<ControlServer, ControlServerError>
    where
        F: Fn(ControlCall) -> bool + Send + Sync + 'static,
    {
        replace_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|source| ControlServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let server = ControlServer {
            path: path.to_path_buf(),
            in_flight: in_flight.clone(),
        };
        let post = Arc::new(post);
        std::thread::Builder::new()
            .name("colo-control".to_string())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (post, in_flight) = (post.clone(), in_flight.clone());
                    let _ = std::thread::Builder::new()
                        .name("colo-control-conn".to_string())
                        .spawn(move || serve(stream, &*post, &in_flight));
                }
            })
            .map_err(ControlServerError::Thread)?;
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let until = Instant::now() + Duration::from_secs(1);
        while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A socket file nobody answers on is left by a node that was killed: replace it. A live one
/// belongs to a running node, and anything else is not ours to delete.
fn replace_stale(path: &Path) -> Result<(), ControlServerError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let path_buf = || path.to_path_buf();
    if !meta.file_type().is_socket() {
        return Err(ControlServerError::NotASocket { path: path_buf() });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ControlServerError::InUse { path: path_buf() });
    }
    std::fs::remove_file(path).map_err(|source| ControlServerError::RemoveStale {
        path: path_buf(),
        source,
    })
}

/// One operator connection: a response line per request line, until EOF.
fn serve(stream: UnixStream, post: &dyn Fn(ControlCall) -> bool, in_flight: &AtomicUsize) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        // One byte more than allowed tells an over-long line from a full one.
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        match (&mut input).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = if !line.ends_with(b"\n") && line.len() > MAX_REQUEST_BYTES {
            // Skip the rest of the line so the next request starts clean.
            let mut rest = Vec::new();
            if input.read_until(b'\n', &mut rest).is_err() {
                return;
            }
            error_response(&ControlError::TooLong.to_string())
        } else {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match Request::parse(text) {
                Ok(request) => {
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    let response = ask(post, request);
                    let written = write_line(&mut out, &response);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    if written.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => error_response(&e.to_string()),
            }
        };
        if write_line(&mut out, &response).is_err() {
            return;
        }
    }
}

fn write_line(out: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut bytes = response.to_line().into_bytes();
    bytes.push(b'\n');
    out.write_all(&bytes)
}

fn ask(post: &dyn Fn(ControlCall) -> bool, request: Request) -> Response {
    let (reply, answer) = mpsc::channel();
    if !post(ControlCall { request, reply }) {
        return error_response("the node is stopping");
    }
    answer
        .recv_timeout(REPLY_TIMEOUT)
        .unwrap_or_else(|_| error_response("the node did not answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair::control::Answer;

    fn temp_socket(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("colo-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    /// A loop stand-in answering every request with its name.
    fn echo(call: ControlCall) -> bool {
        let _ = call
            .reply
            .send(Response::Done(Answer::message(call.request.name())));
        true
    }

    fn roundtrip(path: &Path, lines: &[&str]) -> Vec<serde_json::Value> {
        let stream = UnixStream::connect(path).expect("connect");
        let mut out = stream.try_clone().expect("clone");
        let mut input = BufReader::new(stream);
        lines
            .iter()
            .map(|line| {
                out.write_all(line.as_bytes()).expect("write");
                out.write_all(b"\n").expect("write");
                let mut answer = String::new();
                input.read_line(&mut answer).expect("read");
                serde_json::from_str(&answer).expect("the answer is JSON")
            })
            .collect()
    }

    #[test]
    fn stale_socket_file_is_replaced_and_a_live_one_refused() {
        let path = temp_socket("stale.sock");
        // A socket file whose listener is gone, as a SIGKILLed node leaves it.
        drop(UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let server = ControlServer::bind(&path, echo).expect("a stale file is replaced");
        let err = ControlServer::bind(&path, echo).expect_err("a live socket is refused");
        assert!(matches!(err, ControlServerError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("already serves"), "{err}");
        drop(server);
        assert!(!path.exists(), "the socket file is removed on drop");
    }

    #[test]
    fn a_regular_file_at_the_path_is_never_deleted() {
        let path = temp_socket("plain.sock");
        std::fs::write(&path, b"keep me").expect("write");
        let err = ControlServer::bind(&path, echo).expect_err("not a socket");
        assert!(
            matches!(err, ControlServerError::NotASocket { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"keep me");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn malformed_and_over_long_lines_get_errors_and_the_connection_survives() {
        let path = temp_socket("malformed.sock");
        let _server = ControlServer::bind(&path, echo).expect("bind");
        let long = format!("{{\"cmd\":\"{}\"}}", "x".repeat(MAX_REQUEST_BYTES));
        let answers = roundtrip(
            &path,
            &[
                "{not json",
                &long,
                "{\"cmd\":\"warp\"}",
                "{\"cmd\":\"status\"}",
            ],
        );
        assert_eq!(answers[0]["ok"], false);
        assert!(answers[0]["error"].as_str().unwrap().contains("malformed"));
        assert!(
            answers[1]["error"]
                .as_str()
                .unwrap()
                .contains("longer than")
        );
        assert!(answers[2]["error"].as_str().unwrap().contains("\"warp\""));
        assert_eq!(
            answers[3],
            serde_json::json!({"ok": true, "message": "status"})
        );
    }

    #[test]
    fn a_gone_loop_is_an_error_not_a_hang() {
        let path = temp_socket("gone.sock");
        let _server = ControlServer::bind(&path, |_call| false).expect("bind");
        let answers = roundtrip(&path, &["{\"cmd\":\"status\"}"]);
        assert_eq!(answers[0]["ok"], false);
        assert!(answers[0]["error"].as_str().unwrap().contains("stopping"));
    }
}
