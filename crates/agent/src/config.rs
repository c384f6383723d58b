//! The agent's configuration: one YAML file with Cilium's Helm-style keys,
//! overridden by flags. Unknown keys and bad values are refused at start with
//! the key, the value and what is allowed.

use std::net::Ipv4Addr;
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

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DatapathMode {
    #[default]
    Veth,
    Ipvlan,
    Netkit,
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
}

fn default_bpf_root() -> PathBuf {
    "/sys/fs/bpf/ciliate".into()
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            root: default_bpf_root(),
        }
    }
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
    pub mtu: Option<u32>,
    pub state_dir: Option<PathBuf>,
    pub socket_path: Option<PathBuf>,
    pub health_netns: Option<String>,
    pub enable_health_checking: Option<bool>,
    pub devices: Option<Vec<String>>,
    pub debug: Option<bool>,
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
}

/// The validated configuration the agent runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    pub pod_cidr: Ipv4Net,
    pub router_ip: Ipv4Addr,
    pub ipam_mode: IpamMode,
    pub bpf_root: PathBuf,
    pub routing_mode: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    pub datapath_mode: DatapathMode,
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub socket_path: PathBuf,
    pub health_netns: String,
    pub enable_health_checking: bool,
    pub devices: Vec<String>,
    pub debug: bool,
}

impl Config {
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

        if file.ipam.mode != IpamMode::HostScope {
            return Err(ConfigError::Invalid {
                key: "ipam.mode",
                value: format!("{:?}", file.ipam.mode),
                allowed: "host-scope (cluster-pool, kubernetes and multi-pool need the operator, not yet available)".into(),
            });
        }
        let range =
            o.ipv4_range
                .clone()
                .or(file.ipv4_range)
                .ok_or_else(|| ConfigError::Invalid {
                    key: "ipv4Range",
                    value: String::new(),
                    allowed: "a PodCIDR such as 10.0.0.0/24 is required with ipam.mode host-scope"
                        .into(),
                })?;
        let pod_cidr = parse_pod_cidr(&range)?;
        let router_ip = pod_cidr
            .hosts()
            .next()
            .expect("prefix of /28 or shorter has hosts");

        let datapath_mode = file.datapath_mode.unwrap_or_default();
        if datapath_mode != DatapathMode::Veth {
            return Err(ConfigError::Invalid {
                key: "datapathMode",
                value: format!("{datapath_mode:?}").to_lowercase(),
                allowed: "veth (ipvlan and netkit need kernel features this kernel lacks: ipvlan, netkit)".into(),
            });
        }
        let routing_mode = file.routing_mode.unwrap_or_default();
        let tunnel_protocol = file.tunnel_protocol.unwrap_or_default();
        if tunnel_protocol == TunnelProtocol::Geneve {
            return Err(ConfigError::Invalid {
                key: "tunnelProtocol",
                value: "geneve".into(),
                allowed: "vxlan (this kernel has no geneve)".into(),
            });
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
            router_ip,
            ipam_mode: file.ipam.mode,
            bpf_root,
            routing_mode,
            tunnel_protocol,
            datapath_mode,
            mtu,
            state_dir,
            socket_path,
            health_netns,
            enable_health_checking: file.enable_health_checking.unwrap_or(true),
            devices: file.devices.unwrap_or_default(),
            debug: file.debug.unwrap_or(false),
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

fn parse_pod_cidr(text: &str) -> Result<Ipv4Net, ConfigError> {
    let invalid = |allowed: &str| ConfigError::Invalid {
        key: "ipv4Range",
        value: text.to_string(),
        allowed: allowed.to_string(),
    };
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| invalid("an IPv4 CIDR such as 10.0.0.0/24"))?;
    if net.network() != net.addr() {
        return Err(invalid(&format!(
            "a network address (did you mean {}?)",
            net.trunc()
        )));
    }
    if !(8..=29).contains(&net.prefix_len()) {
        return Err(invalid("a prefix length from /8 to /29"));
    }
    Ok(net)
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
            "nodeName: n1\nipv4Range: 10.1.0.0/24\nbpf:\n  root: /sys/fs/bpf/x\nmtu: 1450\nroutingMode: native\nipam:\n  mode: host-scope\n",
        )
        .unwrap();
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.router_ip, "10.1.0.1".parse::<Ipv4Addr>().unwrap());
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
    fn modes_this_kernel_lacks_are_refused() {
        let err = load("ipv4Range: 10.0.0.0/24\ndatapathMode: ipvlan\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("datapathMode") && err.contains("ipvlan"),
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
        assert_eq!(c.pod_cidr.to_string(), "10.9.0.0/16");
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
}
