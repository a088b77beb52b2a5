//! The peer-liveness detector: [`Heartbeat`] decides whether the peer is alive, suspect or lost
//! from the traffic it receives, and asks for a heartbeat message whenever the link would
//! otherwise be idle for a whole `heartbeat_interval`.
//!
//! QEMU's COLO has no heartbeat at all: an operator must call `x-colo-lost-heartbeat` before a
//! survivor takes over, and clients stall until then (colo-reference.md, "Failover"). colo
//! detects loss itself. Any valid peer message counts as liveness (a checkpoint transfer is
//! better evidence than a heartbeat), so heartbeats only flow on an otherwise idle link.
//!
//! Invariant kept: the peer is never declared [`PeerState::Lost`] while valid traffic keeps
//! arriving less than `heartbeat_interval * heartbeat_misses_max` apart, and once the link has
//! been silent that long, the next timeout declares it lost (`poll_timeout` always names the
//! next deadline, so a driver that honours it never misses one).
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
}

impl Default for HeartbeatConfig {
    /// 100 ms and 5 misses: a dead peer is detected within 0.5 s, an order of magnitude below
    /// a client's TCP retransmission timeout (RFC 6298 §2.4: at least 1 s), so a takeover is
    /// invisible to most clients.
    fn default() -> Self {
        HeartbeatConfig {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_misses_max: 5,
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

    /// A deadline may have passed. Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.state == PeerState::Lost {
            return;
        }
        let silent_for = now.saturating_duration_since(self.last_heard);
        if silent_for >= self.config.lost_after() {
            // Alive/Suspect --silent lost_after--> Lost
            self.state = PeerState::Lost;
            self.stats.losses += 1;
            self.pending_send = None;
            self.events.push(HeartbeatEvent::PeerLost { silent_for });
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

    /// Restarts detection as of `now` (a new peer joined through re-protection, or the link
    /// was re-established under the same term).
    pub fn reset(&mut self, now: Instant) {
        self.advance(now);
        // Lost/Suspect --reset--> Alive
        self.state = PeerState::Alive;
        self.last_heard = now;
        self.last_sent = now;
        self.pending_send = None;
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
                    silent_for: Duration::from_millis(400)
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

    #[derive(Clone, Debug)]
    enum Step {
        Traffic(u64),
        Sent(u64),
        Timeout(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..300).prop_map(Step::Traffic),
            (0u64..300).prop_map(Step::Sent),
            (0u64..300).prop_map(Step::Timeout),
        ]
    }

    proptest! {
        /// Never Lost while traffic arrives within interval * misses; and a driver that wakes
        /// at every `poll_timeout` declares Lost no later than that silence.
        #[test]
        fn never_lost_while_traffic_arrives_in_time(
            interval in 1u64..50,
            misses in 1u32..6,
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let cfg = config(interval, misses);
            let lost_after = interval * u64::from(misses);
            let mut hb = Heartbeat::new(cfg, ms(0)).unwrap();
            let mut now = 0u64;
            let mut last_heard = 0u64;
            let mut lost_seen = false;
            for s in steps {
                let (gap, kind) = match s {
                    Step::Traffic(g) => (g, 0),
                    Step::Sent(g) => (g, 1),
                    Step::Timeout(g) => (g, 2),
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
                        prop_assert!(now - last_heard >= lost_after, "lost too early");
                        prop_assert_eq!(now - last_heard, lost_after, "lost later than the deadline");
                    }
                }
                now = target;
                match kind {
                    0 => {
                        hb.handle_peer_traffic(ms(now));
                        if !lost_seen { last_heard = now; }
                    }
                    1 => hb.handle_sent(ms(now)),
                    _ => hb.handle_timeout(ms(now)),
                }
                if hb.state() == PeerState::Lost && !lost_seen {
                    lost_seen = true;
                    prop_assert!(now - last_heard >= lost_after, "lost too early");
                }
                prop_assert_eq!(hb.poll_timeout().is_some(), hb.state() != PeerState::Lost);
            }
        }
    }
}
