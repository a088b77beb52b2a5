//! A link emulator in user space: two taps, one in each of two network namespaces, joined by
//! threads that carry every Ethernet frame across with a chosen delay, jitter, loss,
//! duplication and reordering, or not at all while the link is cut. It stands in for `tc
//! netem` on kernels built without `sch_netem` (this project's machines): the kernels on both
//! ends see a real link with real TCP retransmissions, and the faults can change while traffic
//! flows (`set_faults`, `set_down`), which is how the two-host tests cut and restore the
//! replication link.
//!
//! The fate of each frame is drawn by [`FaultDraw`] from a seeded generator, so a test's fault
//! pattern is reproducible draw by draw (the timing of the frames themselves is the kernels').
//!
//! Invariants: every frame read is counted exactly once in [`LinkStats`] as forwarded, lost,
//! cut or refused by a full tap queue (a duplicate adds one more forward); frames leave each
//! direction in order of their due time, so with no jitter and no reordering the link keeps
//! order; dropping the [`LinkEmulator`] stops and joins its threads within [`POLL_MS`].

use crate::net::tap::Tap;
use parking_lot::Mutex;
use std::collections::BinaryHeap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a direction's thread sleeps before checking its stop flag.
pub const POLL_MS: i32 = 10;

/// Parts per million: 10_000 is 1 %.
pub type Ppm = u32;

/// What the link does to frames. The default is a perfect link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform jitter: each frame's delay is drawn from `delay ± jitter`.
    pub jitter: Duration,
    /// Share of frames lost.
    pub loss: Ppm,
    /// Share of frames delivered twice.
    pub duplicate: Ppm,
    /// Share of frames sent at once, overtaking frames still delayed (netem's `reorder`).
    pub reorder: Ppm,
    /// The link is cut: every frame is dropped (counted as `cut`).
    pub down: bool,
}

/// Counters of one direction, or of both summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames written to the far tap (duplicates included).
    pub forwarded: u64,
    /// Frames dropped by the `loss` draw.
    pub lost: u64,
    /// Frames dropped because the link was down.
    pub cut: u64,
    /// Extra copies sent by the `duplicate` draw.
    pub duplicated: u64,
    /// Frames sent at once by the `reorder` draw.
    pub reordered: u64,
    /// Frames the far tap refused (its queue full): lost like on a congested wire.
    pub refused: u64,
}

impl LinkStats {
    fn add(&mut self, o: &LinkStats) {
        self.forwarded += o.forwarded;
        self.lost += o.lost;
        self.cut += o.cut;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.refused += o.refused;
    }
}

/// What happens to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Dropped: the link is down.
    Cut,
    /// Dropped by the loss draw.
    Lost,
    /// Sent after `delay`; `copies` is 1, or 2 for a duplicate; `reordered` when the reorder
    /// draw sent it without delay.
    Send {
        /// How long the frame is held.
        delay: Duration,
        /// 1, or 2 when duplicated.
        copies: u8,
        /// Sent at once to overtake delayed frames.
        reordered: bool,
    },
}

/// The seeded draws that decide each frame's fate (splitmix64: small, fast, reproducible).
#[derive(Clone, Debug)]
pub struct FaultDraw {
    state: u64,
}

impl FaultDraw {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> FaultDraw {
        FaultDraw { state: seed }
    }

