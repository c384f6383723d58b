//! The node's own devices: the `ciliate_host`/`ciliate_net` pair carrying the
//! router IP, the route that sends the PodCIDR towards it, the tunnel device,
//! and the native device the node reaches the other nodes through.

use anyhow::Context as _;
use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_datapath::sysctl;
use tracing::{info, warn};

use crate::addressing::{NativeDevice, PodNetwork};
use crate::config::{Config, RoutingMode, TunnelProtocol};
use crate::error::AgentError;

pub const HOST_DEVICE: &str = "ciliate_host";
pub const NET_DEVICE: &str = "ciliate_net";
pub const VXLAN_DEVICE: &str = "ciliate_vxlan";
/// Cilium's VXLAN port (not IANA's 4789), so the two never meet by accident.
pub const VXLAN_PORT: u16 = 8472;
pub const GENEVE_DEVICE: &str = "ciliate_geneve";
/// IANA's Geneve port, as Cilium uses.
pub const GENEVE_PORT: u16 = 6081;
/// Outer Ethernet (14), IPv4 (20), UDP (8) and VXLAN (8) headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Outer Ethernet (14), IPv4 (20), UDP (8) and the Geneve base header (8):
/// the datapath sets no Geneve options, so the same as VXLAN (the kernel's
/// GENEVE_IPV4_HLEN, which its path-MTU check uses, is 50 too).
pub const GENEVE_OVERHEAD: u32 = 50;

/// The node's tunnel device for one `tunnelProtocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelDevice {
    pub name: &'static str,
    /// The kernel's link kind.
    pub kind: &'static str,
    pub port: u16,
    /// What encapsulation adds to a pod's packet.
    pub overhead: u32,
}

pub fn tunnel_device(protocol: TunnelProtocol) -> TunnelDevice {
    match protocol {
        TunnelProtocol::Vxlan => TunnelDevice {
            name: VXLAN_DEVICE,
            kind: "vxlan",
            port: VXLAN_PORT,
            overhead: VXLAN_OVERHEAD,
        },
        TunnelProtocol::Geneve => TunnelDevice {
            name: GENEVE_DEVICE,
            kind: "geneve",
            port: GENEVE_PORT,
            overhead: GENEVE_OVERHEAD,
        },
    }
}

/// The MTU pods get: the node's, less what encapsulation adds in tunnel mode.
pub fn pod_mtu(config: &Config) -> u32 {
    match config.routing_mode {
        RoutingMode::Tunnel => config.mtu - tunnel_device(config.tunnel_protocol).overhead,
        RoutingMode::Native => config.mtu,
    }
}

