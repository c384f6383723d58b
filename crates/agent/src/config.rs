//! The agent's configuration: one YAML file with Cilium's Helm-style keys,
//! overridden by flags. Unknown keys and bad values are refused at start with
//! the key, the value and what is allowed.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config key `{key}`: {message}")]
    Parse { key: String, message: String },
    #[error("config key `{key}`: value {value:?} is not allowed: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingMode {
    #[default]
    Tunnel,
    Native,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TunnelProtocol {
    #[default]
    Vxlan,
    Geneve,
}

/// How a pod's interface is made. Cilium's `netkit-l2` is taken as `netkit`:
/// our programs parse Ethernet headers, so netkit pairs are always L2.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DatapathMode {
    #[default]
    Veth,
    Ipvlan,
    #[serde(alias = "netkit-l2")]
    Netkit,
}

impl DatapathMode {
    pub fn api(self) -> ciliate_api::DatapathMode {
        match self {
            Self::Veth => ciliate_api::DatapathMode::Veth,
            Self::Ipvlan => ciliate_api::DatapathMode::Ipvlan,
            Self::Netkit => ciliate_api::DatapathMode::Netkit,
        }
    }
}

/// `ipvlan.*` (Cilium's `ipvlan-master-device`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpvlanFileConfig {
    /// The device pods' ipvlan slaves hang off; default: the native device.
    pub master_device: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IpamMode {
    /// Addresses from the node's own range (`ipv4Range`).
    HostScope,
    ClusterPool,
    Kubernetes,
    MultiPool,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConfig {
    #[serde(default = "default_ipam_mode")]
    pub mode: IpamMode,
}

fn default_ipam_mode() -> IpamMode {
    IpamMode::HostScope
}

impl Default for IpamConfig {
    fn default() -> Self {
        Self {
            mode: default_ipam_mode(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BpfConfig {
    /// Per-node directory on a bpffs for every pin of this agent.
    #[serde(default = "default_bpf_root")]
    pub root: PathBuf,
    /// Masquerade in the datapath (true, the default) or with iptables (false).
    pub masquerade: Option<bool>,
}

fn default_bpf_root() -> PathBuf {
    "/sys/fs/bpf/ciliate".into()
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            root: default_bpf_root(),
            masquerade: None,
        }
    }
}

/// `nodePort.*`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodePortFileConfig {
    /// `MIN,MAX` (Cilium's `node-port-range`), e.g. `30000,32767`.
    pub range: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdFileConfig {
    /// `http://192.168.10.1:2379`; several for a cluster.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// `ipMasqAgent.config`: the list the agent's own file gives.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpMasqInlineFileConfig {
    #[serde(rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Option<Vec<String>>,
    pub masq_link_local: Option<bool>,
}

/// `ipMasqAgent.*` (Cilium's `enable-ip-masq-agent`, `ip-masq-agent-config-path`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpMasqAgentFileConfig {
    pub enabled: Option<bool>,
    pub config: Option<IpMasqInlineFileConfig>,
    pub config_path: Option<PathBuf>,
}

/// The file as written by people; every key optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub ipv4_range: Option<String>,
    #[serde(default)]
    pub ipam: IpamConfig,
    #[serde(default)]
    pub bpf: BpfConfig,
    pub routing_mode: Option<RoutingMode>,
    pub tunnel_protocol: Option<TunnelProtocol>,
    pub datapath_mode: Option<DatapathMode>,
    pub ipvlan: Option<IpvlanFileConfig>,
    pub mtu: Option<u32>,
    pub state_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub health_netns: Option<String>,
    pub enable_health_checking: Option<bool>,
    pub devices: Option<Vec<String>>,
    pub debug: Option<bool>,
    /// The cluster store (etcd), where nodes register.
    pub etcd: Option<EtcdFileConfig>,
    /// Seconds the node registration outlives the agent.
    #[serde(rename = "kvstoreLeaseTTL")]
    pub kvstore_lease_ttl: Option<u64>,
    #[serde(rename = "ipv4NativeRoutingCIDR")]
    pub ipv4_native_routing_cidr: Option<String>,
    pub auto_direct_node_routes: Option<bool>,
    pub cluster_health_port: Option<u16>,
    /// Services, NodePort and conntrack in the datapath instead of kube-proxy.
    pub kube_proxy_replacement: Option<bool>,
    pub node_port: Option<NodePortFileConfig>,
    /// Conntrack lifetimes in seconds (Cilium's `bpf-ct-timeout-regular-*`).
    #[serde(rename = "bpfCTTimeoutRegularTCP")]
    pub bpf_ct_timeout_regular_tcp: Option<u32>,
    #[serde(rename = "bpfCTTimeoutRegularTCPSyn")]
    pub bpf_ct_timeout_regular_tcp_syn: Option<u32>,
    #[serde(rename = "bpfCTTimeoutRegularTCPFin")]
    pub bpf_ct_timeout_regular_tcp_fin: Option<u32>,
    #[serde(rename = "bpfCTTimeoutRegularAny")]
    pub bpf_ct_timeout_regular_any: Option<u32>,
    /// Seconds between sweeps of expired conntrack and NAT entries.
    #[serde(rename = "conntrackGCInterval")]
    pub conntrack_gc_interval: Option<u64>,
    /// Masquerade pod traffic that leaves the cluster (default true).
    #[serde(rename = "enableIPv4Masquerade")]
    pub enable_ipv4_masquerade: Option<bool>,
    pub ip_masq_agent: Option<IpMasqAgentFileConfig>,
}

/// Flags that override the file (all optional).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// This node's name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's PodCIDR for host-scope IPAM, e.g. 10.0.0.0/24.
    #[arg(long)]
    pub ipv4_range: Option<String>,
    /// Directory on a bpffs for this agent's pins.
    #[arg(long)]
    pub bpf_root: Option<PathBuf>,
    /// Directory for the agent's state (endpoints, IPAM).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Unix socket of the local API.
    #[arg(long)]
    pub socket_path: Option<PathBuf>,
    /// Name of the network namespace (under /run/netns) of the health endpoint.
    #[arg(long)]
    pub health_netns: Option<String>,
    /// Pod interface MTU.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Replace kube-proxy: program Services into the datapath (`kubeProxyReplacement`).
    #[arg(long)]
    pub kube_proxy_replacement: Option<bool>,
}

