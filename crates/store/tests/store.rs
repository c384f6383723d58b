//! The store against a real etcd (started per test; `etcd` must be installed, see
//! scripts/install-deps.sh) and, for the shared semantics, against the in-memory backend.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::Duration;

use ciliate_store::testing::{EtcdOptions, EtcdServer};
use ciliate_store::{
    report, AddressType, CiliateNode, Error, EtcdConfig, Event, Node, Object, ObjectKey,
    ObjectMeta, Pod, Store, WriteMode,
};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, NodeSpec, PodSpec, PodStatus};

const WAIT: Duration = Duration::from_secs(15);

/// A fresh etcd and a store on it. Fails (never skips) when etcd is missing.
async fn etcd() -> (EtcdServer, Store) {
    let server = EtcdServer::start_local().unwrap_or_else(|e| panic!("{}", report(&e)));
    let store = Store::etcd(EtcdConfig::new(server.endpoint()))
        .await
        .unwrap_or_else(|e| panic!("{}", report(&e)));
    (server, store)
}

fn ciliate_node(name: &str, ip: &str) -> CiliateNode {
    let mut node = CiliateNode::new(name);
    node.set_address(AddressType::InternalIp, ip.parse().unwrap());
    node.spec.ipam.pod_cidrs = vec!["172.20.0.0/24".parse().unwrap()];
    node.metadata.labels = Some(BTreeMap::from([("zone".into(), "a".into())]));
    node
}

fn k8s_node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".into(),
                name.into(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some("172.20.1.0/24".into()),
            ..NodeSpec::default()
        }),
        ..Node::default()
    }
}

fn pod(namespace: &str, name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node1".into()),
            containers: vec![Container {
                name: "app".into(),
                image: Some("busybox".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some("172.20.0.5".into()),
            ..PodStatus::default()
        }),
    }
}

async fn next<T: Debug>(
    stream: &mut BoxStream<'static, ciliate_store::Result<Event<T>>>,
) -> Event<T> {
    match next_item(stream).await {
        Ok(event) => event,
        Err(e) => panic!("watch reported: {}", report(&e)),
    }
}

async fn next_item<T: Debug>(
    stream: &mut BoxStream<'static, ciliate_store::Result<Event<T>>>,
) -> ciliate_store::Result<Event<T>> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no watch event within the timeout")
        .expect("the watch stream ended")
}

fn upserted<T: Debug>(event: Event<T>) -> T {
    match event {
        Event::Upsert(object) => object,
        other => panic!("expected an upsert, got {other:?}"),
    }
}

// ---- round trip ----

async fn round_trip<T: Object + PartialEq + Debug>(
    store: &Store,
    object: T,
    change: impl Fn(&mut T),
) {
    let ns = object.namespace().map(str::to_string);
    let name = object.name().to_string();
    let stored = store.put(&object).await.unwrap();
    assert!(stored.resource_version().is_some());
    let got: T = store
        .get(ns.as_deref(), &name)
        .await
        .unwrap()
        .expect("stored object");
    assert_eq!(got, stored);

    let list = store.list::<T>().await.unwrap();
    assert_eq!(list.items, vec![stored.clone()]);
    assert!(list.invalid.is_empty());

    let mut changed = got.clone();
    change(&mut changed);
    let updated = store.put(&changed).await.unwrap();
    assert_ne!(updated.resource_version(), stored.resource_version());
    assert_eq!(
        store.get::<T>(ns.as_deref(), &name).await.unwrap(),
        Some(updated.clone())
    );

    // A write based on the old version is refused, as Kubernetes does.
    let err = store.put(&stored).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");

    assert!(store.delete::<T>(ns.as_deref(), &name).await.unwrap());
    assert_eq!(store.get::<T>(ns.as_deref(), &name).await.unwrap(), None);
    assert!(!store.delete::<T>(ns.as_deref(), &name).await.unwrap());
    assert!(store.list::<T>().await.unwrap().items.is_empty());

    // Updating what is gone is NotFound; a plain put (no resourceVersion) creates.
    let err = store.put(&updated).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

async fn round_trip_all_kinds(store: &Store) {
    round_trip(store, ciliate_node("node1", "192.168.10.100"), |n| {
        n.spec.health.ipv4 = Some("172.20.0.2".parse().unwrap());
    })
    .await;
    round_trip(store, k8s_node("node1"), |n| {
        n.metadata
            .labels
            .get_or_insert_default()
            .insert("role".into(), "worker".into());
    })
    .await;
    round_trip(store, pod("default", "web"), |p| {
        p.status.get_or_insert_default().phase = Some("Running".into());
    })
    .await;

    // Namespaces are part of the key; namespaced kinds need one.
    store.put(&pod("a", "x")).await.unwrap();
    store.put(&pod("b", "x")).await.unwrap();
    let names: Vec<_> = store
        .list::<Pod>()
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| format!("{}/{}", p.namespace().unwrap(), p.name()))
        .collect();
    assert_eq!(names, ["a/x", "b/x"]);
    let err = store.get::<Pod>(None, "x").await.unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
    let err = store.put(&CiliateNode::new("a/b")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"CiliateNode name "a/b" is invalid: it contains '/'"#
    );
}

