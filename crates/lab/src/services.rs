//! Services as the lab's "API server" and "endpointslice controller" treat
//! them: `lab apply` checks a Service the way the API server validates one,
//! gives it a clusterIP from [`SERVICE_CIDR`] and nodePorts from
//! [`NODE_PORT_MIN`]..=[`NODE_PORT_MAX`] when it has none (stable across
//! re-applies, refusing clashes), and for a Service with a selector writes
//! EndpointSlices from the lab's pods whose labels match. Everything lands in
//! the store, where the agents' service managers read it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ciliate_store::Pod;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::names;
use crate::state::LabLock;

/// Where clusterIPs come from (kube-apiserver's `--service-cluster-ip-range` default).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The NodePort range (kube-apiserver's `--service-node-port-range` default).
pub const NODE_PORT_MIN: i32 = 30000;
pub const NODE_PORT_MAX: i32 = 32767;
/// The label joining an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Who manages an EndpointSlice; the lab rewrites and deletes only its own.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.ciliate-lab";

/// The service CIDR as a network.
pub fn service_cidr() -> Ipv4Net {
    SERVICE_CIDR.parse().expect("a valid CIDR")
}

fn invalid(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    allowed: impl Into<String>,
) -> LabError {
    LabError::Invalid {
        field: field.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// `namespace/name` of any object.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The Service's type, `ClusterIP` when unset.
pub fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn wants_node_ports(svc: &Service) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc
            .spec
            .as_ref()
            .and_then(|s| s.allocate_load_balancer_node_ports)
            .unwrap_or(true),
        _ => false,
    }
}

fn protocol(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// Checks a Service as the API server would (the parts the lab and the agents
/// use). `namespace` and `name` are already set and valid.
pub fn validate_service(svc: &Service) -> Result<()> {
    let spec = svc.spec.clone().unwrap_or_default();
    let ty = service_type(svc);
    if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(invalid(
            "spec.type",
            ty,
            "ClusterIP, NodePort or LoadBalancer (ExternalName has no datapath)",
        ));
    }
    match spec.cluster_ip.as_deref() {
        None | Some("" | "None") => {}
        Some(ip) => {
            let parsed: Ipv4Addr = ip
                .parse()
                .map_err(|_| invalid("spec.clusterIP", ip, "an IPv4 address, \"None\" or unset"))?;
            if !service_cidr().contains(&parsed) {
                return Err(invalid(
                    "spec.clusterIP",
                    ip,
                    format!("an address in the service CIDR {SERVICE_CIDR}"),
                ));
            }
        }
    }
    if spec.cluster_ip.as_deref() == Some("None") && ty != "ClusterIP" {
        return Err(invalid(
            "spec.clusterIP",
            "None",
            "a headless service (clusterIP: None) must be of type ClusterIP",
        ));
    }
    let ports = spec.ports.unwrap_or_default();
    if ports.is_empty() {
        return Err(invalid("spec.ports", "[]", "at least one port"));
    }
    let mut seen_names = BTreeSet::new();
    let mut seen_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        if !(1..=65535).contains(&p.port) {
            return Err(invalid(field("port"), p.port, "1 to 65535"));
        }
        let proto = protocol(p);
        if !matches!(proto, "TCP" | "UDP") {
            return Err(invalid(field("protocol"), proto, "TCP or UDP"));
        }
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => {
                return Err(invalid(
                    field("name"),
                    "",
                    "a name: every port of a multi-port service needs one",
                ))
            }
            None | Some("") => {}
            Some(name) => {
                names::validate_namespace(&field("name"), name)?;
                if !seen_names.insert(name.to_string()) {
                    return Err(invalid(field("name"), name, "a name no other port has"));
                }
            }
        }
        if !seen_ports.insert((p.port, proto.to_string())) {
            return Err(invalid(
                field("port"),
                format!("{}/{proto}", p.port),
                "a port and protocol no other port of the service has",
            ));
        }
        match &p.target_port {
            None => {}
            Some(IntOrString::Int(n)) if (1..=65535).contains(n) => {}
            Some(IntOrString::Int(n)) => {
                return Err(invalid(field("targetPort"), n, "1 to 65535 or a port name"))
            }
            Some(IntOrString::String(s)) => names::validate_namespace(&field("targetPort"), s)?,
        }
        if let Some(np) = p.node_port {
            if !wants_node_ports(svc) {
                return Err(invalid(
                    field("nodePort"),
                    np,
                    format!("unset: type {ty} has no node ports"),
                ));
            }
            if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&np) {
                return Err(invalid(
                    field("nodePort"),
                    np,
                    format!("{NODE_PORT_MIN} to {NODE_PORT_MAX}, or unset to get a free one"),
                ));
            }
        }
    }
    Ok(())
}

