//! Fuzz body `checkpoint_ops`: a primary and a secondary [`crate::checkpoint`] machine wired
//! through in-memory queues and fake VMs, driven by operations decoded from the input: deliver
//! (in order or not), duplicate or drop messages, run VM commands, trigger, let time pass,
//! fail over either side, and inject arbitrary checkpoint messages and VM completions with
//! arbitrary epochs on either side.
//!
//! Asserted on every input: no panic; output commit (the primary releases epoch `e` only after
//! a `CheckpointReceived(e)` reached it); atomic checkpoint (the secondary orders
//! `ApplyCheckpoint(e)` only after it was handed batches `0..n`, the device state and a
//! `CheckpointSent(e)` announcing `n` batches); monotone time is respected by construction.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::checkpoint::{
    CheckpointConfig, CheckpointOutput, PrimaryCheckpointer, SecondaryCheckpointer, VmCommand,
    VmCommandKind, VmCompletion,
};
use crate::ids::{CheckpointReason, Epoch, PageRange};
use crate::time::{Duration, Instant};
use crate::wire::message::{AbortReason, Message, PAGE_SIZE};
use crate::wire::zero::ZeroPages;

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
}

struct Harness {
    p: PrimaryCheckpointer,
    s: SecondaryCheckpointer,
    now: Instant,
    p2s: VecDeque<(Message, u64)>,
    s2p: VecDeque<Message>,
    pvm: VecDeque<VmCommand>,
    svm: VecDeque<CheckpointOutput>,
    /// Epochs whose `CheckpointReceived` reached the primary.
    received_at_primary: BTreeSet<Epoch>,
    /// Per epoch, what the secondary was handed: batches, device state, announced batch count.
    batches: BTreeMap<Epoch, BTreeSet<u32>>,
    device: BTreeSet<Epoch>,
    announced: BTreeMap<Epoch, u32>,
}

const REASONS: [CheckpointReason; 7] = [
    CheckpointReason::Periodic,
    CheckpointReason::Miscompare,
    CheckpointReason::CompareTimeout,
    CheckpointReason::QueueFull,
    CheckpointReason::FlowTableFull,
    CheckpointReason::Forced,
    CheckpointReason::IntervalChanged,
];

impl Harness {
    fn drain(&mut self) {
        while let Some(o) = self.p.poll_output() {
            match o {
                CheckpointOutput::Send(m) => self.p2s.push_back((m, 0)),
                CheckpointOutput::Vm(c) => self.pvm.push_back(c),
                CheckpointOutput::ReleaseOutput { epoch } => assert!(
                    self.received_at_primary.contains(&epoch),
                    "output commit: released {epoch:?} before CheckpointReceived"
                ),
                CheckpointOutput::Event(_) => {}
                other => panic!("primary emitted a secondary output: {other:?}"),
            }
        }
        while let Some(o) = self.s.poll_output() {
            match o {
                CheckpointOutput::Send(m) => self.s2p.push_back(m),
                CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { epoch }) => {
                    let n = *self
                        .announced
                        .get(&epoch)
                        .expect("atomic checkpoint: apply without CheckpointSent");
                    let got = self.batches.get(&epoch);
                    assert!(
                        (0..n).all(|b| got.is_some_and(|g| g.contains(&b))),
                        "atomic checkpoint: applying {epoch:?} with batches missing"
                    );
                    assert!(
                        self.device.contains(&epoch),
                        "atomic checkpoint: applying {epoch:?} without device state"
                    );
                    self.svm
                        .push_back(CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { epoch }));
                }
                CheckpointOutput::ReleaseOutput { .. } => panic!("secondary released output"),
                CheckpointOutput::Event(_) => {}
                other => self.svm.push_back(other),
            }
        }
    }

    fn deliver_to_secondary(&mut self, m: &Message, bulk: u64) {
        match *m {
            Message::PageBatch { epoch, batch, .. } => {
                self.batches.entry(epoch).or_default().insert(batch);
            }
            Message::DeviceState { epoch } => {
                self.device.insert(epoch);
            }
            Message::CheckpointSent { epoch, batches, .. } => {
                // The last announcement counts (a machine must re-check every one).
                self.announced.insert(epoch, batches);
            }
            _ => {}
        }
        self.s.handle_message(self.now, m, bulk);
        self.drain();
    }

    fn deliver_to_primary(&mut self, m: &Message) {
        if let Message::CheckpointReceived { epoch } = *m {
            self.received_at_primary.insert(epoch);
        }
        self.p.handle_message(self.now, m);
        self.drain();
    }

    fn run_pvm(&mut self) {
        let Some(c) = self.pvm.pop_front() else {
            return;
        };
        let done = match c {
            VmCommand::Pause => VmCompletion::Paused,
            VmCommand::Resume => VmCompletion::Resumed,
            VmCommand::CollectDirty { epoch } => VmCompletion::DirtyCollected {
                epoch,
                ranges: vec![PageRange { first: 0, count: 2 }],
            },
            VmCommand::SendPages { epoch, ranges } => {
                let mut pages = 0u64;
                for (i, r) in ranges.iter().enumerate() {
                    let batch = u32::try_from(i).unwrap_or(u32::MAX);
                    let m = Message::PageBatch {
                        epoch,
                        batch,
                        ranges: vec![*r],
                        zero: ZeroPages::none(r.count),
                    };
                    self.p2s.push_back((m, r.count.saturating_mul(PAGE_SIZE)));
                    pages = pages.saturating_add(r.count);
                }
                VmCompletion::PagesSent {
                    epoch,
                    batches: u32::try_from(ranges.len()).unwrap_or(u32::MAX),
                    pages,
                    bytes: pages.saturating_mul(PAGE_SIZE),
                }
            }
            VmCommand::SaveDeviceState { epoch } => {
                self.p2s.push_back((Message::DeviceState { epoch }, 64));
                VmCompletion::DeviceStateSent { epoch, bytes: 64 }
            }
            other => panic!("primary VM got a secondary command: {other:?}"),
        };
        self.p.handle_vm_done(self.now, done);
        self.drain();
    }

    fn run_svm(&mut self) {
        let Some(c) = self.svm.pop_front() else {
            return;
        };
        match c {
            CheckpointOutput::Vm(c) => {
                let done = match c {
                    VmCommand::Pause => VmCompletion::Paused,
                    VmCommand::Resume => VmCompletion::Resumed,
                    VmCommand::ApplyCheckpoint { epoch } => VmCompletion::Applied { epoch },
                    VmCommand::DiscardPartial { epoch } => VmCompletion::Discarded { epoch },
                    other => panic!("secondary VM got a primary command: {other:?}"),
                };
                self.s.handle_vm_done(self.now, done);
            }
            CheckpointOutput::ResetDisk { epoch } => self.s.handle_disk_reset(self.now, epoch),
            _ => {}
        }
        self.drain();
    }
}

