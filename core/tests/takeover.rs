//! The replication sub-machines composed by hand, as the `Node` will compose them. A secondary
//! whose primary dies in the middle of a checkpoint transfer detects the loss (Heartbeat),
//! starts a takeover (Failover), discards the partial epoch and resumes its VM (Checkpointer),
//! merges its disk overlays (SecondaryDisk), and releases output only once the arbiter granted
//! the new term's lease (Lease + Arbiter), and stops releasing when the lease cannot be renewed.
//! A primary whose secondary dies resumes its paused PVM, waives disk acks and releases once it
//! holds the lease. A partition with the arbiter reachable by both leaves exactly one writer.

use colo_core::checkpoint::{
    CheckpointConfig, CheckpointEvent, CheckpointOutput, SecondaryCheckpointer, SecondaryPhase,
    VmCommand, VmCompletion,
};
use colo_core::disk::{DiskCommand, DiskConfig, DiskEvent, DiskOutput, SecondaryDisk};
use colo_core::failover::{Arbiter, Failover, FailoverEvent, FailoverReason, LeaseConfig, Mode};
use colo_core::heartbeat::{Heartbeat, HeartbeatConfig, HeartbeatEvent};
use colo_core::ids::{CheckpointReason, Epoch, NodeId, Role, Term};
use colo_core::time::{Duration, Instant};
use colo_core::wire::{Message, WriteId};

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

#[test]
fn secondary_takes_over_after_the_primary_dies_mid_transfer() {
    let me = NodeId(2);
    let mut hb = Heartbeat::new(HeartbeatConfig::default(), ms(0)).unwrap();
    let mut fo =
        Failover::new(LeaseConfig::default(), me, Role::Secondary, Term(1), ms(0)).unwrap();
    let mut ck = SecondaryCheckpointer::new(CheckpointConfig::default(), Epoch(0), ms(0)).unwrap();
    let mut disk = SecondaryDisk::new(
        DiskConfig {
            disk_size: 1 << 20,
            block_size: 4096,
        },
        Epoch(0),
    )
    .unwrap();
    let mut arbiter = Arbiter::new(Duration::from_secs(10), ms(0));

    // The primary forwards a write (copy-before-write into hidden, then parent) and starts
    // checkpoint 1; the secondary pauses and receives part of it.
    disk.handle_peer_write(WriteId(1), Epoch(1), 0, 4096);
    let mut disk_cmds: Vec<DiskCommand> = Vec::new();
    let pump_disk = |disk: &mut SecondaryDisk, cmds: &mut Vec<DiskCommand>| {
        let mut events = Vec::new();
        loop {
            while let Some(o) = disk.poll_output() {
                match o {
                    DiskOutput::Command(c) => cmds.push(c),
                    DiskOutput::Event(e) => events.push(e),
                    _ => {}
                }
            }
            let Some(c) = cmds.pop() else { break };
            disk.handle_op_done(c.op(), Ok(()));
        }
        events
    };
    pump_disk(&mut disk, &mut disk_cmds);
    assert_eq!(disk.hidden_blocks(), 1);
    let request = Message::CheckpointRequest {
        epoch: Epoch(1),
        reason: CheckpointReason::Periodic,
    };
    hb.handle_peer_traffic(ms(10));
    ck.handle_message(ms(10), &request, 0);
    ck.handle_vm_done(ms(11), VmCompletion::Paused);
    assert_eq!(ck.phase(), SecondaryPhase::Receiving);
    while ck.poll_output().is_some() {}

    // The primary dies: silence until the heartbeat declares it lost.
    let lost_at = loop {
        let t = hb.poll_timeout().expect("waits on time until lost");
        hb.handle_timeout(t);
        let _ = hb.poll_send();
        if let Some(HeartbeatEvent::PeerLost { .. }) = std::iter::from_fn(|| hb.poll_event()).last()
        {
            break t;
        }
    };
    assert_eq!(lost_at, ms(510), "default: 5 misses of 100 ms");
    let mut now = lost_at;

    // Takeover: new term, lease requested; nothing may be released yet.
    fo.handle_trigger(now, FailoverReason::PeerLost);
    assert!(matches!(
        fo.poll_event(),
        Some(FailoverEvent::TakeoverStarted {
            term: Term(2),
            from: Role::Secondary,
            ..
        })
    ));
    assert!(!fo.may_release_solo(now));
    let request = fo.poll_lease_request().expect("lease requested");

    // Meanwhile the partial epoch is discarded, the SVM resumed, and the disk merged.
    ck.handle_failover(now);
    let outs: Vec<_> = std::iter::from_fn(|| ck.poll_output()).collect();
    assert!(
        outs.contains(&CheckpointOutput::Vm(VmCommand::DiscardPartial {
            epoch: Epoch(1)
        }))
    );
    ck.handle_vm_done(now, VmCompletion::Discarded { epoch: Epoch(1) });
    ck.handle_vm_done(now, VmCompletion::Resumed);
    let outs: Vec<_> = std::iter::from_fn(|| ck.poll_output()).collect();
    assert!(outs.contains(&CheckpointOutput::Event(
        CheckpointEvent::ReadyForTakeover { applied: Epoch(0) }
    )));
    disk.handle_failover();
    let events = pump_disk(&mut disk, &mut disk_cmds);
    assert!(events.contains(&DiskEvent::Merged { blocks: 1 }));

    // The arbiter grants the new term; now, and only now, output may be released.
    now += Duration::from_millis(3);
    let reply = arbiter.handle_request(now, request.term, request.node_id, request.duration);
    fo.handle_lease_reply(now, request.id, reply);
    assert_eq!(fo.mode(), Mode::Solo);
    assert!(fo.may_release_solo(now));
    assert_eq!(
        fo.status(now).last_failover_reason,
        Some(FailoverReason::PeerLost)
    );

    // The arbiter becomes unreachable: renewals go unanswered and release stops at the
    // lease's local expiry (request time + 2 s - 100 ms margin).
    let mut suspended_at = None;
    while let Some(t) = fo.poll_timeout() {
        if t > ms(10_000) {
            break;
        }
        now = t;
        fo.handle_timeout(now);
        while fo.poll_lease_request().is_some() {}
        if let Some(FailoverEvent::ReleaseSuspended { .. }) =
            std::iter::from_fn(|| fo.poll_event()).last()
        {
            suspended_at = Some(now);
            break;
        }
    }
    assert_eq!(suspended_at, Some(ms(510 + 1900)));
    assert!(!fo.may_release_solo(now));
}

