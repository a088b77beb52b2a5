//! The workload selection, read from the command line the VMM put in guest memory
//! (`colo.workload=counter colo.pages=64 ...`; unknown words are ignored, like Linux does).

use alloc::string::String;

/// Which workload to run and its knobs.
#[derive(Debug)]
pub struct Config {
    pub workload: String,
    /// Pages of the working set rewritten at every step.
    pub pages: u64,
    /// Steps (idle: wake-ups) to run before exiting with code 0; 0 runs forever.
    pub steps: u64,
    /// Print a progress line every this many steps.
    pub print_every: u64,
    /// Seeds the deterministic page content.
    pub seed: u64,
    /// Busy-loop iterations per step (slows the counter down for tests).
    pub spin: u64,
    /// The IOAPIC input the idle workload waits on.
    pub irq: u32,
    /// net-server: the guest's address and prefix (`colo.ip=10.0.0.2/24`).
    pub ip: ([u8; 4], u8),
    /// net-server: the TCP port it listens on.
    pub port: u16,
    /// The TSC frequency in kHz (the guest has no other clock).
    pub tsc_khz: u64,
    /// counter: also write (and check) one 4 KiB slot of the virtio-blk disk per step, over
    /// this many slots (0: no disk).
    pub disk_slots: u64,
    /// Which virtio-blk device the disk workloads use (0: the first).
    pub disk_index: u64,
    /// counter: how many block devices, from `disk_index` on, get a slot written per step.
    pub disks: u64,
    /// net-server: which virtio-net device it serves on (0: the first).
    pub net_index: u64,
    /// net-server: how long to keep polling after the last activity before halting (µs);
    /// 0 halts as soon as nothing is left to do, as an OS's idle loop does.
    pub idle_spin_us: u64,
}

fn parse_cidr(value: &str) -> Option<([u8; 4], u8)> {
    let (addr, prefix) = value.split_once('/').unwrap_or((value, "24"));
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for o in &mut octets {
        *o = parts.next()?.parse().ok()?;
    }
    let prefix: u8 = prefix.parse().ok()?;
    (parts.next().is_none() && prefix <= 32).then_some((octets, prefix))
}

impl Config {
    pub fn parse(cmdline: &str) -> Config {
        let mut config = Config {
            workload: String::from("counter"),
            pages: 16,
            steps: 0,
            print_every: 1000,
            seed: 1,
            spin: 0,
            irq: 5,
            ip: ([10, 0, 0, 2], 24),
            port: 7000,
            tsc_khz: 1_000_000,
            disk_slots: 0,
            disk_index: 0,
            disks: 1,
            net_index: 0,
            idle_spin_us: 0,
        };
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let number = value.parse::<u64>().ok();
            match (key, number) {
                ("colo.workload", _) => config.workload = String::from(value),
                ("colo.pages", Some(n)) => config.pages = n,
                ("colo.steps", Some(n)) => config.steps = n,
                ("colo.print_every", Some(n)) => config.print_every = n.max(1),
                ("colo.seed", Some(n)) => config.seed = n,
                ("colo.spin", Some(n)) => config.spin = n,
                ("colo.irq", Some(n)) if n < 24 => config.irq = n as u32,
                ("colo.ip", _) => config.ip = parse_cidr(value).unwrap_or(config.ip),
                ("colo.port", Some(n)) if n > 0 && n < 65536 => config.port = n as u16,
                ("colo.tsc_khz", Some(n)) if n > 0 => config.tsc_khz = n,
                ("colo.disk_slots", Some(n)) => config.disk_slots = n,
                ("colo.disk_index", Some(n)) if n < 4 => config.disk_index = n,
                ("colo.disks", Some(n)) if (1..=4).contains(&n) => config.disks = n,
                ("colo.net_index", Some(n)) if n < 4 => config.net_index = n,
                ("colo.idle_spin_us", Some(n)) => config.idle_spin_us = n,
                _ => {}
            }
        }
        config
    }
}
