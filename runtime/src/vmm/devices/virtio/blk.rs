//! The virtio block device ([`Blk`], on its [`MmioTransport`]: [`BlkDevice`]): one request
//! queue, its config space (the capacity), and the host side as a [`BlockBackend`] that executes reads, writes and
//! flushes (a file for a lone VM, the node loop and its `colo_core::node::Node` in the pair).
//!
//! Offered features: VIRTIO_F_VERSION_1 and VIRTIO_BLK_F_FLUSH (virtio 1.2 section 5.2.3). A
//! request is a chain of a 16-byte readable header (type, reserved, sector), the data (readable
//! for OUT, writable for IN and GET_ID) and a writable status byte, last (section 5.2.6).
//! Requests may complete later and out of order: the device keeps them in flight by
//! [`BlkRequestId`] until [`BlkDevice::complete`]. Registers, feature negotiation, status and
//! the device phases (`DevicePhase`) are the transport's (`transport`); a reset (status 0)
//! forgets the requests in flight (late completions are counted and ignored).
//!
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

use super::queue::{ChainError, QueueState, Segment, byte_runs, take_prefix, trim_end};
use super::transport::{F_VERSION_1, MmioTransport, QueueIo, TransportState, VirtioDevice};
use crate::vmm::memory::GuestMemory;
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
    /// The transport: features, status, the request queue (index 0), interrupt status.
    pub transport: TransportState<[QueueState; 1]>,
    /// The next request id.
    pub next_id: u64,
    /// Requests handed to the backend and not completed, by id.
    pub inflight: BTreeMap<BlkRequestId, Inflight>,
    /// Counters.
    pub stats: BlkStats,
}

/// The block device on its virtio-mmio transport.
pub type BlkDevice = MmioTransport<Blk>;

/// The block device behind the transport: the disk's shape, the backend and the requests in
/// flight.
pub struct Blk {
    backend: Box<dyn BlockBackend>,
    capacity: u64,
    read_only: bool,
    next_id: u64,
    inflight: BTreeMap<BlkRequestId, Inflight>,
    stats: BlkStats,
}

impl std::fmt::Debug for Blk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blk")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("next_id", &self.next_id)
            .field("inflight", &self.inflight)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The request queue's index (the only one).
const REQUESTQ: usize = 0;

/// The block device's view of its one queue.
type Io<'a, 'b> = &'a mut QueueIo<'b, [QueueState; 1]>;

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

impl MmioTransport<Blk> {
    /// A device over `mem` without a medium (capacity 0, [`NoMedia`]) interrupting through
    /// `irq` (an irqfd) until [`BlkDevice::set_backend`].
    pub fn new(mem: GuestMemory, irq: Option<EventFd>) -> BlkDevice {
        let blk = Blk {
            backend: Box::new(NoMedia),
            capacity: 0,
            read_only: false,
            next_id: 0,
            inflight: BTreeMap::new(),
            stats: BlkStats::default(),
        };
        MmioTransport::with_device(mem, irq, blk)
    }

    /// Attaches a disk of `capacity` bytes (rounded down to whole sectors) served by
    /// `backend`. The capacity is guest-visible: set it before the guest reads it.
    pub fn set_backend(&mut self, backend: Box<dyn BlockBackend>, capacity: u64) {
        let blk = self.device_mut();
        blk.backend = backend;
        blk.capacity = capacity - capacity % SECTOR;
    }

    /// Makes the disk read-only (VIRTIO_BLK_F_RO offered, writes refused with IOERR) or not.
    /// Guest-visible: set it before the driver reads the features.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.device_mut().read_only = read_only;
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.device().capacity
    }

    /// The counters.
    pub fn stats(&self) -> BlkStats {
        self.device().stats
    }

    /// Requests handed to the backend and not yet completed.
    pub fn inflight(&self) -> usize {
        self.device().inflight.len()
    }

    /// The backend finished request `id`. Reads bring exactly the bytes asked for; anything
    /// else is an I/O error for the guest. Unknown ids (the driver reset the device since) are
    /// counted and ignored.
    pub fn complete(&mut self, id: BlkRequestId, completion: BlkCompletion) {
        self.with_io(|blk, io| {
            if blk.finish_request(id, completion, io) {
                io.interrupt_if_wanted(REQUESTQ);
            }
        });
    }
}

impl VirtioDevice for Blk {
    type Queues = [QueueState; 1];
    type State = BlkState;
    const DEVICE_ID: u32 = DEVICE_ID_BLK;

