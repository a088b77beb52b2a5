//! The lease arbiter over loopback TCP: [`ArbiterServer`] serves colo-core's sans-IO
//! [`Arbiter`] (`colo arbiter --listen`), [`ArbiterClient`] is a node's side.
//!
//! Framing: the arbiter speaks the peer protocol's own frames (`colo_core::wire`, no bulk):
//! a node sends `LeaseRequest { term, node_id, duration_ms }`, the arbiter answers each with
//! exactly one `LeaseGrant` or `LeaseDenied`, in order, on the same connection. Any other
//! message or a corrupt frame closes that connection (the node's lease machine re-asks after
//! its request timeout). Both ends authenticate first with the pair key
//! ([`crate::pair::peer::auth`]) and seal every frame: a connection without the key is refused before
//! any request is read, and logged as `arbiter: link-refused` with the running count; a frame
//! that fails its MAC closes the connection (`arbiter: bad-frame`). Invariant: every decision is taken by the one `Arbiter` under a mutex
//! with a monotonic `now` read inside the lock, so decisions are totally ordered and time
//! never goes backwards for it (docs/failover.md has the fencing argument).

use crate::pair::clock::MonoClock;
use crate::pair::peer::auth::{AuthedLink, PairKey, handshake_within, spawn_accept};
use crate::pair::peer::{LinkClosed, PeerWriter, read_frames};
use colo_core::failover::{Arbiter, LeaseReply, LeaseRequest, LeaseRequestId};
use colo_core::ids::{NodeId, Term};
use colo_core::time::Duration;
use colo_core::wire::{FrameDecoder, Limits, LinkSide, Message};
use parking_lot::Mutex;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use tracing::{error, info, warn};

/// Longest lease the arbiter grants (a node asks for 2 s by default).
pub const MAX_LEASE: Duration = Duration::from_secs(10);

/// Limits for arbiter links: control messages only, no bulk.
fn arbiter_limits() -> Limits {
    Limits {
        max_message_len: 4096,
        max_bulk_len: 0,
    }
}

/// A listening arbiter.
#[derive(Debug)]
pub struct ArbiterServer {
    listener: TcpListener,
    arbiter: Arc<Mutex<Arbiter>>,
    clock: MonoClock,
    state: Option<Arc<StateFile>>,
    key: PairKey,
}

/// Why an arbiter could not start (each names the file or address and what the OS said).
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    /// The listening address is taken or not this host's.
    #[error("arbiter cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The state file exists but cannot be read.
    #[error("cannot read arbiter state {}: {source}", path.display())]
    ReadState {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The state file is not an arbiter record (the arbiter refuses to guess its history).
    #[error("arbiter state {} is not `colo-arbiter-state v1 term=T holder=N`: {text:?}", path.display())]
    BadState {
        /// The file.
        path: std::path::PathBuf,
        /// What it holds.
        text: String,
    },
}

/// The arbiter's record on stable storage (`colo arbiter --state FILE`): the last term granted
/// and its holder, one line `colo-arbiter-state v1 term=T holder=N`. It is written (to a
/// temporary file, synced, renamed over the old one, the directory synced) before a grant of
/// a new term is sent, so a restarted arbiter never forgets a term it granted
/// (`Arbiter::restored`); renewals do not change it.
#[derive(Debug)]
pub struct StateFile {
    path: std::path::PathBuf,
}

impl StateFile {
    /// The file at `path` (it need not exist yet).
    pub fn new(path: std::path::PathBuf) -> StateFile {
        StateFile { path }
    }

    /// The record, `None` if the file does not exist; an unreadable or malformed file is an
    /// error naming it (an arbiter must not guess its own history).
    pub fn load(&self) -> Result<Option<(Term, NodeId)>, ArbiterError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ArbiterError::ReadState {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let bad = || ArbiterError::BadState {
            path: self.path.clone(),
            text: text.trim().to_string(),
        };
        let mut words = text.split_whitespace();
        if (words.next(), words.next()) != (Some("colo-arbiter-state"), Some("v1")) {
            return Err(bad());
        }
        let mut field = |key: &str| -> Result<u64, ArbiterError> {
            words
                .next()
                .and_then(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .ok_or_else(bad)
        };
        let term = field("term=")?;
        let holder = field("holder=")?;
        Ok(Some((Term(term), NodeId(holder))))
    }

    /// Writes the record durably.
    pub fn store(&self, term: Term, holder: NodeId) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(
            f,
            "colo-arbiter-state v1 term={} holder={}",
            term.0, holder.0
        )?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
}

impl ArbiterServer {
    /// Binds `addr` (a busy port is an error naming it), with no state file: a restart
    /// forgets the current term (see [`ArbiterServer::bind_with_state`]). Only nodes holding
    /// `key` are served.
    pub fn bind(addr: SocketAddr, key: PairKey) -> Result<ArbiterServer, ArbiterError> {
        ArbiterServer::bind_with_state(addr, key, None)
    }

