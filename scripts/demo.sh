#!/usr/bin/env bash
# colo's main job, on built-in defaults: a replicated VM pair on this host, with a failover.
#  1. `colo demo`: an arbiter, a primary and a secondary (colo's test guest, its counter
#     workload) on loopback; several COLO checkpoints; SIGKILL of the primary; the secondary
#     fails over (lease granted, term bumped) with its guest continuing from the last
#     checkpoint; then the survivor is re-protected with a new secondary (digests compared at
#     checkpoints) and the demo fails back to it.
#  2. `colo demo --net`: the same pair serving a real TCP client through virtio-net and taps in
#     a network namespace the demo creates: the primary's node compares both guests' replies
#     (a difference forces a checkpoint), the primary is SIGKILLed, and the client's connection
#     keeps working on the survivor with no write lost or repeated.
# Each exits 0 with a summary, non-zero on any failure. Needs /dev/kvm and root (namespaces,
# taps), and loopback ports 17600-17602 (docs/operations.md). Extra arguments go to both.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

cargo build -q --release -p colo-runtime --bin colo
echo "== 1. colo demo: checkpoints, failover, re-protection, fail-back"
target/release/colo demo "$@"
echo
echo "== 2. colo demo --net: a client's TCP connection through the pair and across a failover"
target/release/colo demo --net "$@"
