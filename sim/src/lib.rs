//! colo-sim: the deterministic simulator's world.
//!
//! This crate owns the simulated world colo will be tested in: a seeded network emulator
//! ([`netem`]) behind a switch ([`lan`]), simulated guests running a real TCP/IP stack
//! (smoltcp) with exactly checkpointable state ([`guest`]), and clients that keep a history of
//! everything they saw ([`client`]). Every model is a plain struct driven with a simulated
//! `now` ([`colo_core::time::Instant`]), so the same code runs in unit tests and, later, inside
//! madsim tasks. Invariant kept crate-wide: a run is a pure function of its seed — every random
//! draw comes from a [`rng::SimRng`], no wall clock is read, and no `HashMap` iteration reaches
//! an output. See `docs/simulation.md`.

#![forbid(unsafe_code)]

mod bell;
pub mod check;
pub mod client;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod cluster_run;
pub mod fabric;
pub mod guest;
pub mod hash;
pub mod host;
pub mod lan;
pub mod netem;
pub mod node_run;
pub mod observer;
pub mod platform;
pub mod proto;
pub mod rng;
pub mod runner;
pub mod stack;
pub mod swarm;
pub mod trace;
pub mod world;
