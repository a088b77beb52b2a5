#!/usr/bin/env bash
# colo's main job, on built-in defaults: a replicated VM pair on this host, with a failover.
# `colo demo` starts an arbiter, a primary and a secondary (colo's test guest, its counter
# workload) on loopback, lets several COLO checkpoints complete, kills the primary with
# SIGKILL, and shows the secondary failing over (lease granted, term bumped) with its guest
# continuing from the last checkpoint; then re-protects the survivor with a new secondary
# (digests compared at checkpoints) and fails back to it. Exits 0 with a summary, non-zero on
# any failure. Needs /dev/kvm and root, and loopback ports 17600-17602 (docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

cargo build -q --release -p colo-runtime --bin colo
exec target/release/colo demo "$@"
