//! `colo bench --breakdown`'s differing replies: where a `NONCE`'s time goes, hop by hop, on the
//! host clock the nodes' hop records and the bench share. For each `NONCE` (its request's and
//! its released reply's keys, and the epoch of the checkpoint it forced, from `diverge.rs`)
//! the primary's points are lined up: the request at its loop, the PVM's reply at its loop,
//! the miscompare (the `CheckpointRequest` the comparator's trigger sent), `Ready`, `Sent`,
//! `Received`, the reply released to the tap, and the client's read. The steps between them
//! are what the goal's bound is made of: the path through the pair, the detection, the
//! secondary's pause and the link, the PVM's pause and transfer, the release.
//!
//! Invariant: a point missing for a `NONCE` leaves that `NONCE` out of the steps that need it
//! (counted, never guessed); a step is the median of per-`NONCE` differences, never a
//! difference of medians.

use super::breakdown::{Record, Sent, first_records, median};
use colo_runtime::pair::node_loop::hops::ACK_KEY;

/// The points, in the order they happen: who records it, its point name, and whether it is
/// keyed by the request (`Request`), the released reply (`Reply`) or the epoch (`Epoch`).
const POINTS: [(&str, &str, Key); 7] = [
    ("primary", "loop_in", Key::Request),
    ("primary", "loop_guest", Key::Reply),
    ("primary", "ckpt_request", Key::Epoch),
    ("primary", "ckpt_ready", Key::Epoch),
    ("primary", "ckpt_sent", Key::Epoch),
    ("primary", "ckpt_received", Key::Epoch),
    ("primary", "to_client", Key::Reply),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Request,
    Reply,
    Epoch,
}

/// What each step between two consecutive points (and before the first, after the last)
/// stands for.
pub const STEPS: [&str; 8] = [
    "client -> tap -> primary's loop (the request)",
    "-> the PVM's reply at the primary's loop (the guest's work; the request is mirrored meanwhile)",
    "-> miscompare: the SVM's reply compared against it (waiting for the later of the two)",
    "-> Ready: the secondary pauses its VM, plus one link round trip (the PVM still runs)",
    "-> Sent: the PVM paused, dirty pages collected, device state and pages written",
    "-> Received: the bulk's tail at the secondary, its confirmation back",
    "-> released to the tap",
    "-> the client has the reply",
];

/// The two guests' sides of the miscompare, as times since the client sent: the request at
/// each guest, each reply at the primary's loop (the SVM's reply is the first frame with a
/// payload the primary's loop got from the peer after the client sent and before the
/// miscompare: the bench's client is the only one, so no other reply is in flight then).
/// The last line is not a time since the client sent but, per `NONCE`, the miscompare after
/// the later of the two replies reached the primary's loop (the detection itself).
pub const SIDES: [&str; 10] = [
    "the request into the PVM (primary.to_guest)",
    "the request into the SVM (secondary.to_guest)",
    "the PVM's reply at the primary's loop (primary.loop_guest)",
    "the SVM sent its reply (secondary.guest_out)",
    "  at the secondary's loop (secondary.loop_guest)",
    "  onto the peer link (secondary.peer_out)",
    "  at the primary's peer reader (primary.peer_in)",
    "the SVM's reply at the primary's loop (primary.loop_peer)",
    "the miscompare (primary.ckpt_request)",
    "(per NONCE: the miscompare after the later reply reached the primary's loop)",
];

/// The steps' medians over the traced `NONCE`s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DivergeTrace {
    /// Per line of [`SIDES`]: the median time since the client sent (microseconds) and how
    /// many `NONCE`s had it.
    pub sides: Vec<(Option<u64>, usize)>,
    /// `NONCE`s traced.
    pub nonces: usize,
    /// Per step of [`STEPS`]: the median (microseconds) and how many `NONCE`s had both ends.
    pub steps: Vec<(Option<u64>, usize)>,
    /// The client's latency, median (microseconds).
    pub total_us: Option<u64>,
}

