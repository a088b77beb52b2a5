//! `colo demo --net`: the replicated pair serving a real TCP client across a failover, on one
//! host, inside a network namespace the demo creates (and deletes on every path).
//!
//! Topology (docs/operations.md): namespace `colo-demo-<pid>` with a bridge `colobr0`
//! (10.0.0.1/24, the client's side, no route out) holding both nodes' client taps (`colop0`,
//! `colos0`; a paired secondary ignores client frames, the survivor announces the guest's MAC
//! when it claims the client link); the guest is 10.0.0.2:7000 (both VMs, same MAC). The
//! arbiter and the peer link use the namespace's own loopback. Phases:
//! 0. a lone VM (in this process, tap `colol0`, guest 10.0.0.3) answers `requests` requests:
//!    the baseline latency;
//! 1. the pair: after the pairing's checkpoint a client thread sends `INCR n` requests
//!    back to back on one connection, and a `NONCE` as every 50th (the 25th, 75th, ...),
//!    whose reply differs between the guests: a real miscompare; the demo waits for
//!    `requests` replies and `checkpoints` checkpoints, counting checkpoints by reason;
//! 2. SIGKILL of the primary; the secondary fails over and claims the client link;
//! 3. the same connection goes on until `requests` more replies came from the survivor.
//!
//! Invariant checked on every reply: `INCR n` returns exactly one more than the previous
//! reply, so no acknowledged write is lost or repeated across checkpoints and the failover
//! (COLO's output commit: a reply is released only when the secondary can reproduce it).

use super::{Children, DemoError, DemoOptions, Line, spawn_in};
use colo_runtime::net::kvclient::{KvConnection, Timeouts, add_client_bridge};
use colo_runtime::net::netns::NetNs;
use colo_runtime::net::tap::{Tap, TapLink};
use colo_runtime::pair::events::Milestone;
use colo_runtime::vmm::devices::console::OutputCapture;
use colo_runtime::vmm::machine::{ConsoleOutput, Machine};
use colo_runtime::vmm::persist::MachineConfig;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

const BRIDGE: &str = "colobr0";
const PORT: u16 = 7000;

/// Latency percentiles of a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Requests measured.
    pub count: usize,
    /// Median (microseconds).
    pub median_us: u64,
    /// 99th percentile (microseconds).
    pub p99_us: u64,
    /// Maximum (microseconds).
    pub max_us: u64,
}

impl Percentiles {
    pub(crate) fn of(samples: &[Duration]) -> Percentiles {
        let mut us: Vec<u64> = samples.iter().map(|d| d.as_micros() as u64).collect();
        us.sort_unstable();
        let at = |q: f64| {
            us.get(((us.len() as f64 * q) as usize).min(us.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Percentiles {
            count: us.len(),
            median_us: at(0.5),
            p99_us: at(0.99),
            max_us: us.last().copied().unwrap_or(0),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {} us, p99 {} us, max {} us ({} requests)",
            self.median_us, self.p99_us, self.max_us, self.count
        )
    }
}

/// The network demo's figures.
#[derive(Clone, Debug, Default)]
pub struct NetDemoSummary {
    /// Request latency of a lone VM (no replication).
    pub lone: Percentiles,
    /// `INCR` latency through the pair (output compared before release).
    pub paired: Percentiles,
    /// `NONCE` latency through the pair: each reply differs between the guests, so it waits
    /// for the checkpoint its miscompare forces.
    pub paired_nonce: Percentiles,
    /// Request latency of the survivor after the failover (solo, no comparison).
    pub solo: Percentiles,
    /// Checkpoints the primary completed while the client ran, by reason.
    pub reasons: BTreeMap<String, u32>,
    /// How long the client ran against the pair (for the rates).
    pub paired_for: Duration,
    /// Kill -> the secondary's failed-over line.
    pub kill_to_failed_over: Duration,
    /// Kill -> the first reply the client got from the survivor.
    pub client_gap: Duration,
    /// The counter's value in the last reply before the kill and the first after it.
    pub around_kill: (u64, u64),
    /// The term after the failover.
    pub term: u64,
}

impl std::fmt::Display for NetDemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.paired_for.as_secs_f64().max(1e-9);
        writeln!(f, "colo demo --net: OK")?;
        writeln!(f, "  lone VM:              {}", self.lone)?;
        writeln!(f, "  through the pair:     {}", self.paired)?;
        writeln!(
            f,
            "  NONCE through the pair (replies differ, forcing a checkpoint): {}",
            self.paired_nonce
        )?;
        writeln!(f, "  survivor (solo):      {}", self.solo)?;
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{r} {n} ({:.1}/s)", f64::from(*n) / secs))
            .collect();
        writeln!(
            f,
            "  checkpoints while the client ran ({:.1} s): {}",
            secs,
            reasons.join(", ")
        )?;
        write!(
            f,
            "  primary killed: failed over (term {}) after {} ms; the client's connection got its next reply {} ms after the kill (INCR {} before, {} after: no write lost or repeated)",
            self.term,
            self.kill_to_failed_over.as_millis(),
            self.client_gap.as_millis(),
            self.around_kill.0,
            self.around_kill.1
        )
    }
}

/// One connection doing `INCR n`, checking each reply continues the count (shared with
/// `colo bench`, which also streams bulk bytes through it).
pub(crate) struct Client {
    pub(crate) conn: KvConnection,
    next_id: u64,
    pub(crate) count: u64,
}

impl Client {
    pub(crate) fn connect(ns: &NetNs, ip: &str) -> Result<Client, DemoError> {
        let addr: SocketAddr = format!("{ip}:{PORT}")
            .parse()
            .map_err(|e| DemoError::Client(format!("{ip}:{PORT}: {e}")))?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(20),
        };
        let conn = KvConnection::connect(ns, addr, timeouts).map_err(DemoError::Client)?;
        // A `SINK` body into a wedged guest must not block forever either.
        conn.stream()
            .set_write_timeout(Some(timeouts.read))
            .map_err(|e| DemoError::Client(e.to_string()))?;
        Ok(Client {
            conn,
            next_id: 1,
            count: 0,
        })
    }

