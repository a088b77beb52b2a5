//! The primary-side comparator: output commit for network frames.
//!
//! The primary's colo proxy hands the [`Comparator`] every frame the primary VM sends
//! ([`Comparator::handle_primary`]) and every frame the secondary VM sends
//! ([`Comparator::handle_secondary`], already rewritten into primary TCP numbering by the
//! secondary's rewriter). A primary frame is released to the client only when the secondary
//! produced the same output, when a rule says it needs no comparison, or when a checkpoint
//! covers it. Differences, frames waiting too long, full queues and a full flow table become
//! one coalesced [`CompareOutput::CheckpointRequest`]; nothing is ever dropped to save memory.
//!
//! Invariant kept (the output-commit rule): every primary frame handed in leaves as exactly one
//! [`CompareOutput::Release`], in one of four ways (matched, uncompared by rule, covered by
//! `checkpoint_done`, released without a secondary), or is still held; every secondary frame is
//! consumed by a match, dropped for a counted reason, or still held ([`CompareStats`]).
//!
//! A released TCP segment may have its window lowered (and its checksum updated) to the
//! secondary's right edge, its only changed bytes (`window`, the window clamp).
//!
//! Files: [`config`] (knobs), `flow` (queues, non-TCP rules), `tcp` (stream alignment, control
//! flags), `window` (the window clamp), `history` (released bytes for retransmission checks), `table`
//! (flow table and idle-flow GC), `ages` (arrival ring and comparison deadlines), [`stats`],
//! [`testkit`] (frame builders for tests, fuzzing, benches and the demo).

mod ages;
pub mod config;
mod fast;
mod flow;
mod history;
pub mod stats;
mod table;
mod tcp;
pub mod testkit;
mod window;
mod window_update;

#[cfg(test)]
mod tests;

pub use config::{CompareConfig, CompareConfigError};
pub use flow::FlowClass;
pub use stats::CompareStats;

use crate::ids::CheckpointReason;
use crate::packet::{Classified, FlowKey, Kind, SeqNum, classify, classify_or_opaque, tcp_flags};
use crate::time::Instant;
use ages::{Ages, FrameId};
use flow::{Flow, Held, Sink, Spare};
use table::{FlowIdx, FlowTable};

/// What the comparator wants done, drained with [`Comparator::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareOutput {
    /// Send this primary frame to the client. Frames of one flow come out in the order the
    /// comparator may release them (TCP: stream order).
    Release(Vec<u8>),
    /// Send this pure TCP ACK to the client: built by the comparator from the last primary
    /// segment it released with a clamped window, it announces a window both guests have
    /// since opened (`window_update`, docs/comparator.md). Not a primary frame: it is not
    /// counted in the conservation equations.
    WindowUpdate(Vec<u8>),
    /// Run a checkpoint and call [`Comparator::checkpoint_done`] when the secondary has
    /// received it. Only one is outstanding at a time.
    CheckpointRequest(CheckpointReason),
    /// The two sides' output differed on `flow` (a checkpoint request follows or is pending).
    Miscompare {
        /// The flow that diverged.
        flow: FlowKey,
        /// Where and how.
        why: MiscompareWhy,
    },
}

/// Where two frames (or two streams) first differed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MiscompareWhy {
    /// Offset of the first differing byte in the compared region of the primary frame (TCP
    /// payload, bytes after the IP header, or the whole frame), or the shorter length.
    pub offset: usize,
    /// What differed.
    pub reason: MismatchReason,
}

/// The kind of difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchReason {
    /// TCP payload bytes differ; `seq` is the sequence number of the first differing byte.
    TcpPayload {
        /// Sequence number of the first differing byte.
        seq: SeqNum,
    },
    /// A primary TCP segment's control flag (SYN, FIN or RST, in `flags`) at stream position
    /// `seq` differs from what the secondary sent: its FIN (or an RST) is at another position,
    /// or it sent a FIN where the primary reset the connection.
    TcpControl {
        /// The end of the primary segment's payload (where its FIN or RST sits).
        seq: SeqNum,
        /// The primary segment's control flags.
        flags: u8,
    },
    /// A primary retransmission reaches back before the released bytes the comparator keeps
    /// (`retransmit_history`): it cannot be checked, so it is held for a checkpoint.
    RetransmitUnchecked {
        /// Sequence number of the first byte that could not be checked.
        seq: SeqNum,
    },
    /// The compared regions have different lengths.
    LengthDiffers {
        /// Length on the primary.
        primary: usize,
        /// Length on the secondary.
        secondary: usize,
    },
    /// Same length, different bytes.
    BytesDiffer,
}

