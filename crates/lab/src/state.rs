//! The lab's state file (`/run/ciliate-lab/<lab>/state.json`): what `up` and
//! `apply` made, so that later commands can find it. `down` does not need it
//! (it finds everything by name), but uses the recorded pids when present.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, LabError, Result};

/// Bumped when the layout changes incompatibly.
pub const STATE_VERSION: u32 = 2;
pub const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub version: u32,
    pub name: String,
    pub dir: PathBuf,
    /// The namespace holding the fabric bridge `br0`.
    pub fabric_netns: String,
    /// The fabric's subnet (nodes' `eth0` addresses are in it).
    pub fabric_cidr: Ipv4Net,
    /// The lab's private bpffs mount; each node pins under `<bpffs>/<node>`.
    pub bpffs: PathBuf,
    /// Where the lab found `ciliate-agent` and `ciliate-cni`.
    pub bin_dir: PathBuf,
    /// `CNI_PATH` given to plugins.
    pub cni_path: String,
    /// How the agents reach each other's pods.
    pub routing: RoutingMode,
    /// Where the nodes' PodCIDRs come from.
    pub ipam: IpamMode,
    /// The cluster store, inside the fabric namespace.
    pub etcd: Option<EtcdInfo>,
    /// `ciliate-operator` (cluster-pool IPAM), inside the fabric namespace.
    pub operator: Option<OperatorInfo>,
    /// The outside host on the fabric (labs made before it existed have none).
    #[serde(default)]
    pub router: Option<RouterInfo>,
    /// Whether the agents' config has `kubeProxyReplacement: true` (their
    /// service datapath); false when asked not to.
    #[serde(default)]
    pub kube_proxy_replacement: bool,
    /// How the agents masquerade pod traffic leaving the cluster.
    #[serde(default)]
    pub masquerade: Masquerade,
    /// The agents' `tunnelProtocol` (used with routing tunnel).
    #[serde(default)]
    pub tunnel_protocol: TunnelProtocol,
    /// The agents' `datapathMode`.
    #[serde(default)]
    pub datapath_mode: DatapathMode,
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
    /// Round-robin cursor for pods without `spec.nodeName`.
    #[serde(default)]
    pub next_node: usize,
}

/// The outside host: a namespace on the fabric bridge with only the fabric's
/// route, no PodCIDR routes unless `lab router-routes add` put them there:
/// a client outside the cluster (for NodePorts) and the world pods reach
/// (its networks, for masquerading).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouterInfo {
    pub netns: String,
    pub netns_path: PathBuf,
    /// `eth0`'s address with its prefix length.
    pub address: Ipv4Net,
    /// Addresses on its loopback (`10.10.1.200/24`, `10.10.2.200/24`): the
    /// outside networks it owns, which the nodes route via it.
    #[serde(default)]
    pub networks: Vec<Ipv4Net>,
    /// The HTTP server on port 80 answering `client <source address>`.
    #[serde(default)]
    pub server: Option<ProcessRecord>,
}

impl RouterInfo {
    pub fn ip(&self) -> Ipv4Addr {
        self.address.addr()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub index: usize,
    /// Name of the node's namespace (under /run/netns).
    pub netns: String,
    pub netns_path: PathBuf,
    /// `eth0`'s address with its prefix length.
    pub address: Ipv4Net,
    /// The node's PodCIDR: given by the lab (host-scope), or reported by the
    /// agent once the operator assigned it (cluster-pool; `None` until then).
    pub pod_cidr: Option<Ipv4Net>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub conflist: PathBuf,
    pub bpf_root: PathBuf,
    pub health_netns: String,
    pub agent: Option<ProcessRecord>,
}

impl NodeInfo {
    /// The node's address on the fabric.
    pub fn ip(&self) -> Ipv4Addr {
        self.address.addr()
    }
}

/// How pods on different nodes reach each other (the agents' `routingMode`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingMode {
    /// VXLAN between nodes.
    #[default]
    Tunnel,
    /// Plain routing over the fabric (`autoDirectNodeRoutes`).
    Native,
}

impl std::fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tunnel => "tunnel",
            Self::Native => "native",
        })
    }
}

/// The encapsulation between nodes in tunnel routing (`tunnelProtocol`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TunnelProtocol {
    /// `ciliate_vxlan`, UDP 8472.
    #[default]
    Vxlan,
    /// `ciliate_geneve`, UDP 6081.
    Geneve,
}

impl std::fmt::Display for TunnelProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
        })
    }
}

