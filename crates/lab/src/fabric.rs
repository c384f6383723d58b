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

/// The outside networks the router owns (on its loopback), addressed by
/// their `.200`: what pods reach "in the world" (`pod-to-world`, `to-cidr`).
pub const OUTSIDE_NETWORKS: [&str; 2] = ["10.10.1.200/24", "10.10.2.200/24"];
/// What the nodes route via the router: every outside network.
pub const OUTSIDE_SUMMARY: &str = "10.10.0.0/16";
/// The router's HTTP port, on every address it has.
pub const ROUTER_HTTP_PORT: u16 = 80;

/// The outside networks, parsed.
pub fn outside_networks() -> Vec<Ipv4Net> {
    OUTSIDE_NETWORKS
        .iter()
        .map(|n| n.parse().expect("valid constant"))
        .collect()
}

/// The route the nodes take to the outside networks.
pub fn outside_summary() -> Ipv4Net {
    OUTSIDE_SUMMARY.parse().expect("valid constant")
}

/// Creates the outside host: its own namespace (no forwarding), plugged into
/// the fabric like a node (port `router` on `br0`, `eth0` inside), owning the
/// outside networks on its loopback, with only the fabric's connected route:
/// it knows no PodCIDR (until `router-routes add`), so it reaches the cluster
/// only through node addresses (NodePorts, masqueraded pod traffic), as a
/// host outside the cluster does. No default route either: a reply to a pod
/// address has nowhere to go.
pub fn create_router(fabric: &str, router: &crate::state::RouterInfo) -> Result<()> {
    create_netns(&router.netns, &[("net.ipv4.ip_forward", "0")])?;
    plug_node(
        fabric,
        crate::names::ROUTER,
        &router.netns_path,
        router.address,
    )?;
    let nl = Netlink::new_in(&router.netns_path)?;
    let lo = nl
        .link_by_name("lo")?
        .ok_or_else(|| crate::LabError::Command {
            what: format!("addressing lo in {}", router.netns),
            argv: vec![],
            detail: "no loopback device".into(),
        })?;
    for net in &router.networks {
        nl.add_address(lo.index, net.addr(), net.prefix_len())?;
    }
    Ok(())
}

/// A one-line Python HTTP server on `port` (every address) that answers
/// every GET with `client <the source address it saw>` and a newline: what
/// the outside sees of a pod, masqueraded or not. Threaded with a deep
/// accept queue, for many connections at once. No quotes or backslashes
/// beyond the single quotes of Python strings.
pub fn client_echo_server(port: u16) -> String {
    format!(
        "import http.server as h;H=type('H',(h.BaseHTTPRequestHandler,),{{'do_GET':lambda s:\
         (b:=('client '+s.client_address[0]+chr(10)).encode(),s.send_response(200),\
         s.send_header('Content-Length',str(len(b))),s.end_headers(),s.wfile.write(b)),\
         'log_message':lambda s,*a:None}});S=type('S',(h.ThreadingHTTPServer,),\
         {{'request_queue_size':1024,'daemon_threads':True}});S(('0.0.0.0',{port}),H).serve_forever()"
    )
}

/// Adds (`add`) or removes routes on the router: `PodCIDR via node IP` for
/// each of `routes`. Adding replaces what is there; removing a route that
/// is absent is fine. Both are idempotent.
pub fn router_routes(netns: &str, routes: &[(Ipv4Net, Ipv4Addr)], add: bool) -> Result<()> {
    for (cidr, node) in routes {
        let (cidr, node) = (cidr.to_string(), node.to_string());
        if add {
            sys::ip(
                "routing a PodCIDR on the router",
                &[
                    "-n", netns, "route", "replace", &cidr, "via", &node, "dev", "eth0",
                ],
            )?;
        } else {
            match sys::ip(
                "removing a PodCIDR route from the router",
                &[
                    "-n", netns, "route", "del", &cidr, "via", &node, "dev", "eth0",
                ],
            ) {
                Err(crate::LabError::Command { detail, .. })
                    if detail.contains("No such process") => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Routes the outside networks of a node via the router.
pub fn route_outside(node_netns: &str, router: Ipv4Addr) -> Result<()> {
    sys::ip(
        "routing the outside networks via the router",
        &[
            "-n",
            node_netns,
            "route",
            "replace",
            OUTSIDE_SUMMARY,
            "via",
            &router.to_string(),
            "dev",
            "eth0",
        ],
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
