//! `colo`: the command-line tool. `colo run` boots one VM unreplicated with its console on
//! stdout (the baseline for later benchmarks) and can save its state to a file after a while;
//! `colo restore` continues a VM from such a file. `colo primary` / `colo secondary` run one
//! node of a replicated pair of the VM their flags describe (`vm_spec`), `colo arbiter` the
//! lease arbiter, and `colo demo` all three on loopback with a primary kill, a failover and a
//! re-protection (docs/operations.md). `colo status|checkpoint|failover|reprotect|shutdown` and
//! `colo set checkpoint-interval` talk to a running node over its control socket.
//!
//! Errors are `error::CliError`s, printed as one clear line on stderr (`colo: ...`) with
//! exit code 1; a guest that faults exits 2; a guest's own exit code is passed through (low 8
//! bits). Log events go to
//! stderr through `colo_runtime::logging` (global `--log-format human|json`, `--log-level` or
//! `RUST_LOG`); stdout carries only a command's output and the guest console.
//!
//! The binary's parts: `args` (the clap types), `node_cli` (`colo primary|secondary`), `demo`
//! and `bench` (`colo demo`, `colo bench`); the VMM and the pair they drive are the
//! `colo_runtime` library.

mod args;
mod bench;
mod demo;
mod error;
mod node_cli;

