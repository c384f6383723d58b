//! The lab: a cluster in network namespaces on one machine.
//!
//! ```text
//!  <lab>-fabric:  br0 192.168.10.1/24 ── node0 ── node1 ── node2    (veth ports)
//!                 etcd (192.168.10.1:2379), ciliate-operator
//!  <lab>-node0:   eth0 192.168.10.100/24   ciliate-agent, ciliate_host, lxc*...
//!  <lab>-node1:   eth0 192.168.10.101/24
//!  <lab>-pod-<ns>-<name>: eth0 from ciliate-cni, the pod's commands
//! ```
//!
//! The fabric namespace is also the "outside": a host that is not a node
//! (192.168.10.1), which knows each node's PodCIDR as a route via that node
//! (as a routed network would), so pods can reach it without masquerading.
//!
//! Nothing is created in the machine's own namespace except files under
//! `/run/ciliate-lab/<lab>/` (with the lab's bpffs mounted there) and the
//! namespace mount points `/run/netns/<lab>-*`; the fabric has no path out,
//! and etcd listens only on the fabric bridge.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use ciliate_datapath::netns;
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::error::{io_err, LabError, Result};
use crate::manifest::{self, Manifest, PodManifest};
use crate::names;
use crate::services::{self, Change};
use crate::state::{
    ContainerInfo, DatapathMode, EtcdInfo, IpamMode, LabLock, LabState, Masquerade, NodeInfo,
    OperatorInfo, PodCondition, PodInfo, ProcessRecord, RouterInfo, RoutingMode, TunnelProtocol,
    STATE_VERSION,
};
use crate::sys;
use crate::{cni, fabric};

/// The agent binary, looked up in the binary directory.
pub const AGENT_BIN: &str = "ciliate-agent";
/// The CNI plugin binary; the conflist names it by its `type`, `ciliate`.
pub const CNI_BIN: &str = "ciliate-cni";
/// The CLI, made first in `PATH` for commands run in a node.
pub const CLI_BIN: &str = "ciliate";
/// The operator binary (cluster-pool IPAM), looked up in the binary directory.
pub const OPERATOR_BIN: &str = "ciliate-operator";
/// etcd's client and peer ports on the fabric bridge.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// How long the lab's own store calls wait for etcd to answer: longer than
/// the agents' 3 s, since a lab on a loaded machine (or in a TCG guest) is
/// slow to answer the first status, and a timeout here fails a whole step.
const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Nodes a lab has unless told otherwise.
pub const DEFAULT_NODES: usize = 3;
/// Environment variable naming the directory of the ciliate binaries.
pub const BIN_DIR_ENV: &str = "CILIATE_BIN_DIR";
/// The CNI `type` of ciliate's plugin in the conflist.
pub const CNI_TYPE: &str = "ciliate";
/// The outside host's address on the fabric: 192.168.10.200.
pub const ROUTER_HOST: u32 = 200;
/// Most nodes a lab may have.
pub const MAX_NODES: usize = 64;

/// What `Lab::up` builds.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub name: String,
    pub nodes: usize,
    /// The agents' `routingMode` (native adds `autoDirectNodeRoutes`).
    pub routing: RoutingMode,
    /// cluster-pool: PodCIDRs from `ciliate-operator`; host-scope: from the lab.
    pub ipam: IpamMode,
    /// The etcd program (`etcd` in `PATH` by default).
    pub etcd_binary: PathBuf,
    /// Directory holding `ciliate-agent` and `ciliate-cni`; found automatically when unset.
    pub bin_dir: Option<PathBuf>,
    /// The fabric subnet; node `i` gets host address `node_host_offset + i`.
    pub fabric_cidr: Ipv4Net,
    pub node_host_offset: u32,
    /// The outside host (`router`) gets this host address of the fabric.
    pub router_host: u32,
    /// Write `kubeProxyReplacement: true` into the agents' config.
    pub kube_proxy_replacement: bool,
    /// How the agents masquerade traffic leaving the cluster.
    pub masquerade: Masquerade,
    /// The agents' `tunnelProtocol` (with routing tunnel).
    pub tunnel_protocol: TunnelProtocol,
    /// The agents' `datapathMode`.
    pub datapath_mode: DatapathMode,
    /// Node `i` gets the `i`-th subnet of this pool as its `PodCIDR`.
    pub pod_cidr_pool: Ipv4Net,
    pub pod_cidr_prefix: u8,
    /// Extra keys for every agent's config (e.g. `routingMode`), merged over
    /// the lab's own keys (nested mappings are merged key by key).
    pub agent_config: serde_yaml::Mapping,
    /// How long to wait for each agent to answer `GET /v1/status` (and for etcd).
    pub agent_timeout: Duration,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            name: names::DEFAULT_LAB.to_string(),
            nodes: DEFAULT_NODES,
            routing: RoutingMode::default(),
            ipam: IpamMode::default(),
            etcd_binary: "etcd".into(),
            bin_dir: None,
            fabric_cidr: "192.168.10.0/24".parse().expect("valid"),
            node_host_offset: 100,
            router_host: ROUTER_HOST,
            kube_proxy_replacement: true,
            masquerade: Masquerade::default(),
            tunnel_protocol: TunnelProtocol::default(),
            datapath_mode: DatapathMode::default(),
            pod_cidr_pool: "172.20.0.0/16".parse().expect("valid"),
            pod_cidr_prefix: 24,
            agent_config: serde_yaml::Mapping::new(),
            agent_timeout: Duration::from_secs(30),
        }
    }
}

impl LabSpec {
    /// A spec with defaults for everything but the name and node count.
    pub fn new(name: impl Into<String>, nodes: usize) -> Self {
        Self {
            name: name.into(),
            nodes,
            ..Self::default()
        }
    }

    /// The fabric address of the outside host (the bridge): the subnet's first address.
    pub fn fabric_gateway(&self) -> Ipv4Net {
        fabric::gateway(self.fabric_cidr)
    }

    /// The outside host's fabric address (`192.168.10.200/24` by default).
    pub fn router_address(&self) -> Ipv4Net {
        let ip = Ipv4Addr::from(u32::from(self.fabric_cidr.network()) + self.router_host);
        Ipv4Net::new(ip, self.fabric_cidr.prefix_len()).expect("the prefix of an Ipv4Net is valid")
    }

    /// `http://<fabric gateway>:2379`.
    pub fn etcd_endpoint(&self) -> String {
        etcd_endpoint(self.fabric_gateway().addr())
    }

    fn invalid(field: &str, value: &dyn std::fmt::Display, allowed: impl Into<String>) -> LabError {
        LabError::Invalid {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// Checks the spec and computes each node's fabric address and `PodCIDR`.
    pub fn plan(&self) -> Result<Vec<(String, Ipv4Net, Ipv4Net)>> {
        names::validate_lab_name(&self.name)?;
        if self.datapath_mode == DatapathMode::Ipvlan && self.routing != RoutingMode::Native {
            return Err(Self::invalid(
                "--datapath-mode",
                &self.datapath_mode,
                "veth or netkit with --routing tunnel (ipvlan needs --routing native)",
            ));
        }
        if self.tunnel_protocol != TunnelProtocol::Vxlan && self.routing != RoutingMode::Tunnel {
            return Err(Self::invalid(
                "--tunnel-protocol",
                &self.tunnel_protocol,
                "vxlan (the default) with --routing native, which has no tunnel",
            ));
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(Self::invalid(
                "--nodes",
                &self.nodes,
                format!("1 to {MAX_NODES}"),
            ));
        }
        let hosts = self.fabric_cidr.hosts().count() as u32;
        // Host 1 is the fabric bridge (etcd, the operator, the outside host).
        if self.node_host_offset < 2 || self.node_host_offset + self.nodes as u32 > hosts {
            return Err(Self::invalid(
                "fabric CIDR",
                &self.fabric_cidr,
                format!(
                    "a subnet with room for {} node addresses from host {}",
                    self.nodes, self.node_host_offset
                ),
            ));
        }
        let nodes_end = self.node_host_offset + self.nodes as u32;
        if self.router_host < 2
            || self.router_host > hosts
            || (self.node_host_offset..nodes_end).contains(&self.router_host)
        {
            return Err(Self::invalid(
                "router host",
                &self.router_host,
                format!(
                    "a host number of {} from 2 to {hosts} that no node has (nodes use {} to {})",
                    self.fabric_cidr,
                    self.node_host_offset,
                    nodes_end - 1
                ),
            ));
        }
        let subnets = self
            .pod_cidr_pool
            .subnets(self.pod_cidr_prefix)
            .map_err(|_| {
                Self::invalid(
                    "PodCIDR mask size",
                    &self.pod_cidr_prefix,
                    format!(
                        "{} to 30 for pool {}",
                        self.pod_cidr_pool.prefix_len(),
                        self.pod_cidr_pool
                    ),
                )
            })?;
        let subnets: Vec<Ipv4Net> = subnets.take(self.nodes).collect();
        if subnets.len() < self.nodes || self.pod_cidr_prefix > 30 {
            return Err(Self::invalid(
                "PodCIDR pool",
                &format!("{}, /{} per node", self.pod_cidr_pool, self.pod_cidr_prefix),
                format!("a pool with {} subnets of at most /30", self.nodes),
            ));
        }
        let base = u32::from(self.fabric_cidr.network());
        Ok((0..self.nodes)
            .map(|i| {
                let ip = Ipv4Addr::from(base + self.node_host_offset + i as u32);
                let address =
                    Ipv4Net::new(ip, self.fabric_cidr.prefix_len()).expect("valid prefix");
                (names::node_name(i), address, subnets[i])
            })
            .collect())
    }
}

/// What `apply` did with one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum ApplyOutcome {
    Created {
        pod: String,
        node: String,
        ip: Ipv4Addr,
        scheduled: bool,
    },
    Unchanged {
        pod: String,
        differs: bool,
    },
    /// A Service written to the store with its addresses.
    Service {
        service: String,
        change: Change,
        #[serde(rename = "type")]
        type_: String,
        cluster_ip: Option<String>,
        /// `port/protocol` -> nodePort.
        node_ports: Vec<(String, i32)>,
    },
    EndpointSlice {
        slice: String,
        change: Change,
    },
    ConfigMap {
        config_map: String,
        change: Change,
    },
    Skipped {
        kind: String,
        name: String,
    },
}

impl ApplyOutcome {
    /// The outcome of writing a Service that came back from the store as `svc`.
    pub fn for_service(svc: &k8s_openapi::api::core::v1::Service, change: Change) -> Self {
        let node_ports = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| {
                p.node_port.map(|np| {
                    (
                        format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                        np,
                    )
                })
            })
            .collect();
        Self::Service {
            service: services::key_of(&svc.metadata),
            change,
            type_: services::service_type(svc).to_string(),
            cluster_ip: svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
            node_ports,
        }
    }
}

