use super::*;
use crate::rng::SimRng;
use crate::world::{World, WorldSpec};

fn busy_guest() -> Guest {
    let mut world = World::new(11, &WorldSpec::default());
    world.run_until(Instant::from_millis(300), |_| false);
    world.guest
}

#[test]
fn batches_hold_at_most_their_page_budget_and_keep_every_page() {
    // Two full batches and a remainder of 48 pages: one range spans a batch boundary.
    let b = PAGES_PER_BATCH;
    let ranges = vec![
        PageRange {
            first: 0,
            count: b + 44,
        },
        PageRange {
            first: 3 * b,
            count: 10,
        },
        PageRange {
            first: 5 * b,
            count: b - 6,
        },
    ];
    let batches = split_batches(&ranges);
    assert_eq!(batches.len(), 3);
    for batch in &batches {
        assert!(batch.iter().map(|r| r.count).sum::<u64>() <= PAGES_PER_BATCH);
    }
    let total: u64 = batches.iter().flatten().map(|r| r.count).sum();
    assert_eq!(total, 2 * b + 48);
}

#[test]
fn pause_takes_its_latency_and_records_the_state_at_pause() {
    let mut g = busy_guest();
    let timing = VmTiming::default();
    let mut vm = SimVm::new(timing, None);
    let t0 = Instant::from_millis(300);
    vm.set_pause_epoch(Epoch(1));
    vm.handle_command(t0, VmCommand::Pause, &mut g);
    assert_eq!(vm.poll_completion(t0, &mut g), None);
    assert_eq!(vm.poll_timeout(), Some(t0 + timing.pause));
    let t1 = t0 + timing.pause;
    assert_eq!(vm.poll_completion(t1, &mut g), Some(VmCompletion::Paused));
    assert!(!vm.is_running());
    match vm.poll_trace() {
        Some(TraceEvent::Paused {
            epoch, state_hash, ..
        }) => {
            assert_eq!(epoch, Epoch(1));
            assert_eq!(state_hash, g.state_hash());
        }
        other => panic!("expected Paused, got {other:?}"),
    }
    // A second pause of a paused VM completes at once.
    vm.handle_command(t1, VmCommand::Pause, &mut g);
    assert_eq!(vm.poll_completion(t1, &mut g), Some(VmCompletion::Paused));
}

#[test]
fn a_whole_epoch_moves_from_primary_to_secondary_and_applies_exactly() {
    let mut pvm = busy_guest();
    let mut svm = Guest::boot(pvm.config().clone(), Instant::ZERO, SimRng::new(99));
    let timing = VmTiming {
        bytes_per_sec: 125_000_000,
        ..VmTiming::default()
    };
    let (mut a, mut b) = (SimVm::new(timing, None), SimVm::new(timing, None));
    let now = Instant::from_millis(300);
    let e = Epoch(1);
    a.handle_command(now, VmCommand::CollectDirty { epoch: e }, &mut pvm);
    let Some(VmCompletion::DirtyCollected { ranges, .. }) = a.poll_completion(now, &mut pvm) else {
        panic!("no dirty pages")
    };
    let dirty: u64 = ranges.iter().map(|r| r.count).sum();
    assert!(dirty > 0);
    a.handle_command(now, VmCommand::SendPages { epoch: e, ranges }, &mut pvm);
    a.handle_command(now, VmCommand::SaveDeviceState { epoch: e }, &mut pvm);
    // Byte counts are priced on the link: 1 Gbit/s moves 4 KiB in ~33 us.
    let done = a.poll_timeout().expect("transfer scheduled");
    assert!(done > now);
    let end = now + Duration::from_secs(1);
    let mut sent = None;
    while let Some(c) = a.poll_completion(end, &mut pvm) {
        if let VmCompletion::PagesSent { pages, bytes, .. } = c {
            assert_eq!(pages, dirty);
            assert_eq!(bytes, dirty * PAGE_SIZE);
            sent = Some(pages);
        }
    }
    let mut frames = 0;
    while let Some(f) = a.poll_repl(end) {
        b.handle_repl(f);
        frames += 1;
    }
    assert!(frames >= 2);
    b.handle_repl(ReplFrame {
        message: Message::CheckpointSent {
            epoch: e,
            batches: 1,
            pages: sent.unwrap(),
            bytes: 0,
        },
        bulk_len: 0,
        snapshot: None,
    });
    b.handle_command(end, VmCommand::ApplyCheckpoint { epoch: e }, &mut svm);
    assert_eq!(svm.state_hash(), pvm.state_hash());
    match b.poll_trace() {
        Some(TraceEvent::Applied {
            pages_applied,
            pages_expected,
            state_hash,
            ..
        }) => {
            assert_eq!(pages_applied, pages_expected);
            assert_eq!(state_hash, pvm.state_hash());
        }
        other => panic!("expected Applied, got {other:?}"),
    }
    assert_eq!(b.applied().map(|(e, _)| *e), Some(e));
}

#[test]
fn apply_of_an_epoch_not_received_fails_and_discard_keeps_the_applied_state() {
    let mut svm = busy_guest();
    let before = svm.state_hash();
    let mut b = SimVm::new(VmTiming::default(), None);
    let now = Instant::from_millis(300);
    b.handle_command(
        now,
        VmCommand::ApplyCheckpoint { epoch: Epoch(3) },
        &mut svm,
    );
    assert_eq!(
        b.poll_completion(now, &mut svm),
        Some(VmCompletion::Failed {
            command: VmCommandKind::ApplyCheckpoint
        })
    );
    b.handle_repl(ReplFrame {
        message: Message::PageBatch {
            epoch: Epoch(3),
            batch: 0,
            ranges: vec![PageRange { first: 1, count: 1 }],
            zero: ZeroPages::none(1),
        },
        bulk_len: PAGE_SIZE,
        snapshot: None,
    });
    b.handle_command(now, VmCommand::DiscardPartial { epoch: Epoch(3) }, &mut svm);
    assert_eq!(
        b.poll_completion(now, &mut svm),
        Some(VmCompletion::Discarded { epoch: Epoch(3) })
    );
    assert_eq!(svm.state_hash(), before);
}
