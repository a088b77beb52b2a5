//! `colo bench`'s differing-reply phase (issue 10's goal "a reply that differs between the
//! guests: released within lone latency + checkpoint pause + one link round trip"): on the
//! pair, one client sends `NONCE` requests, which the two guests answer differently (each
//! prints its own TSC), so the primary's comparator finds a real miscompare and the reply is
//! released only at the checkpoint that follows (at the secondary's `CheckpointReceived`).
//! The phase measures, in the same run, the client's latency of each `NONCE`, and from the
//! primary's `checkpoint-done` line of the checkpoint it forced the PVM's pause, its pages and
//! the protocol's steps (`request_ready_us`, `ready_sent_us`, `sent_received_us`,
//! `received_loaded_us`, the `vm_*_us` parts), and from the secondary's `checkpoint-applied`
//! line of the same epoch its own time between `Request` in and `Ready` out; the difference of
//! the two `Request -> Ready` spans is one round trip of a protocol message across the peer
//! link (the writer, the socket, the other node's reader thread and loop, and back), with no
//! VM work in it.
//!
//! Before each `NONCE` the client asks the guests to write `touch` pages (`<id> TOUCH n`, whose
//! replies are equal), so the checkpoint the `NONCE` forces carries a few hundred dirty pages,
//! the size issue 10's pause goal names, rather than the handful the guest dirties on its own
//! between two checkpoints a few milliseconds apart.
//!
//! Pacing: a `NONCE` is sent only once the `checkpoint-done` of the previous one was read,
//! i.e. the primary resumed and went idle; its periodic timer was re-armed for a whole
//! interval at that resume (500 ms by default), while a `NONCE` and its checkpoint take a few
//! milliseconds. So every `NONCE` meets a fresh miscompare: never a checkpoint already
//! running (whose `Received` would release it early, a figure of that checkpoint rather than
//! of the one its miscompare forces) nor a periodic one about to start. The first `NONCE`
//! waits for a checkpoint of the pair's own for the same reason. The reasons of the
//! checkpoints the `NONCE`s met are counted, so a `NONCE` that met another one shows.
//!
//! Invariant: every figure is from this run's lines and this client's clock; a figure whose
//! lines were not seen is absent (`None`, printed `nan`), never made up; the phase fails only
//! when something broke (a wrong reply, a child gone, the run's deadline).

use super::breakdown::{Record, Sent, parse_hop};
use crate::demo::net::{Client, PAIR_IP, PairRun};
use crate::demo::{Percentiles, fields};
use colo_runtime::net::netns::NetNs;
use colo_runtime::pair::node_loop::hops::{now_ns, payload_key};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The primary's `checkpoint-done` line, as far as this phase reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// The checkpoint.
    pub epoch: u64,
    /// Why it was taken (`Miscompare`, `Periodic`, ...).
    pub reason: String,
    /// The PVM's pause (microseconds).
    pub pause_us: u64,
    /// Pages sent.
    pub pages: u64,
    /// `vm_pause_us`, `vm_collect_us`, `vm_send_us`, `vm_save_us`, `vm_resume_us`.
    pub vm_us: [u64; 5],
    /// `request_ready_us`, `ready_sent_us`, `sent_received_us`, `received_loaded_us` (each
    /// absent when the node did not see both ends).
    pub steps_us: [Option<u64>; 4],
}

/// Reads a primary's `checkpoint-done` line.
pub fn parse_done(text: &str) -> Option<Done> {
    let f = fields(text, "primary", "checkpoint-done")?;
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(Done {
        epoch: num("epoch")?,
        reason: f.get("reason")?.clone(),
        pause_us: num("pause_us")?,
        pages: num("pages")?,
        vm_us: [
            num("vm_pause_us").unwrap_or(0),
            num("vm_collect_us").unwrap_or(0),
            num("vm_send_us").unwrap_or(0),
            num("vm_save_us").unwrap_or(0),
            num("vm_resume_us").unwrap_or(0),
        ],
        steps_us: [
            num("request_ready_us"),
            num("ready_sent_us"),
            num("sent_received_us"),
            num("received_loaded_us"),
        ],
    })
}

/// Reads a secondary's `checkpoint-applied` line: the epoch and its `Request` in -> `Ready`
/// out (absent when not printed).
pub fn parse_applied(text: &str) -> Option<(u64, Option<u64>)> {
    let f = fields(text, "secondary", "checkpoint-applied")?;
    let epoch = f.get("epoch")?.parse::<u64>().ok()?;
    let hold = f
        .get("request_ready_us")
        .and_then(|v| v.parse::<u64>().ok());
    Some((epoch, hold))
}