    /// The fixed set, and [`F_RO`] on top for a read-only disk.
    fn device_features(&self) -> u64 {
        if self.read_only {
            DEVICE_FEATURES | F_RO
        } else {
            DEVICE_FEATURES
        }
    }

    /// Config space (`virtio_blk_config`): `capacity` in sectors at offset 0, the rest zero
    /// (no SIZE_MAX, SEG_MAX, GEOMETRY or BLK_SIZE feature is offered).
    fn config_read(&self, offset: u64) -> u8 {
        let capacity = (self.capacity / SECTOR).to_le_bytes();
        usize::try_from(offset)
            .ok()
            .and_then(|i| capacity.get(i))
            .copied()
            .unwrap_or(0)
    }

    fn process(&mut self, queue: usize, io: Io<'_, '_>) {
        if queue == REQUESTQ {
            self.process_queue(io);
        }
    }

    /// Requests in flight are forgotten: their completions will be stale. (QEMU drains them
    /// before a reset; here the backend may still finish a write the guest no longer waits
    /// for, which a driver that reset its device must tolerate anyway.) The disk, the request
    /// numbering and the counters stay.
    fn reset(&mut self) {
        self.inflight.clear();
    }

    fn record_device_errors(&mut self, count: u64) {
        self.stats.device_errors += count;
    }

    fn save(&self, transport: &TransportState<Self::Queues>) -> BlkState {
        BlkState {
            capacity: self.capacity,
            read_only: self.read_only,
            transport: transport.clone(),
            next_id: self.next_id,
            inflight: self.inflight.clone(),
            stats: self.stats,
        }
    }

    fn transport_state(state: &BlkState) -> &TransportState<Self::Queues> {
        &state.transport
    }

    /// Requests that were in flight at the source are submitted again to this device's
    /// backend (their completions at the source never reach this copy of the guest). Their
    /// ids are kept, so a completion names the same request.
    fn restore(&mut self, state: &BlkState, io: Io<'_, '_>) {
        self.capacity = state.capacity;
        self.read_only = state.read_only;
        self.next_id = state.next_id;
        self.inflight = state.inflight.clone();
        self.stats = state.stats;
        let again: Vec<(BlkRequestId, Inflight)> = self
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
                BlkKind::Write => match gather(io.mem(), &req.data) {
                    Ok(data) => BlkOp::Write {
                        offset: req.offset,
                        data,
                    },
                    Err(_) => {
                        // Cannot happen for a state saved by this device over the same RAM
                        // size; a hand-made state gets an IOERR instead of a panic.
                        self.finish_request(id, Err(BlkIoError("restored buffer".into())), io);
                        continue;
                    }
                },
            };
            if let Some(done) = self.backend.submit(BlkRequest { id, op }) {
                self.finish_request(id, done, io);
            }
        }
        io.interrupt_if_wanted(REQUESTQ);
    }
}

impl Blk {
    /// Writes a completion into guest RAM and returns the chain; whether one was returned.
    fn finish_request(
        &mut self,
        id: BlkRequestId,
        completion: BlkCompletion,
        io: Io<'_, '_>,
    ) -> bool {
        let Some(req) = self.inflight.remove(&id) else {
            self.stats.stale_completions += 1;
            return false;
        };
        let mut written = 0u32;
        let status = match (req.kind, completion) {
            (BlkKind::Read, Ok(bytes)) if bytes.len() as u64 == req.data_len() => {
                match scatter(io.mem(), &req.data, &bytes) {
                    Ok(()) => {
                        self.stats.reads += 1;
                        self.stats.read_bytes += bytes.len() as u64;
                        written = bytes.len() as u32;
                        S_OK
                    }
                    Err(_) => {
                        self.stats.io_errors += 1;
                        S_IOERR
                    }
                }
            }
            (BlkKind::Write, Ok(_)) => {
                self.stats.writes += 1;
                self.stats.write_bytes += req.data_len();
                S_OK
            }
            (BlkKind::Flush, Ok(_)) => {
                self.stats.flushes += 1;
                S_OK
            }
            _ => {
                self.stats.io_errors += 1;
                S_IOERR
            }
        };
        self.answer(req.head, req.status_addr, status, written, io)
    }

