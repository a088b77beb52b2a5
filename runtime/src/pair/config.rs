//! The pair's config file (TOML): one file that describes the protected VM (`[vm]`), the pair's
//! timing and arbiter (`[pair]`) and each host's own part (`[host.NAME]`: its role, addresses,
//! node id, control socket). The same file is copied to both hosts; `colo primary --config
//! FILE --host a` takes the VM, the pair and host `a`'s part, and flags given on the command
//! line override the file. `colo config check FILE` validates it without starting anything.
//!
//! Invariant: a file that parses is usable as far as its text can tell: unknown keys, values of
//! the wrong type, bad MACs, sizes and addresses are refused while parsing, with the key and the
//! line and column (`toml`'s span-carrying errors); a host's role and its addresses agree
//! ([`PairFile::host`]). What depends on the host (files present, taps creatable) is checked
//! when the node starts.

use crate::vm_spec::{self, BootSource, DiskSpec, NetSpec, VmSpec};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairFile {
    /// The protected VM (the same on both hosts).
    #[serde(default)]
    pub vm: VmSection,
    /// The pair's settings (the same on both hosts).
    #[serde(default)]
    pub pair: PairSection,
    /// Each host's own part, by the name given to `--host`.
    #[serde(default)]
    pub host: BTreeMap<String, HostSection>,
}

/// `[vm]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSection {
    /// `"test-guest"`: colo's built-in guest (the default without `kernel`).
    pub guest: Option<GuestName>,
    /// A kernel: bzImage, vmlinux or PVH ELF.
    pub kernel: Option<PathBuf>,
    /// The kernel's initrd.
    pub initrd: Option<PathBuf>,
    /// The kernel command line (colo appends its devices).
    pub cmdline: Option<String>,
    /// Guest RAM in MiB.
    pub memory_mib: Option<u64>,
    /// vCPUs.
    pub vcpus: Option<u8>,
    /// Disks, in device order (`[[vm.disk]]`).
    #[serde(default)]
    pub disk: Vec<DiskEntry>,
    /// NICs, in device order (`[[vm.net]]`).
    #[serde(default)]
    pub net: Vec<NetEntry>,
}

/// The only built-in guest's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum GuestName {
    /// colo's test guest.
    #[serde(rename = "test-guest")]
    TestGuest,
}

/// One `[[vm.disk]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskEntry {
    /// The image on this host.
    pub path: PathBuf,
    /// Read-only (not replicated).
    #[serde(default)]
    pub readonly: bool,
    /// Size, `"64M"` style.
    #[serde(default, deserialize_with = "size")]
    pub size: Option<u64>,
}

/// One `[[vm.net]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetEntry {
    /// The tap on this host.
    pub tap: String,
    /// The NIC's MAC, `"52:54:00:12:34:56"`.
    #[serde(default, deserialize_with = "mac")]
    pub mac: Option<[u8; 6]>,
    /// A bridge the tap joins.
    pub bridge: Option<String>,
}

/// `[pair]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSection {
    /// The arbiter both nodes ask for leases.
    pub arbiter: Option<SocketAddr>,
    /// The pair's key file (`colo keygen`; the same key on both hosts and the arbiter).
    pub key_file: Option<PathBuf>,
    /// Periodic checkpoint interval (primary).
    pub checkpoint_interval_ms: Option<u64>,
    /// How long unmatched output is held before a checkpoint is forced (primary).
    pub compare_timeout_ms: Option<u64>,
    /// Heartbeat interval.
    pub heartbeat_interval_ms: Option<u64>,
    /// Heartbeat intervals without a word before the peer is lost.
    pub heartbeat_misses: Option<u32>,
    /// How long a peer that closed the link has to reconnect before it is lost.
    pub closed_link_grace_ms: Option<u64>,
    /// Arm re-protection whenever a node runs solo.
    pub auto_reprotect: Option<bool>,
}

/// A host's role in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// Starts as the primary (`colo primary`).
    Primary,
    /// Starts as the secondary (`colo secondary`).
    Secondary,
}

impl HostRole {
    /// `primary` or `secondary`, as in the file.
    pub fn name(self) -> &'static str {
        match self {
            HostRole::Primary => "primary",
            HostRole::Secondary => "secondary",
        }
    }
}

