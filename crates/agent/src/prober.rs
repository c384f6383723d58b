//! The health prober, as cilium-health runs it: every interval, probe every
//! other node's InternalIP and health endpoint IP with an ICMP echo and with
//! TCP plus `GET /hello` on the health port, and keep the latency of the last
//! success, the last error and a running count of failures per probe.
//!
//! Sockets belong to the namespace of the thread that creates them: the
//! prober probes from the namespace its runtime's threads are in (the agent's
//! host namespace). The ICMP socket is a raw one (root or CAP_NET_RAW), falling
//! back to an unprivileged ping socket.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ciliate_api::{ClusterHealth, HealthSummary, Node, NodeHealth, PathHealth, ProbeResult};
use futures_util::future::join_all;
use surge_ping::{IcmpPacket, PingIdentifier, PingSequence, SurgeError, ICMP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::health_server::{DEFAULT_HEALTH_PORT, HELLO_PATH};

/// How often every node is probed (Cilium probes every 60 s by default; the
/// agreed interval here is 5 s so that the lab sees changes quickly).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How long one probe waits for its answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_PAYLOAD: &[u8] = b"ciliate-health-probe";
/// The status line of an answer is far shorter than this.
const MAX_STATUS_LINE: usize = 512;

#[derive(Clone, Debug)]
pub struct ProberConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// The health port of the other nodes (`clusterHealthPort`).
    pub port: u16,
}

impl Default for ProberConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            port: DEFAULT_HEALTH_PORT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error("opening an ICMP socket for the health probes (needs root or CAP_NET_RAW)")]
    IcmpSocket(#[source] std::io::Error),
}

/// The last probe round, shared between the prober and the API.
#[derive(Clone, Debug, Default)]
pub struct HealthState(Arc<Mutex<ClusterHealth>>);

impl HealthState {
    pub fn new(interval: Duration) -> Self {
        Self(Arc::new(Mutex::new(ClusterHealth {
            probed_at: 0,
            interval_seconds: interval.as_secs(),
            nodes: Vec::new(),
        })))
    }

    /// What `GET /v1/health` answers.
    pub fn snapshot(&self) -> ClusterHealth {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What `Status.cluster_health` carries.
    pub fn summary(&self) -> HealthSummary {
        summarize(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, health: ClusterHealth) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }
}

/// A node is reachable when its host and (if it announced one) its health
/// endpoint answered both the ICMP and the TCP probe of the last round.
pub fn node_reachable(node: &NodeHealth) -> bool {
    let path_ok = |p: &PathHealth| p.icmp.ok && p.tcp.ok;
    path_ok(&node.host) && node.endpoint.as_ref().is_none_or(path_ok)
}

pub fn summarize(health: &ClusterHealth) -> HealthSummary {
    HealthSummary {
        reachable: health.nodes.iter().filter(|n| node_reachable(n)).count(),
        total: health.nodes.len(),
    }
}

/// What is probed of one remote node; a change of these starts a round at once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    name: String,
    host: Ipv4Addr,
    endpoint: Option<Ipv4Addr>,
}

