//! The node manager: the one place that turns the cluster's nodes into
//! kernel state. It watches the CiliateNodes in the store and, for every other
//! node, writes
//!
//! - ipcache entries for each of its PodCIDRs and for its InternalIP/32
//!   (tunnel mode: with the node IP as tunnel endpoint; native: none), and
//! - a route to each PodCIDR: tunnel mode `PodCIDR dev ciliate_host src
//!   <router> mtu <pod mtu>` (from_host encapsulates what the node itself
//!   sends there); native mode with `autoDirectNodeRoutes` `PodCIDR via
//!   <InternalIP> dev <native device>`.
//!
//! Every change recomputes the whole desired state from the known nodes and
//! writes the difference (routes with replace, so writing twice is harmless).
//! Entries left by an earlier run (pinned maps and routes outlive the agent)
//! are removed only after the first complete list from the store (`Synced`),
//! never while the store is away. An object that cannot be used (undecodable,
//! no InternalIP, a PodCIDR that is not a network or overlaps this node's) is
//! logged and skipped; if it was usable before, what it said is removed. The kernel decides nothing: this is the whole story.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{LpmTrie, MapData};
use ciliate_api::Node;
use ciliate_datapath::maps::{ipcache_key, IpcacheValue, IDENTITY_HOST, IPCACHE_F_HOST};
use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_store::{CiliateNode, Event, Store};
use futures_util::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::addressing::{NativeDevice, PodNetwork};
use crate::config::RoutingMode;
use crate::error::is_not_found;
use crate::kvstore::Cluster;

/// Cilium's reserved identity of other nodes.
pub const REMOTE_NODE_IDENTITY: u32 = 6;
/// The identity of pods until policy assigns them one (the datapath config's
/// `identity`, carried in the VNI).
pub const POD_IDENTITY: u32 = 0;

/// The file in `stateDir` listing the node routes this agent made, so that a
/// later run can remove those no longer wanted.
pub const ROUTES_FILE: &str = "node-routes.json";

/// What the node manager needs to know about this node.
#[derive(Clone, Debug)]
pub struct Settings {
    pub local_name: String,
    pub routing_mode: RoutingMode,
    pub auto_direct_node_routes: bool,
    pub pod: PodNetwork,
    pub pod_mtu: u32,
    /// ifindex of `ciliate_host`.
    pub host_ifindex: u32,
    pub native: Option<NativeDevice>,
    pub state_dir: PathBuf,
}

/// Another node, as far as routing to it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    pub internal_ip: Ipv4Addr,
    pub ciliate_internal_ip: Option<Ipv4Addr>,
    pub health_ip: Option<Ipv4Addr>,
    pub pod_cidrs: Vec<Ipv4Net>,
}

impl RemoteNode {
    pub fn api(&self) -> Node {
        Node {
            name: self.name.clone(),
            internal_ip: Some(self.internal_ip),
            ciliate_internal_ip: self.ciliate_internal_ip,
            health_ip: self.health_ip,
            pod_cidrs: self.pod_cidrs.clone(),
            local: false,
        }
    }
}

/// Checks another node's object; the error says why it cannot be used.
pub fn parse_remote(node: &CiliateNode, settings: &Settings) -> Result<RemoteNode, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let internal_ip = match node.internal_ip() {
        Some(IpAddr::V4(ip)) => ip,
        Some(IpAddr::V6(ip)) => return Err(format!("its InternalIP {ip} is not IPv4")),
        None => return Err("it has no InternalIP address".into()),
    };
    if internal_ip.is_unspecified() || internal_ip.is_loopback() || internal_ip.is_multicast() {
        return Err(format!(
            "its InternalIP {internal_ip} is not a unicast address"
        ));
    }
    if settings.native.as_ref().map(|n| n.ip) == Some(internal_ip) {
        return Err(format!(
            "its InternalIP {internal_ip} is this node's own address"
        ));
    }
    let ciliate_internal_ip = match node.ciliate_internal_ip() {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    let mut pod_cidrs = Vec::new();
    for cidr in &node.spec.ipam.pod_cidrs {
        let IpNet::V4(net) = cidr else {
            continue; // IPv6 is not routed yet
        };
        if net.network() != net.addr() {
            return Err(format!("its PodCIDR {net} is not a network address"));
        }
        if net.prefix_len() < 8 {
            return Err(format!(
                "its PodCIDR {net} is wider than /8 and would capture foreign traffic"
            ));
        }
        if net.contains(&settings.pod.cidr) || settings.pod.cidr.contains(net) {
            return Err(format!(
                "its PodCIDR {net} overlaps this node's PodCIDR {}",
                settings.pod.cidr
            ));
        }
        pod_cidrs.push(*net);
    }
    Ok(RemoteNode {
        name,
        internal_ip,
        ciliate_internal_ip,
        health_ip: node.spec.health.ipv4,
        pod_cidrs,
    })
}

