//! Fuzz body `node_inputs`: a primary and a secondary [`Node`] wired through in-memory peer
//! queues, with fake VM, disk, arbiter and sync runtimes, driven by timed operations decoded
//! from the input: let time pass, deliver, duplicate or drop peer messages, complete (or fail)
//! VM and disk commands, answer lease requests through a real [`Arbiter`] (or refuse them),
//! hand in client, guest and disk traffic, commands, link changes, and arbitrary peer messages
//! with arbitrary bulk on either node. Time only moves forward (the contract's one rule).
//!
//! Asserted on every input: no panic; single writer (a frame reaches a client only from a
//! paired primary or from a solo node holding its lease at that instant, and no two nodes
//! release in the same term); a node taking over or syncing has a deadline.

use std::collections::{BTreeMap, VecDeque};

use crate::checkpoint::{VmCommand, VmCompletion};
use crate::compare::testkit::{Headers, udp};
use crate::disk::{DiskCommand, DiskIoError, GuestIoId};
use crate::failover::{Arbiter, LeaseReply, LeaseRequest};
use crate::ids::{CheckpointReason, ClusterId, Epoch, NicId, NodeId, PageRange, Role, Term};
use crate::node::{
    Command, ConsoleCommand, GuestDiskRequest, Input, LinkState, Node, NodeConfig, NodeMode,
    OutBulk, Output, PeerBulk, SyncCommand,
};
use crate::time::{Duration, Instant};
use crate::wire::{AbortReason, DiskResult, GoodbyeReason, Message, PAGE_SIZE, WriteId, ZeroPages};

/// Reads the input a byte at a time; the end of input reads as zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u16()) | (u64::from(self.u16()) << 16)
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

struct Host {
    node: Node,
    inbox: VecDeque<(Message, PeerBulk)>,
    vm: VecDeque<VmCommand>,
    disk: VecDeque<DiskCommand>,
    leases: VecDeque<LeaseRequest>,
    syncs: VecDeque<Term>,
}

struct World {
    hosts: [Host; 2],
    now: Instant,
    arbiter: Arbiter,
    /// Who released in which term.
    writers: BTreeMap<Term, usize>,
    next_io: u64,
}

fn config(id: u64) -> NodeConfig {
    let mut c = NodeConfig::new(NodeId(id), ClusterId(1));
    c.guest_memory_bytes = 4 * PAGE_SIZE;
    c.disk.disk_size = 64 * 1024;
    c.disk.block_size = 4096;
    c.checkpoint.checkpoint_interval = Duration::from_millis(50);
    c.checkpoint.checkpoint_phase_timeout = Duration::from_millis(200);
    c.compare.compare_timeout = Duration::from_millis(30);
    c.solo_hold_frames = 4;
    c
}

const REASONS: [CheckpointReason; 3] = [
    CheckpointReason::Periodic,
    CheckpointReason::Miscompare,
    CheckpointReason::Forced,
];

impl World {
    fn handle(&mut self, h: usize, input: Input) {
        let now = self.now;
        self.hosts[h].node.handle(now, input);
        self.drain(h);
        // A node that waits on time (for a lease, or on a copy's source) has a deadline.
        let mode = self.hosts[h].node.status(now).mode;
        if matches!(mode, NodeMode::TakingOver | NodeMode::Syncing) {
            assert!(
                self.hosts[h].node.poll_timeout().is_some(),
                "timeout armed: {mode:?} without a deadline"
            );
        }
    }