    /// One request; returns the counter's new value. (Its error stays a string: `colo
    /// bench`'s client thread stores it as one.)
    pub(crate) fn incr(&mut self) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = self.conn.ask(&format!("{id} INCR n"))?;
        let want = self.count + 1;
        let value = line
            .strip_prefix(&format!("{id} VAL "))
            .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok());
        if value != Some(want) {
            return Err(format!(
                "request {id} (INCR n) got {line:?}, expected the count {want}"
            ));
        }
        self.count = want;
        Ok(want)
    }

    /// A `NONCE` request: the two guests answer it differently (their TSCs), so the primary's
    /// comparator sees a real difference and forces a checkpoint; the client gets one reply.
    fn nonce(&mut self) -> Result<(), DemoError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = self
            .conn
            .ask(&format!("{id} NONCE"))
            .map_err(DemoError::Client)?;
        match line.strip_prefix(&format!("{id} NONCE ")) {
            Some(t) if t.len() == 16 && u64::from_str_radix(t, 16).is_ok() => Ok(()),
            _ => Err(DemoError::Client(format!(
                "request {id} (NONCE) got {line:?}"
            ))),
        }
    }

    /// `STREAM n`: the guest sends `n` bytes; every one is checked against the pattern.
    pub(crate) fn stream(&mut self, n: u64) -> Result<(), DemoError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = self
            .conn
            .ask(&format!("{id} STREAM {n}"))
            .map_err(DemoError::Client)?;
        if line != format!("{id} STREAM {n}") {
            return Err(DemoError::Client(format!(
                "request {id} (STREAM {n}) got {line:?}"
            )));
        }
        let mut at = 0u64;
        let mut bad = None;
        self.conn
            .read_body(n, |chunk| {
                for &b in chunk {
                    if bad.is_none() && b != stream_byte(at) {
                        bad = Some(at);
                    }
                    at += 1;
                }
            })
            .map_err(DemoError::Client)?;
        match bad {
            Some(at) => Err(DemoError::Client(format!(
                "request {id} (STREAM {n}): byte {at} is wrong"
            ))),
            None => Ok(()),
        }
    }

    /// `SINK n`: sends `n` bytes to the guest, which answers once it counted them all.
    pub(crate) fn sink(&mut self, body: &[u8]) -> Result<(), DemoError> {
        let id = self.next_id;
        self.next_id += 1;
        let n = body.len();
        let line = self
            .conn
            .ask_with_body(&format!("{id} SINK {n}"), body)
            .map_err(DemoError::Client)?;
        if line != format!("{id} SUNK {n}") {
            return Err(DemoError::Client(format!(
                "request {id} (SINK {n}) got {line:?}"
            )));
        }
        Ok(())
    }
}