    /// The next raw draw (also used by tests that want reproducible choices of their own).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, ppm: Ppm) -> bool {
        ppm > 0 && self.next_u64() % 1_000_000 < u64::from(ppm)
    }

    /// The fate of the next frame under `faults`.
    pub fn fate(&mut self, faults: &LinkFaults) -> Fate {
        if faults.down {
            return Fate::Cut;
        }
        if self.chance(faults.loss) {
            return Fate::Lost;
        }
        let copies = if self.chance(faults.duplicate) { 2 } else { 1 };
        if self.chance(faults.reorder) {
            return Fate::Send {
                delay: Duration::ZERO,
                copies,
                reordered: true,
            };
        }
        let jitter = u64::try_from(faults.jitter.as_micros()).unwrap_or(u64::MAX);
        let base = u64::try_from(faults.delay.as_micros()).unwrap_or(u64::MAX);
        let micros = if jitter == 0 {
            base
        } else {
            let offset = self.next_u64() % (2 * jitter + 1);
            (base + offset).saturating_sub(jitter)
        };
        Fate::Send {
            delay: Duration::from_micros(micros),
            copies,
            reordered: false,
        }
    }
}

/// A frame waiting for its due time (ordered by due time, then by arrival).
#[derive(Debug, PartialEq, Eq)]
struct Pending {
    due: Instant,
    seq: u64,
    frame: Vec<u8>,
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: the earliest (due, seq) must compare greatest.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug)]
struct Shared {
    faults: Mutex<LinkFaults>,
    stats: [Mutex<LinkStats>; 2],
    stop: AtomicBool,
}

/// Two taps joined by the emulated link; dropping it stops the link.
#[derive(Debug)]
pub struct LinkEmulator {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl LinkEmulator {
    /// Joins `a` and `b` (each opened in its own namespace, see `NetNs::run`) under `faults`;
    /// the two directions draw from generators derived from `seed`.
    pub fn start(a: Tap, b: Tap, faults: LinkFaults, seed: u64) -> io::Result<LinkEmulator> {
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            stats: [
                Mutex::new(LinkStats::default()),
                Mutex::new(LinkStats::default()),
            ],
            stop: AtomicBool::new(false),
        });
        let a_out = a.try_clone()?;
        let b_out = b.try_clone()?;
        let mut threads = Vec::new();
        for (dir, from, to) in [(0usize, a, b_out), (1, b, a_out)] {
            let shared = Arc::clone(&shared);
            let draw = FaultDraw::new(seed ^ (dir as u64).wrapping_mul(0x5851_f42d_4c95_7f2d));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("linkem-{dir}"))
                    .spawn(move || carry(&shared, dir, &from, &to, draw))?,
            );
        }
        Ok(LinkEmulator { shared, threads })
    }

    /// Changes what the link does from the next frame on.
    pub fn set_faults(&self, faults: LinkFaults) {
        *self.shared.faults.lock() = faults;
    }

    /// Cuts (`true`) or restores (`false`) the link, keeping the other faults.
    pub fn set_down(&self, down: bool) {
        self.shared.faults.lock().down = down;
    }

    /// The faults now in force.
    pub fn faults(&self) -> LinkFaults {
        *self.shared.faults.lock()
    }

    /// Counters of both directions summed.
    pub fn stats(&self) -> LinkStats {
        let mut total = LinkStats::default();
        for s in &self.shared.stats {
            total.add(&s.lock());
        }
        total
    }

    /// Counters of one direction: 0 is a -> b, 1 is b -> a.
    pub fn direction_stats(&self, dir: usize) -> LinkStats {
        *self.shared.stats[dir.min(1)].lock()
    }

    /// Stops both directions and reports the first error a direction met, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> io::Result<()> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a link emulator thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            tracing::warn!("link emulator: {e}");
        }
    }
}

