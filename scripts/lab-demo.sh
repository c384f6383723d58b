#!/usr/bin/env bash
# The lab quick start: a three-node cluster in network namespaces (etcd and
# ciliate-operator in the fabric, one agent per node, PodCIDRs from the
# operator), two pods networked by ciliate's CNI plugin and BPF datapath, and
# `ciliate connectivity test` over it.
# Run from anywhere after the binaries are built (`cargo build --workspace --bins`)
# and the tools are installed (scripts/install-deps.sh). As root.
# Environment: CILIATE (the ciliate binary; default: target/release or
# target/debug), CILIATE_LAB (the lab's name; default "ciliate"),
# ROUTING (tunnel or native; default tunnel), NODES (default 3),
# MASQUERADE (bpf, iptables or off; default bpf).
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
    echo "lab-demo: no ciliate binary in target/release or target/debug; run cargo build --workspace --bins" >&2
    exit 1
fi
export CILIATE_LAB=${CILIATE_LAB:-ciliate}
ROUTING=${ROUTING:-tunnel}
NODES=${NODES:-3}
MASQUERADE=${MASQUERADE:-bpf}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

say "Remove whatever an earlier run left (idempotent)"
run "$CILIATE" lab down

say "Create the lab: bridge + etcd + operator at 192.168.10.1, $NODES nodes from 192.168.10.100, the outside host router at .200 (owning 10.10.1.0/24 and 10.10.2.0/24), routing $ROUTING, masquerade $MASQUERADE"
run "$CILIATE" lab up --nodes "$NODES" --routing "$ROUTING" --masquerade "$MASQUERADE"

say "Create two pods through ciliate-cni, as a container runtime would"
run "$CILIATE" lab apply -f examples/pods.yaml

say "Nodes, pods, etcd and the operator"
run "$CILIATE" lab status

say "The cluster as node0's agent knows it"
run "$CILIATE" lab exec node0 -- ciliate node list

SERVER=$("$CILIATE" lab exec server -- ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]}')

say "ICMP, TCP and UDP: client -> server ($SERVER)"
run "$CILIATE" lab exec client -- ping -c 3 -i 0.2 "$SERVER"
for _ in 1 2 3 4 5 6 7 8 9 10; do
    if "$CILIATE" lab exec client -- curl -sS --max-time 2 -o /dev/null "http://$SERVER:8080/" 2>/dev/null; then break; fi
    sleep 0.3
done
run "$CILIATE" lab exec client -- curl -sS --max-time 3 -o /dev/null -w 'HTTP %{http_code} from %{remote_ip}:%{remote_port}\n' "http://$SERVER:8080/"
run "$CILIATE" lab exec client -- sh -c "echo hello over UDP | socat -T 2 - UDP4:$SERVER:9000"

say "A NodePort Service selecting the server pod: the lab gives it a clusterIP and a nodePort, and its EndpointSlice"
cat > "${TMPDIR:-/tmp}/ciliate-demo-svc.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  type: NodePort
  selector: {app: server}
  ports:
  - {name: http, port: 80, targetPort: 8080}
YAML
run "$CILIATE" lab apply -f "${TMPDIR:-/tmp}/ciliate-demo-svc.yaml"
rm -f "${TMPDIR:-/tmp}/ciliate-demo-svc.yaml"
if "$CILIATE" lab exec node0 -- ciliate service list >/dev/null 2>&1; then
    # The agent programs it asynchronously: give it a moment.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        if "$CILIATE" lab exec node0 -- ciliate service list 2>/dev/null | grep -q ':80/TCP'; then break; fi
        sleep 0.5
    done
    run "$CILIATE" lab exec node0 -- ciliate service list
    NODEPORT=$("$CILIATE" lab exec node0 -- ciliate service list 2>/dev/null | awk '/0\.0\.0\.0:[0-9]+\/TCP/ {split($2, a, "[:/]"); print a[2]; exit}')
    if [ -n "$NODEPORT" ]; then
        say "From outside the cluster: the router (192.168.10.200, no PodCIDR routes) to node1's NodePort $NODEPORT"
        run "$CILIATE" lab exec router -- curl -sS --max-time 3 -o /dev/null -w 'HTTP %{http_code} from %{remote_ip}:%{remote_port}\n' "http://192.168.10.101:$NODEPORT/"
    fi
else
    echo "(this ciliate has no \`service list\` yet: the service is in the store, not served)"
fi

say "Pod to world: the client fetches http://10.10.1.200/ from the router, which answers with the source it saw (node0's IP when masqueraded)"
run "$CILIATE" lab exec client -- curl -sS --max-time 3 http://10.10.1.200/ || true

say "The connectivity test: pods on the same and on other nodes, hosts, the outside host, services and NodePorts, pod to world, health, drops"
status=0
run "$CILIATE" connectivity test || status=$?

say "The node's agent, asked from inside node0"
run "$CILIATE" lab exec node0 -- ciliate status

if [ "$status" != 0 ]; then
    say "The connectivity test failed (exit $status); the lab stays up for a look: \`$CILIATE lab exec node0 -- ciliate monitor --type drop\`"
    exit "$status"
fi
say "Done. The lab stays up: try \`$CILIATE lab exec node1 -- ciliate bpf ipcache list\`; remove it with \`$CILIATE lab down\`"
