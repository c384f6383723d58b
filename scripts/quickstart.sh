#!/usr/bin/env bash
# Brings up a three-node ciliate lab (tunnel routing) with two pods, shows them
# talking and runs `ciliate connectivity test` over it (ROUTING=native for native routing).
# Installs missing system packages (and says which), builds, then runs the demo.
# Remove everything with: target/debug/ciliate lab down
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "==> building ciliate"
cargo build --workspace --bins
export PATH="$PWD/target/debug:$PATH"
exec ./scripts/lab-demo.sh
