//! A peer connection that breaks and comes back before the heartbeat declares the peer lost
//! (issue 11, "link blip"): whatever was in flight is lost with the old connection, and the
//! pair must go on in its term, with no failover, every client request answered, no protocol
//! error, and checkpoints completing on the new link. The reset is tried at many points of
//! the checkpoint cycle so that it lands in every phase: between checkpoints, with a request,
//! pages or `Received` in flight, and with the primary waiting for `Loaded`. And the other
//! side of "the peer came back quickly": a secondary whose process restarted is a new node, and
//! its `Hello` fails the old one over at once.

mod pair;

use colo_core::checkpoint::CheckpointEvent;
use colo_core::node::{Event, NodeMode};
use colo_core::time::Duration;
use colo_core::wire::AbortReason;
use pair::{Knobs, Pair};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_link_reset_at_any_point_of_the_checkpoint_cycle_costs_no_failover() {
    let mut restarted = 0;
    // The harness checkpoints every 200 ms; 3 ms steps cover the cycle, its short transfer
    // phases included.
    for offset in (0..200).step_by(3) {
        // Slow VM commands (10 ms each) stretch every checkpoint over a good part of the cycle,
        // so many offsets land inside one.
        let knobs = Knobs {
            vm_delay: ms(10),
            disk_writes: true,
            ..Knobs::default()
        };
        let mut p = Pair::new(1000 + offset, knobs);
        p.run_for(ms(100));
        assert_eq!(p.mode(0), NodeMode::Paired, "{}", p.summary());
        p.requests_enabled = true;
        p.run_for(ms(400 + offset));
        let done_before = p.count_events(0, |e| {
            matches!(e, Event::Checkpoint(CheckpointEvent::CheckpointDone { .. }))
        });
        p.reset_link_for(ms(50));
        p.run_for(ms(1500));
        let summary = p.summary();
        for h in 0..2 {
            assert_eq!(
                p.mode(h),
                NodeMode::Paired,
                "host {h}, offset {offset}\n{summary}"
            );
            for bad in [
                p.count_events(h, |e| matches!(e, Event::TakeoverStarted { .. })),
                p.count_events(h, |e| {
                    matches!(e, Event::Checkpoint(CheckpointEvent::Stuck { .. }))
                }),
                p.count_events(h, |e| matches!(e, Event::ProtocolError { .. })),
            ] {
                assert_eq!(bad, 0, "host {h}, offset {offset}\n{summary}");
            }
            assert_eq!(
                p.hosts[h].node.stats().link_resets,
                1,
                "host {h} counted the reset"
            );
        }
        let done_after = p.count_events(0, |e| {
            matches!(e, Event::Checkpoint(CheckpointEvent::CheckpointDone { .. }))
        });
        assert!(
            done_after >= done_before + 5,
            "checkpoints go on after the reset (offset {offset}): {done_before} -> {done_after}\n{summary}"
        );
        restarted += p.count_events(0, |e| {
            matches!(
                e,
                Event::Checkpoint(CheckpointEvent::Aborted {
                    reason: AbortReason::LinkReset,
                    ..
                })
            )
        });
        // Every request is answered: nothing the client sent was lost with the connection.
        p.requests_enabled = false;
        p.requests_enabled = true;
        let stop_at = p.next_request;
        p.run_for(ms(2000));
        let missing: Vec<u64> = (0..stop_at).filter(|k| !p.answered.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "offset {offset}: unanswered {missing:?}\n{}",
            p.summary()
        );
        // Every guest write completes: a forwarded write lost with the connection is sent
        // again on the new one, never waited for forever.
        assert!(
            p.hosts[0].writes_pending.len() <= 2,
            "offset {offset}: writes stuck {:?}\n{}",
            p.hosts[0].writes_pending,
            p.summary()
        );
    }
    eprintln!("resets that restarted an epoch: {restarted} of 67");
    assert!(
        restarted >= 10,
        "some resets must land inside a checkpoint and restart its epoch"
    );
}

#[test]
fn a_secondary_restarted_before_its_loss_was_detected_is_failed_over_at_once() {
    // The secondary's process dies and is back (a fresh node knocking with Hello) within the
    // heartbeat's detection time. Its hellos must not pass for the dead incarnation's
    // liveness: the primary fails it over at the first one instead of waiting for a stuck
    // checkpoint (3 s with the harness's settings: 600 ms).
    let mut p = Pair::new(77, Knobs::default());
    p.run_for(ms(100));
    p.requests_enabled = true;
    p.run_for(ms(500));
    p.crash(1);
    p.run_for(ms(20));
    let restarted_at = p.now;
    p.replace_with_secondary(1, 3);
    let took_over = p.run_until_event(0, ms(300), |e| {
        matches!(
            e,
            Event::TakeoverStarted {
                reason: colo_core::failover::FailoverReason::PeerRestarted,
                ..
            }
        )
    });
    assert!(
        took_over,
        "no takeover within 300 ms of the restart ({restarted_at:?})\n{}",
        p.summary()
    );
    assert_eq!(
        p.count_events(0, |e| matches!(
            e,
            Event::Checkpoint(CheckpointEvent::Stuck { .. })
        )),
        0,
        "{}",
        p.summary()
    );
}