impl std::fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Created {
                pod,
                node,
                ip,
                scheduled,
            } => {
                write!(f, "pod/{pod} created on {node} with IP {ip}")?;
                if *scheduled {
                    write!(f, " (no spec.nodeName: picked {node} round-robin)")?;
                }
                Ok(())
            }
            Self::Unchanged {
                pod,
                differs: false,
            } => write!(f, "pod/{pod} unchanged"),
            Self::Unchanged { pod, differs: true } => write!(
                f,
                "pod/{pod} unchanged: it exists with a different spec; pods cannot be updated, \
                 delete it and apply again"
            ),
            Self::Service {
                service,
                change,
                type_,
                cluster_ip,
                node_ports,
            } => {
                write!(
                    f,
                    "service/{service} {change}: {type_}, clusterIP {}",
                    cluster_ip.as_deref().unwrap_or("none")
                )?;
                for (port, node_port) in node_ports {
                    write!(f, ", {port} on nodePort {node_port}")?;
                }
                Ok(())
            }
            Self::EndpointSlice { slice, change } => write!(f, "endpointslice/{slice} {change}"),
            Self::ConfigMap { config_map, change } => {
                write!(f, "configmap/{config_map} {change}")
            }
            Self::Skipped { kind, name } => write!(
                f,
                "{kind}/{name} skipped: the lab handles Pods, Services, EndpointSlices and ConfigMaps"
            ),
        }
    }
}

/// What `down` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownReport {
    pub processes: usize,
    pub namespaces: Vec<String>,
    pub mounts: usize,
    pub removed_dir: bool,
}

impl DownReport {
    /// Whether there was anything to remove.
    pub fn found_anything(&self) -> bool {
        self.processes > 0 || !self.namespaces.is_empty() || self.mounts > 0 || self.removed_dir
    }
}

/// `lab status`, as printed and as JSON.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabStatus {
    pub name: String,
    pub dir: PathBuf,
    pub fabric_netns: String,
    pub bpffs: PathBuf,
    pub routing: RoutingMode,
    pub ipam: IpamMode,
    /// etcd and the operator, in the fabric namespace.
    pub processes: Vec<ServiceStatus>,
    /// The outside host, if the lab has one.
    pub router: Option<RouterStatus>,
    /// Whether the agents replace kube-proxy (serve Services).
    pub kube_proxy_replacement: bool,
    /// How the agents masquerade.
    pub masquerade: Masquerade,
    pub tunnel_protocol: TunnelProtocol,
    pub datapath_mode: DatapathMode,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
}

/// The outside host.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    pub ip: Ipv4Addr,
    pub netns: String,
    /// The outside networks on its loopback.
    pub networks: Vec<Ipv4Net>,
    /// Its HTTP server (port 80, answers `client <source>`).
    pub server_pid: Option<i32>,
    pub server_alive: bool,
    /// `PodCIDR via node` routes it has (`lab router-routes add`).
    pub pod_cidr_routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// A cluster-wide process of the lab (etcd, the operator).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    /// Where it serves (etcd's endpoint), if anything.
    pub address: Option<String>,
    pub pid: Option<i32>,
    pub alive: bool,
    pub log: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub ip: Ipv4Addr,
    /// From the agent's status when it answers, else what the lab recorded.
    pub pod_cidr: Option<Ipv4Net>,
    pub netns: String,
    pub socket: PathBuf,
    pub agent_pid: Option<i32>,
    pub agent_alive: bool,
    /// Whether the agent answered `GET /v1/status`.
    pub agent_ready: bool,
    pub log: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub host_network: bool,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub alive: bool,
    pub log: Option<PathBuf>,
}

/// Where `exec` runs a command.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Node(&'a NodeInfo),
    Pod(&'a PodInfo),
    /// The outside host (`router`).
    Router(&'a RouterInfo),
}

/// A lab that exists (made by [`Lab::up`] or found by [`Lab::open`]).
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    /// `up` found the lab already running and healthy.
    already_up: bool,
}

impl Lab {
    /// Creates a lab. If one of that name is up, healthy and has the same
    /// number of nodes, it is returned as is ([`Lab::was_already_up`]); if
    /// anything of that name exists otherwise, this fails and says to run
    /// `down`. A failure half-way removes what was made.
    pub fn up(spec: &LabSpec) -> Result<Self> {
        if !sys::is_root() {
            return Err(LabError::NotRoot);
        }
        let plan = spec.plan()?;
        let name = spec.name.clone();
        let dir = names::lab_dir(&name);
        if LabState::path(&dir).exists() {
            let lab = Self::open(&name)?;
            let mut problems = lab.health_problems();
            if lab.state.nodes.len() != spec.nodes {
                problems.push(format!(
                    "it has {} nodes, not {}",
                    lab.state.nodes.len(),
                    spec.nodes
                ));
            }
            if lab.state.routing != spec.routing {
                problems.push(format!(
                    "it uses routing {}, not {}",
                    lab.state.routing, spec.routing
                ));
            }
            if lab.state.ipam != spec.ipam {
                problems.push(format!(
                    "it uses IPAM {}, not {}",
                    lab.state.ipam, spec.ipam
                ));
            }
            if lab.state.masquerade != spec.masquerade {
                problems.push(format!(
                    "it uses masquerade {}, not {}",
                    lab.state.masquerade, spec.masquerade
                ));
            }
            if lab.state.tunnel_protocol != spec.tunnel_protocol {
                problems.push(format!(
                    "it uses tunnel protocol {}, not {}",
                    lab.state.tunnel_protocol, spec.tunnel_protocol
                ));
            }
            if lab.state.datapath_mode != spec.datapath_mode {
                problems.push(format!(
                    "it uses datapath mode {}, not {}",
                    lab.state.datapath_mode, spec.datapath_mode
                ));
            }
            if problems.is_empty() {
                return Ok(Self {
                    already_up: true,
                    ..lab
                });
            }
            let detail = problems.join("; ");
            return Err(LabError::Exists { name, detail });
        }
        let leftovers = leftovers(&name);
        if !leftovers.is_empty() {
            return Err(LabError::Exists {
                name,
                detail: format!(
                    "has no state file and these remain: {}",
                    leftovers.join(", ")
                ),
            });
        }
        let needed: &[&str] = match spec.ipam {
            IpamMode::ClusterPool => &[AGENT_BIN, CNI_BIN, OPERATOR_BIN],
            IpamMode::HostScope => &[AGENT_BIN, CNI_BIN],
        };
        let bin_dir = find_bin_dir(spec.bin_dir.as_deref(), needed)?;
        let etcd_binary =
            sys::find_program(&spec.etcd_binary).ok_or_else(|| LabError::BinaryMissing {
                binary: format!(
                    "{} (etcd-server; install it with scripts/install-deps.sh)",
                    spec.etcd_binary.display()
                ),
                searched: std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .collect(),
            })?;
        match Self::build(spec, &plan, &dir, &bin_dir, &etcd_binary) {
            Ok(state) => Ok(Self {
                state,
                already_up: false,
            }),
            Err(e) => {
                let _ = Self::down(&name);
                Err(e)
            }
        }
    }

