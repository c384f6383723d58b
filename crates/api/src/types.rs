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
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCreateRequest {
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// Interface name inside the pod (`eth0`).
    pub ifname: String,
    /// Host-side device (`lxc...`), already created and up.
    pub host_ifname: String,
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
        )
    }
}
