//! kube-proxy replacement, the agent's side: Services and EndpointSlices from
//! the store become the datapath's service maps.
//!
//! - [`model`]: what the objects ask for (frontends, backends, scopes), pure;
//! - [`lbmap`]: writing that into the maps with stable ids and a safe order;
//! - [`gc`]: deleting expired conntrack and NAT entries.
//!
//! The manager keeps the last usable form of every Service and EndpointSlice,
//! recomputes the desired frontends after each batch of events and lets
//! [`lbmap::LbSync`] write the difference. A recomputation covers every
//! object, so [`Pacer`] spaces them out by their own cost: events that arrive
//! meanwhile join the next batch, and programming n services stays
//! O(n log n) however the store trickles them in. Nothing is written before both
//! kinds have been listed completely (`Synced`): a Service seen before its
//! EndpointSlices would otherwise be written without backends, and what an
//! earlier run wrote (ids included) keeps traffic flowing meanwhile, however
//! long the store is away. From then on the view is complete (the store
//! reports what changed during an outage, deletes included), so what is no
//! longer wanted is removed as it goes. An object that cannot be used is
//! logged with the field at fault and skipped; if it was usable before, what
//! it said is dropped.

pub mod gc;
pub mod lbmap;
pub mod model;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ciliate_api::ServiceEntry;
use ciliate_store::{Event, Store};
use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::kvstore::Cluster;
use lbmap::{LbSync, LbTables};
use model::{Conflict, ParsedService, ParsedSlice, Settings};

/// An error with its causes, on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    ciliate_store::report(error)
}

/// Events handled before the maps are written once: a list of many objects
/// is written in one go.
const MAX_BATCH: usize = 10_000;

pub struct ServiceManager<T: LbTables> {
    settings: Settings,
    services: BTreeMap<String, ParsedService>,
    /// By the slice's own `namespace/name`.
    slices: BTreeMap<String, ParsedSlice>,
    sync: LbSync<T>,
    services_synced: bool,
    slices_synced: bool,
    /// A `Synced` arrived since the last write (logged once written).
    sync_pending: bool,
    dirty: bool,
    conflicts: Vec<Conflict>,
    published: watch::Sender<Vec<ServiceEntry>>,
}

impl<T: LbTables> ServiceManager<T> {
    pub fn new(
        settings: Settings,
        sync: LbSync<T>,
        published: watch::Sender<Vec<ServiceEntry>>,
    ) -> Self {
        Self {
            settings,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            sync,
            services_synced: false,
            slices_synced: false,
            sync_pending: false,
            dirty: true,
            conflicts: Vec::new(),
            published,
        }
    }

    pub fn sync(&self) -> &LbSync<T> {
        &self.sync
    }

    pub fn on_service(&mut self, event: Event<Service>) {
        match event {
            Event::Upsert(svc) => {
                let id = model::object_id(&svc.metadata);
                let parsed = model::parse_service(&svc, &self.settings);
                self.dirty |= remember(&mut self.services, id, parsed, "Service");
            }
            Event::Delete {
                namespace, name, ..
            } => {
                self.dirty |= self
                    .services
                    .remove(&delete_id(namespace.as_deref(), &name))
                    .is_some();
            }
            Event::Synced => {
                self.services_synced = true;
                self.sync_pending = true;
                self.dirty = true;
            }
        }
    }

    pub fn on_slice(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Upsert(slice) => {
                let id = model::object_id(&slice.metadata);
                let parsed = model::parse_slice(&slice);
                self.dirty |= remember(&mut self.slices, id, parsed, "EndpointSlice");
            }
            Event::Delete {
                namespace, name, ..
            } => {
                self.dirty |= self
                    .slices
                    .remove(&delete_id(namespace.as_deref(), &name))
                    .is_some();
            }
            Event::Synced => {
                self.slices_synced = true;
                self.sync_pending = true;
                self.dirty = true;
            }
        }
    }

    /// Whether both kinds have been listed completely at least once.
    pub fn synced(&self) -> bool {
        self.services_synced && self.slices_synced
    }

    /// Whether [`Self::apply`] has something to write.
    pub fn pending(&self) -> bool {
        self.dirty && self.synced()
    }

    /// Writes what changed since the last call into the maps, once both
    /// kinds are listed.
    pub fn apply(&mut self) {
        if !self.pending() {
            return;
        }
        self.dirty = false;
        let (want, conflicts) = model::desired(&self.services, &self.slices, &self.settings);
        for c in &conflicts {
            if !self.conflicts.contains(c) {
                warn!(frontend = %c.frontend, kept = %c.kept, refused = %c.refused, "two services claim this frontend; the first by name keeps it");
            }
        }
        self.conflicts = conflicts;
        let changes = self.sync.apply(&want, true);
        if self.sync_pending {
            self.sync_pending = false;
            info!(
                services = self.services.len(),
                frontends = want.len(),
                "services synced with the store"
            );
        }
        if changes != lbmap::Changes::default() {
            info!(
                frontends_written = changes.frontends_written,
                frontends_removed = changes.frontends_removed,
                backends_written = changes.backends_written,
                backends_removed = changes.backends_removed,
                errors = changes.errors,
                "service maps updated"
            );
        }
        let entries = self.sync.entries(&want);
        self.published.send_if_modified(|current| {
            if *current == entries {
                false
            } else {
                *current = entries;
                true
            }
        });
    }
}

