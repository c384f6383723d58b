//! The two baselines of the pod-to-pod benchmark, in the lab's topology but
//! without ciliate: a fabric namespace with bridge `br0`, two node namespaces
//! plugged into it (`eth0`, 192.168.10.100 and .101, as the lab's nodes), and
//! on each node one pod wired by a veth as the CNI plugin wires it (the
//! router IP on the node's `lo`, a link route to the pod).
//!
//! - [`Baseline::Kernel`]: plain kernel routing; each node routes the other's
//!   PodCIDR via the other's `eth0` address (what `autoDirectNodeRoutes`
//!   gives ciliate native, minus BPF): the practical limit.
//! - [`Baseline::Flannel`]: flannel's vxlan backend by hand: a `flannel.1`
//!   VXLAN device (VNI 1, UDP 8472, no learning) with `<PodCIDR>.0/32`, the
//!   remote PodCIDR routed `via <remote PodCIDR>.0 dev flannel.1 onlink`, a
//!   permanent neighbour for that gateway (the remote VTEP's MAC) and an FDB
//!   entry sending that MAC to the remote node; pods at MTU 1450.
//!
//! Every namespace is removed when the [`KernelNet`] drops.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ciliate_datapath::netlink::{format_mac, Netlink, Route};
use ciliate_datapath::podnet::{self, PodNetSpec};
use ciliate_datapath::testing::unique;
use ciliate_lab::{fabric, sys};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::topology::Netns;

/// The flannel-style VXLAN device.
const FLANNEL_DEVICE: &str = "flannel.1";
const FLANNEL_VNI: &str = "1";
const FLANNEL_PORT: &str = "8472";
/// A full-size pod packet plus VXLAN's 50 bytes must fit the fabric's 1500.
const VXLAN_POD_MTU: u32 = 1450;
const POD_MTU: u32 = 1500;

/// Which kernel-only datapath the nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    Kernel,
    Flannel,
}

/// Node `i`: fabric address, PodCIDR, pod address.
fn plan(i: u8) -> (Ipv4Net, Ipv4Net, Ipv4Addr) {
    (
        Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 10, 100 + i), 24),
        Ipv4Net::new_assert(Ipv4Addr::new(172, 20, i, 0), 24),
        Ipv4Addr::new(172, 20, i, 10),
    )
}

/// One node and its one pod.
pub struct Node {
    pub address: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub pod_ip: Ipv4Addr,
    // Dropped in order: the pod, then the node.
    pub pod: Netns,
    pub node: Netns,
}

/// Two nodes on a fabric; everything goes when this drops.
pub struct KernelNet {
    pub baseline: Baseline,
    pub nodes: [Node; 2],
    _fabric: Netns,
}

impl KernelNet {
    /// Builds the topology under unique namespace names.
    pub fn build(baseline: Baseline) -> Result<Self> {
        let prefix = unique(match baseline {
            Baseline::Kernel => "xbk",
            Baseline::Flannel => "xbf",
        });
        let fabric_name = format!("{prefix}-fab");
        fabric::create_fabric(
            &fabric_name,
            Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 10, 1), 24),
        )
        .with_context(|| format!("creating fabric {fabric_name}"))?;
        let fabric_ns = Netns::adopt(&fabric_name);
        let mut nodes = Vec::new();
        for i in 0..2u8 {
            nodes.push(node(baseline, &prefix, &fabric_name, i)?);
        }
        let [a, b]: [Node; 2] = nodes.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?;
        match baseline {
            Baseline::Kernel => {
                route_direct(&a, &b)?;
                route_direct(&b, &a)?;
            }
            Baseline::Flannel => {
                let (mac_a, mac_b) = (create_flannel(&a)?, create_flannel(&b)?);
                route_flannel(&a, &b, &mac_b)?;
                route_flannel(&b, &a, &mac_a)?;
            }
        }
        Ok(Self {
            baseline,
            nodes: [a, b],
            _fabric: fabric_ns,
        })
    }
}

