//! The agent's part of the cluster store: the connection, its status as
//! `ciliate status` shows it, and this node's registration.
//!
//! The node registers as a `CiliateNode` named after it, written under a lease
//! (`kvstoreLeaseTTL`) so that it disappears when the agent is gone for good:
//! addresses `InternalIP` (the node IP) and `CiliumInternalIP` (the router IP,
//! once the PodCIDR is known), `health.ipv4` and `spec.ipam.podCIDRs`. With
//! cluster-pool IPAM the operator fills the PodCIDR in; the agent adopts it
//! and never drops it again, and a restarted agent pre-fills the one it ran
//! with so the operator keeps it, but only while the object has none: once
//! the store holds PodCIDRs they are the operator's word, and an agent running
//! with others keeps running with its own, logs an error and reports the
//! mismatch in its kvstore status, without ever writing over them.
//!
//! Every later write puts only the fields the agent owns on top of the latest
//! stored object, as a compare-and-swap under the lease (retried on conflict),
//! so the operator's fields are never erased, not even briefly. If the object
//! is deleted while the agent lives, or changed so that it no longer says what
//! the node is, the agent writes it again. Nothing here is fatal: while etcd is
//! away the agent keeps forwarding, reports `Failure` and retries.

use std::time::Duration;

use ciliate_api::{KvstoreStatus, Node};
use std::net::IpAddr;

use ciliate_store::{AddressType, CiliateNode, EtcdBackend, EtcdConfig, Event, LeaseGuard, Store};
use futures_util::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// `Status.kvstore.state` values, as `cilium status` prints them.
pub const STATE_OK: &str = "Ok";
pub const STATE_CONNECTING: &str = "Connecting";
pub const STATE_FAILURE: &str = "Failure";
pub const STATE_WARNING: &str = "Warning";

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
    /// Set while the store assigns this node other PodCIDRs than it runs with.
    pub pod_cidr_mismatch: watch::Sender<Option<String>>,
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
            pod_cidr_mismatch: watch::channel(None).0,
        }
    }

    /// The store status as `ciliate status` shows it: the connection's, with a
    /// PodCIDR mismatch added (and `Ok` turned into `Warning`) while there is one.
    pub fn kvstore_status(&self) -> Option<KvstoreStatus> {
        let mut status = self.kvstore.borrow().clone()?;
        if let Some(mismatch) = self.pod_cidr_mismatch.borrow().as_ref() {
            if status.state == STATE_OK {
                status.state = STATE_WARNING.into();
            }
            status.message = format!("{}; {mismatch}", status.message);
        }
        Some(status)
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
                let text = ciliate_store::report(&e);
                warn!(error = %text, "cannot set up the etcd client; retrying");
                cluster.set_status(STATE_FAILURE, format!("{}: {text}", describe(endpoints)));
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

/// The object this node registers: the latest stored one (`stored`, else a
/// new one) with the fields the agent owns set from `local`: its addresses and
/// health IP, and its PodCIDRs only if the stored object has none (the
/// operator's word wins). Everything else (status, other addresses, the
/// resourceVersion to compare with) is kept as stored.
pub fn registration_object(local: &Node, stored: Option<&CiliateNode>) -> CiliateNode {
    let mut node = stored
        .cloned()
        .unwrap_or_else(|| CiliateNode::new(local.name.clone()));
    for (address_type, ip) in [
        (AddressType::InternalIp, local.internal_ip),
        (AddressType::CiliumInternalIp, local.ciliate_internal_ip),
    ] {
        if let Some(ip) = ip {
            let ip = IpAddr::V4(ip);
            let addresses = &node.spec.addresses;
            // Only when it differs: a rewrite would reorder the list.
            if addresses
                .iter()
                .filter(|a| a.address_type == address_type)
                .count()
                != 1
                || node.address(address_type) != Some(ip)
            {
                node.set_address(address_type, ip);
            }
        }
    }
    if local.health_ip.is_some() {
        node.spec.health.ipv4 = local.health_ip;
    }
    if node.spec.ipam.pod_cidrs.is_empty() {
        node.spec.ipam.pod_cidrs = local.pod_cidrs.iter().copied().map(IpNet::V4).collect();
    }
    node
}

/// The mismatch message when the store assigns other PodCIDRs than `running`.
pub fn pod_cidr_mismatch(running: &[Ipv4Net], stored: &[IpNet]) -> Option<String> {
    let running: Vec<IpNet> = running.iter().copied().map(IpNet::V4).collect();
    (!running.is_empty() && !stored.is_empty() && running != stored).then(|| {
        format!(
            "PodCIDR mismatch: the store assigns {} but this node runs with {} (restart the agent with an empty stateDir to take the assigned one)",
            join(stored),
            join(&running)
        )
    })
}

fn join(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The first IPv4 PodCIDR of a node object.
pub fn first_v4(cidrs: &[IpNet]) -> Option<Ipv4Net> {
    cidrs.iter().find_map(|c| match c {
        IpNet::V4(net) => Some(*net),
        IpNet::V6(_) => None,
    })
}

/// Keeps this node registered until `stopping` turns true. However it ends,
/// the lease is abandoned, not revoked: it expires after its TTL, so that
/// other nodes keep their routes to this one while the agent restarts.
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
        operator_error: None,
        adopted: Vec::new(),
    };
    let mut local = reg.cluster.local.subscribe();
    let guard = tokio::select! {
        guard = reg.register(ttl) => guard,
        _ = stopping.wait_for(|s| *s) => return,
    };
    reg.follow(&guard, &mut local, &mut stopping).await;
    guard.abandon();
}

