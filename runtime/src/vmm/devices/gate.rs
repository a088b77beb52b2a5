//! The output gate between a VM's console devices (the test guest's MMIO console and the
//! 16550) and where their bytes go (stdout, a capture). A replicated pair's secondary runs its
//! VM ahead of the last checkpoint and is rolled back to the next one, so what its guest
//! printed since the last apply is speculative: the gate holds it, drops it when a checkpoint
//! is applied, and writes it out when the secondary takes over (failover), passing everything
//! after that straight through. So a survivor's console continues the guest's console from
//! the last checkpoint's position, once, in order.
//!
//! Invariants: in `Through` mode bytes reach the sink in the order written; in `Held` mode no
//! byte reaches the sink until [`OutputGate::release`], and [`OutputGate::discard`] drops all
//! of them; the held buffer is bounded ([`HELD_LIMIT`], oldest bytes dropped and counted).
//! With whole-line output on, a line reaches the sink in one write, so other writers of the
//! same pipe (the node loop's log lines on stderr, when stderr and stdout share one) never
//! land inside a guest line; a partial line waits for its newline, and is written when the
//! gate is dropped.

use parking_lot::Mutex;
use std::io::Write;
use std::sync::Arc;

/// The most speculative output kept (bytes): more than any checkpoint interval's worth of a
/// boot log; beyond it the oldest bytes are dropped (and counted).
pub const HELD_LIMIT: usize = 4 << 20;
/// A "line" longer than this is written without waiting for its newline.
const LONGEST_LINE: usize = 4096;

/// Whether output passes or is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    /// Written to the sink at once.
    Through,
    /// Kept until released or discarded (a secondary's speculative output).
    Held,
}

/// Counters of a gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Bytes held right now.
    pub held: u64,
    /// Bytes dropped by `discard` (rolled-back output), in total.
    pub discarded: u64,
    /// Bytes dropped because the held buffer was full, in total.
    pub overflowed: u64,
}

struct Gate {
    sink: Box<dyn Write + Send>,
    mode: GateMode,
    held: Vec<u8>,
    /// Whole-line mode: the start of a line not yet ended (passed output only).
    partial: Vec<u8>,
    whole_lines: bool,
    stats: GateStats,
}

impl Gate {
    fn pass(&mut self, bytes: &[u8]) {
        // Console output is best effort: a closed stdout must not stop the guest.
        if !self.whole_lines {
            let _ = self.sink.write_all(bytes);
            let _ = self.sink.flush();
            return;
        }
        self.partial.extend_from_slice(bytes);
        let cut = match self.partial.iter().rposition(|&b| b == b'\n') {
            Some(last_newline) => last_newline + 1,
            None if self.partial.len() > LONGEST_LINE => self.partial.len(),
            None => return,
        };
        let _ = self.sink.write_all(&self.partial[..cut]);
        let _ = self.sink.flush();
        self.partial.drain(..cut);
    }

    fn hold(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        if self.held.len() > HELD_LIMIT {
            let excess = self.held.len() - HELD_LIMIT;
            self.held.drain(..excess);
            self.stats.overflowed += excess as u64;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let _ = self.sink.write_all(&self.partial);
            let _ = self.sink.flush();
        }
    }
}

/// The gate; clones share it (the devices write through clones, the node loop flips it).
#[derive(Clone)]
pub struct OutputGate {
    inner: Arc<Mutex<Gate>>,
}

impl std::fmt::Debug for OutputGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("OutputGate")
            .field("mode", &g.mode)
            .field("stats", &g.stats)
            .finish_non_exhaustive()
    }
}

