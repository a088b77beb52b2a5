//! Tests of the wire module: shared builders and strategies here, one rule per test in
//! [`rules`], property tests in [`props`], reading straight into the decoder in [`read_with`].
//!
//! The builders can produce frames the encoder never would (another version, unknown flags,
//! a message that lies about its contents) but with correct checksums, so each decoding rule
//! can be reached on its own.

mod auth;
mod props;
mod read_with;
mod rules;
mod seeds;
mod zero_pages;

use proptest::prelude::*;

use super::*;
use crate::ids::{CheckpointReason, ClusterId, Epoch, NicId, NodeId, PageRange, Role, Term};

/// A frame with the given raw parts and both CRCs computed, as a peer could send it.
pub(super) fn raw_frame(version: u16, flags: u16, message: &[u8], bulk: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(&(bulk.len() as u32).to_be_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_be_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(bulk);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Recomputes both CRCs of a frame whose header or body a test edited.
pub(super) fn reseal(frame: &mut [u8]) {
    let header_crc = crc32c::crc32c(&frame[..16]);
    frame[16..20].copy_from_slice(&header_crc.to_be_bytes());
    let end = frame.len() - TRAILER_LEN;
    let crc = crc32c::crc32c(&frame[..end]);
    frame[end..].copy_from_slice(&crc.to_be_bytes());
}

/// Encodes one frame, panicking on failure (for messages the test knows are valid).
pub(super) fn frame_of(message: &Message, bulk: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(message, bulk, &mut out).expect("valid message encodes");
    out
}

/// The message part bincode produces for `message`.
pub(super) fn message_bytes(message: &Message) -> Vec<u8> {
    let frame = frame_of(message, &bulk_for(message));
    let len = u32::from_be_bytes(frame[8..12].try_into().unwrap()) as usize;
    frame[HEADER_LEN..HEADER_LEN + len].to_vec()
}

/// A bulk payload that satisfies `message`'s rule (pattern bytes, or a small frame for `Any`).
pub(super) fn bulk_for(message: &Message) -> Vec<u8> {
    match message.bulk_rule() {
        BulkRule::None => Vec::new(),
        BulkRule::Any => (0..64u8).collect(),
        BulkRule::Exact(Some(n)) => (0..n).map(|i| (i % 251) as u8).collect(),
        BulkRule::Exact(None) => panic!("example message with an impossible bulk rule"),
    }
}

/// One example of every message kind, in wire order.
pub(super) fn examples() -> Vec<Message> {
    let ranges = vec![
        PageRange {
            first: 16,
            count: 2,
        },
        PageRange {
            first: 1 << 20,
            count: 1,
        },
    ];
    vec![
        Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: ClusterId(7),
            node_id: NodeId(1),
            role: Role::Primary,
            term: Term(3),
            last_applied_epoch: Epoch(41),
            vm_fingerprint: 0x0123_4567_89ab_cdef,
        },
        Message::HelloAccept {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: ClusterId(7),
            node_id: NodeId(2),
            role: Role::Secondary,
            term: Term(3),
            last_applied_epoch: Epoch(41),
        },
        Message::HelloReject {
            reason: HelloRejectReason::StaleTerm { current: Term(9) },
            term: Term(9),
        },
        Message::Heartbeat {
            term: Term(3),
            seq: 1000,
            epoch: Epoch(42),
        },
        Message::HeartbeatEcho {
            term: Term(3),
            seq: 1000,
            epoch: Epoch(42),
        },
        Message::Ack { seq: 5 },
        Message::MirroredFrame {
            epoch: Epoch(42),
            nic: NicId(1),
        },
        Message::SecondaryOutput { epoch: Epoch(41) },
        Message::CheckpointRequest {
            epoch: Epoch(42),
            reason: CheckpointReason::Miscompare,
        },
        Message::CheckpointReady { epoch: Epoch(42) },
        // Its second page is zero: two pages of bulk.
        Message::PageBatch {
            epoch: Epoch(42),
            batch: 0,
            ranges: ranges.clone(),
            zero: ZeroPages::from_flags([false, true, false]),
        },
        Message::DeviceState { epoch: Epoch(42) },
        Message::CheckpointSent {
            epoch: Epoch(42),
            batches: 1,
            pages: 3,
            bytes: 2 * PAGE_SIZE + 64,
        },
        Message::CheckpointReceived { epoch: Epoch(42) },
        Message::CheckpointLoaded { epoch: Epoch(42) },
        Message::CheckpointAbort {
            epoch: Epoch(43),
            reason: AbortReason::Timeout,
        },
        Message::DiskWrite {
            epoch: Epoch(42),
            write_id: WriteId(77),
            offset: 512 * 1024,
            len: 512,
        },
        Message::DiskAck {
            write_id: WriteId(77),
            result: DiskResult::Written,
        },
        Message::Goodbye {
            term: Term(3),
            reason: GoodbyeReason::Shutdown,
        },
        Message::TermAnnounce {
            term: Term(4),
            node_id: NodeId(2),
        },
        Message::SyncStart {
            term: Term(4),
            memory_bytes: 1 << 30,
            disk_bytes: 10 << 30,
        },
        Message::SyncProgress {
            term: Term(4),
            memory_bytes_done: 1 << 29,
            disk_bytes_done: 0,
        },
        Message::SyncDone {
            term: Term(4),
            epoch: Epoch(1),
        },
        Message::LeaseRequest {
            term: Term(4),
            node_id: NodeId(2),
            duration_ms: 3000,
        },
        Message::LeaseGrant {
            term: Term(4),
            node_id: NodeId(2),
            valid_for_ms: 3000,
        },
        Message::LeaseDenied {
            term: Term(4),
            holder: NodeId(1),
            current_term: Term(5),
        },
        Message::SyncPages {
            term: Term(4),
            batch: 9,
            zero: ZeroPages::none(3),
            ranges,
        },
        Message::SyncDisk {
            term: Term(4),
            offset: 0,
            len: 4096,
        },
        Message::ClientTranslation {
            part: 0,
            last: true,
            conns: vec![
                crate::rewrite::TranslatedConn {
                    key: crate::rewrite::ConnKey {
                        vlan: None,
                        guest_addr: "10.0.0.2".parse().unwrap(),
                        guest_port: 80,
                        peer_addr: "10.0.0.9".parse().unwrap(),
                        peer_port: 40_000,
                    },
                    offset: 0x8000_0001,
                },
                crate::rewrite::TranslatedConn {
                    key: crate::rewrite::ConnKey {
                        vlan: Some(42),
                        guest_addr: "fd00::2".parse().unwrap(),
                        guest_port: 443,
                        peer_addr: "2001:db8::9".parse().unwrap(),
                        peer_port: 1,
                    },
                    offset: 7,
                },
            ],
        },
    ]
}

// ---- proptest strategies ------------------------------------------------------------------

fn epoch() -> impl Strategy<Value = Epoch> {
    any::<u64>().prop_map(Epoch)
}

fn term() -> impl Strategy<Value = Term> {
    any::<u64>().prop_map(Term)
}

fn node() -> impl Strategy<Value = NodeId> {
    any::<u64>().prop_map(NodeId)
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Primary), Just(Role::Secondary)]
}

