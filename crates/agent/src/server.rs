//! The local API (see `ciliate_api` for the routes), served on a unix socket.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ciliate_api::{
    ClusterHealth, Endpoint, EndpointCreateRequest, IpMasqState, IpamAllocateRequest,
    IpamAllocation, IpamOrphansRequest, IpamReleased, MonitorEvent, Node, ServiceEntry, Status,
};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use crate::daemon::Daemon;
use crate::endpoints::EndpointRef;
use crate::error::AgentError;
use crate::prober::HealthState;

#[derive(Clone)]
pub struct Api {
    pub daemon: Arc<Daemon>,
    pub events: broadcast::Sender<MonitorEvent>,
    /// Flips to true when the agent stops, ending monitor streams.
    pub stopping: watch::Receiver<bool>,
    /// The last health probe round; `None` when health checking is off.
    pub health: Option<HealthState>,
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/healthz", get(|| async { "ok" }))
        .route("/v1/ipam", post(allocate))
        .route("/v1/ipam/orphans", post(release_orphans))
        .route("/v1/ipam/{ip}", delete(release))
        .route("/v1/endpoint", post(create_endpoint).get(list_endpoints))
        .route(
            "/v1/endpoint/{id}",
            get(get_endpoint).delete(delete_endpoint),
        )
        .route("/v1/monitor", get(monitor))
        .route("/v1/health", get(health))
        .route("/v1/node", get(list_nodes))
        .route("/v1/service", get(list_services))
        .route("/v1/ipmasq", get(ipmasq))
        .with_state(api)
}

/// Serves until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::UnixListener,
    api: Api,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Runs a blocking daemon operation off the async workers (it does netlink
/// and map syscalls under a std mutex).
async fn blocking<T: Send + 'static>(
    daemon: &Arc<Daemon>,
    f: impl FnOnce(&Daemon) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    let daemon = Arc::clone(daemon);
    tokio::task::spawn_blocking(move || f(&daemon))
        .await
        .map_err(|e| AgentError::Internal(format!("operation panicked: {e}")))?
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    verbose: bool,
}

async fn status(
    State(api): State<Api>,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Status>, AgentError> {
    let mut status = blocking(&api.daemon, move |d| Ok(d.status(q.verbose))).await?;
    status.cluster_health = api.health.as_ref().map(HealthState::summary);
    Ok(Json(status))
}

async fn health(State(api): State<Api>) -> Result<Json<ClusterHealth>, AgentError> {
    api.health
        .as_ref()
        .map(|h| Json(h.snapshot()))
        .ok_or_else(|| {
            AgentError::NotFound("health checking is off (enableHealthChecking: false)".into())
        })
}

async fn allocate(
    State(api): State<Api>,
    body: Result<Json<IpamAllocateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<IpamAllocation>), AgentError> {
    let Json(req) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    let alloc = blocking(&api.daemon, move |d| d.allocate(&req)).await?;
    Ok((StatusCode::CREATED, Json(alloc)))
}

/// `?containerId=`: release only while the address is that container's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReleaseQuery {
    container_id: Option<String>,
}

async fn release(
    State(api): State<Api>,
    Path(ip): Path<String>,
    Query(query): Query<ReleaseQuery>,
) -> Result<StatusCode, AgentError> {
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| AgentError::BadRequest(format!("address {ip:?} is not an IPv4 address")))?;
    blocking(&api.daemon, move |d| {
        d.release(ip, query.container_id.as_deref())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn release_orphans(
    State(api): State<Api>,
    body: Result<Json<IpamOrphansRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Vec<IpamReleased>>, AgentError> {
    let Json(req) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    blocking(&api.daemon, move |d| d.release_orphans(&req))
        .await
        .map(Json)
}

async fn create_endpoint(
    State(api): State<Api>,
    body: Result<Json<EndpointCreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Endpoint>), AgentError> {
    let Json(req) = body.map_err(|e| AgentError::BadRequest(e.body_text()))?;
    let ep = blocking(&api.daemon, move |d| d.create_endpoint(&req)).await?;
    Ok((StatusCode::CREATED, Json(ep)))
}

async fn list_endpoints(State(api): State<Api>) -> Result<Json<Vec<Endpoint>>, AgentError> {
    blocking(&api.daemon, |d| Ok(d.endpoints())).await.map(Json)
}

async fn get_endpoint(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, AgentError> {
    let r = EndpointRef::parse(&id)?;
    blocking(&api.daemon, move |d| d.endpoint(&r))
        .await
        .map(Json)
}

async fn delete_endpoint(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, AgentError> {
    let r = EndpointRef::parse(&id)?;
    blocking(&api.daemon, move |d| d.delete_endpoint(&r)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// This node first, then the others by name.
async fn list_nodes(State(api): State<Api>) -> Json<Vec<Node>> {
    Json(api.daemon.nodes())
}

/// Every frontend the agent programmed, by id (empty without kubeProxyReplacement).
async fn list_services(State(api): State<Api>) -> Json<Vec<ServiceEntry>> {
    Json(api.daemon.services())
}

/// ip-masq-agent's list in force, where it came from, and the last refusal.
async fn ipmasq(State(api): State<Api>) -> Json<IpMasqState> {
    Json(api.daemon.ipmasq())
}

#[derive(Deserialize)]
struct MonitorQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Counts a monitor listener for as long as its stream lives.
struct Listener(Arc<Daemon>);

impl Drop for Listener {
    fn drop(&mut self) {
        let daemon = Arc::clone(&self.0);
        // The daemon lock may block on a syscall; never do that on a worker.
        tokio::task::spawn_blocking(move || daemon.monitor_listeners(-1));
    }
}

async fn monitor(
    State(api): State<Api>,
    Query(q): Query<MonitorQuery>,
) -> Result<Body, AgentError> {
    let filter = match q.kind.as_deref() {
        None | Some("") => None,
        Some(k @ ("drop" | "trace")) => Some(k.to_string()),
        Some(other) => {
            return Err(AgentError::BadRequest(format!(
                "type {other:?} is not an event type: use drop or trace"
            )))
        }
    };
    let rx = api.events.subscribe();
    blocking(&api.daemon, |d| {
        d.monitor_listeners(1);
        Ok(())
    })
    .await?;
    let listener = Listener(Arc::clone(&api.daemon));
    let state = (rx, api.stopping.clone(), listener, filter);
    let stream = futures_util::stream::unfold(
        state,
        |(mut rx, mut stopping, listener, filter)| async move {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            if filter.as_ref().is_some_and(|f| *f != ev.kind) {
                                continue;
                            }
                            let mut line = serde_json::to_vec(&ev).expect("events serialize");
                            line.push(b'\n');
                            return Some((Ok::<_, std::io::Error>(line), (rx, stopping, listener, filter)));
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "a monitor listener is too slow");
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = stopping.changed() => return None,
                }
            }
        },
    );
    Ok(Body::from_stream(stream))
}
