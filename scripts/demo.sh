#!/usr/bin/env bash
# colo's main job, on built-in defaults. Until the replicated VM pair exists (see README,
# Status), it runs the two halves that do exist, end to end on this host:
#   1. the comparator deciding output commit for a primary/secondary TCP stream;
#   2. a real KVM VM (colo's test guest) checkpointed by one `colo` process and continued by
#      another from the state file, the way a secondary takes over the primary's state.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== 1. comparator: identical output is released, a difference requests a checkpoint"
cargo run -q --release -p colo-core --example compare_demo

echo
echo "== 2. KVM: run the test guest, checkpoint it after 1 s, continue it in a second process"
cargo build -q --release -p colo-runtime --bin colo
colo=target/release/colo
state=$(mktemp /tmp/colo-demo-state.XXXXXX)
trap 'rm -f "$state"' EXIT
cmdline="colo.workload=counter colo.pages=64 colo.steps=0 colo.print_every=200000"
"$colo" run --guest test-guest --memory 64 --cmdline "$cmdline" --save-after 1000 --state-out "$state"
echo "-- state file: $(stat -c %s "$state") bytes; restoring into a fresh VM for 1 s"
"$colo" restore --state "$state" --timeout 1 || true
echo "== demo done"
