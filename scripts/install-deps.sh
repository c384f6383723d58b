#!/usr/bin/env bash
# Installs the system packages ciliate needs to build and test, and says which.
# Safe to run again: only missing packages are installed.
set -euo pipefail

PACKAGES=(
  clang-19          # compiles the C datapath for the BPF target
  libbpf-dev        # bpf_helpers.h and friends
  linux-libc-dev    # kernel UAPI headers
  bpftool           # BTF dumps for the layout test
  iproute2          # ip(8), used by tests to look at what we made
  iputils-ping      # ping between pods
  socat             # TCP/UDP servers in the lab's pods
  curl              # HTTP client in the lab's pods
  procps            # ps/pkill
  python3           # the example server pod; a test stand-in CNI plugin
  etcd-server       # the cluster store (etcd 3.4); tests and the lab start their own
  etcd-client       # etcdctl, to look into the store by hand
  protobuf-compiler # protoc, which the etcd-client crate needs to build
  libprotobuf-dev   # protoc's well-known .proto files (descriptor.proto), same reason
  iptables          # the kube-proxy-style iptables baseline of the services benchmark
  tcpdump           # captures on the lab's outside router in tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "ciliate: installing system packages: ${missing[*]}"
  if [[ $EUID -ne 0 ]]; then
    echo "ciliate: installing packages needs root; rerun as root (or with sudo)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "ciliate: system packages present (${PACKAGES[*]})"
fi
