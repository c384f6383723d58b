//! The per-node agent: owns the node's BPF programs, maps and devices, hands
//! out pod addresses, keeps the endpoint registry, registers the node in the
//! cluster store, routes to the other nodes and serves the local API.

pub mod addressing;
pub mod config;
pub mod daemon;
pub mod devices;
pub mod endpoints;
pub mod error;
pub mod health;
pub mod health_server;
pub mod ipam;
pub mod ipmasq;
pub mod iptables;
pub mod ipvlan;
pub mod kernel_features;
pub mod kvstore;
pub mod monitor;
pub mod nodes;
pub mod prober;
pub mod server;
pub mod services;
pub mod state;
