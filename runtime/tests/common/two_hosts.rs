//! Two hosts, an arbiter and a client, each in a network namespace the test creates and
//! removes: the topology of docs/operations.md's two-machine deployment, on one machine.
//!
//! ```text
//!   client ns: cbr (10.0.0.1/24) --- dn-a ==veth== uplink -- guestbr -- tap colog0 (guest A)
//!                                \-- dn-b ==veth== uplink -- guestbr -- tap colog0 (guest B)
//!   host A: rep0 192.168.50.1 <== link emulator (delay, loss, cuts) ==> host B: rep0 192.168.50.2
//!   host A: mgmt0 192.168.51.1 ==veth== arbiter ns: bridge mgmt 192.168.51.3 ==veth== host B: mgmt0 .2
//! ```
//!
//! The replication link is a pair of taps joined by `colo_runtime::net::linkem` (this
//! machine's kernel has no `sch_netem`), so the test can delay, drop, duplicate, reorder and
//! cut it while the pair runs. Each host's guest network is a bridge with the node's tap and an
//! uplink to the client's bridge, so both guests share one client LAN, as on two machines
//! with one switch. The nodes run with `ip netns exec` and the same pair file (written into
//! a temporary directory), exactly as an operator runs them on two machines. Nothing routes
//! out of the namespaces. Field order is drop order: processes, captures, link, namespaces.

use super::procs::{Procs, args};
use colo_runtime::net::capture::{Capture, Captured};
use colo_runtime::net::kvclient::{KvConnection, Timeouts, add_client_bridge};
use colo_runtime::net::linkem::{LinkEmulator, LinkFaults};
use colo_runtime::net::netns::NetNs;
use colo_runtime::net::tap::Tap;
use colo_runtime::pair::events::Milestone;
use std::path::PathBuf;
use std::time::Duration;

/// The guest's server, as the client sees it.
pub const GUEST: &str = "10.0.0.2:7000";
/// The guest's MAC (the pair file's NIC).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xc0, 0x10, 0x01];
/// The arbiter, on the management network.
pub const ARBITER: &str = "192.168.51.3:7600";
/// Where host A's primary listens for its secondary (replication link).
pub const A_PEER: &str = "192.168.50.1:7601";
/// Where host B listens for a new secondary once it survives (replication link).
pub const B_PEER: &str = "192.168.50.2:7601";

/// The pair file both hosts read; `pair_extra` lines go into `[pair]`.
pub fn pair_file(pair_extra: &str) -> String {
    format!(
        r#"# written by runtime/tests/common/two_hosts.rs
[[vm.net]]
tap = "colog0"
mac = "52:54:00:c0:10:01"
bridge = "guestbr"

[pair]
arbiter = "{ARBITER}"
{pair_extra}

[host.a]
role = "primary"
listen = "{A_PEER}"
node_id = 1

[host.b]
role = "secondary"
peer = "{A_PEER}"
listen = "{B_PEER}"
node_id = 2

[host.a-again]                        # host A rejoining as the secondary of host B
role = "secondary"
peer = "{B_PEER}"
listen = "{A_PEER}"

[host.b-again]                        # host B rejoining as the secondary of host A
role = "secondary"
peer = "{A_PEER}"
listen = "{B_PEER}"
"#
    )
}

/// The replication link of issue 11's fault test: 5 ms +- 2 ms, 1 % loss, 0.5 % duplication,
/// 1 % reordering.
pub const LOSSY_LINK: LinkFaults = LinkFaults {
    delay: Duration::from_millis(5),
    jitter: Duration::from_millis(2),
    loss: 10_000,
    duplicate: 5_000,
    reorder: 10_000,
    down: false,
};

/// The flags of a node's guest: `(temporary dir, host 0 or 1, node id)`.
pub type NodeFlags = fn(&std::path::Path, usize, u64) -> Vec<String>;

/// The test guest's key-value server (the default guest of the topology).
pub fn net_server(_dir: &std::path::Path, _host: usize, _node_id: u64) -> Vec<String> {
    args(&["--workload", "net-server"])
}

/// The test guest writing and checking a 1 MiB disk, each node on its own image in `dir`
/// (two machines would each have one at the same path).
pub fn disk_writer(dir: &std::path::Path, host: usize, node_id: u64) -> Vec<String> {
    let image = dir.join(format!("{}-{node_id}.img", ["a", "b"][host]));
    args(&[
        "--workload",
        "disk-writer",
        "--pages",
        "16",
        "--print-every",
        "20",
        "--disk",
        &image.to_string_lossy(),
        "--disk-size",
        "1M",
    ])
}

