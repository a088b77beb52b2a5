//! `colo bench --breakdown`: what the client, the two guests and the comparator did with the
//! TCP windows while the client sent a `SINK` body through the pair, from the nodes' hop
//! records with TCP header fields (`node_loop::hops::TcpFields`). It finds the stalls (gaps
//! in the client's data at the primary's tap of at least [`STALL`]) and, for each, what the
//! client had been told (the released right edge), what each guest offered, whether the
//! secondary opened its window during the stall without the client hearing of it, and what
//! ended the stall (a retransmission, a probe's answer, new data).
//!
//! Invariant: figures come from records only; a window edge is `ack + window` of the frame
//! as sent (the test guest's 32 KiB buffers need no window scaling, shift 0; a guest that
//! scales would make the edges read low, never high), and nothing missing is guessed: a
//! stall with no record of a side says `-` for it.

use colo_runtime::pair::node_loop::hops::TcpFields;
use std::collections::HashMap;
use std::fmt;

/// A gap in the client's data at least this long (nanoseconds) counts as a stall.
pub const STALL: u64 = 50_000_000;

/// The ACK flag.
const ACK: u8 = 0x10;

/// One record with TCP fields: who, which point, when (ns) and the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRecord {
    /// `primary` or `secondary`.
    pub who: &'static str,
    /// The hop point (`tap_in`, `guest_out`, `to_client`...).
    pub point: &'static str,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub t: u64,
    /// The TCP header.
    pub f: TcpFields,
}

/// Parses the TCP fields of a `hop` line of `who` (None for lines without them).
pub fn parse(who: &'static str, text: &str) -> Option<TcpRecord> {
    let fields: HashMap<&str, &str> = text
        .strip_prefix("hop ")?
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let point = match *fields.get("point")? {
        "tap_in" => "tap_in",
        "guest_out" => "guest_out",
        "to_client" => "to_client",
        _ => return None,
    };
    Some(TcpRecord {
        who,
        point,
        t: fields.get("t_ns")?.parse().ok()?,
        f: TcpFields {
            seq: fields.get("seq")?.parse().ok()?,
            ack: fields.get("ack")?.parse().ok()?,
            window: fields.get("win")?.parse().ok()?,
            flags: fields.get("flags")?.parse().ok()?,
            len: fields.get("len")?.parse().ok()?,
        },
    })
}

/// One stall of the client's data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stall {
    /// When it began, milliseconds after the `SINK` started, and how long it lasted.
    pub at_ms: u64,
    /// See [`Stall::at_ms`].
    pub lasted_ms: u64,
    /// Bytes the client could still send when it stopped: the right edge of the first ACK
    /// released for its data so far, minus the end of its highest segment (0 or less: the
    /// window was used up); none released in the stall: the latest before it.
    pub room: Option<i64>,
    /// The same against the PVM's and the SVM's own latest edge.
    pub pvm_room: Option<i64>,
    /// See [`Stall::pvm_room`].
    pub svm_room: Option<i64>,
    /// Milliseconds into the stall when both guests' edges were beyond the released one
    /// (the client could have been told it may send), if that happened.
    pub both_open_after_ms: Option<u64>,
    /// Frames released to the client during the stall.
    pub released: usize,
    /// Client segments without payload during the stall (zero-window probes, ACKs).
    pub probes: usize,
    /// What ended it: `retransmission` (the client sent again bytes it had sent) or `new data`.
    pub ended_by: &'static str,
}

/// The analysis of one `SINK`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkTrace {
    /// Client data segments seen at the primary's tap, and those that resent bytes.
    pub client_segments: usize,
    /// See [`SinkTrace::client_segments`].
    pub client_retransmissions: usize,
    /// ACKs released to the client, those that advertised a zero window, and those equal to
    /// the one before (ACK number and window: duplicate ACKs).
    pub released_acks: usize,
    /// See [`SinkTrace::released_acks`].
    pub released_zero_windows: usize,
    /// See [`SinkTrace::released_acks`].
    pub released_dups: usize,
    /// The stalls, longest first (at most [`MAX_STALLS`]), and how many there were in all.
    pub stalls: Vec<Stall>,
    /// See [`SinkTrace::stalls`].
    pub stall_count: usize,
    /// Their total length, milliseconds.
    pub stalled_ms: u64,
}

/// Stalls printed.
pub const MAX_STALLS: usize = 5;

fn edge(f: &TcpFields) -> u32 {
    f.ack.wrapping_add(u32::from(f.window))
}

