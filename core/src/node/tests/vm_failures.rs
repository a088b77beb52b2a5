//! Unit tests of the node's answer to a VM command that failed in a way that leaves its VM
//! unusable (`Node::on_vm_command_failed`): the node leaves the pair in order (goodbye, halt,
//! `Stopped`) and a secondary never takes over afterwards; a failure that only aborts the
//! attempt leaves the pairing as it was. Also: a newcomer that loses its primary inside its first
//! apply still takes over with that epoch.

use super::*;
use crate::checkpoint::{VmCommand, VmCommandKind, VmCompletion};
use crate::ids::CheckpointReason;

fn peer(message: Message) -> Input {
    Input::Peer {
        message,
        bulk: PeerBulk::None,
    }
}

/// Feeds `input`, answering every disk command the node orders as done, and returns what
/// the node emitted.
fn feed(n: &mut Node, at: u64, input: Input) -> Vec<Output> {
    n.handle(ms(at), input);
    let mut outs = Vec::new();
    while let Some(o) = n.poll_output() {
        if let Output::Disk(cmd) = &o {
            let op = cmd.op();
            n.handle(ms(at), Input::DiskDone { op, result: Ok(()) });
        }
        outs.push(o);
    }
    outs
}

/// A secondary that got through the handshake and the copy (term 1): paired, its VM holding
/// no guest until checkpoint 1 applies.
fn newcomer_paired() -> Node {
    let mut n = node(Role::Secondary);
    feed(&mut n, 0, Input::Command(Command::Start));
    feed(
        &mut n,
        1,
        peer(Message::HelloAccept {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: ClusterId(9),
            node_id: NodeId(2),
            role: Role::Primary,
            term: Term(1),
            last_applied_epoch: Epoch(0),
        }),
    );
    let sync = Message::SyncStart {
        term: Term(1),
        memory_bytes: 0,
        disk_bytes: 0,
    };
    feed(&mut n, 1, peer(sync));
    let done = Message::SyncDone {
        term: Term(1),
        epoch: Epoch(1),
    };
    feed(&mut n, 2, peer(done));
    n
}

/// A secondary paired with its primary (term 1) that received the whole of checkpoint 1 and
/// was ordered to apply it: returns the node and what it emitted for the last step.
fn secondary_applying_epoch_1() -> (Node, Vec<Output>) {
    let mut n = newcomer_paired();
    let request = Message::CheckpointRequest {
        epoch: Epoch(1),
        reason: CheckpointReason::Forced,
    };
    let outs = feed(&mut n, 3, peer(request));
    assert!(outs.contains(&Output::Vm(VmCommand::Pause)), "{outs:?}");
    feed(&mut n, 4, Input::VmDone(VmCompletion::Paused));
    feed(&mut n, 5, peer(Message::DeviceState { epoch: Epoch(1) }));
    let sent = Message::CheckpointSent {
        epoch: Epoch(1),
        batches: 0,
        pages: 0,
        bytes: 0,
    };
    let outs = feed(&mut n, 6, peer(sent));
    let apply = Output::Vm(VmCommand::ApplyCheckpoint { epoch: Epoch(1) });
    assert!(outs.contains(&apply), "{outs:?}");
    assert_eq!(n.status(ms(6)).mode, NodeMode::Paired);
    (n, outs)
}

fn said_goodbye(outs: &[Output]) -> bool {
    outs.iter().any(|o| {
        matches!(
            o,
            Output::ToPeer {
                message: Message::Goodbye { .. },
                ..
            }
        )
    })
}

fn halts(outs: &[Output]) -> usize {
    outs.iter()
        .filter(|o| **o == Output::Halt(HaltReason::VmFailed))
        .count()
}

/// The node, just told `command` failed, left the pair in order and can never take over.
fn assert_left_for_good(mut n: Node, outs: &[Output], command: VmCommandKind) {
    assert!(said_goodbye(outs), "{command:?}: goodbye first: {outs:?}");
    assert_eq!(halts(outs), 1, "{command:?}: the VM is halted once");
    assert_eq!(n.status(ms(10)).mode, NodeMode::Stopped, "{command:?}");
    // Neither an operator's failover nor the peer's silence makes it take over.
    let outs = feed(&mut n, 11, Input::Command(Command::Failover));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Arbiter(_))),
        "{command:?}: a stopped node asked for a lease: {outs:?}"
    );
    let outs = feed(&mut n, 5_000, Input::Timeout);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Arbiter(_))),
        "{command:?}: a stopped node asked for a lease: {outs:?}"
    );
    assert_eq!(n.status(ms(5_000)).mode, NodeMode::Stopped, "{command:?}");
}

#[test]
fn a_secondary_whose_apply_failed_leaves_the_pair_and_never_takes_over() {
    let (mut n, _) = secondary_applying_epoch_1();
    let failed = VmCompletion::Failed {
        command: VmCommandKind::ApplyCheckpoint,
    };
    let outs = feed(&mut n, 10, Input::VmDone(failed));
    assert_left_for_good(n, &outs, VmCommandKind::ApplyCheckpoint);
}