/// The running topology.
pub struct TwoHosts {
    /// The colo processes.
    pub procs: Procs,
    /// Process index of the arbiter, host A's node, host B's node.
    pub arbiter: usize,
    /// Host A's node (the first primary).
    pub a_node: usize,
    /// Host B's node (the first secondary).
    pub b_node: usize,
    /// Captures on the client's end of host A's and host B's uplink.
    pub captures: Vec<Capture>,
    /// The replication link.
    pub link: LinkEmulator,
    /// The temporary directory with the pair file.
    pub dir: PathBuf,
    /// Host A's and host B's control sockets.
    pub sockets: [String; 2],
    /// The pair file.
    pub file: String,
    /// The guest's flags of each node.
    pub node_flags: NodeFlags,
    /// Host A, host B, the arbiter's host, the client.
    pub a: NetNs,
    /// Host B.
    pub b: NetNs,
    /// The arbiter's namespace.
    pub arb: NetNs,
    /// The client's namespace.
    pub client: NetNs,
}

/// A veth pair: `end` in `here`, `far` in `there`.
fn veth(here: &NetNs, end: &str, there: &NetNs, far: &str) {
    ip(
        here,
        &[
            "link",
            "add",
            end,
            "type",
            "veth",
            "peer",
            "name",
            far,
            "netns",
            there.name(),
        ],
    );
}

fn ip(ns: &NetNs, words: &[&str]) {
    ns.ip(words)
        .unwrap_or_else(|e| panic!("in namespace {}: {e}", ns.name()));
}

impl TwoHosts {
    /// Builds the topology, starts the arbiter and both nodes from one pair file (with
    /// `pair_extra` in its `[pair]` section and `faults` on the replication link), and waits
    /// for the pairing's first checkpoint. `test` names the test for skip messages.
    pub fn start(test: &str, pair_extra: &str, faults: LinkFaults) -> Option<TwoHosts> {
        TwoHosts::start_with(test, pair_extra, faults, net_server)
    }

    /// [`TwoHosts::start`] with the guest's flags of each node from `node_flags(dir, host,
    /// node_id)` (the workload, each host's own disk image, ...).
    pub fn start_with(
        test: &str,
        pair_extra: &str,
        faults: LinkFaults,
        node_flags: NodeFlags,
    ) -> Option<TwoHosts> {
        if !super::kvm_available(test) || !super::net_available(test) {
            return None;
        }
        let a = NetNs::create(&super::unique_netns_name()).unwrap();
        let b = NetNs::create(&super::unique_netns_name()).unwrap();
        let arb = NetNs::create(&super::unique_netns_name()).unwrap();
        let client = NetNs::create(&super::unique_netns_name()).unwrap();

        // Management network: the arbiter's bridge, one veth per host.
        ip(&arb, &["link", "add", "mgmt", "type", "bridge"]);
        ip(&arb, &["addr", "add", "192.168.51.3/24", "dev", "mgmt"]);
        ip(&arb, &["link", "set", "mgmt", "up"]);
        for (host, end, addr) in [
            (&a, "m-a", "192.168.51.1/24"),
            (&b, "m-b", "192.168.51.2/24"),
        ] {
            veth(&arb, end, host, "mgmt0");
            ip(&arb, &["link", "set", end, "master", "mgmt", "up"]);
            ip(host, &["addr", "add", addr, "dev", "mgmt0"]);
            ip(host, &["link", "set", "mgmt0", "up"]);
        }

        // Client LAN: the client's bridge, an uplink to each host's guest bridge.
        add_client_bridge(&client, "cbr", "10.0.0.1/24").unwrap();
        for (host, end) in [(&a, "dn-a"), (&b, "dn-b")] {
            veth(&client, end, host, "uplink");
            ip(&client, &["link", "set", end, "master", "cbr", "up"]);
            ip(
                host,
                &[
                    "link",
                    "add",
                    "guestbr",
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                ],
            );
            ip(host, &["link", "set", "uplink", "master", "guestbr", "up"]);
            ip(host, &["link", "set", "guestbr", "up"]);
        }
        let captures = ["dn-a", "dn-b"]
            .into_iter()
            .map(|end| client.run(move || Capture::start(end)).unwrap().unwrap())
            .collect();

        // Replication link: a tap in each host joined by the link emulator.
        let tap_a = a.run(|| Tap::open("rep0")).unwrap().unwrap();
        let tap_b = b.run(|| Tap::open("rep0")).unwrap().unwrap();
        for (host, addr) in [(&a, "192.168.50.1/24"), (&b, "192.168.50.2/24")] {
            ip(host, &["addr", "add", addr, "dev", "rep0"]);
            ip(host, &["link", "set", "rep0", "up"]);
        }
        let link = LinkEmulator::start(tap_a, tap_b, faults, 0x2_4057).unwrap();

        let dir = std::env::temp_dir().join(format!("{}-pair", a.name()));
        std::fs::create_dir_all(&dir).unwrap();
        // The pair key: the one file an operator copies to both hosts and the arbiter, named
        // in the pair file (the arbiter gets it from Procs, which adds it to its command).
        let mut procs = Procs::new();
        let file = dir.join("pair.toml");
        let pair = format!("key_file = \"{}\"\n{pair_extra}", procs.key.path());
        std::fs::write(&file, pair_file(&pair)).unwrap();
        let file = file.to_string_lossy().into_owned();

        let state = dir.join("arbiter.state").to_string_lossy().into_owned();
        let arbiter = procs.spawn_in(
            arb.name(),
            &args(&["arbiter", "--listen", ARBITER, "--state", &state]),
        );
        procs.wait_until(Duration::from_secs(10), arbiter, |m| {
            matches!(m, Milestone::Listening { .. })
        });
        let sockets =
            ["a", "b"].map(|h| dir.join(format!("{h}.sock")).to_string_lossy().into_owned());
        let node = |role: &str, host: usize, socket: &str| {
            let mut v = args(&[
                role,
                "--config",
                &file,
                "--host",
                ["a", "b"][host],
                "--control",
                socket,
            ]);
            v.extend(node_flags(&dir, host, host as u64 + 1));
            v
        };
        let a_node = procs.spawn_in(a.name(), &node("primary", 0, &sockets[0]));
        let b_node = procs.spawn_in(b.name(), &node("secondary", 1, &sockets[1]));
        procs.wait_until(Duration::from_secs(60), a_node, |m| {
            matches!(m, Milestone::CheckpointDone { epoch: 1, .. })
        });
        Some(TwoHosts {
            procs,
            arbiter,
            a_node,
            b_node,
            captures,
            link,
            dir,
            sockets,
            file,
            node_flags,
            a,
            b,
            arb,
            client,
        })
    }

