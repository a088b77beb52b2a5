#!/usr/bin/env bash
# Builds the two-machine layout of docs/operations.md ("Two machines") on one host, in network
# namespaces, for trying colo by hand: host A, host B, the arbiter's host and a client, with a
# replication link (a veth pair), a management network for the arbiter and a client LAN. It
# writes one pair file and prints the commands to run in each namespace. Nothing routes out.
#
#   scripts/two-hosts-netns.sh up      # create (needs root and iproute2)
#   scripts/two-hosts-netns.sh down    # remove everything it created
#
# runtime/tests/two_hosts.rs builds the same layout (with a link emulator instead of the veth
# replication link, so it can delay, drop and cut it).
set -euo pipefail
A=colo-host-a B=colo-host-b ARB=colo-arbiter CL=colo-client
DIR=${COLO_TWO_HOSTS_DIR:-/tmp/colo-two-hosts}

down() {
    for ns in "$A" "$B" "$ARB" "$CL"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$DIR"
}

up() {
    for ns in "$A" "$B" "$ARB" "$CL"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    # Replication link: one cable between the hosts.
    ip -n "$A" link add rep0 type veth peer name rep0 netns "$B"
    ip -n "$A" addr add 192.168.50.1/24 dev rep0 && ip -n "$A" link set rep0 up
    ip -n "$B" addr add 192.168.50.2/24 dev rep0 && ip -n "$B" link set rep0 up
    # Management network: the arbiter's switch, one cable per host.
    ip -n "$ARB" link add mgmt type bridge
    ip -n "$ARB" addr add 192.168.51.3/24 dev mgmt && ip -n "$ARB" link set mgmt up
    # Client LAN: the client's switch, an uplink to each host's guest bridge.
    ip -n "$CL" link add cbr address 02:c0:10:00:00:01 type bridge forward_delay 0
    ip -n "$CL" addr add 10.0.0.1/24 dev cbr && ip -n "$CL" link set cbr up
    n=1
    for host in "$A" "$B"; do
        end=$([ "$host" = "$A" ] && echo a || echo b)
        ip -n "$ARB" link add "m-$end" type veth peer name mgmt0 netns "$host"
        ip -n "$ARB" link set "m-$end" master mgmt up
        ip -n "$host" addr add "192.168.51.$n/24" dev mgmt0 && ip -n "$host" link set mgmt0 up
        ip -n "$CL" link add "dn-$end" type veth peer name uplink netns "$host"
        ip -n "$CL" link set "dn-$end" master cbr up
        ip -n "$host" link add guestbr type bridge forward_delay 0
        ip -n "$host" link set uplink master guestbr up && ip -n "$host" link set guestbr up
        n=$((n + 1))
    done
    mkdir -p "$DIR"
    cat > "$DIR/pair.toml" <<TOML
# The same file on both hosts (docs/operations.md, "The pair config file").
[[vm.net]]
tap = "colog0"
mac = "52:54:00:c0:10:01"
bridge = "guestbr"

[pair]
arbiter = "192.168.51.3:7600"

[host.a]
role = "primary"
listen = "192.168.50.1:7601"
node_id = 1
control = "$DIR/a.sock"

[host.b]
role = "secondary"
peer = "192.168.50.1:7601"
listen = "192.168.50.2:7601"
node_id = 2
control = "$DIR/b.sock"
TOML
    cat <<EOT
Built: namespaces $A, $B, $ARB, $CL; pair file $DIR/pair.toml. Run, each in its own terminal:
  ip netns exec $ARB colo arbiter --listen 192.168.51.3:7600 --state $DIR/arbiter.state
  ip netns exec $A colo primary --config $DIR/pair.toml --host a --workload net-server
  ip netns exec $B colo secondary --config $DIR/pair.toml --host b --workload net-server
Then the client (the test guest's key-value server):
  ip netns exec $CL nc 10.0.0.2 7000        # type: 1 INCR n
Faults:
  ip -n $A link set rep0 down               # cut the replication link
  ip -n $ARB link set m-a down              # cut host A from the arbiter
  colo status --control $DIR/b.sock         # who holds which term
Remove it all: $0 down
EOT
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 64 ;;
esac