    fn build(
        spec: &LabSpec,
        plan: &[(String, Ipv4Net, Ipv4Net)],
        dir: &Path,
        bin_dir: &Path,
        etcd_binary: &Path,
    ) -> Result<LabState> {
        let name = &spec.name;
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let _lock = LabLock::acquire(dir)?;
        let bpffs = dir.join("bpffs");
        std::fs::create_dir_all(&bpffs).map_err(io_err("creating", &bpffs))?;
        sys::mount_bpffs(&bpffs)?;

        // The plugin binary under the name a runtime looks for: its `type`.
        let cni_bin = dir.join("cni-bin");
        std::fs::create_dir_all(&cni_bin).map_err(io_err("creating", &cni_bin))?;
        let link = cni_bin.join(CNI_TYPE);
        std::os::unix::fs::symlink(bin_dir.join(CNI_BIN), &link)
            .map_err(io_err("linking", &link))?;
        let mut cni_path = format!("{}:{}", cni_bin.display(), bin_dir.display());
        if Path::new("/opt/cni/bin").is_dir() {
            cni_path.push_str(":/opt/cni/bin");
        }

        let mut state = LabState {
            version: STATE_VERSION,
            name: name.clone(),
            dir: dir.to_owned(),
            fabric_netns: names::fabric_netns(name),
            fabric_cidr: spec.fabric_cidr,
            bpffs: bpffs.clone(),
            bin_dir: bin_dir.to_owned(),
            cni_path,
            routing: spec.routing,
            ipam: spec.ipam,
            etcd: None,
            operator: None,
            router: None,
            kube_proxy_replacement: false,
            masquerade: spec.masquerade,
            tunnel_protocol: spec.tunnel_protocol,
            datapath_mode: spec.datapath_mode,
            nodes: Vec::new(),
            pods: Vec::new(),
            next_node: 0,
        };
        state.save(dir)?;

        fabric::create_fabric(&state.fabric_netns, spec.fabric_gateway())?;
        let router = RouterInfo {
            netns: names::router_netns(name),
            netns_path: netns::named_path(&names::router_netns(name)),
            address: spec.router_address(),
            networks: fabric::outside_networks(),
            server: None,
        };
        state.router = Some(router.clone());
        state.save(dir)?;
        fabric::create_router(&state.fabric_netns, &router)?;
        let server = start_router_server(dir, &router, spec.agent_timeout)?;
        if let Some(r) = state.router.as_mut() {
            r.server = Some(server);
        }
        state.save(dir)?;
        state.kube_proxy_replacement = spec.kube_proxy_replacement;
        state.save(dir)?;
        state.etcd = Some(start_etcd(&state, etcd_binary, spec.agent_timeout)?);
        state.save(dir)?;
        if spec.ipam == IpamMode::ClusterPool {
            let operator = OperatorInfo {
                config: dir.join("operator.yaml"),
                log: dir.join("operator.log"),
                process: None,
            };
            let text =
                serde_yaml::to_string(&operator_config(spec)).expect("YAML values serialize");
            std::fs::write(&operator.config, text).map_err(io_err("writing", &operator.config))?;
            state.operator = Some(operator);
            state.save(dir)?;
            let rec = spawn_operator(&state)?;
            if let Some(op) = state.operator.as_mut() {
                op.process = Some(rec);
            }
            state.save(dir)?;
        }

        for (index, (node, address, pod_cidr)) in plan.iter().enumerate() {
            let node_ns = names::node_netns(name, node);
            let node_dir = dir.join(node);
            let info = NodeInfo {
                name: node.clone(),
                index,
                netns: node_ns.clone(),
                netns_path: netns::named_path(&node_ns),
                address: *address,
                pod_cidr: (spec.ipam == IpamMode::HostScope).then_some(*pod_cidr),
                socket: node_dir.join("ciliate.sock"),
                config: node_dir.join("agent.yaml"),
                conflist: node_dir.join("net.d").join(cni::CONFLIST_NAME),
                bpf_root: bpffs.join(node),
                health_netns: names::health_netns(name, node),
                dir: node_dir,
                agent: None,
            };
            state.nodes.push(info.clone());
            state.save(dir)?;
            Self::build_node(&state, &info, spec)?;
        }

        // One after another, so the operator hands out PodCIDRs in node order
        // (node0 gets the pool's first).
        for i in 0..state.nodes.len() {
            let rec = spawn_agent(&state.nodes[i], bin_dir)?;
            state.nodes[i].agent = Some(rec);
            state.save(dir)?;
            let status = wait_for_agent(&state, &state.nodes[i], spec.agent_timeout)?;
            state.nodes[i].pod_cidr = Some(status.ipam.cidr);
            state.save(dir)?;
            fabric::route_pod_cidr(&state.fabric_netns, status.ipam.cidr, state.nodes[i].ip())?;
        }
        Ok(state)
    }

    fn build_node(state: &LabState, node: &NodeInfo, spec: &LabSpec) -> Result<()> {
        fabric::create_netns(&node.netns, &[("net.ipv4.ip_forward", "1")])?;
        fabric::plug_node(
            &state.fabric_netns,
            &node.name,
            &node.netns_path,
            node.address,
        )?;
        if let Some(router) = &state.router {
            fabric::route_outside(&node.netns, router.ip())?;
        }

        for d in [
            node.dir.clone(),
            node.dir.join("state"),
            node.dir.join("net.d"),
            node.bpf_root.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let conflist = cni::conflist(&node.socket, &node.dir.join("cni.log"));
        let text = serde_json::to_string_pretty(&conflist).expect("JSON values serialize");
        std::fs::write(&node.conflist, text).map_err(io_err("writing", &node.conflist))?;
        let etcd = state.etcd.as_ref().map(|e| e.endpoint.as_str());
        let mut config = agent_config(node, spec, etcd);
        if state.kube_proxy_replacement {
            set_default(&mut config, "kubeProxyReplacement", true.into());
        }
        let text = serde_yaml::to_string(&config).expect("YAML values serialize");
        std::fs::write(&node.config, text).map_err(io_err("writing", &node.config))
    }

    /// An existing lab.
    pub fn open(name: &str) -> Result<Self> {
        names::validate_lab_name(name)?;
        let dir = names::lab_dir(name);
        if !LabState::path(&dir).exists() {
            return Err(LabError::NoLab {
                name: name.to_string(),
                state: LabState::path(&dir),
            });
        }
        Ok(Self {
            state: LabState::load(&dir)?,
            already_up: false,
        })
    }

    /// Whether `up` found this lab running already.
    pub fn was_already_up(&self) -> bool {
        self.already_up
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// Reads the state file again (another process may have changed it).
    pub fn reload(&mut self) -> Result<()> {
        self.state = LabState::load(&self.state.dir)?;
        Ok(())
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.state.nodes
    }

    pub fn pods(&self) -> &[PodInfo] {
        &self.state.pods
    }

    pub fn node(&self, name: &str) -> Result<&NodeInfo> {
        self.state.node(name).ok_or_else(|| LabError::UnknownNode {
            lab: self.state.name.clone(),
            field: "node".into(),
            value: name.to_string(),
            nodes: self.state.node_names(),
        })
    }

    /// A pod by `namespace/name`, or by `name` when only one namespace has it.
    pub fn pod(&self, name: &str) -> Result<&PodInfo> {
        match self.resolve(name)? {
            Target::Pod(p) => Ok(p),
            Target::Node(_) | Target::Router(_) => Err(LabError::Invalid {
                field: "pod".into(),
                value: name.to_string(),
                allowed: format!("a pod of lab {}, not a node or the router", self.state.name),
            }),
        }
    }

    /// A client for a node's agent.
    /// Kills a node's agent with SIGKILL, as a crash would, and waits for it
    /// to be gone. Its pinned programs, maps and links stay.
    pub fn kill_agent(&mut self, node: &str) -> Result<()> {
        let index = self.node(node)?.index;
        if let Some(rec) = self.state.nodes[index].agent.take() {
            sys::kill_recorded(&rec);
            self.state.save(&self.state.dir)?;
        }
        Ok(())
    }

    /// Starts a node's agent again (after [`Lab::kill_agent`]) and waits until it answers.
    pub fn start_agent(&mut self, node: &str, timeout: Duration) -> Result<()> {
        let index = self.node(node)?.index;
        let rec = spawn_agent(&self.state.nodes[index], &self.state.bin_dir)?;
        self.state.nodes[index].agent = Some(rec);
        self.state.save(&self.state.dir)?;
        let status = wait_for_agent(&self.state, &self.state.nodes[index], timeout)?;
        self.state.nodes[index].pod_cidr = Some(status.ipam.cidr);
        self.state.save(&self.state.dir)
    }

    /// Kills the operator with SIGKILL and waits for it to be gone.
    pub fn kill_operator(&mut self) -> Result<()> {
        let Some(op) = self.state.operator.as_mut() else {
            return Err(self.no_operator());
        };
        if let Some(rec) = op.process.take() {
            sys::kill_recorded(&rec);
            self.state.save(&self.state.dir)?;
        }
        Ok(())
    }

    /// Starts the operator again (after [`Lab::kill_operator`]).
    pub fn start_operator(&mut self) -> Result<()> {
        if self.state.operator.is_none() {
            return Err(self.no_operator());
        }
        let rec = spawn_operator(&self.state)?;
        if let Some(op) = self.state.operator.as_mut() {
            op.process = Some(rec);
        }
        self.state.save(&self.state.dir)
    }

    /// Stops the lab's etcd with SIGKILL (its data stays) and waits for it to
    /// be gone: the agents and the operator lose the store.
    pub fn stop_etcd(&mut self) -> Result<()> {
        let Some(etcd) = self.state.etcd.as_mut() else {
            return Err(self.no_etcd());
        };
        if let Some(rec) = etcd.process.take() {
            sys::kill_recorded(&rec);
            self.state.save(&self.state.dir)?;
        }
        Ok(())
    }

    /// Starts the lab's etcd again (after [`Lab::stop_etcd`]) on the same
    /// address and data, and waits until it is healthy.
    pub fn start_etcd(&mut self, timeout: Duration) -> Result<()> {
        let Some(etcd) = &self.state.etcd else {
            return Err(self.no_etcd());
        };
        if etcd.process.as_ref().is_some_and(sys::alive) {
            return Ok(());
        }
        let wanted = if etcd.binary.as_os_str().is_empty() {
            Path::new("etcd")
        } else {
            etcd.binary.as_path()
        };
        let binary = sys::find_program(wanted).ok_or_else(|| LabError::BinaryMissing {
            binary: format!(
                "{} (etcd-server; install it with scripts/install-deps.sh)",
                wanted.display()
            ),
            searched: std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .collect(),
        })?;
        let started = start_etcd(&self.state, &binary, timeout)?;
        self.state.etcd = Some(started);
        self.state.save(&self.state.dir)
    }

    fn no_etcd(&self) -> LabError {
        LabError::Invalid {
            field: format!("lab {}", self.state.name),
            value: "no etcd".into(),
            allowed: "a lab made by this ciliate (it runs etcd in the fabric)".into(),
        }
    }

    fn no_operator(&self) -> LabError {
        LabError::Invalid {
            field: format!("lab {}", self.state.name),
            value: format!("ipam {}", self.state.ipam),
            allowed: "a lab with cluster-pool IPAM (only those run ciliate-operator)".into(),
        }
    }

    /// Runs `f` with a store connected to the lab's etcd. The connection is made
    /// from a thread inside the fabric namespace (etcd listens only there), on a
    /// runtime that lives for this call.
    pub fn with_store<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(ciliate_store::Store) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ciliate_store::Result<T>>,
    {
        let Some(etcd) = &self.state.etcd else {
            return Err(self.no_etcd());
        };
        let endpoint = etcd.endpoint.clone();
        let fabric = netns::named_path(&self.state.fabric_netns);
        let for_error = endpoint.clone();
        let result = netns::run_in(&fabric, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ciliate_store::Error::Unreachable {
                    backend: "etcd",
                    endpoints: endpoint.clone(),
                    source: Box::new(e),
                })?;
            runtime.block_on(async move {
                let config = ciliate_store::EtcdConfig {
                    connect_timeout: STORE_CONNECT_TIMEOUT,
                    ..ciliate_store::EtcdConfig::new(endpoint)
                };
                let store = ciliate_store::Store::etcd(config).await?;
                f(store).await
            })
        })?;
        result.map_err(|source| LabError::Store {
            endpoint: for_error,
            source,
        })
    }

