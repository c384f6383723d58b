#!/usr/bin/env bash
# The lab quick start: a one-node cluster in network namespaces, two pods
# networked by ciliate's CNI plugin and BPF datapath, and proof they talk.
# Run from anywhere after the binaries are built (`cargo build --workspace`)
# and the tools are installed (iproute2, iputils-ping, curl, socat, python3).
# As root. Environment: CILIATE (the ciliate binary; default: target/release
# or target/debug), CILIATE_LAB (the lab's name; default "ciliate").
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "lab-demo: needs root (the lab creates network namespaces and mounts bpffs)" >&2
    exit 1
fi
CILIATE=${CILIATE:-}
if [ -z "$CILIATE" ]; then
    for candidate in target/release/ciliate target/debug/ciliate; do
        if [ -x "$candidate" ]; then CILIATE=$candidate; break; fi
    done
fi
if [ -z "$CILIATE" ]; then
    echo "lab-demo: no ciliate binary in target/release or target/debug; run cargo build --workspace" >&2
    exit 1
fi
export CILIATE_LAB=${CILIATE_LAB:-ciliate}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

say "Remove whatever an earlier run left (idempotent)"
run "$CILIATE" lab down

say "Create the lab: fabric bridge, node0 at 192.168.10.100, its agent"
run "$CILIATE" lab up --nodes 1

say "Create two pods through ciliate-cni, as a container runtime would"
run "$CILIATE" lab apply -f examples/pods.yaml

say "Nodes and pods"
run "$CILIATE" lab status

SERVER=$("$CILIATE" lab exec server -- ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]}')
ROUTER=$("$CILIATE" lab exec client -- ip -4 route show default | awk '{print $3}')

say "ICMP: client -> server ($SERVER)"
run "$CILIATE" lab exec client -- ping -c 3 -i 0.2 "$SERVER"

say "TCP: client -> server:8080 (python3 http.server)"
for _ in 1 2 3 4 5 6 7 8 9 10; do
    if "$CILIATE" lab exec client -- curl -sS --max-time 2 -o /dev/null "http://$SERVER:8080/" 2>/dev/null; then break; fi
    sleep 0.3
done
run "$CILIATE" lab exec client -- curl -sS --max-time 3 -o /dev/null -w 'HTTP %{http_code} from %{remote_ip}:%{remote_port}\n' "http://$SERVER:8080/"

say "UDP: client -> server:9000 (socat echo)"
run "$CILIATE" lab exec client -- sh -c "echo hello over UDP | socat -T 2 - UDP4:$SERVER:9000"

say "Pod -> node (192.168.10.100) and pod -> router IP ($ROUTER)"
run "$CILIATE" lab exec client -- ping -c 1 192.168.10.100
run "$CILIATE" lab exec client -- ping -c 1 "$ROUTER"

say "The node's agent, asked from inside node0"
run "$CILIATE" lab exec node0 -- ciliate status

say "Done. The lab stays up: try \`$CILIATE lab exec node0 -- ciliate endpoint list\`; remove it with \`$CILIATE lab down\`"