/// `namespace/name` of a deleted object.
fn delete_id(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or("default"))
}

/// Keeps the usable form of an upserted object (or forgets it when it asks
/// for nothing or cannot be used, saying why); true if that changed anything.
fn remember<P: PartialEq>(
    known: &mut BTreeMap<String, P>,
    id: String,
    parsed: Result<Option<P>, model::FieldError>,
    kind: &str,
) -> bool {
    match parsed {
        Ok(Some(parsed)) => {
            if known.get(&id) == Some(&parsed) {
                return false;
            }
            known.insert(id, parsed);
            true
        }
        Ok(None) => known.remove(&id).is_some(),
        Err(e) => {
            let was_known = known.remove(&id).is_some();
            if was_known {
                warn!(object = %id, "the {kind} cannot be used any more: {e}; dropping what it said");
            } else {
                warn!(object = %id, "skipping the {kind}: {e}");
            }
            was_known
        }
    }
}

/// When the next recomputation may run: after one that took `t`, not before
/// another `t` has passed, so at most half the time goes to recomputing and a
/// burst of n events costs O(log n) recomputations, not n.
#[derive(Debug)]
pub struct Pacer {
    earliest: Instant,
}

impl Pacer {
    /// The first recomputation may run at once.
    pub fn new(now: Instant) -> Self {
        Self { earliest: now }
    }

    /// The instant from which the next recomputation may run.
    pub fn earliest(&self) -> Instant {
        self.earliest
    }

    pub fn ready(&self, now: Instant) -> bool {
        now >= self.earliest
    }

    /// Records a recomputation that started at `started` and took `took`.
    pub fn ran(&mut self, started: Instant, took: Duration) {
        self.earliest = started + took + took;
    }
}

