//! An address-range bus (one for MMIO, one for port I/O): the vCPU threads turn MMIO and PIO
//! exits into `read` / `write` calls on the device that owns the address.
//!
//! Invariant: ranges never overlap (insertion refuses overlaps), so every address has at most
//! one owner. Accesses nobody owns read as all-ones and drop writes, as on a PC's bus.

use parking_lot::Mutex;
use std::sync::Arc;

/// What a device asks of the vCPU after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    /// Keep running.
    Continue,
    /// The guest asked to stop with this exit code.
    Exit(u64),
    /// The guest reported a CPU exception it could not handle.
    Fault {
        /// Exception vector.
        vector: u8,
        /// Error code pushed by the CPU (0 if none).
        error_code: u64,
        /// Faulting instruction.
        rip: u64,
        /// CR2 (page-fault address).
        addr: u64,
    },
}

/// A device on a bus. `offset` is relative to the device's base address.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction;
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// The bus.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{:#x}+{:#x}", e.base, e.len))
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

/// Two devices claimed the same address.
#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct BusOverlap {
    /// Requested base.
    pub base: u64,
    /// Requested length.
    pub len: u64,
}

impl Bus {
    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusOverlap> {
        let end = base.saturating_add(len);
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusOverlap { base, len });
        }
        self.entries.push(Entry { base, len, device });
        self.entries.sort_by_key(|e| e.base);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| addr >= e.base && addr - e.base < e.len)
    }

    /// Dispatches a read; unowned addresses read as 0xff bytes.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some(e) => e.device.lock().read(addr - e.base, data),
            None => data.fill(0xff),
        }
    }

    /// Dispatches a write; unowned addresses drop it.
    pub fn write(&self, addr: u64, data: &[u8]) -> DeviceAction {
        match self.find(addr) {
            Some(e) => e.device.lock().write(addr - e.base, data),
            None => DeviceAction::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
            self.0.push((offset, data.to_vec()));
            DeviceAction::Continue
        }
    }

    #[test]
    fn accesses_reach_the_owner_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = Bus::default();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        assert_eq!(bus.write(0x1010, &[1, 2]), DeviceAction::Continue);
        let mut buf = [0u8; 2];
        bus.read(0x1020, &mut buf);
        assert_eq!(buf, [0x20, 0x20]);
        assert_eq!(dev.lock().0, vec![(0x10, vec![1, 2])]);
    }

    #[test]
    fn unowned_reads_are_all_ones_and_overlaps_are_refused() {
        let mut bus = Bus::default();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Recorder(Vec::new()))))
            .unwrap();
        let mut buf = [0u8; 4];
        bus.read(0x2000, &mut buf);
        assert_eq!(buf, [0xff; 4]);
        assert!(
            bus.insert(0x10ff, 1, Arc::new(Mutex::new(Recorder(Vec::new()))))
                .is_err()
        );
        assert!(
            bus.insert(0x1100, 1, Arc::new(Mutex::new(Recorder(Vec::new()))))
                .is_ok()
        );
    }
}
