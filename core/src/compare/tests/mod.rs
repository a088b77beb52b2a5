//! Unit tests of the comparator, one per documented rule, plus property tests (`props`).
//!
//! Every test ends with [`settle`], which checks the stats' conservation equations, so each
//! test also proves that no frame vanished uncounted.

mod control;
mod datagrams;
mod differential;
mod history;
mod props;
mod rules;
mod tcp_rules;
mod window;
mod window_update;

use super::testkit::{self, Headers};
use super::*;
use crate::time::Duration;

pub(super) fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

pub(super) fn comparator() -> Comparator {
    Comparator::new(CompareConfig::default()).expect("default config is valid")
}

/// A comparator without datagram reordering (`datagram_reorder_window` 1, QEMU's rule): a
/// datagram differing from the secondary's next one is a miscompare at once.
pub(super) fn in_order_comparator() -> Comparator {
    Comparator::new(CompareConfig {
        datagram_reorder_window: 1,
        ..CompareConfig::default()
    })
    .expect("valid config")
}

/// Drains every output and checks the stats' conservation equations.
pub(super) fn settle(c: &mut Comparator) -> Vec<CompareOutput> {
    let mut out = Vec::new();
    while let Some(o) = c.poll_output() {
        out.push(o);
    }
    assert!(
        c.stats().is_conserved(),
        "stats not conserved: {:?}",
        c.stats()
    );
    out
}

pub(super) fn releases(out: &[CompareOutput]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|o| match o {
            CompareOutput::Release(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn requests(out: &[CompareOutput]) -> Vec<CheckpointReason> {
    out.iter()
        .filter_map(|o| match o {
            CompareOutput::CheckpointRequest(r) => Some(*r),
            _ => None,
        })
        .collect()
}

pub(super) fn data(seq: u32, payload: &[u8]) -> Vec<u8> {
    testkit::tcp_data(seq, 1, payload)
}

pub(super) fn pure_ack(seq: u32, ack: u32) -> Vec<u8> {
    testkit::tcp(
        &Headers::default(),
        seq,
        ack,
        crate::packet::tcp_flags::ACK,
        &[],
    )
}

#[test]
fn config_with_zero_knobs_is_refused() {
    let mut cfg = CompareConfig {
        compare_timeout: Duration::ZERO,
        ..CompareConfig::default()
    };
    assert_eq!(
        Comparator::new(cfg.clone()).err(),
        Some(CompareConfigError::ZeroCompareTimeout)
    );
    cfg.compare_timeout = Duration::from_secs(1);
    cfg.max_queue_frames = 0;
    assert_eq!(cfg.validate(), Err(CompareConfigError::ZeroQueue));
    cfg.max_queue_frames = 1;
    cfg.max_flows = 0;
    assert_eq!(cfg.validate(), Err(CompareConfigError::ZeroFlows));
    cfg.max_flows = 1;
    cfg.datagram_reorder_window = 0;
    assert_eq!(cfg.validate(), Err(CompareConfigError::ZeroReorderWindow));
    cfg.datagram_reorder_window = 1;
    cfg.retransmit_history = 0;
    assert_eq!(cfg.validate(), Err(CompareConfigError::ZeroHistory));
    cfg.retransmit_history = 1;
    cfg.closed_flow_linger = Duration::ZERO;
    assert_eq!(cfg.validate(), Err(CompareConfigError::ZeroIdle));
    assert_eq!(CompareConfig::default().validate(), Ok(()));
    assert_eq!(
        CompareConfig::default().compare_timeout,
        Duration::from_millis(3000)
    );
}

#[test]
#[should_panic(expected = "time went backwards")]
fn time_going_backwards_panics_naming_the_rule() {
    let mut c = comparator();
    c.handle_primary(t(10), data(1, b"x"));
    c.handle_primary(t(9), data(2, b"y"));
}

/// Runs the fuzz body over inputs from a seeded generator: a fuzzer-free smoke test of the
/// output-commit oracle (`crate::fuzzing::compare`) that every `cargo test` repeats identically.
#[test]
fn fuzz_body_holds_its_invariants_on_generated_inputs() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: deterministic, seeded.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for case in 0..300 {
        let len = 16 + (next() % 600) as usize;
        let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Bias half the cases towards TCP traffic with identical streams and few lifecycle ops.
        if case % 2 == 0 {
            for (i, b) in input.iter_mut().enumerate() {
                if i % 7 == 0 {
                    *b %= 6;
                }
            }
        }
        crate::fuzzing::compare::run(&input);
    }
}