/// One `NONCE`: the client's latency and the checkpoint it forced.
#[derive(Clone, Debug)]
struct Sample {
    latency: Duration,
    done: Done,
    /// The hop keys and the host clock's times of the request and its reply (`--breakdown`).
    sent: Sent,
}

/// The phase's figures.
#[derive(Clone, Debug, Default)]
pub struct DivergeFigures {
    /// The client's `NONCE` latency.
    pub latency: Percentiles,
    /// The PVM's pause of the checkpoints the `NONCE`s forced.
    pub pause: Percentiles,
    /// Their pages, median.
    pub pages_p50: Option<u64>,
    /// One link round trip (primary's `Request -> Ready` minus the secondary's), median
    /// (microseconds); `None` when no epoch had both lines.
    pub rtt_p50_us: Option<u64>,
    /// Medians (microseconds) of the parts of a `NONCE`'s time, see [`PARTS`].
    pub parts: Vec<(&'static str, Option<u64>)>,
    /// The reasons of the checkpoints the `NONCE`s met.
    pub reasons: BTreeMap<String, u32>,
    /// Every primary checkpoint the phase read (any reason), and `peer-lost` lines: the
    /// bench's own counts of the measured window.
    pub seen_checkpoints: BTreeMap<String, u32>,
    /// See [`DivergeFigures::seen_checkpoints`].
    pub false_alarms: u32,
    /// Every `NONCE` with the epoch of its checkpoint, and the hop records read meanwhile
    /// (none unless the nodes trace their hops): `diverge_trace.rs` lines them up.
    pub traced: Vec<(Sent, u64)>,
    /// See [`DivergeFigures::traced`].
    pub records: Vec<Record>,
}

/// The parts of a `NONCE`'s time, in the order they happen (the first four are the client's
/// wait; the last two follow the release and lengthen only the pause).
pub const PARTS: [&str; 9] = [
    "client -> both guests' replies -> miscompare, and release -> client (latency minus the three checkpoint steps)",
    "Request -> Ready (the SVM's pause + one link round trip)",
    "Ready -> Sent (the PVM's pause, capture and transfer)",
    "  of which Pause",
    "  of which CollectDirty + SaveDeviceState",
    "  of which SendPages",
    "Sent -> Received (the bulk's tail, the secondary's check; the reply is released here)",
    "Received -> Loaded (the secondary's apply and resume; after the release)",
    "Loaded -> resumed (the PVM's Resume)",
];

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

impl DivergeFigures {
    /// The figures of `samples`, with the secondary's `Request -> Ready` by epoch.
    fn of(samples: &[Sample], holds: &BTreeMap<u64, u64>) -> DivergeFigures {
        let us =
            |f: &dyn Fn(&Sample) -> Option<u64>| median(samples.iter().filter_map(f).collect());
        let step = |i: usize| move |s: &Sample| s.done.steps_us[i];
        let lat = |s: &Sample| u64::try_from(s.latency.as_micros()).unwrap_or(u64::MAX);
        let outside = |s: &Sample| {
            let inside = s.done.steps_us[..3].iter().copied().sum::<Option<u64>>()?;
            Some(lat(s).saturating_sub(inside))
        };
        let rtts: Vec<u64> = samples
            .iter()
            .filter_map(|s| {
                let hold = holds.get(&s.done.epoch)?;
                Some(s.done.steps_us[0]?.saturating_sub(*hold))
            })
            .collect();
        let mut reasons = BTreeMap::new();
        for s in samples {
            *reasons.entry(s.done.reason.clone()).or_default() += 1;
        }
        let values = [
            us(&outside),
            us(&step(0)),
            us(&step(1)),
            us(&|s| Some(s.done.vm_us[0])),
            us(&|s| Some(s.done.vm_us[1] + s.done.vm_us[3])),
            us(&|s| Some(s.done.vm_us[2])),
            us(&step(2)),
            us(&step(3)),
            us(&|s| Some(s.done.vm_us[4])),
        ];
        DivergeFigures {
            latency: Percentiles::of(&samples.iter().map(|s| s.latency).collect::<Vec<_>>()),
            pause: Percentiles::of(
                &samples
                    .iter()
                    .map(|s| Duration::from_micros(s.done.pause_us))
                    .collect::<Vec<_>>(),
            ),
            pages_p50: us(&|s| Some(s.done.pages)),
            rtt_p50_us: median(rtts),
            parts: PARTS.iter().copied().zip(values).collect(),
            reasons,
            ..DivergeFigures::default()
        }
    }