/// The other nodes that can be probed, sorted by name. A node without an
/// InternalIP has nothing to probe yet and is left out.
fn targets(nodes: &[Node]) -> Vec<Target> {
    let mut out: Vec<Target> = nodes
        .iter()
        .filter(|n| !n.local)
        .filter_map(|n| {
            let Some(host) = n.internal_ip else {
                debug!(node = %n.name, "node has no InternalIP yet; not probing it");
                return None;
            };
            Some(Target {
                name: n.name.clone(),
                host,
                endpoint: n.health_ip,
            })
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    out
}

pub struct Prober {
    config: ProberConfig,
    state: HealthState,
    icmp: surge_ping::Client,
    ident: u16,
    seq: u16,
    probed: Vec<Target>,
}

impl Prober {
    /// Opens the ICMP socket in the calling thread's network namespace. Must
    /// be called inside a tokio runtime (the socket's reader is a task).
    pub fn new(config: ProberConfig, state: HealthState) -> Result<Self, ProberError> {
        let icmp = surge_ping::Client::new(
            &surge_ping::Config::builder()
                .kind(ICMP::V4)
                .sock_type_hint(socket2::Type::RAW)
                .build(),
        )
        .map_err(ProberError::IcmpSocket)?;
        Ok(Self {
            config,
            state,
            icmp,
            // Raw sockets see every echo reply of the namespace; an identifier
            // of our own keeps other pingers' replies apart.
            ident: (std::process::id() & 0xffff) as u16,
            seq: 0,
            probed: Vec::new(),
        })
    }

    pub fn state(&self) -> &HealthState {
        &self.state
    }

    /// Probes every other node in `nodes` once, all probes at the same time,
    /// stores the round in the shared state and returns it.
    pub async fn probe_round(&mut self, nodes: &[Node]) -> ClusterHealth {
        let targets = targets(nodes);
        let previous = self.state.snapshot();
        let mut rounds = Vec::with_capacity(targets.len());
        for t in &targets {
            let host = self.probe_path(t.host);
            let endpoint = t.endpoint.map(|ip| self.probe_path(ip));
            rounds.push(async move {
                let (host, endpoint) = match endpoint {
                    Some(ep) => {
                        let (h, e) = tokio::join!(host, ep);
                        (h, Some(e))
                    }
                    None => (host.await, None),
                };
                (host, endpoint)
            });
        }
        let outcomes = join_all(rounds).await;
        let nodes = targets
            .iter()
            .zip(outcomes)
            .map(|(t, (host, endpoint))| {
                let before = previous.nodes.iter().find(|n| n.name == t.name);
                let node = NodeHealth {
                    name: t.name.clone(),
                    host: merge(before.map(|n| &n.host), t.host, host),
                    endpoint: endpoint.map(|e| {
                        merge(
                            before.and_then(|n| n.endpoint.as_ref()),
                            t.endpoint.expect("an endpoint outcome has an endpoint"),
                            e,
                        )
                    }),
                };
                log_change(before, &node);
                node
            })
            .collect();
        let health = ClusterHealth {
            probed_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            interval_seconds: self.config.interval.as_secs(),
            nodes,
        };
        self.state.set(health.clone());
        self.probed = targets;
        health
    }

    /// The ICMP and the TCP probe of one address, run together.
    fn probe_path(&mut self, ip: Ipv4Addr) -> impl Future<Output = PathOutcome> + Send + 'static {
        self.seq = self.seq.wrapping_add(1);
        let icmp = icmp_probe(
            self.icmp.clone(),
            ip,
            self.ident,
            self.seq,
            self.config.timeout,
        );
        let tcp = http_probe(ip, self.config.port, self.config.timeout);
        async move {
            let (icmp, tcp) = tokio::join!(icmp, tcp);
            PathOutcome { icmp, tcp }
        }
    }

    /// Probes at once, then every interval and whenever the set of nodes to
    /// probe changes, until `shutdown` resolves. When the node list's sender
    /// goes away, keeps probing the last list.
    pub async fn run(
        mut self,
        mut nodes: watch::Receiver<Vec<Node>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sender_alive = true;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {}
                changed = nodes.changed(), if sender_alive => {
                    if changed.is_err() {
                        warn!("the node list is no longer updated; probing the last known nodes");
                        sender_alive = false;
                        continue;
                    }
                    if targets(&nodes.borrow()) == self.probed {
                        continue;
                    }
                    ticker.reset();
                }
            }
            let list = nodes.borrow_and_update().clone();
            tokio::select! {
                () = &mut shutdown => return,
                _ = self.probe_round(&list) => {}
            }
        }
    }
}

struct PathOutcome {
    icmp: Result<Duration, String>,
    tcp: Result<Duration, String>,
}

/// The new result of one probe, carrying over the failure count (and the
/// last good latency) while the address stays the same.
fn update(before: Option<&ProbeResult>, outcome: Result<Duration, String>) -> ProbeResult {
    let mut result = before.cloned().unwrap_or_default();
    match outcome {
        Ok(rtt) => {
            result.ok = true;
            result.latency_us = Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
            result.error = None;
        }
        Err(error) => {
            result.ok = false;
            result.error = Some(error);
            result.failures += 1;
        }
    }
    result
}

fn merge(before: Option<&PathHealth>, ip: Ipv4Addr, outcome: PathOutcome) -> PathHealth {
    let before = before.filter(|p| p.ip == ip);
    PathHealth {
        ip,
        icmp: update(before.map(|p| &p.icmp), outcome.icmp),
        tcp: update(before.map(|p| &p.tcp), outcome.tcp),
    }
}

fn log_change(before: Option<&NodeHealth>, now: &NodeHealth) {
    let was = before.map(node_reachable);
    let is = node_reachable(now);
    if was == Some(is) {
        return;
    }
    if is {
        info!(node = %now.name, "node is reachable");
    } else {
        let errors: Vec<String> = std::iter::once(("host", Some(&now.host)))
            .chain(std::iter::once(("endpoint", now.endpoint.as_ref())))
            .filter_map(|(what, p)| p.map(|p| (what, p)))
            .flat_map(|(what, p)| {
                [("ICMP", &p.icmp), ("TCP", &p.tcp)]
                    .into_iter()
                    .filter_map(move |(proto, r)| {
                        r.error
                            .as_ref()
                            .map(|e| format!("{what} {} {proto}: {e}", p.ip))
                    })
            })
            .collect();
        warn!(node = %now.name, errors = %errors.join("; "), "node is unreachable");
    }
}

