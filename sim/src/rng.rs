//! The simulator's only source of randomness: a seeded xoshiro256** generator.
//!
//! Invariant kept: every random choice in colo-sim comes from a `SimRng` whose seed derives from
//! the run's seed, so a run is a pure function of (seed, commit). Components never share one
//! generator: each takes its own stream with [`SimRng::fork`], keyed by a label, so adding a
//! draw in one component (say the network emulator) does not shift the draws of another (say a
//! guest's tokens) and seeds stay comparable across small code changes. xoshiro256** and the
//! splitmix64 seeding follow Blackman and Vigna, "Scrambled linear pseudorandom number
//! generators" (2018); this is a simulation generator, not a cryptographic one.

use colo_core::time::Duration;

/// A seeded, reproducible pseudorandom generator (xoshiro256**).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRng {
    s: [u64; 4],
}

/// One step of splitmix64: the recommended way to expand a 64-bit seed into xoshiro state
/// (it never yields the all-zero state xoshiro must avoid for four consecutive outputs).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SimRng {
    /// A generator fully determined by `seed`.
    pub fn new(seed: u64) -> SimRng {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        SimRng { s }
    }

    /// An independent stream for a named component, derived from this generator's seed state
    /// without consuming any of its draws.
    pub fn fork(&self, label: &str) -> SimRng {
        let mut h = crate::hash::Fnv64::new();
        for word in self.s {
            h.write_u64(word);
        }
        h.write(label.as_bytes());
        SimRng::new(h.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform value in `0..n` (`0` when `n == 0`). Uses Lemire's multiply-shift; the bias
    /// (at most n / 2^64) is irrelevant for simulation.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform value in `lo..=hi` (returns `lo` if `hi < lo`).
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// True with probability `ppm` parts per million (`>= 1_000_000` is always true).
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }

    /// A uniform duration in `0..=max`, at nanosecond resolution.
    pub fn duration_upto(&mut self, max: Duration) -> Duration {
        let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.range_inclusive(0, max_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_stream() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = SimRng::new(43);
        assert_ne!(xs[0], c.next_u64());
    }

    #[test]
    fn forks_are_reproducible_and_differ_by_label() {
        let parent = SimRng::new(7);
        let mut netem = parent.fork("netem");
        let first = netem.next_u64();
        assert_eq!(first, SimRng::new(7).fork("netem").next_u64());
        assert_ne!(first, parent.fork("guest").next_u64());
        // Forking does not consume the parent's draws.
        assert_eq!(parent.clone().next_u64(), SimRng::new(7).next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SimRng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range_inclusive(5, 5), 5);
        assert_eq!(r.range_inclusive(9, 3), 9);
    }

    #[test]
    fn chance_ppm_matches_its_rate_roughly() {
        let mut r = SimRng::new(3);
        let hits = (0..100_000).filter(|_| r.chance_ppm(100_000)).count();
        assert!(
            (9_000..11_000).contains(&hits),
            "10% of 100k draws, got {hits}"
        );
        assert!(!r.chance_ppm(0));
        assert!(r.chance_ppm(1_000_000));
    }
}
