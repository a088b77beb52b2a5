//! The lease arbiter over loopback TCP: [`ArbiterServer`] serves colo-core's sans-IO
//! [`Arbiter`] (`colo arbiter --listen`), [`ArbiterClient`] is a node's side.
//!
//! Framing: the arbiter speaks the peer protocol's own frames (`colo_core::wire`, no bulk):
//! a node sends `LeaseRequest { term, node_id, duration_ms }`, the arbiter answers each with
//! exactly one `LeaseGrant` or `LeaseDenied`, in order, on the same connection. Any other
//! message or a corrupt frame closes that connection (the node's lease machine re-asks after
//! its request timeout). Invariant: every decision is taken by the one `Arbiter` under a mutex
//! with a monotonic `now` read inside the lock, so decisions are totally ordered and time
//! never goes backwards for it (docs/failover.md has the fencing argument).

use crate::peer::{LinkClosed, PeerWriter, read_frames};
use colo_core::failover::{Arbiter, LeaseReply, LeaseRequest, LeaseRequestId};
use colo_core::time::{Duration, Instant};
use colo_core::wire::{Limits, Message};
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

/// A monotonic clock as colo-core time, counted from the clock's creation.
#[derive(Clone, Copy, Debug)]
pub struct MonoClock(std::time::Instant);

impl MonoClock {
    /// Starts the clock at [`Instant::ZERO`].
    pub fn start() -> MonoClock {
        MonoClock(std::time::Instant::now())
    }

    /// Now, in colo-core time.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// The std instant of a colo-core instant of this clock.
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        self.0 + Duration::from_nanos(at.as_nanos())
    }
}

/// A listening arbiter.
#[derive(Debug)]
pub struct ArbiterServer {
    listener: TcpListener,
    arbiter: Arc<Mutex<Arbiter>>,
    clock: MonoClock,
}

impl ArbiterServer {
    /// Binds `addr` (a busy port is an error naming it).
    pub fn bind(addr: SocketAddr) -> Result<ArbiterServer, String> {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("arbiter cannot listen on {addr}: {e}"))?;
        let clock = MonoClock::start();
        Ok(ArbiterServer {
            listener,
            arbiter: Arc::new(Mutex::new(Arbiter::new(MAX_LEASE, clock.now()))),
            clock,
        })
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
                    let spawned = std::thread::Builder::new()
                        .name("colo-arbiter-conn".to_string())
                        .spawn(move || serve_connection(stream, from, &arbiter, clock));
                    if let Err(e) = spawned {
                        error!(role = "arbiter", "cannot serve {from}: {e}");
                    }
                }
                Err(e) => warn!(role = "arbiter", "accept failed: {e}"),
            }
        }
    }
}

fn serve_connection(
    stream: TcpStream,
    from: SocketAddr,
    arbiter: &Mutex<Arbiter>,
    clock: MonoClock,
) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = PeerWriter::new(write_half);
    let mut reader = stream;
    let closed = read_frames(&mut reader, arbiter_limits(), &mut |message, _bulk| {
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
            arbiter.handle_request(
                clock.now(),
                term,
                node_id,
                Duration::from_millis(duration_ms),
            )
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
        warn!(role = "arbiter", "{from}: {e}");
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
    /// Starts the client thread for the arbiter at `addr`; replies go to `deliver`.
    pub fn spawn(
        addr: SocketAddr,
        reply_timeout: Duration,
        deliver: impl Fn(LeaseRequestId, LeaseReply) + Send + 'static,
    ) -> std::io::Result<ArbiterClient> {
        let (requests, rx) = mpsc::channel::<LeaseRequest>();
        std::thread::Builder::new()
            .name("colo-arbiter-client".to_string())
            .spawn(move || {
                let mut link: Option<(PeerWriter, TcpStream)> = None;
                while let Ok(request) = rx.recv() {
                    match ask(&mut link, addr, reply_timeout, &request) {
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

fn ask(
    link: &mut Option<(PeerWriter, TcpStream)>,
    addr: SocketAddr,
    timeout: Duration,
    request: &LeaseRequest,
) -> Result<LeaseReply, String> {
    if link.is_none() {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let writer = PeerWriter::new(stream.try_clone().map_err(|e| e.to_string())?);
        *link = Some((writer, stream));
    }
    let (writer, stream) = link.as_mut().expect("connected above");
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
    let mut decoder = colo_core::wire::FrameDecoder::new(arbiter_limits());
    let mut buf = [0u8; 512];
    loop {
        use std::io::Read;
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the arbiter closed the connection".to_string());
        }
        decoder.push(&buf[..n]);
        if let Some(frame) = decoder.poll_frame().map_err(|e| e.to_string())? {
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
