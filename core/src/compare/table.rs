//! The flow table: flows in a slab, found by key through a fixed-hash index and a one-entry
//! cache, plus the ordered garbage-collection schedule of idle flows.
//!
//! Determinism: the hash index is used for lookups only (its iteration order never reaches an
//! output) and its hasher has fixed keys; every walk over flows that can reach an output goes
//! through the slab in index order or the ordered GC set, and `checkpoint_done` re-sorts what it
//! releases by arrival id anyway.
//!
//! Invariant kept: the GC set holds `(t, idx)` exactly when `flows[idx].gc_at == Some(t)`, so
//! an entry never outlives or names the wrong flow, and a removed flow leaves no entry behind.

use super::fast::RawTcp4Key;
use super::flow::{Flow, FlowClass};
use crate::packet::FlowKey;
use crate::time::Instant;
use std::collections::BTreeSet;
#[expect(
    clippy::disallowed_types,
    reason = "the one hash map in core: lookups only, fixed-key hasher (module doc)"
)]
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

/// Key of the table: the flow key plus the comparison class.
pub(crate) type TableKey = (FlowKey, FlowClass);

/// Slab index of a flow.
pub(crate) type FlowIdx = u32;

#[derive(Debug, Default)]
pub(crate) struct FlowTable {
    slots: Vec<Option<Flow>>,
    free: Vec<FlowIdx>,
    /// `DefaultHasher::new()` is SipHash with fixed zero keys: deterministic across runs.
    #[expect(
        clippy::disallowed_types,
        reason = "lookups only, never iterated (module doc)"
    )]
    index: HashMap<TableKey, FlowIdx, BuildHasherDefault<DefaultHasher>>,
    /// The last key looked up: primary and secondary copies of one flow arrive back to back.
    last: Option<(TableKey, FlowIdx)>,
    /// The same for the common frame layout (untagged IPv4 TCP, see `fast::tcp4_summary`),
    /// keyed by raw header bytes so a hit needs no full classification.
    last_raw: Option<(RawTcp4Key, FlowIdx)>,
    gc: BTreeSet<(Instant, FlowIdx)>,
}

impl FlowTable {
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn find(&mut self, key: &FlowKey, class: FlowClass) -> Option<FlowIdx> {
        if let Some(((k, c), idx)) = &self.last
            && *c == class
            && k == key
        {
            return Some(*idx);
        }
        let idx = *self.index.get(&(*key, class))?;
        self.last = Some(((*key, class), idx));
        Some(idx)
    }

    /// The flow of the last untagged IPv4 TCP frame, if `raw` is its identity.
    #[inline]
    pub(crate) fn find_raw(&self, raw: &RawTcp4Key) -> Option<FlowIdx> {
        match &self.last_raw {
            Some((k, idx)) if k == raw => Some(*idx),
            _ => None,
        }
    }

    /// Remembers that untagged IPv4 TCP frames with identity `raw` belong to flow `idx`.
    pub(crate) fn remember_raw(&mut self, raw: RawTcp4Key, idx: FlowIdx) {
        self.last_raw = Some((raw, idx));
    }

    pub(crate) fn insert(&mut self, flow: Flow) -> FlowIdx {
        let key = (flow.key, flow.class);
        let idx = match self.free.pop() {
            Some(idx) => {
                self.slots[idx as usize] = Some(flow);
                idx
            }
            None => {
                self.slots.push(Some(flow));
                (self.slots.len() - 1) as FlowIdx
            }
        };
        self.index.insert(key, idx);
        self.last = Some((key, idx));
        idx
    }

    pub(crate) fn get_mut(&mut self, idx: FlowIdx) -> &mut Flow {
        self.slots[idx as usize]
            .as_mut()
            .expect("flow index names a live flow (table invariant)")
    }

    pub(crate) fn get(&self, idx: FlowIdx) -> Option<&Flow> {
        self.slots.get(idx as usize).and_then(Option::as_ref)
    }

    pub(crate) fn remove(&mut self, idx: FlowIdx) -> Option<Flow> {
        let flow = self.slots.get_mut(idx as usize)?.take()?;
        if let Some(at) = flow.gc_at {
            self.gc.remove(&(at, idx));
        }
        self.index.remove(&(flow.key, flow.class));
        if matches!(self.last, Some((_, i)) if i == idx) {
            self.last = None;
        }
        if matches!(self.last_raw, Some((_, i)) if i == idx) {
            self.last_raw = None;
        }
        self.free.push(idx);
        Some(flow)
    }

    /// Live flow indices in slab order.
    pub(crate) fn indices(&self) -> impl Iterator<Item = FlowIdx> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_some())
            .map(|(i, _)| i as FlowIdx)
    }

    /// Live flows in slab order, mutably.
    pub(crate) fn flows_mut(&mut self) -> impl Iterator<Item = &mut Flow> + '_ {
        self.slots.iter_mut().flatten()
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.index.clear();
        self.last = None;
        self.last_raw = None;
        self.gc.clear();
    }

    /// (Re)schedules the flow's next GC look at `at`.
    pub(crate) fn schedule_gc(&mut self, idx: FlowIdx, at: Instant) {
        let flow = self.slots[idx as usize]
            .as_mut()
            .expect("flow index names a live flow (table invariant)");
        if let Some(old) = flow.gc_at.replace(at) {
            self.gc.remove(&(old, idx));
        }
        self.gc.insert((at, idx));
    }

    pub(crate) fn next_gc(&self) -> Option<Instant> {
        self.gc.first().map(|(at, _)| *at)
    }

    /// Takes the earliest GC entry due at or before `now`.
    pub(crate) fn pop_due_gc(&mut self, now: Instant) -> Option<FlowIdx> {
        let &(at, idx) = self.gc.first()?;
        if at > now {
            return None;
        }
        self.gc.pop_first();
        if let Some(flow) = self.slots[idx as usize].as_mut() {
            flow.gc_at = None;
        }
        Some(idx)
    }

    /// The idle flow (empty queues) the GC would forget first, for eviction from a full table.
    pub(crate) fn oldest_idle(&self) -> Option<FlowIdx> {
        self.gc
            .iter()
            .map(|&(_, idx)| idx)
            .find(|&idx| self.get(idx).is_some_and(Flow::is_empty))
    }
}