/// One ICMP echo to `ip`; the round-trip time or why there was none.
async fn icmp_probe(
    client: surge_ping::Client,
    ip: Ipv4Addr,
    ident: u16,
    seq: u16,
    timeout: Duration,
) -> Result<Duration, String> {
    let mut pinger = client.pinger(IpAddr::V4(ip), PingIdentifier(ident)).await;
    pinger.timeout(timeout);
    match pinger.ping(PingSequence(seq), ICMP_PAYLOAD).await {
        Ok((IcmpPacket::V4(reply), rtt)) => {
            let kind = reply.get_icmp_type().0;
            if kind == ICMP_ECHO_REPLY {
                Ok(rtt)
            } else {
                Err(format!(
                    "{} from {} (ICMP type {kind} code {})",
                    icmp_error_name(kind),
                    reply.get_source(),
                    reply.get_icmp_code().0
                ))
            }
        }
        Ok((IcmpPacket::V6(_), _)) => Err("answered with ICMPv6".into()),
        Err(SurgeError::Timeout { .. }) => Err(format!("no echo reply within {timeout:?}")),
        Err(SurgeError::IOError(e)) => Err(format!("sending the echo request: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

fn icmp_error_name(kind: u8) -> &'static str {
    match kind {
        3 => "destination unreachable",
        5 => "redirect",
        11 => "time exceeded",
        12 => "parameter problem",
        _ => "unexpected ICMP message",
    }
}

/// TCP connect to `ip:port` plus `GET /hello`, which must answer 200; the time
/// from connect to the status line, or why it failed.
pub async fn http_probe(ip: Ipv4Addr, port: u16, timeout: Duration) -> Result<Duration, String> {
    let addr = SocketAddr::from((ip, port));
    let start = Instant::now();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let request = format!("GET {HELLO_PATH} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending GET {HELLO_PATH} to {addr}: {e}"))?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while !answer.contains(&b'\n') && answer.len() < MAX_STATUS_LINE {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the answer of {addr}: {e}"))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        let line = text.lines().next().unwrap_or_default().trim_end();
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(()),
            _ if line.is_empty() => Err(format!(
                "{addr} closed the connection without answering GET {HELLO_PATH}"
            )),
            _ => Err(format!("GET {HELLO_PATH} on {addr} answered {line:?}")),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, host: Option<[u8; 4]>, ep: Option<[u8; 4]>, local: bool) -> Node {
        Node {
            name: name.into(),
            internal_ip: host.map(Ipv4Addr::from),
            ciliate_internal_ip: None,
            health_ip: ep.map(Ipv4Addr::from),
            pod_cidrs: Vec::new(),
            local,
        }
    }

    #[test]
    fn targets_skip_the_local_node_and_nodes_without_an_address() {
        let t = targets(&[
            node("c", Some([10, 0, 0, 3]), None, false),
            node("a", Some([10, 0, 0, 1]), Some([10, 1, 0, 5]), true),
            node("b", Some([10, 0, 0, 2]), Some([10, 2, 0, 5]), false),
            node("d", None, Some([10, 4, 0, 5]), false),
        ]);
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(t[0].endpoint, Some(Ipv4Addr::new(10, 2, 0, 5)));
        assert_eq!(t[1].endpoint, None);
    }

    #[test]
    fn failures_accumulate_and_reset_when_the_address_changes() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let fail = || PathOutcome {
            icmp: Err("no echo reply within 2s".into()),
            tcp: Ok(Duration::from_micros(300)),
        };
        let first = merge(
            None,
            ip,
            PathOutcome {
                icmp: Ok(Duration::from_micros(120)),
                tcp: Ok(Duration::from_micros(300)),
            },
        );
        assert!(first.icmp.ok && first.tcp.ok);
        assert_eq!(first.icmp.latency_us, Some(120));
        let second = merge(Some(&first), ip, fail());
        let third = merge(Some(&second), ip, fail());
        assert!(!third.icmp.ok);
        assert_eq!(third.icmp.failures, 2);
        assert_eq!(third.icmp.error.as_deref(), Some("no echo reply within 2s"));
        // The last good latency stays; the TCP side never failed.
        assert_eq!(third.icmp.latency_us, Some(120));
        assert_eq!(third.tcp.failures, 0);
        let moved = merge(Some(&third), Ipv4Addr::new(10, 0, 0, 9), fail());
        assert_eq!(moved.icmp.failures, 1);
    }

    #[test]
    fn reachable_needs_every_probe_of_host_and_endpoint() {
        let ok = ProbeResult {
            ok: true,
            latency_us: Some(1),
            error: None,
            failures: 0,
        };
        let bad = ProbeResult {
            ok: false,
            latency_us: None,
            error: Some("x".into()),
            failures: 1,
        };
        let path = |icmp: &ProbeResult, tcp: &ProbeResult| PathHealth {
            ip: Ipv4Addr::LOCALHOST,
            icmp: icmp.clone(),
            tcp: tcp.clone(),
        };
        let health = ClusterHealth {
            probed_at: 1,
            interval_seconds: 5,
            nodes: vec![
                NodeHealth {
                    name: "a".into(),
                    host: path(&ok, &ok),
                    endpoint: Some(path(&ok, &ok)),
                },
                NodeHealth {
                    name: "b".into(),
                    host: path(&ok, &ok),
                    endpoint: None,
                },
                NodeHealth {
                    name: "c".into(),
                    host: path(&ok, &ok),
                    endpoint: Some(path(&ok, &bad)),
                },
                NodeHealth {
                    name: "d".into(),
                    host: path(&bad, &ok),
                    endpoint: Some(path(&ok, &ok)),
                },
            ],
        };
        assert_eq!(
            summarize(&health),
            HealthSummary {
                reachable: 2,
                total: 4
            }
        );
    }
}