fn hash(text: &str) -> u32 {
    let d = Sha256::digest(text.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The clusterIP a service has (None for headless or unset).
pub fn cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    svc.spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
}

/// Node ports in use by a service.
fn node_ports(svc: &Service) -> impl Iterator<Item = i32> + '_ {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| p.node_port)
}

/// Gives a validated Service what the API server would: a clusterIP (the one
/// it had, `previous`, if any; else a free one) and nodePorts for NodePort and
/// LoadBalancer ports without one (the port's previous one, else free).
/// Given values that another service (`others`) has are refused.
pub fn assign(svc: &Service, previous: Option<&Service>, others: &[Service]) -> Result<Service> {
    let key = key_of(&svc.metadata);
    let mut out = svc.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    let taken_ips: BTreeMap<Ipv4Addr, String> = others
        .iter()
        .filter_map(|o| cluster_ip(o).map(|ip| (ip, key_of(&o.metadata))))
        .collect();
    match spec.cluster_ip.as_deref() {
        Some("None") => spec.cluster_ips = Some(vec!["None".into()]),
        Some(ip) if !ip.is_empty() => {
            let parsed: Ipv4Addr = ip
                .parse()
                .map_err(|_| invalid("spec.clusterIP", ip, "an IPv4 address, \"None\" or unset"))?;
            if let Some(owner) = taken_ips.get(&parsed) {
                return Err(invalid(
                    format!("spec.clusterIP of service {key}"),
                    ip,
                    format!("an address no other service has ({owner} has it); or leave it unset to get a free one"),
                ));
            }
            spec.cluster_ips = Some(vec![ip.to_string()]);
        }
        _ => {
            let kept = previous
                .and_then(cluster_ip)
                .filter(|ip| !taken_ips.contains_key(ip));
            let ip = match kept {
                Some(ip) => ip,
                None => free_cluster_ip(&key, &taken_ips)?,
            };
            spec.cluster_ip = Some(ip.to_string());
            spec.cluster_ips = Some(vec![ip.to_string()]);
        }
    }
    if !wants_node_ports(svc) {
        return Ok(out);
    }
    let mut taken: BTreeMap<i32, String> = others
        .iter()
        .flat_map(|o| node_ports(o).map(|p| (p, key_of(&o.metadata))))
        .collect();
    let ports = spec.ports.get_or_insert_with(Vec::new);
    // Given ones first, so a free pick never takes one the service asks for.
    for (i, p) in ports.iter().enumerate() {
        if let Some(np) = p.node_port {
            if let Some(owner) = taken.get(&np) {
                if *owner != key {
                    return Err(invalid(
                        format!("spec.ports[{i}].nodePort of service {key}"),
                        np,
                        format!("a node port no other service has ({owner} has it); or leave it unset to get a free one"),
                    ));
                }
            }
            taken.insert(np, key.clone());
        }
    }
    let before: Vec<ServicePort> = previous
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    for p in ports.iter_mut().filter(|p| p.node_port.is_none()) {
        let same = |b: &&ServicePort| {
            protocol(b) == protocol(p)
                && (b.name.is_some() && b.name == p.name || b.name.is_none() && b.port == p.port)
        };
        let kept = before
            .iter()
            .find(same)
            .and_then(|b| b.node_port)
            .filter(|np| !taken.contains_key(np));
        let np = match kept {
            Some(np) => np,
            None => free_node_port(&format!("{key}/{}/{}", protocol(p), p.port), &taken)?,
        };
        taken.insert(np, key.clone());
        p.node_port = Some(np);
    }
    Ok(out)
}

