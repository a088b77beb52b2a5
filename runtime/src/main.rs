//! `colo`: the command-line tool. `colo run` boots one VM unreplicated with its console on
//! stdout (the baseline for later benchmarks) and can save its state to a file after a while;
//! `colo restore` continues a VM from such a file. `colo primary` / `colo secondary` run one
//! node of a replicated pair of the VM their flags describe (`vm_spec`), `colo arbiter` the lease arbiter, and `colo
//! demo` all three on loopback with a primary kill, a failover and a re-protection
//! (docs/operations.md). `colo status|checkpoint|failover|reprotect|shutdown` and `colo set
//! checkpoint-interval` talk to a running node over its control socket.
//!
//! Errors are printed as one clear line on stderr (`colo: ...`) with exit code 1; a guest that
//! faults exits 2; a guest's own exit code is passed through (low 8 bits).

use clap::{Parser, Subcommand, ValueEnum};
use colo_core::ids::Role;
use colo_runtime::control::Request;
use colo_runtime::node_loop::{LoopEnd, NodeLoop, NodeLoopConfig, PeerEndpoint};
use colo_runtime::vm_spec::{BootSource, DiskSpec, NetSpec, VmSpec, parse_size};
use colo_runtime::vstate::thread::VcpuStop;
use colo_runtime::{Checkpoint, CheckpointKind, ConsoleOutput, Machine, MachineConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "colo",
    version,
    about = "COLO VM fault tolerance (KVM runtime)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot one VM (unreplicated), console on stdout.
    Run(RunArgs),
    /// Continue a VM from a state file written by `colo run --save-after`.
    Restore(RestoreArgs),
    /// Run the primary node of a replicated pair (it boots the VM: the test guest or --kernel).
    Primary(PrimaryArgs),
    /// Run the secondary node of a replicated pair (its VM becomes a copy of the primary's).
    Secondary(SecondaryArgs),
    /// Serve fencing leases to a pair's nodes.
    Arbiter(ArbiterArgs),
    /// Start an arbiter, a primary and a secondary on loopback, kill the primary, show the
    /// failover, re-protect the survivor with a new secondary and fail back to it; exits 0
    /// with a summary if every step checked out.
    Demo(DemoArgs),
    /// Show a running node's state and counters (control socket).
    Status(CtlArgs),
    /// Make a paired primary take a checkpoint now.
    Checkpoint(CtlArgs),
    /// Declare the peer lost now (QEMU's x-colo-lost-heartbeat).
    Failover(CtlArgs),
    /// Arm a solo survivor to accept a new secondary.
    Reprotect(CtlArgs),
    /// Stop a node (it says goodbye to its peer).
    Shutdown(CtlArgs),
    /// Change a running node's setting.
    #[command(subcommand)]
    Set(SetCommand),
}