/// `a - b` in sequence space.
fn diff(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}

/// Analyses the records between `from` and `to` (ns).
pub fn analyse(records: &[TcpRecord], from: u64, to: u64) -> SinkTrace {
    let mut recs: Vec<&TcpRecord> = records
        .iter()
        .filter(|r| (from..=to).contains(&r.t))
        .collect();
    recs.sort_by_key(|r| r.t);
    let mut trace = SinkTrace::default();
    // The client's data at the primary's tap.
    let data: Vec<&TcpRecord> = recs
        .iter()
        .copied()
        .filter(|r| r.who == "primary" && r.point == "tap_in" && r.f.len > 0)
        .collect();
    let mut highest: Option<u32> = None;
    let mut resent = vec![false; data.len()];
    for (i, r) in data.iter().enumerate() {
        let end = r.f.seq.wrapping_add(r.f.len);
        match highest {
            Some(h) if diff(r.f.seq, h) < 0 => resent[i] = true,
            _ => {}
        }
        if highest.is_none_or(|h| diff(end, h) > 0) {
            highest = Some(end);
        }
    }
    trace.client_segments = data.len();
    trace.client_retransmissions = resent.iter().filter(|r| **r).count();
    let released: Vec<&TcpRecord> = recs
        .iter()
        .copied()
        .filter(|r| r.who == "primary" && r.point == "to_client" && r.f.flags & ACK != 0)
        .collect();
    trace.released_acks = released.len();
    trace.released_zero_windows = released.iter().filter(|r| r.f.window == 0).count();
    trace.released_dups = released
        .windows(2)
        .filter(|w| w[1].f.len == 0 && (w[0].f.ack, w[0].f.window) == (w[1].f.ack, w[1].f.window))
        .count();
    // The latest ACK-carrying record of a kind at or before `t`.
    let latest = |who: &str, point: &str, t: u64| -> Option<&TcpRecord> {
        recs.iter()
            .copied()
            .rfind(|r| r.who == who && r.point == point && r.f.flags & ACK != 0 && r.t <= t)
    };
    // The answer to the client's data up to `h`: the first record of a kind in `(a, b)` that
    // acknowledges it, or else the latest one before `a`.
    let answer = |who: &str, point: &str, h: u32, a: u64, b: u64| -> Option<&TcpRecord> {
        recs.iter()
            .copied()
            .find(|r| {
                r.who == who
                    && r.point == point
                    && r.f.flags & ACK != 0
                    && r.t > a
                    && r.t < b
                    && diff(r.f.ack, h) >= 0
            })
            .or_else(|| latest(who, point, a))
    };
    let mut stalls = Vec::new();
    let mut high: Option<u32> = None;
    for (i, pair) in data.windows(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        let end = a.f.seq.wrapping_add(a.f.len);
        if high.is_none_or(|h| diff(end, h) > 0) {
            high = Some(end);
        }
        if b.t - a.t < STALL {
            continue;
        }
        let h = high.unwrap_or(end);
        let room =
            |who: &str, point: &str| answer(who, point, h, a.t, b.t).map(|r| diff(edge(&r.f), h));
        let rel = latest("primary", "to_client", a.t);
        // When, inside the stall, both guests' latest edges were beyond the released one.
        let mut both_open_after_ms = None;
        let (mut pvm, mut svm) = (
            latest("primary", "guest_out", a.t),
            latest("secondary", "guest_out", a.t),
        );
        let mut told = rel.map(|r| edge(&r.f));
        for r in recs.iter().filter(|r| r.t > a.t && r.t < b.t) {
            match (r.who, r.point) {
                ("primary", "guest_out") if r.f.flags & ACK != 0 => pvm = Some(r),
                ("secondary", "guest_out") if r.f.flags & ACK != 0 => svm = Some(r),
                ("primary", "to_client") if r.f.flags & ACK != 0 => told = Some(edge(&r.f)),
                _ => {}
            }
            if both_open_after_ms.is_none()
                && let (Some(p), Some(s), Some(t)) = (pvm, svm, told)
                && diff(edge(&p.f), t) > 0
                && diff(edge(&s.f), t) > 0
                && diff(edge(&p.f).min(edge(&s.f)), h) > 0
            {
                both_open_after_ms = Some((r.t - a.t) / 1_000_000);
            }
        }
        let inside = |r: &&&TcpRecord| r.t > a.t && r.t < b.t;
        stalls.push(Stall {
            at_ms: (a.t - from) / 1_000_000,
            lasted_ms: (b.t - a.t) / 1_000_000,
            room: room("primary", "to_client"),
            pvm_room: room("primary", "guest_out"),
            svm_room: room("secondary", "guest_out"),
            both_open_after_ms,
            released: released.iter().filter(inside).count(),
            probes: recs
                .iter()
                .filter(inside)
                .filter(|r| r.who == "primary" && r.point == "tap_in" && r.f.len == 0)
                .count(),
            ended_by: if resent[i + 1] {
                "retransmission"
            } else {
                "new data"
            },
        });
    }
    trace.stall_count = stalls.len();
    trace.stalled_ms = stalls.iter().map(|s| s.lasted_ms).sum();
    stalls.sort_by_key(|s| std::cmp::Reverse(s.lasted_ms));
    stalls.truncate(MAX_STALLS);
    trace.stalls = stalls;
    trace
}