    fn drain(&mut self, h: usize) {
        let other = 1 - h;
        while let Some(o) = self.hosts[h].node.poll_output() {
            match o {
                Output::ToClient(_) => {
                    let st = self.hosts[h].node.status(self.now);
                    let allowed = match st.mode {
                        NodeMode::Paired => st.role == Role::Primary,
                        NodeMode::Solo | NodeMode::Reprotecting => st.lease_held,
                        _ => false,
                    };
                    assert!(allowed, "single writer: release in {:?}", st);
                    let first = *self.writers.entry(st.term).or_insert(h);
                    assert_eq!(first, h, "single writer: two writers in {:?}", st.term);
                }
                Output::WindowUpdate(_) => {
                    let st = self.hosts[h].node.status(self.now);
                    assert!(
                        st.mode == NodeMode::Paired && st.role == Role::Primary,
                        "a window update from a node that is not a paired primary: {st:?}"
                    );
                }
                Output::ToPeer { message, bulk } => {
                    let bulk = match bulk {
                        OutBulk::None => PeerBulk::None,
                        OutBulk::Frame(f) => PeerBulk::Frame(f),
                        OutBulk::GuestWrite(_) => match &message {
                            Message::DiskWrite { len, .. } => PeerBulk::Stored {
                                len: u64::from(*len),
                            },
                            _ => PeerBulk::None,
                        },
                    };
                    if self.hosts[other].inbox.len() < 256 {
                        self.hosts[other].inbox.push_back((message, bulk));
                    }
                }
                Output::Vm(c) => self.hosts[h].vm.push_back(c),
                Output::Disk(c) => self.hosts[h].disk.push_back(c),
                Output::Arbiter(r) => self.hosts[h].leases.push_back(r),
                Output::Sync(SyncCommand::SendAll { term }) => self.hosts[h].syncs.push_back(term),
                Output::Event(e) => {
                    if std::env::var_os("NODE_FUZZ_TRACE").is_some() {
                        eprintln!("{:?} host {h}: {e:?}", self.now);
                    }
                }
                Output::Console(command) => {
                    let st = self.hosts[h].node.status(self.now);
                    match command {
                        // Speculative output becomes real only with the term's lease.
                        ConsoleCommand::Release => assert!(
                            st.lease_held,
                            "a console released without the lease: {st:?}"
                        ),
                        // A secondary's apply (finished even inside its takeover, when it
                        // already reports the primary role); never a paired primary's.
                        ConsoleCommand::Discard => assert!(
                            !(st.role == Role::Primary && st.mode == NodeMode::Paired),
                            "a console discarded by a paired primary: {st:?}"
                        ),
                    }
                }
                Output::ToGuest { .. }
                | Output::GuestDiskDone { .. }
                | Output::ClaimClientLink { .. }
                // The fuzzer drives the link itself (random `PeerLink` inputs).
                | Output::Link(_)
                | Output::Halt(_) => {}
            }
        }
    }

    fn vm_done(&mut self, h: usize, fail: bool, dirty: u8) {
        let Some(cmd) = self.hosts[h].vm.pop_front() else {
            return;
        };
        let other = 1 - h;
        let done = if fail {
            let command = cmd.kind();
            VmCompletion::Failed { command }
        } else {
            match cmd {
                VmCommand::Pause => VmCompletion::Paused,
                VmCommand::Resume => VmCompletion::Resumed,
                VmCommand::CollectDirty { epoch } => VmCompletion::DirtyCollected {
                    epoch,
                    ranges: vec![PageRange {
                        first: u64::from(dirty % 4),
                        count: u64::from(dirty / 4 % 3),
                    }],
                },
                VmCommand::SendPages { epoch, ranges } => {
                    let pages: u64 = ranges.iter().map(|r| r.count).sum();
                    // The batch's first page is a zero page: it is counted, not sent.
                    let zero = ZeroPages::from_flags((0..pages).map(|i| i == 0));
                    let bytes = (pages - zero.count()) * PAGE_SIZE;
                    self.hosts[other].inbox.push_back((
                        Message::PageBatch {
                            epoch,
                            batch: 0,
                            ranges,
                            zero,
                        },
                        PeerBulk::Stored { len: bytes },
                    ));
                    VmCompletion::PagesSent {
                        epoch,
                        batches: 1,
                        pages,
                        bytes,
                    }
                }
                VmCommand::SaveDeviceState { epoch } => {
                    self.hosts[other]
                        .inbox
                        .push_back((Message::DeviceState { epoch }, PeerBulk::Stored { len: 64 }));
                    VmCompletion::DeviceStateSent { epoch, bytes: 64 }
                }
                VmCommand::ApplyCheckpoint { epoch } => VmCompletion::Applied { epoch },
                VmCommand::DiscardPartial { epoch } => VmCompletion::Discarded { epoch },
            }
        };
        self.handle(h, Input::VmDone(done));
    }

