//! Replays the checked-in seed corpus of every fuzz target (`fuzz/seeds/<target>/*`) through the
//! same bodies `cargo fuzz` runs, so `cargo test` catches regressions without a fuzzer.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {} missing: {e}", dir.display()))
        .map(|e| e.expect("readable corpus entry").path())
        .collect();
    entries.sort();
    assert!(
        !entries.is_empty(),
        "seed corpus {} is empty",
        dir.display()
    );
    for path in entries {
        let data = std::fs::read(&path).expect("readable corpus file");
        run(&data);
    }
}

#[test]
fn checkpoint_ops_corpus_replays_cleanly() {
    replay("checkpoint_ops", colo_core::fuzzing::checkpoint_ops::run);
}

#[test]
fn compare_corpus_replays_cleanly() {
    replay("compare", colo_core::fuzzing::compare::run);
}

#[test]
fn packet_parse_corpus_replays_cleanly() {
    replay("packet_parse", colo_core::fuzzing::packet_parse::run);
}

#[test]
fn rewrite_corpus_replays_cleanly() {
    replay("rewrite", colo_core::fuzzing::rewrite::run);
}

#[test]
fn wire_decode_corpus_replays_cleanly() {
    replay("wire_decode", colo_core::fuzzing::wire_decode::run);
}

#[test]
fn wire_decode_sealed_corpus_replays_cleanly() {
    replay(
        "wire_decode_sealed",
        colo_core::fuzzing::wire_decode::run_sealed,
    );
}

#[test]
fn node_inputs_corpus_replays_cleanly() {
    replay("node_inputs", colo_core::fuzzing::node_inputs::run);
}
