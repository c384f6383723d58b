//! Cluster state for ciliate, behind one seam.
//!
//! Objects are Kubernetes-shaped: k8s-openapi's `Node`, `Pod` (and any other resource
//! with `ObjectMeta`) plus our CRD-shaped [`CiliateNode`]. Consumers hold a [`Store`]
//! (cheap to clone) and use typed calls:
//!
//! ```no_run
//! # async fn demo() -> ciliate_store::Result<()> {
//! use ciliate_store::{CiliateNode, EtcdConfig, Event, Store};
//! use futures_util::StreamExt;
//!
//! let store = Store::etcd(EtcdConfig::new("http://127.0.0.1:2379")).await?;
//! let me = CiliateNode::new("node1");
//! let _registration = store.put_with_lease(&me, std::time::Duration::from_secs(15)).await?;
//! let mut nodes = store.watch::<CiliateNode>();
//! while let Some(event) = nodes.next().await {
//!     match event {
//!         Ok(Event::Upsert(node)) => { /* add routes, ipcache entries */ }
//!         Ok(Event::Delete { name, .. }) => { /* remove them */ }
//!         Ok(Event::Synced) => { /* initial state complete: prune stale state */ }
//!         Err(e) => eprintln!("{}", ciliate_store::report(&e)), // reported, never fatal
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! **The seam.** [`Store`] is a struct over `Arc<dyn` [`Backend`]`>`. `Backend` is
//! dyn-compatible and deals in JSON values keyed by [`ObjectKey`] (kind, namespace,
//! name); `Store` adds the types. etcd ([`EtcdBackend`]) is the real backend,
//! [`MemoryBackend`] has the same semantics for unit tests of consumers, and a
//! Kubernetes API backend is one more `impl Backend` (a [`ResourceKind`] carries the
//! apiVersion and plural it needs); code written against `Store` does not change.
//!
//! **Keys in etcd:** `/ciliate/<kind lowercase>/<namespace or _>/<name>`, values JSON;
//! etcd's `mod_revision` is the `resourceVersion`.
//!
//! **Real etcd for tests:** [`testing::EtcdServer`].

mod ciliate_node;
mod error;
mod etcd;
mod memory;
mod object;
mod store;
pub mod testing;

pub use ciliate_node::{
    AddressType, CiliateNode, CiliateNodeSpec, CiliateNodeStatus, HealthAddressing, IpamSpec,
    IpamStatus, NodeAddress, OperatorStatus,
};
pub use error::{BoxError, Error, Result};
pub use etcd::{EtcdBackend, EtcdConfig};
pub use memory::MemoryBackend;
pub use object::{Object, ObjectKey, RawObject, ResourceKind, Scope, DEFAULT_PREFIX};
pub use store::{
    Backend, Event, Lease, LeaseGuard, ObjectList, RawEvent, RawList, Store, WriteMode,
};

/// Re-exported so consumers name the same types.
pub use k8s_openapi::api::core::v1::{Node, Pod};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// An error with its chain of causes on one line: `a: b: c`.
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
