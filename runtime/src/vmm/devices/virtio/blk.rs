//! The virtio-mmio (version 2) block device: its register window, feature negotiation, one
//! request queue, and the host side as a [`BlockBackend`] that executes reads, writes and
//! flushes (a file for a lone VM, the node loop and its `colo_core::node::Node` in the pair).
//!
//! Offered features: VIRTIO_F_VERSION_1 and VIRTIO_BLK_F_FLUSH (virtio 1.2 section 5.2.3). A
//! request is a chain of a 16-byte readable header (type, reserved, sector), the data (readable
//! for OUT, writable for IN and GET_ID) and a writable status byte, last (section 5.2.6).
//! Requests may complete later and out of order: the device keeps them in flight by
//! [`BlkRequestId`] until [`BlkDevice::complete`]. Device phases (`DevicePhase` of `net`):
//! ```text
//!   Reset --driver writes status bits, FEATURES_OK accepted, DRIVER_OK--> Live
//!   Live --a broken ring (QueueError) or an invalid queue setup--> NeedsReset (status 0x40)
//!   any --status 0 written--> Reset (in-flight requests are forgotten; late completions
//!                                    are counted and ignored)
//! ```
//! Invariant: guest values never panic the VMM nor reach outside RAM (see `queue`). A chain
//! whose descriptors are unusable, or that has no writable status byte, is returned with
//! length 0 (counted in [`BlkStats::bad_chains`]); a well-formed chain carrying a bad request
//! (short header, a length that is not whole sectors, a range beyond the capacity, more than
//! [`MAX_REQUEST_BYTES`]) completes with `VIRTIO_BLK_S_IOERR` (counted in
//! [`BlkStats::bad_requests`]); an unknown type completes with `VIRTIO_BLK_S_UNSUPP`. Reads land
//! in guest RAM through vm-memory, so the VMM's dirty bitmap carries them into the next
//! checkpoint. Requests in flight are part of [`BlkState`]: a restored or checkpoint-applied
//! device submits them again to its backend (as QEMU's virtio-blk restarts migrated requests),
//! so the guest never waits forever for a request its source had popped.

use super::mmio;
use super::net::DevicePhase;
use super::net::{F_VERSION_1, INT_USED_BUFFER};
use super::queue::{ChainError, QueueError, QueueState, Segment, byte_runs, take_prefix, trim_end};
use crate::vmm::devices::bus::{BusDevice, DeviceAction};
use crate::vmm::memory::{self, GuestMemory};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const DEVICE_ID_BLK: u32 = 2;
/// VIRTIO_BLK_F_FLUSH.
pub const F_FLUSH: u64 = 1 << 9;
const DEVICE_FEATURES: u64 = F_VERSION_1 | F_FLUSH;
/// VIRTIO_BLK_F_RO: offered for a read-only disk; the device then fails every write.
pub const F_RO: u64 = 1 << 5;

/// Bytes per sector: virtio-blk addresses the disk in 512-byte units whatever the backend.
pub const SECTOR: u64 = 512;
/// The largest data part of one request the device accepts (larger ones fail with IOERR, so a
/// hostile chain cannot make the VMM allocate gigabytes).
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// Length of the `virtio_blk_req` header.
pub const HEADER_LEN: u64 = 16;
/// Length of the GET_ID answer (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
/// What GET_ID answers (NUL-padded).
pub const DEVICE_SERIAL: &[u8] = b"colo-blk0";

/// Request types (virtio 1.2 section 5.2.6).
pub const T_IN: u32 = 0;
/// See [`T_IN`].
pub const T_OUT: u32 = 1;
/// See [`T_IN`].
pub const T_FLUSH: u32 = 4;
/// See [`T_IN`].
pub const T_GET_ID: u32 = 8;
/// Status values.
pub const S_OK: u8 = 0;
/// See [`S_OK`].
pub const S_IOERR: u8 = 1;
/// See [`S_OK`].
pub const S_UNSUPP: u8 = 2;

