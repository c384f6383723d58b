//! The agent's part of the cluster store: the connection, its status as
//! `ciliate status` shows it, and this node's registration.
//!
//! The node registers as a `CiliateNode` named after it, written under a lease
//! (`kvstoreLeaseTTL`) so that it disappears when the agent is gone for good:
//! addresses `InternalIP` (the node IP) and `CiliumInternalIP` (the router IP,
//! once the PodCIDR is known), `health.ipv4` and `spec.ipam.podCIDRs`. With
//! cluster-pool IPAM the operator fills the PodCIDR in; the agent adopts it
//! and never drops it again, and a restarted agent pre-fills the one it ran
//! with so the operator keeps it. If the object is deleted while the agent
//! lives, or changed so that it no longer says what the node is, the agent
//! writes it again. Nothing here is fatal: while etcd is away the agent keeps
//! forwarding, reports `Failure` and retries.

use std::time::Duration;

use ciliate_api::{KvstoreStatus, Node};
use ciliate_store::{
    AddressType, CiliateNode, CiliateNodeStatus, EtcdBackend, EtcdConfig, Event, LeaseGuard, Store,
};
use futures_util::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::watch;
use tracing::{info, warn};

/// `Status.kvstore.state` values, as `cilium status` prints them.
pub const STATE_OK: &str = "Ok";
pub const STATE_CONNECTING: &str = "Connecting";
pub const STATE_FAILURE: &str = "Failure";

/// What the parts of the agent tell each other about the cluster. Cheap to
/// clone; every field is a watch channel (send on the sender, `subscribe()`
/// for a receiver).
#[derive(Clone, Debug)]
pub struct Cluster {
    /// This node as it should be registered (`local: true`). The daemon
    /// updates it (health IP), the registration writes it.
    pub local: watch::Sender<Node>,
    /// The other nodes, as the node manager last programmed them.
    pub nodes: watch::Sender<Vec<Node>>,
    /// The store connection; `None` when no store is configured.
    pub kvstore: watch::Sender<Option<KvstoreStatus>>,
    /// The PodCIDR the store holds for this node (the operator's), once known.
    pub assigned_pod_cidr: watch::Sender<Option<Ipv4Net>>,
}

impl Cluster {
    pub fn new(local: Node, endpoints: &[String]) -> Self {
        let kvstore = (!endpoints.is_empty()).then(|| KvstoreStatus {
            state: STATE_CONNECTING.into(),
            message: describe(endpoints),
        });
        Self {
            local: watch::channel(local).0,
            nodes: watch::channel(Vec::new()).0,
            kvstore: watch::channel(kvstore).0,
            assigned_pod_cidr: watch::channel(None).0,
        }
    }

    /// Sets the store status (a no-op when nothing changes).
    pub fn set_status(&self, state: &str, message: impl Into<String>) {
        let status = KvstoreStatus {
            state: state.into(),
            message: message.into(),
        };
        self.kvstore.send_if_modified(|current| {
            if current.as_ref() == Some(&status) {
                false
            } else {
                *current = Some(status);
                true
            }
        });
    }

    /// Reports a store error: `Failure` when the store cannot be reached,
    /// a warning only otherwise (a bad object is not a broken store).
    pub fn report_error(&self, endpoints: &[String], what: &str, error: &ciliate_store::Error) {
        let text = ciliate_store::report(error);
        if error.is_unavailable() {
            warn!(error = %text, "{what}: the store is unreachable; retrying");
            self.set_status(STATE_FAILURE, format!("{}: {text}", describe(endpoints)));
        } else {
            warn!(error = %text, "{what}");
        }
    }
}

/// `etcd: http://192.168.10.1:2379`
pub fn describe(endpoints: &[String]) -> String {
    format!("etcd: {}", endpoints.join(","))
}