/// Byte `offset` of a `STREAM` body (the test guest's `kv::stream_byte`).
pub(crate) fn stream_byte(offset: u64) -> u8 {
    b'a' + (offset % 26) as u8
}

/// Every this many requests the client sends a `NONCE` instead of an `INCR`, at an offset of
/// half that, so a phase of a round number of requests does not end on one (the kill would
/// then always land in the checkpoint that `NONCE` forces).
const NONCE_EVERY: u64 = 50;

/// A reply the client thread got: when the request started and ended, and the counter's
/// value after it (a `NONCE` leaves it unchanged).
#[derive(Clone, Copy, Debug)]
struct Sample {
    start: Instant,
    end: Instant,
    value: u64,
    nonce: bool,
}

/// Creates the namespace `<prefix>-<pid>` with the clients' bridge (10.0.0.1/24, no route out).
pub(crate) fn lab(prefix: &str) -> Result<NetNs, DemoError> {
    let ns = NetNs::create(&format!("{prefix}-{}", std::process::id())).map_err(|source| {
        DemoError::Lab {
            what: "cannot create the network namespace (root and iproute2 needed)".to_string(),
            source,
        }
    })?;
    add_client_bridge(&ns, BRIDGE, "10.0.0.1/24").map_err(|source| DemoError::Lab {
        what: format!("the clients' bridge {BRIDGE}"),
        source,
    })?;
    Ok(ns)
}

/// The guest address of the lone VM and of the pair.
pub(crate) const LONE_IP: &str = "10.0.0.3";
/// See [`LONE_IP`].
pub(crate) const PAIR_IP: &str = "10.0.0.2";

/// A lone VM in this process (tap `colol0` on the bridge, guest [`LONE_IP`]) serving the
/// net-server workload; paused when dropped.
pub(crate) struct LoneVm {
    _link: TapLink,
    machine: Machine,
}

impl Drop for LoneVm {
    fn drop(&mut self) {
        self.machine.pause();
    }
}

impl LoneVm {
    /// Boots it (`extra_cmdline`: words appended to the test guest's command line) and waits
    /// until its server listens.
    pub(crate) fn start(ns: &NetNs, extra_cmdline: Option<&str>) -> Result<LoneVm, DemoError> {
        let capture = OutputCapture::new();
        let mut machine = Machine::new(
            MachineConfig {
                mem_mib: 32,
                vcpus: 1,
            },
            ConsoleOutput::Capture(capture.clone()),
        )?;
        // Not the pair's MAC: the bridge must not learn the pair's guest on this port.
        machine
            .net()
            .lock()
            .set_mac([0x52, 0x54, 0x00, 0xc0, 0x10, 0x03]);
        let tsc = machine.tsc_khz()?;
        let image = std::fs::read(colo_runtime::vmm::guest::test_guest_path())
            .map_err(DemoError::TestGuest)?;
        let mut cmdline =
            colo_runtime::vmm::guest::net_server_cmdline(&format!("{LONE_IP}/24"), PORT, tsc);
        if let Some(extra) = extra_cmdline {
            cmdline = format!("{cmdline} {extra}");
        }
        machine.load_test_guest(&image, &cmdline)?;
        let lab = |what: &str| {
            let what = what.to_string();
            move |source| DemoError::Lab { what, source }
        };
        let tap = ns
            .run(|| Tap::open("colol0"))
            .and_then(|r| r)
            .map_err(lab("tap colol0"))?;
        ns.ip(&["link", "set", "colol0", "master", BRIDGE, "up"])
            .map_err(lab("tap colol0 on the bridge"))?;
        let link = TapLink::attach(tap, machine.net()).map_err(lab("tap colol0's link"))?;
        machine.resume();
        let lone = LoneVm {
            _link: link,
            machine,
        };
        let (text, up) =
            capture.wait_until(Duration::from_secs(20), |t| t.contains("net-server on"));
        if !up {
            return Err(DemoError::LoneVmDown(text));
        }
        Ok(lone)
    }
}

/// Phase 0: a lone VM in this process answers `requests` requests.
fn lone_vm(ns: &NetNs, requests: u32) -> Result<Percentiles, DemoError> {
    let _vm = LoneVm::start(ns, None)?;
    let mut client = Client::connect(ns, LONE_IP)?;
    let mut latencies = Vec::new();
    for _ in 0..requests {
        let t = Instant::now();
        client.incr().map_err(DemoError::Client)?;
        latencies.push(t.elapsed());
    }
    println!("[demo] lone VM: {} requests answered", latencies.len());
    Ok(Percentiles::of(&latencies))
}