/// One direction: read frames from `from`, hold each for its drawn delay, write to `to`.
fn carry(shared: &Shared, dir: usize, from: &Tap, to: &Tap, mut draw: FaultDraw) -> io::Result<()> {
    let mut queue: BinaryHeap<Pending> = BinaryHeap::new();
    let mut buf = vec![0u8; 65_536];
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait_ms = match queue.peek() {
            Some(p) => {
                let left = p.due.saturating_duration_since(now);
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(POLL_MS)
            }
            None => POLL_MS,
        }
        .min(POLL_MS);
        if let Some(n) = from.recv(&mut buf, wait_ms)? {
            let faults = *shared.faults.lock();
            let fate = draw.fate(&faults);
            let mut stats = shared.stats[dir].lock();
            match fate {
                Fate::Cut => stats.cut += 1,
                Fate::Lost => stats.lost += 1,
                Fate::Send {
                    delay,
                    copies,
                    reordered,
                } => {
                    stats.reordered += u64::from(reordered);
                    stats.duplicated += u64::from(copies - 1);
                    let due = Instant::now() + delay;
                    for _ in 0..copies {
                        seq += 1;
                        queue.push(Pending {
                            due,
                            seq,
                            frame: buf[..n].to_vec(),
                        });
                    }
                }
            }
        }
        let now = Instant::now();
        while queue.peek().is_some_and(|p| p.due <= now) {
            let Some(p) = queue.pop() else { break };
            let sent = to.send(&p.frame)?;
            let mut stats = shared.stats[dir].lock();
            if sent {
                stats.forwarded += 1;
            } else {
                stats.refused += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(faults: LinkFaults, n: u32) -> Vec<Fate> {
        let mut d = FaultDraw::new(7);
        (0..n).map(|_| d.fate(&faults)).collect()
    }

    #[test]
    fn a_perfect_link_sends_every_frame_once_without_delay() {
        let all = draws(LinkFaults::default(), 1000);
        assert!(all.iter().all(|f| *f
            == Fate::Send {
                delay: Duration::ZERO,
                copies: 1,
                reordered: false
            }));
    }

    #[test]
    fn a_cut_link_drops_everything_whatever_else_is_set() {
        let faults = LinkFaults {
            down: true,
            loss: 0,
            duplicate: 1_000_000,
            ..LinkFaults::default()
        };
        assert!(draws(faults, 100).iter().all(|f| *f == Fate::Cut));
    }

    #[test]
    fn delays_stay_within_the_jitter_band_and_shares_follow_the_rates() {
        let faults = LinkFaults {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            loss: 10_000,
            duplicate: 5_000,
            reorder: 10_000,
            down: false,
        };
        let all = draws(faults, 200_000);
        let (mut lost, mut dup, mut reord) = (0u32, 0u32, 0u32);
        for f in &all {
            match *f {
                Fate::Lost => lost += 1,
                Fate::Cut => panic!("the link is up"),
                Fate::Send {
                    delay,
                    copies,
                    reordered,
                } => {
                    dup += u32::from(copies == 2);
                    if reordered {
                        reord += 1;
                        assert_eq!(delay, Duration::ZERO);
                    } else {
                        assert!(
                            delay >= Duration::from_millis(3) && delay <= Duration::from_millis(7),
                            "{delay:?}"
                        );
                    }
                }
            }
        }
        // 1 %, 0.5 % and 1 % of 200,000 draws: 2,000, about 1,000 and 2,000, within 20 %.
        assert!((1600..=2400).contains(&lost), "lost {lost}");
        assert!((800..=1200).contains(&dup), "duplicated {dup}");
        assert!((1600..=2400).contains(&reord), "reordered {reord}");
    }

    #[test]
    fn the_same_seed_draws_the_same_fates() {
        let faults = LinkFaults {
            delay: Duration::from_millis(1),
            jitter: Duration::from_micros(500),
            loss: 50_000,
            duplicate: 50_000,
            reorder: 50_000,
            down: false,
        };
        assert_eq!(draws(faults, 500), draws(faults, 500));
    }

    #[test]
    fn pending_frames_leave_by_due_time_then_arrival() {
        let t = Instant::now();
        let mut q = BinaryHeap::new();
        for (due_ms, seq) in [(5u64, 1u64), (1, 2), (5, 3), (0, 4)] {
            q.push(Pending {
                due: t + Duration::from_millis(due_ms),
                seq,
                frame: Vec::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|p| p.seq)).collect();
        assert_eq!(order, vec![4, 2, 1, 3]);
    }
}
