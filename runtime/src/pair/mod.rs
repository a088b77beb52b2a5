//! The replication half of the runtime: what makes two VMMs a COLO pair. `node_loop` (the
//! thread driving a `colo_core::node::Node` and its `Machine`, with the secondary's RAM
//! cache), `peer` (the authenticated TCP transport carrying `colo_core::wire` frames),
//! `arbiter` (the lease arbiter server and client), `control` (the local control socket),
//! `disk` (the replicated block space and the store executing the core's disk commands),
//! `config` (the pair config file), `events` (the milestone stream of `--events`), `metrics` (a node's Prometheus endpoint) and `progress`
//! (the initial copy's progress display).
//!
//! Invariant: the pair reaches the VM only through `crate::vmm`'s public API; what to do is
//! decided by the sans-IO `Node` in colo-core, and this half executes its outputs.

pub mod arbiter;
pub mod clock;
pub mod config;
pub mod control;
pub mod disk;
pub mod events;
pub mod metrics;
pub mod node_loop;
pub mod peer;
pub mod progress;
