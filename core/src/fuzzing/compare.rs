//! Fuzz body for the `compare` target: the comparator's output-commit rule under arbitrary
//! sequences of frames, timeouts, checkpoints and failovers.
//!
//! The input is read as a list of operations (`Op`): primary or secondary TCP segments on
//! three flows (built from templates; the payload byte at sequence number `x` is a fixed
//! function of `x`, so the two sides agree unless an operation flips a byte), UDP, ARP and
//! unreadable frames, mirrored secondary copies of recent primary datagrams, time advances
//! with `handle_timeout`, `checkpoint_done`, `release_all` and `attach_secondary`.
//!
//! Every primary frame carries a unique tag (the IPv4 identification field, or the first bytes
//! of an ARP body or raw frame), so each one is a distinct byte string. After each operation the
//! body drains the outputs and asserts:
//! - no frame is released twice, and only frames that were sent are released (a TCP segment's
//!   window and checksum aside: the window clamp may lower the window, `compare::window`);
//! - outside `checkpoint_done` / `release_all` / solo forwarding, a released frame is justified
//!   by a rule: TCP bytes each either already delivered to the client or equal to a byte the
//!   secondary sent at the same sequence number since the last checkpoint (a segment without
//!   payload has none); a datagram or frame whose compared bytes equal an unused secondary
//!   frame's;
//! - the min-ACK guard: outside those flushes, a released TCP segment carrying ACK (with or
//!   without payload; RST exempt) acknowledges no more than the highest ACK the secondary sent
//!   on its flow (a checkpoint or a new secondary sets that to the primary's highest ACK);
//! - the control-flag rule: outside those flushes, a released TCP segment carrying FIN or RST
//!   does so at a stream position where the secondary sent the same flag, and one carrying SYN
//!   (or SYN-ACK) only after the secondary sent one of the same kind acknowledging the same
//!   client ISN (a checkpoint or a new secondary gives the secondary every control flag the
//!   primary had sent);
//! - `handle_timeout` never releases anything, and afterwards `poll_timeout` is in the future
//!   (no busy loop);
//! - the stats' conservation equations hold; and at the end, after a final checkpoint, every
//!   primary frame was released exactly once.

use crate::compare::testkit::{self, Headers};
use crate::compare::{Comparator, CompareConfig, CompareOutput, Phase};
use crate::packet::{FlowKey, Kind, SeqNum, classify_or_opaque, tcp_flags};
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, BTreeSet};

/// A primary frame as the model knows it: a TCP segment's window and checksum fields zeroed
/// (the window clamp may rewrite them; the unique tag is elsewhere), other frames as sent.
fn sent_key(frame: &[u8]) -> Vec<u8> {
    let mut key = frame.to_vec();
    if let Kind::Tcp(info) = classify_or_opaque(frame).kind
        && let Some(fields) = key.get_mut(info.l4_offset + 14..info.l4_offset + 18)
    {
        fields.fill(0);
    }
    key
}

/// The operations an input encodes, one selector byte each plus parameter bytes.
#[derive(Clone, Copy, Debug)]
enum Op {
    PrimaryTcp,
    SecondaryTcp,
    PrimaryOther,
    MirrorOther,
    Advance,
    CheckpointDone,
    Lifecycle,
}

fn op(selector: u8) -> Op {
    match selector % 12 {
        0..=2 => Op::PrimaryTcp,
        3..=5 => Op::SecondaryTcp,
        6 => Op::PrimaryOther,
        7 | 8 => Op::MirrorOther,
        9 => Op::Advance,
        10 => Op::CheckpointDone,
        _ => Op::Lifecycle,
    }
}

/// Reads input bytes, yielding zeros once exhausted.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.at.min(self.data.len());
        let end = (self.at + n).min(self.data.len());
        self.at += n;
        &self.data[start..end]
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Payload byte at sequence number `x` of flow `f`: both sides derive the same stream.
fn stream_byte(f: usize, x: u32) -> u8 {
    (x.wrapping_mul(31) ^ (f as u32).wrapping_mul(0x9e)) as u8
}