/// The comparator's phase.
///
/// Transitions:
/// - `Comparing -> CheckpointPending`: a miscompare, timeout, full queue or full table.
/// - `CheckpointPending -> CheckpointPending`: more triggers (counted as coalesced, no output).
/// - `Comparing | CheckpointPending -> Comparing`: `checkpoint_done` (queues flushed).
/// - `any -> Solo`: `release_all` (the secondary is gone; everything is forwarded).
/// - `Solo -> Comparing`: `attach_secondary` (a new secondary, a copy of the primary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Comparing; no checkpoint requested.
    Comparing,
    /// Still comparing, a checkpoint has been requested for this reason and not yet done.
    CheckpointPending(CheckpointReason),
    /// No secondary: primary frames are released at once, secondary frames dropped.
    Solo,
}

/// The primary-side output comparator (sans-IO).
///
/// # How to drive it
/// 1. Create it with [`Comparator::new`] (validates the [`CompareConfig`]).
/// 2. Feed frames: [`handle_primary`](Self::handle_primary) for each frame the primary VM
///    sent, [`handle_secondary`](Self::handle_secondary) for each frame the secondary VM sent
///    (rewritten into primary TCP numbering, and only frames of the current epoch: frames the
///    secondary sent before the last checkpoint must be discarded by the caller).
/// 3. After every input, drain [`poll_output`](Self::poll_output) until it returns `None`:
///    send `Release` frames to the client in the order given, start a checkpoint on
///    `CheckpointRequest`, log `Miscompare`.
/// 4. Arm a timer at [`poll_timeout`](Self::poll_timeout) and call
///    [`handle_timeout`](Self::handle_timeout) when it fires (an early or spurious call does
///    nothing).
/// 5. When a checkpoint (requested or periodic) has reached the secondary, call
///    [`checkpoint_done`](Self::checkpoint_done): every held primary frame is released in
///    arrival order and every held secondary frame dropped.
/// 6. If the secondary is lost, call [`release_all`](Self::release_all); the comparator then
///    forwards primary frames at once until [`attach_secondary`](Self::attach_secondary).
///
/// `now` must never go backwards across calls (the comparator panics naming this rule).
#[derive(Debug)]
pub struct Comparator {
    config: CompareConfig,
    phase: Phase,
    table: FlowTable,
    ages: Ages,
    out: crate::outbox::Outbox<CompareOutput>,
    stats: CompareStats,
    /// Reused by checkpoint flushes to put held frames back into arrival order.
    scratch: Vec<(FrameId, Vec<u8>)>,
    /// Emptied secondary buffers for [`Comparator::take_spare_buffer`].
    spare: Spare,
    last_now: Instant,
    /// Whether the TCP fast path (`fast`) runs. Always on outside the differential test, which
    /// turns it off to check that the general path alone produces the same outputs.
    fast_path: bool,
    /// Planted bug (feature `canaries`): control segments leave without the secondary's.
    #[cfg(feature = "canaries")]
    unguarded_control: bool,
    /// Frames the fast path handled (the differential test checks it is exercised).
    #[cfg(test)]
    fast_hits: u64,
}

/// How a flush treats what it empties.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flush {
    Checkpoint,
    Failover,
}

impl Comparator {
    /// A comparator with the given configuration, in phase [`Phase::Comparing`].
    pub fn new(config: CompareConfig) -> Result<Comparator, CompareConfigError> {
        config.validate()?;
        Ok(Comparator {
            config,
            phase: Phase::Comparing,
            table: FlowTable::default(),
            ages: Ages::with_capacity(256),
            out: crate::outbox::Outbox::with_capacity(256),
            stats: CompareStats::default(),
            scratch: Vec::new(),
            spare: Spare::with_room(),
            last_now: Instant::ZERO,
            fast_path: true,
            #[cfg(feature = "canaries")]
            unguarded_control: false,
            #[cfg(test)]
            fast_hits: 0,
        })
    }