fn message(b: &mut Bytes<'_>) -> (Message, u64) {
    let kind = b.u8() % 9;
    let epoch = Epoch(u64::from(b.u8() % 8));
    match kind {
        0 => (
            Message::CheckpointRequest {
                epoch,
                reason: REASONS[usize::from(b.u8()) % REASONS.len()],
            },
            0,
        ),
        1 => {
            let count = u64::from(b.u8() % 4);
            // Some pages of the batch zero (left out of the bulk), chosen by the input.
            let zeros = b.u8();
            let zero = ZeroPages::from_flags((0..count).map(|i| zeros & (1 << i) != 0));
            let sent = count - zero.count();
            let m = Message::PageBatch {
                epoch,
                batch: u32::from(b.u8() % 4),
                ranges: vec![PageRange { first: 0, count }],
                zero,
            };
            (m, sent * PAGE_SIZE)
        }
        2 => (Message::DeviceState { epoch }, u64::from(b.u8())),
        3 => (
            Message::CheckpointSent {
                epoch,
                batches: u32::from(b.u8() % 4),
                pages: u64::from(b.u8() % 8),
                bytes: u64::from(b.u16()),
            },
            0,
        ),
        4 => (Message::CheckpointReady { epoch }, 0),
        5 => (Message::CheckpointReceived { epoch }, 0),
        6 => (Message::CheckpointLoaded { epoch }, 0),
        7 => (
            Message::CheckpointAbort {
                epoch,
                reason: AbortReason::Protocol,
            },
            0,
        ),
        _ => (Message::Ack { seq: 0 }, 0),
    }
}

fn completion(b: &mut Bytes<'_>) -> VmCompletion {
    let epoch = Epoch(u64::from(b.u8() % 8));
    match b.u8() % 9 {
        0 => VmCompletion::Paused,
        1 => VmCompletion::Resumed,
        2 => VmCompletion::DirtyCollected {
            epoch,
            ranges: vec![PageRange {
                first: 0,
                count: u64::from(b.u8() % 4),
            }],
        },
        3 => VmCompletion::PagesSent {
            epoch,
            batches: 1,
            pages: 1,
            bytes: PAGE_SIZE,
        },
        4 => VmCompletion::DeviceStateSent { epoch, bytes: 1 },
        5 => VmCompletion::Applied { epoch },
        6 => VmCompletion::Discarded { epoch },
        7 => VmCompletion::Failed {
            command: VmCommandKind::Pause,
        },
        _ => VmCompletion::Failed {
            command: VmCommandKind::ApplyCheckpoint,
        },
    }
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    drive(data);
}

