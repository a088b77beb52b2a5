//! A Linux tap device created (or attached) through the `tun-tap` crate (`Iface` in TAP mode
//! without packet info: `IFF_TAP | IFF_NO_PI`, one Ethernet frame per read or write;
//! Documentation/networking/tuntap.rst), and [`TapLink`], which connects a tap to a consumer
//! of frames: a reader thread hands every frame the host sends to a callback, and
//! [`TapSink`] writes the guest's frames to the tap.
//!
//! What the crate does not offer is done here, in one place each: a bounded wait for a frame
//! (`poll(2)` on the crate's fd in [`Tap::recv`]; the crate only reads, blocking or not),
//! so the reader thread can notice it should stop. colo's virtio-net device uses no vnet
//! header and no offloads, so no `TUNSETVNETHDRSZ` / `TUNSETOFFLOAD` ioctl is needed.
//!
//! Invariant: the reader thread ends within `POLL_MS` of `TapLink` being dropped (it polls
//! with a timeout and checks a stop flag), so a test or node never leaks it; a write that
//! would block (the host is not reading) drops the frame, like a full NIC queue.

use crate::vmm::devices::virtio::net::FrameSink;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use tracing::error;
use tun_tap::{Iface, Mode};

const POLL_MS: i32 = 50;
/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// An open tap device (the reading and the writing side share one `Iface`).
#[derive(Debug)]
pub struct Tap {
    iface: Arc<Iface>,
}

impl Tap {
    /// Creates (or attaches to) tap `name` in the calling thread's network namespace.
    pub fn open(name: &str) -> io::Result<Tap> {
        // The crate would truncate a long name silently: refuse it instead.
        if name.is_empty() || name.len() > IFNAME_MAX || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap name {name:?} must be 1-{IFNAME_MAX} bytes"),
            ));
        }
        let iface = Iface::without_packet_info(name, Mode::Tap).map_err(|e| {
            let hint = match e.raw_os_error() {
                // EINVAL/EBUSY: an interface of that name exists and is not a free tap.
                Some(libc::EINVAL | libc::EBUSY) => {
                    " (an interface of that name exists and is not a tap this process may attach)"
                }
                Some(libc::EPERM) => " (creating a tap needs CAP_NET_ADMIN)",
                Some(libc::ENOENT) => " (/dev/net/tun is missing)",
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!("cannot create or attach tap {name}: {e}{hint}"),
            )
        })?;
        iface
            .set_non_blocking()
            .map_err(|e| io::Error::new(e.kind(), format!("tap {name}: non-blocking: {e}")))?;
        Ok(Tap {
            iface: Arc::new(iface),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        self.iface.name()
    }

    /// A second handle on the same device (for the writing side).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            iface: self.iface.clone(),
        })
    }

    /// Writes one frame; `Ok(false)` if the tap's queue is full and it was dropped.
    pub fn send(&self, frame: &[u8]) -> io::Result<bool> {
        match self.iface.send(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout_ms` for a frame; `Ok(None)` on timeout.
    pub fn recv(&self, buf: &mut [u8], timeout_ms: i32) -> io::Result<Option<usize>> {
        // The crate has no timed wait: poll its fd (see the module doc).
        let mut pfd = libc::pollfd {
            fd: self.iface.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; the fd stays open while
        // `self` holds the `Iface`.
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
        match self.iface.recv(buf) {
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
        net: Arc<parking_lot::Mutex<crate::vmm::devices::virtio::net::NetDevice>>,
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
