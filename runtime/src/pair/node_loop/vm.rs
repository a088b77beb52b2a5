//! The VM side of a replicated node: executes the node's [`VmCommand`]s and the initial copy
//! on a [`Machine`], and keeps the secondary's RAM cache (QEMU's `colo_cache`).
//!
//! Primary: `CollectDirty` harvests the dirty logs (read and clear) and reports that harvest;
//! `SendPages` streams exactly the ranges the core ordered from guest memory into the peer
//! socket (never through the core); `SaveDeviceState` sends the Persist state. Which pages a
//! checkpoint must carry (the harvest plus the pages of aborted attempts) is the core's
//! decision (`colo_core::checkpoint::PrimaryCheckpointer`, "Carried-over pages"), so the
//! simulator executes the same rule.
//!
//! Secondary: received pages land in the [`RamCache`], never in SVM memory; the device state
//! waits beside it. `ApplyCheckpoint` copies every page dirtied by either side since the last
//! apply (received into the cache, or written by the SVM itself) from the cache into SVM memory,
//! then loads the device state, all while the SVM is paused: after it, SVM memory equals the
//! cache equals the PVM's memory at the checkpoint's pause (the atomic-checkpoint invariant,
//! architecture.md "Checkpoint in the real runtime"). `DiscardPartial` drops the partial device
//! state but keeps the received-page marks: those cache pages are newer PVM content that the
//! next apply must still copy.

use crate::pair::peer::{LinkClosed, PagesSent, PeerWriter};
use crate::pair::progress::SyncProgress;
use crate::vmm::layout::PAGE_SIZE;
use crate::vmm::machine::Machine;
use crate::vmm::memory::DirtyPages;
use crate::vmm::persist::DeviceState;
use colo_core::checkpoint::{VmCommand, VmCommandKind, VmCompletion};
use colo_core::ids::{Epoch, PageRange, Term};
use colo_core::wire::Message;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::error;
use vm_memory::{Bytes, GuestAddress};

/// The secondary's copy of guest memory as of the newest pages received, plus which pages
/// changed since the last apply.
#[derive(Debug)]
pub struct RamCache {
    bytes: Vec<u8>,
    /// One bit per page received since the last apply (KVM dirty-log bitmap layout).
    received: Vec<u64>,
    pages: u64,
}