    /// Starts host `host`'s (0: A, 1: B) node again as the secondary of the other host (the
    /// pair file's `a-again`/`b-again` part), as node `node_id`, with `extra` flags; returns
    /// its process index. Its control socket becomes the host's.
    pub fn rejoin(&mut self, host: usize, node_id: u64, extra: &[&str]) -> usize {
        let name = ["a-again", "b-again"][host];
        let socket = self
            .dir
            .join(format!("{name}-{node_id}.sock"))
            .to_string_lossy()
            .into_owned();
        let mut v = args(&[
            "secondary",
            "--config",
            &self.file,
            "--host",
            name,
            "--node-id",
            &node_id.to_string(),
            "--control",
            &socket,
        ]);
        v.extend((self.node_flags)(&self.dir, host, node_id));
        v.extend(args(extra));
        self.sockets[host] = socket;
        let ns = [&self.a, &self.b][host].name().to_string();
        self.procs.spawn_in(&ns, &v)
    }

    /// Starts the arbiter again (after it was killed); returns its process index.
    pub fn restart_arbiter(&mut self) -> usize {
        let ns = self.arb.name().to_string();
        let state = self
            .dir
            .join("arbiter.state")
            .to_string_lossy()
            .into_owned();
        let arbiter = self.procs.spawn_in(
            &ns,
            &args(&["arbiter", "--listen", ARBITER, "--state", &state]),
        );
        self.procs
            .wait_until(Duration::from_secs(10), arbiter, |m| {
                matches!(m, Milestone::Listening { .. })
            });
        self.arbiter = arbiter;
        arbiter
    }

    /// A connection from the client's namespace to the guest's server.
    pub fn connect(&self) -> KvConnection {
        let timeouts = Timeouts {
            connect: Duration::from_secs(20),
            read: Duration::from_secs(30),
        };
        KvConnection::connect(&self.client, GUEST.parse().unwrap(), timeouts)
            .expect("connecting to the guest from the client's namespace")
    }

    /// Cuts (`true`) or restores host `host`'s (`'a'` or `'b'`) management link, its only
    /// way to the arbiter.
    pub fn cut_arbiter_link(&self, host: char, cut: bool) {
        let end = if host == 'a' { "m-a" } else { "m-b" };
        ip(
            &self.arb,
            &["link", "set", end, if cut { "down" } else { "up" }],
        );
    }

    /// Cuts (`true`) or restores host A's replication and management links together: host A
    /// reaches neither host B nor the arbiter.
    pub fn isolate_host_a(&self, cut: bool) {
        self.link.set_down(cut);
        self.cut_arbiter_link('a', cut);
    }

    /// Frames from the guest's MAC captured so far on the client end of host A's (0) or
    /// host B's (1) uplink.
    pub fn guest_frames(&self, host: usize) -> Vec<Captured> {
        self.captures[host]
            .snapshot()
            .into_iter()
            .filter(|c| c.src == GUEST_MAC)
            .collect()
    }

    /// `colo status --json` of host A's (0) or host B's (1) node, as text (None if it does
    /// not answer within 5 s).
    pub fn status(&self, host: usize) -> Option<String> {
        let out = std::process::Command::new(super::procs::COLO)
            .args([
                "status",
                "--json",
                "--timeout",
                "5",
                "--control",
                &self.sockets[host],
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