/// Lines up each `(NONCE, epoch)` of `traced` in `records` (the first record of a key at a
/// point counts).
pub fn compute(traced: &[(Sent, u64)], records: &[Record]) -> DivergeTrace {
    let first = first_records(records);
    let mut per_step: Vec<Vec<u64>> = vec![Vec::new(); STEPS.len()];
    let mut per_side: Vec<Vec<u64>> = vec![Vec::new(); SIDES.len()];
    for (sent, epoch) in traced {
        let at = |who: &str, point: &str, key: u64| first.get(&(who, point, key)).copied();
        let detected = at("primary", "ckpt_request", *epoch);
        // The first payload frame at `who`'s `point` after the client sent, before the
        // miscompare.
        let first_payload = |who: &str, point: &str| {
            let until = detected?;
            records
                .iter()
                .filter(|(w, p, key, t)| {
                    w == who
                        && p == point
                        && key & ACK_KEY == 0
                        && (sent.sent_ns..=until).contains(t)
                })
                .map(|r| r.3)
                .min()
        };
        let sides = [
            at("primary", "to_guest", sent.request_key),
            at("secondary", "to_guest", sent.request_key),
            at("primary", "loop_guest", sent.reply_key),
            first_payload("secondary", "guest_out"),
            first_payload("secondary", "loop_guest"),
            first_payload("secondary", "peer_out"),
            first_payload("primary", "peer_in"),
            first_payload("primary", "loop_peer"),
            detected,
        ];
        for (i, t) in sides.iter().enumerate() {
            if let Some(t) = t {
                per_side[i].push(t.saturating_sub(sent.sent_ns) / 1000);
            }
        }
        if let [_, _, Some(pvm), _, _, _, _, Some(svm), Some(detected)] = sides {
            per_side[9].push(detected.saturating_sub(pvm.max(svm)) / 1000);
        }
        let times: Vec<Option<u64>> = std::iter::once(Some(sent.sent_ns))
            .chain(POINTS.iter().map(|(who, point, key)| {
                let k = match key {
                    Key::Request => sent.request_key,
                    Key::Reply => sent.reply_key,
                    Key::Epoch => *epoch,
                };
                first.get(&(*who, *point, k)).copied()
            }))
            .chain(std::iter::once(Some(sent.replied_ns)))
            .collect();
        for (i, pair) in times.windows(2).enumerate() {
            if let [Some(a), Some(b)] = pair {
                per_step[i].push(b.saturating_sub(*a) / 1000);
            }
        }
    }
    let medians = |v: Vec<Vec<u64>>| {
        v.into_iter()
            .map(|v| {
                let n = v.len();
                (median(v), n)
            })
            .collect()
    };
    DivergeTrace {
        sides: medians(per_side),
        nonces: traced.len(),
        steps: medians(per_step),
        total_us: median(
            traced
                .iter()
                .map(|(s, _)| s.replied_ns.saturating_sub(s.sent_ns) / 1000)
                .collect(),
        ),
    }
}