    /// Plants the `release-control-unguarded` canary (feature `canaries`, for the simulator):
    /// primary segments carrying SYN, FIN or RST leave as QEMU releases them, held by neither
    /// the secondary's flags nor the min-ACK guard (only by the byte comparison and stream
    /// order). Flows created from now on behave so.
    #[cfg(feature = "canaries")]
    pub fn plant_unguarded_control(&mut self) {
        self.unguarded_control = true;
    }

    /// The same comparator without the TCP fast path: the general path alone, which the
    /// differential test holds the fast path to.
    #[cfg(test)]
    pub(crate) fn without_fast_path(mut self) -> Comparator {
        self.fast_path = false;
        self
    }

    /// Frames the fast path handled so far.
    #[cfg(test)]
    pub(crate) fn fast_hits(&self) -> u64 {
        self.fast_hits
    }

    /// The configuration in use.
    pub fn config(&self) -> &CompareConfig {
        &self.config
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Counters of every decision so far.
    pub fn stats(&self) -> &CompareStats {
        &self.stats
    }

    /// An empty buffer (capacity kept) from a secondary frame the comparator is done with, to
    /// receive the next frame into instead of allocating one. At most 256 are kept.
    pub fn take_spare_buffer(&mut self) -> Option<Vec<u8>> {
        self.spare.take()
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<CompareOutput> {
        self.out.pop()
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work: the earliest comparison deadline
    /// (oldest held frame plus `compare_timeout`, frames that already timed out excluded) or
    /// idle-flow expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let compare = self.ages.next_deadline(self.config.compare_timeout);
        match (compare, self.table.next_gc()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn observe(&mut self, now: Instant) {
        assert!(
            now >= self.last_now,
            "time went backwards: Comparator inputs must carry a non-decreasing `now`"
        );
        self.last_now = now;
    }

    /// Requests a checkpoint, or counts the trigger as coalesced into the pending one.
    fn trigger(&mut self, reason: CheckpointReason) {
        match self.phase {
            Phase::Comparing => {
                self.phase = Phase::CheckpointPending(reason);
                self.stats.checkpoint_requests += 1;
                self.out.push(CompareOutput::CheckpointRequest(reason));
            }
            Phase::CheckpointPending(_) => self.stats.coalesced_requests += 1,
            // No secondary: there is nobody to checkpoint to, and nothing is held.
            Phase::Solo => {}
        }
    }

    /// Finds the flow of `key`, creating it if needed. A full table first evicts the idle flow
    /// the GC would forget first; with no idle flow the table grows past its bound and a
    /// checkpoint is requested (it empties every queue, after which the table is trimmed).
    fn flow_for(&mut self, now: Instant, key: &FlowKey, class: FlowClass) -> FlowIdx {
        if let Some(idx) = self.table.find(key, class) {
            return idx;
        }
        if self.table.len() >= self.config.max_flows {
            match self.table.oldest_idle() {
                Some(victim) => {
                    self.table.remove(victim);
                    self.stats.flows_evicted += 1;
                }
                None => {
                    self.stats.flow_table_full_events += 1;
                    self.trigger(CheckpointReason::FlowTableFull);
                }
            }
        }
        self.stats.flows_created += 1;
        #[allow(unused_mut)]
        let mut flow = Flow::new(*key, class, now, &self.config);
        #[cfg(feature = "canaries")]
        {
            flow.tcp.unguarded_control = self.unguarded_control;
        }
        let idx = self.table.insert(flow);
        self.stats.flows = self.table.len() as u64;
        idx
    }

    /// Schedules the flow's garbage collection once its queues are empty. Cheap on the hot
    /// path: the GC set is touched only when the flow has no entry or its due time moves
    /// earlier (a FIN shortening the linger).
    fn after_frame(&mut self, idx: FlowIdx) {
        let (linger, idle) = (
            self.config.closed_flow_linger,
            self.config.flow_idle_timeout,
        );
        let flow = self.table.get_mut(idx);
        if !flow.is_empty() {
            return;
        }
        let due = flow.last_active + if flow.closing { linger } else { idle };
        match flow.gc_at {
            Some(at) if at <= due => {}
            _ => self.table.schedule_gc(idx, due),
        }
    }

    fn idle_for_of(&mut self, idx: FlowIdx) -> crate::time::Duration {
        let closing = self.table.get_mut(idx).closing;
        if closing {
            self.config.closed_flow_linger
        } else {
            self.config.flow_idle_timeout
        }
    }

    /// A frame the primary VM sent.
    pub fn handle_primary(&mut self, now: Instant, frame: Vec<u8>) {
        self.handle_frame(now, frame, Side::Primary);
    }

    /// A frame the secondary VM sent (in primary TCP numbering, current epoch only).
    pub fn handle_secondary(&mut self, now: Instant, frame: Vec<u8>) {
        self.handle_frame(now, frame, Side::Secondary);
    }

    fn handle_frame(&mut self, now: Instant, frame: Vec<u8>, side: Side) {
        self.observe(now);
        match side {
            Side::Primary => self.stats.primary_frames += 1,
            Side::Secondary => self.stats.secondary_frames += 1,
        }
        if self.phase == Phase::Solo {
            match side {
                Side::Primary => {
                    self.stats.released_solo += 1;
                    self.out.push(CompareOutput::Release(frame));
                }
                Side::Secondary => {
                    self.stats.secondary_dropped_solo += 1;
                    self.spare.keep(frame);
                }
            }
            return;
        }

        // Classify once; everything later works on these offsets. The common layout (untagged
        // IPv4 TCP) is read from fixed offsets, and when its raw flow identity is the last
        // one seen (the two copies of a flow arrive back to back) the flow is known without
        // the general classification or a `FlowKey` comparison (`fast::tcp4_summary`).
        let quick = if self.fast_path {
            fast::tcp4_summary(&frame)
        } else {
            None
        };
        let known = quick.and_then(|(raw, info)| Some((self.table.find_raw(&raw)?, info)));
        let (idx, body_start, body_end, tcp_info) = match known {
            Some((idx, info)) => (idx, info.payload_start, info.payload_end, Some(info)),
            None => {
                // The summary is borrowed in place (not moved out of the `Result`): copying
                // it costs more than the rest of the lookup. An unreadable frame (rare) is
                // classified again as opaque.
                let parsed = classify(&frame);
                let opaque;
                let classified: &Classified = match &parsed {
                    Ok(c) => c,
                    Err(_) => {
                        opaque = classify_or_opaque(&frame);
                        &opaque
                    }
                };
                let (class, body_start, body_end, tcp_info) = match &classified.kind {
                    Kind::Tcp(info) => (
                        FlowClass::Tcp,
                        info.payload_start,
                        info.payload_end,
                        Some(*info),
                    ),
                    Kind::Ip { payload, .. } => {
                        (FlowClass::Datagram, payload.start, payload.end, None)
                    }
                    Kind::Link => (FlowClass::Frame, 0, frame.len(), None),
                };
                let idx = self.flow_for(now, &classified.key, class);
                if let Some((raw, _)) = quick {
                    self.table.remember_raw(raw, idx);
                }
                (idx, body_start, body_end, tcp_info)
            }
        };
        let max_queue = self.config.max_queue_frames;
        let flow = self.table.get_mut(idx);
        flow.last_active = now;

        // TCP: zero-payload segments and retransmissions are not compared (a secondary one is
        // dropped); a primary one is released at once only if nothing of its flow is held and
        // the min-ACK guard allows its ACK, else it is held, uncompared, in stream order (see
        // `tcp`). Either way they may move the stream (SYN) or the guard, so the flow is
        // advanced.
        let mut seg = None;
        let mut frame = Some(frame);
        // A primary retransmission (whole or partial) whose bytes differ from the released
        // ones, or reach back before the kept history: held, the flow diverged.
        let mut bad_retransmit = None;
        if let Some(info) = &tcp_info {
            if side == Side::Primary && info.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
                flow.closing = true;
            }
            let arrival = match side {
                Side::Primary => {
                    if info.has(tcp_flags::SYN) {
                        tcp::restart_verification(&mut flow.primary);
                        flow.history.clear(&mut self.spare);
                        flow.update.clear();
                    }
                    if let Some(f) = frame.as_deref() {
                        flow.tcp.windows.on_primary(f, info);
                    }
                    let arrival = flow.tcp.on_primary(info);
                    let range = tcp::payload_range(info);
                    if let Some((lo, hi)) = flow.tcp.released_part(range.seq, range.end)
                        && let Some(f) = frame.as_deref()
                    {
                        bad_retransmit = check_retransmit(flow, f, body_start, range.seq, lo, hi);
                    }
                    arrival
                }
                Side::Secondary => {
                    if let Some(f) = frame.as_deref() {
                        flow.tcp.windows.on_secondary(f, info);
                    }
                    flow.tcp.on_secondary(info)
                }
            };
            // Fast path (`fast`): the arriving segment completes a pair with the one segment
            // the other side holds, and they are equal. Otherwise the general path below runs
            // on an unchanged state.
            if let Ok(s) = &arrival
                && self.fast_path
                && self.phase == Phase::Comparing
                && !flow.diverged
                && bad_retransmit.is_none()
                && let Some(buffer) = frame.take()
            {
                let mut sink = Sink {
                    out: &mut self.out,
                    stats: &mut self.stats,
                    ages: &mut self.ages,
                    spare: &mut self.spare,
                };
                let done = match side {
                    Side::Primary => {
                        let body = &buffer[body_start..body_end];
                        if fast::primary_completes_pair(flow, *s, body, &mut sink) {
                            let mut buffer = buffer;
                            sink.clamp(&mut flow.tcp.windows, &mut flow.update, &mut buffer, s);
                            sink.matched_unheld(side, buffer, body_end - body_start);
                            Ok(())
                        } else {
                            Err(buffer)
                        }
                    }
                    Side::Secondary => {
                        let body = body_start..body_end;
                        fast::secondary_completes_pair(flow, s, buffer, body, &mut sink)
                    }
                };
                match done {
                    Ok(()) => {
                        #[cfg(test)]
                        {
                            self.fast_hits += 1;
                        }
                        if side == Side::Secondary {
                            self.send_window_update(idx);
                        }
                        self.after_frame(idx);
                        return;
                    }
                    Err(buffer) => frame = Some(buffer),
                }
            }
            match (side, arrival) {
                (_, Ok(s)) => seg = Some(s),
                (Side::Primary, Err(_)) => {
                    let held = tcp::uncompared_segment(info);
                    if flow.primary.is_empty()
                        && bad_retransmit.is_none()
                        && flow.tcp.may_leave(&held)
                    {
                        self.stats.released_uncompared += 1;
                        if let Some(mut f) = frame.take() {
                            let lowered = flow.tcp.windows.clamp(&mut f, &held);
                            if lowered {
                                self.stats.windows_clamped += 1;
                            }
                            if lowered || flow.update.is_live() {
                                flow.update.after_clamp(lowered, &f, &held);
                            }
                            self.out.push(CompareOutput::Release(f));
                        }
                    } else {
                        self.stats.uncompared_held += 1;
                        seg = Some(held);
                    }
                }
                (Side::Secondary, Err(pass)) => {
                    if pass == tcp::Pass::ZeroPayload {
                        self.stats.secondary_dropped_zero_payload += 1;
                    } else {
                        self.stats.secondary_dropped_retransmit += 1;
                    }
                    if let Some(buffer) = frame.take() {
                        self.spare.keep(buffer);
                    }
                }
            }
        }

        // Datagram fast path (`fast`): the arriving frame completes a pair at once.
        if tcp_info.is_none()
            && self.fast_path
            && self.phase == Phase::Comparing
            && let Some(buffer) = frame.take()
        {
            let mut sink = Sink {
                out: &mut self.out,
                stats: &mut self.stats,
                ages: &mut self.ages,
                spare: &mut self.spare,
            };
            let body = &buffer[body_start..body_end];
            if fast::datagram_completes_pair(flow, side == Side::Primary, body, &mut sink) {
                #[cfg(test)]
                {
                    self.fast_hits += 1;
                }
                sink.matched_unheld(side, buffer, body_end - body_start);
                self.after_frame(idx);
                return;
            }
            frame = Some(buffer);
        }

        let mut queue_full = false;
        if let Some(frame) = frame {
            let queue = match side {
                Side::Primary => &mut flow.primary,
                Side::Secondary => &mut flow.secondary,
            };
            queue_full = queue.len() >= max_queue;
            let held = Held {
                id: self.ages.hold(now),
                frame,
                body_start,
                body_end,
                tcp: seg,
                paired: false,
            };
            if seg.is_some() {
                tcp::insert_sorted(queue, held);
            } else {
                queue.push_back(held);
            }
            match side {
                Side::Primary => self.stats.held_primary += 1,
                Side::Secondary => self.stats.held_secondary += 1,
            }
            if matches!(self.phase, Phase::CheckpointPending(_)) {
                self.stats.held_while_pending += 1;
            }
        }
        let mut sink = Sink {
            out: &mut self.out,
            stats: &mut self.stats,
            ages: &mut self.ages,
            spare: &mut self.spare,
        };
        if bad_retransmit.is_some() && !flow.diverged {
            flow.diverged = true;
        } else {
            bad_retransmit = None;
        }
        // A compared TCP segment alone in its flow waits without the general walk (`fast`).
        let lone = self.fast_path && seg.is_some_and(|s| !s.uncompared);
        let miscompare = if bad_retransmit.is_some() {
            bad_retransmit
        } else if lone && fast::lone_segment_waits(flow) {
            #[cfg(test)]
            {
                self.fast_hits += 1;
            }
            None
        } else {
            flow.advance(&mut sink)
        };

        if queue_full {
            // QEMU drops the new packet here (net/colo-compare.c, "queue size too big"); colo
            // holds it and asks for the checkpoint that will empty the queue.
            self.stats.queue_full_events += 1;
            self.trigger(CheckpointReason::QueueFull);
        }
        if let Some(why) = miscompare {
            self.stats.miscompares += 1;
            let flow = self.table.get_mut(idx).key;
            self.out.push(CompareOutput::Miscompare { flow, why });
            self.trigger(CheckpointReason::Miscompare);
        }
        if tcp_info.is_some() && side == Side::Secondary {
            self.send_window_update(idx);
        }
        self.after_frame(idx);
    }

    /// Acts on expired deadlines: frames older than `compare_timeout` request a checkpoint
    /// (each frame at most once); idle flows with empty queues are forgotten. Calling it early
    /// does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.observe(now);
        let expired = self.ages.expire(now, self.config.compare_timeout);
        if expired > 0 {
            self.stats.timeouts += 1;
            self.stats.timed_out_frames += expired;
            self.trigger(CheckpointReason::CompareTimeout);
        }
        while let Some(idx) = self.table.pop_due_gc(now) {
            let flow = self.table.get_mut(idx);
            if !flow.is_empty() {
                // Held frames have their own deadlines; GC looks again once the flow empties.
                continue;
            }
            let due = flow.last_active + self.idle_for_of(idx);
            if due <= now {
                self.table.remove(idx);
                self.stats.flows_expired += 1;
            } else {
                self.table.schedule_gc(idx, due);
            }
        }
        self.stats.flows = self.table.len() as u64;
    }

    /// A checkpoint reached the secondary (QEMU releases at VMSTATE_RECEIVED): release every
    /// held primary frame in arrival order, drop every held secondary frame, and restart
    /// comparison from the primary's stream positions (the secondary is now its copy).
    pub fn checkpoint_done(&mut self, now: Instant) {
        self.observe(now);
        self.stats.checkpoints_done += 1;
        self.flush(Flush::Checkpoint);
        if self.phase != Phase::Solo {
            self.phase = Phase::Comparing;
        }
        // Every flow is empty now: schedule its GC, then trim a table that grew past its bound.
        let indices: Vec<FlowIdx> = self.table.indices().collect();
        for idx in indices {
            self.send_window_update(idx);
            self.after_frame(idx);
        }
        while self.table.len() > self.config.max_flows {
            let Some(victim) = self.table.oldest_idle() else {
                break;
            };
            self.table.remove(victim);
            self.stats.flows_evicted += 1;
        }
        self.stats.flows = self.table.len() as u64;
    }

    /// The secondary is lost (failover on the primary): release every held primary frame in
    /// arrival order, drop every held secondary frame, and from now on release primary frames
    /// at once and drop secondary ones ([`Phase::Solo`]).
    pub fn release_all(&mut self, now: Instant) {
        self.observe(now);
        self.flush(Flush::Failover);
        self.table.clear();
        self.phase = Phase::Solo;
        self.stats.flows = 0;
    }

    /// A new secondary, a fresh copy of the primary, is attached: compare again, learning every
    /// flow anew. Also valid while comparing (then it behaves like `release_all` followed by
    /// attaching).
    pub fn attach_secondary(&mut self, now: Instant) {
        self.observe(now);
        self.flush(Flush::Failover);
        self.table.clear();
        self.phase = Phase::Comparing;
        self.stats.flows = 0;
    }

    fn flush(&mut self, kind: Flush) {
        self.scratch.clear();
        let mut dropped = 0u64;
        for flow in self.table.flows_mut() {
            let mut flushed_end: Option<SeqNum> = None;
            if !flow.primary.is_empty() {
                // Released unclamped: the client has the primary's own window.
                flow.update.clear();
            }
            for held in flow.primary.drain(..) {
                if let Some(seg) = held.tcp {
                    flushed_end = Some(flushed_end.map_or(seg.end, |e| e.max_seq(seg.end)));
                    if kind == Flush::Checkpoint {
                        let bound = flow.history_bound;
                        flow.history
                            .record(seg.seq, held.body(), bound, &mut self.spare);
                    }
                }
                self.scratch.push((held.id, held.frame));
            }
            dropped += flow.secondary.len() as u64;
            for held in flow.secondary.drain(..) {
                self.spare.keep(held.frame);
            }
            flow.tcp.on_checkpoint(flushed_end);
            flow.diverged = false;
        }
        // Arrival ids are global, so sorting restores the order the primary sent them in.
        self.scratch.sort_unstable_by_key(|(id, _)| *id);
        let released = self.scratch.len() as u64;
        for (_, frame) in self.scratch.drain(..) {
            self.out.push(CompareOutput::Release(frame));
        }
        match kind {
            Flush::Checkpoint => {
                self.stats.released_by_checkpoint += released;
                self.stats.secondary_dropped_by_checkpoint += dropped;
            }
            Flush::Failover => {
                self.stats.released_solo += released;
                self.stats.secondary_dropped_solo += dropped;
            }
        }
        self.stats.held_primary = 0;
        self.stats.held_secondary = 0;
        self.ages.clear();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Primary,
    Secondary,
}

/// Checks the released part `[lo, hi)` of a primary TCP segment whose payload starts at `seq`
/// (at `body_start` in `frame`) against the flow's released bytes. `None` if equal; else why
/// the segment must be held (the bytes differ, or they are older than the history).
fn check_retransmit(
    flow: &Flow,
    frame: &[u8],
    body_start: usize,
    seq: SeqNum,
    lo: SeqNum,
    hi: SeqNum,
) -> Option<MiscompareWhy> {
    let from = lo.diff(seq) as usize;
    let to = hi.diff(seq) as usize;
    let bytes = frame.get(body_start + from..body_start + to)?;
    match flow.history.check(lo, bytes) {
        history::Check::Equal => None,
        history::Check::Differs(i) => Some(MiscompareWhy {
            offset: from + i,
            reason: MismatchReason::TcpPayload {
                seq: lo.wrapping_add(i as u32),
            },
        }),
        history::Check::Unknown => Some(MiscompareWhy {
            offset: from,
            reason: MismatchReason::RetransmitUnchecked { seq: lo },
        }),
    }
}
