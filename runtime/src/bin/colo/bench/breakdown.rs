//! `colo bench --breakdown`: where one request's time goes through the pair. The nodes run with
//! `COLO_TRACE_HOPS=1` (`node_loop::hops`) and print, per data-carrying TCP frame, the points
//! it passed with the host's monotonic clock; the bench sends `INCR` requests back to back,
//! notes on the same clock when each left the client and when its reply arrived, and lines up
//! every hop of a request (its payload's key) and of its reply (the reply line's key, the
//! same in both guests' copies). It prints, per hop, the median time since the client sent.
//! Then a `SINK` (`sink_trace.rs`) and, last, the differing replies (`NONCE`s, each forcing a
//! checkpoint) step by step (`diverge_trace.rs`).
//!
//! Invariant: a hop missing for a request (a frame lost and retransmitted under another
//! segmentation, a line not yet printed) is left out of that hop's median and counted, never
//! guessed; medians are over the requests that have the hop.

use super::diverge_trace::DivergeTrace;
use super::sink_trace::{self, SinkTrace};
use crate::demo::net::{PAIR_IP, PairRun};
use colo_runtime::net::netns::NetNs;
use colo_runtime::pair::node_loop::hops::{ACK_KEY, now_ns, payload_key};
use std::collections::HashMap;
use std::time::Duration;

/// The hops in path order: who records it, its point name, what it means.
pub const HOPS: [(&str, &str, &str); 15] = [
    (
        "primary",
        "tap_in",
        "client -> tap -> primary's tap reader thread",
    ),
    (
        "primary",
        "loop_in",
        "-> primary's node loop (thread hand-off)",
    ),
    ("primary", "peer_out", "mirrored onto the peer link"),
    ("primary", "to_guest", "-> PVM's virtio-net RX"),
    ("secondary", "peer_in", "-> secondary's peer reader thread"),
    (
        "secondary",
        "loop_peer",
        "-> secondary's node loop (thread hand-off)",
    ),
    ("secondary", "to_guest", "-> SVM's virtio-net RX"),
    ("primary", "guest_out", "PVM sent its reply (virtio-net TX)"),
    ("primary", "loop_guest", "-> primary's node loop"),
    ("secondary", "guest_out", "SVM sent its reply"),
    ("secondary", "loop_guest", "-> secondary's node loop"),
    ("secondary", "peer_out", "SVM's reply onto the peer link"),
    ("primary", "peer_in", "-> primary's peer reader thread"),
    ("primary", "loop_peer", "-> primary's node loop: compared"),
    ("primary", "to_client", "released to the tap"),
];
/// The first reply hop in [`HOPS`] (the earlier ones carry the request's key).
const FIRST_REPLY_HOP: usize = 7;

/// One hop's line in the breakdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopFigure {
    /// Who and which point.
    pub who: &'static str,
    /// See [`HopFigure::who`].
    pub point: &'static str,
    /// What it means.
    pub what: &'static str,
    /// Median time since the client sent the request (microseconds).
    pub median_us: Option<u64>,
    /// Requests that had this hop.
    pub seen: usize,
    /// The same median over the slowest tenth of the requests (client latency at or above
    /// its 90th percentile): where the tail's time goes.
    pub tail_median_us: Option<u64>,
}

/// The breakdown of `requests` requests.
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    /// Per hop, in path order, then the client's reply as the last line.
    pub hops: Vec<HopFigure>,
    /// Requests measured.
    pub requests: usize,
    /// The guests' bare ACKs during a `SINK` through the pair.
    pub acks: AckFigures,
    /// The windows and stalls of the same `SINK` (`sink_trace.rs`).
    pub sink: SinkTrace,
    /// The client socket's retransmissions during the `SINK` (`TCP_INFO`'s
    /// `tcpi_total_retrans` after minus before), if the kernel told.
    pub client_retrans: Option<u32>,
    /// The differing replies' steps (`diverge_trace.rs`).
    pub diverge: DivergeTrace,
}

/// The kernel's count of segments `stream` retransmitted (`TCP_INFO`).
fn total_retrans(stream: &std::net::TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is open (borrowed from `stream`), `info` is writable for `len` bytes and
    // `len` points to its size, which the kernel lowers to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_total_retrans)
}

