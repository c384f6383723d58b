//! The pod side of an endpoint: a veth whose host end (`lxc...`) stays in the
//! node's namespace and whose other end becomes the pod's interface, with its
//! address, MTU and routes via the router IP. Used by the CNI plugin for pods
//! and by the agent for its health endpoint, so both are wired identically.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::netlink::{Netlink, NetlinkError, Route};
use crate::netns::{self, NetnsError};
use crate::sysctl;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what} has no MAC address")]
    NoMac { what: String },
}

/// What the pod should get.
#[derive(Clone, Debug)]
pub struct PodNetSpec<'a> {
    /// Host-side device name (`lxc<hash>` or `lxc_health`).
    pub host_ifname: &'a str,
    /// Pod-side device name (`eth0`).
    pub ifname: &'a str,
    /// The pod's namespace file.
    pub netns: &'a Path,
    pub ip: Ipv4Addr,
    pub router: Ipv4Addr,
    pub mtu: u32,
}

/// What was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    pub mac: [u8; 6],
    pub ifindex: u32,
}

/// Creates and configures both ends. On any error, the pair is deleted again,
/// so nothing is left half-made.
pub fn create(host: &Netlink, spec: &PodNetSpec<'_>) -> Result<PodNet, PodNetError> {
    let netns_file = netns::open(spec.netns)?;
    // Born in the pod's namespace under a temporary name, so that a pod that
    // already has `eth0` fails here instead of after we touched it.
    let temp = format!(
        "tmp{}",
        &spec.host_ifname[spec.host_ifname.len().saturating_sub(11)..]
    );
    let link =
        host.create_veth_with_peer_in(spec.host_ifname, &temp, Some(spec.mtu), netns_file.as_fd())?;
    match configure(host, spec, link.index, &temp) {
        Ok(made) => Ok(made),
        Err(e) => {
            let _ = host.del_link(link.index);
            Err(e)
        }
    }
}

fn configure(
    host: &Netlink,
    spec: &PodNetSpec<'_>,
    host_index: u32,
    temp: &str,
) -> Result<PodNet, PodNetError> {
    let pod = Netlink::new_in(spec.netns)?;
    let peer = pod
        .link_by_name(temp)?
        .ok_or_else(|| NetlinkError::Protocol {
            operation: format!("creating {temp} in {}", spec.netns.display()),
            detail: "the pod end is missing".into(),
        })?;
    pod.set_name(peer.index, spec.ifname)?;
    let ifname = spec.ifname.to_string();
    let netns_path = spec.netns.to_owned();
    // /proc/sys/net is per namespace: write it from inside the pod's.
    netns::run_in(&netns_path, move || {
        let _ = sysctl::set_if_exists(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1");
    })?;
    pod.add_address(peer.index, spec.ip, 32)?;
    pod.set_up(peer.index)?;
    if let Some(lo) = pod.link_by_name("lo")? {
        pod.set_up(lo.index)?;
    }
    let router_net = Ipv4Net::new(spec.router, 32).expect("/32 is valid");
    pod.replace_route(&Route::link_scope(router_net, peer.index))?;
    pod.replace_route(&Route::via(Ipv4Net::default(), spec.router, peer.index))?;
    let mac = pod
        .link_by_index(peer.index)?
        .and_then(|l| l.mac)
        .ok_or_else(|| PodNetError::NoMac {
            what: format!("{} in {}", spec.ifname, spec.netns.display()),
        })?;

    let _ = sysctl::set_if_exists(
        &format!("net/ipv6/conf/{}/disable_ipv6", spec.host_ifname),
        "1",
    );
    host.set_up(host_index)?;
    let host_link = host.link_by_index(host_index)?;
    let host_mac = host_link
        .and_then(|l| l.mac)
        .ok_or_else(|| PodNetError::NoMac {
            what: spec.host_ifname.to_string(),
        })?;
    Ok(PodNet {
        host_ifindex: host_index,
        host_mac,
        mac,
        ifindex: peer.index,
    })
}
