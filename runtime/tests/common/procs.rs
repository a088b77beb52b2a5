//! Child `colo` processes of a test (on the host or inside a network namespace), their output
//! lines gathered in one channel, every child killed when the test ends, also on a panic.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The colo binary under test.
pub const COLO: &str = env!("CARGO_BIN_EXE_colo");

/// Child processes killed when the test ends, with their output lines in one channel.
pub struct Procs {
    pub children: Vec<Child>,
    lines: mpsc::Receiver<(usize, String)>,
    tx: mpsc::Sender<(usize, String)>,
    pub log: Vec<String>,
}

impl Procs {
    pub fn new() -> Procs {
        let (tx, lines) = mpsc::channel();
        Procs {
            children: Vec::new(),
            lines,
            tx,
            log: Vec::new(),
        }
    }

    /// Starts `colo args...`; returns its index.
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
        let mut child = Command::new(program)
            .args(prefix)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting colo");
        let pipes: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send((index, line)).is_err() {
                        return;
                    }
                }
            });
        }
        self.children.push(child);
        index
    }

    /// The next line whose process and text satisfy `want`, within `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, want: impl Fn(usize, &str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((who, line)) => {
                    self.log.push(format!("[{who}] {line}"));
                    assert!(
                        !line.contains("panicked") && !line.contains("PANIC"),
                        "a panic:\n{}",
                        self.log.join("\n")
                    );
                    if want(who, &line) {
                        return line;
                    }
                }
                Err(_) => panic!("timed out; output so far:\n{}", self.log.join("\n")),
            }
        }
    }

    pub fn kill(&mut self, index: usize) {
        let _ = self.children[index].kill();
        let _ = self.children[index].wait();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}