    /// Writes a pod to the store as the API server would hold it once running:
    /// the manifest's object with `spec.nodeName`, `status.phase: Running`,
    /// `podIP`/`podIPs` and `hostIP`.
    fn publish_pod(&self, pod: &PodManifest, info: &PodInfo) -> Result<()> {
        let node = self.node(&info.node)?;
        let object = pod_object(pod, info, node.ip());
        self.with_store(move |store| async move { store.put(&object).await.map(drop) })
    }

    pub fn client(&self, node: &str) -> Result<ciliate_api::Client> {
        Ok(ciliate_api::Client::new(&self.node(node)?.socket))
    }

    /// Resolves a node name, `namespace/pod` or a pod name.
    pub fn resolve(&self, name: &str) -> Result<Target<'_>> {
        let lab = self.state.name.clone();
        let unknown = || LabError::UnknownTarget {
            lab: lab.clone(),
            value: name.to_string(),
            nodes: self.state.node_names(),
            pods: self.state.pods.iter().map(PodInfo::key).collect(),
        };
        if let Some((ns, pod)) = name.split_once('/') {
            return self.state.pod(ns, pod).map(Target::Pod).ok_or_else(unknown);
        }
        let pods: Vec<&PodInfo> = self.state.pods.iter().filter(|p| p.name == name).collect();
        if name == names::ROUTER {
            if let Some(router) = &self.state.router {
                if pods.is_empty() {
                    return Ok(Target::Router(router));
                }
                return Err(LabError::Ambiguous {
                    lab,
                    value: name.to_string(),
                    matches: std::iter::once("the outside host router".to_string())
                        .chain(pods.iter().map(|p| format!("pod {}", p.key())))
                        .collect(),
                });
            }
        }
        let node = self.state.node(name);
        match (node, pods.as_slice()) {
            (Some(n), []) => Ok(Target::Node(n)),
            (None, [p]) => Ok(Target::Pod(p)),
            (None, []) => Err(unknown()),
            (node, pods) => Err(LabError::Ambiguous {
                lab,
                value: name.to_string(),
                matches: node
                    .map(|n| format!("node {}", n.name))
                    .into_iter()
                    .chain(pods.iter().map(|p| format!("pod {}", p.key())))
                    .collect(),
            }),
        }
    }

    /// A command that runs `argv` in a node's or pod's namespace. In a node,
    /// `CILIATE_SOCKET` points at that node's agent and the ciliate binaries
    /// come first in `PATH`; in a pod, `CILIATE_SOCKET` is removed.
    pub fn command(&self, target: &str, argv: &[String]) -> Result<Command> {
        let Some((program, rest)) = argv.split_first() else {
            return Err(LabError::Invalid {
                field: "command".into(),
                value: String::new(),
                allowed: "a program and its arguments after --".into(),
            });
        };
        let (path, node) = match self.resolve(target)? {
            Target::Node(n) => (&n.netns_path, Some(n)),
            Target::Pod(p) => (&p.netns_path, None),
            Target::Router(r) => (&r.netns_path, None),
        };
        let mut cmd = sys::command_in(path, program)?;
        cmd.args(rest);
        match node {
            Some(n) => {
                cmd.env(ciliate_api::SOCKET_ENV, &n.socket);
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut dirs = vec![self.state.bin_dir.clone()];
                dirs.extend(std::env::split_paths(&path));
                if let Ok(joined) = std::env::join_paths(dirs) {
                    cmd.env("PATH", joined);
                }
            }
            None => {
                cmd.env_remove(ciliate_api::SOCKET_ENV);
            }
        }
        Ok(cmd)
    }

    /// Runs `argv` in a node or pod and captures its output.
    pub fn exec(&self, target: &str, argv: &[&str]) -> Result<Output> {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_string()).collect();
        let mut cmd = self.command(target, &argv)?;
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                what: format!("a command in {target}"),
                argv,
                source,
            })
    }

    /// Runs `argv` in a node or pod with the caller's stdio; SIGINT and SIGQUIT
    /// go to the command while it runs.
    pub fn exec_inherit(&self, target: &str, argv: &[String]) -> Result<ExitStatus> {
        let mut cmd = self.command(target, argv)?;
        // SAFETY: changing dispositions of SIGINT/SIGQUIT; restored below.
        let (old_int, old_quit) = unsafe {
            (
                libc::signal(libc::SIGINT, libc::SIG_IGN),
                libc::signal(libc::SIGQUIT, libc::SIG_IGN),
            )
        };
        let result = cmd.status();
        // SAFETY: restores what was there.
        unsafe {
            libc::signal(libc::SIGINT, old_int);
            libc::signal(libc::SIGQUIT, old_quit);
        }
        result.map_err(|source| LabError::Spawn {
            what: format!("a command in {target}"),
            argv: argv.to_vec(),
            source,
        })
    }

    /// Applies every Pod of a Kubernetes YAML text; other kinds are skipped.
    pub fn apply_yaml(&mut self, yaml: &str) -> Result<Vec<ApplyOutcome>> {
        let manifest = manifest::parse(yaml)?;
        self.apply_manifest(&manifest)
    }

    /// Applies a parsed manifest. Every pod's node is checked before
    /// anything is made; pods are then made one by one.
    pub fn apply_manifest(&mut self, manifest: &Manifest) -> Result<Vec<ApplyOutcome>> {
        self.check_nodes(manifest)?;
        let mut outcomes = Vec::new();
        for object in &manifest.objects {
            outcomes.push(match object {
                manifest::Object::Pod(pod) => self.apply_pod(pod)?,
                manifest::Object::Service(svc) => {
                    let (stored, change) = self.apply_service(svc)?;
                    ApplyOutcome::for_service(&stored, change)
                }
                manifest::Object::EndpointSlice(slice) => ApplyOutcome::EndpointSlice {
                    slice: services::key_of(&slice.metadata),
                    change: self.apply_endpoint_slice(slice)?,
                },
                manifest::Object::ConfigMap(map) => ApplyOutcome::ConfigMap {
                    config_map: services::key_of(&map.metadata),
                    change: self.apply_config_map(map)?,
                },
                manifest::Object::Skipped { kind, name } => ApplyOutcome::Skipped {
                    kind: kind.clone(),
                    name: name.clone(),
                },
            });
        }
        Ok(outcomes)
    }

    /// Fails if a pod names a node the lab does not have.
    pub fn check_nodes(&self, manifest: &Manifest) -> Result<()> {
        for pod in manifest.pods() {
            if let Some(node) = &pod.node_name {
                if self.state.node(node).is_none() {
                    return Err(LabError::UnknownNode {
                        lab: self.state.name.clone(),
                        field: format!("spec.nodeName of pod {}", pod.key()),
                        value: node.clone(),
                        nodes: self.state.node_names(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates one pod: its namespace, CNI ADD as a runtime does it, then its
    /// containers' commands. Applying an existing pod changes nothing.
    pub fn apply_pod(&mut self, pod: &PodManifest) -> Result<ApplyOutcome> {
        let _lock = LabLock::acquire(&self.state.dir)?;
        self.reload()?;
        if let Some(existing) = self.state.pod(&pod.namespace, &pod.name).cloned() {
            let differs = existing.spec_hash != pod.spec_hash;
            if !differs {
                // Written again, so a failed write earlier is repaired by re-applying.
                self.publish_pod(pod, &existing)?;
                self.sync_endpoint_slices()?;
            }
            return Ok(ApplyOutcome::Unchanged {
                pod: pod.key(),
                differs,
            });
        }
        let (node, scheduled) = if let Some(n) = &pod.node_name {
            let node = self.state.node(n).ok_or_else(|| LabError::UnknownNode {
                lab: self.state.name.clone(),
                field: format!("spec.nodeName of pod {}", pod.key()),
                value: n.clone(),
                nodes: self.state.node_names(),
            })?;
            (node.clone(), false)
        } else {
            let i = self.state.next_node % self.state.nodes.len();
            self.state.next_node = self.state.next_node.wrapping_add(1);
            (self.state.nodes[i].clone(), true)
        };
        let info = self.create_pod(pod, &node)?;
        self.publish_pod(pod, &info)?;
        self.sync_endpoint_slices()?;
        let outcome = ApplyOutcome::Created {
            pod: pod.key(),
            node: node.name.clone(),
            ip: info.ip,
            scheduled,
        };
        Ok(outcome)
    }

    fn create_pod(&mut self, pod: &PodManifest, node: &NodeInfo) -> Result<PodInfo> {
        let lab = self.state.name.clone();
        let container_id = names::container_id(&lab, &pod.namespace, &pod.name);
        let dir = self
            .state
            .dir
            .join("pods")
            .join(names::pod_dir_name(&pod.namespace, &pod.name));
        let mut info = PodInfo {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: node.name.clone(),
            netns: node.netns.clone(),
            netns_path: node.netns_path.clone(),
            container_id,
            ip: node.ip(),
            host_network: pod.host_network,
            cni_result: None,
            spec_hash: pod.spec_hash.clone(),
            dir: dir.clone(),
            containers: Vec::new(),
            condition: PodCondition::Ready,
        };
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        if !pod.host_network {
            let mut ns = names::pod_netns(&lab, &pod.namespace, &pod.name, false);
            if self.state.pods.iter().any(|p| p.netns == ns) || netns::named_path(&ns).exists() {
                ns = names::pod_netns(&lab, &pod.namespace, &pod.name, true);
            }
            info.netns_path = netns::named_path(&ns);
            info.netns.clone_from(&ns);
            if let Err(e) = self.network_pod(&mut info, node) {
                let _ = netns::delete_named(&info.netns);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        self.state.pods.push(info.clone());
        self.state.save(&self.state.dir)?;

        if let Err(e) = Self::start_containers(&mut info, pod) {
            let key = info.key();
            let _ = self.remove_pod(&key);
            return Err(e);
        }
        if let Some(p) = self.state.pods.iter_mut().find(|p| p.key() == info.key()) {
            p.containers.clone_from(&info.containers);
        }
        self.state.save(&self.state.dir)?;
        Ok(info)
    }

    /// Namespace and CNI ADD. On failure, DEL undoes the plugin's part.
    fn network_pod(&self, info: &mut PodInfo, node: &NodeInfo) -> Result<()> {
        fabric::create_netns(&info.netns, &[])?;
        let list = read_conflist(&node.conflist)?;
        let key = info.key();
        let inv = invocation(&key, info, node, &self.state.cni_path);
        let result = match cni::add(&list, &inv) {
            Ok(r) => r,
            Err(e) => {
                // A runtime calls DEL after a failed ADD.
                let _ = cni::del(&list, &inv, None);
                return Err(e);
            }
        };
        let Some(ip) = cni::result_ipv4(&result) else {
            let _ = cni::del(&list, &inv, Some(&result));
            return Err(LabError::Cni {
                pod: key,
                command: "ADD".into(),
                plugin: CNI_TYPE.into(),
                message: format!("its result has no IPv4 address in \"ips\": {result}"),
            });
        };
        info.ip = ip;
        info.cni_result = Some(result);
        Ok(())
    }

    fn start_containers(info: &mut PodInfo, pod: &PodManifest) -> Result<()> {
        for c in &pod.containers {
            if c.argv.is_empty() {
                info.containers.push(ContainerInfo {
                    name: c.name.clone(),
                    process: None,
                });
                continue;
            }
            let log = info.dir.join(format!("{}.log", c.name));
            let mut env = c.env.clone();
            env.push(("HOSTNAME".into(), pod.name.clone()));
            let rec = sys::spawn_detached(&sys::Detached {
                what: format!("container {} of pod {}", c.name, info.key()),
                netns: &info.netns_path,
                argv: &c.argv,
                env: &env,
                env_remove: &[ciliate_api::SOCKET_ENV],
                cwd: c.working_dir.as_deref().map(Path::new),
                log: &log,
            })?;
            info.containers.push(ContainerInfo {
                name: c.name.clone(),
                process: Some(rec),
            });
        }
        Ok(())
    }

    /// Containers of a pod whose command is not running (exited or never started).
    pub fn exited_containers(info: &PodInfo) -> Vec<(String, Option<PathBuf>)> {
        info.containers
            .iter()
            .filter_map(|c| match &c.process {
                Some(p) if !sys::alive(p) => Some((c.name.clone(), Some(p.log.clone()))),
                _ => None,
            })
            .collect()
    }

    /// Deletes the Pods, Services, EndpointSlices and ConfigMaps of a Kubernetes YAML
    /// text; returns the ones that existed (`pod/ns/name`, `service/...`).
    pub fn delete_yaml(&mut self, yaml: &str) -> Result<Vec<String>> {
        let manifest = manifest::parse(yaml)?;
        let mut deleted = Vec::new();
        for object in &manifest.objects {
            let (kind, key, existed) = match object {
                manifest::Object::Pod(pod) => ("pod", pod.key(), self.delete_pod(&pod.key())?),
                manifest::Object::Service(svc) => {
                    let key = services::key_of(&svc.metadata);
                    ("service", key.clone(), self.delete_service(&key)?)
                }
                manifest::Object::EndpointSlice(slice) => {
                    let key = services::key_of(&slice.metadata);
                    (
                        "endpointslice",
                        key.clone(),
                        self.delete_endpoint_slice(&key)?,
                    )
                }
                manifest::Object::ConfigMap(map) => {
                    let key = services::key_of(&map.metadata);
                    ("configmap", key.clone(), self.delete_config_map(&key)?)
                }
                manifest::Object::Skipped { .. } => continue,
            };
            if existed {
                deleted.push(format!("{kind}/{key}"));
            }
        }
        Ok(deleted)
    }

    /// Deletes a pod (`namespace/name` or a unique `name`): kills its
    /// processes, CNI DEL with the cached result, deletes its namespace.
    /// Returns false if there was no such pod.
    pub fn delete_pod(&mut self, name: &str) -> Result<bool> {
        let _lock = LabLock::acquire(&self.state.dir)?;
        self.reload()?;
        let key = match self.resolve(name) {
            Ok(Target::Pod(p)) => p.key(),
            Ok(Target::Node(_) | Target::Router(_)) => {
                return Err(LabError::Invalid {
                    field: "pod".into(),
                    value: name.into(),
                    allowed: "a pod, not a node or the router".into(),
                })
            }
            Err(LabError::UnknownTarget { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.remove_pod(&key)?;
        Ok(true)
    }

    fn remove_pod(&mut self, key: &str) -> Result<()> {
        let Some(info) = self.state.pods.iter().find(|p| p.key() == key).cloned() else {
            return Ok(());
        };
        let mut pids: BTreeSet<i32> = info
            .containers
            .iter()
            .filter_map(|c| c.process.as_ref())
            .filter(|p| sys::alive(p))
            .map(|p| p.pid)
            .collect();
        if !info.host_network {
            if let Some(id) = sys::ns_id(&info.netns_path) {
                pids.extend(sys::pids_in_namespaces(&BTreeSet::from([id])));
            }
        }
        let left = sys::terminate(&pids, Duration::from_secs(3));
        if !left.is_empty() {
            return Err(LabError::Leftovers {
                name: self.state.name.clone(),
                leftovers: left
                    .iter()
                    .map(|p| format!("process {p} of pod {key}"))
                    .collect(),
            });
        }
        if !info.host_network {
            let node = self.node(&info.node)?.clone();
            let list = read_conflist(&node.conflist)?;
            let inv = invocation(key, &info, &node, &self.state.cni_path);
            cni::del(&list, &inv, info.cni_result.as_ref())?;
            netns::delete_named(&info.netns)?;
        }
        let _ = std::fs::remove_dir_all(&info.dir);
        self.state.pods.retain(|p| p.key() != key);
        self.state.save(&self.state.dir)?;
        let (namespace, name) = (info.namespace.clone(), info.name.clone());
        self.with_store(move |store| async move {
            store
                .delete::<ciliate_store::Pod>(Some(&namespace), &name)
                .await
                .map(drop)
        })?;
        self.sync_endpoint_slices()
    }

    /// Changes what a pod's endpoints say in EndpointSlices, its processes
    /// untouched: [`PodCondition::Terminating`] (being deleted: existing
    /// connections go on, new ones go elsewhere), [`PodCondition::NotReady`]
    /// (no traffic at all), or back to [`PodCondition::Ready`]. The pod in the
    /// store changes the way the API server would show it, and the slices of
    /// the services selecting it are rewritten.
    pub fn set_pod_condition(&mut self, name: &str, condition: PodCondition) -> Result<()> {
        let _lock = LabLock::acquire(&self.state.dir)?;
        self.reload()?;
        let key = self.pod(name)?.key();
        let Some(info) = self.state.pods.iter_mut().find(|p| p.key() == key) else {
            return Ok(());
        };
        info.condition = condition;
        let info = info.clone();
        self.state.save(&self.state.dir)?;
        let node_ip = self.node(&info.node)?.ip();
        let (namespace, pod_name) = (info.namespace.clone(), info.name.clone());
        let stored = self.with_store(move |store| async move {
            store
                .get::<ciliate_store::Pod>(Some(&namespace), &pod_name)
                .await
        })?;
        let Some(stored) = stored else {
            return Err(LabError::Invalid {
                field: "pod".into(),
                value: key,
                allowed: "a pod the store has (re-apply its manifest)".into(),
            });
        };
        let mut object = stored;
        object.metadata.resource_version = None;
        if object.status.is_none() {
            object.status = Some(pod_object_status(&info, node_ip));
        }
        set_condition(&mut object, condition);
        self.with_store(move |store| async move { store.put(&object).await.map(drop) })?;
        self.sync_endpoint_slices()
    }

    /// `PodCIDR via node IP` for every node whose PodCIDR is known.
    pub fn pod_cidr_routes(&self) -> Vec<(Ipv4Net, Ipv4Addr)> {
        self.state
            .nodes
            .iter()
            .filter_map(|n| n.pod_cidr.map(|c| (c, n.ip())))
            .collect()
    }

    /// Installs (`add`) or removes the `PodCIDR via node IP` routes on the
    /// router, so that it can (or cannot) answer pods that reach it with
    /// their own address. Idempotent; returns the routes.
    pub fn router_routes(&self, add: bool) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
        let netns = self.router()?.netns.clone();
        let routes = self.pod_cidr_routes();
        if add && routes.len() < self.state.nodes.len() {
            return Err(LabError::Invalid {
                field: "router-routes add".into(),
                value: format!(
                    "{} of {} nodes have a known PodCIDR",
                    routes.len(),
                    self.state.nodes.len()
                ),
                allowed: "a lab whose agents all reported their PodCIDR (`ciliate lab status`)"
                    .into(),
            });
        }
        fabric::router_routes(&netns, &routes, add)?;
        Ok(routes)
    }

    /// The router's routes with a gateway (`PodCIDR via node IP`).
    pub fn router_pod_routes(&self) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
        let netns_path = self.router()?.netns_path.clone();
        let out = sys::command_in(&netns_path, "ip")?
            .args(["-j", "-4", "route", "show"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                what: "listing the router's routes".into(),
                argv: vec!["ip".into(), "-j".into(), "-4".into(), "route".into()],
                source,
            })?;
        let table: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Ok(table
            .iter()
            .filter_map(|r| {
                let dst: Ipv4Net = r.get("dst")?.as_str()?.parse().ok()?;
                let via: Ipv4Addr = r.get("gateway")?.as_str()?.parse().ok()?;
                Some((dst, via))
            })
            .collect())
    }

    /// The outside host, or why this lab has none.
    pub fn router(&self) -> Result<&RouterInfo> {
        self.state.router.as_ref().ok_or_else(|| LabError::Invalid {
            field: format!("lab {}", self.state.name),
            value: "no router".into(),
            allowed: "a lab made by this ciliate (take it down and up again)".into(),
        })
    }

    /// Problems that make the lab unusable (missing namespaces, dead agents).
    pub fn health_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !netns::named_path(&self.state.fabric_netns).exists() {
            problems.push(format!("namespace {} is missing", self.state.fabric_netns));
        }
        if let Some(router) = &self.state.router {
            if !router.netns_path.exists() {
                problems.push(format!("namespace {} is missing", router.netns));
            }
            if let Some(server) = router.server.as_ref().filter(|p| !sys::alive(p)) {
                problems.push(format!(
                    "the router's HTTP server (pid {}) is not running",
                    server.pid
                ));
            }
        }
        if sys::mounts_under(&self.state.bpffs).is_empty() {
            problems.push(format!(
                "bpffs {} is not mounted",
                self.state.bpffs.display()
            ));
        }
        for service in self.services() {
            match (service.pid, service.alive) {
                (_, true) => {}
                (Some(pid), false) => {
                    problems.push(format!("{} (pid {pid}) is not running", service.name));
                }
                (None, false) => problems.push(format!("{} is not running", service.name)),
            }
        }
        for node in &self.state.nodes {
            if !node.netns_path.exists() {
                problems.push(format!("namespace {} is missing", node.netns));
            }
            match &node.agent {
                Some(p) if sys::alive(p) => {
                    if let Err(e) = ciliate_api::Client::new(&node.socket)
                        .get::<ciliate_api::Status>("/v1/status")
                    {
                        problems.push(format!("the agent of {} does not answer: {e}", node.name));
                    }
                }
                Some(p) => problems.push(format!(
                    "the agent of {} (pid {}) is not running",
                    node.name, p.pid
                )),
                None => problems.push(format!("the agent of {} was never started", node.name)),
            }
        }
        problems
    }

    /// Nodes and pods with their addresses and processes.
    pub fn status(&self) -> LabStatus {
        let nodes = self
            .state
            .nodes
            .iter()
            .map(|n| {
                let alive = n.agent.as_ref().is_some_and(sys::alive);
                let status = if alive {
                    ciliate_api::Client::new(&n.socket)
                        .get::<ciliate_api::Status>("/v1/status")
                        .ok()
                } else {
                    None
                };
                NodeStatus {
                    name: n.name.clone(),
                    ip: n.ip(),
                    pod_cidr: status.as_ref().map(|s| s.ipam.cidr).or(n.pod_cidr),
                    agent_ready: status.is_some(),
                    netns: n.netns.clone(),
                    socket: n.socket.clone(),
                    agent_pid: n.agent.as_ref().map(|a| a.pid),
                    agent_alive: alive,
                    log: n.agent.as_ref().map(|a| a.log.clone()),
                }
            })
            .collect();
        let pods = self
            .state
            .pods
            .iter()
            .map(|p| PodStatus {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node.clone(),
                ip: p.ip,
                netns: p.netns.clone(),
                host_network: p.host_network,
                containers: p
                    .containers
                    .iter()
                    .map(|c| ContainerStatus {
                        name: c.name.clone(),
                        pid: c.process.as_ref().map(|p| p.pid),
                        alive: c.process.as_ref().is_some_and(sys::alive),
                        log: c.process.as_ref().map(|p| p.log.clone()),
                    })
                    .collect(),
            })
            .collect();
        LabStatus {
            name: self.state.name.clone(),
            dir: self.state.dir.clone(),
            fabric_netns: self.state.fabric_netns.clone(),
            bpffs: self.state.bpffs.clone(),
            routing: self.state.routing,
            ipam: self.state.ipam,
            processes: self.services(),
            router: self.state.router.as_ref().map(|r| RouterStatus {
                ip: r.ip(),
                netns: r.netns.clone(),
                networks: r.networks.clone(),
                server_pid: r.server.as_ref().map(|p| p.pid),
                server_alive: r.server.as_ref().is_some_and(sys::alive),
                pod_cidr_routes: self.router_pod_routes().unwrap_or_default(),
            }),
            masquerade: self.state.masquerade,
            tunnel_protocol: self.state.tunnel_protocol,
            datapath_mode: self.state.datapath_mode,
            kube_proxy_replacement: self.state.kube_proxy_replacement,
            nodes,
            pods,
        }
    }

    /// etcd and the operator, as far as this lab has them.
    pub fn services(&self) -> Vec<ServiceStatus> {
        let mut out = Vec::new();
        if let Some(etcd) = &self.state.etcd {
            out.push(ServiceStatus {
                name: "etcd".into(),
                address: Some(etcd.endpoint.clone()),
                pid: etcd.process.as_ref().map(|p| p.pid),
                alive: etcd.process.as_ref().is_some_and(sys::alive),
                log: etcd.process.as_ref().map(|p| p.log.clone()),
            });
        }
        if let Some(op) = &self.state.operator {
            out.push(ServiceStatus {
                name: OPERATOR_BIN.into(),
                address: None,
                pid: op.process.as_ref().map(|p| p.pid),
                alive: op.process.as_ref().is_some_and(sys::alive),
                log: Some(op.log.clone()),
            });
        }
        out
    }

    /// Wraps the lab in a guard that takes it down when dropped.
    pub fn into_guard(self) -> LabGuard {
        LabGuard { lab: Some(self) }
    }

    /// Removes everything lab `name` made, with or without a state file:
    /// processes in its namespaces (and recorded ones), the bpffs (and with
    /// it every pin), every `<name>-*` namespace, and its directory.
    /// Succeeds when there is nothing to remove.
    pub fn down(name: &str) -> Result<DownReport> {
        names::validate_lab_name(name)?;
        if !sys::is_root() {
            return Err(LabError::NotRoot);
        }
        let dir = names::lab_dir(name);
        let mut report = DownReport::default();
        let state = LabState::load(&dir).ok();
        let recorded: Vec<ProcessRecord> = state
            .iter()
            .flat_map(|s| {
                s.nodes
                    .iter()
                    .filter_map(|n| n.agent.clone())
                    .chain(
                        s.pods
                            .iter()
                            .flat_map(|p| p.containers.iter().filter_map(|c| c.process.clone())),
                    )
                    .chain(s.etcd.iter().filter_map(|e| e.process.clone()))
                    .chain(s.operator.iter().filter_map(|o| o.process.clone()))
                    .chain(s.router.iter().filter_map(|r| r.server.clone()))
            })
            .collect();

        let mut pids: BTreeSet<i32> = recorded
            .iter()
            .filter(|p| sys::alive(p))
            .map(|p| p.pid)
            .collect();
        let mut failures = Vec::new();
        // Children may appear while their parents die: scan until quiet.
        for _ in 0..5 {
            let ids: BTreeSet<sys::NsId> = lab_namespaces(name)
                .iter()
                .filter_map(|n| sys::ns_id(&netns::named_path(n)))
                .collect();
            pids.extend(sys::pids_in_namespaces(&ids));
            if pids.is_empty() {
                break;
            }
            report.processes += pids.len();
            let left = sys::terminate(&pids, Duration::from_secs(3));
            pids.clear();
            if !left.is_empty() {
                failures = left.iter().map(|p| format!("process {p}")).collect();
            }
        }

        // Pods containerd made live outside the lab's namespaces and cgroups.
        failures.extend(crate::containerd::cleanup_lab(&dir, name));
        let mounts = sys::mounts_under(&dir);
        report.mounts = mounts.len();
        failures.extend(sys::unmount_all_under(&dir));

        for ns in lab_namespaces(name) {
            match netns::delete_named(&ns) {
                Ok(()) => report.namespaces.push(ns),
                Err(e) => failures.push(format!("namespace {ns}: {e}")),
            }
        }
        if dir.exists() && sys::mounts_under(&dir).is_empty() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => report.removed_dir = true,
                Err(e) => failures.push(format!("{}: {e}", dir.display())),
            }
        }
        failures.extend(leftovers(name));
        failures.sort();
        failures.dedup();
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(LabError::Leftovers {
                name: name.to_string(),
                leftovers: failures,
            })
        }
    }
}

/// Takes its lab down when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    /// `Lab::up` wrapped in a guard.
    pub fn up(spec: &LabSpec) -> Result<Self> {
        Lab::up(spec).map(Lab::into_guard)
    }

    /// Takes the lab down now and reports how it went.
    pub fn down(mut self) -> Result<DownReport> {
        let lab = self
            .lab
            .take()
            .expect("the guard holds a lab until dropped");
        Lab::down(lab.name())
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("the guard holds a lab until dropped")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .expect("the guard holds a lab until dropped")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take() {
            if let Err(e) = Lab::down(lab.name()) {
                eprintln!("taking lab {} down: {e}", lab.name());
            }
        }
    }
}

/// Every `/run/netns` entry of a lab.
pub fn lab_namespaces(lab: &str) -> Vec<String> {
    let prefix = names::netns_prefix(lab);
    let mut found: Vec<String> = std::fs::read_dir(netns::NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    found.sort();
    found
}

/// What of a lab exists: namespaces, processes in them, mounts, its directory.
pub fn leftovers(lab: &str) -> Vec<String> {
    let mut items = Vec::new();
    let namespaces = lab_namespaces(lab);
    let ids: BTreeSet<sys::NsId> = namespaces
        .iter()
        .filter_map(|n| sys::ns_id(&netns::named_path(n)))
        .collect();
    items.extend(namespaces.iter().map(|n| format!("namespace {n}")));
    items.extend(
        sys::pids_in_namespaces(&ids)
            .iter()
            .map(|p| format!("process {p}")),
    );
    let dir = names::lab_dir(lab);
    items.extend(
        sys::mounts_under(&dir)
            .iter()
            .map(|m| format!("mount {}", m.display())),
    );
    if dir.exists() {
        items.push(format!("directory {}", dir.display()));
    }
    items.extend(crate::containerd::leftovers(lab));
    items
}

/// The directory with the ciliate binaries: `explicit`, `$CILIATE_BIN_DIR`,
/// the current executable's directory or its parent (tests run from
/// `target/debug/deps`), the first that holds all of `needed`.
pub fn find_bin_dir(explicit: Option<&Path>, needed: &[&str]) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = explicit {
        candidates.push(dir.to_owned());
    } else if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        candidates.push(PathBuf::from(dir));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.to_owned());
            if let Some(parent) = dir.parent() {
                candidates.push(parent.to_owned());
            }
        }
    }
    for dir in &candidates {
        if needed.iter().all(|b| dir.join(b).is_file()) {
            return Ok(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()));
        }
    }
    let missing = needed
        .iter()
        .find(|b| !candidates.iter().any(|d| d.join(b).is_file()))
        .or(needed.first())
        .map_or_else(String::new, |b| (*b).to_string());
    Err(LabError::BinaryMissing {
        binary: missing,
        searched: candidates,
    })
}