/// The device's number for a request handed to the backend (unique for the device's life,
/// checkpoints included: it is part of [`BlkState`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct BlkRequestId(pub u64);

/// What the backend must do. Offsets and lengths are in bytes, whole sectors, inside the
/// capacity (the device checked them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlkOp {
    /// Read `len` bytes at `offset`; complete with exactly `len` bytes.
    Read {
        /// Disk offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Write `data` at `offset`; complete with no bytes.
    Write {
        /// Disk offset.
        offset: u64,
        /// The guest's bytes (copied out of guest RAM at submission).
        data: Vec<u8>,
    },
    /// Make every completed write durable; complete with no bytes.
    Flush,
}

/// One request for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    /// Pass it back to [`BlkDevice::complete`].
    pub id: BlkRequestId,
    /// The operation.
    pub op: BlkOp,
}

/// Why the backend failed a request (the guest sees `VIRTIO_BLK_S_IOERR`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("block backend: {0}")]
pub struct BlkIoError(pub String);

/// A request's outcome: the bytes read (empty for writes and flushes) or an error.
pub type BlkCompletion = Result<Vec<u8>, BlkIoError>;

/// Executes the guest's requests. `submit` runs on a vCPU thread with the device locked: it
/// must not lock the device; it either completes at once (`Some`) or later through
/// [`BlkDevice::complete`].
pub trait BlockBackend: Send {
    /// Takes one request.
    fn submit(&mut self, request: BlkRequest) -> Option<BlkCompletion>;
}

/// The backend of a device without a disk: every request fails.
#[derive(Debug, Default)]
pub struct NoMedia;

impl BlockBackend for NoMedia {
    fn submit(&mut self, _request: BlkRequest) -> Option<BlkCompletion> {
        Some(Err(BlkIoError("no medium".into())))
    }
}

/// Counters (part of the Persist state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkStats {
    /// Reads completed successfully.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Writes completed successfully.
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Flushes completed successfully.
    pub flushes: u64,
    /// Requests the backend failed.
    pub io_errors: u64,
    /// Well-formed chains carrying an invalid request (IOERR) or an unknown type (UNSUPP).
    pub bad_requests: u64,
    /// Chains dropped because a descriptor was unusable or no status byte was writable.
    pub bad_chains: u64,
    /// Completions for a request the device does not know (after a reset).
    pub stale_completions: u64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub device_errors: u64,
}

/// What an in-flight request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlkKind {
    /// IN.
    Read,
    /// OUT.
    Write,
    /// FLUSH.
    Flush,
}

/// A request popped from the ring and not yet returned: enough to finish it, or to submit it
/// again after a restore (the write's bytes are still in guest RAM, which the checkpoint
/// carries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    /// The chain's head, returned in the used ring.
    pub head: u16,
    /// Operation.
    pub kind: BlkKind,
    /// Disk offset in bytes.
    pub offset: u64,
    /// Data buffers (guest address, length), in order.
    pub data: Vec<(u64, u32)>,
    /// Guest address of the status byte.
    pub status_addr: u64,
}

impl Inflight {
    fn data_len(&self) -> u64 {
        self.data.iter().map(|&(_, len)| u64::from(len)).sum()
    }
}

/// The driver-visible state of the device (its Persist state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkState {
    /// Capacity in bytes (a whole number of sectors).
    pub capacity: u64,
    /// A read-only disk: VIRTIO_BLK_F_RO is offered and writes fail with IOERR.
    pub read_only: bool,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// Device status.
    pub status: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// The request queue.
    pub queue: QueueState,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The next request id.
    pub next_id: u64,
    /// Requests handed to the backend and not completed, by id.
    pub inflight: BTreeMap<BlkRequestId, Inflight>,
    /// Counters.
    pub stats: BlkStats,
}