/// An arbiter, a primary and a secondary as child processes in `ns` (taps `colop0`/`colos0` on
/// the bridge, guest [`PAIR_IP`]), their lines echoed as they are read.
pub(crate) struct PairRun {
    pub(crate) children: Children,
    lines: mpsc::Receiver<Line>,
    deadline: Instant,
    /// The nodes' control sockets, in a temp dir of this run's own (not the shared default
    /// paths another pair on this host may hold); after `children`: removed after they end.
    _control: super::reprotect::ControlDir,
}

impl PairRun {
    /// Starts the three processes (`envs` added to their environment, `node_args` to both
    /// nodes' command lines); every wait on them ends at `deadline`.
    pub(crate) fn start(
        ns: &NetNs,
        options: &DemoOptions,
        deadline: Instant,
        envs: &[(&str, &str)],
        node_args: &[String],
    ) -> Result<PairRun, DemoError> {
        let (tx, rx) = mpsc::channel();
        let lifetime = format!("{}", options.timeout.as_secs() + 10);
        let arbiter = format!("127.0.0.1:{}", options.arbiter_port);
        let peer = format!("127.0.0.1:{}", options.peer_port);
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("colo-pair-{}-{run}", std::process::id()));
        // With the pair key the three share (the dir and the key go when the run is dropped).
        let control = super::reprotect::ControlDir::create_at(dir)?;
        let key_file = control.key_file().to_string_lossy().into_owned();
        let node = |role: &str, link: &str, addr: &str, tap: &str| -> Vec<String> {
            let socket = control.socket(role).to_string_lossy().into_owned();
            [
                role,
                link,
                addr,
                "--control",
                &socket,
                "--arbiter",
                &arbiter,
                "--key-file",
                &key_file,
                "--run-for",
                &lifetime,
                "--workload",
                "net-server",
                "--client-tap",
                tap,
                "--client-bridge",
                BRIDGE,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(node_args.iter().cloned())
            .collect()
        };
        let netns = Some(ns.name());
        let mut children = Children(Vec::new());
        let arbiter_args: Vec<String> = [
            "arbiter",
            "--listen",
            &arbiter,
            "--key-file",
            &key_file,
            "--run-for",
            &lifetime,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        children.0.push((
            "arbiter",
            spawn_in(netns, &options.binary, "arbiter", &arbiter_args, envs, &tx)?,
        ));
        let primary = node("primary", "--listen", &peer, "colop0");
        children.0.push((
            "primary",
            spawn_in(netns, &options.binary, "primary", &primary, envs, &tx)?,
        ));
        let secondary = node("secondary", "--peer", &peer, "colos0");
        children.0.push((
            "secondary",
            spawn_in(netns, &options.binary, "secondary", &secondary, envs, &tx)?,
        ));
        Ok(PairRun {
            children,
            lines: rx,
            deadline,
            _control: control,
        })
    }

    /// The next line within 100 ms (`None` if none came and every child still runs); an
    /// error past the deadline, when a child exited or panicked.
    pub(crate) fn next(&mut self, what: &str) -> Result<Option<Line>, DemoError> {
        if Instant::now() >= self.deadline {
            return Err(DemoError::Timeout(what.to_string()));
        }
        match self.lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                // Hop records (`colo bench --breakdown`) are data, not news; a milestone
                // record says what the log line beside it says.
                if !line.text.starts_with("hop ") && line.record.is_none() {
                    println!("[{}] {}", line.who, line.text);
                }
                if line.text.contains("PANIC") || line.text.contains("panicked") {
                    return Err(DemoError::Panicked(line.who));
                }
                Ok(Some(line))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.children.check_alive()?;
                Ok(None)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(DemoError::ChildrenEnded(what.to_string()))
            }
        }
    }

    /// Waits for the primary's first `checkpoint-done` (the pair is protecting the guest).
    pub(crate) fn wait_paired(&mut self) -> Result<(), DemoError> {
        loop {
            let line = self.next("the pairing")?;
            if line.is_some_and(|l| {
                matches!(
                    l.milestone("primary"),
                    Some(Milestone::CheckpointDone { .. })
                )
            }) {
                return Ok(());
            }
        }
    }
}