/// The kind of interface pods get (the agents' `datapathMode`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatapathMode {
    /// A veth pair per pod.
    #[default]
    Veth,
    /// An ipvlan L3 slave of the node's eth0 (needs routing native).
    Ipvlan,
    /// A netkit pair per pod (Linux 6.7+).
    Netkit,
}

impl std::fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Veth => "veth",
            Self::Ipvlan => "ipvlan",
            Self::Netkit => "netkit",
        })
    }
}

/// How the agents masquerade pod traffic that leaves the cluster
/// (`enableIPv4Masquerade` and `bpf.masquerade`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Masquerade {
    /// SNAT to the node's IP in BPF (`to_netdev`), `bpf.masquerade: true`.
    #[default]
    Bpf,
    /// The agent's iptables MASQUERADE chain, `bpf.masquerade: false`.
    Iptables,
    /// No masquerading: pods reach the outside with their own address
    /// (`enableIPv4Masquerade: false`).
    Off,
}

impl std::fmt::Display for Masquerade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bpf => "bpf",
            Self::Iptables => "iptables",
            Self::Off => "off",
        })
    }
}

/// Where the nodes' PodCIDRs come from (the agents' `ipam.mode`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IpamMode {
    /// `ciliate-operator` hands out PodCIDRs from the pool; agents register
    /// in the store and learn about each other (a real cluster).
    #[default]
    ClusterPool,
    /// The lab gives each agent its PodCIDR (`ipv4Range`); agents use no
    /// store and do not learn about each other: for single-node work.
    HostScope,
}

impl std::fmt::Display for IpamMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ClusterPool => "cluster-pool",
            Self::HostScope => "host-scope",
        })
    }
}

/// The lab's etcd.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdInfo {
    /// `http://192.168.10.1:2379`, reachable from the fabric and the nodes.
    pub endpoint: String,
    pub data_dir: PathBuf,
    /// The etcd program it runs (for a restart); `etcd` in `PATH` when empty.
    #[serde(default)]
    pub binary: PathBuf,
    pub process: Option<ProcessRecord>,
}

/// The lab's operator.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OperatorInfo {
    pub config: PathBuf,
    pub log: PathBuf,
    pub process: Option<ProcessRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// Name of the pod's namespace (the node's, for host-network pods).
    pub netns: String,
    pub netns_path: PathBuf,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub host_network: bool,
    /// The final CNI result, given back as `prevResult` on DEL.
    pub cni_result: Option<serde_json::Value>,
    pub spec_hash: String,
    pub dir: PathBuf,
    pub containers: Vec<ContainerInfo>,
    /// What the pod's endpoints say in EndpointSlices (ready unless a test
    /// says otherwise).
    #[serde(default)]
    pub condition: PodCondition,
}

/// A pod's lifecycle as EndpointSlices see it. Its processes run in every
/// case: a terminating pod still serves the connections it has.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PodCondition {
    /// Running and ready: its endpoints take new connections.
    #[default]
    Ready,
    /// Running, not ready (readiness failing): its endpoints are listed
    /// not ready and not serving, so no traffic goes to them.
    NotReady,
    /// Being deleted (`metadata.deletionTimestamp` set): endpoints are
    /// ready=false, serving=true, terminating=true.
    Terminating,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    pub name: String,
    /// None when the container has no command.
    pub process: Option<ProcessRecord>,
}

/// A process the lab started. The start time (in clock ticks since boot, from
/// `/proc/PID/stat`) tells the process from a later one that reused its pid.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    pub pid: i32,
    pub start_time: u64,
    pub argv: Vec<String>,
    pub log: PathBuf,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read(&path).map_err(io_err("reading the lab state", &path))?;
        let state: Self = serde_json::from_slice(&text).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        if state.version != STATE_VERSION {
            return Err(LabError::Invalid {
                field: format!("version in {}", path.display()),
                value: state.version.to_string(),
                allowed: format!(
                    "{STATE_VERSION} (this ciliate); remove the lab with `ciliate lab down`"
                ),
            });
        }
        Ok(state)
    }

    /// Writes the state atomically (temporary file, then rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("lab state always serializes");
        std::fs::write(&tmp, json).map_err(io_err("writing the lab state", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("writing the lab state", &path))
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }
}

/// An exclusive lock on a lab's directory, held while a command changes it.
pub struct LabLock {
    _file: File,
}

impl LabLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening the lab lock", &path))?;
        // SAFETY: flock on a descriptor we own; it is released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("locking", &path)(std::io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}