fn read_conflist(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(path).map_err(io_err("reading the CNI conflist", path))?;
    serde_json::from_slice(&text).map_err(|e| LabError::Invalid {
        field: format!("CNI conflist {}", path.display()),
        value: String::from_utf8_lossy(&text).chars().take(200).collect(),
        allowed: format!("a JSON network configuration list ({e})"),
    })
}

/// The agent's config for a node, with the spec's extra keys merged over it.
///
/// cluster-pool: `ipam.mode: cluster-pool`, the store at `etcd`, `devices: [eth0]`
/// and the routing mode (native adds `autoDirectNodeRoutes` and
/// `ipv4NativeRoutingCIDR` = the pool). host-scope: `ipv4Range` = the node's
/// PodCIDR and the routing mode, nothing else (the agent uses no store).
pub fn agent_config(node: &NodeInfo, spec: &LabSpec, etcd: Option<&str>) -> serde_yaml::Value {
    let mut config = serde_yaml::Mapping::new();
    let s = |v: &str| serde_yaml::Value::String(v.to_string());
    let p = |v: &Path| serde_yaml::Value::String(v.to_string_lossy().into_owned());
    let list = |items: &[&str]| serde_yaml::Value::Sequence(items.iter().map(|i| s(i)).collect());
    config.insert(s("nodeName"), s(&node.name));
    match spec.ipam {
        IpamMode::HostScope => {
            if let Some(cidr) = node.pod_cidr {
                config.insert(s("ipv4Range"), s(&cidr.to_string()));
            }
        }
        IpamMode::ClusterPool => {
            let mut ipam = serde_yaml::Mapping::new();
            ipam.insert(s("mode"), s("cluster-pool"));
            config.insert(s("ipam"), serde_yaml::Value::Mapping(ipam));
            let mut store = serde_yaml::Mapping::new();
            store.insert(s("endpoints"), list(&[etcd.unwrap_or_default()]));
            config.insert(s("etcd"), serde_yaml::Value::Mapping(store));
            config.insert(s("devices"), list(&["eth0"]));
        }
    }
    config.insert(s("routingMode"), s(&spec.routing.to_string()));
    if spec.routing == RoutingMode::Tunnel {
        config.insert(s("tunnelProtocol"), s(&spec.tunnel_protocol.to_string()));
    }
    config.insert(s("datapathMode"), s(&spec.datapath_mode.to_string()));
    if spec.routing == RoutingMode::Native {
        if spec.ipam == IpamMode::ClusterPool {
            config.insert(s("autoDirectNodeRoutes"), serde_yaml::Value::Bool(true));
        }
        // Pod traffic inside the pool is never masqueraded (and the agent
        // refuses native routing with masquerading but without it).
        config.insert(
            s("ipv4NativeRoutingCIDR"),
            s(&spec.pod_cidr_pool.to_string()),
        );
    }
    let masquerade = spec.masquerade != Masquerade::Off;
    config.insert(
        s("enableIPv4Masquerade"),
        serde_yaml::Value::Bool(masquerade),
    );
    let mut bpf = serde_yaml::Mapping::new();
    bpf.insert(s("root"), p(&node.bpf_root));
    if masquerade {
        bpf.insert(
            s("masquerade"),
            serde_yaml::Value::Bool(spec.masquerade == Masquerade::Bpf),
        );
    }
    config.insert(s("bpf"), serde_yaml::Value::Mapping(bpf));
    if masquerade && spec.ipam == IpamMode::ClusterPool {
        // ip-masq-agent on, its list from the store's ConfigMap
        // kube-system/ip-masq-agent once one is applied. Until then (and
        // after it is deleted) an empty inline list is in force, so that
        // everything outside the cluster is masqueraded: without it the
        // agent would fall back to Cilium's default list, which excludes
        // 10.0.0.0/8 and 192.168.0.0/16 - the lab's whole outside world.
        let mut masq_config = serde_yaml::Mapping::new();
        masq_config.insert(
            s("nonMasqueradeCIDRs"),
            serde_yaml::Value::Sequence(Vec::new()),
        );
        let mut agent = serde_yaml::Mapping::new();
        agent.insert(s("enabled"), serde_yaml::Value::Bool(true));
        agent.insert(s("config"), serde_yaml::Value::Mapping(masq_config));
        config.insert(s("ipMasqAgent"), serde_yaml::Value::Mapping(agent));
    }
    config.insert(s("stateDir"), p(&node.dir.join("state")));
    config.insert(s("socketPath"), p(&node.socket));
    config.insert(s("healthNetns"), s(&node.health_netns));
    let mut config = serde_yaml::Value::Mapping(config);
    merge(
        &mut config,
        &serde_yaml::Value::Mapping(spec.agent_config.clone()),
    );
    config
}

