//! Two-node scenarios on the in-memory harness (`pair/`): steady state, miscompare, crashes of
//! either node at each checkpoint step, partitions with the arbiter on either side, and
//! re-protection after a failover.

mod pair;

use colo_core::node::{Event, NodeMode};
use colo_core::time::Duration;
use pair::{Knobs, Pair};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn steady_state_pairs_and_checkpoints_periodically() {
    let mut p = Pair::new(1, Knobs::default());
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.mode(0), NodeMode::Paired);
    assert_eq!(p.mode(1), NodeMode::Paired);
    p.requests_enabled = true;
    p.run_for(secs(2));
    let done = p.count_events(0, |e| matches!(e, Event::CheckpointDone { .. }));
    assert!(
        done >= 8,
        "periodic checkpoints every 200 ms: {done} in 2 s"
    );
    assert!(p.applied[1] as usize >= done - 1);
    assert!(
        p.answered.len() > 150,
        "clients served: {}",
        p.answered.len()
    );
    assert_eq!(
        p.count_events(0, |e| matches!(e, Event::Miscompare { .. })),
        0
    );
}