fn flow_headers(f: usize) -> Headers {
    Headers {
        src_port: 80 + f as u16,
        vlan: (f == 2).then_some(5),
        ..Headers::default()
    }
}

/// Writes `tag` into the IPv4 identification field (ignored by the comparator).
fn tag_ipv4(frame: &mut [u8], tag: u16) {
    let l3 = classify_or_opaque(frame).l3_offset;
    if frame.len() >= l3 + 6 {
        frame[l3 + 4..l3 + 6].copy_from_slice(&tag.to_be_bytes());
    }
}

/// What the model knows.
#[derive(Default)]
struct Model {
    /// Every primary frame sent, and whether it was released.
    sent: BTreeMap<Vec<u8>, bool>,
    /// Secondary TCP bytes since the last checkpoint: (flow, seq) -> values seen.
    secondary_bytes: BTreeMap<(FlowKey, u32), BTreeSet<u8>>,
    /// Secondary non-TCP compared bodies since the last checkpoint, with counts.
    secondary_bodies: BTreeMap<(FlowKey, Vec<u8>), usize>,
    /// TCP byte positions delivered to the client, per flow.
    delivered: BTreeSet<(FlowKey, u32)>,
    /// Per flow: bytes before this position are covered (primary SYN or a checkpoint).
    covered_below: BTreeMap<FlowKey, SeqNum>,
    /// Per flow: end of the furthest primary data sent.
    sent_end: BTreeMap<FlowKey, SeqNum>,
    /// Per flow: highest ACK number on any primary segment.
    primary_ack: BTreeMap<FlowKey, SeqNum>,
    /// Per flow: highest ACK the secondary has sent, or the primary's as of the last
    /// checkpoint (the secondary is then its copy).
    secondary_ack: BTreeMap<FlowKey, SeqNum>,
    /// Control flags the primary sent: (flow, flag, position), see [`controls`].
    primary_controls: BTreeSet<(FlowKey, u8, u32)>,
    /// Control flags the secondary sent, plus the primary's as of each checkpoint.
    secondary_controls: BTreeSet<(FlowKey, u8, u32)>,
}

/// The control flags of a TCP segment and where they sit: FIN and RST at the end of the
/// payload; SYN (kind `SYN` or `SYN | ACK`) at the client ISN + 1 it acknowledges (0 without
/// ACK), since its own sequence number is the sender's ISN, which the rewriter cannot map.
fn controls(info: &crate::packet::TcpInfo) -> Vec<(u8, u32)> {
    let start = if info.has(tcp_flags::SYN) {
        info.seq.wrapping_add(1)
    } else {
        info.seq
    };
    let end = start.wrapping_add(info.payload_len() as u32).0;
    let mut out = Vec::new();
    if info.has(tcp_flags::FIN) {
        out.push((tcp_flags::FIN, end));
    }
    if info.has(tcp_flags::RST) {
        out.push((tcp_flags::RST, end));
    }
    if info.has(tcp_flags::SYN) {
        if info.has(tcp_flags::ACK) {
            out.push((tcp_flags::SYN | tcp_flags::ACK, info.ack.0));
        } else {
            out.push((tcp_flags::SYN, 0));
        }
    }
    out
}