/// `[host.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// The role this host starts in.
    pub role: HostRole,
    /// Primary: where the secondary connects. Secondary: where new secondaries connect once
    /// it survives a failover.
    pub listen: Option<SocketAddr>,
    /// Secondary: the primary's address.
    pub peer: Option<SocketAddr>,
    /// The node id (distinct per host).
    pub node_id: Option<u64>,
    /// The control socket.
    pub control: Option<PathBuf>,
    /// Where this node serves Prometheus metrics (`--metrics-listen`).
    pub metrics_listen: Option<SocketAddr>,
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    vm_spec::parse_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
    let text = String::deserialize(d)?;
    vm_spec::parse_mac(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read config file {path}: {error}")]
    Unreadable {
        /// The file.
        path: String,
        /// The OS error.
        error: String,
    },
    /// Not valid TOML, or not this schema (the message names the key, line and column).
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// toml's message, with the span.
        message: String,
    },
    /// A semantic problem, named.
    #[error("config file {path}: {message}")]
    Inconsistent {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl PairFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PairFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        PairFile::parse(&text, path)
    }

    /// Parses `text` (read from `path`, for messages) and checks what does not depend on the
    /// host: the VM section's shape and every host's role and addresses.
    pub fn parse(text: &str, path: &Path) -> Result<PairFile, ConfigError> {
        let file: PairFile = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let bad = |message: String| ConfigError::Inconsistent {
            path: path.display().to_string(),
            message,
        };
        if file.vm.kernel.is_some() && file.vm.guest.is_some() {
            return Err(bad(
                "[vm]: `guest` and `kernel` exclude each other".to_string()
            ));
        }
        if file.vm.initrd.is_some() && file.vm.kernel.is_none() {
            return Err(bad("[vm]: `initrd` needs `kernel`".to_string()));
        }
        file.vm_spec(None)
            .check_supported()
            .map_err(|e| bad(format!("[vm]: {e}")))?;
        for (name, host) in &file.host {
            match host.role {
                HostRole::Primary if host.listen.is_none() => {
                    return Err(bad(format!("[host.{name}]: a primary needs `listen`")));
                }
                HostRole::Primary if host.peer.is_some() => {
                    return Err(bad(format!(
                        "[host.{name}]: a primary has no `peer` (the secondary connects to it)"
                    )));
                }
                HostRole::Secondary if host.peer.is_none() => {
                    return Err(bad(format!("[host.{name}]: a secondary needs `peer`")));
                }
                _ => {}
            }
        }
        let mut ids: Vec<u64> = file.host.values().filter_map(|h| h.node_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("two hosts have the same `node_id`".to_string()));
        }
        Ok(file)
    }

    /// Host `name`'s part, or an error listing the hosts the file has.
    pub fn host(&self, name: &str, path: &Path) -> Result<&HostSection, ConfigError> {
        self.host
            .get(name)
            .ok_or_else(|| ConfigError::Inconsistent {
                path: path.display().to_string(),
                message: format!(
                    "no [host.{name}] (the file has: {})",
                    self.host.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })
    }

    /// The VM description of `[vm]`; `defaults` fills what the file leaves out (the command
    /// line's defaults), else colo's own (32 MiB, 1 vCPU).
    pub fn vm_spec(&self, defaults: Option<&VmSpec>) -> VmSpec {
        let vm = &self.vm;
        VmSpec {
            boot: match &vm.kernel {
                Some(kernel) => BootSource::Kernel {
                    kernel: kernel.clone(),
                    initrd: vm.initrd.clone(),
                },
                None => BootSource::TestGuest,
            },
            cmdline: vm
                .cmdline
                .clone()
                .or_else(|| defaults.and_then(|d| d.cmdline.clone())),
            mem_mib: vm.memory_mib.or(defaults.map(|d| d.mem_mib)).unwrap_or(32),
            vcpus: vm.vcpus.or(defaults.map(|d| d.vcpus)).unwrap_or(1),
            disks: vm
                .disk
                .iter()
                .map(|d| DiskSpec {
                    path: d.path.clone(),
                    readonly: d.readonly,
                    size: d.size,
                })
                .collect(),
            nets: vm
                .net
                .iter()
                .map(|n| NetSpec {
                    tap: n.tap.clone(),
                    mac: n.mac.unwrap_or(crate::vmm::layout::DEFAULT_MAC),
                    bridge: n.bridge.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[vm]
kernel = "/srv/vm/vmlinux"
cmdline = "console=ttyS0"
memory_mib = 512
vcpus = 2
[[vm.disk]]
path = "/srv/vm/disk.img"
size = "8G"
[[vm.disk]]
path = "/srv/vm/seed.iso"
readonly = true
[[vm.net]]
tap = "colo0"
mac = "52:54:00:12:34:56"
bridge = "br0"

[pair]
arbiter = "10.0.0.3:7600"
checkpoint_interval_ms = 200

[host.a]
role = "primary"
listen = "10.0.0.1:7601"
node_id = 1
metrics_listen = "10.0.0.1:9601"

[host.b]
role = "secondary"
peer = "10.0.0.1:7601"
listen = "10.0.0.2:7602"
node_id = 2
"#;

    fn parse(text: &str) -> Result<PairFile, ConfigError> {
        PairFile::parse(text, Path::new("pair.toml"))
    }

    #[test]
    fn a_complete_file_gives_the_vm_the_pair_and_each_host() {
        let f = parse(GOOD).unwrap();
        let spec = f.vm_spec(None);
        assert_eq!(spec.mem_mib, 512);
        assert_eq!(spec.vcpus, 2);
        assert_eq!(spec.disks[0].size, Some(8 << 30));
        assert!(spec.disks[1].readonly);
        assert_eq!(spec.nets[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(spec.nets[0].bridge.as_deref(), Some("br0"));
        assert_eq!(f.pair.checkpoint_interval_ms, Some(200));
        let b = f.host("b", Path::new("pair.toml")).unwrap();
        assert_eq!(b.role, HostRole::Secondary);
        assert_eq!(b.peer, Some("10.0.0.1:7601".parse().unwrap()));
        assert_eq!(b.metrics_listen, None);
        let a = f.host("a", Path::new("pair.toml")).unwrap();
        assert_eq!(a.metrics_listen, Some("10.0.0.1:9601".parse().unwrap()));
        let e = f.host("c", Path::new("pair.toml")).unwrap_err().to_string();
        assert!(e.contains("no [host.c] (the file has: a, b)"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_line() {
        for (text, needles) in [
            (
                "[vm]\nmemory_mib = 64\nmemroy = 3\n",
                &["line 3", "unknown field `memroy`"][..],
            ),
            (
                "[vm]\n[[vm.net]]\ntap = \"t\"\nmac = \"52:54:00\"\n",
                &["line 4", "six octets"][..],
            ),
            (
                "[vm]\n[[vm.disk]]\npath = \"/x\"\nsize = \"12\"\n",
                &["line 4", "multiple of 512"][..],
            ),
            (
                "[pair]\narbiter = \"nowhere\"\n",
                &["line 2", "arbiter"][..],
            ),
            ("[vm]\nvcpus = \"two\"\n", &["line 2", "vcpus"][..]),
            (
                "[host.a]\nrole = \"leader\"\nlisten = \"1.2.3.4:5\"\n",
                &["line 2", "unknown variant `leader`"][..],
            ),
            ("[vm]\nguest = \"windows\"\n", &["line 2", "windows"][..]),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("config file pair.toml: "), "{e}");
            for needle in needles {
                assert!(e.contains(needle), "{text:?}: {e}");
            }
        }
    }

    #[test]
    fn inconsistent_hosts_and_vm_sections_are_refused() {
        for (text, needle) in [
            ("[host.a]\nrole = \"primary\"\n", "a primary needs `listen`"),
            (
                "[host.b]\nrole = \"secondary\"\nlisten = \"1.2.3.4:5\"\n",
                "a secondary needs `peer`",
            ),
            (
                "[host.a]\nrole = \"primary\"\nlisten = \"1.2.3.4:5\"\npeer = \"1.2.3.4:6\"\n",
                "a primary has no `peer`",
            ),
            (
                "[host.a]\nrole = \"primary\"\nlisten = \"1.2.3.4:5\"\nnode_id = 1\n[host.b]\nrole = \"secondary\"\npeer = \"1.2.3.4:5\"\nnode_id = 1\n",
                "same `node_id`",
            ),
            (
                "[vm]\nguest = \"test-guest\"\nkernel = \"/k\"\n",
                "exclude each other",
            ),
            ("[vm]\ninitrd = \"/i\"\n", "`initrd` needs `kernel`"),
            (
                "[vm]\n[[vm.net]]\ntap = \"a\"\n[[vm.net]]\ntap = \"b\"\n",
                "two NICs with MAC",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