/// The device.
pub struct BlkDevice {
    mem: GuestMemory,
    mem_bytes: u64,
    backend: Box<dyn BlockBackend>,
    irq: Option<EventFd>,
    state: BlkState,
}

impl std::fmt::Debug for BlkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkDevice")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A chain the device understood, or the status to answer at once.
enum Parsed {
    /// Hand to the backend.
    Submit(Inflight, BlkOp),
    /// Answer with this status; `written` data bytes were filled in by the device itself.
    Answer {
        status_addr: u64,
        status: u8,
        written: u32,
    },
}

impl BlkDevice {
    /// A device over `mem` without a medium (capacity 0, [`NoMedia`]) interrupting through
    /// `irq` (an irqfd) until [`BlkDevice::set_backend`].
    pub fn new(mem: GuestMemory, irq: Option<EventFd>) -> BlkDevice {
        let mem_bytes = memory::size(&mem);
        BlkDevice {
            mem,
            mem_bytes,
            backend: Box::new(NoMedia),
            irq,
            state: BlkState::default(),
        }
    }

    /// Attaches a disk of `capacity` bytes (rounded down to whole sectors) served by
    /// `backend`. The capacity is guest-visible: set it before the guest reads it.
    pub fn set_backend(&mut self, backend: Box<dyn BlockBackend>, capacity: u64) {
        self.backend = backend;
        self.state.capacity = capacity - capacity % SECTOR;
    }