fn node(baseline: Baseline, prefix: &str, fabric_name: &str, i: u8) -> Result<Node> {
    let (address, pod_cidr, pod_ip) = plan(i);
    let node_name = format!("{prefix}-n{i}");
    fabric::create_netns(
        &node_name,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ],
    )
    .with_context(|| format!("creating node namespace {node_name}"))?;
    let node = Netns::adopt(&node_name);
    fabric::plug_node(fabric_name, &format!("{prefix}p{i}"), &node.path(), address)
        .with_context(|| format!("plugging {node_name} into the fabric"))?;
    let pod_name = format!("{prefix}-p{i}");
    fabric::create_netns(&pod_name, &[])
        .with_context(|| format!("creating pod namespace {pod_name}"))?;
    let pod = Netns::adopt(&pod_name);
    let nl = Netlink::new_in(&node.path()).context("netlink in a node")?;
    let router = Ipv4Addr::from(u32::from(pod_cidr.network()) + 1);
    let lo = nl.link_by_name("lo")?.context("a node without lo")?;
    // The pods' gateway is a local address of the node: it answers their ARP.
    nl.add_address(lo.index, router, 32)
        .context("adding the router IP to the node's lo")?;
    let mtu = match baseline {
        Baseline::Kernel => POD_MTU,
        Baseline::Flannel => VXLAN_POD_MTU,
    };
    let lxc = format!("lxcbench{i}");
    let veth = podnet::create(
        &nl,
        &PodNetSpec {
            host_ifname: &lxc,
            ifname: "eth0",
            netns: &pod.path(),
            ip: pod_ip,
            router,
            mtu,
        },
    )
    .with_context(|| format!("wiring pod {pod_name}"))?;
    nl.add_route(&Route::link_scope(
        Ipv4Net::new_assert(pod_ip, 32),
        veth.host.index,
    ))
    .with_context(|| format!("routing {pod_ip} to {lxc}"))?;
    let forwarding = format!("net/ipv4/conf/{lxc}/forwarding");
    let rp_filter = format!("net/ipv4/conf/{lxc}/rp_filter");
    node.sysctls(&[(forwarding.as_str(), "1"), (rp_filter.as_str(), "0")])?;
    pod.sysctls(&[
        ("net/ipv4/tcp_tw_reuse", "1"),
        ("net/ipv4/ip_local_port_range", "1024 65535"),
    ])?;
    Ok(Node {
        address: address.addr(),
        pod_cidr,
        pod_ip,
        pod,
        node,
    })
}

/// `from` routes `to`'s PodCIDR via `to`'s fabric address.
fn route_direct(from: &Node, to: &Node) -> Result<()> {
    let nl = Netlink::new_in(&from.node.path())?;
    let eth0 = nl.link_by_name("eth0")?.context("a node without eth0")?;
    nl.add_route(&Route::via(to.pod_cidr, to.address, eth0.index))
        .with_context(|| format!("routing {} via {}", to.pod_cidr, to.address))?;
    Ok(())
}

fn ip(what: &str, ns: &Netns, args: &[&str]) -> Result<()> {
    let mut command = vec!["-n", ns.name()];
    command.extend_from_slice(args);
    sys::ip(what, &command).with_context(|| format!("{what} in {}", ns.name()))
}

/// Creates `node`'s `flannel.1`, up, with `<PodCIDR>.0/32`; returns its MAC.
fn create_flannel(node: &Node) -> Result<String> {
    ip(
        "creating flannel.1",
        &node.node,
        &[
            "link",
            "add",
            FLANNEL_DEVICE,
            "type",
            "vxlan",
            "id",
            FLANNEL_VNI,
            "local",
            &node.address.to_string(),
            "dev",
            "eth0",
            "dstport",
            FLANNEL_PORT,
            "nolearning",
        ],
    )?;
    let vtep = format!("{}/32", node.pod_cidr.network());
    ip(
        "addressing flannel.1",
        &node.node,
        &["addr", "add", &vtep, "dev", FLANNEL_DEVICE],
    )?;
    ip(
        "setting flannel.1 up",
        &node.node,
        &["link", "set", FLANNEL_DEVICE, "up"],
    )?;
    let link = Netlink::new_in(&node.node.path())?
        .link_by_name(FLANNEL_DEVICE)?
        .context("flannel.1 vanished")?;
    Ok(format_mac(link.mac.context("flannel.1 has no MAC")?))
}

/// Routes `to`'s PodCIDR through `from`'s `flannel.1`, as flanneld's vxlan
/// backend programs a remote lease (`to_mac`: `to`'s `flannel.1`).
fn route_flannel(from: &Node, to: &Node, to_mac: &str) -> Result<()> {
    let gateway = to.pod_cidr.network().to_string();
    ip(
        "adding the remote VTEP's neighbour",
        &from.node,
        &[
            "neigh",
            "replace",
            &gateway,
            "lladdr",
            to_mac,
            "dev",
            FLANNEL_DEVICE,
            "nud",
            "permanent",
        ],
    )?;
    let out = std::process::Command::new("bridge")
        .args(["-n", from.node.name(), "fdb", "append", to_mac])
        .args(["dev", FLANNEL_DEVICE, "dst", &to.address.to_string()])
        .output()
        .context("running bridge fdb append")?;
    if !out.status.success() {
        anyhow::bail!(
            "bridge fdb append {to_mac} dev {FLANNEL_DEVICE} in {}: {}",
            from.node.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    ip(
        "routing the remote PodCIDR through flannel.1",
        &from.node,
        &[
            "route",
            "add",
            &to.pod_cidr.to_string(),
            "via",
            &gateway,
            "dev",
            FLANNEL_DEVICE,
            "onlink",
        ],
    )
}