/// The ipcache entries and routes that `nodes` call for. Nodes are taken in
/// name order; a prefix two nodes claim goes to the first (reported in `conflicts`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub ipcache: BTreeMap<Ipv4Net, IpcacheValue>,
    pub routes: BTreeMap<Ipv4Net, Route>,
    pub conflicts: BTreeSet<Ipv4Net>,
}

fn ne(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn desired(settings: &Settings, nodes: &BTreeMap<String, RemoteNode>) -> Desired {
    let mut out = Desired::default();
    let host = IpcacheValue {
        sec_identity: IDENTITY_HOST,
        tunnel_endpoint: 0,
        flags: IPCACHE_F_HOST,
        pad: 0,
    };
    // This node's own addresses: no tunnel, flagged as a node's.
    if let Some(native) = &settings.native {
        out.ipcache.insert(host_net(native.ip), host);
    }
    out.ipcache.insert(host_net(settings.pod.router), host);
    let tunnel = settings.routing_mode == RoutingMode::Tunnel;
    for node in nodes.values() {
        let endpoint = if tunnel { ne(node.internal_ip) } else { 0 };
        let claim = |net: Ipv4Net, value: IpcacheValue, out: &mut Desired| {
            if let std::collections::btree_map::Entry::Vacant(slot) = out.ipcache.entry(net) {
                slot.insert(value);
                true
            } else {
                out.conflicts.insert(net);
                false
            }
        };
        claim(
            host_net(node.internal_ip),
            IpcacheValue {
                sec_identity: REMOTE_NODE_IDENTITY,
                tunnel_endpoint: endpoint,
                flags: IPCACHE_F_HOST,
                pad: 0,
            },
            &mut out,
        );
        for cidr in &node.pod_cidrs {
            let value = IpcacheValue {
                sec_identity: POD_IDENTITY,
                tunnel_endpoint: endpoint,
                flags: 0,
                pad: 0,
            };
            if !claim(*cidr, value, &mut out) {
                continue;
            }
            let route = if tunnel {
                Some(Route {
                    dst: *cidr,
                    gateway: None,
                    oif: Some(settings.host_ifindex),
                    scope_link: true,
                    src: Some(settings.pod.router),
                    onlink: false,
                    mtu: Some(settings.pod_mtu),
                })
            } else if settings.auto_direct_node_routes {
                settings
                    .native
                    .as_ref()
                    .map(|native| Route::via(*cidr, node.internal_ip, native.ifindex))
            } else {
                None
            };
            if let Some(route) = route {
                out.routes.insert(*cidr, route);
            }
        }
    }
    out
}

fn host_net(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is valid")
}

/// A route as the routes file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRoute {
    pub dst: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

impl SavedRoute {
    fn of(route: &Route) -> Self {
        SavedRoute {
            dst: route.dst,
            gateway: route.gateway,
        }
    }
}

pub fn load_routes(dir: &Path) -> Vec<SavedRoute> {
    let path = dir.join(ROUTES_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "ignoring a corrupt routes file");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

fn save_routes(dir: &Path, routes: &[SavedRoute]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{ROUTES_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(routes).expect("routes serialize"),
    )?;
    std::fs::rename(&tmp, dir.join(ROUTES_FILE))
}

/// Owns the ipcache map and the node routes.
pub struct NodeManager {
    settings: Settings,
    ipcache_map: LpmTrie<MapData, u32, IpcacheValue>,
    nl: Netlink,
    cluster: Cluster,
    nodes: BTreeMap<String, RemoteNode>,
    /// What this run wrote and has not removed.
    ipcache: BTreeMap<Ipv4Net, IpcacheValue>,
    routes: BTreeMap<Ipv4Net, Route>,
    conflicts: BTreeSet<Ipv4Net>,
    synced: bool,
}

impl NodeManager {
    pub fn new(
        settings: Settings,
        ipcache_map: LpmTrie<MapData, u32, IpcacheValue>,
        nl: Netlink,
        cluster: Cluster,
    ) -> Self {
        Self {
            settings,
            ipcache_map,
            nl,
            cluster,
            nodes: BTreeMap::new(),
            ipcache: BTreeMap::new(),
            routes: BTreeMap::new(),
            conflicts: BTreeSet::new(),
            synced: false,
        }
    }

    pub fn handle(&mut self, event: Event<CiliateNode>) {
        match event {
            Event::Upsert(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                if name == self.settings.local_name {
                    return;
                }
                match parse_remote(&node, &self.settings) {
                    Ok(remote) => {
                        if self.nodes.get(&name) == Some(&remote) {
                            return;
                        }
                        info!(node = %name, ip = %remote.internal_ip, cidrs = ?remote.pod_cidrs, "node");
                        self.nodes.insert(name, remote);
                        self.apply(false);
                    }
                    Err(reason) => {
                        // What it said before is no longer true: forget it too.
                        if self.nodes.remove(&name).is_some() {
                            warn!(node = %name, "the CiliateNode cannot be used any more: {reason}; removing its routes and ipcache entries");
                            self.apply(false);
                        } else {
                            warn!(node = %name, "skipping the CiliateNode: {reason}");
                        }
                    }
                }
            }
            Event::Delete { name, .. } => {
                if self.nodes.remove(&name).is_some() {
                    info!(node = %name, "node gone");
                    self.apply(false);
                }
            }
            Event::Synced => {
                if !self.synced {
                    self.synced = true;
                    self.apply(false);
                    self.prune_stale();
                    info!(nodes = self.nodes.len(), "node list synced with the store");
                }
            }
        }
    }

    /// Writes everything again (repairs what someone else removed).
    pub fn resync(&mut self) {
        self.apply(true);
    }

    /// Brings the map and routes to the desired state; with `force`, writes
    /// entries that should already be there too.
    fn apply(&mut self, force: bool) {
        let want = desired(&self.settings, &self.nodes);
        for net in want.conflicts.difference(&self.conflicts) {
            warn!(prefix = %net, "two nodes claim this prefix; the first by name keeps it");
        }
        self.conflicts.clone_from(&want.conflicts);

        let stale: Vec<Ipv4Net> = self
            .ipcache
            .keys()
            .filter(|net| !want.ipcache.contains_key(net))
            .copied()
            .collect();
        for net in stale {
            match self.ipcache_map.remove(&ipcache_key(net)) {
                Ok(()) => {
                    debug!(prefix = %net, "ipcache entry removed");
                    self.ipcache.remove(&net);
                }
                Err(e) if is_not_found(&e) => {
                    self.ipcache.remove(&net);
                }
                Err(e) => warn!(prefix = %net, error = %e, "cannot remove the ipcache entry"),
            }
        }
        for (net, value) in &want.ipcache {
            if !force && self.ipcache.get(net) == Some(value) {
                continue;
            }
            match self.ipcache_map.insert(&ipcache_key(*net), *value, 0) {
                Ok(()) => {
                    debug!(prefix = %net, tunnel = ?value.tunnel_endpoint(), "ipcache entry written");
                    self.ipcache.insert(*net, *value);
                }
                Err(e) => warn!(prefix = %net, error = %e, "cannot write the ipcache entry"),
            }
        }

        let before = self.saved_routes();
        // The file names every route before it exists: a crash between the
        // two then leaves nothing the next run's prune_stale cannot find.
        let mut intent = before.clone();
        for route in want.routes.values() {
            let saved = SavedRoute::of(route);
            if !intent.contains(&saved) {
                intent.push(saved);
            }
        }
        if intent != before {
            self.save_route_list(&intent);
        }
        // A changed route is replaced in place below; only gone ones are deleted.
        let stale: Vec<Route> = self
            .routes
            .iter()
            .filter(|(net, _)| !want.routes.contains_key(net))
            .map(|(_, route)| route.clone())
            .collect();
        for route in stale {
            match self.nl.del_route(&route) {
                Ok(()) => info!(route = %route, "node route removed"),
                Err(e) if e.is_not_found() => {}
                Err(e) => warn!(error = %e, "cannot remove a node route"),
            }
            self.routes.remove(&route.dst);
        }
        for (net, route) in &want.routes {
            if !force && self.routes.get(net) == Some(route) {
                continue;
            }
            match self.nl.replace_route(route) {
                Ok(()) => {
                    if self.routes.get(net) != Some(route) {
                        info!(route = %route, "node route");
                    }
                    self.routes.insert(*net, route.clone());
                }
                Err(e) => warn!(error = %e, "cannot write a node route"),
            }
        }
        if intent != self.saved_routes() {
            self.save_routes();
        }

        let list: Vec<Node> = self.nodes.values().map(RemoteNode::api).collect();
        self.cluster.nodes.send_if_modified(|current| {
            if *current == list {
                false
            } else {
                *current = list;
                true
            }
        });
    }

    fn saved_routes(&self) -> Vec<SavedRoute> {
        self.routes.values().map(SavedRoute::of).collect()
    }

    fn save_routes(&self) {
        self.save_route_list(&self.saved_routes());
    }

    fn save_route_list(&self, routes: &[SavedRoute]) {
        if let Err(e) = save_routes(&self.settings.state_dir, routes) {
            warn!(error = %e, "cannot save the node routes file");
        }
    }

    /// Removes ipcache entries and node routes that no known node calls for:
    /// what an earlier run left behind.
    fn prune_stale(&mut self) {
        let want = desired(&self.settings, &self.nodes);
        let keys: Vec<Key<u32>> = self.ipcache_map.keys().filter_map(Result::ok).collect();
        for key in keys {
            let ip = Ipv4Addr::from(key.data().to_ne_bytes());
            let Ok(net) = Ipv4Net::new(ip, key.prefix_len() as u8) else {
                continue;
            };
            if !want.ipcache.contains_key(&net) {
                match self.ipcache_map.remove(&key) {
                    Ok(()) => info!(prefix = %net, "removed a stale ipcache entry"),
                    Err(e) => {
                        warn!(prefix = %net, error = %e, "cannot remove a stale ipcache entry");
                    }
                }
            }
        }
        let saved = load_routes(&self.settings.state_dir);
        let routes = match self.nl.routes() {
            Ok(routes) => routes,
            Err(e) => {
                warn!(error = %e, "cannot list routes to remove stale ones");
                return;
            }
        };
        for route in routes {
            let on_host_device = route.oif == Some(self.settings.host_ifindex)
                && route.dst.prefix_len() < 32
                && route.dst != self.settings.pod.cidr;
            let made_before = saved
                .iter()
                .any(|s| s.dst == route.dst && s.gateway == route.gateway);
            if (on_host_device || made_before) && !want.routes.contains_key(&route.dst) {
                match self.nl.del_route(&route) {
                    Ok(()) => info!(route = %route, "removed a stale node route"),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => warn!(error = %e, "cannot remove a stale node route"),
                }
            }
        }
        self.save_routes();
    }
}

/// Runs the node manager until `stopping` turns true.
pub async fn run(
    store: Store,
    mut manager: NodeManager,
    endpoints: Vec<String>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut events = store.watch::<CiliateNode>();
    let mut resync = tokio::time::interval(Duration::from_mins(1));
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    loop {
        let event = tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            event = events.next() => match event {
                Some(Ok(event)) => Some(event),
                Some(Err(e)) => {
                    manager.cluster.report_error(&endpoints, "watching CiliateNodes (skipped)", &e);
                    continue;
                }
                None => return,
            },
            _ = resync.tick() => None,
        };
        // Netlink and map syscalls: keep them off the async workers' queue.
        tokio::task::block_in_place(|| match event {
            Some(event) => manager.handle(event),
            None => manager.resync(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_store::AddressType;

    fn settings(mode: RoutingMode, direct: bool) -> Settings {
        Settings {
            local_name: "node0".into(),
            routing_mode: mode,
            auto_direct_node_routes: direct,
            pod: PodNetwork::new("172.20.0.0/24".parse().unwrap(), "test").unwrap(),
            pod_mtu: 1450,
            host_ifindex: 7,
            native: Some(NativeDevice {
                name: "eth0".into(),
                ifindex: 2,
                ip: "192.168.10.100".parse().unwrap(),
            }),
            state_dir: "/nonexistent".into(),
        }
    }

    fn object(name: &str, ip: &str, cidrs: &[&str]) -> CiliateNode {
        let mut node = CiliateNode::new(name);
        node.set_address(AddressType::InternalIp, ip.parse().unwrap());
        node.spec.ipam.pod_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        node
    }

    fn nodes(s: &Settings, objects: &[CiliateNode]) -> BTreeMap<String, RemoteNode> {
        objects
            .iter()
            .map(|o| {
                let r = parse_remote(o, s).unwrap();
                (r.name.clone(), r)
            })
            .collect()
    }

    #[test]
    fn tunnel_mode_entries_and_routes() {
        let s = settings(RoutingMode::Tunnel, false);
        let want = desired(
            &s,
            &nodes(&s, &[object("node1", "192.168.10.101", &["172.20.1.0/24"])]),
        );
        let remote = want.ipcache[&"172.20.1.0/24".parse().unwrap()];
        assert_eq!(
            remote.tunnel_endpoint(),
            Some("192.168.10.101".parse().unwrap())
        );
        assert_eq!(remote.sec_identity, POD_IDENTITY);
        let node_ip = want.ipcache[&"192.168.10.101/32".parse().unwrap()];
        assert_eq!(node_ip.sec_identity, REMOTE_NODE_IDENTITY);
        assert_eq!(node_ip.flags, IPCACHE_F_HOST);
        assert_eq!(
            node_ip.tunnel_endpoint(),
            Some("192.168.10.101".parse().unwrap())
        );
        // This node's own addresses, without a tunnel.
        let own = want.ipcache[&"192.168.10.100/32".parse().unwrap()];
        assert_eq!(
            (own.sec_identity, own.tunnel_endpoint()),
            (IDENTITY_HOST, None)
        );
        assert!(want.ipcache.contains_key(&"172.20.0.1/32".parse().unwrap()));
        assert_eq!(want.ipcache.len(), 4);
        let route = &want.routes[&"172.20.1.0/24".parse().unwrap()];
        assert_eq!(
            (route.oif, route.src, route.mtu, route.gateway),
            (
                Some(7),
                Some("172.20.0.1".parse().unwrap()),
                Some(1450),
                None
            )
        );
    }

    #[test]
    fn native_mode_routes_only_with_direct_routes() {
        let objects = [object("node1", "192.168.10.101", &["172.20.1.0/24"])];
        let s = settings(RoutingMode::Native, true);
        let want = desired(&s, &nodes(&s, &objects));
        assert_eq!(
            want.ipcache[&"172.20.1.0/24".parse().unwrap()].tunnel_endpoint(),
            None
        );
        assert_eq!(
            want.routes[&"172.20.1.0/24".parse().unwrap()],
            Route::via(
                "172.20.1.0/24".parse().unwrap(),
                "192.168.10.101".parse().unwrap(),
                2
            )
        );
        let s = settings(RoutingMode::Native, false);
        assert!(desired(&s, &nodes(&s, &objects)).routes.is_empty());
    }

    #[test]
    fn unusable_objects_are_refused_with_a_reason() {
        let s = settings(RoutingMode::Tunnel, false);
        let cases = [
            (CiliateNode::new("x"), "no InternalIP"),
            (object("x", "fd00::1", &[]), "not IPv4"),
            (object("x", "192.168.10.100", &[]), "own address"),
            (object("x", "0.0.0.0", &[]), "unicast"),
            (
                object("x", "192.168.10.9", &["172.20.1.5/24"]),
                "not a network",
            ),
            (object("x", "192.168.10.9", &["172.20.0.0/16"]), "overlaps"),
            (
                object("x", "192.168.10.9", &["172.20.0.128/25"]),
                "overlaps",
            ),
            (object("x", "192.168.10.9", &["0.0.0.0/0"]), "wider"),
        ];
        for (node, reason) in cases {
            let err = parse_remote(&node, &s).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
        // No PodCIDR yet (the operator has not got to it) is fine.
        let r = parse_remote(&object("x", "192.168.10.9", &[]), &s).unwrap();
        assert!(r.pod_cidrs.is_empty());
    }

    #[test]
    fn a_prefix_claimed_twice_goes_to_the_first() {
        let s = settings(RoutingMode::Tunnel, false);
        let want = desired(
            &s,
            &nodes(
                &s,
                &[
                    object("node1", "192.168.10.101", &["172.20.1.0/24"]),
                    object("node2", "192.168.10.102", &["172.20.1.0/24"]),
                ],
            ),
        );
        assert_eq!(
            want.ipcache[&"172.20.1.0/24".parse().unwrap()].tunnel_endpoint(),
            Some("192.168.10.101".parse().unwrap())
        );
        assert!(want.conflicts.contains(&"172.20.1.0/24".parse().unwrap()));
    }
}
