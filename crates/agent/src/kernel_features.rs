//! Whether this kernel can make the devices the configuration asks for.
//!
//! Probed at start by creating and deleting a throwaway device of each kind
//! the config needs: a built-in driver leaves no trace in /sys/module and a
//! module may autoload, so trying is the only answer that cannot be wrong.
//! A mode the kernel lacks is refused before anything is set up, with the
//! config key, the missing feature and the kernel named.

use ciliate_datapath::netlink::{Netlink, NetlinkError};
use tracing::info;

use crate::addressing::NativeDevice;
use crate::config::{Config, DatapathMode, RoutingMode, TunnelProtocol};
use crate::devices::{GENEVE_DEVICE, GENEVE_PORT};

#[derive(Debug, thiserror::Error)]
pub enum KernelFeatureError {
    #[error(
        "config key `{key}: {value}` needs {feature}; this kernel ({release}) cannot create one"
    )]
    Missing {
        key: &'static str,
        value: &'static str,
        feature: &'static str,
        release: String,
        #[source]
        source: Box<NetlinkError>,
    },
    #[error("config key `datapathMode: ipvlan` needs a master device: {0}")]
    NoMaster(String),
    #[error("removing the probe device {name}")]
    Cleanup {
        name: &'static str,
        #[source]
        source: Box<NetlinkError>,
    },
}

const PROBE_GENEVE: &str = "ciliate_probe_g";
const PROBE_IPVLAN: &str = "ciliate_probe_i";
const PROBE_NETKIT: &str = "ciliate_probe_n";
const PROBE_NETKIT_PEER: &str = "ciliate_probe_p";

/// Fails if the kernel cannot make a device `config` needs.
pub fn require(
    nl: &Netlink,
    config: &Config,
    native: Option<&NativeDevice>,
) -> Result<(), KernelFeatureError> {
    if config.routing_mode == RoutingMode::Tunnel
        && config.tunnel_protocol == TunnelProtocol::Geneve
        // A running agent's device holds the port; it proves the feature.
        && !matches!(nl.link_by_name(GENEVE_DEVICE), Ok(Some(link)) if link.kind.as_deref() == Some("geneve"))
    {
        probe(nl, PROBE_GENEVE, || {
            nl.create_geneve_external(PROBE_GENEVE, GENEVE_PORT, None)
        })
        .map_err(|source| {
            missing(
                "tunnelProtocol",
                "geneve",
                "the kernel's geneve device (CONFIG_GENEVE)",
                source,
            )
        })?;
    }
    match config.datapath_mode {
        DatapathMode::Veth => {}
        DatapathMode::Ipvlan => {
            let master = ipvlan_master(nl, config, native)?;
            probe(nl, PROBE_IPVLAN, || {
                nl.create_ipvlan_l3(PROBE_IPVLAN, master, None)
            })
            .map_err(|source| {
                missing(
                    "datapathMode",
                    "ipvlan",
                    "the kernel's ipvlan device in L3 mode (CONFIG_IPVLAN)",
                    source,
                )
            })?;
        }
        DatapathMode::Netkit => {
            probe(nl, PROBE_NETKIT, || {
                nl.create_netkit_pair(PROBE_NETKIT, PROBE_NETKIT_PEER, None, None)
            })
            .map_err(|source| {
                missing(
                    "datapathMode",
                    "netkit",
                    "the kernel's netkit device (CONFIG_NETKIT, Linux 6.7+)",
                    source,
                )
            })?;
        }
    }
    Ok(())
}

/// The ifindex of `ipvlan.masterDevice`, else of the native device.
pub fn ipvlan_master(
    nl: &Netlink,
    config: &Config,
    native: Option<&NativeDevice>,
) -> Result<u32, KernelFeatureError> {
    match (&config.ipvlan_master_device, native) {
        (Some(name), _) => match nl.link_by_name(name) {
            Ok(Some(link)) => Ok(link.index),
            Ok(None) => Err(KernelFeatureError::NoMaster(format!(
                "ipvlan.masterDevice {name:?} does not exist in the agent's network namespace"
            ))),
            Err(e) => Err(KernelFeatureError::NoMaster(format!(
                "looking up ipvlan.masterDevice {name:?}: {e}"
            ))),
        },
        (None, Some(native)) => Ok(native.ifindex),
        (None, None) => Err(KernelFeatureError::NoMaster(
            "set ipvlan.masterDevice or devices (the native device is the default master)".into(),
        )),
    }
}

/// Creates a device with `create` and deletes it again; a leftover of a
/// crashed probe is removed first.
fn probe(
    nl: &Netlink,
    name: &'static str,
    create: impl FnOnce() -> Result<ciliate_datapath::netlink::Link, NetlinkError>,
) -> Result<(), ProbeFailure> {
    nl.del_link_by_name(name)
        .map_err(|source| ProbeFailure::Cleanup { name, source })?;
    let link = create().map_err(ProbeFailure::Create)?;
    nl.del_link(link.index)
        .map_err(|source| ProbeFailure::Cleanup { name, source })?;
    info!(probe = name, "kernel feature present");
    Ok(())
}

enum ProbeFailure {
    Create(NetlinkError),
    Cleanup {
        name: &'static str,
        source: NetlinkError,
    },
}

fn missing(
    key: &'static str,
    value: &'static str,
    feature: &'static str,
    failure: ProbeFailure,
) -> KernelFeatureError {
    match failure {
        ProbeFailure::Create(source) => KernelFeatureError::Missing {
            key,
            value,
            feature,
            release: crate::daemon::kernel_release(),
            source: Box::new(source),
        },
        ProbeFailure::Cleanup { name, source } => KernelFeatureError::Cleanup {
            name,
            source: Box::new(source),
        },
    }
}