    /// Lone VM median + pause median + link round trip: the goal's bound for this run.
    pub fn bound_us(&self, lone_p50_us: u64) -> Option<u64> {
        (self.pause.count > 0).then_some(lone_p50_us + self.pause.median_us + self.rtt_p50_us?)
    }
}

/// What the phase has read of the pair's lines so far.
#[derive(Default)]
struct Lines {
    /// The secondary's `Request -> Ready` by epoch.
    holds: BTreeMap<u64, u64>,
    seen: BTreeMap<String, u32>,
    false_alarms: u32,
    records: Vec<Record>,
}

impl Lines {
    /// The next primary `checkpoint-done` read after `after`, noting everything on the way.
    fn next_done(
        &mut self,
        pair: &mut PairRun,
        after: Instant,
        since: Instant,
    ) -> Result<Done, String> {
        loop {
            let Some(line) = pair.next("the differing replies' checkpoints")? else {
                continue;
            };
            if super::false_alarm(&line.text) {
                self.false_alarms += 1;
            }
            if let Some(r) = parse_hop(line.who, &line.text) {
                self.records.push(r);
                continue;
            }
            if let Some((epoch, Some(hold))) = parse_applied(&line.text) {
                self.holds.insert(epoch, hold);
            }
            let Some(done) = parse_done(&line.text) else {
                continue;
            };
            if line.at >= since {
                *self.seen.entry(done.reason.clone()).or_default() += 1;
            }
            if line.at >= after {
                return Ok(done);
            }
        }
    }
}

/// `<id> NONCE`: one reply, which the two guests make differently; returns it with the hop
/// keys and the host clock's times.
fn nonce(client: &mut Client, id: u64) -> Result<Sent, String> {
    let request = format!("{id} NONCE");
    let sent_ns = now_ns();
    let reply = client.conn.ask(&request)?;
    let replied_ns = now_ns();
    match reply.strip_prefix(&format!("{id} NONCE ")) {
        Some(t) if t.len() == 16 && u64::from_str_radix(t, 16).is_ok() => Ok(Sent {
            request_key: payload_key(format!("{request}\n").as_bytes()),
            reply_key: payload_key(format!("{reply}\n").as_bytes()),
            sent_ns,
            replied_ns,
        }),
        _ => Err(format!("request {request:?} got {reply:?}")),
    }
}

/// `<id> TOUCH n`: the guest writes `n` pages and says so.
fn touch(client: &mut Client, id: u64, pages: u32) -> Result<(), String> {
    let line = client.conn.ask(&format!("{id} TOUCH {pages}"))?;
    if line == format!("{id} TOUCHED {pages}") {
        Ok(())
    } else {
        Err(format!("request {id} (TOUCH {pages}) got {line:?}"))
    }
}

/// Runs `count` paced `NONCE`s against the pair, each after a `TOUCH` of `pages` pages (see
/// the module doc); `since` starts the window whose checkpoints the bench counts.
pub fn run(
    ns: &NetNs,
    pair: &mut PairRun,
    count: u32,
    pages: u32,
    since: Instant,
) -> Result<DivergeFigures, String> {
    let mut client = Client::connect(ns, PAIR_IP)?;
    let mut lines = Lines::default();
    // In step with the pair's own checkpoints first (see the module doc, "Pacing").
    lines.next_done(pair, Instant::now(), since)?;
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..u64::from(count) {
        touch(&mut client, 2 * i + 1, pages)?;
        let at = Instant::now();
        let sent = nonce(&mut client, 2 * i + 2)?;
        let latency = at.elapsed();
        let done = lines.next_done(pair, at, since)?;
        samples.push(Sample {
            latency,
            done,
            sent,
        });
    }
    // The secondary's line of the last epoch may still be on its way.
    let last = samples.last().map(|s| s.done.epoch);
    let until = Instant::now() + Duration::from_millis(200);
    while last.is_some_and(|e| !lines.holds.contains_key(&e)) && Instant::now() < until {
        if let Some(line) = pair.next("the secondary's last checkpoint line")? {
            if let Some((epoch, Some(hold))) = parse_applied(&line.text) {
                lines.holds.insert(epoch, hold);
            }
            if let Some(r) = parse_hop(line.who, &line.text) {
                lines.records.push(r);
            }
        }
    }
    let mut figures = DivergeFigures::of(&samples, &lines.holds);
    figures.seen_checkpoints = lines.seen;
    figures.false_alarms = lines.false_alarms;
    figures.traced = samples.iter().map(|s| (s.sent, s.done.epoch)).collect();
    figures.records = lines.records;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: &str = "primary: checkpoint-done epoch=12 reason=Miscompare pause_us=1480 pages=212 bytes=905000 step=0 vm_pause_us=30 vm_collect_us=20 vm_send_us=300 vm_save_us=140 vm_resume_us=2 request_ready_us=250 ready_sent_us=520 sent_received_us=180 received_loaded_us=700";

    #[test]
    fn a_checkpoint_done_line_gives_its_pause_and_steps() {
        let done = parse_done(DONE).expect("a checkpoint-done line");
        assert_eq!(done.epoch, 12);
        assert_eq!(done.reason, "Miscompare");
        assert_eq!((done.pause_us, done.pages), (1480, 212));
        assert_eq!(done.vm_us, [30, 20, 300, 140, 2]);
        assert_eq!(done.steps_us, [Some(250), Some(520), Some(180), Some(700)]);
    }

    #[test]
    fn a_line_without_the_steps_or_of_another_kind_reads_as_such() {
        let old =
            "primary: checkpoint-done epoch=3 reason=Periodic pause_us=900 pages=70 bytes=1 step=0";
        let done = parse_done(old).expect("the fields it has");
        assert_eq!(done.steps_us, [None; 4]);
        assert_eq!(parse_done("secondary: checkpoint-done epoch=3"), None);
        assert_eq!(parse_done("primary: checkpoint-aborted epoch=3"), None);
        assert_eq!(
            parse_done("primary: checkpoint-done epoch=x reason=Periodic pause_us=1 pages=1"),
            None,
            "a garbled number is no figure"
        );
    }

    #[test]
    fn a_checkpoint_applied_line_gives_the_secondarys_hold() {
        let line = "secondary: checkpoint-applied epoch=12 pause_us=900 pages=212 bytes=905000 step=0 request_ready_us=60";
        assert_eq!(parse_applied(line), Some((12, Some(60))));
        assert_eq!(
            parse_applied("secondary: checkpoint-applied epoch=4 pause_us=1"),
            Some((4, None))
        );
        assert_eq!(parse_applied(DONE), None);
    }

    fn sample(latency_us: u64, epoch: u64, pause_us: u64, steps: [u64; 4]) -> Sample {
        Sample {
            sent: Sent {
                request_key: 1,
                reply_key: 2,
                sent_ns: 0,
                replied_ns: latency_us * 1000,
            },
            latency: Duration::from_micros(latency_us),
            done: Done {
                epoch,
                reason: "Miscompare".to_string(),
                pause_us,
                pages: 200 + epoch,
                vm_us: [30, 20, 300, 140, 2],
                steps_us: steps.map(Some),
            },
        }
    }

    #[test]
    fn the_round_trip_is_the_primarys_request_ready_minus_the_secondarys_hold() {
        let samples = [
            sample(2_000, 1, 1_500, [250, 500, 200, 700]),
            sample(3_000, 2, 1_700, [300, 600, 300, 800]),
            sample(2_500, 3, 1_600, [280, 550, 250, 750]),
        ];
        // The secondary's line of epoch 3 was not seen: that epoch gives no round trip.
        let holds = BTreeMap::from([(1, 60), (2, 100)]);
        let f = DivergeFigures::of(&samples, &holds);
        assert_eq!(f.latency.median_us, 2_500);
        assert_eq!(f.pause.median_us, 1_600);
        assert_eq!(f.pages_p50, Some(202));
        // Round trips 190 and 200: the median of two is the upper one.
        assert_eq!(f.rtt_p50_us, Some(200));
        assert_eq!(f.bound_us(100), Some(100 + 1_600 + 200));
        // Outside the three steps before the release: 1,050, 1,800 and 1,420 us.
        assert_eq!(f.parts[0].1, Some(1_420));
        assert_eq!(f.parts[1].1, Some(280));
        assert_eq!(f.parts[6].1, Some(250));
        assert_eq!(f.reasons.get("Miscompare"), Some(&3));
    }

    #[test]
    fn without_samples_there_is_no_bound() {
        let f = DivergeFigures::of(&[], &BTreeMap::new());
        assert_eq!(f.bound_us(100), None);
        assert_eq!(f.rtt_p50_us, None);
        assert!(f.parts.iter().all(|(_, v)| v.is_none()));
    }
}
