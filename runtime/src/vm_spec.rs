//! The VM description a user gives colo (`VmSpec`): what boots (colo's built-in test guest, or a
//! kernel with its initrd and command line), guest memory, vCPUs, disks and NICs, parsed from the
//! `colo primary|secondary` flags; and its fingerprint, which the secondary sends in its `Hello`
//! so that the primary refuses a secondary described for another VM instead of turning it into a
//! corrupt replica (colo-core `HelloRejectReason::VmMismatch`).
//!
//! Invariant: the fingerprint covers everything that decides the shape of the VM or the guest's
//! content (memory size, vCPU count, the boot image and initrd bytes, the user's command line,
//! disk sizes and modes, NIC MACs) and nothing host-local (file paths, tap names), so the same
//! description on two hosts gives the same fingerprint, and two descriptions that would build
//! different VMs do not.

use crate::vmm::layout;
use std::path::{Path, PathBuf};

/// What the VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootSource {
    /// colo's own test guest (the binary this colo was built with).
    TestGuest,
    /// A kernel (bzImage, vmlinux ELF or PVH ELF) with an optional initial ramdisk.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// The initrd.
        initrd: Option<PathBuf>,
    },
}

/// One `--disk PATH[,readonly][,size=SIZE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file on this host.
    pub path: PathBuf,
    /// The guest may only read it (no writes to replicate).
    pub readonly: bool,
    /// The disk's size (a missing image is created this large, a shorter one extended);
    /// `None`: the image's own size.
    pub size: Option<u64>,
}

/// One `--net tap=NAME[,mac=MAC][,bridge=BR]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The host tap device towards the clients.
    pub tap: String,
    /// The guest NIC's MAC.
    pub mac: [u8; 6],
    /// A host bridge the tap joins (host-local, like the tap's name).
    pub bridge: Option<String>,
}

/// A VM description (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// What boots.
    pub boot: BootSource,
    /// The user's command line (for a kernel, the whole line before colo's device arguments;
    /// for the test guest, words appended to the workload's line).
    pub cmdline: Option<String>,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Disks, in device order.
    pub disks: Vec<DiskSpec>,
    /// NICs, in device order.
    pub nets: Vec<NetSpec>,
}

/// A description that cannot be used; each names the flag or file at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `--disk` with an unknown option.
    #[error("--disk {arg:?}: bad option {option:?} (expected PATH[,readonly][,size=SIZE])")]
    DiskOption {
        /// The whole argument.
        arg: String,
        /// The word not understood.
        option: String,
    },
    /// `--disk` without a path.
    #[error("--disk {0:?}: no image path")]
    DiskPath(String),
    /// `--net` that is not `tap=NAME[,mac=MAC]`.
    #[error("--net {arg:?}: {why}")]
    Net {
        /// The whole argument.
        arg: String,
        /// What is wrong.
        why: String,
    },
    /// A boot file that cannot be read.
    #[error("cannot read {what} {path}: {error}")]
    Unreadable {
        /// "kernel", "initrd", "test guest".
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        error: String,
    },
    /// A description colo cannot run (yet), with the reason.
    #[error("{0}")]
    Unsupported(String),
}

impl std::str::FromStr for DiskSpec {
    type Err = SpecError;

    /// `PATH`, then `,readonly` (or `,ro`) and `,size=SIZE` in any order.
    fn from_str(arg: &str) -> Result<DiskSpec, SpecError> {
        let mut parts = arg.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(SpecError::DiskPath(arg.to_string()));
        }
        let (mut readonly, mut size) = (false, None);
        for option in parts {
            match option.split_once('=') {
                None if option == "readonly" || option == "ro" => readonly = true,
                Some(("size", text)) => {
                    size = Some(parse_size(text).map_err(|why| SpecError::DiskOption {
                        arg: arg.to_string(),
                        option: why,
                    })?)
                }
                _ => {
                    let other = option;
                    return Err(SpecError::DiskOption {
                        arg: arg.to_string(),
                        option: other.to_string(),
                    });
                }
            }
        }
        Ok(DiskSpec {
            path: PathBuf::from(path),
            readonly,
            size,
        })
    }
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

impl std::str::FromStr for NetSpec {
    type Err = SpecError;