use args::{
    Cli, Command, CommonArgs, ConfigCommand, CtlArgs, DiskArgs, ImageKind, LogFormatArg, SetCommand,
};
use clap::{CommandFactory, FromArgMatches};
use colo_runtime::pair::control::Request;
use colo_runtime::vmm::vstate::thread::VcpuStop;
use colo_runtime::{Checkpoint, CheckpointKind, ConsoleOutput, Machine, MachineConfig};
use error::CliError;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    // `colo --version` also names the formats two colo binaries must share to work together:
    // the pair's peer protocol and the state file (a leaked string: clap keeps it for the
    // process's life).
    let version: &'static str = Box::leak(
        format!(
            "{} (peer protocol {}, state file version {})",
            env!("CARGO_PKG_VERSION"),
            colo_core::wire::PROTOCOL_VERSION,
            colo_runtime::vmm::persist::STATE_VERSION
        )
        .into_boxed_str(),
    );
    let matches = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Which node flags the command line gave (they override a --config file).
    let node_matches = matches
        .subcommand_matches("primary")
        .or_else(|| matches.subcommand_matches("secondary"));
    let given = |id: &str| node_matches.is_some_and(|m| node_cli::given_on_command_line(m)(id));
    let format = match cli.log_format {
        LogFormatArg::Human => colo_runtime::logging::LogFormat::Human,
        LogFormatArg::Json => colo_runtime::logging::LogFormat::Json,
    };
    let setup = colo_runtime::logging::init(format, cli.log_level.as_deref())
        .map_err(CliError::Logging)
        .and_then(|()| match &cli.events {
            Some(dest) => {
                let to = colo_runtime::pair::events::EventsTo::parse(dest);
                Ok(colo_runtime::pair::events::init(&to)?)
            }
            None => Ok(()),
        });
    match setup.and_then(|()| run(cli, given)) {
        Ok(code) => code,
        // A guest fault is a log event (it was the VM's, not the command line's, failure).
        Err(e @ CliError::GuestFault { .. }) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            eprintln!("colo: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli, given: impl Fn(&str) -> bool) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run(args) => {
            let guest_path = if args.guest.as_os_str() == "test-guest" {
                colo_runtime::vmm::guest::test_guest_path().to_path_buf()
            } else {
                args.guest.clone()
            };
            let image = read(&guest_path, "guest image")?;
            let kind = match args.kind {
                ImageKind::Auto
                    if colo_runtime::vmm::loader::linux::detect(&image)
                        == Some(colo_runtime::vmm::loader::linux::KernelFormat::BzImage) =>
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
            let mut machine = Machine::new(config, ConsoleOutput::Stdout)?;
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
                    let default = colo_runtime::vmm::guest::counter_cmdline(16, 0, 100_000, 0);
                    machine.load_test_guest(&image, args.cmdline.as_deref().unwrap_or(&default))
                }
            }
            .map_err(|source| CliError::Boot {
                what: guest_path.display().to_string(),
                source,
            })?;
            drive(machine, &args.common)
        }
        Command::Primary(args) => node_cli::primary(args, given),
        Command::Secondary(args) => node_cli::secondary(args, given),
        Command::Config(ConfigCommand::Check { file }) => node_cli::check_config(&file),
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
            let state = args
                .state
                .clone()
                .map(colo_runtime::pair::arbiter::StateFile::new);
            let key = colo_runtime::pair::peer::auth::PairKey::load(&args.key_file)?;
            let server = colo_runtime::pair::arbiter::ArbiterServer::bind_with_state(
                args.listen,
                key,
                state,
            )?;
            match (&args.state, server.record()) {
                (None, _) => tracing::warn!(
                    role = "arbiter",
                    "warning: no --state FILE: if this arbiter restarts it forgets \
                     the current term and could grant it to a second node"
                ),
                (Some(path), Some((term, holder))) => tracing::info!(
                    role = "arbiter",
                    "restored term={} holder={} from {} (no newer term for {} s)",
                    term.0,
                    holder.0,
                    path.display(),
                    colo_runtime::pair::arbiter::MAX_LEASE.as_secs()
                ),
                (Some(path), None) => {
                    tracing::info!(role = "arbiter", "state file {} (new)", path.display());
                }
            }
            if let Some(limit) = args.run_for {
                std::thread::spawn(move || {
                    std::thread::sleep(limit);
                    std::process::exit(0);
                });
            }
            tracing::info!(role = "arbiter", "listening on {}", server.local_addr());
            colo_runtime::pair::events::emit(
                "arbiter",
                colo_runtime::pair::events::Milestone::Listening {
                    addr: server.local_addr().to_string(),
                },
            );
            server.serve()
        }
        Command::Keygen { path } => {
            colo_runtime::pair::peer::auth::write_key_file(&path)?;
            println!("keygen: wrote {} (mode 0600)", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let options = crate::demo::DemoOptions {
                arbiter_port: args.arbiter_port,
                peer_port: args.peer_port,
                reprotect_port: args.reprotect_port,
                checkpoints: args.checkpoints,
                timeout: args.timeout,
                binary: current_exe()?,
                requests: args.requests,
            };
            if args.net {
                let summary = crate::demo::run_net(&options)?;
                println!("{summary}");
            } else {
                let summary = crate::demo::run(&options)?;
                println!("{summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let default_timeout = Duration::from_secs(if args.quick { 120 } else { 600 });
            let pair = crate::demo::DemoOptions {
                arbiter_port: args.arbiter_port,
                peer_port: args.peer_port,
                reprotect_port: 0,
                checkpoints: 0,
                timeout: args.timeout.unwrap_or(default_timeout),
                binary: current_exe()?,
                requests: 0,
            };
            let mut options = crate::bench::BenchOptions::new(pair, args.quick);
            options.node_args = args.node_args;
            options.guest_cmdline = args.guest_cmdline;
            if let Some(soak) = args.soak {
                println!(
                    "{}",
                    crate::bench::run_soak(&options, soak).map_err(CliError::Bench)?
                );
            } else if args.breakdown {
                println!(
                    "{}",
                    crate::bench::run_breakdown(&options).map_err(CliError::Bench)?
                );
            } else {
                println!("{}", crate::bench::run(&options).map_err(CliError::Bench)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(args) => {
            let checkpoint = Checkpoint::load_file(&args.state)?;
            let machine = Machine::from_checkpoint(&checkpoint, ConsoleOutput::Stdout)?;
            if let Some(path) = args.disk {
                let disk_size = machine.blk().lock().capacity();
                if disk_size == 0 {
                    return Err("--disk: the saved VM had no disk".into());
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

/// This program's path (the demo and bench start their children from it).
fn current_exe() -> Result<std::path::PathBuf, CliError> {
    std::env::current_exe().map_err(|source| CliError::Read {
        what: "the colo binary's path",
        path: "/proc/self/exe".into(),
        source,
    })
}

/// One request to a node's control socket; the response printed readably (or raw).
fn control(request: Request, args: &CtlArgs) -> Result<ExitCode, CliError> {
    let response = colo_runtime::pair::control::call(&args.control, request, args.timeout)?;
    let ok = response.ok();
    // Written, not println!: a reader that closed the pipe (`colo status | head -2`) must not
    // make the tool panic.
    let mut out = std::io::stdout();
    let rendered = response.render();
    if args.json {
        let _ = writeln!(out, "{}", response.to_line());
    } else if ok {
        let _ = writeln!(out, "{rendered}");
    }
    match (ok, args.json) {
        (true, _) => Ok(ExitCode::SUCCESS),
        (false, false) => Err(CliError::CommandRefused(rendered)),
        // The answer is on stdout already, as asked: only the exit code says it was refused.
        (false, true) => Ok(ExitCode::from(
            CliError::CommandRefused(rendered).exit_code(),
        )),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Runs the machine until the guest stops, the timeout passes, or the state is saved.
fn drive(mut machine: Machine, args: &CommonArgs) -> Result<ExitCode, CliError> {
    let limit = match (args.save_after, args.timeout) {
        (Some(ms), _) => Some(Duration::from_millis(ms)),
        (None, Some(limit)) => Some(limit),
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
            tracing::info!("guest exited with code {code}");
            Ok(ExitCode::from(code as u8))
        }
        Some((vcpu, why)) => Err(CliError::GuestFault {
            vcpu,
            why: format!("{why:?}"),
        }),
        None => {
            if let (Some(_), Some(path)) = (args.save_after, &args.state_out) {
                let (checkpoint, stats) = machine.capture(CheckpointKind::Full)?;
                checkpoint.save_file(path)?;
                tracing::info!(
                    "state saved to {} ({} pages, {:?} device state)",
                    path.display(),
                    stats.pages,
                    stats.devices
                );
            } else {
                tracing::info!("timeout reached, VM paused and stopped");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Attaches `--disk` to the machine's virtio-blk device.
fn attach_disk(machine: &Machine, args: &DiskArgs) -> Result<(), CliError> {
    let Some(path) = &args.disk else {
        return Ok(());
    };
    let image = colo_runtime::vmm::disk::RawImage::open(path, args.disk_size)?;
    let backend = colo_runtime::vmm::disk::ImageBackend::new(std::sync::Arc::new(image));
    machine
        .blk()
        .lock()
        .set_backend(Box::new(backend), args.disk_size);
    Ok(())
}