/// What happened to the guests' bare ACKs (keyed by ACK number) while the client sent bulk
/// bytes: the PVM's ACK may reach the client only once the SVM acknowledged as far (the
/// comparator's min-ACK guard), so the SVM's lag shows up as the PVM ACK's hold time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckFigures {
    /// Bytes sent and how long the `SINK` took (microseconds).
    pub bytes: u64,
    /// See [`AckFigures::bytes`].
    pub took_us: u64,
    /// Distinct ACK numbers the PVM and the SVM sent bare ACKs for.
    pub pvm_acks: usize,
    /// See [`AckFigures::pvm_acks`].
    pub svm_acks: usize,
    /// ACK numbers both sent.
    pub both: usize,
    /// Median and 90th percentile of the SVM's ACK time minus the PVM's, same number (us).
    pub svm_lag_us: (i64, i64),
    /// Median and 90th percentile of the PVM ACK's release to the tap after the PVM sent it.
    pub held_us: (i64, i64),
    /// PVM ACK numbers never released as such (a later ACK covered them).
    pub never_released: usize,
    /// Bare ACKs the SVM sent again with the same number (duplicate ACKs: it missed a segment
    /// the PVM got, e.g. beyond its own receive window).
    pub svm_dup_acks: usize,
}

fn median_p90(mut v: Vec<i64>) -> (i64, i64) {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (at(0.5), at(0.9))
}

/// Lines up the guests' bare ACKs recorded between `from_ns` and `to_ns`.
pub fn ack_figures(records: &[(String, String, u64, u64)], from_ns: u64, to_ns: u64) -> AckFigures {
    let first = |who: &str, point: &str| -> HashMap<u64, u64> {
        let mut m: HashMap<u64, u64> = HashMap::new();
        for (w, p, key, t) in records {
            if w == who && p == point && key & ACK_KEY != 0 && (from_ns..=to_ns).contains(t) {
                m.entry(*key)
                    .and_modify(|v| *v = (*v).min(*t))
                    .or_insert(*t);
            }
        }
        m
    };
    let svm_sent = records
        .iter()
        .filter(|(w, p, key, t)| {
            w == "secondary"
                && p == "guest_out"
                && key & ACK_KEY != 0
                && (from_ns..=to_ns).contains(t)
        })
        .count();
    let pvm = first("primary", "guest_out");
    let svm = first("secondary", "guest_out");
    let released = first("primary", "to_client");
    let lag: Vec<i64> = pvm
        .iter()
        .filter_map(|(k, t)| Some(*svm.get(k)? as i64 - *t as i64))
        .map(|d| d / 1000)
        .collect();
    let held: Vec<i64> = pvm
        .iter()
        .filter_map(|(k, t)| Some(*released.get(k)? as i64 - *t as i64))
        .map(|d| d / 1000)
        .collect();
    AckFigures {
        bytes: 0,
        took_us: to_ns.saturating_sub(from_ns) / 1000,
        pvm_acks: pvm.len(),
        svm_acks: svm.len(),
        both: lag.len(),
        svm_lag_us: median_p90(lag),
        held_us: median_p90(held.clone()),
        never_released: pvm.len() - held.len(),
        svm_dup_acks: svm_sent - svm.len(),
    }
}

/// A hop record: who printed it, its point, its key and its time (ns, `CLOCK_MONOTONIC`).
pub type Record = (String, String, u64, u64);

/// One request as the client saw it: its key, its reply's key, send and reply times (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub request_key: u64,
    pub reply_key: u64,
    pub sent_ns: u64,
    pub replied_ns: u64,
}

/// A parsed `hop point=P key=K t_ns=T` line of `who`.
pub fn parse_hop(who: &str, text: &str) -> Option<(String, String, u64, u64)> {
    let f: HashMap<&str, &str> = text
        .strip_prefix("hop ")?
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let point = f.get("point")?.to_string();
    let key = u64::from_str_radix(f.get("key")?, 16).ok()?;
    let t = f.get("t_ns")?.parse().ok()?;
    Some((who.to_string(), point, key, t))
}