struct Registration {
    name: String,
    store: Store,
    endpoints: Vec<String>,
    cluster: Cluster,
    operator_error: Option<String>,
    /// The PodCIDRs the store last held for this node.
    adopted: Vec<IpNet>,
}

impl Registration {
    /// The object to write on top of `stored`.
    fn desired(&self, stored: Option<&CiliateNode>) -> CiliateNode {
        registration_object(&self.cluster.local.borrow(), stored)
    }

    /// Writes the registration under a new lease, retrying until it succeeds.
    async fn register(&mut self, ttl: Duration) -> LeaseGuard<CiliateNode> {
        let mut backoff = Backoff::default();
        loop {
            // What the store has already (a restart): keep the operator's fields.
            let existing = match self.store.get::<CiliateNode>(None, &self.name).await {
                Ok(existing) => existing,
                Err(e) => {
                    self.cluster.report_error(
                        &self.endpoints,
                        "reading this node's CiliateNode",
                        &e,
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if let Some(existing) = &existing {
                self.adopt(existing);
            }
            let desired = self.desired(existing.as_ref());
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

    /// Follows this node's object and the agent's view of the node, writing
    /// when they part, until `stopping` (or the watch ends).
    async fn follow(
        &mut self,
        guard: &LeaseGuard<CiliateNode>,
        local: &mut watch::Receiver<Node>,
        stopping: &mut watch::Receiver<bool>,
    ) {
        // Our own object's changes. The watch starts with a list, so whatever
        // happened since the registration was written is seen.
        let mut events = self.store.watch::<CiliateNode>();
        let mut dirty = false;
        let mut retry = tokio::time::interval(Duration::from_secs(2));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                changed = local.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    dirty = true;
                }
                event = events.next() => match event {
                    Some(Ok(event)) => dirty |= self.observe(event),
                    // Bad objects are the node manager's to report; here only a lost store matters.
                    Some(Err(e)) if e.is_unavailable() => {
                        self.cluster.report_error(&self.endpoints, "watching this node's CiliateNode", &e);
                    }
                    Some(Err(_)) => {}
                    None => return,
                },
                _ = retry.tick(), if dirty => {}
            }
            if dirty {
                dirty = !self.write(guard).await;
            }
        }
    }

    /// Takes in what the store says about this node; true if it should be written again.
    fn observe(&mut self, event: Event<CiliateNode>) -> bool {
        match event {
            Event::Upsert(stored) if stored.metadata.name.as_deref() == Some(&self.name) => {
                self.adopt(&stored);
                self.desired(Some(&stored)).spec != stored.spec
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

    /// Takes in the PodCIDRs and operator status the store holds for this node.
    fn adopt(&mut self, stored: &CiliateNode) {
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
        let mismatch = pod_cidr_mismatch(&self.cluster.local.borrow().pod_cidrs, cidrs);
        self.cluster.pod_cidr_mismatch.send_if_modified(|current| {
            if *current == mismatch {
                return false;
            }
            if let Some(m) = &mismatch {
                error!(node = %self.name, "{m}; keeping the running PodCIDR and leaving the store's alone");
            } else {
                info!(node = %self.name, "the store's PodCIDRs match the running ones again");
            }
            current.clone_from(&mismatch);
            true
        });
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

    /// Writes the agent's fields on top of the latest stored object, under the
    /// lease, as a compare-and-swap retried on conflict; true when the store
    /// says what the agent wants (written, or nothing to write).
    async fn write(&mut self, guard: &LeaseGuard<CiliateNode>) -> bool {
        for _ in 0..10 {
            let stored = match self.store.get::<CiliateNode>(None, &self.name).await {
                Ok(stored) => stored,
                Err(e) => {
                    self.cluster.report_error(
                        &self.endpoints,
                        "reading this node's CiliateNode",
                        &e,
                    );
                    return false;
                }
            };
            if let Some(stored) = &stored {
                self.adopt(stored);
            }
            // Gone: written anew (no resourceVersion) under our lease.
            let desired = self.desired(stored.as_ref());
            if stored.as_ref().is_some_and(|s| s.spec == desired.spec) {
                return true;
            }
            match guard.update(&desired).await {
                Ok(_) => {
                    info!(node = %self.name, cidrs = ?desired.spec.ipam.pod_cidrs, "registration updated");
                    return true;
                }
                // Changed or deleted since it was read: read again.
                Err(
                    ciliate_store::Error::Conflict { .. } | ciliate_store::Error::NotFound { .. },
                ) => {}
                Err(e) => {
                    self.cluster.report_error(
                        &self.endpoints,
                        "updating this node's registration",
                        &e,
                    );
                    return false;
                }
            }
        }
        warn!(node = %self.name, "this node's CiliateNode keeps changing under the registration; retrying later");
        false
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
        let before = registration_object(&local(), None);
        assert_eq!(
            before.internal_ip(),
            Some("192.168.10.100".parse().unwrap())
        );
        assert_eq!(before.ciliate_internal_ip(), None);
        assert!(before.spec.ipam.pod_cidrs.is_empty());

        // The operator's CIDR and status are kept while the node does not run with one yet.
        let operator: Vec<IpNet> = vec!["172.20.0.0/24".parse().unwrap()];
        let mut stored = before.clone();
        stored.spec.ipam.pod_cidrs.clone_from(&operator);
        stored.status.ipam.operator_status.error = Some("x".into());
        stored.metadata.resource_version = Some("7".into());
        let adopted = registration_object(&local(), Some(&stored));
        assert_eq!(
            adopted, stored,
            "nothing of the agent's changed: nothing to write"
        );

        let mut running = local();
        running.ciliate_internal_ip = Some("172.20.0.1".parse().unwrap());
        running.health_ip = Some("172.20.0.9".parse().unwrap());
        running.pod_cidrs = vec!["172.20.0.0/24".parse().unwrap()];
        let after = registration_object(&running, Some(&stored));
        assert_eq!(
            after.ciliate_internal_ip(),
            Some("172.20.0.1".parse().unwrap())
        );
        assert_eq!(after.spec.health.ipv4, running.health_ip);
        assert_eq!(after.spec.ipam.pod_cidrs, operator);
        assert_eq!(after.status, stored.status);
        assert_eq!(after.metadata.resource_version.as_deref(), Some("7"));
        // Applying it again changes nothing (no reordering of addresses).
        assert_eq!(registration_object(&running, Some(&after)), after);
    }

    #[test]
    fn a_saved_cidr_is_prefilled_only_into_an_object_without_one() {
        let mut running = local();
        running.pod_cidrs = vec!["172.20.0.0/24".parse().unwrap()];
        let fresh = registration_object(&running, None);
        assert_eq!(
            fresh.spec.ipam.pod_cidrs,
            vec![IpNet::from(running.pod_cidrs[0])]
        );

        // The operator gave the node another: never written over.
        let mut stored = fresh.clone();
        stored.spec.ipam.pod_cidrs = vec!["172.20.5.0/24".parse().unwrap()];
        let desired = registration_object(&running, Some(&stored));
        assert_eq!(desired.spec, stored.spec);
        let mismatch =
            pod_cidr_mismatch(&running.pod_cidrs, &stored.spec.ipam.pod_cidrs).expect("a mismatch");
        assert!(
            mismatch.contains("172.20.5.0/24") && mismatch.contains("172.20.0.0/24"),
            "{mismatch}"
        );
        assert_eq!(
            pod_cidr_mismatch(&running.pod_cidrs, &fresh.spec.ipam.pod_cidrs),
            None
        );
        assert_eq!(pod_cidr_mismatch(&[], &stored.spec.ipam.pod_cidrs), None);
    }

    #[test]
    fn a_mismatch_turns_the_status_into_a_warning() {
        let cluster = Cluster::new(local(), &["http://127.0.0.1:2379".into()]);
        cluster.set_status(STATE_OK, "etcd: http://127.0.0.1:2379");
        cluster
            .pod_cidr_mismatch
            .send_replace(Some("PodCIDR mismatch: x".into()));
        let status = cluster.kvstore_status().unwrap();
        assert_eq!(status.state, STATE_WARNING);
        assert_eq!(
            status.message,
            "etcd: http://127.0.0.1:2379; PodCIDR mismatch: x"
        );
        cluster.set_status(STATE_FAILURE, "etcd: down");
        assert_eq!(cluster.kvstore_status().unwrap().state, STATE_FAILURE);
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