#[derive(Subcommand, Debug)]
enum SetCommand {
    /// The primary's periodic checkpoint interval.
    CheckpointInterval {
        /// Milliseconds (> 0).
        ms: u64,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Log a memory digest at every checkpoint (`on`) or not (`off`).
    Digests {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        ctl: CtlArgs,
    },
}

#[derive(clap::Args, Debug)]
struct CtlArgs {
    /// The node's control socket (it prints `<role>: control socket=PATH` at start).
    #[arg(long)]
    control: PathBuf,
    /// Print the node's JSON response as is.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// The arbiter's address.
    #[arg(long)]
    arbiter: SocketAddr,
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
    /// Periodic checkpoint interval in milliseconds (primary).
    #[arg(long, default_value_t = 500)]
    checkpoint_interval_ms: u64,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval_ms: u64,
    /// Heartbeat intervals without a word from the peer before it is declared lost.
    #[arg(long, default_value_t = 5)]
    heartbeat_misses: u32,
    /// Log a memory digest at every checkpoint (one pass over guest memory per pause).
    #[arg(long)]
    digests: bool,
    /// Stop after this many seconds.
    #[arg(long)]
    run_for: Option<f64>,
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
}

/// The size of a pair's disk: `--disk-size`, else the image's own size, else 64 MiB (created).
fn pair_disk_size(path: &Path, explicit: Option<u64>) -> Result<u64, String> {
    if let Some(size) = explicit {
        return Ok(size);
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 && meta.len() % 512 == 0 => Ok(meta.len()),
        Ok(meta) if meta.len() > 0 => Err(format!(
            "disk image {} is {} bytes, not a whole number of 512-byte sectors",
            path.display(),
            meta.len()
        )),
        Ok(_) => Ok(64 << 20),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(64 << 20),
        Err(e) => Err(format!("cannot read disk image {}: {e}", path.display())),
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
struct PrimaryArgs {
    /// Where the secondary connects.
    #[arg(long)]
    listen: SocketAddr,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args, Debug)]
struct SecondaryArgs {
    /// The primary's address.
    #[arg(long)]
    peer: SocketAddr,
    /// Where new secondaries connect once this node survives a failover (no re-protection
    /// of this node without it).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args, Debug)]
struct ArbiterArgs {
    /// Where nodes ask for leases.
    #[arg(long)]
    listen: SocketAddr,
    /// Exit after this many seconds.
    #[arg(long)]
    run_for: Option<f64>,
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Loopback port of the arbiter.
    #[arg(long, default_value_t = 17600)]
    arbiter_port: u16,
    /// Loopback port of the primary's peer link.
    #[arg(long, default_value_t = 17601)]
    peer_port: u16,
    /// Loopback port where the survivor accepts the new secondary.
    #[arg(long, default_value_t = 17602)]
    reprotect_port: u16,
    /// Checkpoints to complete before the primary is killed.
    #[arg(long, default_value_t = 5)]
    checkpoints: u32,
    /// Give up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// The guest's TCP server and a real client across the failover, in a network
    /// namespace the demo creates (root, iproute2, /dev/net/tun).
    #[arg(long)]
    net: bool,
    /// `--net`: client requests per measured phase (lone VM, pair, survivor).
    #[arg(long, default_value_t = 200)]
    requests: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ImageKind {
    /// bzImage -> Linux, ELF -> colo's test guest.
    Auto,
    /// colo's test guest (ELF).
    TestGuest,
    /// A Linux kernel (bzImage or vmlinux ELF).
    Linux,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Guest image: colo's test guest (ELF) or a Linux bzImage / vmlinux. The word
    /// `test-guest` names the test guest this colo binary was built with.
    #[arg(long)]
    guest: PathBuf,
    /// How to boot the image.
    #[arg(long, value_enum, default_value_t = ImageKind::Auto)]
    kind: ImageKind,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Kernel / test-guest command line (defaults: Linux `console=ttyS0 reboot=k panic=1`,
    /// test guest: the counter workload).
    #[arg(long)]
    cmdline: Option<String>,
    /// Initial ramdisk (Linux only).
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[command(flatten)]
    disk: DiskArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args, Debug)]
struct DiskArgs {
    /// A raw disk image for the guest's virtio-blk device (created sparse if missing, extended
    /// to --disk-size if shorter). Without it the device has no medium.
    #[arg(long)]
    disk: Option<PathBuf>,
    /// The disk's size in bytes, or with a K, M or G suffix (powers of 1024).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    disk_size: u64,
}

/// Attaches `--disk` to the machine's virtio-blk device.
fn attach_disk(machine: &Machine, args: &DiskArgs) -> Result<(), String> {
    let Some(path) = &args.disk else {
        return Ok(());
    };
    let image =
        colo_runtime::disk::RawImage::open(path, args.disk_size).map_err(|e| e.to_string())?;
    let backend = colo_runtime::disk::ImageBackend::new(std::sync::Arc::new(image));
    machine
        .blk()
        .lock()
        .expect("blk mutex poisoned")
        .set_backend(Box::new(backend), args.disk_size);
    Ok(())
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// State file to continue from.
    #[arg(long)]
    state: PathBuf,
    /// The raw image the saved VM's disk continues on (its size is the saved capacity). The
    /// state file does not hold the disk: pass the image as it was when the state was saved.
    #[arg(long)]
    disk: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args, Debug)]
struct CommonArgs {
    /// Stop after this many seconds (pausing the VM) instead of waiting for the guest.
    #[arg(long)]
    timeout: Option<f64>,
    /// After this many milliseconds, pause the VM, save its full state to --state-out and exit.
    #[arg(long, requires = "state_out")]
    save_after: Option<u64>,
    /// Where --save-after writes the state.
    #[arg(long)]
    state_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("colo: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Run(args) => {
            let guest_path = if args.guest.as_os_str() == "test-guest" {
                colo_runtime::guest::test_guest_path().to_path_buf()
            } else {
                args.guest.clone()
            };
            let image = read(&guest_path, "guest image")?;
            let kind = match args.kind {
                ImageKind::Auto
                    if colo_runtime::loader::linux::detect(&image)
                        == Some(colo_runtime::loader::linux::KernelFormat::BzImage) =>
                {
                    ImageKind::Linux
                }
                ImageKind::Auto => ImageKind::TestGuest,
                other => other,
            };
            let config = MachineConfig {
                mem_mib: args.memory,
                vcpus: args.vcpus,
            };
            let mut machine =
                Machine::new(config, ConsoleOutput::Stdout).map_err(|e| e.to_string())?;
            attach_disk(&machine, &args.disk)?;
            match kind {
                ImageKind::Linux => {
                    let initrd = args
                        .initrd
                        .as_deref()
                        .map(|p| read(p, "initrd"))
                        .transpose()?;
                    let cmdline = args
                        .cmdline
                        .as_deref()
                        .unwrap_or("console=ttyS0 reboot=k panic=1");
                    machine.load_linux(&image, cmdline, initrd.as_deref())
                }
                _ => {
                    let default = colo_runtime::guest::counter_cmdline(16, 0, 100_000, 0);
                    machine.load_test_guest(&image, args.cmdline.as_deref().unwrap_or(&default))
                }
            }
            .map_err(|e| format!("{}: {e}", guest_path.display()))?;
            drive(machine, &args.common)
        }
        Command::Primary(args) => run_node(
            Role::Primary,
            PeerEndpoint::Listen(args.listen),
            None,
            &args.node,
        ),
        Command::Secondary(args) => run_node(
            Role::Secondary,
            PeerEndpoint::Connect(args.peer),
            args.listen,
            &args.node,
        ),
        Command::Status(ctl) => control(Request::Status, &ctl),
        Command::Checkpoint(ctl) => control(Request::Checkpoint, &ctl),
        Command::Failover(ctl) => control(Request::Failover, &ctl),
        Command::Reprotect(ctl) => control(Request::Reprotect, &ctl),
        Command::Shutdown(ctl) => control(Request::Shutdown, &ctl),
        Command::Set(SetCommand::CheckpointInterval { ms, ctl }) => {
            control(Request::SetCheckpointInterval { ms }, &ctl)
        }
        Command::Set(SetCommand::Digests { state, ctl }) => {
            control(Request::SetDigests { on: state == "on" }, &ctl)
        }
        Command::Arbiter(args) => {
            let server = colo_runtime::arbiter::ArbiterServer::bind(args.listen)?;
            if let Some(limit) = args.run_for.map(|s| seconds(s, "--run-for")).transpose()? {
                std::thread::spawn(move || {
                    std::thread::sleep(limit);
                    std::process::exit(0);
                });
            }
            println!("arbiter: listening on {}", server.local_addr());
            server.serve()
        }
        Command::Demo(args) => {
            let options = colo_runtime::demo::DemoOptions {
                arbiter_port: args.arbiter_port,
                peer_port: args.peer_port,
                reprotect_port: args.reprotect_port,
                checkpoints: args.checkpoints,
                timeout: seconds(args.timeout, "--timeout")?,
                binary: std::env::current_exe()
                    .map_err(|e| format!("cannot find the colo binary: {e}"))?,
                requests: args.requests,
            };
            if args.net {
                let summary = colo_runtime::demo::run_net(&options)?;
                println!("{summary}");
            } else {
                let summary = colo_runtime::demo::run(&options)?;
                println!("{summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(args) => {
            let checkpoint = Checkpoint::load_file(&args.state).map_err(|e| e.to_string())?;
            let machine = Machine::from_checkpoint(&checkpoint, ConsoleOutput::Stdout)
                .map_err(|e| e.to_string())?;
            if let Some(path) = args.disk {
                let disk_size = machine.blk().lock().expect("blk mutex poisoned").capacity();
                if disk_size == 0 {
                    return Err("--disk: the saved VM had no disk".to_string());
                }
                let disk = DiskArgs {
                    disk: Some(path),
                    disk_size,
                };
                attach_disk(&machine, &disk)?;
            }
            drive(machine, &args.common)
        }
    }
}

fn seconds(s: f64, what: &str) -> Result<Duration, String> {
    if s.is_finite() && s >= 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!("{what} {s} is not a number of seconds"))
    }
}

/// One request to a node's control socket; the response printed readably (or raw).
fn control(request: Request, args: &CtlArgs) -> Result<ExitCode, String> {
    let response =
        colo_runtime::control::call(&args.control, request, seconds(args.timeout, "--timeout")?)?;
    let ok = response["ok"] == serde_json::Value::Bool(true);
    // Written, not println!: a reader that closed the pipe (`colo status | head -2`) must not
    // make the tool panic.
    let mut out = std::io::stdout();
    if args.json {
        let _ = writeln!(out, "{response}");
    } else if ok {
        let _ = writeln!(out, "{}", colo_runtime::control::render(request, &response));
    } else {
        eprintln!(
            "colo: {}",
            colo_runtime::control::render(request, &response)
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs one node of a replicated pair of the VM its flags describe.
fn run_node(
    role: Role,
    peer: PeerEndpoint,
    newcomer_listen: Option<SocketAddr>,
    args: &NodeArgs,
) -> Result<ExitCode, String> {
    let default_id = match role {
        Role::Primary => 1,
        Role::Secondary => 2,
    };
    let node_id = args.node_id.unwrap_or(default_id);
    let mut config = NodeLoopConfig::new(role, node_id, peer, args.arbiter);
    let role_name = match role {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
    };
    let control_path = args
        .control
        .clone()
        .unwrap_or_else(|| colo_runtime::control::default_path(role_name, node_id));
    config.control = Some(control_path.clone());
    config.newcomer_listen = newcomer_listen;
    config.auto_reprotect = args.auto_reprotect;
    config.node.checkpoint.checkpoint_interval = Duration::from_millis(args.checkpoint_interval_ms);
    config.node.heartbeat.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    config.node.heartbeat.heartbeat_misses_max = args.heartbeat_misses;
    let spec = vm_spec(args)?;
    let test_guest = spec.boot == BootSource::TestGuest;
    config.workload_pages = match args.workload {
        Workload::Counter if test_guest => args.pages,
        _ => 0,
    };
    if test_guest && args.workload == Workload::DiskWriter && spec.disks.is_empty() {
        return Err("--workload disk-writer needs --disk".to_string());
    }
    // Replicated disks go to the node loop (its disk machines and files); a read-only disk is
    // never written, so each node serves it from its own copy of the image.
    let mut disk_sizes = Vec::with_capacity(spec.disks.len());
    let mut read_only = Vec::new();
    for (device, disk) in spec.disks.iter().enumerate() {
        if disk.readonly {
            let image = colo_runtime::disk::RawImage::open_read_only(&disk.path)
                .map_err(|e| format!("read-only disk: {e}"))?;
            if let Some(size) = disk.size.filter(|&s| s != image.size()) {
                return Err(format!(
                    "--disk {},readonly,size={size}: the image is {} bytes (a read-only disk keeps its image's size)",
                    disk.path.display(),
                    image.size()
                ));
            }
            disk_sizes.push(image.size());
            read_only.push((device, std::sync::Arc::new(image)));
        } else {
            let size = pair_disk_size(&disk.path, disk.size.or(args.disk_size))?;
            disk_sizes.push(size);
            config.disks.push(colo_runtime::node_loop::DiskFiles {
                image: disk.path.clone(),
                size,
                device,
            });
        }
    }
    if args.client_bridge.is_some() && spec.nets.is_empty() {
        return Err("--client-bridge needs a NIC (--net tap=NAME)".to_string());
    }
    config.net.links = spec
        .nets
        .iter()
        .enumerate()
        .map(|(i, n)| colo_runtime::node_loop::ClientLink {
            tap: n.tap.clone(),
            // --client-bridge is the first NIC's bridge unless its --net names one.
            bridge: n
                .bridge
                .clone()
                .or_else(|| (i == 0).then(|| args.client_bridge.clone()).flatten()),
        })
        .collect();
    config.digests = args.digests;
    config.run_for = args.run_for.map(|s| seconds(s, "--run-for")).transpose()?;
    let images = spec
        .read_boot(colo_runtime::guest::test_guest_path())
        .map_err(|e| e.to_string())?;
    let fingerprint = spec.fingerprint(&images, &disk_sizes);
    config.node.vm_fingerprint = fingerprint;
    println!("{role_name}: {}", spec.summary(fingerprint, &disk_sizes));
    let machine_config = MachineConfig {
        mem_mib: spec.mem_mib,
        vcpus: spec.vcpus,
    };
    let mut machine = Machine::with_devices(
        machine_config,
        ConsoleOutput::Stdout,
        spec.disks.len().max(1),
        spec.nets.len().max(1),
    )
    .map_err(|e| e.to_string())?;
    for (device, image) in read_only {
        let size = image.size();
        let mut blk = machine.blks()[device].lock().expect("blk mutex poisoned");
        blk.set_backend(Box::new(colo_runtime::disk::ImageBackend::new(image)), size);
        blk.set_read_only(true);
    }
    for (net, device) in spec.nets.iter().zip(machine.nets()) {
        device.lock().expect("net mutex poisoned").set_mac(net.mac);
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
                    .map_err(|e| format!("test guest: {e}"))?;
            }
            BootSource::Kernel { kernel, .. } => {
                let cmdline = spec.cmdline.as_deref().unwrap_or(DEFAULT_LINUX_CMDLINE);
                machine
                    .load_linux(&images.image, cmdline, images.initrd.as_deref())
                    .map_err(|e| format!("{}: {e}", kernel.display()))?;
            }
        }
    }
    let node = NodeLoop::new(config, machine).map_err(|e| e.to_string())?;
    println!("{role_name}: control socket={}", control_path.display());
    match node.run().map_err(|e| e.to_string())? {
        LoopEnd::TimeUp | LoopEnd::Stopped => Ok(ExitCode::SUCCESS),
        LoopEnd::Deposed => Err("this node was deposed (another node holds the term)".to_string()),
        LoopEnd::Refused(why) => Err(why),
    }
}

/// Linux's command line when `--cmdline` is not given.
const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// The VM description of a node's flags, checked for what colo supports.
fn vm_spec(args: &NodeArgs) -> Result<VmSpec, String> {
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
                .map_err(|e| e.to_string())?,
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
    spec.check_supported().map_err(|e| e.to_string())?;
    Ok(spec)
}

/// The test guest's command line: its workload's, then the user's `--cmdline` words.
fn test_guest_cmdline(
    args: &NodeArgs,
    machine: &Machine,
    disk_sizes: &[u64],
) -> Result<String, String> {
    use colo_runtime::guest;
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
        (Workload::NetServer, _) => guest::net_server_cmdline(
            &args.guest_ip,
            args.guest_port,
            machine.tsc_khz().map_err(|e| e.to_string())?,
        ),
    };
    Ok(match &args.cmdline {
        Some(extra) => format!("{line} {extra}"),
        None => line,
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Runs the machine until the guest stops, the timeout passes, or the state is saved.
fn drive(mut machine: Machine, args: &CommonArgs) -> Result<ExitCode, String> {
    let limit = match (args.save_after, args.timeout) {
        (Some(ms), _) => Some(Duration::from_millis(ms)),
        (None, Some(s)) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
        (None, Some(s)) => return Err(format!("--timeout {s} is not a number of seconds")),
        (None, None) => None,
    };
    machine.resume();
    let stop = match limit {
        Some(limit) => machine.wait_for_stop(limit),
        None => loop {
            if let Some(stop) = machine.wait_for_stop(Duration::from_secs(3600)) {
                break Some(stop);
            }
        },
    };
    machine.pause();
    match stop {
        Some((_, VcpuStop::GuestExit(code))) => {
            eprintln!("colo: guest exited with code {code}");
            Ok(ExitCode::from(code as u8))
        }
        Some((vcpu, why)) => {
            eprintln!("colo: vCPU {vcpu} stopped: {why:?}");
            Ok(ExitCode::from(2))
        }
        None => {
            if let (Some(_), Some(path)) = (args.save_after, &args.state_out) {
                let (checkpoint, stats) = machine
                    .capture(CheckpointKind::Full)
                    .map_err(|e| e.to_string())?;
                checkpoint.save_file(path).map_err(|e| e.to_string())?;
                eprintln!(
                    "colo: state saved to {} ({} pages, {:?} device state)",
                    path.display(),
                    stats.pages,
                    stats.devices
                );
            } else {
                eprintln!("colo: timeout reached, VM paused and stopped");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
