//! Tests of block replication: one per rule, then a proptest that runs the secondary against a
//! fake byte-level disk (parent, hidden, active) completing commands in random order, and
//! checks every read and the final images against a model of the SVM's and PVM's disks.

use super::*;
use crate::wire::message::{DiskResult, WriteId};
use proptest::prelude::*;
use std::collections::BTreeMap;

const BS: u64 = 4;
const SIZE: u64 = 64;

fn cfg() -> DiskConfig {
    DiskConfig {
        disk_size: SIZE,
        block_size: BS,
    }
}

fn drain_p(d: &mut PrimaryDisk) -> Vec<DiskOutput> {
    std::iter::from_fn(|| d.poll_output()).collect()
}

fn drain_s(d: &mut SecondaryDisk) -> Vec<DiskOutput> {
    std::iter::from_fn(|| d.poll_output()).collect()
}

fn commands(out: &[DiskOutput]) -> Vec<DiskCommand> {
    out.iter()
        .filter_map(|o| match o {
            DiskOutput::Command(c) => Some(*c),
            _ => None,
        })
        .collect()
}

#[test]
fn bad_block_size_is_rejected() {
    let c = DiskConfig {
        disk_size: 10,
        block_size: 3,
    };
    assert_eq!(
        PrimaryDisk::new(c).unwrap_err(),
        DiskConfigError::BadBlockSize(3)
    );
}

#[test]
fn primary_completes_a_write_only_after_local_and_peer() {
    let mut d = PrimaryDisk::new(cfg()).unwrap();
    d.handle_guest_write(GuestIoId(1), Epoch(3), 8, 4);
    let out = drain_p(&mut d);
    let op = commands(&out)[0].op();
    let DiskOutput::Forward {
        write_id, epoch, ..
    } = out[1]
    else {
        panic!("expected a forward, got {out:?}")
    };
    assert_eq!(epoch, Epoch(3));
    d.handle_op_done(op, Ok(()));
    assert!(drain_p(&mut d).is_empty(), "local alone does not complete");
    assert_eq!(d.in_flight(), 1);
    d.handle_peer_ack(write_id, DiskResult::Written);
    assert_eq!(
        drain_p(&mut d),
        vec![DiskOutput::GuestDone {
            io: GuestIoId(1),
            result: Ok(())
        }]
    );
}

#[test]
fn primary_failover_waives_pending_acks_and_stops_forwarding() {
    let mut d = PrimaryDisk::new(cfg()).unwrap();
    d.handle_guest_write(GuestIoId(1), Epoch(1), 0, 4);
    let op = commands(&drain_p(&mut d))[0].op();
    d.handle_op_done(op, Ok(()));
    d.handle_failover();
    assert_eq!(d.phase(), PrimaryDiskPhase::Solo);
    assert!(matches!(
        drain_p(&mut d)[..],
        [DiskOutput::GuestDone { result: Ok(()), .. }]
    ));
    d.handle_guest_write(GuestIoId(2), Epoch(1), 0, 4);
    let out = drain_p(&mut d);
    assert!(!out.iter().any(|o| matches!(o, DiskOutput::Forward { .. })));
}

#[test]
fn a_link_reset_forwards_every_unacknowledged_write_again_in_order() {
    let mut d = PrimaryDisk::new(cfg()).unwrap();
    let mut forwards = Vec::new();
    for io in 1..=3 {
        d.handle_guest_write(GuestIoId(io), Epoch(2), 4 * io, 4);
        for o in drain_p(&mut d) {
            match o {
                DiskOutput::Command(c) => d.handle_op_done(c.op(), Ok(())),
                DiskOutput::Forward { write_id, .. } => forwards.push(write_id),
                other => panic!("{other:?}"),
            }
        }
    }
    // Write 2 is acknowledged (and completes); the acks of 1 and 3 were lost with the link.
    d.handle_peer_ack(forwards[1], DiskResult::Written);
    drain_p(&mut d);
    d.handle_link_reset();
    let again: Vec<(WriteId, Epoch, u64, u32, GuestIoId)> = drain_p(&mut d)
        .into_iter()
        .map(|o| match o {
            DiskOutput::Forward {
                write_id,
                epoch,
                offset,
                len,
                io,
            } => (write_id, epoch, offset, len, io),
            other => panic!("only forwards, got {other:?}"),
        })
        .collect();
    assert_eq!(
        again,
        vec![
            (forwards[0], Epoch(2), 4, 4, GuestIoId(1)),
            (forwards[2], Epoch(2), 12, 4, GuestIoId(3)),
        ]
    );
    assert_eq!(d.stats().reforwarded, 2);
    // The acks on the new link complete both writes; a late duplicate is a stray.
    d.handle_peer_ack(forwards[0], DiskResult::Written);
    d.handle_peer_ack(forwards[2], DiskResult::Written);
    d.handle_peer_ack(forwards[2], DiskResult::Written);
    assert_eq!(drain_p(&mut d).len(), 2);
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.stats().stray_acks, 1);
}