    /// The runtime streams an ordered re-protection copy and reports it sent.
    fn run_sync(&mut self, h: usize) {
        let Some(term) = self.hosts[h].syncs.pop_front() else {
            return;
        };
        let other = 1 - h;
        let mem = 4 * PAGE_SIZE;
        let ranges = vec![PageRange { first: 0, count: 4 }];
        // Pages 1 and 3 are zero: the bulk carries pages 0 and 2 only.
        self.hosts[other].inbox.push_back((
            Message::SyncPages {
                term,
                batch: 0,
                ranges,
                zero: ZeroPages::from_flags([false, true, false, true]),
            },
            PeerBulk::Stored { len: 2 * PAGE_SIZE },
        ));
        self.hosts[other].inbox.push_back((
            Message::SyncDisk {
                term,
                offset: 0,
                len: 64 * 1024,
            },
            PeerBulk::Stored { len: 64 * 1024 },
        ));
        self.handle(
            h,
            Input::SyncSent {
                memory_bytes: mem,
                disk_bytes: 64 * 1024,
            },
        );
    }

    fn arbitrary_message(b: &mut Bytes) -> (Message, PeerBulk) {
        let epoch = Epoch(u64::from(b.u8() % 8));
        let term = Term(u64::from(b.u8() % 4));
        let m = match b.u8() % 20 {
            0 => Message::Hello {
                protocol_version: u16::from(b.u8() % 2),
                cluster_id: ClusterId(u64::from(b.u8() % 2)),
                node_id: NodeId(u64::from(b.u8() % 4)),
                role: if b.u8().is_multiple_of(2) {
                    Role::Primary
                } else {
                    Role::Secondary
                },
                term,
                last_applied_epoch: epoch,
                vm_fingerprint: u64::from(b.u8() % 3),
            },
            1 => Message::HelloAccept {
                protocol_version: 1,
                cluster_id: ClusterId(1),
                node_id: NodeId(u64::from(b.u8() % 4)),
                role: Role::Primary,
                term,
                last_applied_epoch: epoch,
            },
            2 => Message::Heartbeat {
                term,
                seq: b.u64(),
                epoch,
            },
            3 => Message::MirroredFrame {
                epoch,
                nic: NicId(b.u8() % 2),
            },
            4 => Message::SecondaryOutput { epoch },
            5 => Message::CheckpointRequest {
                epoch,
                reason: REASONS[usize::from(b.u8()) % REASONS.len()],
            },
            6 => Message::CheckpointReady { epoch },
            7 => {
                let count = u64::from(b.u8() % 3);
                Message::PageBatch {
                    epoch,
                    batch: u32::from(b.u8() % 3),
                    ranges: vec![PageRange { first: 0, count }],
                    zero: ZeroPages::none(count),
                }
            }
            8 => Message::DeviceState { epoch },
            9 => Message::CheckpointSent {
                epoch,
                batches: u32::from(b.u8() % 3),
                pages: u64::from(b.u8() % 4),
                bytes: b.u64(),
            },
            10 => Message::CheckpointReceived { epoch },
            11 => Message::CheckpointLoaded { epoch },
            12 => Message::CheckpointAbort {
                epoch,
                reason: AbortReason::Timeout,
            },
            13 => Message::DiskWrite {
                epoch,
                write_id: WriteId(b.u64()),
                offset: u64::from(b.u16()),
                len: u32::from(b.u16() % 8192),
            },
            14 => Message::DiskAck {
                write_id: WriteId(b.u64()),
                result: DiskResult::Written,
            },
            15 => Message::Goodbye {
                term,
                reason: GoodbyeReason::Shutdown,
            },
            16 => Message::TermAnnounce {
                term,
                node_id: NodeId(u64::from(b.u8() % 4)),
            },
            17 => Message::SyncStart {
                term,
                memory_bytes: u64::from(b.u16()),
                disk_bytes: u64::from(b.u16()),
            },
            18 => Message::SyncDone { term, epoch },
            _ => Message::LeaseGrant {
                term,
                node_id: NodeId(1),
                valid_for_ms: 10,
            },
        };
        let bulk = match b.u8() % 4 {
            0 => PeerBulk::None,
            1 => {
                let n = usize::from(b.u8());
                PeerBulk::Frame(b.take(n))
            }
            2 => PeerBulk::Stored {
                len: m.bulk_rule_len(),
            },
            _ => PeerBulk::Stored {
                len: u64::from(b.u16()),
            },
        };
        (m, bulk)
    }
}

