//! The peer-liveness detector: [`Heartbeat`] decides whether the peer is alive, suspect or lost
//! from the traffic it receives, and asks for a heartbeat message whenever the link would
//! otherwise be idle for a whole `heartbeat_interval`.
//!
//! QEMU's COLO has no heartbeat at all: an operator must call `x-colo-lost-heartbeat` before a
//! survivor takes over, and clients stall until then (colo-reference.md, "Failover"). colo
//! detects loss itself. Any valid peer message counts as liveness (a checkpoint transfer is
//! better evidence than a heartbeat), so heartbeats only flow on an otherwise idle link.
//!
//! A peer whose end *closed* the link (an end of stream or a reset: its process exited, or it
//! closed the link itself) is not merely silent: a live peer whose link broke under it
//! reconnects at once (a secondary redials, a primary accepts), so the detector gives it only
//! `closed_link_grace` (150 ms by default, never more than the silence rule) to be back on a new
//! link before it is lost. A process that was killed is so detected in a fraction of the
//! silence rule; a host that lost power or a cut path close nothing and fall to the silence
//! rule. A wrong guess costs a failover the arbiter still fences, never a second writer. A
//! dial to the peer that is *refused* after it closed the link (nothing listens at its
//! address: its process is gone) declares it lost at once, without waiting for the grace.
//!
//! Invariant kept: the peer is never declared [`PeerState::Lost`] while valid traffic keeps
//! arriving less than `heartbeat_interval * heartbeat_misses_max` apart and no closed link
//! stays without a new one for `closed_link_grace`; once either happened, the next timeout
//! declares it lost (`poll_timeout` always names the next deadline, so a driver that honours
//! it never misses one).
//!
//! ```text
//!            traffic                     traffic
//!   Alive <----------- Suspect      (Lost is sticky until `reset`)
//!     |  silent for       |  silent for
//!     |  suspect_after    |  misses_max intervals
//!     +-----------------> +-----------------> Lost
//! ```

use crate::time::{Duration, Instant};
use thiserror::Error;

/// Tuning of the liveness detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// How often a heartbeat is sent on an idle link, and the unit of a "miss".
    pub heartbeat_interval: Duration,
    /// How many whole intervals of silence declare the peer lost.
    pub heartbeat_misses_max: u32,
    /// How long a peer that closed the link has to be back on a new one before it is lost
    /// (capped at [`HeartbeatConfig::lost_after`]; see the module documentation).
    pub closed_link_grace: Duration,
}

impl Default for HeartbeatConfig {
    /// 100 ms and 5 misses: a dead peer is detected within 0.5 s, an order of magnitude below
    /// a client's TCP retransmission timeout (RFC 6298 §2.4: at least 1 s), so a takeover is
    /// invisible to most clients. A peer that closed the link is lost after 150 ms without a
    /// new one: a live peer reconnects in a few milliseconds (tens under heavy load here, see
    /// docs/benchmarks.md), a killed one never does, and a client then waits less than the
    /// 200 ms of Linux's minimum TCP retransmission timeout.
    fn default() -> Self {
        HeartbeatConfig {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_misses_max: 5,
            closed_link_grace: Duration::from_millis(150),
        }
    }
}

/// A heartbeat configuration that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HeartbeatConfigError {
    /// The interval is zero, so every instant would be a deadline.
    #[error("heartbeat_interval must be greater than zero")]
    ZeroInterval,
    /// Zero misses would declare the peer lost the moment it is heard.
    #[error("heartbeat_misses_max must be at least 1")]
    ZeroMisses,
}