impl fmt::Display for SinkTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "SINK windows: client data segments {} ({} resent); ACKs released {} ({} zero windows, {} duplicates); stalls of {}+ ms: {} totalling {} ms",
            self.client_segments,
            self.client_retransmissions,
            self.released_acks,
            self.released_zero_windows,
            self.released_dups,
            STALL / 1_000_000,
            self.stall_count,
            self.stalled_ms
        )?;
        let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        for s in &self.stalls {
            writeln!(
                f,
                "  stall at {} ms for {} ms: room released {} / PVM {} / SVM {} bytes; both guests open beyond the released edge after {} ms; released during it {}; client probes/ACKs {}; ended by {}",
                s.at_ms,
                s.lasted_ms,
                opt(s.room),
                opt(s.pvm_room),
                opt(s.svm_room),
                s.both_open_after_ms
                    .map_or("never".to_string(), |v| v.to_string()),
                s.released,
                s.probes,
                s.ended_by
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        who: &'static str,
        point: &'static str,
        ms: u64,
        seq: u32,
        ack: u32,
        window: u16,
        len: u32,
    ) -> TcpRecord {
        TcpRecord {
            who,
            point,
            t: ms * 1_000_000,
            f: TcpFields {
                seq,
                ack,
                window,
                flags: ACK,
                len,
            },
        }
    }

    #[test]
    fn a_stall_after_a_zero_window_shows_the_svm_opening_unheard() {
        let records = vec![
            rec("primary", "tap_in", 0, 1000, 1, 1000, 1000),
            rec("primary", "guest_out", 1, 1, 2000, 1000, 0),
            rec("secondary", "guest_out", 2, 1, 2000, 0, 0),
            // Released clamped to the SVM's zero window.
            rec("primary", "to_client", 3, 1, 2000, 0, 0),
            // The SVM opens at 40 ms; nothing tells the client.
            rec("secondary", "guest_out", 40, 1, 2000, 1000, 0),
            // A zero-window probe at 250 ms, then new data.
            rec("primary", "tap_in", 250, 1999, 1, 1000, 0),
            rec("primary", "to_client", 251, 1, 2000, 1000, 0),
            rec("primary", "tap_in", 252, 2000, 1, 1000, 1000),
            rec("primary", "tap_in", 253, 2000, 1, 1000, 1000),
        ];
        let t = analyse(&records, 0, 300_000_000);
        assert_eq!((t.client_segments, t.client_retransmissions), (3, 1));
        assert_eq!(
            (t.released_acks, t.released_zero_windows, t.released_dups),
            (2, 1, 0)
        );
        assert_eq!(t.stall_count, 1);
        let s = &t.stalls[0];
        assert_eq!((s.at_ms, s.lasted_ms), (0, 252));
        assert_eq!(
            (s.room, s.pvm_room, s.svm_room),
            (Some(0), Some(1000), Some(0))
        );
        assert_eq!(s.both_open_after_ms, Some(40));
        assert_eq!((s.released, s.probes, s.ended_by), (2, 1, "new data"));
    }

    #[test]
    fn records_outside_the_window_and_lines_without_fields_are_ignored() {
        assert_eq!(parse("primary", "hop point=tap_in key=01 t_ns=5"), None);
        let r = parse(
            "secondary",
            "hop point=guest_out key=01 t_ns=5 seq=1 ack=2 win=3 flags=16 len=0",
        )
        .expect("a full line parses");
        assert_eq!(
            (r.who, r.point, r.t, r.f.window),
            ("secondary", "guest_out", 5, 3)
        );
        let t = analyse(&[r], 10, 20);
        assert_eq!(t, SinkTrace::default());
    }
}
