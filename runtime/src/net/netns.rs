//! Network namespaces made with `ip netns` (iproute2) for tests and `colo demo`: a guard
//! that deletes its namespace when dropped, a way to run code inside one (a thread that
//! `setns`es into it: sockets and taps it creates belong to that namespace for their whole
//! life), and `ip -n` commands.
//!
//! Invariant: a [`NetNs`] only exists for a namespace it created itself (a name that already
//! exists is an error, never adopted), and dropping it deletes the namespace with every
//! interface in it, so no tap or address outlives a test, also when the test fails.

use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use tracing::warn;

/// A network namespace owned by this process.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl NetNs {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> io::Result<NetNs> {
        run_ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path)?;
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd; it changes only this new thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("a thread inside the namespace panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            warn!("cannot delete network namespace {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_inside_a_missing_namespace_is_an_error_not_a_panic() {
        // A guard for a name that was never created (constructed directly): `run` must fail
        // to open it; forgetting the guard keeps Drop from trying to delete it.
        let ns = NetNs {
            name: format!("colo-never-created-{}", std::process::id()),
        };
        assert!(ns.run(|| ()).is_err());
        std::mem::forget(ns);
    }
}
