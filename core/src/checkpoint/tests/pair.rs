//! The two-checkpointer harness: a primary and a secondary wired through in-memory message
//! queues and fake VMs that execute commands when told, with checkers for output commit and
//! atomic checkpoint that record violations as they happen.

use super::super::*;
use crate::ids::{Epoch, PageRange};
use crate::time::{Duration, Instant};
use crate::wire::message::{Message, PAGE_SIZE};
use crate::wire::zero::ZeroPages;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub(super) fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

pub(super) fn cfg() -> CheckpointConfig {
    CheckpointConfig {
        checkpoint_interval: Duration::from_millis(1000),
        checkpoint_phase_timeout: Duration::from_millis(300),
        checkpoint_retry_delay: Duration::from_millis(10),
    }
}

pub(super) const DEVICE_STATE_LEN: u64 = 100;

/// Two checkpointers, two fake VMs and the link between them.
pub(super) struct Pair {
    pub(super) p: PrimaryCheckpointer,
    pub(super) s: SecondaryCheckpointer,
    pub(super) now: Instant,
    pub(super) p2s: VecDeque<(Message, u64)>,
    pub(super) s2p: VecDeque<Message>,
    pub(super) pvm: VecDeque<VmCommand>,
    pub(super) svm: VecDeque<CheckpointOutput>,
    /// Dirty pages the fake PVM reports at the next collection.
    pub(super) dirty: Vec<PageRange>,
    pub(super) released: Vec<Epoch>,
    pub(super) p_events: Vec<CheckpointEvent>,
    pub(super) s_events: Vec<CheckpointEvent>,
    // Checker state.
    pub(super) received_sent: BTreeSet<Epoch>,
    pub(super) batches_sent: BTreeMap<Epoch, u32>,
    /// The ranges each epoch's `SendPages` ordered.
    pub(super) pages_ordered: BTreeMap<Epoch, Vec<PageRange>>,
    pub(super) batches_delivered: BTreeMap<Epoch, BTreeSet<u32>>,
    pub(super) device_delivered: BTreeSet<Epoch>,
    pub(super) applied: Vec<Epoch>,
    pub(super) violations: Vec<String>,
}