#[tokio::test]
async fn etcd_round_trip_each_kind() {
    let (_etcd, store) = etcd().await;
    round_trip_all_kinds(&store).await;
}

#[tokio::test]
async fn memory_round_trip_each_kind() {
    round_trip_all_kinds(&Store::memory()).await;
}

#[tokio::test]
async fn etcd_keys_and_values_have_the_documented_layout() {
    let (etcd, store) = etcd().await;
    store
        .put(&ciliate_node("node1", "192.168.10.100"))
        .await
        .unwrap();
    store.put(&pod("default", "web")).await.unwrap();
    let backend = ciliate_store::EtcdBackend::connect(EtcdConfig::new(etcd.endpoint()))
        .await
        .unwrap();
    let mut client = backend.client();
    let response = client
        .get(
            "/ciliate/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let keys: Vec<_> = response
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        ["/ciliate/ciliatenode/_/node1", "/ciliate/pod/default/web"]
    );
    let value: serde_json::Value = serde_json::from_slice(response.kvs()[0].value()).unwrap();
    assert_eq!(value["apiVersion"], "ciliate.io/v2");
    assert_eq!(value["kind"], "CiliateNode");
    assert_eq!(value["spec"]["addresses"][0]["type"], "InternalIP");
    assert!(
        value["metadata"].get("resourceVersion").is_none(),
        "{value}"
    );
}

// ---- create ----

async fn create_refuses_existing(store: &Store) {
    let node = ciliate_node("node1", "192.168.10.100");
    store.create(&node).await.unwrap();
    let err = store.create(&node).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(err.to_string(), "CiliateNode node1 exists already");

    store.create(&pod("default", "web")).await.unwrap();
    let err = store.create(&pod("default", "web")).await.unwrap_err();
    assert_eq!(err.to_string(), "Pod default/web exists already");
    store.create(&pod("other", "web")).await.unwrap();
}

#[tokio::test]
async fn etcd_create_of_an_existing_name_fails() {
    let (_etcd, store) = etcd().await;
    create_refuses_existing(&store).await;
}

#[tokio::test]
async fn memory_create_of_an_existing_name_fails() {
    create_refuses_existing(&Store::memory()).await;
}

// ---- watch ----

async fn watch_lists_then_follows(store: &Store) {
    let a = store
        .put(&ciliate_node("a", "192.168.10.100"))
        .await
        .unwrap();
    let b = store
        .put(&ciliate_node("b", "192.168.10.101"))
        .await
        .unwrap();
    // Other kinds do not show up.
    store.put(&k8s_node("a")).await.unwrap();

    let mut watch = store.watch::<CiliateNode>();
    assert_eq!(next(&mut watch).await, Event::Upsert(a.clone()));
    assert_eq!(next(&mut watch).await, Event::Upsert(b.clone()));
    assert_eq!(next(&mut watch).await, Event::Synced);

    let c = store
        .put(&ciliate_node("c", "192.168.10.102"))
        .await
        .unwrap();
    let mut a2 = a.clone();
    a2.spec.health.ipv4 = Some("172.20.0.2".parse().unwrap());
    let a2 = store.put(&a2).await.unwrap();
    store.delete::<Node>(None, "a").await.unwrap();
    store.delete::<CiliateNode>(None, "b").await.unwrap();

    assert_eq!(next(&mut watch).await, Event::Upsert(c));
    assert_eq!(next(&mut watch).await, Event::Upsert(a2));
    assert_eq!(
        next(&mut watch).await,
        Event::Delete {
            namespace: None,
            name: "b".into(),
            last: Some(b)
        }
    );
    // Nothing else is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn etcd_watch_yields_list_then_synced_then_changes() {
    let (_etcd, store) = etcd().await;
    watch_lists_then_follows(&store).await;
}