/// The node registration lease unless `kvstoreLeaseTTL` says otherwise.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 15;
/// Cilium's health port.
pub const DEFAULT_CLUSTER_HEALTH_PORT: u16 = 4240;
/// Kubernetes' default NodePort range (`--service-node-port-range`).
pub const DEFAULT_NODE_PORT_RANGE: (u16, u16) = (30000, 32767);
/// Seconds between conntrack garbage collections unless `conntrackGCInterval` says otherwise.
pub const DEFAULT_CONNTRACK_GC_INTERVAL_SECS: u64 = 60;
/// Bounds of every `bpfCTTimeoutRegular*` key: a second to a week.
pub const CT_TIMEOUT_SECS: std::ops::RangeInclusive<u32> = 1..=604_800;

/// Conntrack lifetimes in seconds, as the datapath config carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp: u32,
    pub tcp_syn: u32,
    pub tcp_fin: u32,
    pub any: u32,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        use ciliate_datapath::maps::{
            CT_TIMEOUT_ANY, CT_TIMEOUT_TCP, CT_TIMEOUT_TCP_FIN, CT_TIMEOUT_TCP_SYN,
        };
        Self {
            tcp: CT_TIMEOUT_TCP,
            tcp_syn: CT_TIMEOUT_TCP_SYN,
            tcp_fin: CT_TIMEOUT_TCP_FIN,
            any: CT_TIMEOUT_ANY,
        }
    }
}

/// How pod traffic leaving the cluster gets the node's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasqueradeMode {
    /// `enableIPv4Masquerade: false`.
    Off,
    /// `bpf.masquerade: true`: `to_netdev` SNATs.
    Bpf,
    /// `bpf.masquerade: false`: the agent's `CILIATE_POST_nat` chain does.
    Iptables,
}

/// `ipMasqAgent.*`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpMasqAgentConfig {
    pub enabled: bool,
    /// `ipMasqAgent.config.nonMasqueradeCIDRs`; `None` when not given.
    pub non_masquerade_cidrs: Option<Vec<Ipv4Net>>,
    /// `ipMasqAgent.config.masqLinkLocal`.
    pub masq_link_local: bool,
    /// `ipMasqAgent.configPath`: a file polled for the list.
    pub config_path: Option<PathBuf>,
}

/// The validated configuration the agent runs with.
///
/// The PodCIDR is only known here in host-scope IPAM (`ipv4Range`); with
/// cluster-pool the operator assigns it at run time, so what the agent runs
/// with is a [`crate::addressing::NodeAddressing`] resolved at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    /// `ipv4Range`: the PodCIDR in host-scope IPAM; `None` with cluster-pool.
    pub pod_cidr: Option<Ipv4Net>,
    pub ipam_mode: IpamMode,
    pub bpf_root: PathBuf,
    pub routing_mode: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    pub datapath_mode: DatapathMode,
    /// `ipvlan.masterDevice`; `None`: the native device.
    pub ipvlan_master_device: Option<String>,
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub socket_path: PathBuf,
    pub health_netns: String,
    pub enable_health_checking: bool,
    pub devices: Vec<String>,
    pub debug: bool,
    /// `etcd.endpoints`; empty: no cluster store (a single node).
    pub etcd_endpoints: Vec<String>,
    pub kvstore_lease_ttl: std::time::Duration,
    /// `ipv4NativeRoutingCIDR`: never masqueraded.
    pub native_routing_cidr: Option<Ipv4Net>,
    pub auto_direct_node_routes: bool,
    /// TCP port of the health responder (`clusterHealthPort`).
    pub cluster_health_port: u16,
    /// `kubeProxyReplacement`: the agent programs Services into the datapath.
    pub kube_proxy_replacement: bool,
    /// `nodePort.range`: the NodePorts the agent accepts, both ends included.
    pub node_port_range: (u16, u16),
    pub ct_timeouts: CtTimeouts,
    /// `conntrackGCInterval`.
    pub conntrack_gc_interval: std::time::Duration,
    /// `enableIPv4Masquerade` and `bpf.masquerade`.
    pub masquerade: MasqueradeMode,
    pub ip_masq_agent: IpMasqAgentConfig,
}

