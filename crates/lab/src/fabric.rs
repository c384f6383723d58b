//! The lab's wiring: the fabric bridge and each node's `eth0` on it.
//!
//! Links, addresses and up/down go through `ciliate_datapath::netlink` (one
//! socket per namespace). The bridge itself and enslaving ports to it are not
//! in that API yet, so those two steps use iproute2 (`ip -n`, which touches
//! only the namespace it is given).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use ciliate_datapath::netlink::Netlink;
use ciliate_datapath::netns;
use ipnet::Ipv4Net;

use crate::error::Result;
use crate::sys;

/// The bridge in the fabric namespace.
pub const BRIDGE: &str = "br0";

/// Sysctls of every lab namespace: no IPv6 (keeps them quiet: no DAD, no RS).
pub const QUIET: [(&str, &str); 2] = [
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// Creates a named namespace with the quiet sysctls and `lo` up.
pub fn create_netns(name: &str, extra_sysctls: &[(&str, &str)]) -> Result<std::path::PathBuf> {
    let path = netns::create_named(name)?;
    let mut settings = QUIET.to_vec();
    settings.extend_from_slice(extra_sysctls);
    sys::sysctls_in(&path, &settings)?;
    set_up(&path, "lo")?;
    Ok(path)
}

/// Sets a device of a namespace up.
pub fn set_up(netns_path: &Path, device: &str) -> Result<()> {
    let nl = Netlink::new_in(netns_path)?;
    let link = nl
        .link_by_name(device)?
        .ok_or_else(|| crate::LabError::Command {
            what: format!("setting {device} up in {}", netns_path.display()),
            argv: vec![],
            detail: "no such device".into(),
        })?;
    nl.set_up(link.index)?;
    Ok(())
}

/// Creates the fabric namespace holding bridge `br0`, up, with `address`
/// (the outside host, where etcd listens). It does not forward.
pub fn create_fabric(name: &str, address: Ipv4Net) -> Result<()> {
    create_netns(name, &[("net.ipv4.ip_forward", "0")])?;
    sys::ip(
        "creating the fabric bridge",
        &["-n", name, "link", "add", BRIDGE, "type", "bridge"],
    )?;
    let path = netns::named_path(name);
    set_up(&path, BRIDGE)?;
    let nl = Netlink::new_in(&path)?;
    let bridge = nl
        .link_by_name(BRIDGE)?
        .ok_or_else(|| crate::LabError::Command {
            what: format!("addressing {BRIDGE} in {name}"),
            argv: vec![],
            detail: "the bridge vanished".into(),
        })?;
    nl.add_address(bridge.index, address.addr(), address.prefix_len())?;
    Ok(())
}

/// Routes a node's PodCIDR via the node in the fabric, as a routed network
/// would, so the outside host can answer pods. Replaces an earlier route.
pub fn route_pod_cidr(fabric: &str, pod_cidr: Ipv4Net, node: Ipv4Addr) -> Result<()> {
    sys::ip(
        "routing a PodCIDR in the fabric",
        &[
            "-n",
            fabric,
            "route",
            "replace",
            &pod_cidr.to_string(),
            "via",
            &node.to_string(),
            "dev",
            BRIDGE,
        ],
    )
}

/// Plugs a node into the fabric: a veth whose `port` end is a port of `br0`
/// in the fabric and whose other end is the node's `eth0` with `address`.
pub fn plug_node(fabric: &str, port: &str, node_netns: &Path, address: Ipv4Net) -> Result<()> {
    let fabric_path = netns::named_path(fabric);
    let nl = Netlink::new_in(&fabric_path)?;
    let node_ns = sys::open_netns(node_netns)?;
    nl.create_veth_with_peer_in(port, "eth0", None, node_ns.as_fd())?;
    sys::ip(
        "adding a node port to the fabric bridge",
        &["-n", fabric, "link", "set", port, "master", BRIDGE],
    )?;
    set_up(&fabric_path, port)?;
    let node = Netlink::new_in(node_netns)?;
    let eth0 = node
        .link_by_name("eth0")?
        .ok_or_else(|| crate::LabError::Command {
            what: format!("wiring {}", node_netns.display()),
            argv: vec![],
            detail: "eth0 did not arrive in the node's namespace".into(),
        })?;
    node.add_address(eth0.index, address.addr(), address.prefix_len())?;
    node.set_up(eth0.index)?;
    Ok(())
}

/// Creates the outside host: its own namespace (no forwarding), plugged into
/// the fabric like a node (port `router` on `br0`, `eth0` inside) with only
/// the fabric's connected route: it knows no PodCIDR, so it reaches the
/// cluster only through node addresses (NodePorts), as a client outside
/// the cluster does.
pub fn create_router(fabric: &str, router: &crate::state::RouterInfo) -> Result<()> {
    create_netns(&router.netns, &[("net.ipv4.ip_forward", "0")])?;
    plug_node(
        fabric,
        crate::names::ROUTER,
        &router.netns_path,
        router.address,
    )
}

/// The address of a device, for checks.
pub fn addresses(netns_path: &Path, device: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let nl = Netlink::new_in(netns_path)?;
    match nl.link_by_name(device)? {
        Some(link) => Ok(nl.addresses(link.index)?),
        None => Ok(Vec::new()),
    }
}

/// The fabric's own address (the bridge: the outside host, etcd, the
/// operator): the subnet's first address, with the subnet's prefix.
pub fn gateway(fabric_cidr: Ipv4Net) -> Ipv4Net {
    let ip = Ipv4Addr::from(u32::from(fabric_cidr.network()) + 1);
    Ipv4Net::new(ip, fabric_cidr.prefix_len()).expect("the prefix of an Ipv4Net is valid")
}