#[test]
fn primary_takes_over_after_the_secondary_dies_with_the_pvm_paused() {
    use colo_core::checkpoint::{PrimaryCheckpointer, PrimaryPhase};
    use colo_core::disk::{GuestIoId, PrimaryDisk};

    let me = NodeId(1);
    let mut fo = Failover::new(LeaseConfig::default(), me, Role::Primary, Term(4), ms(0)).unwrap();
    let mut ck = PrimaryCheckpointer::new(CheckpointConfig::default(), Epoch(7), ms(0)).unwrap();
    let mut disk = PrimaryDisk::new(DiskConfig {
        disk_size: 1 << 20,
        block_size: 4096,
    })
    .unwrap();
    let mut arbiter = Arbiter::new(Duration::from_secs(10), ms(0));

    // A guest write is forwarded and written locally; the ack never comes.
    disk.handle_guest_write(GuestIoId(1), Epoch(8), 0, 512);
    let outs: Vec<_> = std::iter::from_fn(|| disk.poll_output()).collect();
    let DiskOutput::Command(local) = outs[0] else {
        panic!("{outs:?}")
    };
    disk.handle_op_done(local.op(), Ok(()));
    assert_eq!(disk.in_flight(), 1, "waits for the secondary's ack");

    // Checkpoint 8 is under way and the PVM is paused when the secondary dies.
    ck.handle_trigger(ms(1), CheckpointReason::Miscompare);
    ck.handle_message(ms(2), &Message::CheckpointReady { epoch: Epoch(8) });
    ck.handle_vm_done(ms(3), VmCompletion::Paused);
    assert_eq!(ck.phase(), PrimaryPhase::Transferring);
    while ck.poll_output().is_some() {}

    let now = ms(600);
    fo.handle_trigger(now, FailoverReason::PeerLost);
    ck.handle_failover(now);
    disk.handle_failover();
    // The PVM resumes, the guest write completes, but held output waits for the lease.
    let outs: Vec<_> = std::iter::from_fn(|| ck.poll_output()).collect();
    assert_eq!(outs, vec![CheckpointOutput::Vm(VmCommand::Resume)]);
    ck.handle_vm_done(now, VmCompletion::Resumed);
    assert_eq!(ck.phase(), PrimaryPhase::Solo);
    assert!(matches!(
        std::iter::from_fn(|| disk.poll_output()).next(),
        Some(DiskOutput::GuestDone { result: Ok(()), .. })
    ));
    assert!(!fo.may_release_solo(now));
    let req = fo.poll_lease_request().unwrap();
    assert_eq!(req.term, Term(5));
    let reply = arbiter.handle_request(now, req.term, req.node_id, req.duration);
    fo.handle_lease_reply(now, req.id, reply);
    let events: Vec<_> = std::iter::from_fn(|| fo.poll_event()).collect();
    assert!(events.contains(&FailoverEvent::SoloGranted { term: Term(5) }));
    assert!(fo.may_release_solo(now), "now the held output is flushed");
}

#[test]
fn partition_with_the_arbiter_reachable_by_both_leaves_one_writer() {
    let mut p = Failover::new(
        LeaseConfig::default(),
        NodeId(1),
        Role::Primary,
        Term(1),
        ms(0),
    )
    .unwrap();
    let mut s = Failover::new(
        LeaseConfig::default(),
        NodeId(2),
        Role::Secondary,
        Term(1),
        ms(0),
    )
    .unwrap();
    let mut arbiter = Arbiter::new(Duration::from_secs(10), ms(0));
    let now = ms(500);
    p.handle_trigger(now, FailoverReason::PeerLost);
    s.handle_trigger(now, FailoverReason::PeerLost);
    let (rp, rs) = (
        p.poll_lease_request().unwrap(),
        s.poll_lease_request().unwrap(),
    );
    // The secondary's request reaches the arbiter first.
    let reply_s = arbiter.handle_request(now, rs.term, rs.node_id, rs.duration);
    let reply_p = arbiter.handle_request(now, rp.term, rp.node_id, rp.duration);
    p.handle_lease_reply(now, rp.id, reply_p);
    s.handle_lease_reply(now, rs.id, reply_s);
    assert_eq!(s.mode(), Mode::Solo);
    assert_eq!(p.mode(), Mode::Deposed);
    assert!(s.may_release_solo(now) && !p.may_release_solo(now));
    assert!(std::iter::from_fn(|| p.poll_event()).any(|e| matches!(
        e,
        FailoverEvent::Deposed {
            holder: Some(NodeId(2)),
            current_term: Term(2),
            ..
        }
    )));
}