impl Pair {
    pub(super) fn new() -> Pair {
        Pair {
            p: PrimaryCheckpointer::new(cfg(), Epoch(0), ms(0)).unwrap(),
            s: SecondaryCheckpointer::new(cfg(), Epoch(0), ms(0)).unwrap(),
            now: ms(0),
            p2s: VecDeque::new(),
            s2p: VecDeque::new(),
            pvm: VecDeque::new(),
            svm: VecDeque::new(),
            dirty: vec![
                PageRange { first: 0, count: 3 },
                PageRange {
                    first: 10,
                    count: 1,
                },
            ],
            released: Vec::new(),
            p_events: Vec::new(),
            s_events: Vec::new(),
            received_sent: BTreeSet::new(),
            batches_sent: BTreeMap::new(),
            pages_ordered: BTreeMap::new(),
            batches_delivered: BTreeMap::new(),
            device_delivered: BTreeSet::new(),
            applied: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Drains both machines' outputs into queues, checking invariants as they appear.
    pub(super) fn drain(&mut self) {
        while let Some(o) = self.p.poll_output() {
            match o {
                CheckpointOutput::Send(m) => self.p2s.push_back((m, 0)),
                CheckpointOutput::Vm(c) => self.pvm.push_back(c),
                CheckpointOutput::ReleaseOutput { epoch } => {
                    // Output commit: only after the secondary confirmed receipt of `epoch`.
                    if !self.received_sent.contains(&epoch) {
                        self.violations
                            .push(format!("output commit: released {epoch:?} before received"));
                    }
                    self.released.push(epoch);
                }
                CheckpointOutput::Event(e) => self.p_events.push(e),
                other => self.violations.push(format!("primary emitted {other:?}")),
            }
        }
        while let Some(o) = self.s.poll_output() {
            match o {
                CheckpointOutput::Send(m) => {
                    if let Message::CheckpointReceived { epoch } = m {
                        self.received_sent.insert(epoch);
                    }
                    self.s2p.push_back(m);
                }
                CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { epoch }) => {
                    // Atomic checkpoint: every batch and the device state of `epoch` arrived.
                    let sent = self.batches_sent.get(&epoch).copied().unwrap_or(0);
                    let got = self
                        .batches_delivered
                        .get(&epoch)
                        .cloned()
                        .unwrap_or_default();
                    if (0..sent).any(|b| !got.contains(&b))
                        || !self.device_delivered.contains(&epoch)
                    {
                        self.violations
                            .push(format!("atomic checkpoint: applying partial {epoch:?}"));
                    }
                    self.applied.push(epoch);
                    self.svm
                        .push_back(CheckpointOutput::Vm(VmCommand::ApplyCheckpoint { epoch }));
                }
                CheckpointOutput::Event(e) => self.s_events.push(e),
                CheckpointOutput::ReleaseOutput { .. } => {
                    self.violations.push("secondary released output".into())
                }
                other => self.svm.push_back(other),
            }
        }
    }

    pub(super) fn deliver_p2s(&mut self, i: usize) {
        if let Some((m, bulk)) = self.p2s.remove(i) {
            match &m {
                Message::PageBatch { epoch, batch, .. } => {
                    self.batches_delivered
                        .entry(*epoch)
                        .or_default()
                        .insert(*batch);
                }
                Message::DeviceState { epoch } => {
                    self.device_delivered.insert(*epoch);
                }
                _ => {}
            }
            self.s.handle_message(self.now, &m, bulk);
            self.drain();
        }
    }

    pub(super) fn deliver_s2p(&mut self, i: usize) {
        if let Some(m) = self.s2p.remove(i) {
            self.p.handle_message(self.now, &m);
            self.drain();
        }
    }

    /// The fake PVM executes its oldest command.
    pub(super) fn run_pvm(&mut self) {
        let Some(c) = self.pvm.pop_front() else {
            return;
        };
        let done = match c {
            VmCommand::Pause => VmCompletion::Paused,
            VmCommand::Resume => VmCompletion::Resumed,
            VmCommand::CollectDirty { epoch } => VmCompletion::DirtyCollected {
                epoch,
                ranges: self.dirty.clone(),
            },
            VmCommand::SendPages { epoch, ranges } => {
                self.pages_ordered.insert(epoch, ranges.clone());
                let (mut pages, mut bytes) = (0, 0);
                for (batch, r) in ranges.iter().enumerate() {
                    let batch = batch as u32;
                    // Every second page of a range is a zero page: counted, not carried.
                    let zero = ZeroPages::from_flags((0..r.count).map(|i| i % 2 == 1));
                    let bulk = (r.count - zero.count()) * PAGE_SIZE;
                    self.p2s.push_back((
                        Message::PageBatch {
                            epoch,
                            batch,
                            ranges: vec![*r],
                            zero,
                        },
                        bulk,
                    ));
                    pages += r.count;
                    bytes += bulk;
                }
                self.batches_sent.insert(epoch, ranges.len() as u32);
                VmCompletion::PagesSent {
                    epoch,
                    batches: ranges.len() as u32,
                    pages,
                    bytes,
                }
            }
            VmCommand::SaveDeviceState { epoch } => {
                self.p2s
                    .push_back((Message::DeviceState { epoch }, DEVICE_STATE_LEN));
                VmCompletion::DeviceStateSent {
                    epoch,
                    bytes: DEVICE_STATE_LEN,
                }
            }
            other => {
                self.violations.push(format!("primary VM got {other:?}"));
                return;
            }
        };
        self.p.handle_vm_done(self.now, done);
        self.drain();
    }

    /// The fake SVM (and disk) executes its oldest command.
    pub(super) fn run_svm(&mut self) {
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
                    other => {
                        self.violations.push(format!("secondary VM got {other:?}"));
                        return;
                    }
                };
                self.s.handle_vm_done(self.now, done);
            }
            CheckpointOutput::ResetDisk { epoch } => self.s.handle_disk_reset(self.now, epoch),
            CheckpointOutput::ResetRewriter { .. } => {}
            other => self
                .violations
                .push(format!("secondary queue got {other:?}")),
        }
        self.drain();
    }

    /// Runs everything in order until quiet.
    pub(super) fn settle(&mut self) {
        for _ in 0..1000 {
            if !self.pvm.is_empty() {
                self.run_pvm();
            } else if !self.svm.is_empty() {
                self.run_svm();
            } else if !self.p2s.is_empty() {
                self.deliver_p2s(0);
            } else if !self.s2p.is_empty() {
                self.deliver_s2p(0);
            } else {
                return;
            }
        }
        panic!("did not settle");
    }

    pub(super) fn advance(&mut self, to: Instant) {
        self.now = to;
        self.p.handle_timeout(to);
        self.s.handle_timeout(to);
        self.drain();
    }
}
