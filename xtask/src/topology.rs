//! One node and two pods, the same for both mechanisms: a client pod and a
//! server pod, each a veth (`lxccli`, `lxcsrv`) into a "node" namespace, as
//! the CNI plugin wires them. Namespaces have unique names and are deleted
//! when the topology drops, however the run ends.
//!
//! - `Kind::Kernel` (for the iptables variant): the node routes between the
//!   pods (forwarding on, the router IP on its `lo` so that it answers the
//!   pods' ARP), which is what kube-proxy's rules sit on.
//! - `Kind::Ciliate`: the node does not forward; the lxc devices get
//!   ciliate's programs (see `ciliate.rs`), which answer ARP for the router
//!   and deliver with `bpf_redirect_peer`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_datapath::podnet::{self, PodNetSpec, PodVeth};
use ciliate_datapath::{netns, sysctl};

use crate::catalog::{CLIENT_IP, ROUTER_IP, SERVER_IP};

pub const CLIENT_LXC: &str = "lxccli";
pub const SERVER_LXC: &str = "lxcsrv";
const POD_MTU: u32 = 1500;

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        netns::create_named(name).with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// Takes ownership of an existing namespace (made by the lab's helpers),
    /// so that it is deleted on drop like one made by [`Netns::create`].
    pub fn adopt(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        netns::named_path(&self.name)
    }

    /// Sets sysctls (`net/ipv4/...` keys) inside this namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let name = self.name.clone();
        netns::run_in(&self.path(), move || -> Result<()> {
            for (key, value) in settings {
                sysctl::set(&key, &value)
                    .with_context(|| format!("setting {key}={value} in {name}"))?;
            }
            Ok(())
        })?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = netns::delete_named(&self.name) {
            eprintln!("cleanup: {e}");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    Ciliate,
}

pub struct Topology {
    pub kind: Kind,
    pub client_veth: PodVeth,
    pub server_veth: PodVeth,
    // Dropped in this order: pods first, then the node.
    pub client: Netns,
    pub server: Netns,
    pub node: Netns,
}

impl Topology {
    /// Builds `<prefix>-node`, `<prefix>-cli` and `<prefix>-srv`.
    pub fn build(prefix: &str, kind: Kind) -> Result<Self> {
        let node = Netns::create(&format!("{prefix}-node"))?;
        let client = Netns::create(&format!("{prefix}-cli"))?;
        let server = Netns::create(&format!("{prefix}-srv"))?;
        // IPv6 off everywhere: what a device sends on its own (router
        // solicitations) would only be noise, and drops for the datapath.
        for ns in [&node, &client, &server] {
            ns.sysctls(&[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ])?;
        }
        let forwarding = match kind {
            Kind::Kernel => "1",
            Kind::Ciliate => "0",
        };
        node.sysctls(&[("net/ipv4/conf/all/forwarding", forwarding)])?;
        // A connect-request-close loop cycles through the whole port range
        // in seconds: let the client reuse its TIME_WAIT ports.
        client.sysctls(&[
            ("net/ipv4/tcp_tw_reuse", "1"),
            ("net/ipv4/ip_local_port_range", "1024 65535"),
        ])?;

        let nl = Netlink::new_in(&node.path()).context("netlink in the node namespace")?;
        let lo = nl
            .link_by_name("lo")?
            .context("the node namespace has no lo")?;
        nl.set_up(lo.index)?;
        if kind == Kind::Kernel {
            // The pods' gateway is a local address of the node: the node
            // answers their ARP for it on any device.
            nl.add_address(lo.index, ROUTER_IP, 32)
                .context("adding the router IP to the node's lo")?;
        }
        let client_veth = add_pod(&nl, &node, &client, CLIENT_LXC, CLIENT_IP, kind)?;
        let server_veth = add_pod(&nl, &node, &server, SERVER_LXC, SERVER_IP, kind)?;
        Ok(Self {
            kind,
            client_veth,
            server_veth,
            client,
            server,
            node,
        })
    }
}

fn add_pod(
    nl: &Netlink,
    node: &Netns,
    pod: &Netns,
    lxc: &str,
    ip: std::net::Ipv4Addr,
    kind: Kind,
) -> Result<PodVeth> {
    let veth = podnet::create(
        nl,
        &PodNetSpec {
            host_ifname: lxc,
            ifname: "eth0",
            netns: &pod.path(),
            ip,
            router: ROUTER_IP,
            mtu: POD_MTU,
        },
    )
    .with_context(|| format!("wiring pod {} through {lxc}", pod.name()))?;
    let settings: &[(&str, &str)] = match kind {
        Kind::Kernel => &[("forwarding", "1"), ("rp_filter", "0")],
        // As the agent sets an lxc device: only BPF carries pod traffic.
        Kind::Ciliate => &[("forwarding", "0"), ("arp_ignore", "1"), ("rp_filter", "0")],
    };
    let keys: Vec<(String, &str)> = settings
        .iter()
        .map(|(k, v)| (format!("net/ipv4/conf/{lxc}/{k}"), *v))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    node.sysctls(&refs)?;
    nl.add_route(&Route::link_scope(ip.into(), veth.host.index))
        .with_context(|| format!("routing {ip} to {lxc}"))?;
    Ok(veth)
}

/// Empties the conntrack table of the namespace at `path` (ctnetlink
/// `IPCTNL_MSG_CT_DELETE` without attributes, what `conntrack -F` sends).
///
/// Between measurements, so that a client port reused towards another VIP
/// cannot meet an old entry whose reply tuple it would clash with (the SYN
/// would be dropped and retried a second later).
pub fn flush_conntrack(path: &Path) -> Result<()> {
    netns::run_in(path, || -> Result<()> {
        use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
        const NFNL_SUBSYS_CTNETLINK: u16 = 1;
        const IPCTNL_MSG_CT_DELETE: u16 = 2;
        const NLM_F_REQUEST: u16 = 1;
        const NLM_F_ACK: u16 = 4;
        const NLMSG_ERROR: u16 = 2;
        let mut socket = Socket::new(NETLINK_NETFILTER).context("opening a netfilter socket")?;
        socket.bind_auto().context("binding the netfilter socket")?;
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&20u32.to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        msg.extend_from_slice(&[libc_af_inet(), 0, 0, 0]); // nfgenmsg: AF_INET, v0
        socket
            .send_to(&msg, &SocketAddr::new(0, 0), 0)
            .context("asking ctnetlink to flush")?;
        let (buf, _) = socket
            .recv_from_full()
            .context("reading ctnetlink's answer")?;
        if buf.len() < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
            anyhow::bail!("ctnetlink answered a flush with something other than an ack");
        }
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(std::io::Error::from_raw_os_error(-code)).context("flushing conntrack");
        }
        Ok(())
    })?
}

fn libc_af_inet() -> u8 {
    nix::libc::AF_INET as u8
}