#[test]
fn a_secondary_whose_resume_failed_leaves_the_pair_and_never_takes_over() {
    // Seed 194 (colo-sim --duration 10s): the SVM's resume after an apply failed, a link
    // reset then made the secondary take over with its VM paused for good, and no node
    // served the clients again.
    let (mut n, _) = secondary_applying_epoch_1();
    let applied = VmCompletion::Applied { epoch: Epoch(1) };
    let outs = feed(&mut n, 7, Input::VmDone(applied));
    assert!(outs.contains(&Output::Vm(VmCommand::Resume)), "{outs:?}");
    let failed = VmCompletion::Failed {
        command: VmCommandKind::Resume,
    };
    let outs = feed(&mut n, 10, Input::VmDone(failed));
    assert_left_for_good(n, &outs, VmCommandKind::Resume);
}

#[test]
fn a_failed_pause_of_the_secondary_aborts_the_attempt_and_keeps_the_pair() {
    let (mut n, _) = secondary_applying_epoch_1();
    let applied = VmCompletion::Applied { epoch: Epoch(1) };
    feed(&mut n, 7, Input::VmDone(applied));
    feed(&mut n, 8, Input::VmDone(VmCompletion::Resumed));
    let request = Message::CheckpointRequest {
        epoch: Epoch(2),
        reason: CheckpointReason::Forced,
    };
    feed(&mut n, 9, peer(request));
    let failed = VmCompletion::Failed {
        command: VmCommandKind::Pause,
    };
    let outs = feed(&mut n, 10, Input::VmDone(failed));
    assert!(!said_goodbye(&outs), "{outs:?}");
    assert_eq!(halts(&outs), 0);
    assert!(
        outs.iter().any(|o| matches!(
            o,
            Output::ToPeer {
                message: Message::CheckpointAbort { .. },
                ..
            }
        )),
        "the attempt is abandoned for the primary to retry: {outs:?}"
    );
    assert_eq!(n.status(ms(10)).mode, NodeMode::Paired);
}

#[test]
fn a_newcomer_whose_first_checkpoint_is_aborted_keeps_its_empty_vm_paused_and_the_pair() {
    // The primary gives up on checkpoint 1 (its own pause failed, a link reset) after the
    // newcomer paused: the newcomer discards it. Its VM holds no guest yet (the runtime's
    // resume fails on it), so it is not resumed; the retry's apply gives it one.
    let mut n = newcomer_paired();
    let request = Message::CheckpointRequest {
        epoch: Epoch(1),
        reason: CheckpointReason::Forced,
    };
    feed(&mut n, 3, peer(request));
    feed(&mut n, 4, Input::VmDone(VmCompletion::Paused));
    let abort = Message::CheckpointAbort {
        epoch: Epoch(1),
        reason: crate::wire::message::AbortReason::VmFailure,
    };
    let mut outs = feed(&mut n, 5, peer(abort));
    let discarded = VmCompletion::Discarded { epoch: Epoch(1) };
    outs.extend(feed(&mut n, 6, Input::VmDone(discarded)));
    assert!(
        !outs.contains(&Output::Vm(VmCommand::Resume)),
        "an empty VM is never resumed: {outs:?}"
    );
    assert!(!said_goodbye(&outs) && halts(&outs) == 0, "{outs:?}");
    assert_eq!(n.status(ms(6)).mode, NodeMode::Paired);
    // The retry applies and resumes as usual.
    let request = Message::CheckpointRequest {
        epoch: Epoch(2),
        reason: CheckpointReason::Forced,
    };
    let outs = feed(&mut n, 7, peer(request));
    assert!(outs.contains(&Output::Vm(VmCommand::Pause)), "{outs:?}");
}

#[test]
fn a_newcomer_that_loses_its_primary_while_applying_its_first_checkpoint_takes_over_with_it() {
    // It confirmed the whole of epoch 1 (the primary may have released output that only
    // epoch 1 explains), so it holds the state to serve with: the checkpointer finishes the
    // apply and the resume, then the node runs solo. Refusing here left nobody serving.
    let (mut n, _) = secondary_applying_epoch_1();
    feed(&mut n, 7, Input::PeerLink(LinkState::Up));
    feed(&mut n, 7, Input::PeerLink(LinkState::PeerClosed));
    feed(&mut n, 7, Input::PeerDialRefused);
    assert_eq!(n.stats().takeovers_refused, 0);
    assert_eq!(n.status(ms(7)).mode, NodeMode::TakingOver);
    let applied = VmCompletion::Applied { epoch: Epoch(1) };
    let outs = feed(&mut n, 8, Input::VmDone(applied));
    assert!(outs.contains(&Output::Vm(VmCommand::Resume)), "{outs:?}");
    feed(&mut n, 9, Input::VmDone(VmCompletion::Resumed));
    assert_eq!(n.stats().takeovers_refused, 0);
}