impl HeartbeatConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), HeartbeatConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(HeartbeatConfigError::ZeroInterval);
        }
        if self.heartbeat_misses_max == 0 {
            return Err(HeartbeatConfigError::ZeroMisses);
        }
        Ok(())
    }

    /// Silence after which the peer becomes suspect: half the misses (at least one interval).
    /// One interval alone would flap on ordinary jitter, since the peer sends exactly once per
    /// interval on an idle link.
    pub fn suspect_after(&self) -> Duration {
        self.heartbeat_interval
            .saturating_mul((self.heartbeat_misses_max / 2).max(1))
    }

    /// Silence after which the peer is lost.
    pub fn lost_after(&self) -> Duration {
        self.heartbeat_interval
            .saturating_mul(self.heartbeat_misses_max)
    }

    /// How long after the peer closed the link, with no new link, it is lost: the configured
    /// grace, never longer than [`HeartbeatConfig::lost_after`].
    pub fn closed_grace(&self) -> Duration {
        self.closed_link_grace.min(self.lost_after())
    }
}

/// What this node believes about its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    /// Traffic arrived within `suspect_after`.
    Alive,
    /// Silent for `suspect_after` but not yet `lost_after`: reported, nothing else changes.
    Suspect,
    /// Silent for `lost_after`: the failover path starts. Sticky until [`Heartbeat::reset`].
    Lost,
}

/// A change of [`PeerState`], reported once per transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// Alive -> Suspect.
    PeerSuspect {
        /// Silence so far.
        silent_for: Duration,
    },
    /// Suspect -> Alive: traffic came back before the peer was declared lost.
    PeerRecovered,
    /// Alive/Suspect -> Lost.
    PeerLost {
        /// Silence that declared it.
        silent_for: Duration,
        /// The peer had closed the link and no new link came within `closed_link_grace`
        /// (`false`: the silence rule declared it).
        link_closed: bool,
    },
}

/// A heartbeat the node must send now (it fills in term and epoch from its other machines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatSend {
    /// Sequence number of this heartbeat, counting from 1, so the peer and logs can tell gaps.
    pub seq: u64,
}

/// Counters for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Heartbeats this side asked to send.
    pub sent: u64,
    /// Peer messages counted as liveness.
    pub traffic_received: u64,
    /// Alive -> Suspect transitions.
    pub suspects: u64,
    /// Suspect -> Alive transitions.
    pub recoveries: u64,
    /// Transitions to Lost.
    pub losses: u64,
    /// Peer traffic seen after Lost (ignored: a lost peer comes back only by re-protection).
    pub traffic_after_lost: u64,
}

/// The liveness detector of one peer link. Sans-IO: feed it `handle_*`, drain `poll_*`, wake it
/// at `poll_timeout`.
#[derive(Debug)]
pub struct Heartbeat {
    config: HeartbeatConfig,
    state: PeerState,
    /// Last time valid peer traffic arrived (or the start/reset time).
    last_heard: Instant,
    /// Last time this side sent anything to the peer.
    last_sent: Instant,
    /// Latest `now` seen, to enforce monotone time.
    now: Instant,
    /// When the peer closed the link, while no new link is up.
    closed_at: Option<Instant>,
    next_seq: u64,
    pending_send: Option<HeartbeatSend>,
    events: Vec<HeartbeatEvent>,
    stats: HeartbeatStats,
}

impl Heartbeat {
    /// A detector that considers the peer alive as of `now` (the link just came up).
    pub fn new(config: HeartbeatConfig, now: Instant) -> Result<Heartbeat, HeartbeatConfigError> {
        config.validate()?;
        Ok(Heartbeat {
            config,
            state: PeerState::Alive,
            last_heard: now,
            last_sent: now,
            now,
            closed_at: None,
            next_seq: 1,
            pending_send: None,
            events: Vec::new(),
            stats: HeartbeatStats::default(),
        })
    }