/// In tunnel mode, creates (or checks) the node's one external tunnel device
/// of `tunnelProtocol` (`ciliate_vxlan` on UDP 8472 or `ciliate_geneve` on
/// 6081) and returns its name and ifindex. A device of the other protocol,
/// left by an agent configured otherwise, is removed (its pinned link goes
/// with the stale-link sweep), and in native mode both are.
pub fn ensure_tunnel_device(
    nl: &Netlink,
    config: &Config,
) -> Result<Option<(&'static str, u32)>, AgentError> {
    let wanted =
        (config.routing_mode == RoutingMode::Tunnel).then(|| tunnel_device(config.tunnel_protocol));
    for other in [TunnelProtocol::Vxlan, TunnelProtocol::Geneve] {
        let name = tunnel_device(other).name;
        if wanted.is_some_and(|w| w.name == name) {
            continue;
        }
        if nl.del_link_by_name(name)? {
            info!(
                device = name,
                "removed the tunnel device of another tunnelProtocol or routingMode"
            );
        }
    }
    let Some(TunnelDevice {
        name, kind, port, ..
    }) = wanted
    else {
        return Ok(None);
    };
    let link = match nl.link_by_name(name)? {
        Some(link) if link.kind.as_deref() == Some(kind) => link,
        other => {
            if other.is_some() {
                nl.del_link_by_name(name)?;
            }
            info!(device = name, port, "creating the tunnel device");
            match config.tunnel_protocol {
                TunnelProtocol::Vxlan => nl.create_vxlan_external(name, port, Some(config.mtu))?,
                TunnelProtocol::Geneve => {
                    nl.create_geneve_external(name, port, Some(config.mtu))?
                }
            }
        }
    };
    let _ = sysctl::set_if_exists(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
    // What from_overlay hands to the stack (a remote pod talking to this node)
    // comes from a PodCIDR routed through ciliate_host: not a reverse path.
    route_through(name)?;
    nl.set_mtu(link.index, config.mtu)?;
    nl.set_up(link.index)?;
    Ok(Some((name, link.index)))
}

/// Lets the stack forward packets that arrive on `device` and accept them
/// although their source is routed through another device.
fn route_through(device: &str) -> Result<(), AgentError> {
    sysctl::set(&format!("net/ipv4/conf/{device}/forwarding"), "1")?;
    sysctl::set(&format!("net/ipv4/conf/{device}/rp_filter"), "0")?;
    Ok(())
}

/// Finds the native device: `devices[0]`, else the device of the default
/// route. A node that registers in a store or routes natively needs one (its
/// first IPv4 address is the node IP); a lone node without may do without.
pub fn resolve_native_device(
    nl: &Netlink,
    config: &Config,
) -> anyhow::Result<Option<NativeDevice>> {
    let (link, why) = if let Some(name) = config.devices.first() {
        let link = nl.link_by_name(name)?.with_context(|| {
            format!("config key `devices`: device {name:?} does not exist in the agent's network namespace")
        })?;
        (link, "devices[0]")
    } else {
        let default = nl
            .routes()?
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0 && r.oif.is_some());
        let Some(index) = default.and_then(|r| r.oif) else {
            if config.has_store() || config.routing_mode == RoutingMode::Native {
                anyhow::bail!(
                    "config key `devices` is not set and there is no default route to take the native device from: \
                     set `devices: [eth0]` (the node IP other nodes reach this one at is the first IPv4 address of devices[0])"
                );
            }
            info!(
                "no devices and no default route: running as a lone node without a native device"
            );
            return Ok(None);
        };
        let link = nl
            .link_by_index(index)?
            .with_context(|| format!("the default route's device (ifindex {index}) vanished"))?;
        (link, "the default route's device")
    };
    let ip = nl
        .addresses(link.index)?
        .first()
        .map(|(ip, _)| *ip)
        .with_context(|| {
            // Only devices[0] is the user's choice; the default route's device is ours.
            let key = if config.devices.is_empty() {
                ""
            } else {
                "config key `devices`: "
            };
            format!(
                "{key}the native device {} ({why}) has no IPv4 address; the node IP is its first IPv4 address",
                link.name
            )
        })?;
    info!(device = %link.name, ifindex = link.index, node_ip = %ip, source = why, "native device");
    Ok(Some(NativeDevice {
        name: link.name,
        ifindex: link.index,
        ip,
    }))
}

/// Lets the node forward between the native device and the pods, and keeps
/// the node's own sockets off the SNAT port range.
pub fn setup_native_device(native: &NativeDevice) -> Result<(), AgentError> {
    sysctl::set(&format!("net/ipv4/conf/{}/forwarding", native.name), "1")?;
    reserve_nat_ports()
}

const RESERVED_PORTS_KEY: &str = "net/ipv4/ip_local_reserved_ports";

/// SNAT (masquerading, NodePort to another node) translates to the node IP
/// with ports NAT_PORT_MIN..=NAT_PORT_MAX, and from_netdev takes replies to
/// those ports as the datapath's. A node whose `ip_local_port_range` was
/// widened into that range would otherwise give the same node IP and port to
/// one of its own connections, and its replies would go to a pod.
fn reserve_nat_ports() -> Result<(), AgentError> {
    let current = sysctl::get(RESERVED_PORTS_KEY)?;
    if let Some(value) = reserved_ports_with_nat(&current) {
        sysctl::set(RESERVED_PORTS_KEY, &value)?;
        info!(ports = %value, "reserved the SNAT port range from local port allocation");
    }
    Ok(())
}

