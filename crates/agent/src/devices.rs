//! The node's own devices: the `ciliate_host`/`ciliate_net` pair carrying the
//! router IP, and the route that sends the PodCIDR towards it.

use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_datapath::sysctl;
use tracing::info;

use crate::config::Config;
use crate::error::AgentError;

pub const HOST_DEVICE: &str = "ciliate_host";
pub const NET_DEVICE: &str = "ciliate_net";
pub const VXLAN_DEVICE: &str = "ciliate_vxlan";
/// Cilium's VXLAN port (not IANA's 4789), so the two never meet by accident.
pub const VXLAN_PORT: u16 = 8472;
/// Outer Ethernet, IPv4, UDP and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The MTU pods get: the node's, less what encapsulation adds in tunnel mode.
pub fn pod_mtu(config: &Config) -> u32 {
    match config.routing_mode {
        crate::config::RoutingMode::Tunnel => config.mtu - VXLAN_OVERHEAD,
        crate::config::RoutingMode::Native => config.mtu,
    }
}

/// In tunnel mode, creates (or checks) the node's one external VXLAN device
/// and returns its ifindex; in native mode removes a leftover one.
pub fn ensure_tunnel_device(nl: &Netlink, config: &Config) -> Result<Option<u32>, AgentError> {
    if config.routing_mode == crate::config::RoutingMode::Native {
        nl.del_link_by_name(VXLAN_DEVICE)?;
        return Ok(None);
    }
    let link = match nl.link_by_name(VXLAN_DEVICE)? {
        Some(link) if link.kind.as_deref() == Some("vxlan") => link,
        other => {
            if other.is_some() {
                nl.del_link_by_name(VXLAN_DEVICE)?;
            }
            info!(
                device = VXLAN_DEVICE,
                port = VXLAN_PORT,
                "creating the tunnel device"
            );
            nl.create_vxlan_external(VXLAN_DEVICE, VXLAN_PORT, Some(config.mtu))?
        }
    };
    let _ = sysctl::set_if_exists(&format!("net/ipv6/conf/{VXLAN_DEVICE}/disable_ipv6"), "1");
    nl.set_mtu(link.index, config.mtu)?;
    nl.set_up(link.index)?;
    Ok(Some(link.index))
}

/// Creates (or checks) the host device pair, the router IP and the PodCIDR route.
pub fn ensure_host_devices(nl: &Netlink, config: &Config) -> Result<(), AgentError> {
    if nl.link_by_name(HOST_DEVICE)?.is_none() {
        // A lone half of the pair would make creation fail; start clean.
        nl.del_link_by_name(NET_DEVICE)?;
        nl.create_veth(HOST_DEVICE, NET_DEVICE, Some(config.mtu))?;
        info!(device = HOST_DEVICE, "created host device pair");
    }
    for name in [HOST_DEVICE, NET_DEVICE] {
        let _ = sysctl::set_if_exists(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
    }
    let host = nl
        .link_by_name(HOST_DEVICE)?
        .ok_or_else(|| AgentError::Internal(format!("{HOST_DEVICE} vanished after creation")))?;
    let net = nl
        .link_by_name(NET_DEVICE)?
        .ok_or_else(|| AgentError::Internal(format!("{NET_DEVICE} vanished after creation")))?;
    nl.set_mtu(host.index, config.mtu)?;
    nl.set_mtu(net.index, config.mtu)?;
    nl.set_up(net.index)?;
    nl.set_up(host.index)?;
    if !nl.addresses(host.index)?.contains(&(config.router_ip, 32)) {
        nl.add_address(host.index, config.router_ip, 32)?;
    }
    nl.replace_route(&Route {
        dst: config.pod_cidr,
        gateway: None,
        oif: Some(host.index),
        scope_link: true,
        src: Some(config.router_ip),
        onlink: false,
        mtu: None,
    })?;
    Ok(())
}
