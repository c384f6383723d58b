//! The watch loop: CiliateNodes in, PodCIDRs out.
//!
//! - Until the watch's first `Synced`, node objects only *restore* the PodCIDRs they
//!   carry into the allocator; nothing is handed out before every existing node is
//!   known, so a restarted operator never gives away a CIDR in use.
//! - After that, every node object is reconciled: a node without a PodCIDR gets the
//!   lowest free one, written with [`Store::update`] (compare-and-swap, keeps the
//!   agent's lease; on conflict the object is read again and the write retried). When
//!   the pool is exhausted `status.ipam.operatorStatus.error` says so; it is cleared
//!   once a CIDR is given.
//! - A deleted node's CIDRs are freed and the nodes waiting for one are reconciled.
//! - Corrupt objects and an unreachable store are logged, never fatal: the watch
//!   re-lists by itself, and failed writes are retried with a backoff.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

use ciliate_store::{report, CiliateNode, Error, Event, Object, Store};
use futures_util::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use tracing::{debug, info, warn};

use crate::allocator::{Allocator, RestoreError};

/// Compare-and-swap attempts per reconcile before it is left to the retry timer.
const CONFLICT_ATTEMPTS: usize = 5;

/// Runs until `shutdown` completes. An in-flight write is abandoned then, which is
/// safe: writes are compare-and-swap and a restarted operator restores from the store.
pub async fn run(store: Store, allocator: Allocator, shutdown: impl Future<Output = ()>) {
    let mut controller = Controller::new(store, allocator);
    tokio::select! {
        () = shutdown => info!("stopping"),
        () = controller.run() => {}
    }
}

