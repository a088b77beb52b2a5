//! What the runtime sees of its peer's liveness that the core cannot: bytes arriving on the
//! peer socket before a whole frame has, and a send that makes no progress.
//!
//! The core's heartbeat counts whole peer messages as traffic. Over a slow or lossy
//! replication link a single page batch (up to 4 MiB) or the initial copy can take seconds to
//! arrive whole, longer than the heartbeat's `lost_after`, while its bytes keep coming: the
//! kernel's count of bytes received on the connection (`TCP_INFO`'s `tcpi_bytes_received`)
//! shows that the peer is alive and sending, and the loop reports it as
//! `Input::PeerActivity`. The other direction: a send to a peer that stopped reading (its host
//! died, the link was cut) would block the loop until TCP gives up, minutes later, with the
//! guest paused; a write timeout of twice `lost_after` turns that into a link error, so the
//! heartbeat can decide and the survivor can take over.
//!
//! Invariant: the watch reports activity only when the kernel's counter grew since the last
//! report, and checks the socket at most once per [`CHECK_EVERY`], so it adds at most one
//! `getsockopt` and one core input per interval, whatever the traffic.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Least time between two looks at the socket's counters.
pub const CHECK_EVERY: Duration = Duration::from_millis(20);

/// The bytes the kernel has received on `socket` so far (`TCP_INFO`), or `None` if the socket
/// cannot tell (not TCP, closed).
pub fn tcp_bytes_received(socket: &TcpStream) -> Option<u64> {
    // SAFETY: tcp_info is plain data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which lives across the call;
    // the fd belongs to `socket`, borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    // Kernels older than 4.1 return a shorter struct without the byte counters.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
    (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_received)
}

/// Watches one peer connection for bytes arriving.
#[derive(Debug)]
pub struct PeerSocketWatch {
    socket: TcpStream,
    received: u64,
    next_check: Instant,
}

impl PeerSocketWatch {
    /// Watches `socket` (a clone of the peer connection) from now on.
    pub fn new(socket: TcpStream) -> PeerSocketWatch {
        let received = tcp_bytes_received(&socket).unwrap_or(0);
        PeerSocketWatch {
            socket,
            received,
            next_check: Instant::now(),
        }
    }

    /// True if bytes arrived since the last time this returned true; checks the socket at most
    /// once per [`CHECK_EVERY`].
    pub fn bytes_arrived(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_check {
            return false;
        }
        self.next_check = now + CHECK_EVERY;
        match tcp_bytes_received(&self.socket) {
            Some(n) if n > self.received => {
                self.received = n;
                true
            }
            _ => false,
        }
    }
}

/// The write timeout of a peer connection whose peer is lost after `lost_after` of silence.
pub fn peer_write_timeout(lost_after: Duration) -> Duration {
    lost_after.saturating_mul(2).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn the_watch_sees_bytes_arrive_and_only_new_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (receiver, _) = listener.accept().unwrap();
        let mut watch = PeerSocketWatch::new(receiver.try_clone().unwrap());
        assert!(!watch.bytes_arrived(), "nothing sent yet");
        // Nobody reads `receiver`: the bytes sit in its kernel buffer, counted all the same.
        sender.write_all(&[7u8; 1000]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !watch.bytes_arrived() {
            assert!(
                Instant::now() < deadline,
                "the kernel never counted the bytes"
            );
            std::thread::sleep(CHECK_EVERY);
        }
        assert_eq!(tcp_bytes_received(&receiver), Some(1000));
        std::thread::sleep(CHECK_EVERY);
        assert!(!watch.bytes_arrived(), "no new bytes since the last report");
    }

    #[test]
    fn a_send_to_a_peer_that_stopped_reading_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_receiver, _) = listener.accept().unwrap();
        sender
            .set_write_timeout(Some(peer_write_timeout(Duration::from_millis(50))))
            .unwrap();
        // The receiver never reads: once both kernel buffers are full the send blocks, and
        // the timeout ends it with an error instead of blocking forever.
        let chunk = vec![0u8; 1 << 20];
        let err = (0..1024)
            .find_map(|_| sender.write_all(&chunk).err())
            .expect("a send to a peer that does not read must fail, not block");
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
    }
}
