//! Repository tasks cargo cannot express: `cargo xtask bench services`,
//! the ClusterIP scaling benchmark of ciliate against kube-proxy-style
//! iptables rules (issue 4's "Benchmark", the base issue 8 extends), and
//! `cargo xtask vm-test`, the suites that need a newer kernel, in QEMU.

// Rates and percentiles are computed from counts far below 2^52.
#![allow(clippy::cast_precision_loss)]

pub mod catalog;
pub mod ciliate;
pub mod interrupt;
pub mod iptables;
pub mod load;
pub mod report;
pub mod services;
pub mod topology;
pub mod vm;
