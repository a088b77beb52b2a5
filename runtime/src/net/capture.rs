//! A frame capture on one interface (an `AF_PACKET` raw socket, like tcpdump's), used by the
//! two-host tests to see, on the client's side of each host, which node put frames on the
//! client network and when: the evidence for "never two nodes releasing output in one term".
//!
//! Invariant: only frames the interface received are recorded (`PACKET_OUTGOING` is skipped),
//! so a capture on the client end of host A's cable shows exactly what host A sent; the
//! reader thread ends within [`POLL_MS`] of [`Capture::stop`] or drop.

use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

/// Longest the reader sleeps before checking its stop flag.
pub const POLL_MS: i32 = 20;

/// One captured frame's header facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Captured {
    /// When the frame was read.
    pub at: Instant,
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType.
    pub ethertype: u16,
    /// Frame length.
    pub len: usize,
}

/// A running capture; [`Capture::stop`] returns what it saw.
#[derive(Debug)]
pub struct Capture {
    frames: Arc<Mutex<Vec<Captured>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// Opens a raw socket bound to interface `ifname` of the calling thread's network namespace.
fn open_raw(ifname: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {ifname} to capture on"),
        ));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor this function owns from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).unwrap_or(i32::MAX);
    // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes of `addr`, which lives across the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Waits up to `timeout_ms` for one frame; `None` on timeout or for an outgoing frame.
fn read_frame(fd: &OwnedFd, buf: &mut [u8], timeout_ms: i32) -> io::Result<Option<usize>> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc <= 0 {
        let e = io::Error::last_os_error();
        return if rc == 0 || e.kind() == io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: recvfrom writes at most `buf.len()` bytes into `buf` and at most `from_len` bytes
    // into `from`; both live across the call.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut from).cast::<libc::sockaddr>(),
            &mut from_len,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(None);
    }
    Ok(Some(usize::try_from(n).unwrap_or(0)))
}

impl Capture {
    /// Starts capturing on `ifname`. Call it on a thread inside the interface's namespace
    /// (`NetNs::run`): the socket stays bound to that interface wherever it is read from.
    pub fn start(ifname: &str) -> io::Result<Capture> {
        let fd = open_raw(ifname)?;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (Arc::clone(&frames), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name(format!("capture-{ifname}"))
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !s.load(Ordering::Relaxed) {
                    let Some(n) = read_frame(&fd, &mut buf, POLL_MS)? else {
                        continue;
                    };
                    if n < 14 {
                        continue;
                    }
                    let mut dst = [0u8; 6];
                    let mut src = [0u8; 6];
                    dst.copy_from_slice(&buf[0..6]);
                    src.copy_from_slice(&buf[6..12]);
                    let c = Captured {
                        at: Instant::now(),
                        dst,
                        src,
                        ethertype: u16::from_be_bytes([buf[12], buf[13]]),
                        len: n,
                    };
                    f.lock().push(c);
                }
                Ok(())
            })?;
        Ok(Capture {
            frames,
            stop,
            thread: Some(thread),
        })
    }

    /// What was captured so far.
    pub fn snapshot(&self) -> Vec<Captured> {
        self.frames.lock().clone()
    }

    /// Stops the capture and returns every frame it saw.
    pub fn stop(mut self) -> io::Result<Vec<Captured>> {
        self.halt()?;
        Ok(self.snapshot())
    }

    fn halt(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the capture thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
