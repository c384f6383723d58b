//! Repository tasks cargo cannot express: `cargo xtask bench` (issue 8:
//! pod to pod against the kernel and flannel-style VXLAN, the ClusterIP
//! scaling comparison against kube-proxy-style iptables, per-packet cost,
//! control plane; see `bench.rs`), and `cargo xtask vm-test`, the suites
//! that need a newer kernel, in QEMU.

// Rates and percentiles are computed from counts far below 2^52.
#![allow(clippy::cast_precision_loss)]

pub mod bench;
pub mod catalog;
pub mod ciliate;
pub mod control_plane;
pub mod goals;
pub mod interrupt;
pub mod iperf;
pub mod iptables;
pub mod kernel_net;
pub mod load;
pub mod per_packet;
pub mod pod_to_pod;
pub mod report;
pub mod services;
pub mod stats;
pub mod svg;
pub mod topology;
pub mod vm;
