//! The `colo primary` / `colo secondary` commands: their flags (the VM description, the pair's
//! timing, the test guest's workload), the pair config file merged under them (`--config FILE
//! --host NAME`: the file gives what the command line does not), and the node they run.
//!
//! Invariant: a value given on the command line always wins over the file, a value in neither
//! takes the flag's default, and a node starts only with a VM description that
//! `VmSpec::check_supported` accepted and a role that matches its host's part of the file.

use crate::error::CliError;
use clap::ValueEnum;
use clap::parser::ValueSource;
use colo_core::ids::Role;
use colo_runtime::pair::config::{HostRole, PairFile};
use colo_runtime::pair::node_loop::{LoopEnd, NodeLoop, NodeLoopConfig, PeerEndpoint};
use colo_runtime::vm_spec::{BootSource, DiskSpec, NetSpec, VmSpec, parse_size};
use colo_runtime::{ConsoleOutput, Machine, MachineConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    /// A pair config file (TOML: the VM, the pair, each host's part; docs/operations.md).
    /// Flags given on the command line override it.
    #[arg(long, requires = "host")]
    config: Option<PathBuf>,
    /// Which `[host.NAME]` of --config this node is.
    #[arg(long, requires = "config")]
    host: Option<String>,
    /// The arbiter's address (or `arbiter` in --config's `[pair]`).
    #[arg(long)]
    arbiter: Option<SocketAddr>,
    /// The pair's key file, written by `colo keygen` (or `key_file` in --config's `[pair]`):
    /// the same file on both hosts and the arbiter. Required.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// This node's id (distinct from the peer's).
    #[arg(long)]
    node_id: Option<u64>,
    /// Boot colo's built-in test guest (the default when no --kernel is given).
    #[arg(long, value_parser = ["test-guest"], conflicts_with = "kernel")]
    guest: Option<String>,
    /// Boot this kernel instead: a Linux bzImage, a vmlinux ELF or a PVH ELF (the same file on
    /// both nodes: the primary boots it, the secondary checks it is the same).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line (default `console=ttyS0 reboot=k panic=1`); colo appends the
    /// `virtio_mmio.device=` arguments of the VM's devices itself. With the test guest: words
    /// appended to the workload's line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest RAM in MiB (the same on both nodes).
    #[arg(long, default_value_t = 32)]
    memory: u64,
    /// vCPUs (the same on both nodes).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// A guest NIC: `tap=NAME[,mac=MAC][,bridge=BR]`, the tap towards its clients (created in
    /// this process's network namespace, joining BR if given; a paired secondary ignores
    /// client frames). Repeat for up to 4 NICs, each a virtio-net device, in order.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,bridge=BR]")]
    nets: Vec<NetSpec>,
    /// Counter workload: working-set pages rewritten per step.
    #[arg(long, default_value_t = 64)]
    pages: u64,
    /// Counter workload: progress line every this many steps.
    #[arg(long, default_value_t = 20_000)]
    print_every: u64,
    /// Periodic checkpoint interval in milliseconds (primary), or a duration with its unit.
    #[arg(long, default_value_t = 500)]
    #[arg(value_parser = crate::args::millis)]
    checkpoint_interval_ms: u64,
    /// How long the primary holds its guest's output that the secondary's has not matched
    /// before it forces a checkpoint, in milliseconds or a duration with its unit (QEMU's
    /// default is 3 s; a secondary whose TCP fell out of step would stall a client that long).
    #[arg(long, default_value_t = 20)]
    #[arg(value_parser = crate::args::millis)]
    compare_timeout_ms: u64,
    /// Heartbeat interval in milliseconds, or a duration with its unit.
    #[arg(long, default_value_t = 100)]
    #[arg(value_parser = crate::args::millis)]
    heartbeat_interval_ms: u64,
    /// Heartbeat intervals without a word from the peer before it is declared lost.
    #[arg(long, default_value_t = 5)]
    heartbeat_misses: u32,
    /// How long a peer whose end closed the link (its process exited) has to reconnect before
    /// it is declared lost, in milliseconds or a duration with its unit (at most the
    /// heartbeat's interval x misses, which applies to a silent peer).
    #[arg(long, default_value_t = 150)]
    #[arg(value_parser = crate::args::millis)]
    closed_link_grace_ms: u64,
    /// Log a memory digest at every checkpoint (one pass over guest memory per pause).
    #[arg(long)]
    digests: bool,
    /// Stop after this many seconds (or a duration with its unit: `90s`, `2h`).
    #[arg(long, value_parser = crate::args::seconds)]
    run_for: Option<std::time::Duration>,
    /// Control socket path (default: /run/colo/colo-<role>-<node-id>.sock, or the temp dir).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Arm re-protection whenever this node runs solo (default: only on `colo reprotect`).
    #[arg(long)]
    auto_reprotect: bool,
    /// The test guest's workload (primary): `counter`, `net-server` or `disk-writer`.
    #[arg(long, value_enum, default_value_t = Workload::Counter)]
    workload: Workload,
    /// net-server: the guest's address and prefix.
    #[arg(long, default_value = "10.0.0.2/24")]
    guest_ip: String,
    /// net-server: the guest's TCP port.
    #[arg(long, default_value_t = 7000)]
    guest_port: u16,
    /// The tap towards the clients, with the default MAC (the same as `--net tap=NAME`).
    #[arg(long, conflicts_with = "nets")]
    client_tap: Option<String>,
    /// A bridge the first NIC's tap joins at start (both roles; a paired secondary ignores
    /// client frames, the survivor announces the guest's MACs on its claim).
    #[arg(long)]
    client_bridge: Option<String>,
    /// A guest disk, `PATH[,readonly][,size=SIZE]`, one virtio-blk device each (at most 4): the
    /// primary's image, or the secondary's parent image (the secondary's hidden and active
    /// overlays are the first disk's PATH.hidden and PATH.active). Both must start identical.
    #[arg(long = "disk", value_name = "PATH[,readonly][,size=SIZE]")]
    disks: Vec<DiskSpec>,
    /// Size of disks without `size=` (bytes, or with K, M or G): a missing image is created
    /// this large, a shorter one extended. Default: an existing image's own size, 64M for a
    /// new one.
    #[arg(long, value_parser = parse_size)]
    disk_size: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (or `metrics_listen` in the host's
    /// part of --config). Off by default.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// The size of a pair's disk: `--disk-size`, else the image's own size, else 64 MiB (created).
fn pair_disk_size(path: &Path, explicit: Option<u64>) -> Result<u64, CliError> {
    if let Some(size) = explicit {
        return Ok(size);
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 && meta.len() % 512 == 0 => Ok(meta.len()),
        Ok(meta) if meta.len() > 0 => Err(CliError::Invalid(format!(
            "disk image {} is {} bytes, not a whole number of 512-byte sectors",
            path.display(),
            meta.len()
        ))),
        Ok(_) => Ok(64 << 20),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(64 << 20),
        Err(source) => Err(CliError::Read {
            what: "disk image",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Counter,
    NetServer,
    /// Writes and checks 4 KiB slots of the virtio-blk disk (`--pages` slots; needs --disk).
    DiskWriter,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PrimaryArgs {
    /// Where the secondary connects (or `listen` of the --host's part of --config).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SecondaryArgs {
    /// The primary's address (or `peer` of the --host's part of --config).
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Where new secondaries connect once this node survives a failover (no re-protection
    /// of this node without it).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    node: NodeArgs,
}

/// `colo primary`: merges --config, then runs the node.
pub(crate) fn primary(
    mut args: PrimaryArgs,
    given: impl Fn(&str) -> bool,
) -> Result<ExitCode, CliError> {
    let mut peer = None;
    merge_config(
        Role::Primary,
        &mut args.listen,
        &mut peer,
        &mut args.node,
        &given,
    )?;
    let listen = args
        .listen
        .ok_or("a primary needs --listen (or `listen` in its [host.NAME])")?;
    run_node(
        Role::Primary,
        PeerEndpoint::Listen(listen),
        None,
        &args.node,
    )
}

/// `colo secondary`: merges --config, then runs the node.
pub(crate) fn secondary(
    mut args: SecondaryArgs,
    given: impl Fn(&str) -> bool,
) -> Result<ExitCode, CliError> {
    merge_config(
        Role::Secondary,
        &mut args.listen,
        &mut args.peer,
        &mut args.node,
        &given,
    )?;
    let peer = args
        .peer
        .ok_or("a secondary needs --peer (or `peer` in its [host.NAME])")?;
    run_node(
        Role::Secondary,
        PeerEndpoint::Connect(peer),
        args.listen,
        &args.node,
    )
}

/// Whether flag `id` of a `primary`/`secondary` invocation came from the command line.
pub(crate) fn given_on_command_line(matches: &clap::ArgMatches) -> impl Fn(&str) -> bool + '_ {
    move |id| {
        matches.try_get_raw(id).is_ok_and(|v| v.is_some())
            && matches.value_source(id) == Some(ValueSource::CommandLine)
    }
}

/// Fills what the command line left out from `--config`'s `[vm]`, `[pair]` and `[host.NAME]`.
fn merge_config(
    role: Role,
    listen: &mut Option<SocketAddr>,
    peer: &mut Option<SocketAddr>,
    args: &mut NodeArgs,
    given: &impl Fn(&str) -> bool,
) -> Result<(), CliError> {
    let (Some(path), Some(name)) = (args.config.clone(), args.host.clone()) else {
        return Ok(());
    };
    let file = PairFile::load(&path)?;
    let host = file.host(&name, &path)?;
    let wanted = match role {
        Role::Primary => HostRole::Primary,
        Role::Secondary => HostRole::Secondary,
    };
    if host.role != wanted {
        return Err(CliError::Invalid(format!(
            "config file {}: [host.{name}] is the {}, not the {} (run the other command, or pick the other host)",
            path.display(),
            host.role.name(),
            wanted.name()
        )));
    }
    // The host's part.
    if !given("listen") {
        *listen = listen.or(host.listen);
    }
    if !given("peer") {
        *peer = peer.or(host.peer);
    }
    if !given("node_id") {
        args.node_id = args.node_id.or(host.node_id);
    }
    if !given("control") {
        args.control = args.control.clone().or_else(|| host.control.clone());
    }
    if !given("metrics_listen") {
        args.metrics_listen = args.metrics_listen.or(host.metrics_listen);
    }
    // The pair.
    let pair = &file.pair;
    if !given("arbiter") {
        args.arbiter = args.arbiter.or(pair.arbiter);
    }
    if !given("key_file") {
        args.key_file = args.key_file.clone().or_else(|| pair.key_file.clone());
    }
    let set = |id: &str, target: &mut u64, value: Option<u64>| {
        if let (false, Some(v)) = (given(id), value) {
            *target = v;
        }
    };
    set(
        "checkpoint_interval_ms",
        &mut args.checkpoint_interval_ms,
        pair.checkpoint_interval_ms,
    );
    set(
        "compare_timeout_ms",
        &mut args.compare_timeout_ms,
        pair.compare_timeout_ms,
    );
    set(
        "heartbeat_interval_ms",
        &mut args.heartbeat_interval_ms,
        pair.heartbeat_interval_ms,
    );
    if let (false, Some(m)) = (given("heartbeat_misses"), pair.heartbeat_misses) {
        args.heartbeat_misses = m;
    }
    set(
        "closed_link_grace_ms",
        &mut args.closed_link_grace_ms,
        pair.closed_link_grace_ms,
    );
    if let (false, Some(on)) = (given("auto_reprotect"), pair.auto_reprotect) {
        args.auto_reprotect = on;
    }
    // The VM: each key the command line did not give.
    let vm = &file.vm;
    if !given("kernel") && !given("guest") {
        args.kernel = vm.kernel.clone();
        if !given("initrd") {
            args.initrd = vm.initrd.clone();
        }
    }
    if !given("cmdline") {
        args.cmdline = args.cmdline.clone().or_else(|| vm.cmdline.clone());
    }
    if let (false, Some(m)) = (given("memory"), vm.memory_mib) {
        args.memory = m;
    }
    if let (false, Some(v)) = (given("vcpus"), vm.vcpus) {
        args.vcpus = v;
    }
    let spec = file.vm_spec(None);
    if !given("disks") {
        args.disks = spec.disks;
    }
    if !given("nets") && !given("client_tap") {
        args.nets = spec.nets;
    }
    Ok(())
}

/// `colo config check FILE`: parses and checks the file, then prints each host's part and the
/// VM it describes (reading the boot files and disk sizes this host can see, as a node would).
pub(crate) fn check_config(path: &Path) -> Result<ExitCode, CliError> {
    let file = PairFile::load(path)?;
    let spec = file.vm_spec(None);
    let images = spec
        .read_boot(colo_runtime::vmm::guest::test_guest_path())
        .map_err(|source| CliError::ConfigVm {
            path: path.to_path_buf(),
            source,
        })?;
    let sizes = spec
        .disks
        .iter()
        .map(|d| {
            if d.readonly {
                Ok(colo_runtime::vmm::disk::RawImage::open_read_only(&d.path)?.size())
            } else {
                pair_disk_size(&d.path, d.size)
            }
        })
        .collect::<Result<Vec<u64>, CliError>>()?;
    let fingerprint = spec.fingerprint(&images, &sizes);
    println!("{}: {}", path.display(), spec.summary(fingerprint, &sizes));
    if let Some(arbiter) = file.pair.arbiter {
        println!("  pair: arbiter={arbiter}");
    }
    if let Some(key_file) = &file.pair.key_file {
        println!("  pair: key_file={}", key_file.display());
    }
    for (name, host) in &file.host {
        let addr = |a: Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
        println!(
            "  host {name}: role={} listen={} peer={} node_id={} metrics={}",
            host.role.name(),
            addr(host.listen),
            addr(host.peer),
            host.node_id.map_or("-".to_string(), |n| n.to_string()),
            addr(host.metrics_listen)
        );
    }
    println!("{}: OK", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs one node of a replicated pair of the VM its flags describe.
fn run_node(
    role: Role,
    peer: PeerEndpoint,
    newcomer_listen: Option<SocketAddr>,
    args: &NodeArgs,
) -> Result<ExitCode, CliError> {
    let default_id = match role {
        Role::Primary => 1,
        Role::Secondary => 2,
    };
    let node_id = args.node_id.unwrap_or(default_id);
    let arbiter = args
        .arbiter
        .ok_or("a node needs --arbiter (or `arbiter` in the config file's [pair])")?;
    // The VM description is checked first: its errors do not depend on the key.
    let spec = vm_spec(args)?;
    let key_file = args.key_file.as_deref().ok_or(
        "a node needs --key-file (or `key_file` in the config file's [pair]); create one with `colo keygen PATH`",
    )?;
    let key = colo_runtime::pair::peer::auth::PairKey::load(key_file)?;
    let mut config = NodeLoopConfig::new(role, node_id, peer, arbiter, key);
    let role_name = match role {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
    };
    let control_path = args
        .control
        .clone()
        .unwrap_or_else(|| colo_runtime::pair::control::default_path(role_name, node_id));
    config.control = Some(control_path.clone());
    config.newcomer_listen = newcomer_listen;
    config.auto_reprotect = args.auto_reprotect;
    config.metrics_listen = args.metrics_listen;
    config.node.checkpoint.checkpoint_interval = Duration::from_millis(args.checkpoint_interval_ms);
    config.node.compare.compare_timeout = Duration::from_millis(args.compare_timeout_ms);
    config.node.heartbeat.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    config.node.heartbeat.heartbeat_misses_max = args.heartbeat_misses;
    config.node.heartbeat.closed_link_grace = Duration::from_millis(args.closed_link_grace_ms);
    let test_guest = spec.boot == BootSource::TestGuest;
    config.workload_pages = match args.workload {
        Workload::Counter if test_guest => args.pages,
        _ => 0,
    };
    if test_guest && args.workload == Workload::DiskWriter && spec.disks.is_empty() {
        return Err("--workload disk-writer needs --disk".into());
    }
    // Replicated disks go to the node loop (its disk machines and files); a read-only disk is
    // never written, so each node serves it from its own copy of the image.
    let mut disk_sizes = Vec::with_capacity(spec.disks.len());
    let mut read_only = Vec::new();
    for (device, disk) in spec.disks.iter().enumerate() {
        if disk.readonly {
            let image = colo_runtime::vmm::disk::RawImage::open_read_only(&disk.path)
                .map_err(CliError::ReadOnlyDisk)?;
            if let Some(size) = disk.size.filter(|&s| s != image.size()) {
                return Err(CliError::Invalid(format!(
                    "--disk {},readonly,size={size}: the image is {} bytes (a read-only disk keeps its image's size)",
                    disk.path.display(),
                    image.size()
                )));
            }
            disk_sizes.push(image.size());
            read_only.push((device, std::sync::Arc::new(image)));
        } else {
            let size = pair_disk_size(&disk.path, disk.size.or(args.disk_size))?;
            disk_sizes.push(size);
            config.disks.push(colo_runtime::pair::node_loop::DiskFiles {
                image: disk.path.clone(),
                size,
                device,
            });
        }
    }
    if args.client_bridge.is_some() && spec.nets.is_empty() {
        return Err("--client-bridge needs a NIC (--net tap=NAME)".into());
    }
    config.net.links = spec
        .nets
        .iter()
        .enumerate()
        .map(|(i, n)| colo_runtime::pair::node_loop::ClientLink {
            tap: n.tap.clone(),
            // --client-bridge is the first NIC's bridge unless its --net names one.
            bridge: n
                .bridge
                .clone()
                .or_else(|| (i == 0).then(|| args.client_bridge.clone()).flatten()),
        })
        .collect();
    config.digests = args.digests;
    config.run_for = args.run_for;
    let images = spec.read_boot(colo_runtime::vmm::guest::test_guest_path())?;
    let fingerprint = spec.fingerprint(&images, &disk_sizes);
    config.node.vm_fingerprint = fingerprint;
    tracing::info!(
        role = role_name,
        "{}",
        spec.summary(fingerprint, &disk_sizes)
    );
    let machine_config = MachineConfig {
        mem_mib: spec.mem_mib,
        vcpus: spec.vcpus,
    };
    let mut machine = Machine::with_devices(
        machine_config,
        ConsoleOutput::Stdout,
        spec.disks.len().max(1),
        spec.nets.len().max(1),
    )?;
    for (device, image) in read_only {
        let size = image.size();
        let mut blk = machine.blks()[device].lock();
        blk.set_backend(
            Box::new(colo_runtime::vmm::disk::ImageBackend::new(image)),
            size,
        );
        blk.set_read_only(true);
    }
    for (net, device) in spec.nets.iter().zip(machine.nets()) {
        device.lock().set_mac(net.mac);
    }
    // The secondary boots nothing: its VM becomes the primary's by the initial copy.
    if role == Role::Primary {
        match &spec.boot {
            BootSource::TestGuest => {
                // The counter writes the leading writable disks (a read-only one would fail).
                let writable = spec.disks.iter().take_while(|d| !d.readonly).count();
                let cmdline = test_guest_cmdline(args, &machine, &disk_sizes[..writable])?;
                machine
                    .load_test_guest(&images.image, &cmdline)
                    .map_err(|source| CliError::Boot {
                        what: "test guest".to_string(),
                        source,
                    })?;
            }
            BootSource::Kernel { kernel, initrd } => {
                let cmdline = spec.cmdline.as_deref().unwrap_or(DEFAULT_LINUX_CMDLINE);
                let what = match initrd {
                    Some(i) => format!("kernel {} with initrd {}", kernel.display(), i.display()),
                    None => format!("kernel {}", kernel.display()),
                };
                machine
                    .load_linux(&images.image, cmdline, images.initrd.as_deref())
                    .map_err(|source| CliError::Boot {
                        what: format!("{what} (--memory {} MiB)", spec.mem_mib),
                        source,
                    })?;
            }
        }
    }
    let node = NodeLoop::new(config, machine)?;
    tracing::info!(
        role = role_name,
        "control socket={}",
        control_path.display()
    );
    match node.run()? {
        LoopEnd::TimeUp | LoopEnd::Stopped => Ok(ExitCode::SUCCESS),
        LoopEnd::Deposed => Err(CliError::Deposed),
        LoopEnd::VmFailed => Err(CliError::VmFailed),
        LoopEnd::Refused(why) => Err(CliError::RefusedByPrimary(why)),
    }
}

/// Linux's command line when `--cmdline` is not given.
const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// The VM description of a node's flags, checked for what colo supports.
fn vm_spec(args: &NodeArgs) -> Result<VmSpec, CliError> {
    let boot = match &args.kernel {
        Some(kernel) => BootSource::Kernel {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
        },
        None => BootSource::TestGuest,
    };
    let mut nets = args.nets.clone();
    if let Some(tap) = &args.client_tap {
        nets.push(
            format!("tap={tap}")
                .parse::<NetSpec>()
                .map_err(|e| CliError::Invalid(format!("--client-tap {tap}: {e}")))?,
        );
    }
    let spec = VmSpec {
        boot,
        cmdline: args.cmdline.clone(),
        mem_mib: args.memory,
        vcpus: args.vcpus,
        disks: args.disks.clone(),
        nets,
    };
    spec.check_supported()?;
    Ok(spec)
}

/// The test guest's command line: its workload's, then the user's `--cmdline` words.
fn test_guest_cmdline(
    args: &NodeArgs,
    machine: &Machine,
    disk_sizes: &[u64],
) -> Result<String, CliError> {
    use colo_runtime::vmm::guest;
    let line = match (args.workload, disk_sizes.iter().min()) {
        // With disks the counter also writes one 4 KiB slot of each per step.
        (Workload::Counter, Some(smallest)) => format!(
            "{} colo.disk_slots={} colo.disks={}",
            guest::counter_cmdline(args.pages, 0, args.print_every, 0),
            (smallest / 4096).clamp(1, 16),
            disk_sizes.len()
        ),
        (Workload::Counter, None) => guest::counter_cmdline(args.pages, 0, args.print_every, 0),
        (Workload::DiskWriter, _) => guest::disk_writer_cmdline(args.pages, 0, args.print_every, 0),
        (Workload::NetServer, _) => {
            guest::net_server_cmdline(&args.guest_ip, args.guest_port, machine.tsc_khz()?)
        }
    };
    Ok(match &args.cmdline {
        Some(extra) => format!("{line} {extra}"),
        None => line,
    })
}