#[tokio::test]
async fn memory_watch_yields_list_then_synced_then_changes() {
    watch_lists_then_follows(&Store::memory()).await;
}

/// Watches started while a writer runs each end up with exactly the store's state, and
/// see every object's versions in increasing order with none repeated.
async fn watch_has_no_gap(store: &Store) {
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..400u32 {
                let name = format!("n{}", i % 25);
                if i % 4 == 3 {
                    store.delete::<CiliateNode>(None, &name).await.unwrap();
                } else {
                    let mut node = ciliate_node(&name, "192.168.10.100");
                    node.metadata.labels = Some(BTreeMap::from([("i".into(), i.to_string())]));
                    store.put(&node).await.unwrap();
                }
            }
        })
    };
    let mut watches = Vec::new();
    for i in 0..6u64 {
        tokio::time::sleep(Duration::from_millis(3 * i)).await;
        watches.push(store.watch::<CiliateNode>());
    }
    writer.await.unwrap();
    store.put(&CiliateNode::new("zz-sentinel")).await.unwrap();

    let truth: HashMap<String, String> = store
        .list::<CiliateNode>()
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|n| n.name() != "zz-sentinel")
        .map(|n| {
            (
                n.name().to_string(),
                n.resource_version().unwrap().to_string(),
            )
        })
        .collect();
    for mut watch in watches {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut synced = false;
        loop {
            match next(&mut watch).await {
                Event::Upsert(node) if node.name() == "zz-sentinel" => break,
                Event::Upsert(node) => {
                    let rv: u64 = node.resource_version().unwrap().parse().unwrap();
                    if let Some(old) = seen.insert(node.name().to_string(), rv) {
                        assert!(synced, "{} listed twice", node.name());
                        assert!(rv > old, "{} went from version {old} to {rv}", node.name());
                    }
                }
                Event::Delete { name, .. } => {
                    assert!(synced, "delete of {name} before Synced");
                    assert!(seen.remove(&name).is_some(), "delete of unknown {name}");
                }
                Event::Synced => {
                    assert!(!synced, "second Synced without an error");
                    synced = true;
                }
            }
        }
        let seen: HashMap<String, String> =
            seen.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        assert_eq!(seen, truth);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_started_during_writes_misses_and_repeats_nothing() {
    let (_etcd, store) = etcd().await;
    watch_has_no_gap(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_watch_started_during_writes_misses_and_repeats_nothing() {
    watch_has_no_gap(&Store::memory()).await;
}

// ---- update (compare-and-swap) ----

async fn update_is_compare_and_swap_and_keeps_the_lease(store: &Store) {
    // Without a resourceVersion there is nothing to compare with: refused.
    let err = store
        .update(&ciliate_node("fresh", "192.168.10.100"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidResourceVersion { .. }),
        "{err:?}"
    );

    let guard = store
        .put_with_lease(&CiliateNode::new("leased"), Duration::from_secs(2))
        .await
        .unwrap();
    let read = store
        .get::<CiliateNode>(None, "leased")
        .await
        .unwrap()
        .unwrap();
    let mut mine = read.clone();
    mine.spec.ipam.pod_cidrs = vec!["172.20.7.0/24".parse().unwrap()];
    let written = store.update(&mine).await.unwrap();
    assert_ne!(written.resource_version(), read.resource_version());
    assert_eq!(
        store.get::<CiliateNode>(None, "leased").await.unwrap(),
        Some(written.clone())
    );

    // A second writer holding the old version loses.
    let mut stale = read.clone();
    stale.spec.health.ipv4 = Some("172.20.7.2".parse().unwrap());
    let err = store.update(&stale).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");

    // The key is still bound to the agent's lease: revoking it deletes the key.
    guard.revoke().await.unwrap();
    assert_eq!(
        store.get::<CiliateNode>(None, "leased").await.unwrap(),
        None
    );
    let err = store.update(&written).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn etcd_update_is_compare_and_swap_and_keeps_the_lease() {
    let (_etcd, store) = etcd().await;
    update_is_compare_and_swap_and_keeps_the_lease(&store).await;
}

#[tokio::test]
async fn memory_update_is_compare_and_swap_and_keeps_the_lease() {
    update_is_compare_and_swap_and_keeps_the_lease(&Store::memory()).await;
}

// ---- leases ----

async fn lease_guard_update_is_compare_and_swap(store: &Store) {
    let guard = store
        .put_with_lease(
            &ciliate_node("cas", "192.168.10.100"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let read = store
        .get::<CiliateNode>(None, "cas")
        .await
        .unwrap()
        .unwrap();
    // The operator writes the PodCIDRs meanwhile.
    let mut by_operator = read.clone();
    by_operator.spec.ipam.pod_cidrs = vec!["172.20.5.0/24".parse().unwrap()];
    let by_operator = store.update(&by_operator).await.unwrap();

    // The agent's copy from before that is refused, not written over them.
    let mut stale = read.clone();
    stale.spec.health.ipv4 = Some("172.20.5.2".parse().unwrap());
    let err = guard.update(&stale).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.get::<CiliateNode>(None, "cas").await.unwrap(),
        Some(by_operator.clone())
    );

    // On top of the latest it is written, and the key stays under the guard's lease.
    let mut mine = by_operator.clone();
    mine.spec.health.ipv4 = Some("172.20.5.2".parse().unwrap());
    let written = guard.update(&mine).await.unwrap();
    let stored = store
        .get::<CiliateNode>(None, "cas")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, written);
    assert_eq!(stored.spec.ipam.pod_cidrs, by_operator.spec.ipam.pod_cidrs);
    guard.revoke().await.unwrap();
    assert_eq!(store.get::<CiliateNode>(None, "cas").await.unwrap(), None);
    // A version of a deleted object: NotFound.
    let guard = store
        .put_with_lease(&CiliateNode::new("cas2"), Duration::from_secs(2))
        .await
        .unwrap();
    let read = store
        .get::<CiliateNode>(None, "cas2")
        .await
        .unwrap()
        .unwrap();
    store.delete::<CiliateNode>(None, "cas2").await.unwrap();
    let err = guard.update(&read).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn etcd_lease_guard_update_is_compare_and_swap() {
    let (_etcd, store) = etcd().await;
    lease_guard_update_is_compare_and_swap(&store).await;
}

#[tokio::test]
async fn memory_lease_guard_update_is_compare_and_swap() {
    lease_guard_update_is_compare_and_swap(&Store::memory()).await;
}

#[tokio::test]
async fn etcd_an_abandoned_lease_expires_after_its_ttl() {
    let (_etcd, store) = etcd().await;
    let guard = store
        .put_with_lease(&CiliateNode::new("gone"), Duration::from_secs(2))
        .await
        .unwrap();
    let mut watch = store.watch::<CiliateNode>();
    upserted(next(&mut watch).await);
    assert_eq!(next(&mut watch).await, Event::Synced);
    // Kept alive beyond its TTL while held.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(store
        .get::<CiliateNode>(None, "gone")
        .await
        .unwrap()
        .is_some());

    // Abandoned: not revoked, so the key is still there right after...
    guard.abandon();
    assert!(store
        .get::<CiliateNode>(None, "gone")
        .await
        .unwrap()
        .is_some());
    // ...and no longer renewed, so it expires (etcd checks expiry about every 500 ms).
    let started = std::time::Instant::now();
    match next(&mut watch).await {
        Event::Delete { name, .. } => assert_eq!(name, "gone"),
        other => panic!("expected a delete, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "deleted at once, as if revoked"
    );
}

async fn lease_ends_with_its_guard(store: &Store) {
    let mut watch = store.watch::<CiliateNode>();
    assert_eq!(next(&mut watch).await, Event::Synced);

    let node = ciliate_node("node1", "192.168.10.100");
    let guard = store
        .put_with_lease(&node, Duration::from_secs(2))
        .await
        .unwrap();
    let registered = upserted(next(&mut watch).await);
    assert_eq!(registered.spec, node.spec);

    // The operator writes the PodCIDRs with a plain put: the key stays leased.
    let mut by_operator = registered.clone();
    by_operator.spec.ipam.pod_cidrs = vec!["172.20.5.0/24".parse().unwrap()];
    let by_operator = store.put(&by_operator).await.unwrap();
    upserted(next(&mut watch).await);

    // Kept alive beyond its TTL.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(store
        .get::<CiliateNode>(None, "node1")
        .await
        .unwrap()
        .is_some());

    // The agent updates its registration through the guard.
    let mut update = by_operator.clone();
    update.spec.health.ipv4 = Some("172.20.5.2".parse().unwrap());
    let updated = guard.update(&update).await.unwrap();
    assert_eq!(upserted(next(&mut watch).await), updated);

    drop(guard);
    match next(&mut watch).await {
        Event::Delete { name, last, .. } => {
            assert_eq!(name, "node1");
            assert_eq!(last, Some(updated));
        }
        other => panic!("expected a delete, got {other:?}"),
    }

    // revoke() waits until the key is gone.
    let guard = store
        .put_with_lease(&node, Duration::from_secs(2))
        .await
        .unwrap();
    upserted(next(&mut watch).await);
    guard.revoke().await.unwrap();
    assert_eq!(store.get::<CiliateNode>(None, "node1").await.unwrap(), None);
}

#[tokio::test]
async fn etcd_lease_bound_node_disappears_when_its_guard_is_dropped() {
    let (_etcd, store) = etcd().await;
    lease_ends_with_its_guard(&store).await;
}

#[tokio::test]
async fn memory_lease_bound_node_disappears_when_its_guard_is_dropped() {
    let store = Store::memory();
    let guard = store
        .put_with_lease(&CiliateNode::new("n"), Duration::from_secs(2))
        .await
        .unwrap();
    let mut watch = store.watch::<CiliateNode>();
    upserted(next(&mut watch).await);
    assert_eq!(next(&mut watch).await, Event::Synced);
    store.put(&ciliate_node("n", "10.0.0.1")).await.unwrap();
    upserted(next(&mut watch).await);
    drop(guard);
    assert!(matches!(next(&mut watch).await, Event::Delete { .. }));
}

const CHILD_ENV: &str = "CILIATE_STORE_TEST_LEASE_HOLDER";

/// Not a test on its own: the child process of
/// `etcd_lease_bound_node_disappears_when_its_process_is_killed` (does nothing unless
/// that test runs it).
#[tokio::test]
async fn lease_holder_child() {
    let Ok(endpoint) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::etcd(EtcdConfig::new(endpoint)).await.unwrap();
    let _guard = store
        .put_with_lease(
            &ciliate_node("mortal", "192.168.10.102"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_mins(2)).await;
}

#[tokio::test]
async fn etcd_lease_bound_node_disappears_when_its_process_is_killed() {
    let (etcd, store) = etcd().await;
    let mut watch = store.watch::<CiliateNode>();
    assert_eq!(next(&mut watch).await, Event::Synced);

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lease_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, etcd.endpoint())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let node = upserted(next(&mut watch).await);
    assert_eq!(node.name(), "mortal");

    // The child keeps it alive beyond the TTL...
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(store
        .get::<CiliateNode>(None, "mortal")
        .await
        .unwrap()
        .is_some());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the lease holder exited early"
    );

    // ...and when it dies without revoking, the lease expires.
    child.kill().unwrap();
    child.wait().unwrap();
    let started = std::time::Instant::now();
    match next(&mut watch).await {
        Event::Delete { name, last, .. } => {
            assert_eq!(name, "mortal");
            assert_eq!(last.map(|n| n.spec), Some(node.spec));
        }
        other => panic!("expected a delete, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}

// ---- corrupt values ----

async fn corrupt_values_are_reported_not_fatal(store: &Store) {
    let backend = store.backend().clone();
    let key = |name: &str| ObjectKey::new(CiliateNode::RESOURCE, None, name).unwrap();
    backend
        .write(key("broken"), b"{not json".to_vec(), WriteMode::Put)
        .await
        .unwrap();
    let good = store
        .put(&ciliate_node("good", "192.168.10.100"))
        .await
        .unwrap();

    let err = store.get::<CiliateNode>(None, "broken").await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    let message = report(&err);
    assert!(
        message
            .starts_with("cannot decode the CiliateNode stored at /ciliate/ciliatenode/_/broken: "),
        "{message}"
    );

    let list = store.list::<CiliateNode>().await.unwrap();
    assert_eq!(list.items, vec![good.clone()]);
    assert_eq!(list.invalid.len(), 1);
    assert!(list.invalid[0]
        .to_string()
        .contains("/ciliate/ciliatenode/_/broken"));

    let mut watch = store.watch::<CiliateNode>();
    let err = next_item(&mut watch).await.unwrap_err();
    assert!(
        err.to_string().contains("/ciliate/ciliatenode/_/broken"),
        "{err}"
    );
    assert_eq!(next(&mut watch).await, Event::Upsert(good));
    assert_eq!(next(&mut watch).await, Event::Synced);

    // Valid JSON of another kind, and a value naming another object: reported too.
    backend
        .write(
            key("wrong-kind"),
            br#"{"kind":"Pod"}"#.to_vec(),
            WriteMode::Put,
        )
        .await
        .unwrap();
    let err = next_item(&mut watch).await.unwrap_err();
    assert!(
        report(&err).contains("kind is \"Pod\", expected \"CiliateNode\""),
        "{}",
        report(&err)
    );
    backend
        .write(
            key("alias"),
            br#"{"metadata":{"name":"other"}}"#.to_vec(),
            WriteMode::Put,
        )
        .await
        .unwrap();
    let err = next_item(&mut watch).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the object stored at /ciliate/ciliatenode/_/alias calls itself CiliateNode other"
    );

    // The watch goes on; deleting a corrupt object is an ordinary delete.
    let later = store
        .put(&ciliate_node("later", "192.168.10.101"))
        .await
        .unwrap();
    assert_eq!(next(&mut watch).await, Event::Upsert(later));
    assert!(store.delete::<CiliateNode>(None, "broken").await.unwrap());
    assert_eq!(
        next(&mut watch).await,
        Event::Delete {
            namespace: None,
            name: "broken".into(),
            last: None
        }
    );
}

#[tokio::test]
async fn etcd_bad_json_is_an_error_naming_the_key() {
    let (_etcd, store) = etcd().await;
    corrupt_values_are_reported_not_fatal(&store).await;
}

#[tokio::test]
async fn memory_bad_json_is_an_error_naming_the_key() {
    corrupt_values_are_reported_not_fatal(&Store::memory()).await;
}

#[tokio::test]
async fn etcd_keys_that_are_not_object_keys_are_reported() {
    let (etcd, store) = etcd().await;
    let mut client = ciliate_store::EtcdBackend::connect(EtcdConfig::new(etcd.endpoint()))
        .await
        .unwrap()
        .client();
    client
        .put("/ciliate/ciliatenode/too/many/parts", "{}", None)
        .await
        .unwrap();
    store.put(&CiliateNode::new("fine")).await.unwrap();
    let list = store.list::<CiliateNode>().await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.invalid[0].to_string(),
        "/ciliate/ciliatenode/too/many/parts is not a key of the form <prefix>/<kind>/<namespace or _>/<name>"
    );
}

// ---- etcd down ----

#[tokio::test]
async fn unreachable_etcd_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = EtcdConfig {
        connect_timeout: Duration::from_secs(1),
        ..EtcdConfig::new(format!("http://127.0.0.1:{port}"))
    };
    let err = Store::etcd(config).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        report(&err).starts_with(&format!("cannot reach etcd at http://127.0.0.1:{port}: ")),
        "{}",
        report(&err)
    );
}

#[tokio::test]
async fn watch_and_lease_survive_an_etcd_restart() {
    let (mut etcd, store) = etcd().await;
    let _guard = store
        .put_with_lease(
            &ciliate_node("mine", "192.168.10.100"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let doomed = store
        .put(&ciliate_node("doomed", "192.168.10.103"))
        .await
        .unwrap();
    let mut watch = store.watch::<CiliateNode>();
    upserted(next(&mut watch).await);
    upserted(next(&mut watch).await);
    assert_eq!(next(&mut watch).await, Event::Synced);

    etcd.kill();
    let err = next_item(&mut watch).await.unwrap_err();
    assert!(err.is_unavailable(), "{}", report(&err));
    let err = store.get::<CiliateNode>(None, "mine").await.unwrap_err();
    assert!(err.is_unavailable(), "{}", report(&err));

    etcd.restart().unwrap_or_else(|e| panic!("{}", report(&e)));
    // Changed while the watch was away (the watch backs off, so these usually land
    // before its re-list, which then reports them as differences).
    let other = store
        .put(&ciliate_node("other", "192.168.10.101"))
        .await
        .unwrap();
    assert!(store.delete::<CiliateNode>(None, "doomed").await.unwrap());
    // The watch re-lists (reporting only what changed) and is synced again.
    let (mut saw_other, mut saw_doomed, mut synced) = (false, false, false);
    while !(saw_other && saw_doomed && synced) {
        match next_item(&mut watch).await {
            Ok(Event::Upsert(n)) if n == other => saw_other = true,
            Ok(Event::Delete { name, last, .. }) if name == "doomed" => {
                assert_eq!(last, Some(doomed.clone()));
                saw_doomed = true;
            }
            Ok(Event::Synced) if !synced => synced = true,
            Ok(e) => panic!("unexpected {e:?}"),
            Err(e) => assert!(e.is_unavailable(), "{}", report(&e)),
        }
    }
    // The leased key outlives several TTLs after the restart: keepalives resumed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(store
        .get::<CiliateNode>(None, "mine")
        .await
        .unwrap()
        .is_some());
}

// ---- inside a network namespace (as the lab runs it) ----

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {args:?} failed");
}

#[test]
fn etcd_runs_inside_a_network_namespace() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED etcd_runs_inside_a_network_namespace: creating a network namespace needs root"
        );
        return;
    }
    let ns = Netns(format!("ciliate-store-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    let mut etcd = EtcdServer::start(EtcdOptions {
        netns: Some(format!("/run/netns/{}", ns.0).into()),
        ..EtcdOptions::default()
    })
    .unwrap_or_else(|e| panic!("{}", report(&e)));
    assert_eq!(etcd.endpoint(), "http://127.0.0.1:2379");
    // It listens in the namespace only: the host's loopback has no etcd on that port
    // unless something else put one there.
    let pid = etcd.pid().unwrap();
    let own = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(own, ours);
    etcd.stop();
    assert_eq!(etcd.pid(), None);
}