/// Runs the network demo (see the module doc).
pub fn run(options: &DemoOptions) -> Result<NetDemoSummary, DemoError> {
    super::require_kvm()?;
    let deadline = Instant::now() + options.timeout;
    let ns = lab("colo-demo")?;
    let mut summary = NetDemoSummary {
        lone: lone_vm(&ns, options.requests)?,
        ..NetDemoSummary::default()
    };
    let mut pair = PairRun::start(&ns, options, deadline, &[], &[])?;
    // Phase 1: the pairing's first checkpoint, then the client runs against the pair.
    pair.wait_paired()?;
    let client = Client::connect(&ns, PAIR_IP)?;
    let unblock = client
        .conn
        .stream()
        .try_clone()
        .map_err(|e| DemoError::Client(e.to_string()))?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (samples, failure, stop) = (samples.clone(), failure.clone(), stop.clone());
        let mut client = client;
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                let nonce = sent % NONCE_EVERY == NONCE_EVERY / 2;
                let start = Instant::now();
                let result = if nonce {
                    client
                        .nonce()
                        .map(|()| client.count)
                        .map_err(|e| e.to_string())
                } else {
                    client.incr()
                };
                match result {
                    Ok(value) => samples.lock().push(Sample {
                        start,
                        end: Instant::now(),
                        value,
                        nonce,
                    }),
                    Err(e) => {
                        *failure.lock() = Some(e);
                        return;
                    }
                }
            }
        })
    };
    let result = drive(options, &mut summary, &mut pair, &samples, &failure);
    stop.store(true, Ordering::Relaxed);
    // A client blocked on a reply (a dead pair, a failed run) returns at once.
    let _ = unblock.shutdown(std::net::Shutdown::Both);
    let _ = worker.join();
    drop(pair);
    result?;
    Ok(summary)
}

/// Phases 1 (rest) to 3, while the client thread runs.
fn drive(
    options: &DemoOptions,
    summary: &mut NetDemoSummary,
    pair: &mut PairRun,
    samples: &Mutex<Vec<Sample>>,
    failure: &Mutex<Option<String>>,
) -> Result<(), DemoError> {
    let check = || match failure.lock().clone() {
        Some(e) => Err(DemoError::ClientFailed(e)),
        None => Ok(()),
    };
    let started = Instant::now();
    let mut checkpoints = 0;
    while checkpoints < options.checkpoints || samples.lock().len() < options.requests as usize {
        check()?;
        if let Some(line) = pair.next("the client's requests through the pair")?
            && let Some(Milestone::CheckpointDone { reason, .. }) = line.milestone("primary")
        {
            checkpoints += 1;
            *summary.reasons.entry(reason.clone()).or_default() += 1;
        }
    }
    summary.paired_for = started.elapsed();

    println!("[demo] killing the primary (SIGKILL) while the client runs");
    // The clock starts at the signal: reaping a VM process can take longer than the
    // peer's failover (its exit tears down the VM), which once made this read 0 ms.
    let killed = Instant::now();
    pair.children.kill("primary")?;
    let failed_over = loop {
        check()?;
        if let Some(line) = pair.next("the failover")?
            && let Some(Milestone::FailedOver { term, .. }) = line.milestone("secondary")
        {
            summary.kill_to_failed_over = killed.elapsed();
            summary.term = *term;
            break Instant::now();
        }
    };
    loop {
        check()?;
        let solo = samples
            .lock()
            .iter()
            .filter(|s| s.start > failed_over)
            .count();
        if solo >= options.requests as usize {
            break;
        }
        pair.next("the client's requests to the survivor")?;
    }
    let samples = samples.lock().clone();
    let latency = |keep: &dyn Fn(&Sample) -> bool| -> Percentiles {
        let v: Vec<Duration> = samples
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.end - s.start)
            .collect();
        Percentiles::of(&v)
    };
    summary.paired = latency(&|s| !s.nonce && s.end < killed);
    summary.paired_nonce = latency(&|s| s.nonce && s.end < killed);
    summary.solo = latency(&|s| !s.nonce && s.start > failed_over);
    if let Some(first) = samples.iter().find(|s| s.end >= killed) {
        summary.client_gap = first.end - killed;
    }
    let before = samples.iter().rev().find(|s| !s.nonce && s.end < killed);
    let after = samples.iter().find(|s| !s.nonce && s.end >= killed);
    if let (Some(b), Some(a)) = (before, after) {
        summary.around_kill = (b.value, a.value);
    }
    Ok(())
}