fn reason() -> impl Strategy<Value = CheckpointReason> {
    prop_oneof![
        Just(CheckpointReason::Periodic),
        Just(CheckpointReason::Miscompare),
        Just(CheckpointReason::CompareTimeout),
        Just(CheckpointReason::QueueFull),
        Just(CheckpointReason::FlowTableFull),
        Just(CheckpointReason::Forced),
        Just(CheckpointReason::IntervalChanged),
    ]
}

/// Page ranges with small counts, so their bulk stays small.
fn ranges() -> impl Strategy<Value = Vec<PageRange>> {
    prop::collection::vec(
        (any::<u64>(), 0u64..3).prop_map(|(first, count)| PageRange { first, count }),
        0..4,
    )
}

/// A zero map for `ranges` whose page `i` is zero when bit `i % 64` of `bits` is set.
fn zero_map(ranges: &[PageRange], bits: u64) -> ZeroPages {
    let pages: u64 = ranges.iter().map(|r| r.count).sum();
    ZeroPages::from_flags((0..pages).map(|i| bits & (1 << (i % 64)) != 0))
}

fn hello_reject_reason() -> impl Strategy<Value = HelloRejectReason> {
    prop_oneof![
        any::<u16>().prop_map(|supported| HelloRejectReason::VersionMismatch { supported }),
        any::<u64>().prop_map(|c| HelloRejectReason::ClusterMismatch {
            expected: ClusterId(c)
        }),
        role().prop_map(|ours| HelloRejectReason::RoleConflict { ours }),
        term().prop_map(|current| HelloRejectReason::StaleTerm { current }),
        any::<u64>().prop_map(|expected| HelloRejectReason::VmMismatch { expected }),
    ]
}