    /// `tap=NAME`, then `mac=52:54:00:12:34:56` and `bridge=BR` in any order.
    fn from_str(arg: &str) -> Result<NetSpec, SpecError> {
        let bad = |why: String| SpecError::Net {
            arg: arg.to_string(),
            why,
        };
        let (mut tap, mut mac, mut bridge) = (None, None, None);
        for part in arg.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) => {
                    if name.is_empty() || name.len() > IFNAME_MAX || name.contains('/') {
                        return Err(bad(format!(
                            "tap name {name:?} must be 1 to {IFNAME_MAX} characters without '/'"
                        )));
                    }
                    tap = Some(name.to_string());
                }
                Some(("mac", text)) => mac = Some(parse_mac(text).map_err(bad)?),
                Some(("bridge", name)) => {
                    if name.is_empty() || name.len() > IFNAME_MAX || name.contains('/') {
                        return Err(bad(format!(
                            "bridge name {name:?} must be 1 to {IFNAME_MAX} characters without '/'"
                        )));
                    }
                    bridge = Some(name.to_string());
                }
                _ => {
                    return Err(bad(format!(
                        "unknown part {part:?} (expected tap=NAME[,mac=MAC][,bridge=BR])"
                    )));
                }
            }
        }
        let tap = tap.ok_or_else(|| bad("no tap=NAME".to_string()))?;
        Ok(NetSpec {
            tap,
            mac: mac.unwrap_or(layout::DEFAULT_MAC),
            bridge,
        })
    }
}

/// A disk size: `4096`, `64K`, `64M`, `1G` (powers of 1024), a positive multiple of 512.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or a number with K, M or G)"))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0 && b % 512 == 0)
        .ok_or_else(|| format!("{s:?}: a disk size is a positive multiple of 512 bytes"))
}

/// `52:54:00:12:34:56`: six hex octets, a unicast address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let octets: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if octets.len() != 6 {
        return Err(format!(
            "MAC {text:?} is not six octets like 52:54:00:12:34:56"
        ));
    }
    for (byte, octet) in mac.iter_mut().zip(&octets) {
        *byte = u8::from_str_radix(octet, 16)
            .ok()
            .filter(|_| octet.len() == 2)
            .ok_or_else(|| format!("MAC {text:?}: {octet:?} is not a hex octet"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("MAC {text:?} is a multicast address"));
    }
    Ok(mac)
}

/// The boot files' bytes (read once: loaded on the primary, fingerprinted on both).
#[derive(Clone, Debug, Default)]
pub struct BootImages {
    /// The kernel or test-guest image.
    pub image: Vec<u8>,
    /// The initrd, if any.
    pub initrd: Option<Vec<u8>>,
}

impl VmSpec {
    /// Checks what colo can run: up to `layout::MAX_DISKS` disks and `layout::MAX_NICS` NICs
    /// with distinct MACs (frames for clients find their NIC by source MAC).
    pub fn check_supported(&self) -> Result<(), SpecError> {
        if self.disks.len() > layout::MAX_DISKS {
            return Err(SpecError::Unsupported(format!(
                "{} --disk given: a VM has at most {} disks (one virtio-blk device each)",
                self.disks.len(),
                layout::MAX_DISKS
            )));
        }
        if self.nets.len() > layout::MAX_NICS {
            return Err(SpecError::Unsupported(format!(
                "{} --net given: a VM has at most {} NICs (one virtio-net device each)",
                self.nets.len(),
                layout::MAX_NICS
            )));
        }
        let mut macs: Vec<[u8; 6]> = self.nets.iter().map(|n| n.mac).collect();
        macs.sort_unstable();
        if let Some(pair) = macs.windows(2).find(|w| w[0] == w[1]) {
            return Err(SpecError::Unsupported(format!(
                "two NICs with MAC {}: give each --net its own mac=",
                format_mac(pair[0])
            )));
        }
        if self.vcpus == 0 {
            return Err(SpecError::Unsupported(
                "--vcpus 0: a VM needs at least one vCPU".to_string(),
            ));
        }
        Ok(())
    }

