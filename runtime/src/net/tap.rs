//! A Linux tap device opened through `/dev/net/tun` (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI`:
//! one Ethernet frame per read or write, no packet-info prefix; Documentation/networking/
//! tuntap.rst), and [`TapLink`], which connects a tap to a consumer of frames: a reader
//! thread hands every frame the host sends to a callback, and [`TapSink`] writes the guest's
//! frames to the tap.
//!
//! Invariant: the reader thread ends within `POLL_MS` of `TapLink` being dropped (it polls
//! with a timeout and checks a stop flag), so a test or node never leaks it; a write that
//! would block (the host is not reading) drops the frame, like a full NIC queue.

use crate::devices::virtio::net::FrameSink;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use tracing::error;

const POLL_MS: i32 = 50;
/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) tap `name` in the calling thread's network namespace.
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap name {name:?} must be 1-{IFNAME_MAX} bytes"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes, name then flags),
        // which `IfReq` lays out; the fd is a freshly opened /dev/net/tun.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // EINVAL/EBUSY: an interface of that name exists and is not a free tap.
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL | libc::EBUSY) => {
                    " (an interface of that name exists and is not a tap this process may attach)"
                }
                Some(libc::EPERM) => " (creating a tap needs CAP_NET_ADMIN)",
                _ => "",
            };
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create or attach tap {name}: {e}{hint}"),
            ));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second handle on the same device (for the writing side).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// Writes one frame; `Ok(false)` if the tap's queue is full and it was dropped.
    pub fn send(&self, frame: &[u8]) -> io::Result<bool> {
        match (&self.file).write(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout_ms` for a frame; `Ok(None)` on timeout.
    pub fn recv(&self, buf: &mut [u8], timeout_ms: i32) -> io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if rc == 0 {
            return Ok(None);
        }
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The guest's TX side on a tap (a [`FrameSink`]); counts frames dropped on a full queue.
#[derive(Debug)]
pub struct TapSink {
    tap: Tap,
    dropped: Arc<AtomicU64>,
}

impl TapSink {
    /// A sink writing to `tap`.
    pub fn new(tap: Tap) -> TapSink {
        TapSink {
            tap,
            dropped: Arc::default(),
        }
    }
}

impl FrameSink for TapSink {
    fn send_frame(&mut self, frame: &[u8]) {
        if !matches!(self.tap.send(frame), Ok(true)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A reader thread delivering every frame read from a tap to a callback, until dropped.
#[derive(Debug)]
pub struct TapLink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TapLink {
    /// Starts reading `tap`; `on_frame` runs on the reader thread for each frame.
    pub fn spawn(
        tap: Tap,
        mut on_frame: impl FnMut(&[u8]) + Send + 'static,
    ) -> io::Result<TapLink> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("colo-tap-{}", tap.name()))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    match tap.recv(&mut buf, POLL_MS) {
                        Ok(Some(n)) => on_frame(&buf[..n]),
                        Ok(None) => {}
                        Err(e) => {
                            error!("tap {}: {e}", tap.name());
                            return;
                        }
                    }
                }
            })?;
        Ok(TapLink {
            stop,
            thread: Some(thread),
        })
    }

    /// Connects `tap` to a VM's virtio-net device both ways: host frames are delivered to
    /// the guest, the guest's frames are written to the tap.
    pub fn attach(
        tap: Tap,
        net: Arc<parking_lot::Mutex<crate::devices::virtio::net::NetDevice>>,
    ) -> io::Result<TapLink> {
        net.lock()
            .set_sink(Box::new(TapSink::new(tap.try_clone()?)));
        TapLink::spawn(tap, move |frame| {
            net.lock().deliver(frame);
        })
    }
}

impl Drop for TapLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_that_linux_cannot_hold_are_refused_before_any_ioctl() {
        for name in ["", "sixteen-chars-xx", "nul\0name"] {
            let err = Tap::open(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