/// Runs the service manager until `stopping` turns true.
pub async fn run<T: LbTables>(
    store: Store,
    mut manager: ServiceManager<T>,
    cluster: Cluster,
    endpoints: Vec<String>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut services = store.watch::<Service>();
    let mut slices = store.watch::<EndpointSlice>();
    let report = |what: &str, e: &ciliate_store::Error| cluster.report_error(&endpoints, what, e);
    let mut pacer = Pacer::new(Instant::now());
    loop {
        let due = manager.pending().then(|| pacer.earliest());
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {}
            event = services.next() => match event {
                Some(Ok(event)) => manager.on_service(event),
                Some(Err(e)) => report("watching Services (skipped)", &e),
                None => return,
            },
            event = slices.next() => match event {
                Some(Ok(event)) => manager.on_slice(event),
                Some(Err(e)) => report("watching EndpointSlices (skipped)", &e),
                None => return,
            },
        }
        // Take what is already there before writing.
        for _ in 0..MAX_BATCH {
            let mut progressed = false;
            if let Some(Some(event)) = services.next().now_or_never() {
                progressed = true;
                match event {
                    Ok(event) => manager.on_service(event),
                    Err(e) => report("watching Services (skipped)", &e),
                }
            }
            if let Some(Some(event)) = slices.next().now_or_never() {
                progressed = true;
                match event {
                    Ok(event) => manager.on_slice(event),
                    Err(e) => report("watching EndpointSlices (skipped)", &e),
                }
            }
            if !progressed {
                break;
            }
        }
        let now = Instant::now();
        if manager.pending() && pacer.ready(now) {
            // Map syscalls: keep them off the async workers' queue.
            tokio::task::block_in_place(|| manager.apply());
            pacer.ran(now, now.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lbmap::fake::FakeTables;
    use super::*;
    use ciliate_datapath::maps::IPPROTO_TCP;
    use model::L4Addr;

    fn manager() -> (
        ServiceManager<FakeTables>,
        watch::Receiver<Vec<ServiceEntry>>,
    ) {
        let (tx, rx) = watch::channel(Vec::new());
        let settings = Settings {
            node_name: "node0".into(),
            node_port_range: (30000, 32767),
        };
        let sync = LbSync::adopt(FakeTables::default()).unwrap();
        (ServiceManager::new(settings, sync, tx), rx)
    }

    fn svc(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    const WEB: &str = "metadata: {name: web, namespace: d}\nspec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, nodePort: 30080}]}\n";
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: d, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [172.20.0.5], nodeName: node0}, {addresses: [172.20.1.5], conditions: {ready: false, serving: true, terminating: true}, nodeName: node1}]\n";

    fn synced(m: &mut ServiceManager<FakeTables>) {
        m.on_service(Event::Synced);
        m.on_slice(Event::Synced);
    }

    #[test]
    fn the_pacer_leaves_as_much_time_between_recomputations_as_they_take() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        assert!(pacer.ready(t0), "the first one runs at once");
        pacer.ran(t0, Duration::from_millis(300));
        assert_eq!(pacer.earliest(), t0 + Duration::from_millis(600));
        assert!(!pacer.ready(t0 + Duration::from_millis(599)));
        assert!(pacer.ready(t0 + Duration::from_millis(600)));
        // A cheap one shortens the wait again.
        let t1 = t0 + Duration::from_secs(1);
        pacer.ran(t1, Duration::from_millis(1));
        assert!(pacer.ready(t1 + Duration::from_millis(2)));
    }

    #[test]
    fn nothing_is_written_before_both_lists_are_complete() {
        let (mut m, rx) = manager();
        m.on_service(Event::Upsert(svc(WEB)));
        m.apply();
        assert!(m.sync().tables().ops.is_empty());
        m.on_slice(Event::Upsert(serde_yaml::from_str(SLICE).unwrap()));
        m.on_service(Event::Synced);
        m.apply();
        assert!(
            m.sync().tables().ops.is_empty(),
            "slices are not listed yet"
        );
        m.on_slice(Event::Synced);
        m.apply();
        let entries = rx.borrow().clone();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, 1);
        assert_eq!(entries[0].frontend, "0.0.0.0:30080/TCP");
        assert_eq!(entries[0].kind, "NodePort");
        assert_eq!(entries[1].frontend, "10.96.0.10:80/TCP");
        let states: Vec<(&str, &str)> = entries[1]
            .backends
            .iter()
            .map(|b| (b.address.as_str(), b.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("172.20.0.5:8080/TCP", "active"),
                ("172.20.1.5:8080/TCP", "terminating")
            ]
        );

        // Once listed, a delete removes at once.
        m.on_service(Event::Delete {
            namespace: Some("d".into()),
            name: "web".into(),
            last: None,
        });
        m.apply();
        assert!(rx.borrow().is_empty());
        let fe = L4Addr::new("10.96.0.10".parse().unwrap(), 80, IPPROTO_TCP);
        assert_eq!(m.sync().rev_nat_index(&fe), None);
        assert!(m.sync().tables().services.is_empty());
        assert!(m.sync().tables().backends.is_empty());
    }

    #[test]
    fn an_earlier_runs_frontends_stay_until_the_lists_are_complete() {
        let (mut first, _) = manager();
        first.on_service(Event::Upsert(svc(WEB)));
        synced(&mut first);
        first.apply();
        let tables = first.sync().tables().clone();
        assert_eq!(tables.rev.len(), 2);

        let (tx, _rx) = watch::channel(Vec::new());
        let settings = first.settings.clone();
        let sync = LbSync::adopt(FakeTables {
            ops: Vec::new(),
            ..tables
        })
        .unwrap();
        let mut m = ServiceManager::new(settings, sync, tx);
        m.on_service(Event::Synced);
        m.apply();
        assert!(m.sync().tables().ops.is_empty());
        m.on_slice(Event::Synced);
        m.apply();
        assert!(m.sync().tables().services.is_empty());
        assert!(m.sync().tables().rev.is_empty());
    }

    #[test]
    fn an_object_that_turns_bad_is_dropped() {
        let (mut m, rx) = manager();
        m.on_service(Event::Upsert(svc(WEB)));
        synced(&mut m);
        m.apply();
        assert_eq!(rx.borrow().len(), 2);
        m.on_service(Event::Upsert(svc(&WEB.replace("30080", "80"))));
        m.apply();
        assert!(rx.borrow().is_empty());
        assert!(m.sync().tables().services.is_empty());
    }
}
