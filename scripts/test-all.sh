#!/usr/bin/env bash
# Runs every test colo has, on a fresh machine: fetches the guest assets the tests need, then
# formatting, lints, unit/property/corpus/KVM tests of every crate, the simulator's madsim
# build, and the simulator's swarm batch, determinism check and canaries. This is the
# README's test command; .ci/run calls it and adds a fuzz smoke.
#
# Tests that need /dev/kvm, the Linux kernel asset or network namespaces (root, iproute2,
# /dev/net/tun) skip with a message where those are missing; set COLO_REQUIRE_KVM=1 /
# COLO_REQUIRE_LINUX_KERNEL=1 / COLO_REQUIRE_NET=1 to make a skip a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain components"
rustup component add rustfmt clippy >/dev/null

echo "== guest assets (Debian cloud kernel for the Linux-loader test)"
scripts/setup-guest-assets.sh || echo "guest assets: could not fetch the kernel; its test will skip"

echo "== iproute2 (the network tests make namespaces, taps and a bridge with ip)"
command -v ip >/dev/null || apt-get install -y iproute2 >/dev/null || echo "iproute2: not installed; the network tests will skip"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (workspace, all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (workspace)"
cargo test --workspace --locked

echo "== madsim build of the simulator (--cfg madsim, own target dir): lints, world smoke, Node cluster"
CARGO_TARGET_DIR=target/sim RUSTFLAGS="--cfg madsim" cargo clippy -p colo-sim --all-targets --locked -- -D warnings
CARGO_TARGET_DIR=target/sim RUSTFLAGS="--cfg madsim" cargo test -p colo-sim --locked --test madsim_smoke --test madsim_cluster

echo "== colo-sim: swarm batches of 500 seeds (platform engine and two Nodes), determinism, every canary (release build)"
cargo build --release -p colo-sim --bin colo-sim --locked
sim=target/release/colo-sim
"$sim" --seeds 0..500 --quiet
"$sim" --seeds 0..20 --check-determinism --quiet
# The same swarm under two colo-core Nodes (seeds 188, 290 and 1057, fixed findings, are
# replayed by sim/tests/regression_seeds.rs; see docs/simulation.md, "Findings").
"$sim" --seeds 0..500 --node --quiet
"$sim" --seeds 0..10 --node --check-determinism --quiet
# Issue 4's throughput scenario, 10 simulated seconds per seed (docs/benchmarks.md): a few
# seconds per engine.
"$sim" --seeds 0..100 --duration 10s --quiet
"$sim" --seeds 0..100 --duration 10s --node --quiet
# Every canary under two Nodes too: release-before-received, release-without-lease and
# skip-rewriter-reset planted in colo-core's Node (feature `canaries`), apply-partial-epoch in
# the VM platform.
for canary in $("$sim" --list-canaries); do
    "$sim" --seed 3 --node --canary "$canary" | tail -n 2
done
# The Node engine as a madsim cluster (hosts, arbiter, clients as madsim nodes; crashes are
# node kills, restarts re-protect): 500 seeds take about 75 s on the shared 2-core machine.
CARGO_TARGET_DIR=target/sim-release RUSTFLAGS="--cfg madsim" \
    cargo build --release -p colo-sim --bin colo-sim --locked
msim=target/sim-release/release/colo-sim
"$msim" --seeds 0..500 --node --quiet
"$msim" --seeds 0..10 --node --check-determinism --quiet
"$msim" --seeds 0..100 --duration 10s --node --quiet
for canary in $("$msim" --list-canaries); do
    "$msim" --seed 3 --node --canary "$canary" | tail -n 2
done
for canary in $("$sim" --list-canaries); do
    "$sim" --seed 3 --canary "$canary" | tail -n 3
done

echo "== all tests passed"