impl Config {
    /// Whether the node registers in a cluster store and learns the other nodes.
    pub fn has_store(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// Reads `path` (if any), applies the flags and validates the result.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                parse_file(&text)?
            }
            None => FileConfig::default(),
        };
        Self::resolve(file, overrides)
    }

    pub fn resolve(file: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let node_name = o.node_name.clone().or(file.node_name).unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map_or_else(|_| "node".into(), |h| h.to_string_lossy().into_owned())
        });
        if node_name.is_empty()
            || node_name.len() > 63
            || !node_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(ConfigError::Invalid {
                key: "nodeName",
                value: node_name,
                allowed: "1-63 characters of a-z, 0-9, '-' and '.'".into(),
            });
        }

        let etcd_endpoints = file.etcd.map(|e| e.endpoints).unwrap_or_default();
        for endpoint in &etcd_endpoints {
            check_endpoint(endpoint)?;
        }
        let range = o.ipv4_range.clone().or(file.ipv4_range);
        let pod_cidr = match file.ipam.mode {
            IpamMode::HostScope => {
                let range = range.ok_or_else(|| ConfigError::Invalid {
                    key: "ipv4Range",
                    value: String::new(),
                    allowed: "a PodCIDR such as 10.0.0.0/24 is required with ipam.mode host-scope"
                        .into(),
                })?;
                Some(parse_pod_cidr(&range)?)
            }
            IpamMode::ClusterPool => {
                if let Some(range) = range {
                    return Err(ConfigError::Invalid {
                        key: "ipv4Range",
                        value: range,
                        allowed: "no value with ipam.mode cluster-pool: the operator assigns the PodCIDR (use host-scope to set it here)".into(),
                    });
                }
                if etcd_endpoints.is_empty() {
                    return Err(ConfigError::Invalid {
                        key: "etcd.endpoints",
                        value: String::new(),
                        allowed: "at least one etcd endpoint such as http://192.168.10.1:2379 is required with ipam.mode cluster-pool (the operator assigns PodCIDRs through the store)".into(),
                    });
                }
                None
            }
            other @ (IpamMode::Kubernetes | IpamMode::MultiPool) => {
                return Err(ConfigError::Invalid {
                    key: "ipam.mode",
                    value: format!("{other:?}"),
                    allowed: "host-scope or cluster-pool (kubernetes and multi-pool need the Kubernetes API, not yet available)".into(),
                });
            }
        };

        // Whether this kernel has what the mode and protocol need is probed
        // at start (kernel_features), where devices can be tried.
        let datapath_mode = file.datapath_mode.unwrap_or_default();
        let routing_mode = file.routing_mode.unwrap_or_default();
        let tunnel_protocol = file.tunnel_protocol.unwrap_or_default();
        if datapath_mode == DatapathMode::Ipvlan && routing_mode == RoutingMode::Tunnel {
            return Err(ConfigError::Invalid {
                key: "datapathMode",
                value: "ipvlan".into(),
                allowed: "veth or netkit with routingMode tunnel (ipvlan needs routingMode native: the ipvlan driver routes pod traffic through the native device's namespace)".into(),
            });
        }
        let ipvlan_master_device = file.ipvlan.unwrap_or_default().master_device;
        if let Some(master) = &ipvlan_master_device {
            if datapath_mode != DatapathMode::Ipvlan {
                return Err(ConfigError::Invalid {
                    key: "ipvlan.masterDevice",
                    value: master.clone(),
                    allowed: "unset unless datapathMode is ipvlan".into(),
                });
            }
            if master.is_empty() || master.len() > 15 || master.contains('/') {
                return Err(ConfigError::Invalid {
                    key: "ipvlan.masterDevice",
                    value: master.clone(),
                    allowed: "a device name of 1-15 characters without '/'".into(),
                });
            }
        }
        let auto_direct_node_routes = file.auto_direct_node_routes.unwrap_or(false);
        if auto_direct_node_routes && routing_mode == RoutingMode::Tunnel {
            return Err(ConfigError::Invalid {
                key: "autoDirectNodeRoutes",
                value: "true".into(),
                allowed:
                    "false with routingMode tunnel (direct node routes are for routingMode native)"
                        .into(),
            });
        }
        let native_routing_cidr = file
            .ipv4_native_routing_cidr
            .map(|text| parse_cidr("ipv4NativeRoutingCIDR", &text, 0..=32))
            .transpose()?;
        let masquerade = match (
            file.enable_ipv4_masquerade.unwrap_or(true),
            file.bpf.masquerade.unwrap_or(true),
        ) {
            (false, _) => MasqueradeMode::Off,
            (true, true) => MasqueradeMode::Bpf,
            (true, false) => MasqueradeMode::Iptables,
        };
        // As Cilium: without the CIDR the native network is reached in, pod
        // traffic to other nodes' pods would be masqueraded.
        if routing_mode == RoutingMode::Native
            && masquerade != MasqueradeMode::Off
            && native_routing_cidr.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "ipv4NativeRoutingCIDR",
                value: String::new(),
                allowed: "a CIDR such as 172.20.0.0/16 (the pods' network, never masqueraded) is required with routingMode native and enableIPv4Masquerade true (or set enableIPv4Masquerade: false)".into(),
            });
        }
        let ip_masq_agent = resolve_ip_masq_agent(file.ip_masq_agent.unwrap_or_default())?;
        if ip_masq_agent.enabled && masquerade == MasqueradeMode::Off {
            return Err(ConfigError::Invalid {
                key: "ipMasqAgent.enabled",
                value: "true".into(),
                allowed: "false with enableIPv4Masquerade false (ip-masq-agent only narrows masquerading)".into(),
            });
        }
        let lease_secs = file.kvstore_lease_ttl.unwrap_or(DEFAULT_LEASE_TTL_SECS);
        if !(2..=3600).contains(&lease_secs) {
            return Err(ConfigError::Invalid {
                key: "kvstoreLeaseTTL",
                value: lease_secs.to_string(),
                allowed: "seconds from 2 to 3600".into(),
            });
        }
        let cluster_health_port = file
            .cluster_health_port
            .unwrap_or(DEFAULT_CLUSTER_HEALTH_PORT);
        if cluster_health_port == 0 {
            return Err(ConfigError::Invalid {
                key: "clusterHealthPort",
                value: "0".into(),
                allowed: "a TCP port from 1 to 65535".into(),
            });
        }
        let node_port_range = match file.node_port.and_then(|n| n.range) {
            Some(text) => parse_node_port_range(&text)?,
            None => DEFAULT_NODE_PORT_RANGE,
        };
        let defaults = CtTimeouts::default();
        let ct_timeouts = CtTimeouts {
            tcp: ct_timeout(
                "bpfCTTimeoutRegularTCP",
                file.bpf_ct_timeout_regular_tcp,
                defaults.tcp,
            )?,
            tcp_syn: ct_timeout(
                "bpfCTTimeoutRegularTCPSyn",
                file.bpf_ct_timeout_regular_tcp_syn,
                defaults.tcp_syn,
            )?,
            tcp_fin: ct_timeout(
                "bpfCTTimeoutRegularTCPFin",
                file.bpf_ct_timeout_regular_tcp_fin,
                defaults.tcp_fin,
            )?,
            any: ct_timeout(
                "bpfCTTimeoutRegularAny",
                file.bpf_ct_timeout_regular_any,
                defaults.any,
            )?,
        };
        let gc_secs = file
            .conntrack_gc_interval
            .unwrap_or(DEFAULT_CONNTRACK_GC_INTERVAL_SECS);
        if !(1..=86_400).contains(&gc_secs) {
            return Err(ConfigError::Invalid {
                key: "conntrackGCInterval",
                value: gc_secs.to_string(),
                allowed: "seconds from 1 to 86400".into(),
            });
        }
        let devices = file.devices.unwrap_or_default();
        for device in &devices {
            if device.is_empty()
                || device.len() > 15
                || device
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::Invalid {
                    key: "devices",
                    value: device.clone(),
                    allowed: "network device names of 1-15 characters without '/', ':' or spaces"
                        .into(),
                });
            }
        }

        let mtu = o.mtu.or(file.mtu).unwrap_or(1500);
        if !(1280..=65520).contains(&mtu) {
            return Err(ConfigError::Invalid {
                key: "mtu",
                value: mtu.to_string(),
                allowed: "an MTU from 1280 to 65520".into(),
            });
        }
        let bpf_root = o.bpf_root.clone().unwrap_or(file.bpf.root);
        absolute("bpf.root", &bpf_root)?;
        let state_dir = o
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| "/var/run/ciliate/state".into());
        absolute("stateDir", &state_dir)?;
        let socket_path = o
            .socket_path
            .clone()
            .or(file.socket_path)
            .unwrap_or_else(|| ciliate_api::DEFAULT_SOCKET.into());
        absolute("socketPath", &socket_path)?;
        let health_netns = o
            .health_netns
            .clone()
            .or(file.health_netns)
            .unwrap_or_else(|| "ciliate-health".into());
        if health_netns.is_empty() || health_netns.contains('/') || health_netns.len() > 64 {
            return Err(ConfigError::Invalid {
                key: "healthNetns",
                value: health_netns,
                allowed: "a namespace name of 1-64 characters without '/'".into(),
            });
        }

        Ok(Self {
            node_name,
            pod_cidr,
            ipam_mode: file.ipam.mode,
            bpf_root,
            routing_mode,
            tunnel_protocol,
            datapath_mode,
            ipvlan_master_device,
            mtu,
            state_dir,
            socket_path,
            health_netns,
            enable_health_checking: file.enable_health_checking.unwrap_or(true),
            devices,
            debug: file.debug.unwrap_or(false),
            etcd_endpoints,
            kvstore_lease_ttl: std::time::Duration::from_secs(lease_secs),
            native_routing_cidr,
            auto_direct_node_routes,
            cluster_health_port,
            kube_proxy_replacement: o
                .kube_proxy_replacement
                .or(file.kube_proxy_replacement)
                .unwrap_or(false),
            node_port_range,
            ct_timeouts,
            conntrack_gc_interval: std::time::Duration::from_secs(gc_secs),
            masquerade,
            ip_masq_agent,
        })
    }
}

