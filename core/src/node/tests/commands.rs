//! Unit tests of the node's answers to operator commands: a refused command is answered by
//! `Event::CommandRefused` with its reason and changes nothing, a taken one is not; a shutdown
//! says goodbye and halts the VM once.

use super::*;

/// The reason of the one `CommandRefused` among `outs`, if any (two would be a bug).
fn refusal(outs: &[Output]) -> Option<CommandRefusal> {
    let refused: Vec<CommandRefusal> = events(outs)
        .into_iter()
        .filter_map(|e| match e {
            Event::CommandRefused { why, .. } => Some(*why),
            _ => None,
        })
        .collect();
    assert!(refused.len() <= 1, "{outs:?}");
    refused.first().copied()
}

fn command(n: &mut Node, at: u64, c: Command) -> Vec<Output> {
    n.handle(ms(at), Input::Command(c));
    drain(n)
}

#[test]
fn every_refused_command_is_answered_with_its_reason_and_changes_nothing() {
    let interval = Command::SetCheckpointInterval(Duration::from_millis(100));
    let mut s = node(Role::Secondary);
    assert_eq!(refusal(&command(&mut s, 0, Command::Start)), None);
    let cases = [
        (Command::Start, CommandRefusal::AlreadyStarted),
        (Command::ForceCheckpoint, CommandRefusal::NotPaired),
        (interval, CommandRefusal::NotPrimary),
        (Command::Failover, CommandRefusal::NoCopyYet),
        (Command::Reprotect, CommandRefusal::NotSolo),
    ];
    for (c, why) in cases {
        let outs = command(&mut s, 1, c);
        assert_eq!(
            outs,
            vec![Output::Event(Event::CommandRefused { command: c, why })],
            "{c:?}: the answer and nothing else"
        );
        assert_eq!(s.status(ms(1)).mode, NodeMode::Connecting, "{c:?}");
    }
    assert_eq!(
        (s.stats().commands_ignored, s.stats().takeovers_refused),
        (4, 1)
    );

    let mut p = replicating_primary();
    let coalesced = |p: &Node| p.primary_checkpointer().unwrap().stats().coalesced_triggers;
    let before = coalesced(&p);
    let outs = command(&mut p, 3, Command::ForceCheckpoint);
    assert_eq!(
        refusal(&outs),
        None,
        "a paired primary checkpoints: {outs:?}"
    );
    assert_eq!(
        coalesced(&p),
        before + 1,
        "into the pairing's first checkpoint, in progress"
    );
    let zero = Command::SetCheckpointInterval(Duration::ZERO);
    assert_eq!(
        refusal(&command(&mut p, 3, zero)),
        Some(CommandRefusal::ZeroInterval)
    );
    assert_eq!(refusal(&command(&mut p, 3, interval)), None);
    assert_eq!(
        refusal(&command(&mut p, 3, Command::Reprotect)),
        Some(CommandRefusal::NotSolo)
    );
    assert_eq!(refusal(&command(&mut p, 4, Command::Failover)), None);
    assert_eq!(p.status(ms(4)).mode, NodeMode::TakingOver);
    assert_eq!(
        refusal(&command(&mut p, 5, Command::Failover)),
        Some(CommandRefusal::NoPeerToLeave),
        "taking over already"
    );
    assert_eq!(
        refusal(&command(&mut p, 5, Command::ForceCheckpoint)),
        Some(CommandRefusal::NotPaired)
    );
}

#[test]
fn shutdown_says_goodbye_and_stops() {
    let mut n = replicating_primary();
    n.handle(ms(3), Input::Command(Command::Shutdown));
    let outs = drain(&mut n);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::ToPeer {
            message: Message::Goodbye { .. },
            ..
        }
    )));
    assert_eq!(
        outs.iter()
            .filter(|o| **o == Output::Halt(HaltReason::Stopped))
            .count(),
        1,
        "{outs:?}"
    );
    // A second shutdown orders nothing more.
    n.handle(ms(3), Input::Command(Command::Shutdown));
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.poll_timeout(), None);
    n.handle(
        ms(4),
        Input::ClientFrame {
            nic: NicId(0),
            frame: vec![0; 60],
        },
    );
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.status(ms(4)).mode, NodeMode::Stopped);
}

#[test]
fn the_node_reports_its_reprotect_arming_and_checkpoint_interval() {
    let mut p = replicating_primary();
    assert_eq!(
        p.checkpoint_interval(),
        p.config.checkpoint.checkpoint_interval
    );
    command(
        &mut p,
        3,
        Command::SetCheckpointInterval(Duration::from_millis(70)),
    );
    assert_eq!(p.checkpoint_interval(), Duration::from_millis(70));
    // Refused (a zero interval): nothing changed.
    command(&mut p, 3, Command::SetCheckpointInterval(Duration::ZERO));
    assert_eq!(p.checkpoint_interval(), Duration::from_millis(70));
    // Armed only once solo: refused while paired, armed after the takeover.
    command(&mut p, 3, Command::Reprotect);
    assert!(!p.reprotect_armed());
    let req = command(&mut p, 3, Command::Failover)
        .into_iter()
        .find_map(|o| match o {
            Output::Arbiter(r) => Some(r),
            _ => None,
        })
        .expect("a lease request");
    let reply = crate::failover::LeaseReply::Granted {
        valid_for: Duration::from_secs(2),
    };
    p.handle(ms(4), Input::Arbiter { id: req.id, reply });
    drain(&mut p);
    assert_eq!(p.status(ms(4)).mode, NodeMode::Solo);
    assert!(!p.reprotect_armed());
    command(&mut p, 5, Command::Reprotect);
    assert!(p.reprotect_armed());
    // The newcomer's Hello pairs it: the arming is spent.
    p.handle(ms(6), hello(9, Role::Secondary, 2));
    drain(&mut p);
    assert_eq!(p.status(ms(6)).mode, NodeMode::Reprotecting);
    assert!(!p.reprotect_armed());
    // A secondary reports the configured interval (the primary's is not its own).
    let s = node(Role::Secondary);
    assert_eq!(
        s.checkpoint_interval(),
        s.config.checkpoint.checkpoint_interval
    );
}