    /// The current belief about the peer.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> HeartbeatStats {
        self.stats
    }

    /// The configuration in force.
    pub fn config(&self) -> &HeartbeatConfig {
        &self.config
    }

    /// Valid peer traffic (any decoded message of the current term) arrived.
    pub fn handle_peer_traffic(&mut self, now: Instant) {
        self.advance(now);
        if self.state == PeerState::Lost {
            // A lost peer has been (or is being) failed over; believing it again here would
            // undo a takeover. It rejoins through re-protection, which calls `reset`.
            self.stats.traffic_after_lost += 1;
            return;
        }
        self.stats.traffic_received += 1;
        self.last_heard = now;
        // Suspect --traffic--> Alive
        if self.state == PeerState::Suspect {
            self.state = PeerState::Alive;
            self.stats.recoveries += 1;
            self.events.push(HeartbeatEvent::PeerRecovered);
        }
    }

    /// This side sent something to the peer; the peer counts it as liveness, so the next
    /// heartbeat can wait a full interval.
    pub fn handle_sent(&mut self, now: Instant) {
        self.advance(now);
        self.last_sent = now;
    }

    /// The peer's end closed the link (end of stream or reset), as opposed to a link that
    /// failed or went silent: unless a new link comes up within `closed_link_grace`, the peer
    /// is lost. A second close before a new link keeps the first one's deadline.
    pub fn handle_link_closed_by_peer(&mut self, now: Instant) {
        self.advance(now);
        if self.state != PeerState::Lost && self.closed_at.is_none() {
            self.closed_at = Some(now);
        }
    }

    /// A new link is up: the peer (or whoever accepted for it) is reachable again, and only
    /// the silence rule applies.
    pub fn handle_link_up(&mut self, now: Instant) {
        self.advance(now);
        self.closed_at = None;
    }

    /// A dial to the peer's address was refused (nothing listens there). After the peer
    /// closed the link that means its process is gone: the peer is lost now. Otherwise (the
    /// peer not started yet, a link that failed without a close) it changes nothing.
    pub fn handle_dial_refused(&mut self, now: Instant) {
        self.advance(now);
        if self.state != PeerState::Lost && self.closed_at.is_some() {
            // Alive/Suspect --closed, then refused--> Lost
            self.declare_lost(now, true);
        }
    }

    /// A deadline may have passed. Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.state == PeerState::Lost {
            return;
        }
        let silent_for = now.saturating_duration_since(self.last_heard);
        let closed_out = self
            .closed_at
            .is_some_and(|at| now >= at + self.config.closed_grace());
        if silent_for >= self.config.lost_after() || closed_out {
            // Alive/Suspect --silent lost_after, or closed for closed_grace--> Lost
            self.declare_lost(now, closed_out && silent_for < self.config.lost_after());
            return;
        }
        if self.state == PeerState::Alive && silent_for >= self.config.suspect_after() {
            // Alive --silent suspect_after--> Suspect
            self.state = PeerState::Suspect;
            self.stats.suspects += 1;
            self.events.push(HeartbeatEvent::PeerSuspect { silent_for });
        }
        if now >= self.last_sent + self.config.heartbeat_interval && self.pending_send.is_none() {
            self.pending_send = Some(HeartbeatSend { seq: self.next_seq });
            self.next_seq += 1;
            self.stats.sent += 1;
            // Sending is this side's act; count it now so one idle interval yields one beat
            // even if the driver is slow to drain.
            self.last_sent = now;
        }
    }

    fn declare_lost(&mut self, now: Instant, link_closed: bool) {
        self.state = PeerState::Lost;
        self.stats.losses += 1;
        self.pending_send = None;
        self.closed_at = None;
        self.events.push(HeartbeatEvent::PeerLost {
            silent_for: now.saturating_duration_since(self.last_heard),
            link_closed,
        });
    }

    /// Restarts detection as of `now` (a new peer joined through re-protection, or the link
    /// was re-established under the same term).
    pub fn reset(&mut self, now: Instant) {
        self.advance(now);
        // Lost/Suspect --reset--> Alive
        self.state = PeerState::Alive;
        self.last_heard = now;
        self.last_sent = now;
        self.pending_send = None;
        self.closed_at = None;
    }

    /// The heartbeat to send, if one is due.
    pub fn poll_send(&mut self) -> Option<HeartbeatSend> {
        self.pending_send.take()
    }

    /// The next state change to report.
    pub fn poll_event(&mut self) -> Option<HeartbeatEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The next instant at which `handle_timeout` has something to do; `None` once Lost.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == PeerState::Lost {
            return None;
        }
        let lost_at = self.last_heard + self.config.lost_after();
        let send_at = self.last_sent + self.config.heartbeat_interval;
        let mut next = lost_at.min(send_at);
        if let Some(at) = self.closed_at {
            next = next.min(at + self.config.closed_grace());
        }
        if self.state == PeerState::Alive {
            next = next.min(self.last_heard + self.config.suspect_after());
        }
        Some(next)
    }

    fn advance(&mut self, now: Instant) {
        assert!(
            now >= self.now,
            "time went backwards: the caller must pass a monotone `now` ({now:?} < {:?})",
            self.now
        );
        self.now = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn config(interval_ms: u64, misses: u32) -> HeartbeatConfig {
        HeartbeatConfig {
            heartbeat_interval: Duration::from_millis(interval_ms),
            heartbeat_misses_max: misses,
            closed_link_grace: Duration::from_millis(interval_ms * 3 / 2),
        }
    }

    fn drain(hb: &mut Heartbeat) -> Vec<HeartbeatEvent> {
        std::iter::from_fn(|| hb.poll_event()).collect()
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert_eq!(
            Heartbeat::new(config(0, 3), ms(0)).unwrap_err(),
            HeartbeatConfigError::ZeroInterval
        );
        assert_eq!(
            Heartbeat::new(config(10, 0), ms(0)).unwrap_err(),
            HeartbeatConfigError::ZeroMisses
        );
    }

    #[test]
    fn idle_link_sends_one_heartbeat_per_interval() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        assert_eq!(hb.poll_timeout(), Some(ms(100)));
        hb.handle_timeout(ms(100));
        assert_eq!(hb.poll_send(), Some(HeartbeatSend { seq: 1 }));
        hb.handle_peer_traffic(ms(150));
        hb.handle_timeout(ms(150));
        assert_eq!(hb.poll_send(), None, "not due before a full interval");
        hb.handle_timeout(ms(200));
        assert_eq!(hb.poll_send(), Some(HeartbeatSend { seq: 2 }));
    }

    #[test]
    fn other_outgoing_traffic_postpones_the_heartbeat() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_sent(ms(90));
        hb.handle_peer_traffic(ms(90));
        hb.handle_timeout(ms(100));
        assert_eq!(hb.poll_send(), None);
        assert_eq!(hb.poll_timeout(), Some(ms(190)));
    }

    #[test]
    fn silence_goes_suspect_then_lost() {
        let mut hb = Heartbeat::new(config(100, 4), ms(0)).unwrap();
        hb.handle_timeout(ms(199));
        assert_eq!(hb.state(), PeerState::Alive);
        hb.handle_timeout(ms(200));
        assert_eq!(hb.state(), PeerState::Suspect);
        hb.handle_timeout(ms(400));
        assert_eq!(hb.state(), PeerState::Lost);
        assert_eq!(
            drain(&mut hb),
            vec![
                HeartbeatEvent::PeerSuspect {
                    silent_for: Duration::from_millis(200)
                },
                HeartbeatEvent::PeerLost {
                    silent_for: Duration::from_millis(400),
                    link_closed: false,
                }
            ]
        );
        assert_eq!(hb.poll_timeout(), None, "nothing to wait for once lost");
    }

    #[test]
    fn traffic_while_suspect_recovers_the_peer() {
        let mut hb = Heartbeat::new(config(100, 4), ms(0)).unwrap();
        hb.handle_timeout(ms(250));
        hb.handle_peer_traffic(ms(260));
        assert_eq!(hb.state(), PeerState::Alive);
        assert_eq!(drain(&mut hb).last(), Some(&HeartbeatEvent::PeerRecovered));
        assert_eq!(hb.stats().recoveries, 1);
    }

    #[test]
    fn lost_is_sticky_until_reset() {
        let mut hb = Heartbeat::new(config(10, 1), ms(0)).unwrap();
        hb.handle_timeout(ms(10));
        assert_eq!(hb.state(), PeerState::Lost);
        assert_eq!(hb.stats().suspects, 0, "one miss goes straight to lost");
        hb.handle_peer_traffic(ms(11));
        assert_eq!(hb.state(), PeerState::Lost);
        assert_eq!(hb.stats().traffic_after_lost, 1);
        hb.reset(ms(20));
        assert_eq!(hb.state(), PeerState::Alive);
        assert_eq!(hb.poll_timeout(), Some(ms(30)));
    }

    #[test]
    fn spurious_timeouts_do_nothing() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_timeout(ms(1));
        hb.handle_timeout(ms(2));
        assert_eq!(hb.poll_send(), None);
        assert_eq!(hb.poll_event(), None);
        assert_eq!(hb.state(), PeerState::Alive);
    }

    #[test]
    #[should_panic(expected = "time went backwards")]
    fn time_going_backwards_panics_naming_the_rule() {
        let mut hb = Heartbeat::new(config(100, 5), ms(10)).unwrap();
        hb.handle_timeout(ms(5));
    }

    #[test]
    fn a_peer_that_closed_the_link_and_stays_away_is_lost_after_the_grace() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_peer_traffic(ms(40));
        hb.handle_link_closed_by_peer(ms(50));
        assert_eq!(
            hb.poll_timeout(),
            Some(ms(100)),
            "the heartbeat send comes first"
        );
        hb.handle_timeout(ms(100));
        assert_eq!(
            hb.poll_timeout(),
            Some(ms(200)),
            "grace: 150 ms after the close"
        );
        hb.handle_timeout(ms(199));
        assert_eq!(hb.state(), PeerState::Alive);
        hb.handle_timeout(ms(200));
        assert_eq!(hb.state(), PeerState::Lost);
        assert_eq!(
            drain(&mut hb),
            vec![HeartbeatEvent::PeerLost {
                silent_for: Duration::from_millis(160),
                link_closed: true,
            }]
        );
    }

    #[test]
    fn a_new_link_within_the_grace_leaves_only_the_silence_rule() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_link_closed_by_peer(ms(10));
        hb.handle_link_up(ms(60));
        hb.handle_timeout(ms(160));
        hb.handle_timeout(ms(499));
        assert_ne!(hb.state(), PeerState::Lost);
        hb.handle_timeout(ms(500));
        assert_eq!(
            drain(&mut hb).last(),
            Some(&HeartbeatEvent::PeerLost {
                silent_for: Duration::from_millis(500),
                link_closed: false,
            })
        );
    }

    #[test]
    fn a_second_close_keeps_the_first_deadline_and_the_grace_never_exceeds_the_silence_rule() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_link_closed_by_peer(ms(10));
        hb.handle_link_closed_by_peer(ms(100));
        hb.handle_timeout(ms(160));
        assert_eq!(hb.state(), PeerState::Lost);

        let long = HeartbeatConfig {
            closed_link_grace: Duration::from_secs(10),
            ..config(100, 5)
        };
        assert_eq!(long.closed_grace(), Duration::from_millis(500));
        let mut hb = Heartbeat::new(long, ms(0)).unwrap();
        hb.handle_link_closed_by_peer(ms(0));
        hb.handle_timeout(ms(499));
        assert_ne!(hb.state(), PeerState::Lost);
        hb.handle_timeout(ms(500));
        assert_eq!(hb.state(), PeerState::Lost);
    }

    #[test]
    fn a_refused_dial_after_a_close_declares_the_peer_lost_at_once_and_alone_changes_nothing() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_dial_refused(ms(5));
        assert_eq!(
            hb.state(),
            PeerState::Alive,
            "no close: the peer may start later"
        );
        hb.handle_link_closed_by_peer(ms(10));
        hb.handle_dial_refused(ms(12));
        assert_eq!(hb.state(), PeerState::Lost);
        assert_eq!(
            drain(&mut hb),
            vec![HeartbeatEvent::PeerLost {
                silent_for: Duration::from_millis(12),
                link_closed: true,
            }]
        );
        // After a new link, a refusal (a later dial of another connection) is no evidence.
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_link_closed_by_peer(ms(10));
        hb.handle_link_up(ms(11));
        hb.handle_dial_refused(ms(12));
        assert_eq!(hb.state(), PeerState::Alive);
    }

    #[test]
    fn a_reset_forgets_a_close() {
        let mut hb = Heartbeat::new(config(100, 5), ms(0)).unwrap();
        hb.handle_link_closed_by_peer(ms(10));
        hb.reset(ms(20));
        hb.handle_timeout(ms(300));
        assert_ne!(hb.state(), PeerState::Lost);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Traffic(u64),
        Sent(u64),
        Timeout(u64),
        Closed(u64),
        Up(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..300).prop_map(Step::Traffic),
            (0u64..300).prop_map(Step::Sent),
            (0u64..300).prop_map(Step::Timeout),
            (0u64..300).prop_map(Step::Closed),
            (0u64..300).prop_map(Step::Up),
        ]
    }

    proptest! {
        /// Never Lost while traffic arrives within interval * misses and no closed link
        /// stays without a new one for the grace; and a driver that wakes at every
        /// `poll_timeout` declares Lost exactly at the first of those two deadlines.
        #[test]
        fn never_lost_while_traffic_arrives_in_time(
            interval in 1u64..50,
            misses in 1u32..6,
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let cfg = config(interval, misses);
            let lost_after = interval * u64::from(misses);
            let grace = (interval * 3 / 2).min(lost_after);
            let mut hb = Heartbeat::new(cfg, ms(0)).unwrap();
            let mut now = 0u64;
            let mut last_heard = 0u64;
            let mut closed_at: Option<u64> = None;
            let mut lost_seen = false;
            let deadline_of = |heard: u64, closed: Option<u64>| {
                closed.map_or(heard + lost_after, |c| (heard + lost_after).min(c + grace))
            };
            for s in steps {
                let (gap, kind) = match s {
                    Step::Traffic(g) => (g, 0),
                    Step::Sent(g) => (g, 1),
                    Step::Timeout(g) => (g, 2),
                    Step::Closed(g) => (g, 3),
                    Step::Up(g) => (g, 4),
                };
                let target = now + gap;
                // Honour every deadline on the way, as a driver would.
                while let Some(deadline) = hb.poll_timeout() {
                    let d = deadline.as_nanos() / 1_000_000;
                    prop_assert!(deadline.as_nanos() >= now * 1_000_000, "deadline in the past");
                    if d > target { break; }
                    now = d;
                    hb.handle_timeout(ms(now));
                    let _ = hb.poll_send();
                    if hb.state() == PeerState::Lost && !lost_seen {
                        lost_seen = true;
                        prop_assert_eq!(now, deadline_of(last_heard, closed_at), "lost off its deadline");
                    }
                }
                now = target;
                match kind {
                    0 => {
                        hb.handle_peer_traffic(ms(now));
                        if !lost_seen { last_heard = now; }
                    }
                    1 => hb.handle_sent(ms(now)),
                    3 => {
                        hb.handle_link_closed_by_peer(ms(now));
                        if closed_at.is_none() { closed_at = Some(now); }
                    }
                    4 => {
                        hb.handle_link_up(ms(now));
                        closed_at = None;
                    }
                    _ => hb.handle_timeout(ms(now)),
                }
                if hb.state() == PeerState::Lost && !lost_seen {
                    lost_seen = true;
                    prop_assert!(now >= deadline_of(last_heard, closed_at), "lost too early");
                }
                prop_assert_eq!(hb.poll_timeout().is_some(), hb.state() != PeerState::Lost);
            }
        }
    }
}
