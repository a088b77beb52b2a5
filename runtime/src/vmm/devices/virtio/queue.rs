//! A split virtqueue (virtio 1.2 section 2.7) read from and written to guest memory: the
//! descriptor table, the driver's available ring and the device's used ring.
//!
//! Invariant: every value the guest controls is checked before it is used as an address or
//! an index. Ring addresses are validated (alignment, inside RAM) when the driver sets the
//! queue ready; a descriptor chain is walked at most `size` steps (so a loop ends), each
//! buffer must lie inside RAM and indirect descriptors (not offered) are refused. A broken
//! chain is a [`ChainError`]: the device drops that one buffer and returns it with length 0.
//! A broken ring (head index out of range, an available index that ran more than `size` ahead)
//! is a [`QueueError`]: the device stops using the queue until the driver resets it.
//! Memory accesses go through vm-memory, which never reaches outside the mapping, and the
//! used-ring writes mark the VMM's dirty bitmap (KVM's log does not see them).

use crate::vmm::memory::GuestMemory;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{Ordering, fence};
use vm_memory::{Bytes, GuestAddress};

/// Largest queue the device offers (QueueNumMax).
pub const QUEUE_MAX: u16 = 256;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver does not want an interrupt for this queue.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The driver-visible configuration and progress of one queue (its Persist state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Entries (QueueNum), a power of two up to [`QUEUE_MAX`].
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available (driver) ring address.
    pub avail: u64,
    /// Used (device) ring address.
    pub used: u64,
    /// The next available-ring index the device will read.
    pub next_avail: u16,
    /// The next used-ring index the device will write.
    pub next_used: u16,
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device may write it (else it may only read it).
    pub writable: bool,
}

/// A chain taken from the available ring: its head (to return it) and its buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Popped {
    /// The head descriptor index, handed back in the used ring.
    pub head: u16,
    /// The buffers, or why the chain is unusable.
    pub chain: Result<Vec<Segment>, ChainError>,
}

/// A chain the device cannot use (the buffer is dropped, the queue keeps working).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A buffer reaches outside guest RAM.
    #[error("descriptor buffer {addr:#x}+{len} lies outside guest RAM")]
    OutOfRange {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A `next` index outside the table.
    #[error("descriptor next index {next} outside a table of {size}")]
    BadNext {
        /// The index.
        next: u16,
        /// Table size.
        size: u16,
    },
    /// More descriptors than the table holds: the chain loops.
    #[error("descriptor chain longer than the table (a loop)")]
    Loop,
    /// An indirect descriptor (VIRTIO_F_INDIRECT_DESC is not offered).
    #[error("indirect descriptor without VIRTIO_F_INDIRECT_DESC")]
    Indirect,
    /// Readable and writable buffers in an order or mix the device cannot use.
    #[error("descriptor chain has the wrong direction for this queue")]
    Direction,
    /// The chain's buffers are too small or too large for one frame.
    #[error("descriptor chain length {0} does not fit a frame")]
    Length(u64),
}

/// The queue can no longer be used (the device enters DEVICE_NEEDS_RESET).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// QueueNum is zero, not a power of two, or above the maximum.
    #[error("queue size {0} is not a power of two up to {QUEUE_MAX}")]
    BadSize(u16),
    /// A ring is misaligned or outside guest RAM.
    #[error("{ring} ring at {addr:#x} is misaligned or outside guest RAM")]
    BadRing {
        /// Which ring.
        ring: &'static str,
        /// Its address.
        addr: u64,
    },
    /// The available ring names a head outside the table.
    #[error("available ring names descriptor {head} of a table of {size}")]
    BadHead {
        /// The head.
        head: u16,
        /// Table size.
        size: u16,
    },
    /// The driver's available index ran more than a whole ring ahead of the device.
    #[error("available index {avail} is more than {size} ahead of {next}")]
    AvailRunaway {
        /// Driver's index.
        avail: u16,
        /// Device's index.
        next: u16,
        /// Ring size.
        size: u16,
    },
    /// A ring could not be read or written (cannot happen after validation; kept typed).
    #[error("ring access at {0:#x} failed")]
    Access(u64),
}

fn in_ram(mem_bytes: u64, addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= mem_bytes)
}