/// Any message, with arbitrary field values.
pub(super) fn message() -> BoxedStrategy<Message> {
    let abort = prop_oneof![
        Just(AbortReason::Timeout),
        Just(AbortReason::VmFailure),
        Just(AbortReason::DiskFailure),
        Just(AbortReason::Protocol),
        Just(AbortReason::Shutdown),
        Just(AbortReason::LinkReset),
    ];
    let disk_result = prop_oneof![
        Just(DiskResult::Written),
        Just(DiskResult::OutOfRange),
        Just(DiskResult::IoError),
    ];
    let goodbye = prop_oneof![
        Just(GoodbyeReason::Shutdown),
        Just(GoodbyeReason::FailedOver),
        Just(GoodbyeReason::Fenced),
        Just(GoodbyeReason::ProtocolError),
    ];
    let hello = || (any::<u16>(), any::<u64>(), node(), role(), term(), epoch());
    prop_oneof![
        (hello(), any::<u64>()).prop_map(|((v, c, n, r, t, e), f)| Message::Hello {
            protocol_version: v,
            cluster_id: ClusterId(c),
            node_id: n,
            role: r,
            term: t,
            last_applied_epoch: e,
            vm_fingerprint: f,
        }),
        hello().prop_map(|(v, c, n, r, t, e)| Message::HelloAccept {
            protocol_version: v,
            cluster_id: ClusterId(c),
            node_id: n,
            role: r,
            term: t,
            last_applied_epoch: e,
        }),
        (hello_reject_reason(), term())
            .prop_map(|(reason, term)| Message::HelloReject { reason, term }),
        (term(), any::<u64>(), epoch()).prop_map(|(term, seq, epoch)| Message::Heartbeat {
            term,
            seq,
            epoch
        }),
        (term(), any::<u64>(), epoch()).prop_map(|(term, seq, epoch)| Message::HeartbeatEcho {
            term,
            seq,
            epoch
        }),
        any::<u64>().prop_map(|seq| Message::Ack { seq }),
        (epoch(), any::<u8>()).prop_map(|(epoch, n)| Message::MirroredFrame {
            epoch,
            nic: NicId(n)
        }),
        epoch().prop_map(|epoch| Message::SecondaryOutput { epoch }),
        (epoch(), reason())
            .prop_map(|(epoch, reason)| Message::CheckpointRequest { epoch, reason }),
        epoch().prop_map(|epoch| Message::CheckpointReady { epoch }),
        (epoch(), any::<u32>(), ranges(), any::<u64>()).prop_map(|(epoch, batch, ranges, z)| {
            Message::PageBatch {
                epoch,
                batch,
                zero: zero_map(&ranges, z),
                ranges,
            }
        }),
        epoch().prop_map(|epoch| Message::DeviceState { epoch }),
        (epoch(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(epoch, batches, pages, bytes)| Message::CheckpointSent {
                epoch,
                batches,
                pages,
                bytes,
            }
        ),
        epoch().prop_map(|epoch| Message::CheckpointReceived { epoch }),
        epoch().prop_map(|epoch| Message::CheckpointLoaded { epoch }),
        (epoch(), abort).prop_map(|(epoch, reason)| Message::CheckpointAbort { epoch, reason }),
        (epoch(), any::<u64>(), any::<u64>(), 0u32..2048).prop_map(|(epoch, id, offset, len)| {
            Message::DiskWrite {
                epoch,
                write_id: WriteId(id),
                offset,
                len,
            }
        }),
        (any::<u64>(), disk_result).prop_map(|(id, result)| Message::DiskAck {
            write_id: WriteId(id),
            result,
        }),
        (term(), goodbye).prop_map(|(term, reason)| Message::Goodbye { term, reason }),
        (term(), node()).prop_map(|(term, node_id)| Message::TermAnnounce { term, node_id }),
        (term(), any::<u64>(), any::<u64>()).prop_map(|(term, m, d)| Message::SyncStart {
            term,
            memory_bytes: m,
            disk_bytes: d,
        }),
        (term(), any::<u64>(), any::<u64>()).prop_map(|(term, m, d)| {
            Message::SyncProgress {
                term,
                memory_bytes_done: m,
                disk_bytes_done: d,
            }
        }),
        (term(), epoch()).prop_map(|(term, epoch)| Message::SyncDone { term, epoch }),
        (term(), node(), any::<u64>()).prop_map(|(term, node_id, d)| Message::LeaseRequest {
            term,
            node_id,
            duration_ms: d,
        }),
        (term(), node(), any::<u64>()).prop_map(|(term, node_id, v)| Message::LeaseGrant {
            term,
            node_id,
            valid_for_ms: v,
        }),
        (term(), node(), term()).prop_map(|(term, holder, current_term)| {
            Message::LeaseDenied {
                term,
                holder,
                current_term,
            }
        }),
        (term(), any::<u32>(), ranges(), any::<u64>()).prop_map(|(term, batch, ranges, z)| {
            Message::SyncPages {
                term,
                batch,
                zero: zero_map(&ranges, z),
                ranges,
            }
        }),
        (term(), any::<u64>(), 0u32..2048).prop_map(|(term, offset, len)| Message::SyncDisk {
            term,
            offset,
            len,
        }),
        (
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec(translated_conn(), 0..4)
        )
            .prop_map(|(part, last, conns)| Message::ClientTranslation {
                part,
                last,
                conns
            }),
    ]
    .boxed()
}

/// One connection of a client-facing translation snapshot, IPv4 or IPv6, tagged or not.
fn translated_conn() -> impl Strategy<Value = crate::rewrite::TranslatedConn> {
    let addr = prop_oneof![
        any::<[u8; 4]>().prop_map(core::net::IpAddr::from),
        any::<[u8; 16]>().prop_map(core::net::IpAddr::from),
    ];
    (
        proptest::option::of(0u16..4096),
        addr.clone(),
        any::<u16>(),
        addr,
        any::<u16>(),
        any::<u32>(),
    )
        .prop_map(
            |(vlan, guest_addr, guest_port, peer_addr, peer_port, offset)| {
                crate::rewrite::TranslatedConn {
                    key: crate::rewrite::ConnKey {
                        vlan,
                        guest_addr,
                        guest_port,
                        peer_addr,
                        peer_port,
                    },
                    offset,
                }
            },
        )
}

/// A message with an arbitrary bulk payload that fits its rule.
pub(super) fn frame_parts() -> BoxedStrategy<(Message, Vec<u8>)> {
    message()
        .prop_flat_map(|m| {
            let bulk = match m.bulk_rule() {
                BulkRule::None => Just(Vec::new()).boxed(),
                BulkRule::Any => prop::collection::vec(any::<u8>(), 0..1600).boxed(),
                BulkRule::Exact(Some(n)) => {
                    prop::collection::vec(any::<u8>(), n as usize..=n as usize).boxed()
                }
                BulkRule::Exact(None) => unreachable!("strategy keeps page counts small"),
            };
            (Just(m), bulk)
        })
        .boxed()
}
