//! The health responder, as cilium-health runs it: a minimal HTTP server on
//! `clusterHealthPort` (4240) answering `GET /hello` with 200, so that other
//! nodes can tell "the stack answers" (ICMP) from "the node's agent answers"
//! (TCP). One runs in the node's host namespace, one inside the health
//! endpoint's namespace.
//!
//! A listening socket belongs to the namespace it was created in, whichever
//! thread later accepts on it: [`bind_in_netns`] creates it on a short-lived
//! thread inside the target namespace and hands it back, so serving it never
//! moves a tokio worker between namespaces.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use axum::routing::get;
use axum::Router;
use ciliate_datapath::netns::{self, NetnsError};

use crate::config::Config;

/// Cilium's `clusterHealthPort` default.
pub const DEFAULT_HEALTH_PORT: u16 = 4240;

/// The path the responder answers and the prober asks.
pub const HELLO_PATH: &str = "/hello";

#[derive(Debug, thiserror::Error)]
pub enum HealthServerError {
    #[error("binding the health responder on {addr}{}", in_netns(.netns.as_deref()))]
    Bind {
        addr: SocketAddr,
        netns: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the health responder inside {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: NetnsError,
    },
    #[error("serving the health responder")]
    Serve(#[source] std::io::Error),
}

fn in_netns(netns: Option<&Path>) -> String {
    netns.map_or_else(String::new, |p| {
        format!(" in network namespace {}", p.display())
    })
}

/// The port the responders listen on and the prober connects to (`clusterHealthPort`).
pub fn port(config: &Config) -> u16 {
    config.cluster_health_port
}

/// The responder's routes: `GET /hello` answers 200, anything else 404.
pub fn router() -> Router {
    Router::new().route(HELLO_PATH, get(|| async { "hello\n" }))
}

/// Binds `0.0.0.0:port` in the calling thread's network namespace.
pub fn bind(port: u16) -> Result<std::net::TcpListener, HealthServerError> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    std::net::TcpListener::bind(addr).map_err(|source| HealthServerError::Bind {
        addr,
        netns: None,
        source,
    })
}

/// Binds `0.0.0.0:port` inside the network namespace at `netns`, from a
/// thread of its own; the calling thread stays where it is. Port 0 picks a
/// free port (read it from the listener's `local_addr`).
pub fn bind_in_netns(netns: &Path, port: u16) -> Result<std::net::TcpListener, HealthServerError> {
    netns::run_in(netns, move || bind(port))
        .map_err(|source| HealthServerError::Netns {
            path: netns.to_owned(),
            source,
        })?
        .map_err(|e| match e {
            HealthServerError::Bind { addr, source, .. } => HealthServerError::Bind {
                addr,
                netns: Some(netns.to_owned()),
                source,
            },
            other => other,
        })
}

/// Serves `listener` (from [`bind`] or [`bind_in_netns`]) until `shutdown`
/// resolves. Must be called inside a tokio runtime.
pub async fn run(
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HealthServerError> {
    listener
        .set_nonblocking(true)
        .map_err(HealthServerError::Serve)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(HealthServerError::Serve)?;
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HealthServerError::Serve)
}