/// A client for the configured etcd. It does not wait for etcd to answer:
/// requests fail until it does, and watches retry by themselves.
pub async fn connect(endpoints: &[String], cluster: &Cluster) -> Store {
    let config = EtcdConfig {
        endpoints: endpoints.to_vec(),
        ..EtcdConfig::default()
    };
    let mut backoff = Backoff::default();
    loop {
        match EtcdBackend::connect_lazy(config.clone()).await {
            Ok(backend) => return Store::new(backend),
            Err(e) => {
                cluster.report_error(endpoints, "cannot set up the etcd client", &e);
                cluster.set_status(
                    STATE_FAILURE,
                    format!("{}: {}", describe(endpoints), ciliate_store::report(&e)),
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// 200 ms doubling to 10 s.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(200))
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        now
    }
}

/// The object this node registers: what `local` says, with the PodCIDRs it
/// runs with, else those the store holds for it (`adopted`), and the status
/// the operator last wrote.
pub fn registration_object(
    local: &Node,
    adopted: &[IpNet],
    status: &CiliateNodeStatus,
) -> CiliateNode {
    let mut node = CiliateNode::new(local.name.clone());
    if let Some(ip) = local.internal_ip {
        node.set_address(AddressType::InternalIp, ip.into());
    }
    if let Some(ip) = local.ciliate_internal_ip {
        node.set_address(AddressType::CiliumInternalIp, ip.into());
    }
    node.spec.health.ipv4 = local.health_ip;
    node.spec.ipam.pod_cidrs = if local.pod_cidrs.is_empty() {
        adopted.to_vec()
    } else {
        local.pod_cidrs.iter().copied().map(IpNet::V4).collect()
    };
    node.status = status.clone();
    node
}

/// The first IPv4 PodCIDR of a node object.
pub fn first_v4(cidrs: &[IpNet]) -> Option<Ipv4Net> {
    cidrs.iter().find_map(|c| match c {
        IpNet::V4(net) => Some(*net),
        IpNet::V6(_) => None,
    })
}

/// Keeps this node registered until `stopping` turns true. Then the lease is
/// left to expire rather than revoked, so that other nodes keep their routes
/// to this one while the agent restarts.
pub async fn run_registration(
    store: Store,
    cluster: Cluster,
    endpoints: Vec<String>,
    ttl: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let name = cluster.local.borrow().name.clone();
    let mut reg = Registration {
        name,
        store,
        endpoints,
        cluster,
        adopted: Vec::new(),
        status: CiliateNodeStatus::default(),
        operator_error: None,
        warned_cidr: None,
    };
    let mut local = reg.cluster.local.subscribe();
    let guard = tokio::select! {
        guard = reg.register(ttl) => guard,
        _ = stopping.wait_for(|s| *s) => return,
    };
    // Our own object's changes. The watch starts with a list, so whatever
    // happened since the registration was written is seen.
    let mut events = reg.store.watch::<CiliateNode>();
    let mut dirty = false;
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => {
                // Not revoked: the registration outlives a restart by up to the TTL.
                std::mem::forget(guard);
                return;
            }
            changed = local.changed() => {
                if changed.is_err() {
                    std::mem::forget(guard);
                    return;
                }
                dirty = true;
            }
            event = events.next() => match event {
                Some(Ok(event)) => dirty |= reg.observe(event),
                // Bad objects are the node manager's to report; here only a lost store matters.
                Some(Err(e)) if e.is_unavailable() => {
                    reg.cluster.report_error(&reg.endpoints, "watching this node's CiliateNode", &e);
                }
                Some(Err(_)) => {}
                None => return,
            },
            _ = retry.tick(), if dirty => {}
        }
        if dirty {
            dirty = !reg.write(&guard).await;
        }
    }
}

struct Registration {
    name: String,
    store: Store,
    endpoints: Vec<String>,
    cluster: Cluster,
    /// The PodCIDRs the store holds for this node.
    adopted: Vec<IpNet>,
    /// The status the store holds (the operator's).
    status: CiliateNodeStatus,
    operator_error: Option<String>,
    warned_cidr: Option<Vec<IpNet>>,
}

impl Registration {
    fn desired(&self) -> CiliateNode {
        registration_object(&self.cluster.local.borrow(), &self.adopted, &self.status)
    }

    /// Writes the registration under a new lease, retrying until it succeeds.
    async fn register(&mut self, ttl: Duration) -> LeaseGuard<CiliateNode> {
        let mut backoff = Backoff::default();
        loop {
            // What the store has already (a restart): keep the operator's CIDR.
            match self.store.get::<CiliateNode>(None, &self.name).await {
                Ok(Some(existing)) => {
                    self.adopt(&existing);
                }
                Ok(None) => {}
                Err(e) => {
                    self.cluster.report_error(
                        &self.endpoints,
                        "reading this node's CiliateNode",
                        &e,
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            let desired = self.desired();
            match self.store.put_with_lease(&desired, ttl).await {
                Ok(guard) => {
                    info!(node = %self.name, cidrs = ?desired.spec.ipam.pod_cidrs, ttl = ?ttl, "registered in the store");
                    self.cluster.set_status(STATE_OK, describe(&self.endpoints));
                    return guard;
                }
                Err(e) => {
                    self.cluster
                        .report_error(&self.endpoints, "registering this node", &e);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Takes in what the store says about this node; true if it should be written again.
    fn observe(&mut self, event: Event<CiliateNode>) -> bool {
        match event {
            Event::Upsert(stored) if stored.metadata.name.as_deref() == Some(&self.name) => {
                self.adopt(&stored);
                let desired = self.desired();
                stored.spec != desired.spec
            }
            Event::Delete { name, .. } if name == self.name => {
                warn!(node = %self.name, "this node's CiliateNode was deleted from the store; registering it again");
                true
            }
            Event::Synced => {
                self.cluster.set_status(STATE_OK, describe(&self.endpoints));
                false
            }
            Event::Upsert(_) | Event::Delete { .. } => false,
        }
    }

    /// Adopts the PodCIDRs and status the store holds for this node.
    fn adopt(&mut self, stored: &CiliateNode) {
        self.status = stored.status.clone();
        let error = stored.status.ipam.operator_status.error.clone();
        if error != self.operator_error {
            if let Some(e) = &error {
                warn!(node = %self.name, error = %e, "the operator cannot give this node a PodCIDR");
            }
            self.operator_error = error;
        }
        let cidrs = &stored.spec.ipam.pod_cidrs;
        if cidrs.is_empty() {
            return;
        }
        if *cidrs != self.adopted {
            info!(node = %self.name, cidrs = ?cidrs, "the store holds PodCIDRs for this node");
            self.adopted.clone_from(cidrs);
        }
        let running: Vec<IpNet> = self
            .cluster
            .local
            .borrow()
            .pod_cidrs
            .iter()
            .copied()
            .map(IpNet::V4)
            .collect();
        if !running.is_empty() && running != *cidrs && self.warned_cidr.as_ref() != Some(cidrs) {
            warn!(node = %self.name, store = ?cidrs, running = ?running,
                "the store assigns this node other PodCIDRs than it runs with; keeping the running ones (restart the agent with an empty stateDir to take the new ones)");
            self.warned_cidr = Some(cidrs.clone());
        }
        let first = first_v4(cidrs);
        self.cluster.assigned_pod_cidr.send_if_modified(|current| {
            if *current == first {
                false
            } else {
                *current = first;
                true
            }
        });
    }

    /// Writes the desired object under the lease; true on success.
    async fn write(&mut self, guard: &LeaseGuard<CiliateNode>) -> bool {
        let desired = self.desired();
        match guard.update(&desired).await {
            Ok(_) => {
                info!(node = %self.name, cidrs = ?desired.spec.ipam.pod_cidrs, "registration updated");
                true
            }
            Err(e) => {
                self.cluster
                    .report_error(&self.endpoints, "updating this node's registration", &e);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Node {
        Node {
            name: "node0".into(),
            internal_ip: Some("192.168.10.100".parse().unwrap()),
            ciliate_internal_ip: None,
            health_ip: None,
            pod_cidrs: Vec::new(),
            local: true,
        }
    }

    #[test]
    fn registration_before_and_after_the_cidr() {
        let before = registration_object(&local(), &[], &CiliateNodeStatus::default());
        assert_eq!(
            before.internal_ip(),
            Some("192.168.10.100".parse().unwrap())
        );
        assert_eq!(before.ciliate_internal_ip(), None);
        assert!(before.spec.ipam.pod_cidrs.is_empty());

        // The operator's CIDR is kept while the node does not run with one yet.
        let operator: Vec<IpNet> = vec!["172.20.0.0/24".parse().unwrap()];
        let adopted = registration_object(&local(), &operator, &CiliateNodeStatus::default());
        assert_eq!(adopted.spec.ipam.pod_cidrs, operator);

        let mut running = local();
        running.ciliate_internal_ip = Some("172.20.0.1".parse().unwrap());
        running.health_ip = Some("172.20.0.9".parse().unwrap());
        running.pod_cidrs = vec!["172.20.0.0/24".parse().unwrap()];
        let after = registration_object(&running, &operator, &CiliateNodeStatus::default());
        assert_eq!(
            after.ciliate_internal_ip(),
            Some("172.20.0.1".parse().unwrap())
        );
        assert_eq!(after.spec.health.ipv4, running.health_ip);
        assert_eq!(after.spec.ipam.pod_cidrs, operator);
    }

    #[test]
    fn first_v4_skips_v6() {
        let cidrs: Vec<IpNet> = vec![
            "fd00::/64".parse().unwrap(),
            "172.20.1.0/24".parse().unwrap(),
        ];
        assert_eq!(first_v4(&cidrs), Some("172.20.1.0/24".parse().unwrap()));
        assert_eq!(first_v4(&[]), None);
    }

    #[test]
    fn status_changes_only_when_different() {
        let cluster = Cluster::new(local(), &["http://127.0.0.1:2379".into()]);
        let mut rx = cluster.kvstore.subscribe();
        assert_eq!(
            rx.borrow_and_update().as_ref().unwrap().state,
            STATE_CONNECTING
        );
        cluster.set_status(STATE_OK, "etcd: http://127.0.0.1:2379");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        cluster.set_status(STATE_OK, "etcd: http://127.0.0.1:2379");
        assert!(!rx.has_changed().unwrap());
        assert!(Cluster::new(local(), &[]).kvstore.borrow().is_none());
    }
}