#[tokio::test]
async fn a_lost_lease_is_granted_again_and_the_key_rewritten() {
    let (etcd, store) = etcd().await;
    let node = ciliate_node("phoenix", "192.168.10.100");
    let guard = store
        .put_with_lease(&node, Duration::from_secs(2))
        .await
        .unwrap();
    let mut watch = store.watch::<CiliateNode>();
    let first = upserted(next(&mut watch).await);
    assert_eq!(next(&mut watch).await, Event::Synced);
    // A compare-and-swap update through the guard is what a lost lease writes again.
    let mut node = first.clone();
    node.spec.health.ipv4 = Some("172.20.5.2".parse().unwrap());
    guard.update(&node).await.unwrap();
    upserted(next(&mut watch).await);

    // Someone (or an expiry while etcd was unreachable) ends the lease behind our back.
    let mut client = ciliate_store::EtcdBackend::connect(EtcdConfig::new(etcd.endpoint()))
        .await
        .unwrap()
        .client();
    let kv = client
        .get("/ciliate/ciliatenode/_/phoenix", None)
        .await
        .unwrap();
    let lease = kv.kvs()[0].lease();
    assert_ne!(lease, 0);
    client.lease_revoke(lease).await.unwrap();

    assert!(matches!(next(&mut watch).await, Event::Delete { .. }));
    let back = upserted(next(&mut watch).await);
    assert_eq!(back.spec, node.spec);
    let kv = client
        .get("/ciliate/ciliatenode/_/phoenix", None)
        .await
        .unwrap();
    assert_ne!(kv.kvs()[0].lease(), lease);
    assert_ne!(kv.kvs()[0].lease(), 0);
}