/// The operator's config: the lab's etcd and PodCIDR pool.
pub fn operator_config(spec: &LabSpec) -> serde_yaml::Value {
    let yaml = format!(
        "etcd: {{endpoints: [\"{}\"]}}\nclusterPoolIPv4PodCIDRList: [\"{}\"]\nclusterPoolIPv4MaskSize: {}\n",
        spec.etcd_endpoint(),
        spec.pod_cidr_pool,
        spec.pod_cidr_prefix
    );
    serde_yaml::from_str(&yaml).expect("valid YAML")
}

/// A pod as the API server holds it once it runs on `node_ip`.
pub fn pod_object(pod: &PodManifest, info: &PodInfo, node_ip: Ipv4Addr) -> ciliate_store::Pod {
    use k8s_openapi::api::core::v1::PodSpec;
    let mut object = (*pod.object).clone();
    object.metadata.namespace = Some(info.namespace.clone());
    object.metadata.resource_version = None;
    let spec = object.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = Some(info.node.clone());
    object.status = Some(pod_object_status(info, node_ip));
    set_condition(&mut object, info.condition);
    object
}

/// A running pod's status: phase, pod IP (the node's for host-network pods), host IP.
fn pod_object_status(info: &PodInfo, node_ip: Ipv4Addr) -> k8s_openapi::api::core::v1::PodStatus {
    use k8s_openapi::api::core::v1::{HostIP, PodIP, PodStatus};
    let pod_ip = if info.host_network { node_ip } else { info.ip }.to_string();
    PodStatus {
        phase: Some("Running".into()),
        host_ip: Some(node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: node_ip.to_string(),
        }]),
        pod_ip: Some(pod_ip.clone()),
        pod_ips: Some(vec![PodIP { ip: pod_ip }]),
        ..PodStatus::default()
    }
}