impl std::fmt::Display for DivergeTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "differing replies: {} NONCEs through the pair, client latency median {}; median microseconds of each step",
            self.nonces,
            self.total_us.map_or("-".to_string(), |v| format!("{v} us"))
        )?;
        let line = |f: &mut std::fmt::Formatter<'_>, (median, seen): (Option<u64>, usize), what| {
            let missing = if seen < self.nonces {
                format!(" (seen for {seen} of {})", self.nonces)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {:>7}  {what}{missing}",
                median.map_or("-".to_string(), |v| v.to_string())
            )
        };
        for (step, what) in self.steps.iter().zip(STEPS) {
            line(f, *step, what)?;
        }
        writeln!(
            f,
            "the guests' sides of the miscompare: median microseconds since the client sent"
        )?;
        for (side, what) in self.sides.iter().zip(SIDES) {
            line(f, *side, what)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(point: &str, key: u64, t_us: u64) -> Record {
        ("primary".to_string(), point.to_string(), key, t_us * 1000)
    }

    #[test]
    fn a_nonces_steps_are_the_differences_of_its_points() {
        let sent = Sent {
            request_key: 11,
            reply_key: 22,
            sent_ns: 1_000_000,
            replied_ns: 4_000_000,
        };
        let records = vec![
            rec("loop_in", 11, 1_050),
            rec("loop_guest", 22, 1_200),
            rec("ckpt_request", 7, 1_400),
            rec("ckpt_ready", 7, 1_500),
            rec("ckpt_sent", 7, 2_700),
            rec("ckpt_received", 7, 3_000),
            rec("to_client", 22, 3_020),
            // A later copy of the same key at the same point does not count.
            rec("to_client", 22, 3_900),
            // Another epoch's steps do not count.
            rec("ckpt_ready", 6, 1_010),
        ];
        let t = compute(&[(sent, 7)], &records);
        let steps: Vec<Option<u64>> = t.steps.iter().map(|s| s.0).collect();
        assert_eq!(
            steps,
            [50, 150, 200, 100, 1_200, 300, 20, 980].map(Some).to_vec()
        );
        assert_eq!(t.total_us, Some(3_000));
        assert_eq!(t.sides[8], (Some(400), 1), "the miscompare");
        assert_eq!(t.sides[7], (None, 0), "no SVM reply recorded");
    }

    #[test]
    fn the_svms_reply_is_the_first_payload_from_the_peer_before_the_miscompare() {
        let sent = Sent {
            request_key: 11,
            reply_key: 22,
            sent_ns: 1_000_000,
            replied_ns: 4_000_000,
        };
        let records = vec![
            // Before the client sent: another request's.
            rec("loop_peer", 90, 900),
            // The SVM's bare ACK of the request: not a reply.
            rec("loop_peer", ACK_KEY | 5, 1_100),
            rec("loop_peer", 33, 1_300),
            rec("loop_peer", 44, 1_350),
            rec("ckpt_request", 7, 1_400),
            // After the miscompare: not this reply.
            rec("loop_peer", 55, 1_380 + 500),
            (
                "secondary".to_string(),
                "to_guest".to_string(),
                11,
                1_090_000,
            ),
            (
                "secondary".to_string(),
                "guest_out".to_string(),
                66,
                1_150_000,
            ),
        ];
        let t = compute(&[(sent, 7)], &records);
        assert_eq!(t.sides[1], (Some(90), 1), "the request at the SVM");
        assert_eq!(t.sides[3], (Some(150), 1), "the SVM sent it");
        assert_eq!(t.sides[7], (Some(300), 1), "the SVM's reply at the primary");
        assert_eq!(
            t.sides[9],
            (None, 0),
            "no PVM reply recorded: no detection figure"
        );
        let mut with_pvm = records.clone();
        with_pvm.push(rec("loop_guest", 22, 1_200));
        let t = compute(&[(sent, 7)], &with_pvm);
        assert_eq!(
            t.sides[9],
            (Some(100), 1),
            "1,400 us after the SVM's at 1,300"
        );
    }

    #[test]
    fn a_missing_point_leaves_out_only_the_steps_that_need_it() {
        let sent = Sent {
            request_key: 11,
            reply_key: 22,
            sent_ns: 0,
            replied_ns: 2_000_000,
        };
        let records = vec![rec("loop_in", 11, 40), rec("ckpt_request", 3, 500)];
        let t = compute(&[(sent, 3)], &records);
        assert_eq!(t.steps[0], (Some(40), 1));
        assert_eq!(t.steps[1], (None, 0), "no PVM reply record");
        assert_eq!(t.steps[2], (None, 0));
        assert_eq!(t.steps[3], (None, 0), "no Ready record");
        assert_eq!(t.nonces, 1);
    }
}