    /// Reads the boot image (the built-in test guest at `test_guest`, or the kernel) and the
    /// initrd, with an error naming the file.
    pub fn read_boot(&self, test_guest: &Path) -> Result<BootImages, SpecError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| SpecError::Unreadable {
                what,
                path: path.display().to_string(),
                error: e.to_string(),
            })
        };
        Ok(match &self.boot {
            BootSource::TestGuest => BootImages {
                image: read("test guest", test_guest)?,
                initrd: None,
            },
            BootSource::Kernel { kernel, initrd } => BootImages {
                image: read("kernel", kernel)?,
                initrd: initrd.as_deref().map(|p| read("initrd", p)).transpose()?,
            },
        })
    }

    /// The fingerprint (see the module doc). `disk_sizes` are the disks' sizes in bytes, in
    /// `disks` order (the secondary's parent image must be as large as the primary's image).
    pub fn fingerprint(&self, images: &BootImages, disk_sizes: &[u64]) -> u64 {
        let mut h = Fnv::default();
        h.field(b"colo-vm-1");
        h.u64(self.mem_mib);
        h.u64(u64::from(self.vcpus));
        match &self.boot {
            BootSource::TestGuest => h.field(b"test-guest"),
            BootSource::Kernel { .. } => h.field(b"kernel"),
        }
        h.u64(u64::from(crc32c::crc32c(&images.image)));
        h.u64(images.image.len() as u64);
        match &images.initrd {
            Some(initrd) => {
                h.u64(1);
                h.u64(u64::from(crc32c::crc32c(initrd)));
                h.u64(initrd.len() as u64);
            }
            None => h.u64(0),
        }
        h.field(self.cmdline.as_deref().unwrap_or_default().as_bytes());
        h.u64(self.disks.len() as u64);
        for (disk, size) in self.disks.iter().zip(disk_sizes) {
            h.u64(*size);
            h.u64(u64::from(disk.readonly));
        }
        h.u64(self.nets.len() as u64);
        for net in &self.nets {
            h.field(&net.mac);
        }
        // 0 means "no fingerprint" on the wire (a node that does not check): never produce it.
        h.finish().max(1)
    }

    /// One line for the logs: what this node runs (compare the two nodes' lines when the
    /// primary refuses the secondary's description).
    pub fn summary(&self, fingerprint: u64, disk_sizes: &[u64]) -> String {
        let boot = match &self.boot {
            BootSource::TestGuest => "test-guest".to_string(),
            BootSource::Kernel { kernel, initrd } => match initrd {
                Some(i) => format!("kernel={} initrd={}", kernel.display(), i.display()),
                None => format!("kernel={}", kernel.display()),
            },
        };
        let disks: Vec<String> = self
            .disks
            .iter()
            .zip(disk_sizes)
            .map(|(d, size)| format!("{}B{}", size, if d.readonly { ",ro" } else { "" }))
            .collect();
        let nets: Vec<String> = self.nets.iter().map(|n| format_mac(n.mac)).collect();
        format!(
            "vm {boot} memory_mib={} vcpus={} disks=[{}] nets=[{}] fingerprint={fingerprint:016x}",
            self.mem_mib,
            self.vcpus,
            disks.join(" "),
            nets.join(" ")
        )
    }
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// FNV-1a, 64 bits, with length-prefixed fields (so field boundaries count).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.bytes(bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            boot: BootSource::Kernel {
                kernel: PathBuf::from("/a/vmlinux"),
                initrd: None,
            },
            cmdline: Some("console=ttyS0".to_string()),
            mem_mib: 256,
            vcpus: 2,
            disks: vec!["/a/disk.img".parse().unwrap()],
            nets: vec!["tap=tap0,mac=52:54:00:00:00:02".parse().unwrap()],
        }
    }

    fn images() -> BootImages {
        BootImages {
            image: b"kernel bytes".to_vec(),
            initrd: None,
        }
    }

    #[test]
    fn disk_and_net_arguments_parse() {
        let d: DiskSpec = "/x/y.img,readonly".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/x/y.img"));
        assert!(d.readonly);
        assert!(!"/x/y.img".parse::<DiskSpec>().unwrap().readonly);
        let d: DiskSpec = "/x/z.img,size=8M".parse().unwrap();
        assert_eq!((d.readonly, d.size), (false, Some(8 << 20)));
        let n: NetSpec = "mac=02:00:00:00:00:01,tap=colo0,bridge=br0"
            .parse()
            .unwrap();
        assert_eq!(n.tap, "colo0");
        assert_eq!(n.bridge.as_deref(), Some("br0"));
        assert_eq!(n.mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!("tap=t".parse::<NetSpec>().unwrap().mac, layout::DEFAULT_MAC);
    }

    #[test]
    fn bad_disk_and_net_arguments_are_clear_errors() {
        let e = "/x,rw".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.contains("bad option \"rw\""), "{e}");
        let e = "/x,size=12".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.contains("multiple of 512"), "{e}");
        assert!(",readonly".parse::<DiskSpec>().is_err());
        for (arg, needle) in [
            ("mac=52:54:00:00:00:01", "no tap=NAME"),
            ("tap=", "1 to 15 characters"),
            ("tap=a-very-long-tap-name", "1 to 15 characters"),
            ("tap=t,mac=52:54:00:00:00", "six octets"),
            ("tap=t,mac=52:54:00:00:00:zz", "not a hex octet"),
            ("tap=t,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=t,speed=10", "unknown part"),
        ] {
            let e = arg.parse::<NetSpec>().unwrap_err().to_string();
            assert!(e.contains(needle), "{arg}: {e}");
        }
    }

    #[test]
    fn fingerprint_ignores_host_local_names() {
        let a = spec();
        let mut b = spec();
        b.boot = BootSource::Kernel {
            kernel: PathBuf::from("/elsewhere/vmlinux"),
            initrd: None,
        };
        b.disks[0].path = PathBuf::from("/other/disk.img");
        b.nets[0].tap = "tap9".to_string();
        b.nets[0].bridge = Some("br9".to_string());
        assert_eq!(
            a.fingerprint(&images(), &[1 << 20]),
            b.fingerprint(&images(), &[1 << 20])
        );
    }

    #[test]
    fn fingerprint_sees_every_shape_change() {
        let base = spec().fingerprint(&images(), &[1 << 20]);
        let mut changed = Vec::new();
        let mut s = spec();
        s.mem_mib = 512;
        changed.push(s.fingerprint(&images(), &[1 << 20]));
        let mut s = spec();
        s.vcpus = 1;
        changed.push(s.fingerprint(&images(), &[1 << 20]));
        let mut s = spec();
        s.cmdline = Some("console=ttyS1".to_string());
        changed.push(s.fingerprint(&images(), &[1 << 20]));
        let mut s = spec();
        s.disks[0].readonly = true;
        changed.push(s.fingerprint(&images(), &[1 << 20]));
        let mut s = spec();
        s.nets[0].mac[5] = 9;
        changed.push(s.fingerprint(&images(), &[1 << 20]));
        let mut s = spec();
        s.boot = BootSource::TestGuest;
        changed.push(s.fingerprint(&images(), &[1 << 20]));
        changed.push(spec().fingerprint(&images(), &[2 << 20]));
        let other = BootImages {
            image: b"kernel bytez".to_vec(),
            initrd: None,
        };
        changed.push(spec().fingerprint(&other, &[1 << 20]));
        let with_initrd = BootImages {
            image: b"kernel bytes".to_vec(),
            initrd: Some(vec![1, 2, 3]),
        };
        changed.push(spec().fingerprint(&with_initrd, &[1 << 20]));
        for (i, f) in changed.iter().enumerate() {
            assert_ne!(*f, base, "change {i} kept the fingerprint");
            assert_ne!(*f, 0);
        }
    }

    #[test]
    fn too_many_disks_or_nics_and_shared_macs_are_refused_clearly() {
        let mut s = spec();
        for i in 0..layout::MAX_DISKS {
            s.disks.push(format!("/b{i}.img").parse().unwrap());
        }
        let e = s.check_supported().unwrap_err().to_string();
        assert!(e.contains("at most 4 disks"), "{e}");
        let mut s = spec();
        s.nets.push("tap=t2,mac=52:54:00:00:00:02".parse().unwrap());
        let e = s.check_supported().unwrap_err().to_string();
        assert!(e.contains("two NICs with MAC 52:54:00:00:00:02"), "{e}");
        let mut s = spec();
        for i in 0..layout::MAX_NICS {
            s.nets
                .push(format!("tap=t{i},mac=52:54:00:00:01:0{i}").parse().unwrap());
        }
        let e = s.check_supported().unwrap_err().to_string();
        assert!(e.contains("at most 4 NICs"), "{e}");
        assert!(spec().check_supported().is_ok());
    }

    #[test]
    fn unreadable_boot_files_name_the_file() {
        let mut s = spec();
        s.boot = BootSource::Kernel {
            kernel: PathBuf::from("/nonexistent/colo-kernel"),
            initrd: None,
        };
        let e = s.read_boot(Path::new("/x")).unwrap_err().to_string();
        assert!(
            e.contains("cannot read kernel /nonexistent/colo-kernel"),
            "{e}"
        );
    }
}