impl OutputGate {
    /// A gate passing bytes to `sink` as they come (`Through`, whole-line output off).
    pub fn new(sink: Box<dyn Write + Send>) -> OutputGate {
        OutputGate {
            inner: Arc::new(Mutex::new(Gate {
                sink,
                mode: GateMode::Through,
                held: Vec::new(),
                partial: Vec::new(),
                whole_lines: false,
                stats: GateStats::default(),
            })),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Gate> {
        self.inner.lock()
    }

    /// Whole-line output (see the module doc): on for a node, whose log lines may share the
    /// console's pipe.
    pub fn set_whole_lines(&self, on: bool) {
        let mut g = self.lock();
        g.whole_lines = on;
        if !on && !g.partial.is_empty() {
            let partial = std::mem::take(&mut g.partial);
            g.pass(&partial);
        }
    }

    /// From now on output is held (a secondary, from its start).
    pub fn hold(&self) {
        self.lock().mode = GateMode::Held;
    }

    /// Drops the held output (a checkpoint was applied: the VM's run since the last one is
    /// rolled back); returns how many bytes were dropped.
    pub fn discard(&self) -> usize {
        let mut g = self.lock();
        let n = g.held.len();
        g.held.clear();
        g.stats.discarded += n as u64;
        n
    }

    /// Writes the held output to the sink and passes everything after it (takeover); returns
    /// how many held bytes were written.
    pub fn release(&self) -> usize {
        let mut g = self.lock();
        let held = std::mem::take(&mut g.held);
        g.mode = GateMode::Through;
        g.pass(&held);
        held.len()
    }

    /// The current mode.
    pub fn mode(&self) -> GateMode {
        self.lock().mode
    }

    /// The counters.
    pub fn stats(&self) -> GateStats {
        let g = self.lock();
        GateStats {
            held: g.held.len() as u64,
            ..g.stats
        }
    }

    /// A writer into the gate, for a device.
    pub fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(self.clone())
    }
}

impl Write for OutputGate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = self.lock();
        match g.mode {
            GateMode::Through => g.pass(buf),
            GateMode::Held => g.hold(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::console::OutputCapture;

    fn gate() -> (OutputGate, OutputCapture) {
        let cap = OutputCapture::new();
        (OutputGate::new(cap.writer()), cap)
    }

    #[test]
    fn through_mode_passes_bytes_at_once() {
        let (mut g, cap) = gate();
        g.write_all(b"abc").unwrap();
        assert_eq!(cap.text(), "abc");
        g.write_all(b"\nd").unwrap();
        assert_eq!(cap.text(), "abc\nd");
    }

    #[test]
    fn held_output_never_reaches_the_sink_and_discard_drops_it() {
        let (mut g, cap) = gate();
        g.hold();
        g.write_all(b"speculative 1\n").unwrap();
        assert_eq!(cap.text(), "");
        assert_eq!(g.discard(), 14);
        g.write_all(b"speculative 2\n").unwrap();
        assert_eq!(g.discard(), 14);
        assert_eq!(cap.text(), "");
        assert_eq!(
            g.stats(),
            GateStats {
                held: 0,
                discarded: 28,
                overflowed: 0
            }
        );
        assert_eq!(g.mode(), GateMode::Held);
    }

    #[test]
    fn release_writes_what_was_held_since_the_last_discard_then_passes_through() {
        let (mut g, cap) = gate();
        g.hold();
        g.write_all(b"rolled back\n").unwrap();
        g.discard();
        g.write_all(b"after the apply\n").unwrap();
        assert_eq!(g.release(), 16);
        assert_eq!(cap.text(), "after the apply\n");
        g.write_all(b"survivor\n").unwrap();
        assert_eq!(cap.text(), "after the apply\nsurvivor\n");
        assert_eq!(g.mode(), GateMode::Through);
        // Nothing is held any more: a late discard changes nothing.
        assert_eq!(g.discard(), 0);
        assert_eq!(cap.text(), "after the apply\nsurvivor\n");
    }

    #[test]
    fn whole_line_mode_writes_complete_lines_and_keeps_the_start_of_one() {
        let cap = OutputCapture::new();
        let mut g = OutputGate::new(cap.writer());
        g.set_whole_lines(true);
        g.write_all(b"[ 1.0] Mem").unwrap();
        assert_eq!(cap.text(), "");
        g.write_all(b"ory: 1K\n[ 2.0] SL").unwrap();
        assert_eq!(cap.text(), "[ 1.0] Memory: 1K\n");
        g.write_all(&[b'x'; LONGEST_LINE]).unwrap();
        let text = cap.text();
        assert!(
            text.starts_with("[ 1.0] Memory: 1K\n[ 2.0] SLxx")
                && text.len() == 18 + 9 + LONGEST_LINE,
            "an overlong line is written without its newline"
        );
        g.write_all(b"tail").unwrap();
        drop(g);
        assert!(
            cap.text().ends_with("xtail"),
            "dropping the gate writes a partial line"
        );
    }

    #[test]
    fn held_output_is_bounded_by_dropping_the_oldest_bytes() {
        let (mut g, cap) = gate();
        g.hold();
        g.write_all(&vec![b'a'; HELD_LIMIT]).unwrap();
        g.write_all(b"bc").unwrap();
        let stats = g.stats();
        assert_eq!((stats.held, stats.overflowed), (HELD_LIMIT as u64, 2));
        g.release();
        let text = cap.text();
        assert_eq!(text.len(), HELD_LIMIT);
        assert!(text.ends_with("abc"));
    }
}
