//! The documents say what the code does: each test reads one document and the code it
//! describes, across crates, and names the first disagreement.

use colo_core::wire::PROTOCOL_VERSION;
use colo_runtime::pair::config::PairFile;
use colo_sim::check;
use colo_sim::platform::Canary;
use colo_tests::{cited_invariants, fenced_blocks, numbered_items, read, rust_sources};
use std::path::Path;

#[test]
fn every_invariant_the_code_cites_is_in_architecture_md() {
    let defined = numbered_items(&read("docs/architecture.md"), "## The invariants");
    assert_eq!(
        defined,
        (1..=8).collect::<Vec<u32>>(),
        "docs/architecture.md numbers its invariants 1..8 in order"
    );
    let mut checked = 0;
    for dir in ["core/src", "runtime/src", "sim/src"] {
        for (path, text) in rust_sources(dir) {
            for n in cited_invariants(&text) {
                assert!(
                    defined.contains(&n),
                    "{} cites invariant {n}, which docs/architecture.md does not define",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 5,
        "the sources cite invariants by number ({checked} found)"
    );
}

#[test]
fn the_annotated_pair_file_in_operations_md_parses() {
    let doc = read("docs/operations.md");
    let blocks: Vec<String> = fenced_blocks(&doc, "toml")
        .into_iter()
        .filter(|b| b.contains("[host."))
        .collect();
    assert!(!blocks.is_empty(), "docs/operations.md shows a pair file");
    for block in blocks {
        let path = Path::new("docs/operations.md");
        let file = PairFile::parse(&block, path)
            .unwrap_or_else(|e| panic!("the pair file in docs/operations.md: {e}"));
        let a = file.host("a", path).expect("[host.a]");
        let b = file.host("b", path).expect("[host.b]");
        assert_ne!(a.role, b.role, "the example's hosts play both roles");
        let spec = file.vm_spec(None);
        spec.check_supported()
            .unwrap_or_else(|e| panic!("the example's [vm]: {e}"));
        assert!(!spec.disks.is_empty() && !spec.nets.is_empty());
    }
}

#[test]
fn every_checker_and_canary_is_described_in_simulation_md() {
    let doc = read("docs/simulation.md");
    let checkers = [
        check::output_commit::NAME,
        check::atomic_checkpoint::NAME,
        check::state_equality::NAME,
        check::tcp_continuity::NAME,
        check::single_writer::NAME,
        check::no_silent_loss::NAME,
        check::liveness::NAME,
    ];
    for name in checkers {
        assert!(
            doc.contains(name),
            "docs/simulation.md never names checker {name}"
        );
        assert!(
            read("docs/architecture.md").contains(&format!("[`{name}`]")),
            "docs/architecture.md's invariants do not name checker {name}"
        );
    }
    for canary in Canary::ALL {
        assert!(
            doc.contains(canary.name()),
            "docs/simulation.md never names canary {}",
            canary.name()
        );
    }
}

#[test]
fn protocol_md_states_the_protocol_version_the_code_speaks() {
    let doc = read("docs/protocol.md");
    let stated = format!("PROTOCOL_VERSION, now {PROTOCOL_VERSION})");
    assert!(
        doc.contains(&stated),
        "docs/protocol.md's frame header table should say `{stated}`"
    );
    assert!(
        doc.contains(&format!("`PROTOCOL_VERSION` (now {PROTOCOL_VERSION};")),
        "docs/protocol.md's Versioning section should name version {PROTOCOL_VERSION}"
    );
}