/// Shows a pod's lifecycle the way the endpointslice controller reads it: a
/// not-ready pod has condition Ready False; a terminating one has a deletion
/// timestamp and stays ready (it serves what it has).
pub fn set_condition(object: &mut ciliate_store::Pod, condition: PodCondition) {
    use k8s_openapi::api::core::v1::PodCondition as StatusCondition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let status = object.status.get_or_insert_with(Default::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(StatusCondition {
        type_: "Ready".into(),
        status: if condition == PodCondition::NotReady {
            "False"
        } else {
            "True"
        }
        .into(),
        ..StatusCondition::default()
    });
    object.metadata.deletion_timestamp = (condition == PodCondition::Terminating).then(|| {
        // jiff's `now` needs its std feature; the system clock is enough.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        Time(k8s_openapi::jiff::Timestamp::from_second(now).unwrap_or_default())
    });
}

/// Sets `key` at the top of a config unless the spec's extra keys set it.
fn set_default(config: &mut serde_yaml::Value, key: &str, value: serde_yaml::Value) {
    if let serde_yaml::Value::Mapping(m) = config {
        let key = serde_yaml::Value::String(key.to_string());
        if !m.contains_key(&key) {
            m.insert(key, value);
        }
    }
}

fn merge(base: &mut serde_yaml::Value, over: &serde_yaml::Value) {
    match (base, over) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// How a runtime on `node` calls the plugin for the pod's `eth0`.
fn invocation<'a>(
    key: &'a str,
    info: &'a PodInfo,
    node: &'a NodeInfo,
    cni_path: &'a str,
) -> cni::Invocation<'a> {
    cni::Invocation {
        pod: key,
        pod_namespace: &info.namespace,
        pod_name: &info.name,
        container_id: &info.container_id,
        netns_path: &info.netns_path,
        ifname: "eth0",
        cni_path,
        runtime_netns: &node.netns_path,
    }
}