/// Checks `ipMasqAgent.*`: every inline CIDR (by index) and the path.
fn resolve_ip_masq_agent(file: IpMasqAgentFileConfig) -> Result<IpMasqAgentConfig, ConfigError> {
    let inline = file.config.unwrap_or_default();
    let non_masquerade_cidrs = inline
        .non_masquerade_cidrs
        .map(|list| {
            list.iter()
                .enumerate()
                .map(|(index, text)| {
                    crate::ipmasq::parse_entry(text).map_err(|allowed| ConfigError::Parse {
                        key: format!("ipMasqAgent.config.nonMasqueradeCIDRs[{index}]"),
                        message: format!("value {text:?} is not allowed: {allowed}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    if let Some(path) = &file.config_path {
        absolute("ipMasqAgent.configPath", path)?;
    }
    Ok(IpMasqAgentConfig {
        enabled: file.enabled.unwrap_or(false),
        non_masquerade_cidrs,
        masq_link_local: inline.masq_link_local.unwrap_or(false),
        config_path: file.config_path,
    })
}

/// `nodePort.range`: `MIN,MAX` as Cilium writes it (`MIN-MAX` as Kubernetes
/// writes it is accepted too), 1 <= MIN <= MAX <= 65535.
fn parse_node_port_range(text: &str) -> Result<(u16, u16), ConfigError> {
    let parsed = text
        .split_once(',')
        .or_else(|| text.split_once('-'))
        .and_then(|(min, max)| {
            Some((
                min.trim().parse::<u16>().ok()?,
                max.trim().parse::<u16>().ok()?,
            ))
        })
        .filter(|(min, max)| *min >= 1 && min <= max);
    parsed.ok_or_else(|| ConfigError::Invalid {
        key: "nodePort.range",
        value: text.to_string(),
        allowed: "MIN,MAX with 1 <= MIN <= MAX <= 65535, e.g. 30000,32767".into(),
    })
}

fn ct_timeout(key: &'static str, value: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    let secs = value.unwrap_or(default);
    if CT_TIMEOUT_SECS.contains(&secs) {
        Ok(secs)
    } else {
        Err(ConfigError::Invalid {
            key,
            value: secs.to_string(),
            allowed: format!(
                "seconds from {} to {}",
                CT_TIMEOUT_SECS.start(),
                CT_TIMEOUT_SECS.end()
            ),
        })
    }
}

/// Parses the YAML file; errors carry the dotted path of the offending key.
pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_yaml appends " at line N column M"; keep it, it helps.
        ConfigError::Parse {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message,
        }
    })
}

/// Prefix lengths a PodCIDR may have: room for the router, the health
/// endpoint and at least one pod (the operator's `clusterPoolIPv4MaskSize`
/// has the same bounds).
pub const POD_CIDR_PREFIXES: std::ops::RangeInclusive<u8> = 8..=29;

/// A PodCIDR given as `ipv4Range`: a network address with room for a router
/// and pods.
pub fn parse_pod_cidr(text: &str) -> Result<Ipv4Net, ConfigError> {
    parse_cidr("ipv4Range", text, POD_CIDR_PREFIXES)
}

fn parse_cidr(
    key: &'static str,
    text: &str,
    prefixes: std::ops::RangeInclusive<u8>,
) -> Result<Ipv4Net, ConfigError> {
    let invalid = |allowed: String| ConfigError::Invalid {
        key,
        value: text.to_string(),
        allowed,
    };
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| invalid("an IPv4 CIDR such as 10.0.0.0/24".into()))?;
    check_cidr(net, &prefixes).map_err(invalid)
}

/// Checks a CIDR is a network address with a prefix length in `prefixes`;
/// the error says what is allowed.
pub fn check_cidr(
    net: Ipv4Net,
    prefixes: &std::ops::RangeInclusive<u8>,
) -> Result<Ipv4Net, String> {
    if net.network() != net.addr() {
        return Err(format!("a network address (did you mean {}?)", net.trunc()));
    }
    if !prefixes.contains(&net.prefix_len()) {
        return Err(format!(
            "a prefix length from /{} to /{}",
            prefixes.start(),
            prefixes.end()
        ));
    }
    Ok(net)
}

/// An etcd client URL: `http://HOST:PORT` or `https://HOST:PORT`.
fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    let ok = rest.is_some_and(|rest| {
        let authority = rest.trim_end_matches('/');
        match authority.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && !authority.contains('/')
                    && port.parse::<u16>().is_ok_and(|p| p != 0)
            }
            None => false,
        }
    });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: "etcd.endpoints",
            value: endpoint.to_string(),
            allowed: "URLs like http://192.168.10.1:2379 (http or https, host and port)".into(),
        })
    }
}