/// A free clusterIP, starting at a place derived from the service's name (so
/// the same service gets the same address in every lab), skipping the
/// network's first two (the second is the `kubernetes` service's) and last.
fn free_cluster_ip(key: &str, taken: &BTreeMap<Ipv4Addr, String>) -> Result<Ipv4Addr> {
    let net = service_cidr();
    let base = u32::from(net.network());
    let span = (1u32 << (32 - net.prefix_len())) - 3;
    let start = hash(key) % span;
    (0..span)
        .map(|i| Ipv4Addr::from(base + 2 + (start + i) % span))
        .find(|ip| !taken.contains_key(ip))
        .ok_or_else(|| {
            invalid(
                "spec.clusterIP",
                "",
                format!("a free address: {SERVICE_CIDR} is full"),
            )
        })
}

fn free_node_port(seed: &str, taken: &BTreeMap<i32, String>) -> Result<i32> {
    let span = (NODE_PORT_MAX - NODE_PORT_MIN + 1) as u32;
    let start = hash(seed) % span;
    (0..span)
        .map(|i| NODE_PORT_MIN + ((start + i) % span) as i32)
        .find(|p| !taken.contains_key(p))
        .ok_or_else(|| {
            invalid(
                "nodePort",
                "",
                format!("a free node port: {NODE_PORT_MIN}-{NODE_PORT_MAX} are all taken"),
            )
        })
}

/// Checks an EndpointSlice someone wrote (the lab stores it as given).
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Result<()> {
    if slice.address_type != "IPv4" {
        return Err(invalid(
            "addressType",
            &slice.address_type,
            "IPv4 (the datapath is IPv4 only)",
        ));
    }
    for (i, e) in slice.endpoints.iter().enumerate() {
        if e.addresses.is_empty() {
            return Err(invalid(
                format!("endpoints[{i}].addresses"),
                "[]",
                "at least one address",
            ));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            a.parse::<Ipv4Addr>().map_err(|_| {
                invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    a,
                    "an IPv4 address",
                )
            })?;
        }
    }
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        if let Some(n) = p.port {
            if !(1..=65535).contains(&n) {
                return Err(invalid(format!("ports[{i}].port"), n, "1 to 65535"));
            }
        }
        if let Some(proto) = p.protocol.as_deref() {
            if !matches!(proto, "TCP" | "UDP") {
                return Err(invalid(format!("ports[{i}].protocol"), proto, "TCP or UDP"));
            }
        }
    }
    if slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .is_none()
    {
        return Err(invalid(
            format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
            "",
            "the name of the service the slice belongs to",
        ));
    }
    Ok(())
}

fn matches_selector(pod: &Pod, selector: &BTreeMap<String, String>) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod's port for a service port: `targetPort` (a number, or a name
/// looked up in the pod's containers), else `port`. None when the name is
/// not a port of the pod (the pod is then no endpoint for that port).
fn target_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| {
                cp.name.as_deref() == Some(name.as_str())
                    && cp.protocol.as_deref().unwrap_or("TCP") == protocol(port)
            })
            .map(|cp| cp.container_port),
    }
}

/// A service port resolved for one pod: (name, protocol, the pod's port).
type ResolvedPort = (Option<String>, String, i32);

