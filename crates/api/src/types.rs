use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamAllocateRequest {
    /// Who holds the address, shown by `status --verbose` ("default/web", "health").
    pub owner: String,
    /// The container the address is for, so that GC can find leaks.
    #[serde(default)]
    pub container_id: Option<String>,
}

/// Body of `POST /v1/ipam/orphans`: releases the addresses of CNI
/// attachments that no endpoint uses and no ADD is still wiring up (see
/// [`crate::add_lock`]). CNI DEL names its container, GC the containers the
/// runtime keeps; neither releases every orphan.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamOrphansRequest {
    /// Only this container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// All but these containers'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_container_ids: Option<Vec<String>>,
}

/// An address `POST /v1/ipam/orphans` released.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamReleased {
    pub ip: Ipv4Addr,
    pub owner: String,
    pub container_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamAllocation {
    pub ip: Ipv4Addr,
    /// The node's PodCIDR the address comes from.
    pub cidr: Ipv4Net,
    /// The router IP on `ciliate_host`: the pod's gateway.
    pub router: Ipv4Addr,
    /// MTU the pod's interface gets.
    pub mtu: u32,
    pub owner: String,
    /// The kind of interface the plugin makes for the pod (`datapathMode`).
    #[serde(default)]
    pub datapath_mode: DatapathMode,
    /// In ipvlan mode, the node-namespace device the pod's slave hangs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvlan_master: Option<String>,
}

/// The kind of interface a pod gets (the agent's `datapathMode`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// A veth pair: `lxc...` in the node, `eth0` in the pod.
    #[default]
    Veth,
    /// An ipvlan L3 slave of the node's native device; no node-side device.
    Ipvlan,
    /// A netkit pair (L2) with our programs as its policy.
    Netkit,
}

impl DatapathMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Veth => "veth",
            Self::Ipvlan => "ipvlan",
            Self::Netkit => "netkit",
        }
    }
}

impl std::fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCreateRequest {
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// Interface name inside the pod (`eth0`).
    pub ifname: String,
    /// Host-side device (`lxc...`), already created and up; empty with
    /// ipvlan, which has none.
    pub host_ifname: String,
    /// 0 with ipvlan.
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    /// Pod-side MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Host-side MAC.
    pub host_mac: String,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    /// Marks the node's health endpoint.
    #[serde(default)]
    pub health: bool,
    /// The kind of interface the plugin made.
    #[serde(default)]
    pub datapath_mode: DatapathMode,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// Programs attached and the endpoint map entry written.
    Ready,
    /// Found on disk at agent start and being checked against the kernel.
    Restoring,
    /// Found on disk, but its device is gone.
    NotReady,
    Disconnecting,
}

impl std::fmt::Display for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ready => "ready",
            Self::Restoring => "restoring",
            Self::NotReady => "not-ready",
            Self::Disconnecting => "disconnecting",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: u16,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub host_mac: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub health: bool,
    pub state: EndpointState,
    #[serde(default)]
    pub datapath_mode: DatapathMode,
}

