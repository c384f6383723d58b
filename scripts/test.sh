#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, BPF_PROG_TEST_RUN datapath
# tests, namespace tests, the lab, and the VM suites (a newer kernel under
# QEMU). Privileged tests need root; as root (CI) they all run, otherwise they
# say loudly that they were skipped.
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
# --all-targets leaves out the VM suites (test = false): lint them by name.
cargo clippy --workspace --test 'vm_*' -- -D warnings
echo "==> cargo build (binaries the namespace tests and the lab run)"
cargo build --workspace --bins
echo "==> cargo test"
cargo test --workspace -- --test-threads=2
if [[ $EUID -eq 0 ]]; then
  echo "==> cargo xtask vm-test (suites needing Debian's 6.12 kernel, in QEMU)"
  timeout 3800 cargo xtask vm-test
else
  echo "ciliate: WARNING: not root: the VM suites (cargo xtask vm-test) are SKIPPED" >&2
fi
echo "==> all tests passed"