/// What the endpointslice controller would write for `svc` from `pods` (the
/// store's): one slice per distinct set of resolved ports, endpoints sorted
/// by pod name, with `ready` (pod ready and not terminating), `serving` (pod
/// ready) and `terminating` (deletion timestamp) conditions and `nodeName`.
/// A service without selector gets none (its slices are written by hand); one
/// with a selector and no pods gets one empty slice.
pub fn endpoint_slices(svc: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let selector = spec.selector.clone().unwrap_or_default();
    if selector.is_empty() {
        return Vec::new();
    }
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| matches_selector(p, &selector))
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let resolved: Vec<ResolvedPort> = ports
            .iter()
            .filter_map(|p| {
                target_port(pod, p).map(|t| (p.name.clone(), protocol(p).to_string(), t))
            })
            .collect();
        if resolved.is_empty() {
            continue;
        }
        let pod_ready = pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "Ready")
            .is_none_or(|c| c.status == "True");
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = if publish_not_ready {
            true
        } else {
            pod_ready && !terminating
        };
        groups.entry(resolved).or_default().push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(pod_ready || publish_not_ready),
                terminating: Some(terminating),
            }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(namespace.clone()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        });
    }
    let labels = BTreeMap::from([
        (LABEL_SERVICE_NAME.to_string(), name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    let slice = |suffix: &str, ports: Option<Vec<EndpointPort>>, endpoints| EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{suffix}")),
            namespace: Some(namespace.clone()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports,
    };
    if groups.is_empty() {
        // The controller's placeholder: the service exists, nothing serves it.
        return vec![slice("empty", None, Vec::new())];
    }
    groups
        .into_iter()
        .map(|(resolved, endpoints)| {
            let mut id = String::new();
            for (n, proto, port) in &resolved {
                let _ = write!(id, "{}/{proto}/{port},", n.as_deref().unwrap_or(""));
            }
            let suffix = format!("{:05x}", hash(&id) & 0xf_ffff);
            let ports = resolved
                .into_iter()
                .map(|(name, proto, port)| EndpointPort {
                    name: Some(name.unwrap_or_default()),
                    port: Some(port),
                    protocol: Some(proto),
                    app_protocol: None,
                })
                .collect();
            slice(&suffix, Some(ports), endpoints)
        })
        .collect()
}

/// Whether two slices say the same (metadata other than name and labels aside).
fn same_slice(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.metadata.labels == b.metadata.labels
        && a.address_type == b.address_type
        && a.endpoints == b.endpoints
        && a.ports == b.ports
}

fn is_managed(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY)
}

/// What applying a Service or EndpointSlice did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Updated => "configured",
            Self::Unchanged => "unchanged",
        })
    }
}

/// What the store holds about services, read in one go.
struct Snapshot {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    pods: Vec<Pod>,
}

impl Lab {
    fn snapshot(&self) -> Result<Snapshot> {
        self.with_store(|store| async move {
            let services = store.list::<Service>().await?.items;
            let slices = store.list::<EndpointSlice>().await?.items;
            let pods = store.list::<Pod>().await?.items;
            Ok(Snapshot {
                services,
                slices,
                pods,
            })
        })
    }

    /// The Services in the store.
    pub fn list_services(&self) -> Result<Vec<Service>> {
        self.with_store(|store| async move { Ok(store.list::<Service>().await?.items) })
    }

    /// The EndpointSlices in the store.
    pub fn list_endpoint_slices(&self) -> Result<Vec<EndpointSlice>> {
        self.with_store(|store| async move { Ok(store.list::<EndpointSlice>().await?.items) })
    }

    /// A Service from the store by `namespace/name` (or `name` in `default`).
    pub fn service(&self, name: &str) -> Result<Option<Service>> {
        let (ns, name) = name.split_once('/').unwrap_or(("default", name));
        let (ns, name) = (ns.to_string(), name.to_string());
        self.with_store(move |store| async move { store.get::<Service>(Some(&ns), &name).await })
    }

    /// Writes a Service (validated by the manifest reader) with its clusterIP
    /// and nodePorts assigned, then its EndpointSlices.
    pub fn apply_service(&mut self, svc: &Service) -> Result<(Service, Change)> {
        let _lock = LabLock::acquire(self.dir())?;
        self.reload()?;
        let key = key_of(&svc.metadata);
        let snapshot = self.snapshot()?;
        let (previous, others): (Vec<Service>, Vec<Service>) = snapshot
            .services
            .into_iter()
            .partition(|s| key_of(&s.metadata) == key);
        let previous = previous.into_iter().next();
        let mut assigned = assign(svc, previous.as_ref(), &others)?;
        assigned.metadata.resource_version = None;
        let change = match &previous {
            None => Change::Created,
            Some(p) => {
                let mut p = p.clone();
                p.metadata.resource_version = None;
                if p == assigned {
                    Change::Unchanged
                } else {
                    Change::Updated
                }
            }
        };
        if change != Change::Unchanged {
            let object = assigned.clone();
            assigned = self.with_store(move |store| async move { store.put(&object).await })?;
        }
        let mut services = others;
        services.push(assigned.clone());
        self.write_slices(&services, &snapshot.slices, &snapshot.pods)?;
        Ok((assigned, change))
    }