fn raise(map: &mut BTreeMap<FlowKey, SeqNum>, key: FlowKey, ack: SeqNum) {
    let e = map.entry(key).or_insert(ack);
    *e = e.max_seq(ack);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Context {
    /// Releases here must be justified by a comparison rule.
    Compared,
    /// A checkpoint, failover flush or solo forwarding covers them.
    Covered,
    /// Nothing may be released.
    Timeout,
}

impl Model {
    fn note_primary(&mut self, frame: &[u8]) {
        let c = classify_or_opaque(frame);
        if let Kind::Tcp(info) = c.kind {
            let start = if info.has(tcp_flags::SYN) {
                let start = info.seq.wrapping_add(1);
                self.covered_below.insert(c.key, start);
                start
            } else {
                info.seq
            };
            let end = start.wrapping_add(info.payload_len() as u32);
            let e = self.sent_end.entry(c.key).or_insert(end);
            *e = e.max_seq(end);
            if info.has(tcp_flags::ACK) {
                raise(&mut self.primary_ack, c.key, info.ack);
            }
            for (flag, at) in controls(&info) {
                self.primary_controls.insert((c.key, flag, at));
            }
        }
        assert!(
            self.sent.insert(sent_key(frame), false).is_none(),
            "fuzz harness: primary tags must be unique"
        );
    }

    fn note_secondary(&mut self, frame: &[u8]) {
        let c = classify_or_opaque(frame);
        match c.kind {
            Kind::Tcp(info) => {
                if info.has(tcp_flags::ACK) {
                    raise(&mut self.secondary_ack, c.key, info.ack);
                }
                for (flag, at) in controls(&info) {
                    self.secondary_controls.insert((c.key, flag, at));
                }
                let start = if info.has(tcp_flags::SYN) {
                    info.seq.wrapping_add(1)
                } else {
                    info.seq
                };
                for (i, b) in frame[info.payload_start..info.payload_end]
                    .iter()
                    .enumerate()
                {
                    let x = start.wrapping_add(i as u32).0;
                    self.secondary_bytes
                        .entry((c.key, x))
                        .or_default()
                        .insert(*b);
                }
            }
            Kind::Ip { payload, .. } => {
                *self
                    .secondary_bodies
                    .entry((c.key, frame[payload].to_vec()))
                    .or_default() += 1;
            }
            Kind::Link => {
                *self
                    .secondary_bodies
                    .entry((c.key, frame.to_vec()))
                    .or_default() += 1;
            }
        }
    }

    /// A window update the comparator built (`compare::window_update`): a pure ACK that
    /// acknowledges nothing the secondary has not (a checkpoint counts as the secondary
    /// reaching the primary's ACK).
    fn window_update(&self, frame: &[u8]) {
        let c = classify_or_opaque(frame);
        let Kind::Tcp(info) = c.kind else {
            panic!("a window update that is not TCP")
        };
        assert_eq!(info.flags, tcp_flags::ACK, "a window update is a pure ACK");
        assert_eq!(info.payload_len(), 0, "a window update carries no payload");
        let allowed = self.secondary_ack.get(&c.key);
        assert!(
            allowed.is_some_and(|s| !s.before(info.ack)),
            "window update acknowledging {:?}, secondary acknowledged {allowed:?}",
            info.ack
        );
    }

    fn checkpoint(&mut self) {
        self.secondary_bytes.clear();
        self.secondary_bodies.clear();
        for (key, end) in &self.sent_end {
            let cov = self.covered_below.entry(*key).or_insert(*end);
            *cov = cov.max_seq(*end);
        }
        for (key, ack) in &self.primary_ack {
            raise(&mut self.secondary_ack, *key, *ack);
        }
        self.secondary_controls
            .extend(self.primary_controls.iter().copied());
    }

    fn released(&mut self, frame: &[u8], ctx: Context) {
        match self.sent.get_mut(&sent_key(frame)) {
            None => panic!("released a frame that was never sent as primary"),
            Some(true) => panic!("released a primary frame twice"),
            Some(flag) => *flag = true,
        }
        assert_ne!(ctx, Context::Timeout, "handle_timeout released a frame");
        let c = classify_or_opaque(frame);
        match c.kind {
            Kind::Tcp(info) => {
                if ctx == Context::Compared && info.has(tcp_flags::ACK) && !info.has(tcp_flags::RST)
                {
                    let allowed = self.secondary_ack.get(&c.key);
                    assert!(
                        allowed.is_some_and(|s| !s.before(info.ack)),
                        "TCP segment acknowledging {:?} released, secondary acknowledged {allowed:?}",
                        info.ack
                    );
                }
                if ctx == Context::Compared {
                    for (flag, at) in controls(&info) {
                        assert!(
                            self.secondary_controls.contains(&(c.key, flag, at)),
                            "TCP control flag {flag:#x} at {at} released before the secondary sent it"
                        );
                    }
                }
                let start = if info.has(tcp_flags::SYN) {
                    info.seq.wrapping_add(1)
                } else {
                    info.seq
                };
                for (i, b) in frame[info.payload_start..info.payload_end]
                    .iter()
                    .enumerate()
                {
                    let x = start.wrapping_add(i as u32);
                    if ctx == Context::Compared {
                        let delivered = self.delivered.contains(&(c.key, x.0))
                            || self
                                .covered_below
                                .get(&c.key)
                                .is_some_and(|cov| x.before(*cov));
                        let matched = self
                            .secondary_bytes
                            .get(&(c.key, x.0))
                            .is_some_and(|seen| seen.contains(b));
                        assert!(
                            delivered || matched,
                            "TCP byte at {x:?} released without a matching secondary byte"
                        );
                    }
                    self.delivered.insert((c.key, x.0));
                }
            }
            Kind::Ip { payload, .. } if ctx == Context::Compared => {
                self.use_body(c.key, &frame[payload]);
            }
            Kind::Link if ctx == Context::Compared => self.use_body(c.key, frame),
            _ => {}
        }
    }

    fn use_body(&mut self, key: FlowKey, body: &[u8]) {
        let entry = self.secondary_bodies.get_mut(&(key, body.to_vec()));
        match entry {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!("datagram released without an equal secondary frame"),
        }
    }
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let config = CompareConfig {
        max_queue_frames: 6,
        max_flows: 4,
        compare_timeout: Duration::from_millis(300),
        flow_idle_timeout: Duration::from_millis(2000),
        closed_flow_linger: Duration::from_millis(700),
        datagram_reorder_window: 3,
        retransmit_history: 96,
    };
    let mut cmp = Comparator::new(config).expect("fuzz config is valid");
    let mut model = Model::default();
    let mut input = Bytes { data, at: 0 };
    let mut now = Instant::ZERO;
    let mut tag: u16 = 0;
    let mut next_seq = [[SeqNum(1000), SeqNum(5000), SeqNum(u32::MAX - 40)]; 2];
    let mut recent: Vec<Vec<u8>> = Vec::new();

    for _ in 0..2000 {
        if input.done() {
            break;
        }
        now += Duration::from_millis(1);
        let mut ctx = if cmp.phase() == Phase::Solo {
            Context::Covered
        } else {
            Context::Compared
        };
        match op(input.next()) {
            side_op @ (Op::PrimaryTcp | Op::SecondaryTcp) => {
                let side = usize::from(matches!(side_op, Op::SecondaryTcp));
                let (f, jump, len, flags, ack, flip) = (
                    usize::from(input.next() % 3),
                    input.next(),
                    usize::from(input.next() % 48),
                    input.next(),
                    input.next(),
                    input.next(),
                );
                let cursor = &mut next_seq[side][f];
                let seq = if jump < 200 {
                    *cursor
                } else {
                    cursor.wrapping_add((i32::from(jump) - 228) as u32)
                };
                let end = seq.wrapping_add(len as u32);
                *cursor = cursor.max_seq(end);
                let mut payload: Vec<u8> = (0..len)
                    .map(|i| stream_byte(f, seq.wrapping_add(i as u32).0))
                    .collect();
                if side == 1 && flip == 0xff && !payload.is_empty() {
                    let at = usize::from(jump) % payload.len();
                    payload[at] ^= 0x5a;
                }
                let mut tcp_flags_set = tcp_flags::ACK;
                let mut header_seq = seq.0;
                match flags % 16 {
                    0 => {
                        tcp_flags_set |= tcp_flags::SYN;
                        header_seq = seq.0.wrapping_sub(1);
                    }
                    1 => tcp_flags_set |= tcp_flags::FIN,
                    // An RST with ACK on odd ACK bytes, without on even ones.
                    2 if ack % 2 == 1 => tcp_flags_set |= tcp_flags::RST,
                    2 => tcp_flags_set = tcp_flags::RST,
                    _ => {}
                }
                let mut frame = testkit::tcp(
                    &flow_headers(f),
                    header_seq,
                    1 + u32::from(ack % 4),
                    tcp_flags_set,
                    &payload,
                );
                if side == 0 {
                    tag = tag.wrapping_add(1);
                    tag_ipv4(&mut frame, tag);
                    model.note_primary(&frame);
                    cmp.handle_primary(now, frame);
                } else {
                    model.note_secondary(&frame);
                    cmp.handle_secondary(now, frame);
                }
            }
            Op::PrimaryOther => {
                let kind = input.next();
                let n = usize::from(input.next() % 16);
                let body = input.take(n).to_vec();
                tag = tag.wrapping_add(1);
                let mut frame = match kind % 3 {
                    0 => {
                        let mut f = testkit::udp(&flow_headers(usize::from(kind % 2)), &body);
                        tag_ipv4(&mut f, tag);
                        f
                    }
                    1 => {
                        let mut b = tag.to_be_bytes().to_vec();
                        b.extend_from_slice(&body);
                        testkit::arp(&b)
                    }
                    _ => {
                        // Shorter than an Ethernet header: unreadable, compared whole.
                        let mut b = tag.to_be_bytes().to_vec();
                        b.extend_from_slice(&body[..body.len().min(10)]);
                        b
                    }
                };
                frame.shrink_to_fit();
                recent.push(frame.clone());
                if recent.len() > 8 {
                    recent.remove(0);
                }
                model.note_primary(&frame);
                cmp.handle_primary(now, frame);
            }
            Op::MirrorOther => {
                let (pick, mutate) = (input.next(), input.next());
                if !recent.is_empty() {
                    let mut frame = recent[usize::from(pick) % recent.len()].clone();
                    if mutate >= 0xf0 {
                        let at = usize::from(mutate) % frame.len();
                        frame[at] ^= 1;
                    }
                    model.note_secondary(&frame);
                    cmp.handle_secondary(now, frame);
                }
            }
            Op::Advance => {
                now += Duration::from_millis(u64::from(input.next()) * 20);
                ctx = Context::Timeout;
                cmp.handle_timeout(now);
                if let Some(deadline) = cmp.poll_timeout() {
                    assert!(
                        deadline > now,
                        "poll_timeout not in the future after handle_timeout"
                    );
                }
            }
            Op::CheckpointDone => {
                ctx = Context::Covered;
                cmp.checkpoint_done(now);
                model.checkpoint();
            }
            Op::Lifecycle => {
                ctx = Context::Covered;
                if input.next().is_multiple_of(2) {
                    cmp.release_all(now);
                } else {
                    cmp.attach_secondary(now);
                }
                model.checkpoint();
            }
        }
        drain(&mut cmp, &mut model, ctx);
    }

    // A final checkpoint releases everything still held: each primary frame exactly once.
    cmp.checkpoint_done(now);
    model.checkpoint();
    drain(&mut cmp, &mut model, Context::Covered);
    assert_eq!(cmp.stats().held_primary, 0);
    assert!(
        model.sent.values().all(|released| *released),
        "a primary frame was never released"
    );
}

fn drain(cmp: &mut Comparator, model: &mut Model, ctx: Context) {
    while let Some(out) = cmp.poll_output() {
        match out {
            CompareOutput::Release(frame) => model.released(&frame, ctx),
            CompareOutput::WindowUpdate(frame) => model.window_update(&frame),
            _ => {}
        }
    }
    assert!(
        cmp.stats().is_conserved(),
        "stats not conserved: {:?}",
        cmp.stats()
    );
}
