//! The per-node agent: owns the node's BPF programs, maps and devices, hands
//! out pod addresses, keeps the endpoint registry and serves the local API.

pub mod config;
pub mod daemon;
pub mod devices;
pub mod endpoints;
pub mod error;
pub mod health;
pub mod health_server;
pub mod ipam;
pub mod monitor;
pub mod prober;
pub mod server;
pub mod state;