/// The earliest time of each `(who, point, key)` in `records` (a retransmission or a later
/// copy of a frame comes later and does not count).
pub fn first_records(records: &[Record]) -> HashMap<(&str, &str, u64), u64> {
    let mut first: HashMap<(&str, &str, u64), u64> = HashMap::new();
    for (who, point, key, t) in records {
        first
            .entry((who.as_str(), point.as_str(), *key))
            .and_modify(|v| *v = (*v).min(*t))
            .or_insert(*t);
    }
    first
}

/// The median of `v` (the upper one of an even count), `None` when empty.
pub fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Lines up the hops of `sent` from the recorded `(who, point, key, t_ns)` (the first record
/// of a key at a point counts: a retransmission comes later).
pub fn compute(sent: &[Sent], records: &[Record]) -> Breakdown {
    let first = first_records(records);
    let latency = |s: &Sent| s.replied_ns.saturating_sub(s.sent_ns);
    let mut latencies: Vec<u64> = sent.iter().map(latency).collect();
    latencies.sort_unstable();
    let p90 = latencies
        .get(latencies.len() * 9 / 10)
        .copied()
        .unwrap_or(u64::MAX);
    let tail: Vec<&Sent> = sent.iter().filter(|s| latency(s) >= p90).collect();
    let offsets = |i: usize, who: &str, point: &str, of: &mut dyn Iterator<Item = &Sent>| {
        of.filter_map(|s| {
            let key = if i < FIRST_REPLY_HOP {
                s.request_key
            } else {
                s.reply_key
            };
            let t = *first.get(&(who, point, key))?;
            Some(t.saturating_sub(s.sent_ns) / 1000)
        })
        .collect::<Vec<u64>>()
    };
    let mut hops = Vec::new();
    for (i, (who, point, what)) in HOPS.iter().enumerate() {
        let all = offsets(i, who, point, &mut sent.iter());
        let slow = offsets(i, who, point, &mut tail.iter().copied());
        hops.push(HopFigure {
            who,
            point,
            what,
            seen: all.len(),
            median_us: median(all),
            tail_median_us: median(slow),
        });
    }
    hops.push(HopFigure {
        who: "client",
        point: "reply",
        what: "-> the client has the reply",
        seen: sent.len(),
        median_us: median(sent.iter().map(|s| latency(s) / 1000).collect()),
        tail_median_us: median(tail.iter().map(|s| latency(s) / 1000).collect()),
    });
    Breakdown {
        hops,
        requests: sent.len(),
        acks: AckFigures::default(),
        sink: SinkTrace::default(),
        client_retrans: None,
        diverge: DivergeTrace::default(),
    }
}

impl std::fmt::Display for Breakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "colo bench --breakdown: {} INCR requests through the pair; median microseconds since the client sent (tail: over the slowest tenth)",
            self.requests
        )?;
        writeln!(
            f,
            "  {:>7} {:>7} {:>8} {:>9}  {:<22} what",
            "at_us", "step_us", "tail_at", "tail_step", "hop"
        )?;
        let step_of = |v: Option<u64>, l: Option<u64>| match (v, l) {
            (Some(v), Some(l)) => (v as i64 - l as i64).to_string(),
            _ => "-".to_string(),
        };
        let mut last = Some(0);
        let mut tail_last = Some(0);
        for h in &self.hops {
            let at = h.median_us.map_or("-".to_string(), |v| v.to_string());
            let step = step_of(h.median_us, last);
            let tail_at = h.tail_median_us.map_or("-".to_string(), |v| v.to_string());
            let tail_step = step_of(h.tail_median_us, tail_last);
            if h.tail_median_us.is_some() {
                tail_last = h.tail_median_us;
            }
            let missing = if h.seen < self.requests {
                format!(" (seen for {} of {})", h.seen, self.requests)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {at:>7} {step:>7} {tail_at:>8} {tail_step:>9}  {:<22} {}{missing}",
                format!("{}.{}", h.who, h.point),
                h.what
            )?;
            if h.median_us.is_some() {
                last = h.median_us;
            }
        }
        let a = &self.acks;
        write!(
            f,
            "SINK of {} bytes through the pair in {} us: bare ACKs by ACK number: PVM {}, SVM {}, both {}; SVM's ACK minus PVM's (same number) median {} us, p90 {} us; PVM ACK held before release median {} us, p90 {} us; {} PVM ACK numbers never released (a later ACK covered them); SVM duplicate ACKs {}",
            a.bytes,
            a.took_us,
            a.pvm_acks,
            a.svm_acks,
            a.both,
            a.svm_lag_us.0,
            a.svm_lag_us.1,
            a.held_us.0,
            a.held_us.1,
            a.never_released,
            a.svm_dup_acks
        )?;
        writeln!(f)?;
        write!(f, "{}", self.sink)?;
        match self.client_retrans {
            Some(n) => writeln!(
                f,
                "client socket retransmissions during the SINK (TCP_INFO): {n}"
            )?,
            None => writeln!(f, "client socket retransmissions during the SINK: unknown")?,
        }
        write!(f, "{}", self.diverge)
    }
}