/// Bulk length the message's rule wants, when it names one (a valid frame).
trait BulkLen {
    fn bulk_rule_len(&self) -> u64;
}

impl BulkLen for Message {
    fn bulk_rule_len(&self) -> u64 {
        match self.bulk_rule() {
            crate::wire::BulkRule::Exact(Some(n)) => n,
            _ => 0,
        }
    }
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    run_world(data);
}

fn run_world(data: &[u8]) -> World {
    let mut b = Bytes(data);
    let now = Instant::ZERO;
    let mk = |id, role| Host {
        node: Node::new(config(id), role, now).expect("valid config"),
        inbox: VecDeque::new(),
        vm: VecDeque::new(),
        disk: VecDeque::new(),
        leases: VecDeque::new(),
        syncs: VecDeque::new(),
    };
    let mut w = World {
        hosts: [mk(1, Role::Primary), mk(2, Role::Secondary)],
        now,
        arbiter: Arbiter::new(Duration::from_secs(1), now),
        writers: BTreeMap::new(),
        next_io: 1,
    };
    // Start both unless the input begins with a zero (then it starts them itself, or not).
    if b.u8() != 0 {
        w.handle(0, Input::Command(Command::Start));
        w.handle(1, Input::Command(Command::Start));
    }
    for _ in 0..4096 {
        if b.0.is_empty() {
            break;
        }
        let op = b.u8();
        let h = usize::from(op & 1);
        match op >> 1 {
            0..=9 => {
                // Let time pass, firing due timeouts (the most common step).
                w.now += Duration::from_micros(u64::from(b.u16()) * 16);
                for h in 0..2 {
                    if w.hosts[h].node.poll_timeout().is_some_and(|t| t <= w.now) {
                        w.handle(h, Input::Timeout);
                    }
                }
            }
            10..=29 => {
                if let Some((m, bulk)) = w.hosts[h].inbox.pop_front() {
                    let dup = b.u8() % 16 == 0;
                    if dup {
                        w.handle(
                            h,
                            Input::Peer {
                                message: m.clone(),
                                bulk: bulk.clone(),
                            },
                        );
                    }
                    w.handle(h, Input::Peer { message: m, bulk });
                }
            }
            30 => {
                w.hosts[h].inbox.pop_front();
            }
            31..=45 => {
                let x = b.u8();
                w.vm_done(h, x % 32 == 0, x / 32);
            }
            46..=52 => {
                if let Some(c) = w.hosts[h].disk.pop_front() {
                    let result = if b.u8() % 32 == 0 {
                        Err(DiskIoError::Io)
                    } else {
                        Ok(())
                    };
                    w.handle(h, Input::DiskDone { op: c.op(), result });
                }
            }
            53..=62 => {
                let k = b.u8();
                let frame = udp(&Headers::default(), &[k, k ^ 0x5a]);
                w.handle(
                    h,
                    Input::ClientFrame {
                        nic: NicId(0),
                        frame,
                    },
                );
            }
            63..=72 => {
                let k = b.u8();
                let odd = b.u8();
                let diverge = h == 1 && odd % 8 == 0;
                let frame = udp(&Headers::default(), &[k, u8::from(diverge)]);
                w.handle(h, Input::GuestFrame(frame));
            }
            73..=76 => {
                let n = usize::from(b.u8());
                let raw = b.take(n);
                if op & 2 == 0 {
                    w.handle(h, Input::GuestFrame(raw));
                } else {
                    w.handle(
                        h,
                        Input::ClientFrame {
                            nic: NicId(1),
                            frame: raw,
                        },
                    );
                }
            }
            77..=84 => {
                let (m, bulk) = World::arbitrary_message(&mut b);
                w.handle(h, Input::Peer { message: m, bulk });
            }
            85..=90 => {
                let c = match b.u8() % 6 {
                    0 => Command::Start,
                    1 => Command::ForceCheckpoint,
                    2 => Command::SetCheckpointInterval(Duration::from_millis(u64::from(b.u8()))),
                    3 => Command::Failover,
                    4 => Command::Reprotect,
                    _ => Command::Shutdown,
                };
                w.handle(h, Input::Command(c));
            }
            91..=100 => {
                if let Some(r) = w.hosts[h].leases.pop_front() {
                    let reply = match b.u8() % 8 {
                        0 => LeaseReply::Denied {
                            holder: NodeId(u64::from(b.u8() % 3)),
                            current_term: Term(u64::from(b.u8() % 4)),
                        },
                        1 => continue,
                        _ => w
                            .arbiter
                            .handle_request(w.now, r.term, r.node_id, r.duration),
                    };
                    w.handle(h, Input::Arbiter { id: r.id, reply });
                }
            }
            101..=103 => {
                let input = match b.u8() % 5 {
                    0 => Input::PeerLink(LinkState::Up),
                    1 => Input::PeerLink(LinkState::Down),
                    2 => Input::PeerLink(LinkState::PeerClosed),
                    3 => Input::PeerDialRefused,
                    _ => Input::PeerActivity,
                };
                w.handle(h, input);
            }
            104..=110 => {
                let io = GuestIoId(w.next_io);
                w.next_io += 1;
                let offset = u64::from(b.u16());
                let req = if b.u8() % 2 == 0 {
                    GuestDiskRequest::Write {
                        io,
                        offset,
                        len: u32::from(b.u16() % 8192),
                    }
                } else {
                    GuestDiskRequest::Read {
                        io,
                        offset,
                        len: u64::from(b.u16()),
                    }
                };
                w.handle(h, Input::GuestDisk(req));
            }
            111..=116 => {
                if let Some(term) = w.hosts[h].syncs.pop_front() {
                    let other = 1 - h;
                    let mem = 4 * PAGE_SIZE;
                    // Page 2 is zero: three pages of bulk for four pages of memory.
                    w.hosts[other].inbox.push_back((
                        Message::SyncPages {
                            term,
                            batch: 0,
                            ranges: vec![PageRange { first: 0, count: 4 }],
                            zero: ZeroPages::from_flags([false, false, true, false]),
                        },
                        PeerBulk::Stored { len: 3 * PAGE_SIZE },
                    ));
                    w.hosts[other].inbox.push_back((
                        Message::SyncDisk {
                            term,
                            offset: 0,
                            len: 64 * 1024,
                        },
                        PeerBulk::Stored { len: 64 * 1024 },
                    ));
                    w.handle(
                        h,
                        Input::SyncSent {
                            memory_bytes: mem,
                            disk_bytes: 64 * 1024,
                        },
                    );
                }
            }
            _ => {
                // Pump both inboxes in order for a while (lets a healthy pair make progress).
                for _ in 0..8 {
                    for h in 0..2 {
                        if let Some((m, bulk)) = w.hosts[h].inbox.pop_front() {
                            w.handle(h, Input::Peer { message: m, bulk });
                        }
                        if !w.hosts[h].vm.is_empty() {
                            w.vm_done(h, false, 5);
                        }
                        w.run_sync(h);
                        if let Some(c) = w.hosts[h].disk.pop_front() {
                            w.handle(
                                h,
                                Input::DiskDone {
                                    op: c.op(),
                                    result: Ok(()),
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../fuzz/seeds/node_inputs/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).expect("seed present")
    }

    #[test]
    fn healthy_seed_reaches_checkpoints() {
        let w = run_world(&seed("healthy_pair"));
        let done = w.hosts[0]
            .node
            .primary_checkpointer()
            .map_or(0, |k| k.stats().checkpoints);
        assert!(done > 0, "the seed must drive a pair through checkpoints");
    }

    #[test]
    fn failover_seed_leaves_one_solo_writer() {
        let w = run_world(&seed("secondary_failover"));
        let modes = [0, 1].map(|h| w.hosts[h].node.status(w.now).mode);
        assert_eq!(
            modes.iter().filter(|m| **m == NodeMode::Solo).count(),
            1,
            "{modes:?}"
        );
    }
}