struct Controller {
    store: Store,
    allocator: Allocator,
    /// The latest object seen of every node.
    nodes: BTreeMap<String, CiliateNode>,
    /// True after the first `Synced`: from then on CIDRs are handed out.
    synced: bool,
    /// Nodes whose write failed (store unreachable): retried with a backoff.
    retry: BTreeSet<String>,
    backoff: Duration,
    /// `node/cidr` outside every pool, reported once.
    reported_outside: HashSet<String>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Controller {
    fn new(store: Store, allocator: Allocator) -> Self {
        Self {
            store,
            allocator,
            nodes: BTreeMap::new(),
            synced: false,
            retry: BTreeSet::new(),
            backoff: MIN_BACKOFF,
            reported_outside: HashSet::new(),
        }
    }

    async fn run(&mut self) {
        let mut events = self.store.watch::<CiliateNode>();
        loop {
            let retry_due = {
                let wait = (!self.retry.is_empty()).then_some(self.backoff);
                async move {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                }
            };
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.handle(event).await,
                    // Lost connections (the store warns already, and re-lists) and
                    // corrupt objects (their key is in the message): the watch goes on.
                    Some(Err(e)) if e.is_unavailable() => debug!(error = %report(&e), "CiliateNode watch"),
                    Some(Err(e)) => warn!(error = %report(&e), "skipping a CiliateNode"),
                    // Not expected (the store's watch never ends by itself). Everything
                    // held stays held, so nothing is handed out twice.
                    None => {
                        warn!("the CiliateNode watch ended; starting it again");
                        events = self.store.watch::<CiliateNode>();
                    }
                },
                () = retry_due => self.retry_failed().await,
            }
        }
    }

    async fn handle(&mut self, event: Event<CiliateNode>) {
        match event {
            Event::Upsert(node) => {
                let name = node.name().to_string();
                if !self.synced {
                    self.restore(&node);
                }
                self.nodes.insert(name.clone(), node);
                if self.synced {
                    self.reconcile(&name).await;
                }
            }
            Event::Delete { name, .. } => {
                self.nodes.remove(&name);
                self.retry.remove(&name);
                let freed = self.allocator.release(&name);
                if !freed.is_empty() {
                    info!(node = %name, cidrs = ?freed, "node deleted; its PodCIDR is free again");
                    if self.synced {
                        self.reconcile_all().await;
                    }
                }
            }
            Event::Synced => {
                if !self.synced {
                    self.synced = true;
                    info!(
                        nodes = self.nodes.len(),
                        in_use = self.allocator.in_use(),
                        capacity = self.allocator.capacity(),
                        "restored the PodCIDRs of existing nodes; allocating"
                    );
                }
                self.reconcile_all().await;
            }
        }
    }

    /// Every known node, in name order (so waiting nodes get freed CIDRs in order).
    async fn reconcile_all(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.reconcile(&name).await;
        }
    }

    async fn retry_failed(&mut self) {
        let names: Vec<String> = self.retry.iter().cloned().collect();
        for name in names {
            self.reconcile(&name).await;
        }
        self.backoff = if self.retry.is_empty() {
            MIN_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
    }

    /// Brings the node's object in line with the allocator, writing it if needed.
    async fn reconcile(&mut self, name: &str) {
        for _ in 0..CONFLICT_ATTEMPTS {
            let Some(node) = self.nodes.get(name).cloned() else {
                self.retry.remove(name);
                return;
            };
            let desired = self.desired(&node);
            if desired.spec.ipam == node.spec.ipam && desired.status == node.status {
                self.retry.remove(name);
                return;
            }
            match self.store.update(&desired).await {
                Ok(written) => {
                    match &written.status.ipam.operator_status.error {
                        Some(error) => warn!(node = %name, %error, "no PodCIDR for node"),
                        None => {
                            info!(node = %name, cidrs = ?written.spec.ipam.pod_cidrs, "PodCIDR assigned");
                        }
                    }
                    self.nodes.insert(name.to_string(), written);
                    self.retry.remove(name);
                    return;
                }
                Err(Error::Conflict { .. }) => {
                    debug!(node = %name, "node changed meanwhile; reading it again");
                    match self.store.get::<CiliateNode>(None, name).await {
                        Ok(Some(fresh)) => {
                            self.nodes.insert(name.to_string(), fresh);
                        }
                        Ok(None) => return self.forget(name),
                        Err(e) if e.is_unavailable() => return self.failed(name, &e),
                        Err(e) => {
                            // Corrupt now: its PodCIDR stays held until it is deleted.
                            warn!(node = %name, error = %report(&e), "cannot read the node; skipping it");
                            self.nodes.remove(name);
                            self.retry.remove(name);
                            return;
                        }
                    }
                }
                // Deleted meanwhile; the watch's delete follows.
                Err(Error::NotFound { .. }) => return self.forget(name),
                Err(e) => return self.failed(name, &e),
            }
        }
        warn!(node = %name, "node keeps changing under the operator; will retry");
        self.retry.insert(name.to_string());
    }

    fn failed(&mut self, name: &str, error: &Error) {
        warn!(node = %name, error = %report(error), "cannot write the node's PodCIDR; will retry");
        self.retry.insert(name.to_string());
    }

    fn forget(&mut self, name: &str) {
        self.nodes.remove(name);
        self.retry.remove(name);
        self.allocator.release(name);
    }

    /// Records the node's IPv4 PodCIDRs in the allocator; returns those it keeps
    /// (in-pool ones it holds, and any outside the pools, which are left alone).
    fn restore(&mut self, node: &CiliateNode) -> Vec<IpNet> {
        let name = node.name();
        let mut keep = Vec::new();
        for cidr in &node.spec.ipam.pod_cidrs {
            let IpNet::V4(v4) = cidr else {
                keep.push(*cidr); // not ours to manage
                continue;
            };
            match self.allocator.restore(name, *v4) {
                Ok(()) => keep.push(*cidr),
                Err(e @ RestoreError::OutsidePools { .. }) => {
                    if self.reported_outside.insert(format!("{name}/{v4}")) {
                        warn!(node = %name, error = %e, "PodCIDR not managed by the operator");
                    }
                    keep.push(*cidr);
                }
                Err(e @ RestoreError::Conflict { .. }) => {
                    warn!(node = %name, error = %e, "PodCIDR conflict; the node gets a fresh one");
                }
            }
        }
        // CIDRs the node held that its object no longer carries (changed by someone
        // else) are freed. A node whose object lost them all keeps them: `allocate`
        // gives them back, which keeps a node's CIDR stable.
        if !keep.is_empty() {
            let v4: Vec<Ipv4Net> = keep
                .iter()
                .filter_map(|c| match c {
                    IpNet::V4(c) => Some(c.trunc()),
                    IpNet::V6(_) => None,
                })
                .collect();
            self.allocator.retain(name, &v4);
        }
        keep
    }

    /// The node as it should be: its PodCIDRs, or a fresh one, or the reason why not.
    fn desired(&mut self, node: &CiliateNode) -> CiliateNode {
        let mut cidrs = self.restore(node);
        let mut error = None;
        if cidrs.is_empty() {
            match self.allocator.allocate(node.name()) {
                Ok(cidr) => cidrs.push(IpNet::V4(cidr)),
                Err(e) => error = Some(e.to_string()),
            }
        }
        let mut desired = node.clone();
        desired.spec.ipam.pod_cidrs = cidrs;
        desired.status.ipam.operator_status.error = error;
        desired
    }
}