/// Runs `requests` `INCR`s, a `SINK` and `nonces` `NONCE`s (each after a `TOUCH` of `pages`)
/// against the traced pair and builds the breakdown.
pub fn run(
    ns: &NetNs,
    pair: &mut PairRun,
    requests: u32,
    nonces: u32,
    pages: u32,
) -> Result<Breakdown, String> {
    let mut client = crate::demo::net::Client::connect(ns, PAIR_IP)?;
    for _ in 0..20 {
        client.incr()?;
    }
    let mut sent = Vec::with_capacity(requests as usize);
    for i in 0..u64::from(requests) {
        let id = 1_000_000 + i;
        let request = format!("{id} INCR n");
        let sent_ns = now_ns();
        let reply = client.conn.ask(&request)?;
        let replied_ns = now_ns();
        if !reply.starts_with(&format!("{id} VAL ")) {
            return Err(format!("request {request:?} got {reply:?}"));
        }
        sent.push(Sent {
            request_key: payload_key(format!("{request}\n").as_bytes()),
            reply_key: payload_key(format!("{reply}\n").as_bytes()),
            sent_ns,
            replied_ns,
        });
    }
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let retrans_before = total_retrans(client.conn.stream());
    let sink_from = now_ns();
    client.sink(&body)?;
    let sink_to = now_ns();
    let retrans_after = total_retrans(client.conn.stream());
    // The nodes print their records every 50 ms: collect until a quiet stretch.
    let mut records = Vec::new();
    let mut tcp_records = Vec::new();
    let until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < until {
        if let Some(line) = pair.next("the hop records")? {
            if let Some(r) = parse_hop(line.who, &line.text) {
                records.push(r);
            }
            if let Some(r) = sink_trace::parse(line.who, &line.text) {
                tcp_records.push(r);
            }
        }
    }
    let mut breakdown = compute(&sent, &records);
    breakdown.acks = AckFigures {
        bytes: body.len() as u64,
        ..ack_figures(&records, sink_from, sink_to)
    };
    breakdown.sink = sink_trace::analyse(&tcp_records, sink_from, sink_to);
    breakdown.client_retrans = retrans_before
        .zip(retrans_after)
        .map(|(b, a)| a.saturating_sub(b));
    // Last, so its reading of the pair's lines takes none of the records above.
    let mut diverge = super::diverge::run(ns, pair, nonces, pages, std::time::Instant::now())?;
    let until = std::time::Instant::now() + Duration::from_millis(300);
    while std::time::Instant::now() < until {
        if let Some(line) = pair.next("the differing replies' hop records")?
            && let Some(r) = parse_hop(line.who, &line.text)
        {
            diverge.records.push(r);
        }
    }
    breakdown.diverge = super::diverge_trace::compute(&diverge.traced, &diverge.records);
    Ok(breakdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_line_up_by_key_and_take_the_first_record() {
        let sent = [Sent {
            request_key: 1,
            reply_key: 2,
            sent_ns: 1_000_000,
            replied_ns: 1_500_000,
        }];
        let rec = |who: &str, point: &str, key, t| (who.to_string(), point.to_string(), key, t);
        let records = vec![
            rec("primary", "tap_in", 1, 1_010_000),
            rec("primary", "tap_in", 1, 1_300_000), // a retransmission
            rec("secondary", "to_guest", 1, 1_100_000),
            rec("primary", "to_client", 2, 1_490_000),
            rec("primary", "to_client", 1, 1_000_500), // the request's key: not this hop
        ];
        let b = compute(&sent, &records);
        let at = |who: &str, point: &str| {
            b.hops
                .iter()
                .find(|h| h.who == who && h.point == point)
                .unwrap()
                .median_us
        };
        assert_eq!(at("primary", "tap_in"), Some(10));
        assert_eq!(at("secondary", "to_guest"), Some(100));
        assert_eq!(at("primary", "to_client"), Some(490));
        assert_eq!(at("primary", "loop_in"), None);
        assert_eq!(at("client", "reply"), Some(500));
    }

    #[test]
    fn the_tail_column_is_the_median_over_the_slowest_tenth() {
        // Ten requests 1 ms apart: nine answered in 100 us whose SVM reply reached the
        // primary's peer reader 50 us after the send, one answered in 2,000 us whose reply
        // waited there until 1,900 us.
        let mut sent = Vec::new();
        let mut records = Vec::new();
        for i in 0..10u64 {
            let base = i * 1_000_000;
            let slow = i == 7;
            sent.push(Sent {
                request_key: 100 + i,
                reply_key: 200 + i,
                sent_ns: base,
                replied_ns: base + if slow { 2_000_000 } else { 100_000 },
            });
            let reader = if slow { 1_900_000 } else { 50_000 };
            records.push((
                "primary".to_string(),
                "peer_in".to_string(),
                200 + i,
                base + reader,
            ));
        }
        let b = compute(&sent, &records);
        let hop = |who: &str, point: &str| {
            b.hops
                .iter()
                .find(|h| h.who == who && h.point == point)
                .unwrap()
        };
        assert_eq!(hop("primary", "peer_in").median_us, Some(50));
        assert_eq!(hop("primary", "peer_in").tail_median_us, Some(1_900));
        assert_eq!(hop("client", "reply").median_us, Some(100));
        assert_eq!(hop("client", "reply").tail_median_us, Some(2_000));
        let missing = hop("primary", "tap_in");
        assert_eq!(missing.tail_median_us, None, "no record, no figure");
        let text = b.to_string();
        assert!(text.contains("tail_at"), "{text}");
    }

    #[test]
    fn ack_hold_is_release_minus_the_pvms_ack_of_the_same_number() {
        let rec = |who: &str, point: &str, key, t| (who.to_string(), point.to_string(), key, t);
        let records = vec![
            rec("primary", "guest_out", ACK_KEY | 10, 1_000_000),
            rec("secondary", "guest_out", ACK_KEY | 10, 1_004_000),
            rec("primary", "to_client", ACK_KEY | 10, 1_005_000),
            rec("primary", "guest_out", ACK_KEY | 20, 2_000_000),
            rec("primary", "guest_out", 77, 2_000_000), // data, not an ACK
            rec("secondary", "guest_out", ACK_KEY | 30, 2_500_000),
            rec("primary", "to_client", ACK_KEY | 10, 9_000_000), // outside the window
        ];
        let a = ack_figures(&records, 500_000, 3_000_000);
        assert_eq!((a.pvm_acks, a.svm_acks, a.both), (2, 2, 1));
        assert_eq!(a.svm_lag_us, (4, 4), "4,000 ns");
        assert_eq!(a.held_us, (5, 5));
        assert_eq!(a.never_released, 1);
        assert_eq!(a.svm_dup_acks, 0);
    }

    #[test]
    fn hop_lines_parse() {
        assert_eq!(
            parse_hop("primary", "hop point=tap_in key=00000000000000ff t_ns=123"),
            Some(("primary".to_string(), "tap_in".to_string(), 255, 123))
        );
        assert_eq!(
            parse_hop("primary", "primary: checkpoint-done epoch=3"),
            None
        );
        assert_eq!(parse_hop("primary", "hop point=x key=zz t_ns=1"), None);
    }
}