    /// Binds `addr` and, with `state`, starts from the record it holds (`Arbiter::restored`)
    /// and keeps it up to date. Only nodes holding `key` are served.
    pub fn bind_with_state(
        addr: SocketAddr,
        key: PairKey,
        state: Option<StateFile>,
    ) -> Result<ArbiterServer, ArbiterError> {
        let clock = MonoClock::start();
        let record = match &state {
            Some(s) => s.load()?,
            None => None,
        };
        let arbiter = match record {
            Some((term, holder)) => Arbiter::restored(MAX_LEASE, clock.now(), term, holder),
            None => Arbiter::new(MAX_LEASE, clock.now()),
        };
        let listener =
            TcpListener::bind(addr).map_err(|source| ArbiterError::Bind { addr, source })?;
        Ok(ArbiterServer {
            listener,
            arbiter: Arc::new(Mutex::new(arbiter)),
            clock,
            state: state.map(Arc::new),
            key,
        })
    }

    /// The key's counters of refused links and bad frames.
    pub fn key(&self) -> &PairKey {
        &self.key
    }

    /// The record it starts from (term and holder), if any.
    pub fn record(&self) -> Option<(Term, NodeId)> {
        self.arbiter.lock().record()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// Serves connections forever, one thread each, logging every decision on stdout.
    pub fn serve(self) -> ! {
        loop {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    let arbiter = self.arbiter.clone();
                    let clock = self.clock;
                    let key = self.key.clone();
                    let state = self.state.clone();
                    // The handshake thread serves the connection once it is authenticated.
                    spawn_accept(stream, &self.key, "arbiter", move |link| {
                        serve_connection(link, from, &arbiter, clock, state.as_deref(), &key)
                    });
                }
                Err(e) => warn!(role = "arbiter", "accept failed: {e}"),
            }
        }
    }
}

fn serve_connection(
    link: AuthedLink,
    from: SocketAddr,
    arbiter: &Mutex<Arbiter>,
    clock: MonoClock,
    state: Option<&StateFile>,
    key: &PairKey,
) {
    let Ok((mut reader, decoder, mut writer)) = link.split(arbiter_limits()) else {
        return;
    };
    let closed = read_frames(&mut reader, decoder, &mut |message, _bulk| {
        let Message::LeaseRequest {
            term,
            node_id,
            duration_ms,
        } = message
        else {
            warn!(
                role = "arbiter",
                "{from} sent {:?}, not a lease request; closing",
                message.kind()
            );
            return false;
        };
        let reply = {
            let mut arbiter = arbiter.lock();
            let before = arbiter.record();
            let reply = arbiter.handle_request(
                clock.now(),
                term,
                node_id,
                Duration::from_millis(duration_ms),
            );
            let after = arbiter.record();
            if let (Some(file), Some((t, h))) = (state, after)
                && before != after
                && let Err(e) = file.store(t, h)
            {
                // A grant the arbiter cannot remember must not be sent: stop here, so
                // the nodes see a dead arbiter (their leases run out) rather than a term
                // that a restart would grant again.
                error!(
                    role = "arbiter",
                    "cannot record term {} for node {} in {}: {e}; stopping",
                    t.0,
                    h.0,
                    file.path.display()
                );
                std::process::exit(1);
            }
            reply
        };
        let message = match reply {
            LeaseReply::Granted { valid_for } => {
                info!(
                    role = "arbiter",
                    term = term.0,
                    node = node_id.0,
                    valid_for_ms = valid_for.as_millis() as u64,
                    "lease-granted"
                );
                crate::pair::events::emit(
                    "arbiter",
                    crate::pair::events::Milestone::LeaseGranted {
                        term: term.0,
                        node: node_id.0,
                        valid_for_ms: valid_for.as_millis() as u64,
                    },
                );
                Message::LeaseGrant {
                    term,
                    node_id,
                    valid_for_ms: valid_for.as_millis() as u64,
                }
            }
            LeaseReply::Denied {
                holder,
                current_term,
            } => {
                info!(
                    role = "arbiter",
                    term = term.0,
                    node = node_id.0,
                    holder = holder.0,
                    current_term = current_term.0,
                    "lease-denied"
                );
                crate::pair::events::emit(
                    "arbiter",
                    crate::pair::events::Milestone::LeaseDenied {
                        term: term.0,
                        node: node_id.0,
                        holder: holder.0,
                        current_term: current_term.0,
                    },
                );
                Message::LeaseDenied {
                    term,
                    holder,
                    current_term,
                }
            }
        };
        writer.send(&message, &[]).is_ok()
    });
    if let LinkClosed::Wire(e) = closed {
        key.count_bad_frame();
        warn!(
            role = "arbiter",
            from = %from,
            bad_frames = key.counts().bad_frames,
            reason = %e,
            "bad-frame"
        );
    }
}