/// Starts a node's agent, detached, inside the node's namespace.
fn spawn_agent(node: &NodeInfo, bin_dir: &Path) -> Result<ProcessRecord> {
    let argv = vec![
        bin_dir.join(AGENT_BIN).to_string_lossy().into_owned(),
        "--config".to_string(),
        node.config.to_string_lossy().into_owned(),
    ];
    sys::spawn_detached(&sys::Detached {
        what: format!("the agent of {}", node.name),
        netns: &node.netns_path,
        argv: &argv,
        // Its output goes to a file: no colour codes.
        env: &[("NO_COLOR".to_string(), "1".to_string())],
        env_remove: &[ciliate_api::SOCKET_ENV],
        cwd: None,
        log: &node.dir.join("agent.log"),
    })
}

/// Starts etcd in the fabric namespace on the bridge's address, data under
/// the lab's directory, and waits until it is healthy.
fn start_etcd(state: &LabState, binary: &Path, timeout: Duration) -> Result<EtcdInfo> {
    let data_dir = state.dir.join("etcd");
    let gateway = fabric::gateway(state.fabric_cidr).addr();
    let options = ciliate_store::testing::EtcdOptions {
        binary: binary.to_owned(),
        name: state.name.clone(),
        listen_ip: gateway.into(),
        ..ciliate_store::testing::EtcdOptions::default()
    };
    let argv: Vec<String> = std::iter::once(binary.to_string_lossy().into_owned())
        .chain(
            options
                .args(ETCD_CLIENT_PORT, ETCD_PEER_PORT, &data_dir)
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned()),
        )
        .collect();
    // etcd reads ETCD_* variables as flags: none of the caller's may leak in.
    let etcd_env: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("ETCD"))
        .collect();
    let env_remove: Vec<&str> = etcd_env.iter().map(String::as_str).collect();
    let fabric = netns::named_path(&state.fabric_netns);
    let log = state.dir.join("etcd.log");
    let rec = sys::spawn_detached(&sys::Detached {
        what: "etcd".into(),
        netns: &fabric,
        argv: &argv,
        env: &[],
        env_remove: &env_remove,
        cwd: Some(&state.dir),
        log: &log,
    })?;
    let addr = std::net::SocketAddr::from((gateway, ETCD_CLIENT_PORT));
    let deadline = Instant::now() + timeout;
    loop {
        let waited =
            ciliate_store::testing::wait_healthy(addr, Some(&fabric), Duration::from_millis(500));
        match waited {
            Ok(()) => break,
            Err(e) if !sys::alive(&rec) || Instant::now() >= deadline => {
                return Err(LabError::ServiceNotReady {
                    what: "etcd".into(),
                    problem: if sys::alive(&rec) {
                        format!(
                            "was not healthy at {addr} within {} s ({e})",
                            timeout.as_secs()
                        )
                    } else {
                        format!("exited (pid {})", rec.pid)
                    },
                    log: log.clone(),
                    log_tail: sys::tail(&log, 15),
                });
            }
            Err(_) => {}
        }
    }
    Ok(EtcdInfo {
        endpoint: etcd_endpoint(gateway),
        data_dir,
        binary: binary.to_owned(),
        process: Some(rec),
    })
}

/// Starts the router's HTTP server (every address, port 80) and waits until
/// it accepts on the router's fabric address.
fn start_router_server(
    dir: &Path,
    router: &RouterInfo,
    timeout: Duration,
) -> Result<ProcessRecord> {
    let argv = vec![
        "python3".to_string(),
        "-c".to_string(),
        fabric::client_echo_server(fabric::ROUTER_HTTP_PORT),
    ];
    let log = dir.join("router-http.log");
    let rec = sys::spawn_detached(&sys::Detached {
        what: "the router's HTTP server".into(),
        netns: &router.netns_path,
        argv: &argv,
        env: &[],
        env_remove: &[ciliate_api::SOCKET_ENV],
        cwd: None,
        log: &log,
    })?;
    let addr = std::net::SocketAddr::from((router.ip(), fabric::ROUTER_HTTP_PORT));
    let deadline = Instant::now() + timeout;
    loop {
        let up = netns::run_in(&router.netns_path, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
        })?;
        if up {
            return Ok(rec);
        }
        if !sys::alive(&rec) || Instant::now() >= deadline {
            return Err(LabError::ServiceNotReady {
                what: "the router's HTTP server".into(),
                problem: if sys::alive(&rec) {
                    format!("did not accept on {addr} within {} s", timeout.as_secs())
                } else {
                    format!("exited (pid {})", rec.pid)
                },
                log: log.clone(),
                log_tail: sys::tail(&log, 15),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `http://<address>:2379`.
fn etcd_endpoint(address: Ipv4Addr) -> String {
    format!("http://{address}:{ETCD_CLIENT_PORT}")
}

/// Starts `ciliate-operator --config <lab>/operator.yaml` in the fabric namespace.
fn spawn_operator(state: &LabState) -> Result<ProcessRecord> {
    let Some(op) = &state.operator else {
        return Err(LabError::Invalid {
            field: "operator".into(),
            value: "none".into(),
            allowed: "a cluster-pool lab".into(),
        });
    };
    let argv = vec![
        state
            .bin_dir
            .join(OPERATOR_BIN)
            .to_string_lossy()
            .into_owned(),
        "--config".to_string(),
        op.config.to_string_lossy().into_owned(),
    ];
    sys::spawn_detached(&sys::Detached {
        what: OPERATOR_BIN.into(),
        netns: &netns::named_path(&state.fabric_netns),
        argv: &argv,
        env: &[("NO_COLOR".to_string(), "1".to_string())],
        env_remove: &[],
        cwd: None,
        log: &op.log,
    })
}

/// Waits until the node's agent answers `GET /v1/status`, failing early if it
/// (or the operator it may be waiting for) exits.
fn wait_for_agent(
    state: &LabState,
    node: &NodeInfo,
    timeout: Duration,
) -> Result<ciliate_api::Status> {
    let client = ciliate_api::Client::new(&node.socket);
    let deadline = Instant::now() + timeout;
    let log = node
        .agent
        .as_ref()
        .map_or_else(|| node.dir.join("agent.log"), |a| a.log.clone());
    let fail = |problem: String, source| LabError::AgentNotReady {
        node: node.name.clone(),
        problem: format!("{problem} (socket {})", node.socket.display()),
        log: log.clone(),
        log_tail: sys::tail(&log, 20),
        source,
    };
    loop {
        let last = match client.get::<ciliate_api::Status>("/v1/status") {
            Ok(status) => return Ok(status),
            Err(e) => e,
        };
        if let Some(op) = &state.operator {
            if let Some(rec) = op.process.as_ref().filter(|r| !sys::alive(r)) {
                return Err(LabError::ServiceNotReady {
                    what: OPERATOR_BIN.into(),
                    problem: format!(
                        "exited (pid {}) while the agent of {} waited for its PodCIDR",
                        rec.pid, node.name
                    ),
                    log: op.log.clone(),
                    log_tail: sys::tail(&op.log, 15),
                });
            }
        }
        if let Some(agent) = &node.agent {
            if !sys::alive(agent) {
                // It may have answered and exited at once; give the log a moment.
                std::thread::sleep(Duration::from_millis(50));
                return Err(fail(
                    format!("exited (pid {})", agent.pid),
                    Some(Box::new(last)),
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(fail(
                format!(
                    "did not answer GET /v1/status within {} s",
                    timeout.as_secs()
                ),
                Some(Box::new(last)),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
