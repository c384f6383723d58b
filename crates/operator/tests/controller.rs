//! The controller against a real etcd (one per test, `etcd` must be installed: see
//! scripts/install-deps.sh) and, for the allocation logic, against the in-memory store.

use std::time::Duration;

use ciliate_operator::allocator::Allocator;
use ciliate_operator::controller;
use ciliate_store::testing::EtcdServer;
use ciliate_store::{
    report, AddressType, CiliateNode, EtcdBackend, EtcdConfig, Event, Object, Store,
};
use futures_util::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Give-up bound for anything we wait for.
const WAIT: Duration = Duration::from_secs(20);

/// A fresh etcd and a store on it. Fails (never skips) when etcd is missing.
async fn etcd() -> (EtcdServer, Store) {
    let server = EtcdServer::start_local().unwrap_or_else(|e| panic!("{}", report(&e)));
    let store = Store::etcd(EtcdConfig::new(server.endpoint()))
        .await
        .unwrap_or_else(|e| panic!("{}", report(&e)));
    (server, store)
}

/// The controller running in this process until `stop`ped (or dropped).
struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn start(store: &Store, pools: &[&str], mask: u8) -> Operator {
    let pools: Vec<Ipv4Net> = pools.iter().map(|p| p.parse().unwrap()).collect();
    let allocator = Allocator::new(&pools, mask).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(store.clone(), allocator, async {
        let _ = stopped.await;
    }));
    Operator {
        stop: Some(stop),
        task,
    }
}

impl Operator {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the controller did not stop")
            .expect("the controller panicked");
    }

    fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn node(name: &str, ip: &str) -> CiliateNode {
    let mut node = CiliateNode::new(name);
    node.set_address(AddressType::InternalIp, ip.parse().unwrap());
    node
}

fn with_cidr(mut node: CiliateNode, cidr: &str) -> CiliateNode {
    node.spec.ipam.pod_cidrs = vec![cidr.parse().unwrap()];
    node
}

fn cidrs(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

/// Waits until the node satisfies `done` (the watch starts with the current state, so
/// nothing that already happened is missed) and returns it.
async fn wait_for(
    store: &Store,
    name: &str,
    what: &str,
    done: impl Fn(&CiliateNode) -> bool,
) -> CiliateNode {
    let mut watch = store.watch::<CiliateNode>();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = watch.next().await {
            if let Ok(Event::Upsert(node)) = event {
                if node.name() == name && done(&node) {
                    return node;
                }
            }
        }
        unreachable!("the watch never ends")
    })
    .await;
    found.unwrap_or_else(|_| panic!("node {name} did not get {what} within {WAIT:?}"))
}

/// Waits for the node's PodCIDRs and returns them.
async fn cidrs_of(store: &Store, name: &str) -> Vec<IpNet> {
    let node = wait_for(store, name, "a PodCIDR", |n| {
        !n.spec.ipam.pod_cidrs.is_empty()
    })
    .await;
    assert_eq!(node.status.ipam.operator_status.error, None, "{node:?}");
    node.spec.ipam.pod_cidrs
}

async fn get(store: &Store, name: &str) -> CiliateNode {
    store
        .get::<CiliateNode>(None, name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("node {name} is gone"))
}

// ---- allocation ----

async fn nodes_get_distinct_cidrs_in_order_and_keep_theirs(store: &Store) {
    // Before the operator starts: one node without a PodCIDR, listed before one with
    // the lowest: nothing is handed out before every existing node is restored.
    store
        .create(&node("node0", "192.168.10.100"))
        .await
        .unwrap();
    let keep = store
        .create(&with_cidr(node("node9", "192.168.10.109"), "172.20.0.0/24"))
        .await
        .unwrap();
    let operator = start(store, &["172.20.0.0/16"], 24);

    // The lowest free one: 172.20.0.0/24 is taken.
    assert_eq!(cidrs_of(store, "node0").await, cidrs(&["172.20.1.0/24"]));
    for (name, ip, want) in [
        ("node1", "192.168.10.101", "172.20.2.0/24"),
        ("node2", "192.168.10.102", "172.20.3.0/24"),
        ("node3", "192.168.10.103", "172.20.4.0/24"),
    ] {
        store.create(&node(name, ip)).await.unwrap();
        assert_eq!(cidrs_of(store, name).await, cidrs(&[want]), "{name}");
    }
    // The node that had one was left as it was (not even rewritten), and the operator
    // touched nothing but the IPAM fields.
    assert_eq!(get(store, "node9").await, keep);
    let node3 = get(store, "node3").await;
    assert_eq!(node3.internal_ip(), Some("192.168.10.103".parse().unwrap()));
    operator.stop().await;
}

