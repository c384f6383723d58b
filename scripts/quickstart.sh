#!/usr/bin/env bash
# Brings up a one-node ciliate lab with two pods and shows them talking.
# Installs missing system packages (and says which), builds, then runs the demo.
# Remove everything with: target/debug/ciliate lab down
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "==> building ciliate"
cargo build --workspace --bins
export PATH="$PWD/target/debug:$PATH"
exec ./scripts/lab-demo.sh