/// The `ip_local_reserved_ports` value that also holds the NAT range, or
/// `None` when a listed range already covers it. Other entries are kept.
fn reserved_ports_with_nat(current: &str) -> Option<String> {
    use ciliate_datapath::maps::{NAT_PORT_MAX, NAT_PORT_MIN};
    let covers = |entry: &str| {
        let (lo, hi) = entry.split_once('-').unwrap_or((entry, entry));
        matches!(
            (lo.trim().parse::<u32>(), hi.trim().parse::<u32>()),
            (Ok(lo), Ok(hi)) if lo <= u32::from(NAT_PORT_MIN) && hi >= u32::from(NAT_PORT_MAX)
        )
    };
    let current = current.trim();
    if current.split(',').any(covers) {
        return None;
    }
    let nat = format!("{NAT_PORT_MIN}-{NAT_PORT_MAX}");
    Some(if current.is_empty() {
        nat
    } else {
        format!("{current},{nat}")
    })
}

/// Creates (or checks) the host device pair, the router IP and the PodCIDR
/// route; returns the ifindex of `ciliate_host`.
pub fn ensure_host_devices(
    nl: &Netlink,
    config: &Config,
    pod: &PodNetwork,
) -> Result<u32, AgentError> {
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
    // Routes to other nodes' PodCIDRs point at ciliate_host without a
    // gateway; from_host takes those packets, so there is nobody to ARP for.
    nl.set_arp(host.index, false)?;
    route_through(HOST_DEVICE)?;
    relax_strict_rp_filter()?;
    nl.set_up(net.index)?;
    nl.set_up(host.index)?;
    for (ip, prefix) in nl.addresses(host.index)? {
        if (ip, prefix) != (pod.router, 32) {
            warn!(address = %format!("{ip}/{prefix}"), device = HOST_DEVICE, "removing an address of an earlier PodCIDR");
            nl.del_address(host.index, ip, prefix)?;
        }
    }
    if !nl.addresses(host.index)?.contains(&(pod.router, 32)) {
        nl.add_address(host.index, pod.router, 32)?;
    }
    // What the node sends its own pods goes this way (from_host delivers
    // it), so it must fit the pods' MTU: in tunnel mode smaller than
    // ciliate_host's, and a delivered packet larger than the pod's device
    // takes is dropped without an ICMP error.
    nl.replace_route(&Route {
        dst: pod.cidr,
        gateway: None,
        oif: Some(host.index),
        scope_link: true,
        src: Some(pod.router),
        onlink: false,
        mtu: Some(pod_mtu(config)),
    })?;
    Ok(host.index)
}

/// Strict reverse-path filtering node-wide (`all/rp_filter=1`, e.g. a
/// hardened host) overrides every device's own setting, and would drop what
/// pods send the node: their addresses are routed through ciliate_host, not
/// through the lxc device they arrive on. Like Cilium, the agent turns it
/// off then; loose (2) and off (0) are left as they are.
pub fn relax_strict_rp_filter() -> Result<(), AgentError> {
    const KEY: &str = "net/ipv4/conf/all/rp_filter";
    if sysctl::get(KEY)?.trim() == "1" {
        sysctl::set(KEY, "0")?;
        warn!(
            key = KEY,
            "strict reverse-path filtering would drop pods' traffic to the node; turned it off"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{reserved_ports_with_nat, tunnel_device};
    use crate::config::TunnelProtocol;

    #[test]
    fn each_tunnel_protocol_has_its_device_port_and_overhead() {
        let vxlan = tunnel_device(TunnelProtocol::Vxlan);
        let geneve = tunnel_device(TunnelProtocol::Geneve);
        assert_eq!(
            (vxlan.name, vxlan.kind, vxlan.port),
            ("ciliate_vxlan", "vxlan", 8472)
        );
        assert_eq!(
            (geneve.name, geneve.kind, geneve.port),
            ("ciliate_geneve", "geneve", 6081)
        );
        // 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 8 (VXLAN / Geneve base header).
        assert_eq!((vxlan.overhead, geneve.overhead), (50, 50));
    }

    #[test]
    fn the_nat_range_is_added_to_the_reserved_ports_once() {
        assert_eq!(reserved_ports_with_nat("").as_deref(), Some("61000-65535"));
        assert_eq!(
            reserved_ports_with_nat("8080,9000-9100\n").as_deref(),
            Some("8080,9000-9100,61000-65535")
        );
        assert_eq!(reserved_ports_with_nat("8080,61000-65535"), None);
        assert_eq!(reserved_ports_with_nat("60000-65535"), None);
        // A range that covers only part of it is not enough.
        assert_eq!(
            reserved_ports_with_nat("62000-65535").as_deref(),
            Some("62000-65535,61000-65535")
        );
    }
}
