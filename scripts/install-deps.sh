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
  iperf3            # pod-to-pod throughput in `cargo xtask bench`
  tcpdump           # captures on the lab's outside router in tests
  kmod              # depmod/modprobe for the VM kernel's modules (cargo xtask vm-test)
  cpio              # reads back the VM's initramfs in xtask's tests
  xz-utils          # unpacks the VM kernel's .ko.xz modules into its initramfs
  containerd        # the real runtime of the containerd suite (CRI drives our CNI plugin)
  runc              # containerd's OCI runtime, runs the suite's pause containers
  containernetworking-plugins # portmap and bandwidth, chained after ciliate in the suite
  gcc               # builds the suite's static pause binary (cc -static)
  libc6-dev         # static libc for that pause binary
)

# QEMU for `cargo xtask vm-test`, from bookworm-backports: bookworm's own
# qemu-system-x86 would replace the newer qemu-utils some images ship. The
# backports source lives in a private apt configuration, never in /etc/apt.
BACKPORTS_PACKAGES=(qemu-system-x86)

# The packages among "$@" that are not installed, one a line.
not_installed() {
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

need_root() {
  if [[ $EUID -ne 0 ]]; then
    echo "ciliate: installing packages needs root; rerun as root (or with sudo)" >&2
    exit 1
  fi
}

mapfile -t missing < <(not_installed "${PACKAGES[@]}")
if ((${#missing[@]})); then
  echo "ciliate: installing system packages: ${missing[*]}"
  need_root
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "ciliate: system packages present (${PACKAGES[*]})"
fi

mapfile -t missing < <(not_installed "${BACKPORTS_PACKAGES[@]}")
if ((${#missing[@]})); then
  echo "ciliate: installing from bookworm-backports: ${missing[*]}"
  need_root
  apt_dir=$(mktemp -d)
  trap 'rm -rf "$apt_dir"' EXIT
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  for suite in bookworm bookworm-updates bookworm-backports; do
    echo "deb [signed-by=$keyring] http://deb.debian.org/debian $suite main"
  done >"$apt_dir/sources.list"
  {
    echo "Dir::Etc::SourceList \"$apt_dir/sources.list\";"
    echo "Dir::Etc::SourceParts \"/nonexistent\";"
    echo "Dir::State::Lists \"$apt_dir/lists\";"
    echo "Dir::Cache \"$apt_dir/cache\";"
    echo "Acquire::Languages \"none\";"
    echo "APT::Sandbox::User \"root\";"
  } >"$apt_dir/apt.conf"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -c "$apt_dir/apt.conf" update -qq
  apt-get -c "$apt_dir/apt.conf" install -y -qq --no-install-recommends \
    -t bookworm-backports "${missing[@]}" >/dev/null
else
  echo "ciliate: backports packages present (${BACKPORTS_PACKAGES[*]})"
fi