    /// Makes the disk read-only (VIRTIO_BLK_F_RO offered, writes refused with IOERR) or not.
    /// Guest-visible: set it before the driver reads the features.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.state.read_only = read_only;
    }

    /// The features offered: [`F_RO`] on top of the fixed set for a read-only disk.
    fn device_features(&self) -> u64 {
        if self.state.read_only {
            DEVICE_FEATURES | F_RO
        } else {
            DEVICE_FEATURES
        }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.state.capacity
    }

    /// The counters.
    pub fn stats(&self) -> BlkStats {
        self.state.stats
    }

    /// Requests handed to the backend and not yet completed.
    pub fn inflight(&self) -> usize {
        self.state.inflight.len()
    }

    /// The phase.
    pub fn phase(&self) -> DevicePhase {
        mmio::phase(self.state.status)
    }

    /// Persist: the driver-visible state, requests in flight included.
    pub fn save(&self) -> BlkState {
        self.state.clone()
    }

    /// Persist: continue from a saved state. Requests that were in flight at the source are
    /// submitted again to this device's backend (their completions at the source never reach
    /// this copy of the guest). Their ids are kept, so a completion names the same request.
    pub fn restore(&mut self, state: &BlkState) {
        self.state = state.clone();
        let again: Vec<(BlkRequestId, Inflight)> = self
            .state
            .inflight
            .iter()
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        for (id, req) in again {
            let op = match req.kind {
                BlkKind::Read => BlkOp::Read {
                    offset: req.offset,
                    len: req.data_len(),
                },
                BlkKind::Flush => BlkOp::Flush,
                BlkKind::Write => match self.gather(&req.data) {
                    Ok(data) => BlkOp::Write {
                        offset: req.offset,
                        data,
                    },
                    Err(_) => {
                        // Cannot happen for a state saved by this device over the same RAM
                        // size; a hand-made state gets an IOERR instead of a panic.
                        self.finish_request(id, Err(BlkIoError("restored buffer".into())));
                        continue;
                    }
                },
            };
            if let Some(done) = self.backend.submit(BlkRequest { id, op }) {
                self.finish_request(id, done);
            }
        }
        self.raise_if_pending();
    }

    /// The backend finished request `id`. Reads bring exactly the bytes asked for; anything
    /// else is an I/O error for the guest. Unknown ids (the driver reset the device since) are
    /// counted and ignored.
    pub fn complete(&mut self, id: BlkRequestId, completion: BlkCompletion) {
        if self.finish_request(id, completion) {
            self.raise_if_pending();
        }
    }

    fn raise_if_pending(&mut self) {
        if self.state.queue.ready && self.state.queue.wants_interrupt(&self.mem) {
            self.state.interrupt_status |= INT_USED_BUFFER;
            self.raise_irq();
        }
    }

    /// Writes a completion into guest RAM and returns the chain; whether one was returned.
    fn finish_request(&mut self, id: BlkRequestId, completion: BlkCompletion) -> bool {
        let Some(req) = self.state.inflight.remove(&id) else {
            self.state.stats.stale_completions += 1;
            return false;
        };
        let mut written = 0u32;
        let status = match (req.kind, completion) {
            (BlkKind::Read, Ok(bytes)) if bytes.len() as u64 == req.data_len() => {
                match self.scatter(&req.data, &bytes) {
                    Ok(()) => {
                        self.state.stats.reads += 1;
                        self.state.stats.read_bytes += bytes.len() as u64;
                        written = bytes.len() as u32;
                        S_OK
                    }
                    Err(_) => {
                        self.state.stats.io_errors += 1;
                        S_IOERR
                    }
                }
            }
            (BlkKind::Write, Ok(_)) => {
                self.state.stats.writes += 1;
                self.state.stats.write_bytes += req.data_len();
                S_OK
            }
            (BlkKind::Flush, Ok(_)) => {
                self.state.stats.flushes += 1;
                S_OK
            }
            _ => {
                self.state.stats.io_errors += 1;
                S_IOERR
            }
        };
        self.answer(req.head, req.status_addr, status, written)
    }

    /// Writes the status byte and returns the chain with the bytes written (data + status).
    fn answer(&mut self, head: u16, status_addr: u64, status: u8, written: u32) -> bool {
        if self.phase() != DevicePhase::Live || !self.state.queue.ready {
            return false;
        }
        // Through vm-memory: the write marks the VMM's dirty bitmap for the checkpoint.
        if self
            .mem
            .write_obj(status, GuestAddress(status_addr))
            .is_err()
        {
            self.state.stats.bad_chains += 1;
            return self.push_used(head, 0);
        }
        self.push_used(head, written + 1)
    }

    fn push_used(&mut self, head: u16, len: u32) -> bool {
        match self.state.queue.push_used(&self.mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    fn gather(&self, data: &[(u64, u32)]) -> Result<Vec<u8>, ChainError> {
        let total: u64 = data.iter().map(|&(_, len)| u64::from(len)).sum();
        let mut bytes = vec![0u8; total as usize];
        let mut at = 0;
        for &(addr, len) in data {
            let end = at + len as usize;
            self.mem
                .read_slice(&mut bytes[at..end], GuestAddress(addr))
                .map_err(|_| ChainError::OutOfRange { addr, len })?;
            at = end;
        }
        Ok(bytes)
    }

    fn scatter(&self, data: &[(u64, u32)], bytes: &[u8]) -> Result<(), ChainError> {
        let mut at = 0;
        for &(addr, len) in data {
            let end = at + len as usize;
            self.mem
                .write_slice(&bytes[at..end], GuestAddress(addr))
                .map_err(|_| ChainError::OutOfRange { addr, len })?;
            at = end;
        }
        Ok(())
    }

    fn reset(&mut self) {
        // Requests in flight are forgotten: their completions will be stale. (QEMU drains
        // them before a reset; here the backend may still finish a write the guest no longer
        // waits for, which a driver that reset its device must tolerate anyway.)
        self.state = BlkState {
            capacity: self.state.capacity,
            read_only: self.state.read_only,
            next_id: self.state.next_id,
            stats: self.state.stats,
            ..BlkState::default()
        };
    }

    fn fail(&mut self, _error: QueueError) {
        mmio::enter_needs_reset(
            &mut self.state.status,
            &mut self.state.interrupt_status,
            &mut self.state.stats.device_errors,
            self.irq.as_ref(),
        );
    }

    fn raise_irq(&self) {
        mmio::raise_irq(self.irq.as_ref());
    }

    /// Turns one chain into a request (or an immediate answer); `None` if it has no usable
    /// status byte.
    fn parse(&self, segments: &[Segment]) -> Option<Parsed> {
        // Readable buffers first, then writable ones (section 2.7.4.2); the status byte is the
        // last byte of the last writable buffer.
        let split = segments
            .iter()
            .position(|s| s.writable)
            .unwrap_or(segments.len());
        if segments[split..].iter().any(|s| !s.writable) {
            return None;
        }
        let last = segments[split..].iter().rev().find(|s| s.len > 0)?;
        let status_addr = last.addr + u64::from(last.len) - 1;
        let ioerr = Parsed::Answer {
            status_addr,
            status: S_IOERR,
            written: 0,
        };
        let readable = byte_runs(&segments[..split]);
        let mut writable = byte_runs(&segments[split..]);
        trim_end(&mut writable, 1); // the status byte
        let mut header = [0u8; HEADER_LEN as usize];
        let Some(data_out) = take_prefix(&readable, HEADER_LEN) else {
            return Some(ioerr);
        };
        if self
            .gather(&data_out.0)
            .map(|b| header.copy_from_slice(&b))
            .is_err()
        {
            return Some(ioerr);
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let (kind, data) = match kind {
            T_IN => (BlkKind::Read, writable),
            // A driver must not write a read-only disk (virtio 1.2 section 5.2.6.2).
            T_OUT if self.state.read_only => return Some(ioerr),
            T_OUT => (BlkKind::Write, data_out.1),
            T_FLUSH => (BlkKind::Flush, Vec::new()),
            T_GET_ID => {
                return Some(self.get_id(&writable, status_addr));
            }
            _ => {
                return Some(Parsed::Answer {
                    status_addr,
                    status: S_UNSUPP,
                    written: 0,
                });
            }
        };
        let len: u64 = data.iter().map(|&(_, l)| u64::from(l)).sum();
        let offset = sector.checked_mul(SECTOR);
        let fits = offset
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= self.state.capacity);
        if kind != BlkKind::Flush
            && (!len.is_multiple_of(SECTOR) || len > MAX_REQUEST_BYTES || !fits)
        {
            return Some(ioerr);
        }
        let offset = if kind == BlkKind::Flush { 0 } else { offset? };
        let req = Inflight {
            head: 0,
            kind,
            offset,
            data,
            status_addr,
        };
        let op = match kind {
            BlkKind::Read => BlkOp::Read { offset, len },
            BlkKind::Flush => BlkOp::Flush,
            BlkKind::Write => match self.gather(&req.data) {
                Ok(data) => BlkOp::Write { offset, data },
                Err(_) => return Some(ioerr),
            },
        };
        Some(Parsed::Submit(req, op))
    }

    /// GET_ID: the serial, NUL-padded, into the writable data (at most [`ID_BYTES`]).
    fn get_id(&self, writable: &[(u64, u32)], status_addr: u64) -> Parsed {
        let mut id = [0u8; ID_BYTES];
        id[..DEVICE_SERIAL.len()].copy_from_slice(DEVICE_SERIAL);
        let room: u64 = writable.iter().map(|&(_, l)| u64::from(l)).sum();
        let n = room.min(ID_BYTES as u64) as usize;
        let mut dest = writable.to_vec();
        trim_end(&mut dest, room - n as u64);
        if self.scatter(&dest, &id[..n]).is_err() {
            return Parsed::Answer {
                status_addr,
                status: S_IOERR,
                written: 0,
            };
        }
        Parsed::Answer {
            status_addr,
            status: S_OK,
            written: n as u32,
        }
    }

    /// Takes every request the driver queued and hands it to the backend.
    fn process_queue(&mut self) {
        let mut returned = false;
        while self.phase() == DevicePhase::Live && self.state.queue.ready {
            let popped = match self.state.queue.pop(&self.mem, self.mem_bytes) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e);
                    break;
                }
            };
            let parsed = popped.chain.ok().and_then(|s| self.parse(&s));
            match parsed {
                None => {
                    self.state.stats.bad_chains += 1;
                    returned |= self.push_used(popped.head, 0);
                }
                Some(Parsed::Answer {
                    status_addr,
                    status,
                    written,
                }) => {
                    if status != S_OK {
                        self.state.stats.bad_requests += 1;
                    }
                    returned |= self.answer(popped.head, status_addr, status, written);
                }
                Some(Parsed::Submit(mut req, op)) => {
                    req.head = popped.head;
                    let id = BlkRequestId(self.state.next_id);
                    self.state.next_id += 1;
                    self.state.inflight.insert(id, req);
                    if let Some(done) = self.backend.submit(BlkRequest { id, op }) {
                        returned |= self.finish_request(id, done);
                    }
                }
            }
        }
        if returned {
            self.raise_if_pending();
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let s = &self.state;
        let view = mmio::RegisterView {
            device_id: DEVICE_ID_BLK,
            device_features: self.device_features(),
            device_features_sel: s.device_features_sel,
            // There is one queue (index 0).
            queue: (s.queue_sel == 0).then_some(&s.queue),
            interrupt_status: s.interrupt_status,
            status: s.status,
        };
        mmio::read_register(&view, offset)
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        use mmio::RegisterWrite as W;
        let sel0 = self.state.queue_sel == 0;
        match mmio::decode_write(offset, value) {
            W::DeviceFeaturesSel(v) => self.state.device_features_sel = v,
            W::DriverFeaturesSel(v) => self.state.driver_features_sel = v,
            W::DriverFeatures(v) => mmio::write_driver_features(
                &mut self.state.driver_features,
                self.state.driver_features_sel,
                v,
            ),
            W::QueueSel(v) => self.state.queue_sel = v,
            // Queue configuration registers are only writable while the queue is not ready
            // (virtio 1.2 section 4.2.2.2); there is one queue (index 0).
            W::QueueConfig(field, v) => {
                if sel0 && !self.state.queue.ready {
                    mmio::configure_queue(&mut self.state.queue, field, v);
                }
            }
            W::QueueReady(ready) => {
                if sel0
                    && let Err(e) =
                        mmio::set_queue_ready(&mut self.state.queue, ready, self.mem_bytes)
                {
                    self.fail(e);
                }
            }
            W::QueueNotify(0) => self.process_queue(),
            W::InterruptAck(v) => self.state.interrupt_status &= !v,
            W::Status(0) => self.reset(),
            W::Status(v) => {
                self.state.status = mmio::next_status(
                    self.state.status,
                    v,
                    self.state.driver_features,
                    self.device_features(),
                );
            }
            W::QueueNotify(_) | W::Ignored => {}
        }
    }

    /// Config space (`virtio_blk_config`): `capacity` in sectors at offset 0, the rest zero
    /// (no SIZE_MAX, SEG_MAX, GEOMETRY or BLK_SIZE feature is offered).
    fn config_byte(&self, at: u64) -> u8 {
        let capacity = (self.state.capacity / SECTOR).to_le_bytes();
        usize::try_from(at)
            .ok()
            .and_then(|i| capacity.get(i))
            .copied()
            .unwrap_or(0)
    }
}

impl BusDevice for BlkDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let this = &*self;
        mmio::bus_read(
            offset,
            data,
            |at| this.config_byte(at),
            |r| this.read_register(r),
        );
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let Some((offset, value)) = mmio::bus_write(offset, data) {
            self.write_register(offset, value);
        }
        DeviceAction::Continue
    }
}

#[cfg(test)]
#[path = "blk_tests.rs"]
mod tests;
