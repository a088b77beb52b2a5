//! The MMIO console of colo's test guest: ring 3 cannot do port I/O under kvm_pvm, so the
//! guest writes whole lines by handing the VMM a (guest address, length) pair in one 64-bit
//! MMIO store (one exit per line instead of one per byte: ~33 µs each, pvm-guest-spike.md).
//! The same window carries the guest's exit request and the shim's CPU-fault report.
//!
//! Register map (mirrors `runtime/guest/src/abi.rs`): 0x00 PUTC, 0x08 WRITE (gpa | len << 48),
//! 0x10 EXIT, 0x18 FAULT (vector | error code << 8, written last), 0x20 FAULT_RIP,
//! 0x28 FAULT_ADDR. Invariant: the console never trusts guest values: a WRITE pointing
//! outside RAM is counted and dropped, never a panic.

use super::bus::{BusDevice, DeviceAction};
use crate::vmm::memory::GuestMemory;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const REG_PUTC: u64 = 0x00;
const REG_WRITE: u64 = 0x08;
const REG_EXIT: u64 = 0x10;
const REG_FAULT: u64 = 0x18;
const REG_FAULT_RIP: u64 = 0x20;
const REG_FAULT_ADDR: u64 = 0x28;
const WRITE_ADDR_MASK: u64 = (1 << 48) - 1;

/// The console's Persist state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Bytes the guest has written so far.
    pub bytes_written: u64,
    /// WRITEs dropped because they pointed outside RAM.
    pub bad_writes: u64,
    /// Last FAULT_RIP written.
    pub fault_rip: u64,
    /// Last FAULT_ADDR written.
    pub fault_addr: u64,
}

/// The console device.
pub struct Console {
    mem: GuestMemory,
    out: Box<dyn Write + Send>,
    state: ConsoleState,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console reading guest buffers from `mem` and writing them to `out`.
    pub fn new(mem: GuestMemory, out: Box<dyn Write + Send>) -> Console {
        Console {
            mem,
            out,
            state: ConsoleState::default(),
        }
    }

    /// Persist: the state.
    pub fn save(&self) -> ConsoleState {
        self.state.clone()
    }

    /// Persist: continue from a saved state.
    pub fn restore(&mut self, state: &ConsoleState) {
        self.state = state.clone();
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.state.bytes_written += bytes.len() as u64;
        // Console output is best effort: a closed stdout must not stop the guest.
        let _ = self.out.write_all(bytes);
        let _ = self.out.flush();
    }
}

fn value_of(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

impl BusDevice for Console {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let value = value_of(data);
        match offset {
            REG_PUTC => self.emit(&[value as u8]),
            REG_WRITE => {
                let gpa = value & WRITE_ADDR_MASK;
                let len = (value >> 48) as usize;
                let mut buf = vec![0u8; len];
                match self.mem.read_slice(&mut buf, GuestAddress(gpa)) {
                    Ok(()) => self.emit(&buf),
                    Err(_) => self.state.bad_writes += 1,
                }
            }
            REG_EXIT => return DeviceAction::Exit(value),
            REG_FAULT_RIP => self.state.fault_rip = value,
            REG_FAULT_ADDR => self.state.fault_addr = value,
            REG_FAULT => {
                return DeviceAction::Fault {
                    vector: value as u8,
                    error_code: value >> 8,
                    rip: self.state.fault_rip,
                    addr: self.state.fault_addr,
                };
            }
            _ => {}
        }
        DeviceAction::Continue
    }
}

/// A console sink that keeps everything written in memory and lets a caller wait for it
/// (tests, the benchmark). Clones share the buffer.
#[derive(Clone, Debug, Default)]
pub struct OutputCapture {
    inner: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl OutputCapture {
    /// An empty capture.
    pub fn new() -> OutputCapture {
        OutputCapture::default()
    }

    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.inner.0.lock()).into_owned()
    }

    /// Waits until `done(text)` holds or `timeout` passes; returns the text either way and
    /// whether `done` held.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> (String, bool) {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut buf = lock.lock();
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if done(&text) {
                return (text, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (text, false);
            }
            cv.wait_for(&mut buf, deadline - now);
        }
    }

    /// A boxed writer for [`Console::new`].
    pub fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(self.clone())
    }
}

impl Write for OutputCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, cv) = &*self.inner;
        lock.lock().extend_from_slice(buf);
        cv.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> (Console, OutputCapture, GuestMemory) {
        let mem = crate::vmm::memory::create(1 << 20).unwrap();
        let cap = OutputCapture::new();
        (Console::new(mem.clone(), cap.writer()), cap, mem)
    }

    #[test]
    fn write_register_prints_a_guest_buffer() {
        let (mut c, cap, mem) = console();
        mem.write_slice(b"hello\n", GuestAddress(0x3000)).unwrap();
        let v = 0x3000u64 | (6 << 48);
        assert_eq!(c.write(REG_WRITE, &v.to_le_bytes()), DeviceAction::Continue);
        c.write(REG_PUTC, b"!");
        assert_eq!(cap.text(), "hello\n!");
        assert_eq!(c.save().bytes_written, 7);
    }

    #[test]
    fn write_outside_ram_is_counted_not_fatal() {
        let (mut c, cap, _mem) = console();
        let v = 0xffff_0000u64 | (100 << 48);
        assert_eq!(c.write(REG_WRITE, &v.to_le_bytes()), DeviceAction::Continue);
        assert_eq!(cap.text(), "");
        assert_eq!(c.save().bad_writes, 1);
    }

    #[test]
    fn fault_report_carries_rip_and_address() {
        let (mut c, _cap, _mem) = console();
        c.write(REG_FAULT_RIP, &0x20_1234u64.to_le_bytes());
        c.write(REG_FAULT_ADDR, &0xdeadu64.to_le_bytes());
        let action = c.write(REG_FAULT, &(14u64 | (2 << 8)).to_le_bytes());
        assert_eq!(
            action,
            DeviceAction::Fault {
                vector: 14,
                error_code: 2,
                rip: 0x20_1234,
                addr: 0xdead
            }
        );
        assert_eq!(
            c.write(REG_EXIT, &3u64.to_le_bytes()),
            DeviceAction::Exit(3)
        );
    }
}
