//! colo-core: the pure, deterministic, sans-IO heart of colo.
//!
//! Everything that *decides* lives here; everything that touches the world (KVM, tap devices,
//! disk files, sockets, clocks) lives in a runtime (`colo-runtime` or the simulator `colo-sim`).
//! Every machine in this crate is fed events with the current time passed in, and hands back
//! what it wants done through `poll_*` methods. There is no IO, no thread, no clock and no
//! unseeded randomness in this crate, so the same inputs always give the same outputs.
//!
//! Modules, one machine each:
//! - [`ids`]: epochs, terms, node and cluster ids, page ranges, checkpoint reasons.
//! - [`time`]: the core's own monotonic [`time::Instant`].
//! - [`packet`]: zero-copy views over Ethernet frames, flow keys and checksums.
//! - [`compare`]: the primary-side [`compare::Comparator`] (output commit for network frames).
//! - [`rewrite`]: the secondary-side TCP sequence-number [`rewrite::Rewriter`].
//! - [`wire`]: the versioned peer protocol and its framing codec.
//! - [`checkpoint`]: the checkpoint protocol, both roles ([`checkpoint::PrimaryCheckpointer`], [`checkpoint::SecondaryCheckpointer`]).
//! - [`disk`]: block replication metadata ([`disk::PrimaryDisk`], [`disk::SecondaryDisk`]).
//! - [`failover`]: failover, fencing by term and arbiter lease ([`failover::Failover`],
//!   [`failover::Lease`], [`failover::Arbiter`]).
//! - [`heartbeat`]: the peer-liveness [`heartbeat::Heartbeat`] (alive / suspect / lost).
//! - [`node`]: the [`node::Node`], every machine above composed behind one `Input` / `Output`
//!   contract; the runtime's only entry point.
//! - [`fuzzing`]: fuzz target bodies, shared by `cargo fuzz` and by `cargo test` over a corpus.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod compare;
pub mod disk;
pub mod failover;
pub mod fuzzing;
pub mod heartbeat;
pub mod ids;
pub mod node;
mod outbox;
pub mod packet;
pub mod rewrite;
pub mod time;
pub mod wire;
