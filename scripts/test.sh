#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, BPF_PROG_TEST_RUN datapath
# tests, namespace tests and the lab. Privileged tests need root; as root (CI)
# they all run, otherwise they say loudly that they were skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
if [[ $EUID -ne 0 ]]; then
  echo "ciliate: WARNING: not root: privileged tests (BPF, namespaces, lab) will be SKIPPED" >&2
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo build (binaries the namespace tests and the lab run)"
cargo build --workspace --bins
echo "==> cargo test"
cargo test --workspace -- --test-threads=2
echo "==> all tests passed"
