//! `colo` child processes of a test (on the host or inside a network namespace): each child's output
//! lines (stdout and stderr through one pipe, in the order written) go into one channel tagged
//! with the child's index; every child runs with `--events -`, and its milestone records come
//! out of that channel typed ([`Procs::wait_event`]), apart from its text lines
//! ([`Procs::wait_for`]); every child is killed when the test ends; waits are bounded and a
//! timeout panics with everything seen so far.

use colo_runtime::pair::events::{Milestone, Record};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The colo binary under test.
pub const COLO: &str = env!("CARGO_BIN_EXE_colo");

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.to_string())
        .expect("binding an ephemeral loopback port")
}

/// `key=value` in a log line.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// A pair key file for one test (`colo keygen`'s format, mode 0600), removed when dropped.
pub struct TestKey(std::path::PathBuf);

impl TestKey {
    /// A fresh key in the temp dir.
    pub fn new() -> TestKey {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "colo-test-{}-{}.key",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        colo_runtime::pair::peer::auth::write_key_file(&path).expect("writing a test key");
        TestKey(path)
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Owned argument list.
pub fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// What a child printed: a text line (log or console) or a milestone record.
pub enum Output {
    /// A log or guest console line.
    Text(String),
    /// A milestone record (`--events -`).
    Event(Record),
}

/// The running children.
pub struct Procs {
    /// The children, by index.
    pub children: Vec<Child>,
    lines: mpsc::Receiver<(usize, Instant, Output)>,
    tx: mpsc::Sender<(usize, Instant, Output)>,
    /// Every text line seen, for failure messages.
    pub log: Vec<String>,
    /// Every text line seen: the child, when the test read it, the text.
    pub seen: Vec<(usize, Instant, String)>,
    /// Every milestone record seen: the child, when the test read it, the record.
    pub events: Vec<(usize, Instant, Record)>,
    /// Control sockets of the children: a killed node leaves its file behind.
    sockets: Vec<String>,
    /// The pair key of this test's nodes and arbiter.
    pub key: TestKey,
}

impl Procs {
    /// No children yet.
    pub fn new() -> Procs {
        let (tx, lines) = mpsc::channel();
        Procs {
            children: Vec::new(),
            lines,
            tx,
            log: Vec::new(),
            seen: Vec::new(),
            events: Vec::new(),
            sockets: Vec::new(),
            key: TestKey::new(),
        }
    }

    /// Starts `colo args...`; returns its index. A node (`primary`/`secondary`) without
    /// `--control` gets a control socket of its own: tests run in parallel and the default
    /// path is per role and node id, shared by them. A node or arbiter without `--key-file`
    /// or `--config` gets this test's key ([`Procs::key`]).
    pub fn spawn(&mut self, args: &[String]) -> usize {
        self.spawn_with(COLO, &[], args)
    }

    /// Starts `colo args...` inside network namespace `ns` (`ip netns exec`, which execs
    /// colo itself: killing the child kills colo).
    pub fn spawn_in(&mut self, ns: &str, args: &[String]) -> usize {
        self.spawn_with("ip", &["netns", "exec", ns, COLO], args)
    }

    fn spawn_with(&mut self, program: &str, prefix: &[&str], args: &[String]) -> usize {
        let index = self.children.len();
        let mut args = args.to_vec();
        if let Some(at) = args.iter().position(|a| a == "--control") {
            self.sockets.extend(args.get(at + 1).cloned());
        } else if matches!(
            args.first().map(String::as_str),
            Some("primary" | "secondary")
        ) {
            let socket = super::control_path();
            args.extend(["--control".to_string(), socket.clone()]);
            self.sockets.push(socket);
        }
        let keyed = args.iter().any(|a| a == "--key-file" || a == "--config");
        // The subcommand may follow global flags (`--log-format json primary ...`).
        let needs_key = args
            .iter()
            .any(|a| matches!(a.as_str(), "primary" | "secondary" | "arbiter"));
        if !keyed && needs_key {
            args.extend(["--key-file".to_string(), self.key.path().to_string()]);
        }
        // Global flags go anywhere: first, before any trailing arguments of the command. A
        // test that names its own destination keeps it.
        if !args.iter().any(|a| a == "--events") {
            args.splice(0..0, ["--events".to_string(), "-".to_string()]);
        }
        // One pipe for stdout (the guest console) and stderr (the log lines), as journald
        // gives a unit: the lines arrive in the order the node wrote them.
        let (pipe, writer) = std::io::pipe().expect("creating a pipe");
        let child = Command::new(program)
            .args(prefix)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("cloning the pipe"))
            .stderr(writer)
            .spawn()
            .expect("starting colo");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let at = Instant::now();
                // A record may follow console bytes the guest printed without a newline.
                let (text, record) = Record::split(&line);
                let mut out = Vec::new();
                if record.is_none() || !text.is_empty() {
                    out.push(Output::Text(text.to_string()));
                }
                out.extend(record.map(Output::Event));
                for item in out {
                    if tx.send((index, at, item)).is_err() {
                        return;
                    }
                }
            }
        });
        self.children.push(child);
        index
    }

    /// The next text line whose child and text satisfy `want`, within `timeout` (records
    /// arriving meanwhile go to [`Procs::events`]).
    pub fn wait_for(&mut self, timeout: Duration, want: impl Fn(usize, &str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let (who, Output::Text(line)) = self.next_before(deadline)
                && want(who, &line)
            {
                return line;
            }
        }
    }

    /// The next text line or record whose child and content satisfy `want`, within
    /// `timeout`: the child's index and what it printed.
    pub fn wait_output(
        &mut self,
        timeout: Duration,
        want: impl Fn(usize, &Output) -> bool,
    ) -> (usize, Output) {
        let deadline = Instant::now() + timeout;
        loop {
            let (who, output) = self.next_before(deadline);
            if want(who, &output) {
                return (who, output);
            }
        }
    }

    /// The next milestone record whose child and content satisfy `want`, within `timeout`:
    /// the child's index and the record.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        want: impl Fn(usize, &Record) -> bool,
    ) -> (usize, Record) {
        let deadline = Instant::now() + timeout;
        loop {
            if let (who, Output::Event(record)) = self.next_before(deadline)
                && want(who, &record)
            {
                return (who, record);
            }
        }
    }

    /// The next milestone of child `who` that `pick` maps to a value, within `timeout`.
    pub fn wait_milestone<T>(
        &mut self,
        timeout: Duration,
        who: usize,
        pick: impl Fn(&Milestone) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let (from, Output::Event(record)) = self.next_before(deadline)
                && from == who
                && let Some(value) = pick(&record.milestone)
            {
                return value;
            }
        }
    }

    /// The next milestone of child `who` that satisfies `want`, within `timeout`.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        who: usize,
        want: impl Fn(&Milestone) -> bool,
    ) -> Milestone {
        self.wait_milestone(timeout, who, |m| want(m).then(|| m.clone()))
    }

    /// The next output and its child, recorded in `log`/`seen` or `events`; a panic line or
    /// the deadline fails the test.
    fn next_before(&mut self, deadline: Instant) -> (usize, Output) {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok((who, at, Output::Text(line))) => {
                self.log.push(format!("[{who}] {line}"));
                self.seen.push((who, at, line.clone()));
                assert!(
                    !line.contains("panicked") && !line.contains("PANIC"),
                    "a panic:\n{}",
                    self.log.join("\n")
                );
                (who, Output::Text(line))
            }
            Ok((who, at, Output::Event(record))) => {
                self.events.push((who, at, record.clone()));
                (who, Output::Event(record))
            }
            Err(_) => panic!("timed out; output so far:\n{}", self.log.join("\n")),
        }
    }

    /// Reads every line that arrives within `span`, awaiting nothing in particular (a
    /// bounded watch: afterwards `seen` holds what the children printed meanwhile).
    pub fn drain_for(&mut self, span: Duration) {
        let deadline = Instant::now() + span;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok((who, at, output)) = self.lines.recv_timeout(left) else {
                return;
            };
            match output {
                Output::Text(line) => {
                    self.log.push(format!("[{who}] {line}"));
                    assert!(
                        !line.contains("panicked") && !line.contains("PANIC"),
                        "a panic:\n{}",
                        self.log.join("\n")
                    );
                    self.seen.push((who, at, line));
                }
                Output::Event(record) => self.events.push((who, at, record)),
            }
        }
    }

    /// Kills child `index` (SIGKILL) and reaps it.
    pub fn kill(&mut self, index: usize) {
        let _ = self.children[index].kill();
        let _ = self.children[index].wait();
    }

    /// Waits up to `timeout` for child `index` to exit on its own.
    pub fn wait_exit(&mut self, index: usize, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.children[index].try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child {index} did not exit; output so far:\n{}",
                self.log.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}
