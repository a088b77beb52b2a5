//! The VM side of a replicated node: executes the node's [`VmCommand`]s and the initial copy
//! on a [`Machine`], streaming pages and device state into the peer writer, and holds the
//! secondary's RAM cache (`crate::vmm::checkpoint`, QEMU's `colo_cache`) shared with the peer
//! reader.
//!
//! Primary: `CollectDirty` harvests the dirty logs (read and clear) and reports that harvest;
//! `SendPages` streams exactly the ranges the core ordered from guest memory into the peer
//! socket (never through the core); `SaveDeviceState` sends the Persist state. Which pages a
//! checkpoint must carry (the harvest plus the pages of aborted attempts) is the core's
//! decision (`colo_core::checkpoint::PrimaryCheckpointer`, "Carried-over pages"), so the
//! simulator executes the same rule.
//!
//! Secondary: received pages land in the [`RamCache`], never in SVM memory; the device state
//! of the epoch being received waits here. `ApplyCheckpoint` hands both to
//! [`apply_checkpoint`] (the VMM's apply, which keeps the atomic-checkpoint invariant) once the
//! held device state is the epoch's. `DiscardPartial` drops the partial device
//! state but keeps the received-page marks: those cache pages are newer PVM content that the
//! next apply must still copy.

use crate::pair::peer::{LinkClosed, PagesSent, PeerWriter};
use crate::pair::progress::SyncProgress;
use crate::vmm::checkpoint::{ApplyStats, RamCache, apply_checkpoint};
use crate::vmm::layout::PAGE_SIZE;
use crate::vmm::machine::Machine;
use crate::vmm::memory::DirtyPages;
use crate::vmm::persist::DeviceState;
use colo_core::checkpoint::{VmCommand, VmCommandKind, VmCompletion};
use colo_core::ids::{Epoch, Term};
use colo_core::wire::Message;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error};

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
                let sent = writer.send_pages(machine.memory(), &ranges, |batch, ranges, zero| {
                    Message::PageBatch {
                        epoch,
                        batch,
                        ranges,
                        zero,
                    }
                });
                match sent {
                    Ok(PagesSent {
                        batches,
                        pages,
                        zero_pages,
                        bytes,
                    }) => {
                        debug!(epoch = epoch.0, pages, zero_pages, bytes, "pages-sent");
                        VmCompletion::PagesSent {
                            epoch,
                            batches,
                            pages,
                            bytes,
                        }
                    }
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
        self.last_apply =
            apply_checkpoint(machine, &mut cache, &state).map_err(|e| e.to_string())?;
        self.has_guest = true;
        Ok(())
    }

    /// Primary: the initial copy (`SyncCommand::SendAll`): restarts dirty tracking, then
    /// streams every page of guest memory as `SyncPages` of `term` (zero pages only marked).
    /// Returns what was sent.
    pub fn send_all(
        &mut self,
        machine: &mut Machine,
        writer: &mut PeerWriter,
        term: Term,
        progress: &SyncProgress,
    ) -> Result<PagesSent, LinkClosed> {
        // From this command on the dirty logs track what the first checkpoint must carry.
        if let Err(e) = machine.take_dirty() {
            error!("clearing the dirty log before the initial copy failed: {e}");
        }
        let all = DirtyPages::all(machine.memory());
        writer.send_pages(machine.memory(), all.ranges(), |batch, ranges, zero| {
            progress.advance(ranges.iter().map(|r| r.count).sum::<u64>() * PAGE_SIZE);
            Message::SyncPages {
                term,
                batch,
                ranges,
                zero,
            }
        })
    }
}