    /// Writes the status byte and returns the chain with the bytes written (data + status).
    fn answer(
        &mut self,
        head: u16,
        status_addr: u64,
        status: u8,
        written: u32,
        io: Io<'_, '_>,
    ) -> bool {
        if !io.live(REQUESTQ) {
            return false;
        }
        // Through vm-memory: the write marks the VMM's dirty bitmap for the checkpoint.
        if io
            .mem()
            .write_obj(status, GuestAddress(status_addr))
            .is_err()
        {
            self.stats.bad_chains += 1;
            return io.push_used(REQUESTQ, head, 0);
        }
        io.push_used(REQUESTQ, head, written + 1)
    }

    /// Turns one chain into a request (or an immediate answer); `None` if it has no usable
    /// status byte.
    fn parse(&self, mem: &GuestMemory, segments: &[Segment]) -> Option<Parsed> {
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
        if gather(mem, &data_out.0)
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
            T_OUT if self.read_only => return Some(ioerr),
            T_OUT => (BlkKind::Write, data_out.1),
            T_FLUSH => (BlkKind::Flush, Vec::new()),
            T_GET_ID => {
                return Some(get_id(mem, &writable, status_addr));
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
            .is_some_and(|end| end <= self.capacity);
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
            BlkKind::Write => match gather(mem, &req.data) {
                Ok(data) => BlkOp::Write { offset, data },
                Err(_) => return Some(ioerr),
            },
        };
        Some(Parsed::Submit(req, op))
    }

    /// Takes every request the driver queued and hands it to the backend.
    fn process_queue(&mut self, io: Io<'_, '_>) {
        let mut returned = false;
        while io.live(REQUESTQ) {
            let Some(popped) = io.pop(REQUESTQ) else {
                break;
            };
            let parsed = popped.chain.ok().and_then(|s| self.parse(io.mem(), &s));
            match parsed {
                None => {
                    self.stats.bad_chains += 1;
                    returned |= io.push_used(REQUESTQ, popped.head, 0);
                }
                Some(Parsed::Answer {
                    status_addr,
                    status,
                    written,
                }) => {
                    if status != S_OK {
                        self.stats.bad_requests += 1;
                    }
                    returned |= self.answer(popped.head, status_addr, status, written, io);
                }
                Some(Parsed::Submit(mut req, op)) => {
                    req.head = popped.head;
                    let id = BlkRequestId(self.next_id);
                    self.next_id += 1;
                    self.inflight.insert(id, req);
                    if let Some(done) = self.backend.submit(BlkRequest { id, op }) {
                        returned |= self.finish_request(id, done, io);
                    }
                }
            }
        }
        if returned {
            io.interrupt_if_wanted(REQUESTQ);
        }
    }
}

/// Copies the guest buffers `data` out of guest RAM, in order.
fn gather(mem: &GuestMemory, data: &[(u64, u32)]) -> Result<Vec<u8>, ChainError> {
    let total: u64 = data.iter().map(|&(_, len)| u64::from(len)).sum();
    let mut bytes = vec![0u8; total as usize];
    let mut at = 0;
    for &(addr, len) in data {
        let end = at + len as usize;
        mem.read_slice(&mut bytes[at..end], GuestAddress(addr))
            .map_err(|_| ChainError::OutOfRange { addr, len })?;
        at = end;
    }
    Ok(bytes)
}

/// Copies `bytes` into the guest buffers `data`, in order (through vm-memory: dirty-logged).
fn scatter(mem: &GuestMemory, data: &[(u64, u32)], bytes: &[u8]) -> Result<(), ChainError> {
    let mut at = 0;
    for &(addr, len) in data {
        let end = at + len as usize;
        mem.write_slice(&bytes[at..end], GuestAddress(addr))
            .map_err(|_| ChainError::OutOfRange { addr, len })?;
        at = end;
    }
    Ok(())
}

/// GET_ID: the serial, NUL-padded, into the writable data (at most [`ID_BYTES`]).
fn get_id(mem: &GuestMemory, writable: &[(u64, u32)], status_addr: u64) -> Parsed {
    let mut id = [0u8; ID_BYTES];
    id[..DEVICE_SERIAL.len()].copy_from_slice(DEVICE_SERIAL);
    let room: u64 = writable.iter().map(|&(_, l)| u64::from(l)).sum();
    let n = room.min(ID_BYTES as u64) as usize;
    let mut dest = writable.to_vec();
    trim_end(&mut dest, room - n as u64);
    if scatter(mem, &dest, &id[..n]).is_err() {
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

#[cfg(test)]
#[path = "blk_tests.rs"]
mod tests;
