//! `bell`: the glue between the sans-IO models and an executor, one piece for every engine —
//! the [`LanModel`] trait a LAN task drives (guest, client, upstream server), the per-actor
//! [`Bells`] that say who has new work at the current instant, and (under `--cfg madsim`) the
//! task helpers both madsim engines use: [`lock`], [`now_since`] and [`nap`], a sleep until a
//! deadline that ends early when the actor's bell rings.
//!
//! Invariant kept: a frame sent to an actor rings its bell in the same step, so an actor asleep
//! until its own deadline is woken at once and no frame waits for a timer it does not own (the
//! plain loop reads the same bells to step the actor again at the current instant). Bells are a
//! `BTreeMap`, so nothing here depends on hash order; nothing reads madsim's RNG.

// Under `--cfg madsim`, `madsim::time::Instant` is std's type and its clock is madsim's
// simulated one: the determinism lint (sim/clippy.toml) cannot tell the two apart.
#![cfg_attr(madsim, allow(clippy::disallowed_methods, clippy::disallowed_types))]

use std::collections::BTreeMap;
use std::task::Waker;

use colo_core::time::Instant;

use crate::client::{Client, UpstreamServer};
use crate::guest::Guest;

/// A sans-IO LAN model a task drives (a guest, a client or the upstream server).
pub(crate) trait LanModel {
    fn handle_frame(&mut self, now: Instant, frame: Vec<u8>);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    fn poll_timeout(&mut self) -> Option<Instant>;
}

macro_rules! lan_model {
    ($t:ty) => {
        impl LanModel for $t {
            fn handle_frame(&mut self, now: Instant, frame: Vec<u8>) {
                <$t>::handle_frame(self, now, frame)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$t>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self) -> Option<Vec<u8>> {
                <$t>::poll_transmit(self)
            }
            fn poll_timeout(&mut self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
        }
    };
}
lan_model!(Guest);
lan_model!(Client);
lan_model!(UpstreamServer);

/// One actor's bell: rung since it last looked, and the waker of its sleeping task if any.
#[derive(Debug, Default)]
struct Bell {
    rung: bool,
    waker: Option<Waker>,
}

/// Every actor's bell, by actor (`W`: who waits).
#[derive(Debug)]
pub(crate) struct Bells<W>(BTreeMap<W, Bell>);

impl<W> Default for Bells<W> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<W: Ord + Copy> Bells<W> {
    /// Rings `w`'s bell and wakes its task if it sleeps.
    pub(crate) fn ring(&mut self, w: W) {
        let bell = self.0.entry(w).or_default();
        bell.rung = true;
        if let Some(k) = bell.waker.take() {
            k.wake();
        }
    }

    /// Whether `w`'s bell rang since it last looked (and silences it).
    pub(crate) fn take_rung(&mut self, w: W) -> bool {
        self.0
            .get_mut(&w)
            .is_some_and(|b| std::mem::take(&mut b.rung))
    }

    /// Like [`Bells::take_rung`] (for a madsim task), but when it did not ring, `waker` is woken by the next ring.
    #[cfg(madsim)]
    pub(crate) fn take_rung_or_wait(&mut self, w: W, waker: &Waker) -> bool {
        let bell = self.0.entry(w).or_default();
        if bell.rung {
            bell.rung = false;
            return true;
        }
        bell.waker = Some(waker.clone());
        false
    }
}

/// What a madsim task's shared state exposes for [`nap`].
#[cfg(madsim)]
pub(crate) trait HasBells<W> {
    fn bells(&mut self) -> &mut Bells<W>;
}

#[cfg(madsim)]
pub(crate) use task::{lock, nap, now_since};

#[cfg(madsim)]
mod task {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Mutex, MutexGuard};
    use std::task::{Context, Poll};

    use colo_core::time::Instant;

    use super::HasBells;

    pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // A panicking task ends the simulation, so a poisoned lock is never observed live.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulated time since the run's `start`, as the models' `Instant`.
    pub(crate) fn now_since(start: madsim::time::Instant) -> Instant {
        let d = madsim::time::Instant::now().saturating_duration_since(start);
        Instant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Sleeps until `deadline` or until `me`'s bell rings, whichever is first.
    struct Nap<'a, S, W> {
        sleep: Pin<Box<madsim::time::Sleep>>,
        shared: &'a Mutex<S>,
        me: W,
    }

    impl<S: HasBells<W>, W: Ord + Copy + Unpin> Future for Nap<'_, S, W> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let me = self.me;
            if lock(self.shared).bells().take_rung_or_wait(me, cx.waker()) {
                return Poll::Ready(());
            }
            self.sleep.as_mut().poll(cx)
        }
    }

    /// Sleeps until simulated instant `next` (from `start`) or until `me`'s bell rings.
    pub(crate) async fn nap<S: HasBells<W>, W: Ord + Copy + Unpin>(
        shared: &Mutex<S>,
        me: W,
        start: madsim::time::Instant,
        next: Instant,
    ) {
        let deadline = start + next.saturating_duration_since(Instant::ZERO);
        Nap {
            sleep: Box::pin(madsim::time::sleep_until(deadline)),
            shared,
            me,
        }
        .await;
    }
}