    /// Writes an EndpointSlice as given (for services without selector).
    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice) -> Result<Change> {
        let _lock = LabLock::acquire(self.dir())?;
        let (ns, name) = (
            slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            slice.metadata.name.clone().unwrap_or_default(),
        );
        let mut object = slice.clone();
        object.metadata.namespace = Some(ns.clone());
        object.metadata.resource_version = None;
        self.with_store(move |store| async move {
            let before = store.get::<EndpointSlice>(Some(&ns), &name).await?;
            let change = match before {
                None => Change::Created,
                Some(b) if same_slice(&b, &object) => return Ok(Change::Unchanged),
                Some(_) => Change::Updated,
            };
            store.put(&object).await?;
            Ok(change)
        })
    }

    /// Deletes a Service and the slices the lab made for it; false if it did not exist.
    pub fn delete_service(&mut self, name: &str) -> Result<bool> {
        let _lock = LabLock::acquire(self.dir())?;
        let (ns, name) = name.split_once('/').unwrap_or(("default", name));
        let (ns, name) = (ns.to_string(), name.to_string());
        self.with_store(move |store| async move {
            let existed = store.delete::<Service>(Some(&ns), &name).await?;
            for slice in store.list::<EndpointSlice>().await?.items {
                let ours = is_managed(&slice)
                    && slice.metadata.namespace.as_deref() == Some(ns.as_str())
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_SERVICE_NAME))
                        == Some(&name);
                if ours {
                    let slice_name = slice.metadata.name.clone().unwrap_or_default();
                    store
                        .delete::<EndpointSlice>(Some(&ns), &slice_name)
                        .await?;
                }
            }
            Ok(existed)
        })
    }

    /// Deletes an EndpointSlice; false if it did not exist.
    pub fn delete_endpoint_slice(&mut self, name: &str) -> Result<bool> {
        let _lock = LabLock::acquire(self.dir())?;
        let (ns, name) = name.split_once('/').unwrap_or(("default", name));
        let (ns, name) = (ns.to_string(), name.to_string());
        self.with_store(move |store| async move {
            store.delete::<EndpointSlice>(Some(&ns), &name).await
        })
    }

    /// Rewrites the EndpointSlices of every Service with a selector from the
    /// pods in the store. The caller holds the lab lock.
    pub(crate) fn sync_endpoint_slices(&self) -> Result<()> {
        let snapshot = self.snapshot()?;
        self.write_slices(&snapshot.services, &snapshot.slices, &snapshot.pods)
    }

    fn write_slices(
        &self,
        services: &[Service],
        existing: &[EndpointSlice],
        pods: &[Pod],
    ) -> Result<()> {
        let wanted: Vec<EndpointSlice> = services
            .iter()
            .flat_map(|s| endpoint_slices(s, pods))
            .collect();
        let wanted_keys: BTreeSet<String> = wanted.iter().map(|s| key_of(&s.metadata)).collect();
        let put: Vec<EndpointSlice> = wanted
            .into_iter()
            .filter(|w| {
                !existing
                    .iter()
                    .any(|e| key_of(&e.metadata) == key_of(&w.metadata) && same_slice(e, w))
            })
            .collect();
        let delete: Vec<(String, String)> = existing
            .iter()
            .filter(|e| is_managed(e) && !wanted_keys.contains(&key_of(&e.metadata)))
            .map(|e| {
                (
                    e.metadata.namespace.clone().unwrap_or_default(),
                    e.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        if put.is_empty() && delete.is_empty() {
            return Ok(());
        }
        self.with_store(move |store| async move {
            // New slices before removing old ones: a backend never vanishes
            // between the two writes.
            for slice in &put {
                store.put(slice).await?;
            }
            for (ns, name) in &delete {
                store.delete::<EndpointSlice>(Some(ns), name).await?;
            }
            Ok(())
        })
    }
}

/// One frontend as an agent should program it (`GET /v1/service` spelling):
/// `10.96.0.10:80/TCP` or `0.0.0.0:30080/TCP`, with the `ip:port/PROTO` of
/// its active and terminating backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedFrontend {
    pub service: String,
    pub frontend: String,
    pub active: BTreeSet<String>,
    pub terminating: BTreeSet<String>,
}

/// The frontends of `svc` and their backends from `slices` (all of the
/// store's; those labelled for the service count), as PLAN.md's agent
/// semantics say: an endpoint is active when ready is true or unset,
/// terminating when serving and terminating, else ignored; ports match by name.
pub fn expected_frontends(svc: &Service, slices: &[EndpointSlice]) -> Vec<ExpectedFrontend> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let key = key_of(&svc.metadata);
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mine: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVICE_NAME))
                == Some(&name)
        })
        .collect();
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let proto = protocol(port);
        let port_name = port.name.clone().unwrap_or_default();
        let (mut active, mut terminating) = (BTreeSet::new(), BTreeSet::new());
        for slice in &mine {
            let Some(target) = slice.ports.iter().flatten().find(|p| {
                p.name.clone().unwrap_or_default() == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == proto
            }) else {
                continue;
            };
            let Some(target) = target.port else { continue };
            for e in &slice.endpoints {
                let c = e.conditions.clone().unwrap_or_default();
                let set = if c.ready.unwrap_or(true) {
                    &mut active
                } else if c.serving.unwrap_or(false) && c.terminating.unwrap_or(false) {
                    &mut terminating
                } else {
                    continue;
                };
                for a in &e.addresses {
                    set.insert(format!("{a}:{target}/{proto}"));
                }
            }
        }
        let mut frontends = Vec::new();
        if let Some(ip) = cluster_ip(svc) {
            frontends.push(format!("{ip}:{}/{proto}", port.port));
        }
        if let Some(np) = port.node_port {
            frontends.push(format!("0.0.0.0:{np}/{proto}"));
        }
        for frontend in frontends {
            out.push(ExpectedFrontend {
                service: key.clone(),
                frontend,
                active: active.clone(),
                terminating: terminating.clone(),
            });
        }
    }
    out
}

