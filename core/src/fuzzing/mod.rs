//! Fuzz target bodies.
//!
//! Each submodule has one `pub fn run(data: &[u8])` that `cargo fuzz` calls from `fuzz/` and that
//! `core/tests/fuzz_corpus.rs` calls for every file of the checked-in seed corpus in
//! `fuzz/seeds/<target>/`, so plain `cargo test` exercises every target. A body must never panic
//! on any input except to report a broken invariant (that is what the fuzzer looks for).

pub mod checkpoint_ops;
pub mod compare;
pub mod node_inputs;
pub mod packet_parse;
pub mod rewrite;
pub mod wire_decode;