#[tokio::test]
async fn memory_nodes_get_distinct_cidrs_in_order_and_keep_theirs() {
    nodes_get_distinct_cidrs_in_order_and_keep_theirs(&Store::memory()).await;
}

#[tokio::test]
async fn etcd_nodes_get_distinct_cidrs_in_order_and_keep_theirs() {
    let (_etcd, store) = etcd().await;
    nodes_get_distinct_cidrs_in_order_and_keep_theirs(&store).await;
}

#[tokio::test]
async fn two_nodes_claiming_one_cidr_the_later_gets_a_fresh_one() {
    let store = Store::memory();
    let a = store
        .create(&with_cidr(node("a", "192.168.10.100"), "172.20.5.0/24"))
        .await
        .unwrap();
    store
        .create(&with_cidr(node("b", "192.168.10.101"), "172.20.5.0/24"))
        .await
        .unwrap();
    // Outside every pool: left alone, and the node gets no other.
    let outside = store
        .create(&with_cidr(node("c", "192.168.10.102"), "10.0.0.0/24"))
        .await
        .unwrap();
    let operator = start(&store, &["172.20.0.0/16"], 24);
    assert_eq!(
        wait_for(&store, "b", "a fresh PodCIDR", |n| n.spec.ipam.pod_cidrs
            != cidrs(&["172.20.5.0/24"]))
        .await
        .spec
        .ipam
        .pod_cidrs,
        cidrs(&["172.20.0.0/24"])
    );
    store.create(&node("d", "192.168.10.103")).await.unwrap();
    assert_eq!(cidrs_of(&store, "d").await, cidrs(&["172.20.1.0/24"]));
    assert_eq!(get(&store, "a").await, a);
    assert_eq!(get(&store, "c").await, outside);
    operator.stop().await;
}

// ---- restart ----

#[tokio::test]
async fn a_restarted_operator_keeps_every_cidr_and_hands_out_no_used_one() {
    let (_etcd, store) = etcd().await;
    let operator = start(&store, &["172.20.0.0/16"], 24);
    let mut before = Vec::new();
    for i in 0..3 {
        let name = format!("node{i}");
        store
            .create(&node(&name, &format!("192.168.10.{}", 100 + i)))
            .await
            .unwrap();
        cidrs_of(&store, &name).await;
        before.push(get(&store, &name).await);
    }
    operator.stop().await;

    let operator = start(&store, &["172.20.0.0/16"], 24);
    store
        .create(&node("node3", "192.168.10.103"))
        .await
        .unwrap();
    // A fresh operator that had not restored the others would hand out 172.20.0.0/24.
    assert_eq!(cidrs_of(&store, "node3").await, cidrs(&["172.20.3.0/24"]));
    for old in before {
        // Same CIDR and not even rewritten (same resourceVersion).
        assert_eq!(get(&store, old.name()).await, old);
    }
    operator.stop().await;
}

// ---- delete ----

async fn a_deleted_nodes_cidr_goes_to_the_next_new_node(store: &Store) {
    let operator = start(store, &["172.20.0.0/16"], 24);
    for (name, ip) in [
        ("a", "192.168.10.100"),
        ("b", "192.168.10.101"),
        ("c", "192.168.10.102"),
    ] {
        store.create(&node(name, ip)).await.unwrap();
        cidrs_of(store, name).await;
    }
    assert_eq!(cidrs_of(store, "b").await, cidrs(&["172.20.1.0/24"]));
    assert!(store.delete::<CiliateNode>(None, "b").await.unwrap());
    store.create(&node("d", "192.168.10.103")).await.unwrap();
    assert_eq!(cidrs_of(store, "d").await, cidrs(&["172.20.1.0/24"]));
    store.create(&node("e", "192.168.10.104")).await.unwrap();
    assert_eq!(cidrs_of(store, "e").await, cidrs(&["172.20.3.0/24"]));
    operator.stop().await;
}

#[tokio::test]
async fn memory_a_deleted_nodes_cidr_goes_to_the_next_new_node() {
    a_deleted_nodes_cidr_goes_to_the_next_new_node(&Store::memory()).await;
}

#[tokio::test]
async fn etcd_a_deleted_nodes_cidr_goes_to_the_next_new_node() {
    let (_etcd, store) = etcd().await;
    a_deleted_nodes_cidr_goes_to_the_next_new_node(&store).await;
}

// ---- exhaustion ----