/// What an agent's `GET /v1/service` lacks compared with `want`, one line per
/// frontend; empty when it has it all.
pub fn service_differences(
    want: &[ExpectedFrontend],
    have: &[ciliate_api::ServiceEntry],
) -> Vec<String> {
    let mut problems = Vec::new();
    for w in want {
        let Some(entry) = have.iter().find(|h| h.frontend == w.frontend) else {
            problems.push(format!("{} ({}): no such frontend", w.frontend, w.service));
            continue;
        };
        let with_state = |state: &str| -> BTreeSet<String> {
            entry
                .backends
                .iter()
                .filter(|b| b.state == state)
                .map(|b| b.address.clone())
                .collect()
        };
        let (active, terminating) = (with_state("active"), with_state("terminating"));
        if active != w.active || terminating != w.terminating {
            problems.push(format!(
                "{} ({}): backends active {:?} terminating {:?}, want active {:?} terminating {:?}",
                w.frontend, w.service, active, terminating, w.active, w.terminating
            ));
        }
    }
    problems
}

impl Lab {
    /// Waits until every node's agent serves every Service of the store the
    /// way its EndpointSlices say (`GET /v1/service`); the error names what
    /// is still missing where. Services change asynchronously: call this
    /// after applying one, or after a pod's condition changed, before
    /// sending traffic.
    pub fn wait_services_programmed(&self, timeout: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let snapshot = self.snapshot()?;
            let want: Vec<ExpectedFrontend> = snapshot
                .services
                .iter()
                .flat_map(|s| expected_frontends(s, &snapshot.slices))
                .collect();
            let mut problems = Vec::new();
            for node in self.nodes() {
                let client = ciliate_api::Client::new(&node.socket);
                match client.get::<Vec<ciliate_api::ServiceEntry>>("/v1/service") {
                    Ok(have) => problems.extend(
                        service_differences(&want, &have)
                            .into_iter()
                            .map(|p| format!("{}: {p}", node.name)),
                    ),
                    Err(e) => problems.push(format!(
                        "{}: GET /v1/service: {}",
                        node.name,
                        ciliate_store::report(&e)
                    )),
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(LabError::Command {
                    what: format!(
                        "waiting {} s for the agents to program the services",
                        timeout.as_secs()
                    ),
                    argv: vec!["GET /v1/service".into()],
                    detail: problems.join("; "),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}