#[test]
fn primary_reports_a_failed_peer_write_as_an_event() {
    let mut d = PrimaryDisk::new(cfg()).unwrap();
    d.handle_guest_write(GuestIoId(1), Epoch(1), 0, 4);
    let out = drain_p(&mut d);
    let DiskOutput::Forward { write_id, .. } = out[1] else {
        panic!()
    };
    d.handle_peer_ack(write_id, DiskResult::IoError);
    d.handle_peer_ack(write_id, DiskResult::Written);
    assert_eq!(
        drain_p(&mut d),
        vec![DiskOutput::Event(DiskEvent::PeerWriteFailed {
            write_id,
            result: DiskResult::IoError
        })]
    );
    assert_eq!(d.stats().stray_acks, 1);
}

#[test]
fn out_of_range_requests_fail_without_commands() {
    let mut p = PrimaryDisk::new(cfg()).unwrap();
    p.handle_guest_write(GuestIoId(1), Epoch(1), SIZE - 2, 4);
    assert_eq!(
        drain_p(&mut p),
        vec![DiskOutput::GuestDone {
            io: GuestIoId(1),
            result: Err(GuestIoError::OutOfRange)
        }]
    );
    let mut s = SecondaryDisk::new(cfg(), Epoch(0)).unwrap();
    s.handle_peer_write(WriteId(1), Epoch(1), u64::MAX, 4);
    assert_eq!(
        drain_s(&mut s),
        vec![DiskOutput::Ack {
            write_id: WriteId(1),
            result: DiskResult::OutOfRange
        }]
    );
}

#[test]
fn peer_write_copies_before_write_once_per_block_per_epoch() {
    let mut s = SecondaryDisk::new(cfg(), Epoch(0)).unwrap();
    s.handle_peer_write(WriteId(1), Epoch(1), 2, 4); // blocks 0 and 1
    let cmds = commands(&drain_s(&mut s));
    assert_eq!(cmds.len(), 2, "two copies first, the write waits: {cmds:?}");
    assert!(cmds.iter().all(|c| matches!(
        c,
        DiskCommand::CopyBlock {
            from: Layer::Parent,
            to: Layer::Hidden,
            ..
        }
    )));
    for c in &cmds {
        s.handle_op_done(c.op(), Ok(()));
    }
    let cmds2 = commands(&drain_s(&mut s));
    assert!(matches!(
        cmds2[..],
        [DiskCommand::Write {
            layer: Layer::Parent,
            data: DataSource::Peer(WriteId(1)),
            ..
        }]
    ));
    s.handle_op_done(cmds2[0].op(), Ok(()));
    assert!(drain_s(&mut s).contains(&DiskOutput::Ack {
        write_id: WriteId(1),
        result: DiskResult::Written
    }));
    // Same block again in the same epoch: no second copy.
    s.handle_peer_write(WriteId(2), Epoch(1), 0, 1);
    assert!(matches!(
        commands(&drain_s(&mut s))[..],
        [DiskCommand::Write { .. }]
    ));
    assert_eq!(s.stats().cbw_copies, 2);
}