async fn exhaustion_is_reported_on_the_node_and_cleared(store: &Store) {
    let operator = start(store, &["10.9.0.0/28"], 29);
    store.create(&node("a", "192.168.10.100")).await.unwrap();
    assert_eq!(cidrs_of(store, "a").await, cidrs(&["10.9.0.0/29"]));
    store.create(&node("b", "192.168.10.101")).await.unwrap();
    assert_eq!(cidrs_of(store, "b").await, cidrs(&["10.9.0.8/29"]));

    store.create(&node("c", "192.168.10.102")).await.unwrap();
    let c = wait_for(store, "c", "an operator error", |n| {
        n.status.ipam.operator_status.error.is_some()
    })
    .await;
    assert_eq!(
        c.status.ipam.operator_status.error.as_deref(),
        Some("cluster-pool exhausted: all 2 /29 CIDRs of 10.9.0.0/28 are in use")
    );
    assert!(c.spec.ipam.pod_cidrs.is_empty(), "{c:?}");

    // A CIDR frees up: the waiting node gets it and the error goes.
    assert!(store.delete::<CiliateNode>(None, "a").await.unwrap());
    assert_eq!(cidrs_of(store, "c").await, cidrs(&["10.9.0.0/29"]));
    operator.stop().await;
}

#[tokio::test]
async fn memory_exhaustion_is_reported_on_the_node_and_cleared() {
    exhaustion_is_reported_on_the_node_and_cleared(&Store::memory()).await;
}

#[tokio::test]
async fn etcd_exhaustion_is_reported_on_the_node_and_cleared() {
    let (_etcd, store) = etcd().await;
    exhaustion_is_reported_on_the_node_and_cleared(&store).await;
}

// ---- leases ----

#[tokio::test]
async fn the_agents_lease_survives_the_operators_write() {
    let (etcd, store) = etcd().await;
    // The agent: its own connection, its node bound to its lease.
    let agent = Store::etcd(EtcdConfig::new(etcd.endpoint())).await.unwrap();
    let registration = agent
        .put_with_lease(&node("leased", "192.168.10.100"), Duration::from_secs(2))
        .await
        .unwrap();
    let operator = start(&store, &["172.20.0.0/16"], 24);
    assert_eq!(cidrs_of(&store, "leased").await, cidrs(&["172.20.0.0/24"]));

    // Still bound to the lease: revoking it deletes the key.
    registration.revoke().await.unwrap();
    assert_eq!(
        store.get::<CiliateNode>(None, "leased").await.unwrap(),
        None,
        "the operator's write dropped the agent's lease"
    );
    // ...and the operator saw the delete: the CIDR is free again.
    store.create(&node("next", "192.168.10.101")).await.unwrap();
    assert_eq!(cidrs_of(&store, "next").await, cidrs(&["172.20.0.0/24"]));
    operator.stop().await;
}

// ---- bad data, etcd down ----

#[tokio::test]
async fn corrupt_objects_are_skipped_and_other_nodes_still_served() {
    let (etcd, store) = etcd().await;
    let mut raw = EtcdBackend::connect(EtcdConfig::new(etcd.endpoint()))
        .await
        .unwrap()
        .client();
    raw.put("/ciliate/ciliatenode/_/broken", "{not json", None)
        .await
        .unwrap();
    raw.put("/ciliate/ciliatenode/too/many/parts", "{}", None)
        .await
        .unwrap();
    store.create(&node("a", "192.168.10.100")).await.unwrap();
    let operator = start(&store, &["172.20.0.0/16"], 24);
    assert_eq!(cidrs_of(&store, "a").await, cidrs(&["172.20.0.0/24"]));

    // Corrupt while running, including a node that had a CIDR: still not fatal.
    raw.put("/ciliate/ciliatenode/_/a", r#"{"kind":"Pod"}"#, None)
        .await
        .unwrap();
    store.create(&node("b", "192.168.10.101")).await.unwrap();
    // a's CIDR stays held: its object is unreadable, not deleted.
    assert_eq!(cidrs_of(&store, "b").await, cidrs(&["172.20.1.0/24"]));
    assert!(operator.is_running());
    operator.stop().await;
}

#[tokio::test]
async fn the_operator_rides_out_an_etcd_outage() {
    let (mut etcd, store) = etcd().await;
    store.create(&node("a", "192.168.10.100")).await.unwrap();
    let operator = start(&store, &["172.20.0.0/16"], 24);
    assert_eq!(cidrs_of(&store, "a").await, cidrs(&["172.20.0.0/24"]));

    etcd.kill();
    // Long enough for the watch to notice and back off at least once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(operator.is_running());
    etcd.restart().unwrap_or_else(|e| panic!("{}", report(&e)));

    // Our own client may need a moment to reconnect too.
    let b = node("b", "192.168.10.101");
    tokio::time::timeout(WAIT, async {
        while let Err(e) = store.create(&b).await {
            assert!(e.is_unavailable(), "{}", report(&e));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("etcd did not come back");
    assert_eq!(cidrs_of(&store, "b").await, cidrs(&["172.20.1.0/24"]));
    operator.stop().await;
}
