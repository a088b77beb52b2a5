//! The guest side of the MMIO console: formatted lines written with one MMIO exit each.
//!
//! Invariant: a line's bytes are in guest memory before the MMIO write that publishes them
//! (compiler fence), because the VMM reads them during that exit.

use crate::abi;
use core::fmt;
use core::sync::atomic::{Ordering, compiler_fence};

/// Exit code written when the guest panics.
pub const EXIT_PANIC: u64 = 0xdead;

const LINE_MAX: usize = 240;

/// A line buffer on the stack; `flush` publishes it in one MMIO write.
pub struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Line {
    pub fn new() -> Line {
        Line {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// Sends the buffered bytes to the VMM (one exit) and empties the buffer.
    pub fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        compiler_fence(Ordering::SeqCst);
        let value = (self.buf.as_ptr() as u64) | ((self.len as u64) << 48);
        mmio_write(abi::REG_WRITE, value);
        compiler_fence(Ordering::SeqCst);
        self.len = 0;
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == LINE_MAX {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

fn mmio_write(reg: u64, value: u64) {
    // SAFETY: CONSOLE_BASE + reg is the MMIO console, identity-mapped with the U bit by the
    // shim and without a memslot: the store exits to the VMM and touches no guest memory.
    unsafe { core::ptr::write_volatile((abi::CONSOLE_BASE + reg) as *mut u64, value) }
}

/// Asks the VMM to stop the VM with `code`; never returns (the vCPU is not resumed).
pub fn exit(code: u64) -> ! {
    mmio_write(abi::REG_EXIT, code);
    loop {
        core::hint::spin_loop();
    }
}

/// Prints a formatted line (helper for `println!`).
pub fn print(args: fmt::Arguments<'_>) {
    let mut line = Line::new();
    let _ = fmt::write(&mut line, args);
    line.flush();
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