impl Endpoint {
    /// `namespace/name` for pods, `reserved:health` for the health endpoint.
    pub fn label(&self) -> String {
        match (&self.pod_namespace, &self.pod_name) {
            _ if self.health => "reserved:health".to_string(),
            (Some(ns), Some(name)) => format!("k8s:{ns}/{name}"),
            _ => format!("container:{}", self.container_id),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamStatus {
    pub mode: String,
    pub cidr: Ipv4Net,
    pub router: Ipv4Addr,
    pub allocated: usize,
    pub capacity: usize,
    /// Filled with `?verbose=true`: every allocated address and its owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<IpamOwner>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpamOwner {
    pub ip: Ipv4Addr,
    pub owner: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProgramStatus {
    pub name: String,
    pub id: u32,
    pub tag: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatapathStatus {
    pub bpf_root: String,
    pub datapath_mode: String,
    pub routing_mode: String,
    /// `loaded` when this agent loaded the object, `adopted` when it found it pinned.
    pub object: String,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node_name: String,
    pub version: String,
    pub kernel: String,
    pub host_device: String,
    pub router_ip: Ipv4Addr,
    /// MTU of pod interfaces (the node MTU less tunnel overhead in tunnel mode).
    pub mtu: u32,
    pub ipam: IpamStatus,
    pub endpoints: usize,
    pub endpoints_ready: usize,
    pub datapath: DatapathStatus,
    pub monitor_listeners: usize,
    pub uptime_seconds: u64,
    /// The node's address on the network between nodes (InternalIP).
    #[serde(default)]
    pub node_ip: Option<Ipv4Addr>,
    /// The cluster store connection; `None` when no store is configured.
    #[serde(default)]
    pub kvstore: Option<KvstoreStatus>,
    /// Summary of the last health probe round; `None` when health checking is off.
    #[serde(default)]
    pub cluster_health: Option<HealthSummary>,
    /// Whether the agent programs Services (`kubeProxyReplacement`).
    #[serde(default)]
    pub kube_proxy_replacement: KubeProxyReplacementStatus,
    /// How pod traffic that leaves the cluster is masqueraded.
    #[serde(default)]
    pub masquerading: MasqueradingStatus,
}

/// `Masquerading: BPF (ip-masq-agent) [eth0] 10.200.0.0/16 [IPv4: Enabled]`,
/// as `cilium status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MasqueradingStatus {
    /// `enableIPv4Masquerade`.
    pub enabled: bool,
    /// `BPF` (`bpf.masquerade: true`) or `IPTables`.
    #[serde(default)]
    pub mode: String,
    /// The devices traffic is masqueraded on, to their address.
    #[serde(default)]
    pub devices: Vec<KprDevice>,
    /// `ipv4NativeRoutingCIDR` (or the cluster's pod CIDRs): never masqueraded.
    #[serde(default)]
    pub snat_exclusion_cidr: Option<String>,
    /// `ipMasqAgent.enabled`.
    #[serde(default)]
    pub ip_masq_agent: bool,
}

/// `GET /v1/ipmasq`: ip-masq-agent's nonMasqueradeCIDRs in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpMasqState {
    /// `ipMasqAgent.enabled`.
    pub enabled: bool,
    /// Where the list in force came from: `configmap kube-system/ip-masq-agent`,
    /// `file /path`, `config` (the agent's own file), or `default`.
    pub source: String,
    /// The CIDRs in force, as written (`10.10.1.0/24`).
    pub cidrs: Vec<String>,
    /// Whether link-local 169.254.0.0/16 is masqueraded (`masqLinkLocal`).
    #[serde(default)]
    pub masq_link_local: bool,
    /// Why the last update was refused (the previous list stays in force).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Counts the lists put in force since the agent started, so a caller
    /// can wait for a reload.
    pub generation: u64,
}

/// `KubeProxyReplacement: True [eth0 192.168.10.100]`, as `cilium status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyReplacementStatus {
    pub enabled: bool,
    /// The native devices NodePort is served on, with their address.
    #[serde(default)]
    pub devices: Vec<KprDevice>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KprDevice {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// The agent's connection to the cluster store, as `cilium status` shows "KVStore".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KvstoreStatus {
    /// `Ok`, `Connecting` or `Failure`.
    pub state: String,
    /// `etcd: http://192.168.10.1:2379` or the last error.
    pub message: String,
}

/// A node of the cluster as the agent knows it (`GET /v1/node`), like
/// `kubectl get ciliumnodes` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    /// The node's address between nodes (the tunnel endpoint).
    pub internal_ip: Option<Ipv4Addr>,
    /// The router IP on the node's `ciliate_host` (CiliumInternalIP).
    pub ciliate_internal_ip: Option<Ipv4Addr>,
    pub health_ip: Option<Ipv4Addr>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<Ipv4Net>,
    /// This agent's own node.
    pub local: bool,
}

/// `GET /v1/health`: the last probe of every other node, as `cilium-health status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterHealth {
    /// Seconds since the Unix epoch when the last round finished; 0 before the first.
    pub probed_at: u64,
    pub interval_seconds: u64,
    pub nodes: Vec<NodeHealth>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthSummary {
    /// Remote nodes whose host and health endpoint answered every probe.
    pub reachable: usize,
    pub total: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealth {
    pub name: String,
    /// The node's InternalIP, probed from this node's host namespace.
    pub host: PathHealth,
    /// The node's health endpoint (`lxc_health`); `None` until the node announces one.
    pub endpoint: Option<PathHealth>,
}

/// Probes of one address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PathHealth {
    pub ip: Ipv4Addr,
    pub icmp: ProbeResult,
    /// TCP connect plus `GET /hello` to the health port (4240).
    pub tcp: ProbeResult,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub ok: bool,
    /// Round-trip time of the last successful probe, in microseconds.
    pub latency_us: Option<u64>,
    /// Why the last probe failed.
    pub error: Option<String>,
    /// Failed probes since the agent started.
    pub failures: u64,
}

/// One frontend the agent programmed (`GET /v1/service`), as `cilium-dbg
/// service list` shows it: one entry per address, port and protocol.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    /// The reverse-NAT index: stable for the life of the frontend.
    pub id: u32,
    /// `10.96.0.10:53/UDP`; NodePort on every node address shows as `0.0.0.0:30080/TCP`.
    pub frontend: String,
    /// ClusterIP, NodePort, ExternalIP or LoadBalancer.
    #[serde(rename = "type")]
    pub kind: String,
    /// `namespace/name` of the Service.
    pub service: String,
    /// Local or Cluster, as the service asks for this frontend's traffic.
    pub traffic_policy: String,
    pub session_affinity: bool,
    pub backends: Vec<BackendEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackendEntry {
    pub id: u32,
    /// `172.20.1.5:8080/TCP`.
    pub address: String,
    /// active or terminating.
    pub state: String,
    /// The node the backend runs on, if the EndpointSlice says.
    pub node_name: Option<String>,
}

/// One decoded datapath event, as `ciliate monitor` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MonitorEvent {
    /// `drop` or `trace`.
    #[serde(rename = "type")]
    pub kind: String,
    pub code: u8,
    /// Drop reason name ("Invalid source ip") or trace point ("to-endpoint").
    pub reason: String,
    /// `ingress` (towards an endpoint) or `egress` (from one).
    pub direction: String,
    pub ifindex: u32,
    pub dst_ifindex: u32,
    pub src_endpoint: u16,
    pub dst_endpoint: u16,
    /// "IPv4", "ARP" or the EtherType in hex.
    pub l3: String,
    pub src: String,
    pub dst: String,
    /// "TCP", "UDP", "ICMP", or the protocol number.
    pub protocol: String,
    pub src_port: u16,
    pub dst_port: u16,
    pub length: u32,
    pub ktime_ns: u64,
    /// `snat` traces: the new source; `rev-snat`: the destination before
    /// (`192.168.10.100:61234`, or the address alone for ICMP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
}

impl std::fmt::Display for MonitorEvent {
    /// One line per event, in the spirit of `cilium monitor`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = |ip: &str, port: u16| {
            if port == 0 {
                ip.to_string()
            } else {
                format!("{ip}:{port}")
            }
        };
        if self.kind == "drop" {
            write!(f, "xx drop ({}) ", self.reason)?;
        } else {
            write!(f, "-> {} ", self.reason)?;
        }
        write!(
            f,
            "{} ifindex {} ep {} -> ep {}",
            self.direction, self.ifindex, self.src_endpoint, self.dst_endpoint
        )?;
        if self.dst_ifindex != 0 {
            write!(f, " to ifindex {}", self.dst_ifindex)?;
        }
        write!(
            f,
            ": {} -> {} {} {} bytes",
            addr(&self.src, self.src_port),
            addr(&self.dst, self.dst_port),
            if self.l3 == "IPv4" {
                &self.protocol
            } else {
                &self.l3
            },
            self.length
        )?;
        match (&self.nat, self.reason.as_str()) {
            (None, _) => Ok(()),
            (Some(nat), "snat") => write!(f, " SNAT to {nat}"),
            (Some(nat), "rev-snat") => write!(f, " rev-SNAT from {nat}"),
            (Some(nat), _) => write!(f, " NAT {nat}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, nat: Option<&str>) -> MonitorEvent {
        MonitorEvent {
            kind: "trace".into(),
            code: 11,
            reason: reason.into(),
            direction: "egress".into(),
            ifindex: 2,
            dst_ifindex: 0,
            src_endpoint: 12,
            dst_endpoint: 0,
            l3: "IPv4".into(),
            src: "172.20.0.5".into(),
            dst: "10.10.1.200".into(),
            protocol: "TCP".into(),
            src_port: 40000,
            dst_port: 80,
            length: 60,
            ktime_ns: 0,
            nat: nat.map(str::to_string),
        }
    }

    #[test]
    fn monitor_lines_show_the_nat_address() {
        assert_eq!(
            event("snat", Some("192.168.10.100:61000")).to_string(),
            "-> snat egress ifindex 2 ep 12 -> ep 0: 172.20.0.5:40000 -> 10.10.1.200:80 TCP 60 bytes SNAT to 192.168.10.100:61000"
        );
        assert!(event("rev-snat", Some("192.168.10.100:61000"))
            .to_string()
            .ends_with("60 bytes rev-SNAT from 192.168.10.100:61000"));
        assert!(event("to-stack", None)
            .to_string()
            .ends_with("TCP 60 bytes"));
        let json = serde_json::to_value(event("to-stack", None)).unwrap();
        assert!(json.get("nat").is_none());
    }
}