impl RamCache {
    /// A zeroed cache of `mem_bytes` (a zeroed allocation is mapped lazily by the OS: pages
    /// cost nothing until written, so a primary's unused cache is free).
    pub fn new(mem_bytes: u64) -> RamCache {
        let pages = mem_bytes / PAGE_SIZE;
        RamCache {
            bytes: vec![0u8; mem_bytes as usize],
            received: vec![0u64; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// Stores `data` (pages of `ranges`, concatenated) and marks them. Ranges outside guest
    /// memory or a length mismatch are the peer's fault: an error, nothing stored.
    pub fn store(&mut self, ranges: &[PageRange], data: &[u8]) -> Result<(), String> {
        let mut expected = 0u64;
        for r in ranges {
            if r.first
                .checked_add(r.count)
                .is_none_or(|end| end > self.pages)
            {
                return Err(format!(
                    "page range {}+{} outside the {}-page guest memory",
                    r.first, r.count, self.pages
                ));
            }
            expected += r.count * PAGE_SIZE;
        }
        if expected != data.len() as u64 {
            return Err(format!(
                "{} bulk bytes for ranges covering {expected}",
                data.len()
            ));
        }
        let mut at = 0usize;
        for r in ranges {
            let len = (r.count * PAGE_SIZE) as usize;
            let start = (r.first * PAGE_SIZE) as usize;
            self.bytes[start..start + len].copy_from_slice(&data[at..at + len]);
            at += len;
            for page in r.first..r.end() {
                self.received[(page / 64) as usize] |= 1 << (page % 64);
            }
        }
        Ok(())
    }

    /// Pages received since the last apply.
    pub fn received(&self) -> DirtyPages {
        DirtyPages::from_bitmap(&self.received, 0, self.pages)
    }

    /// Copies `ranges` from the cache into `machine`'s memory.
    fn copy_into(&self, machine: &Machine, ranges: &[PageRange]) -> Result<(), String> {
        for r in ranges {
            let start = r.first * PAGE_SIZE;
            let len = (r.count * PAGE_SIZE) as usize;
            let from = self
                .bytes
                .get(start as usize..start as usize + len)
                .ok_or_else(|| format!("range {r:?} outside the RAM cache"))?;
            machine
                .memory()
                .write_slice(from, GuestAddress(start))
                .map_err(|e| format!("writing range {r:?} into SVM memory: {e}"))?;
        }
        Ok(())
    }

    fn clear_received(&mut self) {
        self.received.iter_mut().for_each(|w| *w = 0);
    }
}

/// What one checkpoint cost, for the logs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyStats {
    /// Pages copied cache -> SVM (received or SVM-dirtied).
    pub pages_copied: u64,
}

/// Wall time of the last VM command of each kind (each overwrites its own slot), so the
/// node's checkpoint log lines can split a pause into the VMM's parts and the protocol's
/// waits between them (docs/benchmarks.md, "The pair's pause").
#[derive(Clone, Copy, Debug, Default)]
pub struct VmTimings {
    /// `Pause`.
    pub pause: Duration,
    /// `CollectDirty` (harvest the dirty logs).
    pub collect: Duration,
    /// `SendPages` (guest memory into the socket).
    pub send_pages: Duration,
    /// `SaveDeviceState` (read, encode, send).
    pub save_devices: Duration,
    /// `ApplyCheckpoint` (secondary).
    pub apply: Duration,
    /// `Resume`.
    pub resume: Duration,
}

/// The RAM cache shared between the peer reader thread, which stores received pages into it
/// as they arrive (no intermediate copy), and the node loop, which applies from it. The
/// protocol keeps them apart in time (the primary streams epoch `e + 1` only after the
/// secondary reported `e` loaded); the mutex makes each store and each apply atomic anyway.
pub type SharedCache = Arc<Mutex<RamCache>>;

/// Executes VM commands for one node.
#[derive(Debug)]
pub struct VmExecutor {
    /// The secondary's RAM cache (allocated for both roles: untouched memory costs nothing).
    cache: SharedCache,
    /// Secondary: the device state of the epoch being received.
    device_state: Option<(Epoch, Vec<u8>)>,
    /// Whether this node's VM has ever held a whole guest (a primary from its load; a
    /// secondary from its first apply): a resume before that would run zeroed memory.
    has_guest: bool,
    /// Last apply's figures.
    pub last_apply: ApplyStats,
    /// Wall time of the last command of each kind.
    pub timings: VmTimings,
}

impl VmExecutor {
    /// An executor for a VM of `mem_bytes`; `has_guest` is true on a primary (its VM is
    /// loaded before the start).
    pub fn new(mem_bytes: u64, has_guest: bool) -> VmExecutor {
        VmExecutor {
            cache: Arc::new(Mutex::new(RamCache::new(mem_bytes))),
            device_state: None,
            has_guest,
            last_apply: ApplyStats::default(),
            timings: VmTimings::default(),
        }
    }

    /// The RAM cache, for the peer reader to store received pages into.
    pub fn cache(&self) -> SharedCache {
        self.cache.clone()
    }

    /// Secondary: keeps a `DeviceState`'s bulk until the apply.
    pub fn store_device_state(&mut self, epoch: Epoch, bytes: Vec<u8>) {
        self.device_state = Some((epoch, bytes));
    }

    /// Runs one command. Peer-link failures while streaming are returned as `Err` (the caller
    /// takes the link down and reports the command failed); VM failures become
    /// `VmCompletion::Failed` with a log line.
    pub fn execute(
        &mut self,
        machine: &mut Machine,
        writer: Option<&mut PeerWriter>,
        command: VmCommand,
    ) -> Result<VmCompletion, (VmCompletion, LinkClosed)> {
        let started = Instant::now();
        let kind = command.kind();
        let result = self.execute_untimed(machine, writer, command);
        let took = started.elapsed();
        let t = &mut self.timings;
        match kind {
            VmCommandKind::Pause => t.pause = took,
            VmCommandKind::CollectDirty => t.collect = took,
            VmCommandKind::SendPages => t.send_pages = took,
            VmCommandKind::SaveDeviceState => t.save_devices = took,
            VmCommandKind::ApplyCheckpoint => t.apply = took,
            VmCommandKind::Resume => t.resume = took,
            VmCommandKind::DiscardPartial => {}
        }
        result
    }

    fn execute_untimed(
        &mut self,
        machine: &mut Machine,
        writer: Option<&mut PeerWriter>,
        command: VmCommand,
    ) -> Result<VmCompletion, (VmCompletion, LinkClosed)> {
        let failed = |command: VmCommandKind, why: String| {
            error!("VM command {command:?} failed: {why}");
            VmCompletion::Failed { command }
        };
        Ok(match command {
            VmCommand::Pause => {
                machine.pause();
                VmCompletion::Paused
            }
            VmCommand::Resume if !self.has_guest => failed(
                VmCommandKind::Resume,
                "this VM never received a checkpoint: it holds no guest to run".to_string(),
            ),
            VmCommand::Resume => {
                machine.resume();
                VmCompletion::Resumed
            }
            VmCommand::CollectDirty { epoch } => match machine.take_dirty() {
                Ok(dirty) => VmCompletion::DirtyCollected {
                    epoch,
                    ranges: dirty.ranges().to_vec(),
                },
                Err(e) => failed(VmCommandKind::CollectDirty, e.to_string()),
            },
            VmCommand::SendPages { epoch, ranges } => {
                let Some(writer) = writer else {
                    return Ok(failed(VmCommandKind::SendPages, "peer link down".into()));
                };
                let sent = writer.send_pages(machine.memory(), &ranges, |batch, ranges| {
                    Message::PageBatch {
                        epoch,
                        batch,
                        ranges,
                    }
                });
                match sent {
                    Ok(PagesSent {
                        batches,
                        pages,
                        bytes,
                    }) => VmCompletion::PagesSent {
                        epoch,
                        batches,
                        pages,
                        bytes,
                    },
                    Err(e) => {
                        return Err((
                            VmCompletion::Failed {
                                command: VmCommandKind::SendPages,
                            },
                            e,
                        ));
                    }
                }
            }
            VmCommand::SaveDeviceState { epoch } => {
                let state = match machine.save_devices() {
                    Ok(s) => s.to_bytes(),
                    Err(e) => return Ok(failed(VmCommandKind::SaveDeviceState, e.to_string())),
                };
                let Some(writer) = writer else {
                    return Ok(failed(
                        VmCommandKind::SaveDeviceState,
                        "peer link down".into(),
                    ));
                };
                match writer.send(&Message::DeviceState { epoch }, &state) {
                    Ok(()) => VmCompletion::DeviceStateSent {
                        epoch,
                        bytes: state.len() as u64,
                    },
                    Err(e) => {
                        return Err((
                            VmCompletion::Failed {
                                command: VmCommandKind::SaveDeviceState,
                            },
                            e,
                        ));
                    }
                }
            }
            VmCommand::ApplyCheckpoint { epoch } => match self.apply(machine, epoch) {
                Ok(()) => VmCompletion::Applied { epoch },
                Err(why) => failed(VmCommandKind::ApplyCheckpoint, why),
            },
            VmCommand::DiscardPartial { epoch } => {
                if self.device_state.as_ref().is_some_and(|(e, _)| *e <= epoch) {
                    self.device_state = None;
                }
                VmCompletion::Discarded { epoch }
            }
        })
    }

    /// Secondary: cache -> SVM for every page dirtied by either side, then the device state.
    fn apply(&mut self, machine: &mut Machine, epoch: Epoch) -> Result<(), String> {
        let state = match self.device_state.take() {
            Some((e, bytes)) if e == epoch => bytes,
            Some((e, _)) => return Err(format!("device state of {e:?} held, {epoch:?} applied")),
            None => return Err(format!("no device state received for {epoch:?}")),
        };
        let state = DeviceState::from_bytes(&state).map_err(|e| e.to_string())?;
        let mut cache = self.cache.lock();
        // Pages the SVM wrote since the last apply: they must be reverted to the PVM's copy.
        let mut pages = machine.take_dirty().map_err(|e| e.to_string())?;
        pages.union(cache.received().ranges());
        cache.copy_into(machine, pages.ranges())?;
        machine.restore_devices(&state).map_err(|e| e.to_string())?;
        // The copy above marked the VMM bitmap: this VM now is the checkpoint, so forget it.
        machine.take_dirty().map_err(|e| e.to_string())?;
        cache.clear_received();
        self.has_guest = true;
        self.last_apply = ApplyStats {
            pages_copied: pages.pages(),
        };
        Ok(())
    }

    /// Primary: the initial copy (`SyncCommand::SendAll`): restarts dirty tracking, then
    /// streams every page of guest memory as `SyncPages` of `term`. Returns the bytes sent.
    pub fn send_all(
        &mut self,
        machine: &mut Machine,
        writer: &mut PeerWriter,
        term: Term,
        progress: &SyncProgress,
    ) -> Result<u64, LinkClosed> {
        // From this command on the dirty logs track what the first checkpoint must carry.
        if let Err(e) = machine.take_dirty() {
            error!("clearing the dirty log before the initial copy failed: {e}");
        }
        let all = DirtyPages::all(machine.memory());
        let sent = writer.send_pages(machine.memory(), all.ranges(), |batch, ranges| {
            progress.advance(ranges.iter().map(|r| r.count).sum::<u64>() * PAGE_SIZE);
            Message::SyncPages {
                term,
                batch,
                ranges,
            }
        })?;
        Ok(sent.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, count: u64) -> PageRange {
        PageRange { first, count }
    }

    #[test]
    fn cache_stores_pages_and_marks_them_received() {
        let mut cache = RamCache::new(64 * PAGE_SIZE);
        let data: Vec<u8> = (0..3 * PAGE_SIZE)
            .map(|i| (i / PAGE_SIZE) as u8 + 1)
            .collect();
        cache
            .store(&[range(2, 1), range(60, 2)], &data)
            .expect("in range");
        assert_eq!(cache.received().ranges(), &[range(2, 1), range(60, 2)]);
        let at = |page: u64| cache.bytes[(page * PAGE_SIZE) as usize];
        assert_eq!((at(2), at(60), at(61), at(3)), (1, 2, 3, 0));
        cache.clear_received();
        assert!(cache.received().ranges().is_empty());
        assert_eq!(
            cache.bytes[(61 * PAGE_SIZE) as usize],
            3,
            "clearing the marks keeps the pages"
        );
    }

    #[test]
    fn cache_refuses_pages_outside_memory_or_of_the_wrong_length() {
        let mut cache = RamCache::new(64 * PAGE_SIZE);
        let page = vec![9u8; PAGE_SIZE as usize];
        assert!(cache.store(&[range(64, 1)], &page).is_err());
        assert!(cache.store(&[range(u64::MAX, 2)], &page).is_err());
        assert!(cache.store(&[range(0, 2)], &page).is_err());
        assert!(
            cache.received().ranges().is_empty(),
            "a refused batch stores nothing"
        );
        assert!(cache.bytes.iter().all(|&b| b == 0));
    }
}