#[test]
fn reads_resolve_active_then_hidden_then_parent() {
    let mut s = SecondaryDisk::new(cfg(), Epoch(0)).unwrap();
    let mut fake = Fake::new();
    s.handle_peer_write(WriteId(1), Epoch(1), 0, 8); // blocks 0,1 -> hidden
    fake.data.insert(DataSource::Peer(WriteId(1)), 9);
    s.handle_guest_write(GuestIoId(1), 4, 4); // block 1 -> active (full block)
    fake.data.insert(DataSource::Guest(GuestIoId(1)), 7);
    fake.run_all(&mut s);
    assert_eq!(s.resolve(0), Layer::Hidden);
    assert_eq!(s.resolve(1), Layer::Active);
    assert_eq!(s.resolve(2), Layer::Parent);
    s.handle_guest_read(GuestIoId(2), 0, 12);
    let cmds = commands(&drain_s(&mut s));
    let layers: Vec<Layer> = cmds
        .iter()
        .map(|c| match c {
            DiskCommand::Read { layer, .. } => *layer,
            _ => panic!("{c:?}"),
        })
        .collect();
    assert_eq!(layers, vec![Layer::Hidden, Layer::Active, Layer::Parent]);
}

#[test]
fn checkpoint_waits_for_earlier_requests_then_empties_overlays() {
    let mut s = SecondaryDisk::new(cfg(), Epoch(0)).unwrap();
    s.handle_guest_write(GuestIoId(1), 0, 2); // partial: copy into active first
    let first = commands(&drain_s(&mut s));
    s.handle_checkpoint(Epoch(1));
    s.handle_guest_read(GuestIoId(2), 0, 4);
    assert!(
        drain_s(&mut s).is_empty(),
        "barrier holds the reset and later requests"
    );
    s.handle_op_done(first[0].op(), Ok(()));
    let write = commands(&drain_s(&mut s));
    s.handle_op_done(write[0].op(), Ok(()));
    let out = drain_s(&mut s);
    let reset = commands(&out);
    assert!(matches!(reset[..], [DiskCommand::ResetOverlays { .. }]));
    s.handle_op_done(reset[0].op(), Ok(()));
    let out = drain_s(&mut s);
    assert!(out.contains(&DiskOutput::Event(DiskEvent::OverlaysReset {
        epoch: Epoch(1)
    })));
    assert!(matches!(
        commands(&out)[..],
        [DiskCommand::Read {
            layer: Layer::Parent,
            ..
        }]
    ));
    assert_eq!(s.active_blocks(), 0);
}

#[test]
fn failed_copy_before_write_fails_the_write_and_keeps_the_view() {
    let mut s = SecondaryDisk::new(cfg(), Epoch(0)).unwrap();
    s.handle_peer_write(WriteId(5), Epoch(1), 0, 4);
    let c = commands(&drain_s(&mut s));
    s.handle_op_done(c[0].op(), Err(DiskIoError::NoSpace));
    let out = drain_s(&mut s);
    assert!(out.contains(&DiskOutput::Ack {
        write_id: WriteId(5),
        result: DiskResult::IoError
    }));
    assert!(out.iter().any(|o| matches!(
        o,
        DiskOutput::Event(DiskEvent::OverlayFailed {
            error: DiskIoError::NoSpace,
            ..
        })
    )));
    assert!(commands(&out).is_empty(), "the parent is not written");
    assert_eq!(s.resolve(0), Layer::Parent);
}

#[test]
fn failover_merges_and_drops_later_primary_writes() {
    let mut s = SecondaryDisk::new(cfg(), Epoch(0)).unwrap();
    let mut fake = Fake::new();
    fake.data.insert(DataSource::Peer(WriteId(1)), 9);
    s.handle_peer_write(WriteId(1), Epoch(1), 0, 4);
    fake.run_all(&mut s);
    s.handle_failover();
    s.handle_peer_write(WriteId(2), Epoch(1), 0, 4);
    assert_eq!(s.stats().writes_after_failover, 1);
    let events = fake.run_all(&mut s);
    assert!(events.contains(&DiskEvent::Merged { blocks: 1 }));
    assert_eq!(s.phase(), SecondaryDiskPhase::Solo);
    assert_eq!(
        fake.parent[0],
        Some(0),
        "the dead primary's write is undone"
    );
}