/// Runs one input; returns (checkpoints the primary completed, checkpoints the secondary
/// applied), so tests can tell a seed reaches deep into the protocol.
fn drive(data: &[u8]) -> (u64, u64) {
    let config = CheckpointConfig {
        checkpoint_interval: Duration::from_millis(500),
        checkpoint_phase_timeout: Duration::from_millis(300),
        checkpoint_retry_delay: Duration::from_millis(10),
    };
    let now = Instant::ZERO;
    let (Ok(p), Ok(s)) = (
        PrimaryCheckpointer::new(config, Epoch(0), now),
        SecondaryCheckpointer::new(config, Epoch(0), now),
    ) else {
        unreachable!("the fixed configuration is valid");
    };
    let mut h = Harness {
        p,
        s,
        now,
        p2s: VecDeque::new(),
        s2p: VecDeque::new(),
        pvm: VecDeque::new(),
        svm: VecDeque::new(),
        received_at_primary: BTreeSet::new(),
        batches: BTreeMap::new(),
        device: BTreeSet::new(),
        announced: BTreeMap::new(),
    };
    let mut b = Bytes(data);
    let mut budget = 4096u32;
    while !b.0.is_empty() && budget > 0 {
        budget -= 1;
        match b.u8() % 16 {
            0 => {
                let i = usize::from(b.u8());
                if !h.p2s.is_empty() {
                    let i = if i < 200 { 0 } else { i % h.p2s.len() };
                    if let Some((m, bulk)) = h.p2s.remove(i) {
                        h.deliver_to_secondary(&m, bulk);
                    }
                }
            }
            1 => {
                let i = usize::from(b.u8());
                if !h.s2p.is_empty() {
                    let i = if i < 200 { 0 } else { i % h.s2p.len() };
                    if let Some(m) = h.s2p.remove(i) {
                        h.deliver_to_primary(&m);
                    }
                }
            }
            2 => h.run_pvm(),
            3 => h.run_svm(),
            4 => {
                let reason = REASONS[usize::from(b.u8()) % REASONS.len()];
                h.p.handle_trigger(h.now, reason);
                h.drain();
            }
            5 => {
                h.now += Duration::from_millis(u64::from(b.u16() % 1000));
                h.p.handle_timeout(h.now);
                h.s.handle_timeout(h.now);
                h.drain();
            }
            6 => {
                h.p.handle_failover(h.now);
                h.drain();
            }
            7 => {
                h.s.handle_failover(h.now);
                h.drain();
            }
            8 => {
                let (m, bulk) = message(&mut b);
                h.deliver_to_secondary(&m, bulk);
            }
            9 => {
                let (m, _) = message(&mut b);
                h.deliver_to_primary(&m);
            }
            10 => {
                let c = completion(&mut b);
                h.p.handle_vm_done(h.now, c);
                h.drain();
            }
            11 => {
                let c = completion(&mut b);
                h.s.handle_vm_done(h.now, c);
                h.drain();
            }
            12 => {
                if let Some(m) = h.p2s.front().cloned() {
                    h.p2s.push_back(m);
                }
            }
            13 => {
                h.p2s.pop_front();
            }
            14 => {
                let ms = u64::from(b.u16() % 2000);
                h.p.handle_set_interval(h.now, Duration::from_millis(ms));
                h.drain();
            }
            _ => {
                // Settle: run everything in order for a while.
                for _ in 0..64 {
                    if !h.pvm.is_empty() {
                        h.run_pvm();
                    } else if !h.svm.is_empty() {
                        h.run_svm();
                    } else if let Some((m, bulk)) = h.p2s.pop_front() {
                        h.deliver_to_secondary(&m, bulk);
                    } else if let Some(m) = h.s2p.pop_front() {
                        h.deliver_to_primary(&m);
                    } else {
                        break;
                    }
                }
            }
        }
    }
    (h.p.stats().checkpoints, h.s.stats().checkpoints)
}

#[cfg(test)]
mod tests {
    use super::drive;

    #[test]
    fn settling_inputs_complete_checkpoints_without_tripping_checks() {
        // trigger, settle twice: one whole checkpoint on both sides.
        assert_eq!(drive(&[4, 5, 15, 15]), (1, 1));
        // Then wait past the interval and settle: a periodic one follows.
        assert_eq!(drive(&[4, 5, 15, 15, 5, 0xf4, 0x01, 15, 15]), (2, 2));
        // Injected garbage on both sides does not trip the checks.
        drive(&[4, 5, 15, 8, 1, 2, 3, 9, 5, 1, 15, 15]);
    }

    #[test]
    fn failover_during_apply_still_applies() {
        // trigger, settle until the secondary applies, fail it over mid-apply, run the SVM: apply, disk reset, rewriter reset, resume.
        let (_, applied) = drive(&[
            4, 5, 0, 0, 3, 1, 0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 7, 3, 3, 3, 3,
        ]);
        assert_eq!(applied, 1);
    }
}