/// A node's arbiter client: a thread that sends each [`LeaseRequest`] and reports the reply.
/// Unreachable or silent arbiters produce no reply at all; the node's lease machine re-asks
/// after its request timeout, which is the documented contract of `Output::Arbiter`.
#[derive(Debug)]
pub struct ArbiterClient {
    requests: mpsc::Sender<LeaseRequest>,
}

impl ArbiterClient {
    /// Starts the client thread for the arbiter at `addr` (authenticated with `key`, whose
    /// counters record a refused arbiter or a bad reply); replies go to `deliver`.
    pub fn spawn(
        addr: SocketAddr,
        reply_timeout: Duration,
        key: PairKey,
        deliver: impl Fn(LeaseRequestId, LeaseReply) + Send + 'static,
    ) -> std::io::Result<ArbiterClient> {
        let (requests, rx) = mpsc::channel::<LeaseRequest>();
        std::thread::Builder::new()
            .name("colo-arbiter-client".to_string())
            .spawn(move || {
                let mut link: Option<ArbiterLink> = None;
                while let Ok(request) = rx.recv() {
                    match ask(&mut link, addr, reply_timeout, &key, &request) {
                        Ok(reply) => deliver(request.id, reply),
                        Err(e) => {
                            warn!("arbiter {addr} did not answer: {e}");
                            link = None;
                        }
                    }
                }
            })?;
        Ok(ArbiterClient { requests })
    }

    /// Queues a request (never blocks).
    pub fn request(&self, request: LeaseRequest) {
        let _ = self.requests.send(request);
    }
}

/// A node's authenticated connection to the arbiter: its decoder lives as long as the link,
/// because frame MACs are numbered per link.
type ArbiterLink = (PeerWriter, TcpStream, FrameDecoder);

fn ask(
    link: &mut Option<ArbiterLink>,
    addr: SocketAddr,
    timeout: Duration,
    key: &PairKey,
    request: &LeaseRequest,
) -> Result<LeaseReply, String> {
    if link.is_none() {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        let authed = handshake_within(stream, key, LinkSide::Connector, timeout).map_err(|e| {
            format!(
                "refused (refused_links={}): {e}",
                key.counts().refused_links
            )
        })?;
        let (stream, decoder, writer) =
            authed.split(arbiter_limits()).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        *link = Some((writer, stream, decoder));
    }
    let (writer, stream, decoder) = link.as_mut().expect("connected above");
    writer
        .send(
            &Message::LeaseRequest {
                term: request.term,
                node_id: request.node_id,
                duration_ms: request.duration.as_millis() as u64,
            },
            &[],
        )
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    loop {
        use std::io::Read;
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the arbiter closed the connection".to_string());
        }
        decoder.push(&buf[..n]);
        let polled = decoder.poll_frame().map_err(|e| {
            key.count_bad_frame();
            format!("bad frame from the arbiter: {e}")
        })?;
        if let Some(frame) = polled {
            return match frame.message {
                Message::LeaseGrant {
                    term, valid_for_ms, ..
                } if term == request.term => Ok(LeaseReply::Granted {
                    valid_for: Duration::from_millis(valid_for_ms),
                }),
                Message::LeaseDenied {
                    term,
                    holder,
                    current_term,
                } if term == request.term => Ok(LeaseReply::Denied {
                    holder,
                    current_term,
                }),
                other => Err(format!("unexpected arbiter reply {:?}", other.kind())),
            };
        }
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("colo-arbiter-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn a_missing_state_file_is_a_first_start_and_a_stored_record_loads_back() {
        let file = StateFile::new(scratch("roundtrip"));
        let _ = std::fs::remove_file(&file.path);
        assert_eq!(file.load().unwrap(), None);
        file.store(Term(7), NodeId(2)).unwrap();
        assert_eq!(file.load().unwrap(), Some((Term(7), NodeId(2))));
        file.store(Term(8), NodeId(1)).unwrap();
        assert_eq!(file.load().unwrap(), Some((Term(8), NodeId(1))));
    }

    #[test]
    fn a_malformed_state_file_is_an_error_naming_it() {
        let path = scratch("malformed");
        for text in [
            "",
            "colo-arbiter-state v1 term=x holder=2",
            "something else",
            "colo-arbiter-state v2 term=1 holder=2",
        ] {
            std::fs::write(&path, text).unwrap();
            let err = StateFile::new(path.clone()).load().unwrap_err();
            assert!(matches!(err, ArbiterError::BadState { .. }), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn a_restarted_arbiter_starts_from_its_record() {
        let path = scratch("restart");
        StateFile::new(path.clone())
            .store(Term(4), NodeId(9))
            .unwrap();
        let server = ArbiterServer::bind_with_state(
            "127.0.0.1:0".parse().unwrap(),
            PairKey::generate().unwrap(),
            Some(StateFile::new(path)),
        )
        .unwrap();
        assert_eq!(server.record(), Some((Term(4), NodeId(9))));
    }
}