#[test]
fn late_write_is_reported() {
    let mut s = SecondaryDisk::new(cfg(), Epoch(4)).unwrap();
    s.handle_peer_write(WriteId(1), Epoch(4), 0, 1);
    assert!(
        drain_s(&mut s).contains(&DiskOutput::Event(DiskEvent::LateWrite {
            write_id: WriteId(1),
            epoch: Epoch(4)
        }))
    );
}

/// A byte-level disk with three layers that executes commands.
struct Fake {
    parent: Vec<Option<u8>>,
    hidden: Vec<Option<u8>>,
    active: Vec<Option<u8>>,
    /// The byte value every byte of a write carries.
    data: BTreeMap<DataSource, u8>,
    /// Read buffers: io -> (request offset, bytes).
    reads: BTreeMap<GuestIoId, (u64, Vec<Option<u8>>)>,
    pending: Vec<DiskCommand>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            parent: vec![Some(0); SIZE as usize],
            hidden: vec![None; SIZE as usize],
            active: vec![None; SIZE as usize],
            data: BTreeMap::new(),
            reads: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    fn layer(&mut self, l: Layer) -> &mut Vec<Option<u8>> {
        match l {
            Layer::Parent => &mut self.parent,
            Layer::Hidden => &mut self.hidden,
            Layer::Active => &mut self.active,
        }
    }

    fn exec(&mut self, c: DiskCommand) -> Result<(), String> {
        match c {
            DiskCommand::Read {
                io,
                layer,
                offset,
                len,
                ..
            } => {
                let src: Vec<Option<u8>> =
                    self.layer(layer)[offset as usize..(offset + len) as usize].to_vec();
                if src.iter().any(Option::is_none) {
                    return Err(format!("read of unset bytes: {c:?}"));
                }
                let (req, buf) = self.reads.get_mut(&io).ok_or("read for unknown io")?;
                let at = (offset - *req) as usize;
                buf[at..at + len as usize].copy_from_slice(&src);
            }
            DiskCommand::Write {
                layer,
                offset,
                len,
                data,
                ..
            } => {
                let v = *self.data.get(&data).ok_or("write of unknown data")?;
                for b in &mut self.layer(layer)[offset as usize..(offset + len) as usize] {
                    *b = Some(v);
                }
            }
            DiskCommand::CopyBlock {
                from,
                to,
                offset,
                len,
                ..
            } => {
                let src: Vec<Option<u8>> =
                    self.layer(from)[offset as usize..(offset + len) as usize].to_vec();
                if src.iter().any(Option::is_none) {
                    return Err(format!("copy of unset bytes: {c:?}"));
                }
                self.layer(to)[offset as usize..(offset + len) as usize].copy_from_slice(&src);
            }
            DiskCommand::ResetOverlays { .. } => {
                self.hidden = vec![None; SIZE as usize];
                self.active = vec![None; SIZE as usize];
            }
        }
        Ok(())
    }

    /// Collects new outputs into the pending pool; returns events and guest completions.
    fn collect(&mut self, s: &mut SecondaryDisk, done: &mut Vec<DiskOutput>) -> Vec<DiskEvent> {
        let mut events = Vec::new();
        while let Some(o) = s.poll_output() {
            match o {
                DiskOutput::Command(c) => self.pending.push(c),
                DiskOutput::Event(e) => events.push(e),
                other => done.push(other),
            }
        }
        events
    }

    fn run_all(&mut self, s: &mut SecondaryDisk) -> Vec<DiskEvent> {
        let mut done = Vec::new();
        let mut events = self.collect(s, &mut done);
        while let Some(c) = self.pending.pop() {
            self.exec(c).unwrap();
            s.handle_op_done(c.op(), Ok(()));
            events.extend(self.collect(s, &mut done));
        }
        events
    }
}

#[derive(Clone, Debug)]
enum Op {
    PeerWrite(u64, u64),
    SvmWrite(u64, u64),
    SvmRead(u64, u64),
    Checkpoint,
    Failover,
    Complete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|o| (Just(o), 0..=(SIZE - o).min(13)));
    prop_oneof![
        4 => range.clone().prop_map(|(o, l)| Op::PeerWrite(o, l)),
        4 => range.clone().prop_map(|(o, l)| Op::SvmWrite(o, l)),
        4 => range.prop_map(|(o, l)| Op::SvmRead(o, l)),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Failover),
        10 => any::<usize>().prop_map(Op::Complete),
    ]
}

