//! The agent's local API: JSON over HTTP/1.1 on a root-only unix socket.
//! The agent serves it; the CNI plugin and the CLI are its clients.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | /v1/status[?verbose=true] | | [`Status`] |
//! | POST | /v1/ipam | [`IpamAllocateRequest`] | [`IpamAllocation`] |
//! | DELETE | /v1/ipam/{ip}[?containerId=<id>] | | 204 (404 if not allocated, or not to that container) |
//! | POST | /v1/ipam/orphans | [`IpamOrphansRequest`] | `[IpamReleased]` |
//! | POST | /v1/endpoint | [`EndpointCreateRequest`] | [`Endpoint`] |
//! | GET | /v1/endpoint | | `[Endpoint]` |
//! | GET | /v1/endpoint/{id} | | [`Endpoint`] |
//! | DELETE | /v1/endpoint/{id} | | 204 (404 if unknown) |
//! | GET | /v1/monitor[?type=drop] | | stream of [`MonitorEvent`], one JSON per line |
//! | GET | /v1/node | | `[Node]`, this node included |
//! | GET | /v1/health | | [`ClusterHealth`] |
//! | GET | /v1/service | | `[ServiceEntry]` |
//! | GET | /v1/ipmasq | | [`IpMasqState`] |
//!
//! `{id}` is the numeric endpoint id or `container-id:<id>`. Errors come back as
//! [`ApiError`] with a 4xx/5xx status.

pub mod add_lock;
pub mod client;
pub mod types;

pub use client::{Client, ClientError};
pub use types::*;

/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/ciliate/ciliate.sock";
/// Environment variable that points clients at another socket (the lab sets it).
pub const SOCKET_ENV: &str = "CILIATE_SOCKET";

/// The socket clients should use: `$CILIATE_SOCKET` or the default.
pub fn socket_path() -> std::path::PathBuf {
    std::env::var_os(SOCKET_ENV).map_or_else(|| DEFAULT_SOCKET.into(), Into::into)
}
