//! What the store's Services and EndpointSlices ask of the datapath, as pure
//! functions: a Service becomes frontends (ClusterIP, NodePort wildcard,
//! externalIPs, load-balancer IPs, each per port), its EndpointSlices become
//! backends, and the traffic policies decide which backends each scope gets.
//! No map is touched here; `lbmap` writes the result.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ciliate_datapath::maps::{
    IPPROTO_TCP, IPPROTO_UDP, SVC_F_AFFINITY, SVC_F_CLUSTER_IP, SVC_F_EXTERNAL_IP,
    SVC_F_LOADBALANCER, SVC_F_NODEPORT, SVC_F_TWO_SCOPES,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The most Kubernetes allows for the affinity timeout (a day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;
/// The label that joins an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Backend slots are `u16`; slot 0 is the service itself.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// An address, port and protocol: a frontend or a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Addr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl L4Addr {
    pub fn new(ip: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self { ip, port, proto }
    }
}

/// `TCP`, `UDP` or the protocol number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

impl fmt::Display for L4Addr {
    /// `10.96.0.10:53/UDP`, as `cilium-dbg service list` writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, proto_name(self.proto))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    pub fn flag(self) -> u16 {
        match self {
            Self::ClusterIp => SVC_F_CLUSTER_IP,
            Self::NodePort => SVC_F_NODEPORT,
            Self::ExternalIp => SVC_F_EXTERNAL_IP,
            Self::LoadBalancer => SVC_F_LOADBALANCER,
        }
    }

    /// As `cilium-dbg service list` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIp => "ExternalIPs",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackendState {
    /// In the slots: new connections may pick it.
    Active,
    /// In the backends map only: established connections finish.
    Terminating,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Terminating => "terminating",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: L4Addr,
    pub state: BackendState,
    pub node_name: Option<String>,
}

/// One frontend and what each scope of it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// NodePort: the wildcard 0.0.0.0 (every node address).
    pub addr: L4Addr,
    pub kind: FrontendKind,
    /// `namespace/name`.
    pub service: String,
    /// `SVC_F_*`.
    pub flags: u16,
    /// Seconds; 0 without session affinity.
    pub affinity_timeout: u32,
    /// `Local` or `Cluster`: the policy that decides this frontend's
    /// EXTERNAL scope (externalTrafficPolicy, or internalTrafficPolicy for ClusterIP).
    pub traffic_policy: &'static str,
    /// Every backend the service has for this port, active and terminating,
    /// in address order.
    pub backends: Vec<Backend>,
    /// The EXTERNAL scope's slots.
    pub external: Vec<L4Addr>,
    /// The INTERNAL scope's slots, with `SVC_F_TWO_SCOPES`.
    pub internal: Option<Vec<L4Addr>>,
}

/// What the model needs to know about this node and the config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_name: String,
    /// `nodePort.range`, both ends included.
    pub node_port_range: (u16, u16),
}

/// A field of an object that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub value: String,
    pub allowed: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field {}: value {:?} is not allowed: {}",
            self.field, self.value, self.allowed
        )
    }
}