impl QueueState {
    /// Checks size and ring placement (called when the driver sets QueueReady).
    pub fn validate(&self, mem_bytes: u64) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > QUEUE_MAX {
            return Err(QueueError::BadSize(size));
        }
        let n = u64::from(size);
        // Alignments and sizes: virtio 1.2 section 2.7 (16, 2, 4; 16n, 6 + 2n, 6 + 8n).
        for (ring, addr, align, len) in [
            ("descriptor", self.desc, 16, 16 * n),
            ("available", self.avail, 2, 6 + 2 * n),
            ("used", self.used, 4, 6 + 8 * n),
        ] {
            if !addr.is_multiple_of(align) || !in_ram(mem_bytes, addr, len) {
                return Err(QueueError::BadRing { ring, addr });
            }
        }
        Ok(())
    }

    fn read_u16(mem: &GuestMemory, addr: u64) -> Result<u16, QueueError> {
        mem.read_obj::<u16>(GuestAddress(addr))
            .map(u16::from_le)
            .map_err(|_| QueueError::Access(addr))
    }

    /// Takes the next chain the driver made available, if any. Ready queues only.
    pub fn pop(&mut self, mem: &GuestMemory, mem_bytes: u64) -> Result<Option<Popped>, QueueError> {
        let avail_idx = Self::read_u16(mem, self.avail + 2)?;
        let ahead = avail_idx.wrapping_sub(self.next_avail);
        if ahead == 0 {
            return Ok(None);
        }
        if ahead > self.size {
            return Err(QueueError::AvailRunaway {
                avail: avail_idx,
                next: self.next_avail,
                size: self.size,
            });
        }
        // Read the ring entry only after seeing the index (the driver wrote it before).
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % self.size);
        let head = Self::read_u16(mem, self.avail + 4 + 2 * slot)?;
        if head >= self.size {
            return Err(QueueError::BadHead {
                head,
                size: self.size,
            });
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(Popped {
            head,
            chain: self.walk(mem, mem_bytes, head)?,
        }))
    }

    /// Walks the chain starting at `head` (already checked to be inside the table).
    fn walk(
        &self,
        mem: &GuestMemory,
        mem_bytes: u64,
        head: u16,
    ) -> Result<Result<Vec<Segment>, ChainError>, QueueError> {
        let mut segments = Vec::new();
        let mut index = head;
        loop {
            if segments.len() >= usize::from(self.size) {
                return Ok(Err(ChainError::Loop));
            }
            let at = self.desc + 16 * u64::from(index);
            let mut raw = [0u8; 16];
            mem.read_slice(&mut raw, GuestAddress(at))
                .map_err(|_| QueueError::Access(at))?;
            let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
            let flags = u16::from_le_bytes(raw[12..14].try_into().expect("2 bytes"));
            let next = u16::from_le_bytes(raw[14..16].try_into().expect("2 bytes"));
            if flags & DESC_F_INDIRECT != 0 {
                return Ok(Err(ChainError::Indirect));
            }
            if !in_ram(mem_bytes, addr, u64::from(len)) {
                return Ok(Err(ChainError::OutOfRange { addr, len }));
            }
            segments.push(Segment {
                addr,
                len,
                writable: flags & DESC_F_WRITE != 0,
            });
            if flags & DESC_F_NEXT == 0 {
                return Ok(Ok(segments));
            }
            if next >= self.size {
                return Ok(Err(ChainError::BadNext {
                    next,
                    size: self.size,
                }));
            }
            index = next;
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written into it.
    pub fn push_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        let slot = u64::from(self.next_used % self.size);
        let elem = self.used + 4 + 8 * slot;
        let mut raw = [0u8; 8];
        raw[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        raw[4..8].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(elem))
            .map_err(|_| QueueError::Access(elem))?;
        self.next_used = self.next_used.wrapping_add(1);
        // The element must be visible before the index that publishes it.
        fence(Ordering::Release);
        mem.write_obj::<u16>(self.next_used.to_le(), GuestAddress(self.used + 2))
            .map_err(|_| QueueError::Access(self.used + 2))
    }

    /// Whether the driver wants an interrupt for used buffers (`VIRTQ_AVAIL_F_NO_INTERRUPT`
    /// clear; VIRTIO_F_EVENT_IDX is not offered).
    pub fn wants_interrupt(&self, mem: &GuestMemory) -> bool {
        fence(Ordering::SeqCst);
        Self::read_u16(mem, self.avail).is_ok_and(|flags| flags & AVAIL_F_NO_INTERRUPT == 0)
    }
}

/// The (address, length) runs of segments, empty ones skipped.
pub(super) fn byte_runs(segments: &[Segment]) -> Vec<(u64, u32)> {
    segments
        .iter()
        .filter(|s| s.len > 0)
        .map(|s| (s.addr, s.len))
        .collect()
}

/// Removes `n` bytes from the end of `runs` (fewer if there are fewer).
pub(super) fn trim_end(runs: &mut Vec<(u64, u32)>, mut n: u64) {
    while n > 0 {
        let Some(last) = runs.last_mut() else { return };
        if u64::from(last.1) <= n {
            n -= u64::from(last.1);
            runs.pop();
        } else {
            last.1 -= n as u32;
            n = 0;
        }
    }
}

/// Splits `runs` after `n` bytes: (the first `n` bytes, the rest); `None` if shorter.
#[allow(clippy::type_complexity)]
pub(super) fn take_prefix(
    runs: &[(u64, u32)],
    n: u64,
) -> Option<(Vec<(u64, u32)>, Vec<(u64, u32)>)> {
    let mut head = Vec::new();
    let mut need = n;
    let mut rest = Vec::new();
    for &(addr, len) in runs {
        if need == 0 {
            rest.push((addr, len));
        } else if u64::from(len) <= need {
            head.push((addr, len));
            need -= u64::from(len);
        } else {
            head.push((addr, need as u32));
            rest.push((addr + need, len - need as u32));
            need = 0;
        }
    }
    (need == 0).then_some((head, rest))
}
