//! The ciliate lab: a cluster in network namespaces on one machine, for
//! people (`ciliate lab ...`, see [`cli`]) and for tests ([`Lab`], [`LabGuard`]).
//!
//! ```no_run
//! use ciliate_lab::{LabGuard, LabSpec};
//! let mut lab = LabGuard::up(&LabSpec::new("t1", 3))?;
//! lab.apply_yaml(include_str!("../../../examples/pods.yaml"))?;
//! let server = lab.pod("server")?.ip.to_string();
//! let out = lab.exec("client", &["ping", "-c", "1", &server])?;
//! assert!(out.status.success());
//! # Ok::<(), ciliate_lab::LabError>(())
//! ```
//! Dropping the guard takes the lab down.

pub mod cli;
pub mod cni;
pub mod configmaps;
pub mod connectivity;
pub mod containerd;
pub mod cri;
pub mod error;
pub mod fabric;
pub mod lab;
pub mod manifest;
pub mod names;
pub mod outside;
pub mod pause_image;
pub mod services;
pub mod state;
pub mod sys;

pub use error::LabError;
pub use lab::{
    find_bin_dir, leftovers, ApplyOutcome, DownReport, Lab, LabGuard, LabSpec, LabStatus,
    NodeStatus, PodStatus, RouterStatus, ServiceStatus, Target,
};
pub use state::{
    ContainerInfo, DatapathMode, EtcdInfo, IpamMode, LabState, Masquerade, NodeInfo, OperatorInfo,
    PodCondition, PodInfo, ProcessRecord, RouterInfo, RoutingMode, TunnelProtocol,
};