fn bad(
    field: impl Into<String>,
    value: impl fmt::Display,
    allowed: impl Into<String>,
) -> FieldError {
    FieldError {
        field: field.into(),
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// `namespace/name` of an object.
pub fn object_id(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `spec.ports[].name`, "" when unnamed.
    pub name: String,
    pub port: u16,
    pub proto: u8,
    pub node_port: Option<u16>,
}

/// A Service as far as the datapath cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedService {
    /// `namespace/name`.
    pub id: String,
    pub ports: Vec<ServicePort>,
    pub cluster_ips: Vec<Ipv4Addr>,
    /// Type NodePort or LoadBalancer: the ports' nodePorts are frontends.
    pub node_ports: bool,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` with its timeout.
    pub affinity_timeout: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
}

fn protocol(field: String, value: Option<&str>) -> Result<u8, FieldError> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(IPPROTO_TCP),
        "UDP" => Ok(IPPROTO_UDP),
        other => Err(bad(field, other, "TCP or UDP")),
    }
}

fn port_number(field: String, value: i32) -> Result<u16, FieldError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(field, value, "a port from 1 to 65535"))
}

/// An IPv4 address; IPv6 addresses are `None` (not programmed yet).
fn ipv4(field: String, text: &str) -> Result<Option<Ipv4Addr>, FieldError> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(_)) => Ok(None),
        Err(_) => Err(bad(field, text, "an IP address")),
    }
}

fn policy_is_local(field: &str, value: Option<&str>) -> Result<bool, FieldError> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(bad(field, other, "Cluster or Local")),
    }
}

/// Reads a Service; `Ok(None)` when it asks for nothing (ExternalName, no
/// spec). Any unusable field refuses the whole Service, naming the field.
pub fn parse_service(
    svc: &Service,
    settings: &Settings,
) -> Result<Option<ParsedService>, FieldError> {
    let id = object_id(&svc.metadata);
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    let node_ports = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => false,
        "NodePort" | "LoadBalancer" => true,
        "ExternalName" => return Ok(None),
        other => {
            return Err(bad(
                "spec.type",
                other,
                "ClusterIP, NodePort, LoadBalancer or ExternalName",
            ))
        }
    };
    let mut cluster_ips = Vec::new();
    let listed = spec.cluster_ips.clone().unwrap_or_default();
    let addresses: Vec<(String, &str)> = if listed.is_empty() {
        spec.cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip.as_str()))
            .collect()
    } else {
        listed
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect()
    };
    for (field, text) in addresses {
        // Headless: no virtual IP, clients use the endpoints directly.
        if text == "None" || text.is_empty() {
            continue;
        }
        if let Some(ip) = ipv4(field, text)? {
            cluster_ips.push(ip);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let proto = protocol(format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?;
        let port = port_number(format!("spec.ports[{i}].port"), p.port)?;
        let node_port = match p.node_port {
            Some(np) if node_ports => {
                let field = format!("spec.ports[{i}].nodePort");
                let np = port_number(field.clone(), np)?;
                let (min, max) = settings.node_port_range;
                if !(min..=max).contains(&np) {
                    return Err(bad(
                        field,
                        np,
                        format!("a port in nodePort.range {min}-{max}"),
                    ));
                }
                Some(np)
            }
            _ => None,
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port,
            proto,
            node_port,
        });
    }
    let mut external_ips = Vec::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        if let Some(ip) = ipv4(format!("spec.externalIPs[{i}]"), text)? {
            external_ips.push(ip);
        }
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        if let Some(text) = &entry.ip {
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            if let Some(ip) = ipv4(field, text)? {
                load_balancer_ips.push(ip);
            }
        }
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(secs) => Some(
                    u32::try_from(secs)
                        .ok()
                        .filter(|s| (1..=MAX_AFFINITY_TIMEOUT).contains(s))
                        .ok_or_else(|| {
                            bad(
                                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                                secs,
                                format!("seconds from 1 to {MAX_AFFINITY_TIMEOUT}"),
                            )
                        })?,
                ),
            }
        }
        Some(other) => return Err(bad("spec.sessionAffinity", other, "None or ClientIP")),
    };
    Ok(Some(ParsedService {
        id,
        ports,
        cluster_ips,
        node_ports,
        external_ips,
        load_balancer_ips,
        affinity_timeout,
        external_local: policy_is_local(
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?,
        internal_local: policy_is_local(
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?,
    }))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// "" when unnamed.
    pub name: String,
    pub port: u16,
    pub proto: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: Ipv4Addr,
    pub state: BackendState,
    pub node_name: Option<String>,
}

/// An EndpointSlice as far as the datapath cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSlice {
    /// `namespace/name` of the Service it belongs to.
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// Reads an EndpointSlice; `Ok(None)` when it belongs to no Service (no
/// `kubernetes.io/service-name` label) or holds no IPv4 addresses. Endpoints
/// neither ready nor serving-and-terminating are left out; an unusable field
/// refuses the whole slice, naming the field.
pub fn parse_slice(slice: &EndpointSlice) -> Result<Option<ParsedSlice>, FieldError> {
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    else {
        return Ok(None);
    };
    if slice.address_type != "IPv4" {
        return Ok(None);
    }
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(port) = p.port else {
            // No port: "all ports", which only headless services use.
            continue;
        };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            port: port_number(format!("ports[{i}].port"), port)?,
            proto: protocol(format!("ports[{i}].protocol"), p.protocol.as_deref())?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let conditions = ep.conditions.clone().unwrap_or_default();
        // Terminating endpoints are never new connections' (a terminating
        // endpoint is never ready), but keep serving established ones.
        let state = if conditions.terminating == Some(true) {
            if conditions.serving == Some(true) {
                BackendState::Terminating
            } else {
                continue;
            }
        } else if conditions.ready != Some(false) {
            BackendState::Active
        } else {
            continue;
        };
        // Consumers use the first address (the others are the same endpoint).
        let Some(text) = ep.addresses.first() else {
            return Err(bad(
                format!("endpoints[{i}].addresses"),
                "[]",
                "at least one IPv4 address",
            ));
        };
        let Ok(ip) = text.parse::<Ipv4Addr>() else {
            return Err(bad(
                format!("endpoints[{i}].addresses[0]"),
                text,
                "an IPv4 address (addressType IPv4)",
            ));
        };
        endpoints.push(SliceEndpoint {
            ip,
            state,
            node_name: ep.node_name.clone(),
        });
    }
    Ok(Some(ParsedSlice {
        service: format!("{namespace}/{service}"),
        ports,
        endpoints,
    }))
}

/// The backends of one service port: every slice's endpoints on the slice
/// port of the same name and protocol. An address in two slices counts once,
/// active if either says so.
fn port_backends(port: &ServicePort, slices: &[&ParsedSlice]) -> Vec<Backend> {
    let mut by_addr: BTreeMap<L4Addr, Backend> = BTreeMap::new();
    for slice in slices {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|sp| sp.name == port.name && sp.proto == port.proto)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let addr = L4Addr::new(ep.ip, sp.port, sp.proto);
            let backend = Backend {
                addr,
                state: ep.state,
                node_name: ep.node_name.clone(),
            };
            by_addr
                .entry(addr)
                .and_modify(|b| {
                    if backend.state < b.state {
                        *b = backend.clone();
                    }
                })
                .or_insert(backend);
        }
    }
    by_addr.into_values().collect()
}

/// Every frontend of a service with its backends and scopes.
pub fn frontends(
    svc: &ParsedService,
    slices: &[&ParsedSlice],
    settings: &Settings,
) -> Vec<Frontend> {
    let mut out = Vec::new();
    let affinity_flag = if svc.affinity_timeout.is_some() {
        SVC_F_AFFINITY
    } else {
        0
    };
    let policy = |local: bool| if local { "Local" } else { "Cluster" };
    for port in &svc.ports {
        let backends = port_backends(port, slices);
        let all: Vec<L4Addr> = backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .map(|b| b.addr)
            .take(MAX_BACKENDS)
            .collect();
        let local: Vec<L4Addr> = backends
            .iter()
            .filter(|b| {
                b.state == BackendState::Active
                    && b.node_name.as_deref() == Some(settings.node_name.as_str())
            })
            .map(|b| b.addr)
            .take(MAX_BACKENDS)
            .collect();
        let make = |addr: L4Addr, kind: FrontendKind| {
            let (external, internal, traffic_policy) = if kind == FrontendKind::ClusterIp {
                // A ClusterIP is only reached from inside: its one scope
                // follows internalTrafficPolicy.
                let slots = if svc.internal_local { &local } else { &all };
                (slots.clone(), None, policy(svc.internal_local))
            } else {
                match (svc.external_local, svc.internal_local) {
                    (false, false) => (all.clone(), None, "Cluster"),
                    (true, true) => (local.clone(), None, "Local"),
                    (true, false) => (local.clone(), Some(all.clone()), "Local"),
                    (false, true) => (all.clone(), Some(local.clone()), "Cluster"),
                }
            };
            let two_scopes = if internal.is_some() {
                SVC_F_TWO_SCOPES
            } else {
                0
            };
            Frontend {
                addr,
                kind,
                service: svc.id.clone(),
                flags: kind.flag() | affinity_flag | two_scopes,
                affinity_timeout: svc.affinity_timeout.unwrap_or(0),
                traffic_policy,
                backends: backends.clone(),
                external,
                internal,
            }
        };
        for ip in &svc.cluster_ips {
            out.push(make(
                L4Addr::new(*ip, port.port, port.proto),
                FrontendKind::ClusterIp,
            ));
        }
        if let (true, Some(np)) = (svc.node_ports, port.node_port) {
            out.push(make(
                L4Addr::new(Ipv4Addr::UNSPECIFIED, np, port.proto),
                FrontendKind::NodePort,
            ));
        }
        for ip in &svc.external_ips {
            out.push(make(
                L4Addr::new(*ip, port.port, port.proto),
                FrontendKind::ExternalIp,
            ));
        }
        for ip in &svc.load_balancer_ips {
            out.push(make(
                L4Addr::new(*ip, port.port, port.proto),
                FrontendKind::LoadBalancer,
            ));
        }
    }
    out
}

/// A frontend two services want; the first by name keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub frontend: L4Addr,
    pub kept: String,
    pub refused: String,
}

/// Every frontend of every service, services in name order; a frontend two
/// services claim goes to the first.
pub fn desired(
    services: &BTreeMap<String, ParsedService>,
    slices: &BTreeMap<String, ParsedSlice>,
    settings: &Settings,
) -> (BTreeMap<L4Addr, Frontend>, Vec<Conflict>) {
    let mut by_service: BTreeMap<&str, Vec<&ParsedSlice>> = BTreeMap::new();
    for slice in slices.values() {
        by_service.entry(&slice.service).or_default().push(slice);
    }
    let mut out: BTreeMap<L4Addr, Frontend> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (id, svc) in services {
        let slices = by_service.get(id.as_str()).map_or(&[][..], Vec::as_slice);
        for fe in frontends(svc, slices, settings) {
            match out.entry(fe.addr) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(fe);
                }
                std::collections::btree_map::Entry::Occupied(taken) => {
                    if taken.get().service != fe.service {
                        conflicts.push(Conflict {
                            frontend: fe.addr,
                            kept: taken.get().service.clone(),
                            refused: fe.service,
                        });
                    }
                }
            }
        }
    }
    (out, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            node_name: "node0".into(),
            node_port_range: (30000, 32767),
        }
    }

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn parse(yaml: &str) -> ParsedService {
        parse_service(&service(yaml), &settings()).unwrap().unwrap()
    }

    fn parse_s(yaml: &str) -> ParsedSlice {
        parse_slice(&slice(yaml)).unwrap().unwrap()
    }

    fn addr(text: &str, proto: u8) -> L4Addr {
        let (ip, port) = text.split_once(':').unwrap();
        L4Addr::new(ip.parse().unwrap(), port.parse().unwrap(), proto)
    }

    const TCP: u8 = IPPROTO_TCP;
    const UDP: u8 = IPPROTO_UDP;

    /// Two endpoints on node0, one on node1, one terminating, one not ready.
    const WEB_SLICE: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [172.20.0.5], conditions: {ready: true}, nodeName: node0}
- {addresses: [172.20.0.6], nodeName: node0}
- {addresses: [172.20.1.5], conditions: {ready: true}, nodeName: node1}
- {addresses: [172.20.1.6], conditions: {ready: false, serving: true, terminating: true}, nodeName: node1}
- {addresses: [172.20.1.7], conditions: {ready: false}, nodeName: node1}
- {addresses: [172.20.1.8], conditions: {ready: false, serving: false, terminating: true}, nodeName: node1}
";

    fn all_frontends(svc: &str, slices: &[&str]) -> BTreeMap<L4Addr, Frontend> {
        let services: BTreeMap<String, ParsedService> = [parse(svc)]
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let slices: BTreeMap<String, ParsedSlice> = slices
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), parse_s(s)))
            .collect();
        let (out, conflicts) = desired(&services, &slices, &settings());
        assert!(conflicts.is_empty());
        out
    }

    #[test]
    fn cluster_ip_multi_port_tcp_and_udp() {
        let fes = all_frontends(
            "
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
",
            &[WEB_SLICE],
        );
        assert_eq!(fes.len(), 2);
        let http = &fes[&addr("10.96.0.10:80", TCP)];
        assert_eq!(http.kind, FrontendKind::ClusterIp);
        assert_eq!(http.flags, SVC_F_CLUSTER_IP);
        assert_eq!(http.service, "shop/web");
        assert_eq!(
            http.external,
            vec![
                addr("172.20.0.5:8080", TCP),
                addr("172.20.0.6:8080", TCP),
                addr("172.20.1.5:8080", TCP)
            ]
        );
        assert_eq!(http.internal, None);
        // The terminating one is known (kept for established flows), the
        // not-ready and the terminating-not-serving ones are not.
        let states: Vec<(String, BackendState)> = http
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("172.20.0.5:8080/TCP".into(), BackendState::Active),
                ("172.20.0.6:8080/TCP".into(), BackendState::Active),
                ("172.20.1.5:8080/TCP".into(), BackendState::Active),
                ("172.20.1.6:8080/TCP".into(), BackendState::Terminating),
            ]
        );
        let dns = &fes[&addr("10.96.0.10:53", UDP)];
        assert_eq!(dns.external.len(), 3);
        assert!(dns
            .external
            .iter()
            .all(|b| b.port == 5353 && b.proto == UDP));
        assert_eq!(dns.addr.to_string(), "10.96.0.10:53/UDP");
    }

    #[test]
    fn ports_match_by_name_and_protocol() {
        // The slice has no port named "metrics": that frontend has no backends.
        let fes = all_frontends(
            "
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: metrics, port: 9090}, {name: dns, port: 53, protocol: TCP}]
",
            &[WEB_SLICE],
        );
        assert!(fes[&addr("10.96.0.10:9090", TCP)].external.is_empty());
        // "dns" exists in the slice, but for UDP only.
        assert!(fes[&addr("10.96.0.10:53", TCP)].external.is_empty());
    }

    #[test]
    fn unnamed_port_and_slices_of_other_services() {
        let other = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: x, namespace: shop, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{port: 9000}]
endpoints: [{addresses: [172.20.0.9]}]
";
        let mine = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: y, namespace: shop, labels: {kubernetes.io/service-name: single}}
addressType: IPv4
ports: [{port: 9000}]
endpoints: [{addresses: [172.20.0.8]}]
";
        let fes = all_frontends(
            "metadata: {name: single, namespace: shop}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 90}]}\n",
            &[other, mine],
        );
        assert_eq!(
            fes[&addr("10.96.0.11:90", TCP)].external,
            vec![addr("172.20.0.8:9000", TCP)]
        );
        // Same name in another namespace is another service.
        let elsewhere = mine.replace("namespace: shop", "namespace: other");
        let fes = all_frontends(
            "metadata: {name: single, namespace: shop}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 90}]}\n",
            &[&elsewhere],
        );
        assert!(fes[&addr("10.96.0.11:90", TCP)].external.is_empty());
        // No label: belongs to nothing.
        let unlabelled = slice(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: z, namespace: shop}\naddressType: IPv4\nendpoints: []\n",
        );
        assert_eq!(parse_slice(&unlabelled).unwrap(), None);
    }

    #[test]
    fn node_port_and_load_balancer_frontends() {
        let fes = all_frontends(
            "
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: [192.168.10.50]
  ports: [{name: http, port: 80, nodePort: 30080}]
status:
  loadBalancer: {ingress: [{ip: 192.168.10.60}, {hostname: lb.example}]}
",
            &[WEB_SLICE],
        );
        let kinds: Vec<(String, FrontendKind, u16)> = fes
            .values()
            .map(|f| (f.addr.to_string(), f.kind, f.flags))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    "0.0.0.0:30080/TCP".into(),
                    FrontendKind::NodePort,
                    SVC_F_NODEPORT
                ),
                (
                    "10.96.0.10:80/TCP".into(),
                    FrontendKind::ClusterIp,
                    SVC_F_CLUSTER_IP
                ),
                (
                    "192.168.10.50:80/TCP".into(),
                    FrontendKind::ExternalIp,
                    SVC_F_EXTERNAL_IP
                ),
                (
                    "192.168.10.60:80/TCP".into(),
                    FrontendKind::LoadBalancer,
                    SVC_F_LOADBALANCER
                ),
            ]
        );
        for fe in fes.values() {
            assert_eq!(fe.external.len(), 3, "{}", fe.addr);
            assert!(fe.external.iter().all(|b| b.port == 8080));
        }
        // A ClusterIP service's nodePort field means nothing.
        let fes = all_frontends(
            "metadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, nodePort: 30080}]}\n",
            &[],
        );
        assert_eq!(fes.len(), 1);
    }

    #[test]
    fn external_traffic_policy_local_makes_two_scopes() {
        let fes = all_frontends(
            "
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30080}]
",
            &[WEB_SLICE],
        );
        let np = &fes[&addr("0.0.0.0:30080", TCP)];
        assert_eq!(np.flags, SVC_F_NODEPORT | SVC_F_TWO_SCOPES);
        assert_eq!(np.traffic_policy, "Local");
        assert_eq!(
            np.external,
            vec![addr("172.20.0.5:8080", TCP), addr("172.20.0.6:8080", TCP)]
        );
        assert_eq!(np.internal.as_ref().unwrap().len(), 3);
        // eTP does not touch the ClusterIP.
        let cip = &fes[&addr("10.96.0.10:80", TCP)];
        assert_eq!((cip.flags, cip.external.len()), (SVC_F_CLUSTER_IP, 3));
        assert_eq!(cip.traffic_policy, "Cluster");
    }

    #[test]
    fn internal_traffic_policy_local() {
        let fes = all_frontends(
            "
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30080}]
",
            &[WEB_SLICE],
        );
        let cip = &fes[&addr("10.96.0.10:80", TCP)];
        assert_eq!(cip.flags, SVC_F_CLUSTER_IP);
        assert_eq!(cip.external.len(), 2);
        assert_eq!(cip.traffic_policy, "Local");
        let np = &fes[&addr("0.0.0.0:30080", TCP)];
        assert_eq!(np.flags, SVC_F_NODEPORT | SVC_F_TWO_SCOPES);
        assert_eq!(np.external.len(), 3);
        assert_eq!(np.internal.as_ref().unwrap().len(), 2);
        // Both Local: one scope, local backends only.
        let fes = all_frontends(
            "
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30080}]
",
            &[WEB_SLICE],
        );
        let np = &fes[&addr("0.0.0.0:30080", TCP)];
        assert_eq!((np.flags, np.external.len()), (SVC_F_NODEPORT, 2));
        assert_eq!(np.internal, None);
    }

    #[test]
    fn session_affinity_with_default_and_given_timeout() {
        let svc = |extra: &str| {
            format!("metadata: {{name: a, namespace: d}}\nspec:\n  clusterIP: 10.96.0.12\n  ports: [{{port: 80}}]\n  sessionAffinity: ClientIP\n{extra}")
        };
        let fes = all_frontends(&svc(""), &[]);
        let fe = fes.values().next().unwrap();
        assert_eq!(fe.flags, SVC_F_CLUSTER_IP | SVC_F_AFFINITY);
        assert_eq!(fe.affinity_timeout, DEFAULT_AFFINITY_TIMEOUT);
        let fes = all_frontends(
            &svc("  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n"),
            &[],
        );
        assert_eq!(fes.values().next().unwrap().affinity_timeout, 30);
        let fes = all_frontends(
            "metadata: {name: a, namespace: d}\nspec: {clusterIP: 10.96.0.12, ports: [{port: 80}], sessionAffinity: None}\n",
            &[],
        );
        let fe = fes.values().next().unwrap();
        assert_eq!((fe.flags, fe.affinity_timeout), (SVC_F_CLUSTER_IP, 0));
    }

    #[test]
    fn headless_external_name_and_ipv6_ask_for_nothing() {
        assert!(all_frontends(
            "metadata: {name: h, namespace: d}\nspec: {clusterIP: None, ports: [{port: 80}]}\n",
            &[]
        )
        .is_empty());
        assert_eq!(
            parse_service(
                &service("metadata: {name: e, namespace: d}\nspec: {type: ExternalName, externalName: example.com}\n"),
                &settings()
            )
            .unwrap(),
            None
        );
        let dual = parse(
            "metadata: {name: v, namespace: d}\nspec: {clusterIP: fd00::10, clusterIPs: [fd00::10, 10.96.0.13], ports: [{port: 80}]}\n",
        );
        assert_eq!(
            dual.cluster_ips,
            vec!["10.96.0.13".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn bad_services_name_the_field() {
        let cases = [
            ("spec: {type: Magic}", "spec.type", "Magic"),
            ("spec: {clusterIP: banana}", "spec.clusterIP", "banana"),
            ("spec: {clusterIPs: [10.96.0.1, nope]}", "spec.clusterIPs[1]", "nope"),
            ("spec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: SCTP}]}", "spec.ports[0].protocol", "TCP or UDP"),
            ("spec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}", "spec.ports[0].port", "1 to 65535"),
            ("spec: {clusterIP: 10.96.0.1, ports: [{port: 70000}]}", "spec.ports[0].port", "70000"),
            ("spec: {type: NodePort, clusterIP: 10.96.0.1, ports: [{port: 80}, {port: 81, nodePort: 8080}]}", "spec.ports[1].nodePort", "30000-32767"),
            ("spec: {clusterIP: 10.96.0.1, externalIPs: [x]}", "spec.externalIPs[0]", "\"x\""),
            ("spec: {clusterIP: 10.96.0.1, externalTrafficPolicy: Nearby}", "spec.externalTrafficPolicy", "Cluster or Local"),
            ("spec: {clusterIP: 10.96.0.1, internalTrafficPolicy: Nearby}", "spec.internalTrafficPolicy", "Nearby"),
            ("spec: {clusterIP: 10.96.0.1, sessionAffinity: Cookie}", "spec.sessionAffinity", "ClientIP"),
            ("spec: {clusterIP: 10.96.0.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}", "timeoutSeconds", "86400"),
            ("spec: {clusterIP: 10.96.0.1}\nstatus: {loadBalancer: {ingress: [{ip: bad}]}}", "status.loadBalancer.ingress[0].ip", "bad"),
        ];
        for (yaml, field, hint) in cases {
            let svc = service(&format!("metadata: {{name: a, namespace: d}}\n{yaml}\n"));
            let err = parse_service(&svc, &settings()).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(hint), "{yaml}: {err}");
        }
    }

    #[test]
    fn bad_slices_name_the_field() {
        let head = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: d, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\n";
        let cases = [
            ("ports: [{port: 0}]\nendpoints: []", "ports[0].port"),
            (
                "ports: [{port: 80, protocol: SCTP}]\nendpoints: []",
                "ports[0].protocol",
            ),
            (
                "endpoints: [{addresses: [10.0.0.1]}, {addresses: [fd00::1]}]",
                "endpoints[1].addresses[0]",
            ),
            ("endpoints: [{addresses: []}]", "endpoints[0].addresses"),
        ];
        for (yaml, field) in cases {
            let err = parse_slice(&slice(&format!("{head}{yaml}\n")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        // IPv6 slices are not for this datapath (yet): nothing, no error.
        let v6 = head.replace("IPv4", "IPv6") + "endpoints: [{addresses: [fd00::1]}]\n";
        assert_eq!(parse_slice(&slice(&v6)).unwrap(), None);
    }

    #[test]
    fn a_frontend_two_services_claim_goes_to_the_first() {
        let a = parse("metadata: {name: a, namespace: d}\nspec: {clusterIP: 10.96.0.20, externalIPs: [192.168.10.50], ports: [{port: 80}]}\n");
        let b = parse("metadata: {name: b, namespace: d}\nspec: {clusterIP: 10.96.0.21, externalIPs: [192.168.10.50], ports: [{port: 80}]}\n");
        let services: BTreeMap<String, ParsedService> =
            [(b.id.clone(), b), (a.id.clone(), a)].into_iter().collect();
        let (out, conflicts) = desired(&services, &BTreeMap::new(), &settings());
        assert_eq!(out.len(), 3);
        assert_eq!(out[&addr("192.168.10.50:80", TCP)].service, "d/a");
        assert_eq!(
            conflicts,
            vec![Conflict {
                frontend: addr("192.168.10.50:80", TCP),
                kept: "d/a".into(),
                refused: "d/b".into()
            }]
        );
    }

    #[test]
    fn an_address_in_two_slices_counts_once_and_active_wins() {
        let one = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s1, namespace: d, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: false, serving: true, terminating: true}}]\n";
        let two = one.replace("s1", "s2").replace(
            "conditions: {ready: false, serving: true, terminating: true}",
            "conditions: {ready: true}",
        );
        let fes = all_frontends(
            "metadata: {name: a, namespace: d}\nspec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}\n",
            &[one, &two],
        );
        let fe = &fes[&addr("10.96.0.30:80", TCP)];
        assert_eq!(fe.backends.len(), 1);
        assert_eq!(fe.backends[0].state, BackendState::Active);
        assert_eq!(fe.external, vec![addr("10.0.0.1:8080", TCP)]);
    }
}