fn absolute(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            value: path.display().to_string(),
            allowed: "an absolute path".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::resolve(parse_file(yaml)?, &Overrides::default())
    }

    #[test]
    fn full_file_is_read() {
        let c = load(
            "nodeName: n1\nipv4Range: 10.1.0.0/24\nbpf:\n  root: /sys/fs/bpf/x\nmtu: 1450\nroutingMode: native\nipv4NativeRoutingCIDR: 10.0.0.0/8\nipam:\n  mode: host-scope\n",
        )
        .unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.pod_cidr, Some("10.1.0.0/24".parse().unwrap()));
        assert_eq!(c.bpf_root, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.routing_mode, RoutingMode::Native);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("nodeName: n\nipv4Range: 10.0.0.0/24\nbpf:\n  rooot: /x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bpf"), "{err}");
        assert!(err.contains("rooot"), "{err}");
        assert!(err.contains("root"), "{err}");
    }

    #[test]
    fn bad_enum_value_lists_allowed() {
        let err = load("ipv4Range: 10.0.0.0/24\nroutingMode: bgp\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("routingMode")
                && err.contains("bgp")
                && err.contains("tunnel")
                && err.contains("native"),
            "{err}"
        );
    }

    #[test]
    fn bad_cidr_is_refused_with_value() {
        let err = load("ipv4Range: 10.0.0.5/24\n").unwrap_err().to_string();
        assert!(
            err.contains("ipv4Range") && err.contains("10.0.0.5/24") && err.contains("10.0.0.0/24"),
            "{err}"
        );
        let err = load("ipv4Range: banana\n").unwrap_err().to_string();
        assert!(err.contains("banana") && err.contains("CIDR"), "{err}");
    }

    #[test]
    fn missing_range_is_refused() {
        let err = load("nodeName: n\n").unwrap_err().to_string();
        assert!(
            err.contains("ipv4Range") && err.contains("required"),
            "{err}"
        );
    }

    #[test]
    fn ipvlan_needs_native_routing() {
        let err = load("ipv4Range: 10.0.0.0/24\ndatapathMode: ipvlan\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("datapathMode")
                && err.contains("ipvlan")
                && err.contains("routingMode native"),
            "{err}"
        );
        let c = load("ipv4Range: 10.0.0.0/24\nroutingMode: native\nipv4NativeRoutingCIDR: 10.0.0.0/16\ndatapathMode: ipvlan\nipvlan: {masterDevice: eth1}\n").unwrap();
        assert_eq!(c.datapath_mode, DatapathMode::Ipvlan);
        assert_eq!(c.ipvlan_master_device.as_deref(), Some("eth1"));
    }

    #[test]
    fn ipvlan_master_device_is_checked() {
        let err = load("ipv4Range: 10.0.0.0/24\nipvlan: {masterDevice: eth1}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ipvlan.masterDevice") && err.contains("eth1"),
            "{err}"
        );
        let err = load("ipv4Range: 10.0.0.0/24\nroutingMode: native\nipv4NativeRoutingCIDR: 10.0.0.0/16\ndatapathMode: ipvlan\nipvlan: {masterDevice: a-very-long-device-name}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("1-15 characters"), "{err}");
    }

    #[test]
    fn netkit_l2_is_netkit_and_geneve_parses() {
        let c = load("ipv4Range: 10.0.0.0/24\ndatapathMode: netkit-l2\ntunnelProtocol: geneve\n")
            .unwrap();
        assert_eq!(c.datapath_mode, DatapathMode::Netkit);
        assert_eq!(c.tunnel_protocol, TunnelProtocol::Geneve);
        let err = load("ipv4Range: 10.0.0.0/24\ndatapathMode: macvlan\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("datapathMode") && err.contains("macvlan"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_file() {
        let file = parse_file("ipv4Range: 10.0.0.0/24\nmtu: 1400\n").unwrap();
        let o = Overrides {
            mtu: Some(1450),
            ipv4_range: Some("10.9.0.0/16".into()),
            ..Overrides::default()
        };
        let c = Config::resolve(file, &o).unwrap();
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.pod_cidr.unwrap().to_string(), "10.9.0.0/16");
    }

    #[test]
    fn bad_mtu_and_relative_paths() {
        assert!(load("ipv4Range: 10.0.0.0/24\nmtu: 100\n")
            .unwrap_err()
            .to_string()
            .contains("mtu"));
        let err = load("ipv4Range: 10.0.0.0/24\nstateDir: rel/dir\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stateDir") && err.contains("absolute"),
            "{err}"
        );
    }

    const CLUSTER: &str = "nodeName: node0\nipam: {mode: cluster-pool}\netcd: {endpoints: [\"http://192.168.10.1:2379\"]}\n";

    #[test]
    fn multi_node_keys_are_read() {
        let c = load(&format!(
            "{CLUSTER}kvstoreLeaseTTL: 20\nroutingMode: native\ntunnelProtocol: vxlan\nipv4NativeRoutingCIDR: 172.20.0.0/16\nautoDirectNodeRoutes: true\ndevices: [eth0]\nenableHealthChecking: true\nclusterHealthPort: 4241\n"
        ))
        .unwrap();
        assert_eq!(c.ipam_mode, IpamMode::ClusterPool);
        assert_eq!(c.pod_cidr, None);
        assert_eq!(c.etcd_endpoints, vec!["http://192.168.10.1:2379"]);
        assert!(c.has_store());
        assert_eq!(c.kvstore_lease_ttl, std::time::Duration::from_secs(20));
        assert_eq!(
            c.native_routing_cidr,
            Some("172.20.0.0/16".parse().unwrap())
        );
        assert!(c.auto_direct_node_routes);
        assert_eq!(c.devices, vec!["eth0"]);
        assert_eq!(c.cluster_health_port, 4241);
    }

    #[test]
    fn multi_node_defaults() {
        let c = load(CLUSTER).unwrap();
        assert_eq!(c.kvstore_lease_ttl, std::time::Duration::from_secs(15));
        assert_eq!(c.cluster_health_port, 4240);
        assert!(!c.auto_direct_node_routes);
        assert_eq!(c.native_routing_cidr, None);
        assert_eq!(c.routing_mode, RoutingMode::Tunnel);
        let single = load("ipv4Range: 10.0.0.0/24\n").unwrap();
        assert!(!single.has_store());
        assert_eq!(single.cluster_health_port, 4240);
    }

    #[test]
    fn cluster_pool_needs_etcd() {
        for yaml in [
            "ipam: {mode: cluster-pool}\n",
            "ipam: {mode: cluster-pool}\netcd: {endpoints: []}\n",
        ] {
            let err = load(yaml).unwrap_err().to_string();
            assert!(
                err.contains("etcd.endpoints") && err.contains("cluster-pool"),
                "{err}"
            );
        }
    }

    #[test]
    fn cluster_pool_refuses_ipv4_range() {
        let err = load(&format!("{CLUSTER}ipv4Range: 10.0.0.0/24\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ipv4Range") && err.contains("10.0.0.0/24") && err.contains("operator"),
            "{err}"
        );
    }

    #[test]
    fn host_scope_still_needs_a_range_with_etcd() {
        let err = load("etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ipv4Range") && err.contains("required"),
            "{err}"
        );
        let c = load("ipv4Range: 10.0.0.0/24\netcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n")
            .unwrap();
        assert!(c.has_store());
    }

    #[test]
    fn ipam_modes_without_a_source_are_refused() {
        let err = load("ipam: {mode: kubernetes}\n").unwrap_err().to_string();
        assert!(
            err.contains("ipam.mode") && err.contains("cluster-pool") && err.contains("host-scope"),
            "{err}"
        );
    }

    #[test]
    fn direct_routes_need_native_routing() {
        let err = load(&format!("{CLUSTER}autoDirectNodeRoutes: true\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("autoDirectNodeRoutes") && err.contains("true") && err.contains("native"),
            "{err}"
        );
        let err = load(&format!(
            "{CLUSTER}routingMode: tunnel\nautoDirectNodeRoutes: true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("autoDirectNodeRoutes"), "{err}");
    }

    #[test]
    fn bad_multi_node_values_are_named() {
        let cases = [
            (
                "ipv4NativeRoutingCIDR: 172.20.0.1/16\n",
                "ipv4NativeRoutingCIDR",
                "172.20.0.0/16",
            ),
            (
                "ipv4NativeRoutingCIDR: nope\n",
                "ipv4NativeRoutingCIDR",
                "CIDR",
            ),
            ("kvstoreLeaseTTL: 0\n", "kvstoreLeaseTTL", "2 to 3600"),
            ("kvstoreLeaseTTL: 100000\n", "kvstoreLeaseTTL", "2 to 3600"),
            ("clusterHealthPort: 0\n", "clusterHealthPort", "1 to 65535"),
            ("clusterHealthPort: 70000\n", "clusterHealthPort", "70000"),
            ("devices: [\"eth0/1\"]\n", "devices", "eth0/1"),
            (
                "devices: [\"a-very-long-device-name\"]\n",
                "devices",
                "1-15",
            ),
        ];
        for (extra, key, hint) in cases {
            let err = load(&format!("{CLUSTER}{extra}")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(hint), "{extra}: {err}");
        }
        for endpoint in [
            "192.168.10.1:2379",
            "http://",
            "http://host",
            "ftp://h:1",
            "http://h:0",
        ] {
            let err = load(&format!(
                "ipam: {{mode: cluster-pool}}\netcd: {{endpoints: [\"{endpoint}\"]}}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("etcd.endpoints") && err.contains(endpoint) && err.contains("http://"),
                "{endpoint}: {err}"
            );
        }
        let err =
            load("ipam: {mode: cluster-pool}\netcd: {endpoints: [\"http://h:1\"], prefix: x}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("etcd") && err.contains("prefix"), "{err}");
    }

    #[test]
    fn service_keys_are_read() {
        let c = load("ipv4Range: 10.0.0.0/24\nkubeProxyReplacement: true\nnodePort:\n  range: \"20000,20999\"\nbpfCTTimeoutRegularTCP: 3600\nbpfCTTimeoutRegularTCPSyn: 30\nbpfCTTimeoutRegularTCPFin: 5\nbpfCTTimeoutRegularAny: 90\nconntrackGCInterval: 10\n").unwrap();
        assert!(c.kube_proxy_replacement);
        assert_eq!(c.node_port_range, (20000, 20999));
        assert_eq!(
            c.ct_timeouts,
            CtTimeouts {
                tcp: 3600,
                tcp_syn: 30,
                tcp_fin: 5,
                any: 90
            }
        );
        assert_eq!(c.conntrack_gc_interval, std::time::Duration::from_secs(10));
        let c = load("ipv4Range: 10.0.0.0/24\nnodePort: {range: 30000-30010}\n").unwrap();
        assert_eq!(c.node_port_range, (30000, 30010));
    }

    #[test]
    fn service_defaults_and_flag() {
        let c = load("ipv4Range: 10.0.0.0/24\n").unwrap();
        assert!(!c.kube_proxy_replacement);
        assert_eq!(c.node_port_range, (30000, 32767));
        assert_eq!(c.ct_timeouts.tcp, 21_600);
        assert_eq!(c.ct_timeouts.tcp_syn, 60);
        assert_eq!(c.ct_timeouts.tcp_fin, 10);
        assert_eq!(c.ct_timeouts.any, 60);
        assert_eq!(c.conntrack_gc_interval, std::time::Duration::from_mins(1));
        let file = parse_file("ipv4Range: 10.0.0.0/24\nkubeProxyReplacement: false\n").unwrap();
        let o = Overrides {
            kube_proxy_replacement: Some(true),
            ..Overrides::default()
        };
        assert!(Config::resolve(file, &o).unwrap().kube_proxy_replacement);
    }

    #[test]
    fn bad_service_values_are_named() {
        let cases = [
            (
                "nodePort: {range: \"32767,30000\"}\n",
                "nodePort.range",
                "32767,30000",
            ),
            (
                "nodePort: {range: \"0,100\"}\n",
                "nodePort.range",
                "30000,32767",
            ),
            ("nodePort: {range: banana}\n", "nodePort.range", "MIN,MAX"),
            (
                "nodePort: {range: \"30000,70000\"}\n",
                "nodePort.range",
                "65535",
            ),
            ("nodePort: {ranges: x}\n", "nodePort", "ranges"),
            (
                "bpfCTTimeoutRegularTCP: 0\n",
                "bpfCTTimeoutRegularTCP",
                "1 to 604800",
            ),
            (
                "bpfCTTimeoutRegularTCPSyn: 0\n",
                "bpfCTTimeoutRegularTCPSyn",
                "seconds",
            ),
            (
                "bpfCTTimeoutRegularTCPFin: 999999999\n",
                "bpfCTTimeoutRegularTCPFin",
                "999999999",
            ),
            (
                "bpfCTTimeoutRegularAny: 0\n",
                "bpfCTTimeoutRegularAny",
                "seconds",
            ),
            (
                "conntrackGCInterval: 0\n",
                "conntrackGCInterval",
                "1 to 86400",
            ),
            (
                "kubeProxyReplacement: strict\n",
                "kubeProxyReplacement",
                "strict",
            ),
        ];
        for (extra, key, hint) in cases {
            let err = load(&format!("ipv4Range: 10.0.0.0/24\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(hint), "{extra}: {err}");
        }
    }

    #[test]
    fn masquerade_keys_and_defaults() {
        let c = load("ipv4Range: 10.0.0.0/24\n").unwrap();
        assert_eq!(c.masquerade, MasqueradeMode::Bpf);
        assert_eq!(c.ip_masq_agent, IpMasqAgentConfig::default());
        let c = load("ipv4Range: 10.0.0.0/24\nbpf: {masquerade: false}\n").unwrap();
        assert_eq!(c.masquerade, MasqueradeMode::Iptables);
        let c =
            load("ipv4Range: 10.0.0.0/24\nenableIPv4Masquerade: false\nbpf: {masquerade: false}\n")
                .unwrap();
        assert_eq!(c.masquerade, MasqueradeMode::Off);
        let c = load("ipv4Range: 10.0.0.0/24\nipMasqAgent:\n  enabled: true\n  configPath: /etc/ip-masq-agent/config\n  config:\n    nonMasqueradeCIDRs: [10.10.1.0/24, 10.10.2.0/24]\n    masqLinkLocal: true\n").unwrap();
        assert_eq!(
            c.ip_masq_agent,
            IpMasqAgentConfig {
                enabled: true,
                non_masquerade_cidrs: Some(vec![
                    "10.10.1.0/24".parse().unwrap(),
                    "10.10.2.0/24".parse().unwrap()
                ]),
                masq_link_local: true,
                config_path: Some("/etc/ip-masq-agent/config".into()),
            }
        );
    }

    #[test]
    fn native_routing_with_masquerade_needs_the_native_cidr() {
        let err = load("ipv4Range: 10.0.0.0/24\nroutingMode: native\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ipv4NativeRoutingCIDR")
                && err.contains("routingMode native")
                && err.contains("enableIPv4Masquerade"),
            "{err}"
        );
        let c = load("ipv4Range: 10.0.0.0/24\nroutingMode: native\nenableIPv4Masquerade: false\n")
            .unwrap();
        assert_eq!(c.masquerade, MasqueradeMode::Off);
        let c = load("ipv4Range: 10.0.0.0/24\nroutingMode: native\nbpf: {masquerade: false}\nipv4NativeRoutingCIDR: 10.0.0.0/16\n")
            .unwrap();
        assert_eq!(c.masquerade, MasqueradeMode::Iptables);
    }

    #[test]
    fn bad_masquerade_values_are_named() {
        let cases = [
            ("enableIPv4Masquerade: maybe\n", "enableIPv4Masquerade", "maybe"),
            ("bpf: {masquerade: 1}\n", "bpf.masquerade", "boolean"),
            (
                "ipMasqAgent: {config: {nonMasqueradeCIDRs: [10.10.1.0/24, 10.10.2.0/24, 10.10.1.0/33]}}\n",
                "ipMasqAgent.config.nonMasqueradeCIDRs[2]",
                "10.10.1.0/33",
            ),
            (
                "ipMasqAgent: {config: {nonMasqueradeCIDRs: [10.10.1.1/24]}}\n",
                "nonMasqueradeCIDRs[0]",
                "10.10.1.0/24?",
            ),
            (
                "ipMasqAgent: {configPath: relative/file}\n",
                "ipMasqAgent.configPath",
                "absolute",
            ),
            ("ipMasqAgent: {enable: true}\n", "ipMasqAgent", "enable"),
            (
                "enableIPv4Masquerade: false\nipMasqAgent: {enabled: true}\n",
                "ipMasqAgent.enabled",
                "enableIPv4Masquerade",
            ),
        ];
        for (extra, key, hint) in cases {
            let err = load(&format!("ipv4Range: 10.0.0.0/24\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(hint), "{extra}: {err}");
        }
    }

    #[test]
    fn pod_cidrs_from_the_operator_are_checked() {
        assert_eq!(
            parse_pod_cidr("172.20.3.0/24").unwrap().to_string(),
            "172.20.3.0/24"
        );
        assert!(parse_pod_cidr("172.20.3.0/30").is_err());
    }
}