proptest! {
    /// Read resolution equals a simple model of the SVM's disk after random peer writes, SVM
    /// writes, checkpoints and a failover, with commands completing in random order; and at
    /// the end the parent equals the PVM's disk (replicating) or the SVM's (after failover).
    #[test]
    fn svm_view_matches_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = SecondaryDisk::new(cfg(), Epoch(0)).unwrap();
        let mut fake = Fake::new();
        let mut pvm: Vec<u8> = fake.parent.iter().map(|b| b.unwrap()).collect();
        let mut svm = pvm.clone();
        let mut expected_reads: BTreeMap<GuestIoId, Vec<u8>> = BTreeMap::new();
        let mut done = Vec::new();
        let mut failed_over = false;
        let mut epoch = Epoch(0);
        let mut n = 0u64;
        let mut value = 1u8;
        for o in ops {
            n += 1;
            value = value.wrapping_add(1).max(1);
            match o {
                Op::PeerWrite(off, len) => {
                    fake.data.insert(DataSource::Peer(WriteId(n)), value);
                    s.handle_peer_write(WriteId(n), epoch.next(), off, len as u32);
                    if !failed_over {
                        for b in &mut pvm[off as usize..(off + len) as usize] { *b = value; }
                    }
                }
                Op::SvmWrite(off, len) => {
                    fake.data.insert(DataSource::Guest(GuestIoId(n)), value);
                    s.handle_guest_write(GuestIoId(n), off, len);
                    for b in &mut svm[off as usize..(off + len) as usize] { *b = value; }
                }
                Op::SvmRead(off, len) => {
                    fake.reads.insert(GuestIoId(n), (off, vec![None; len as usize]));
                    expected_reads.insert(GuestIoId(n), svm[off as usize..(off + len) as usize].to_vec());
                    s.handle_guest_read(GuestIoId(n), off, len);
                }
                Op::Checkpoint => {
                    if !failed_over {
                        epoch = epoch.next();
                        s.handle_checkpoint(epoch);
                        svm = pvm.clone();
                    }
                }
                Op::Failover => {
                    s.handle_failover();
                    failed_over = true;
                }
                Op::Complete(i) => {
                    if !fake.pending.is_empty() {
                        let c = fake.pending.remove(i % fake.pending.len());
                        fake.exec(c).map_err(TestCaseError::fail)?;
                        s.handle_op_done(c.op(), Ok(()));
                    }
                }
            }
            fake.collect(&mut s, &mut done);
        }
        while !fake.pending.is_empty() {
            let c = fake.pending.remove(0);
            fake.exec(c).map_err(TestCaseError::fail)?;
            s.handle_op_done(c.op(), Ok(()));
            fake.collect(&mut s, &mut done);
        }
        prop_assert_eq!(s.in_flight(), 0);
        for d in &done {
            if let DiskOutput::GuestDone { io, result } = d {
                prop_assert!(result.is_ok());
                if let Some(exp) = expected_reads.get(io) {
                    let got: Vec<u8> = fake.reads[io].1.iter().map(|b| b.unwrap_or(0xee)).collect();
                    prop_assert_eq!(&got, exp, "read {:?}", io);
                }
            }
            if let DiskOutput::Ack { result, .. } = d {
                prop_assert_eq!(*result, DiskResult::Written);
            }
        }
        let parent: Vec<u8> = fake.parent.iter().map(|b| b.unwrap()).collect();
        if failed_over {
            prop_assert_eq!(parent, svm, "after failover the parent is the SVM's disk");
        } else {
            prop_assert_eq!(parent, pvm, "the parent mirrors the PVM's disk");
            let view: Vec<u8> = (0..SIZE).map(|i| {
                let l = s.resolve(i / BS);
                fake.layer(l)[i as usize].unwrap_or(0xee)
            }).collect();
            prop_assert_eq!(view, svm, "the overlays give the SVM's disk");
        }
    }
}
