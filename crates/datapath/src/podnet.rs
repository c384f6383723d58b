//! The pod side of an endpoint: a veth (or, in `datapathMode: netkit`, a
//! netkit pair) whose host end (`lxc...`) stays in the node's namespace and
//! whose other end is born in the pod's namespace under its final name, with its address, MTU and routes via the router IP. The
//! CNI plugin uses it for pods and the agent for its health endpoint, so both
//! are wired identically.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::netlink::{Link, Netlink, NetlinkError, Route};
use crate::netns::{self, NetnsError};
use crate::sysctl::{self, SysctlError};

/// `0.0.0.0/0`.
pub const DEFAULT_ROUTE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("{step}")]
    Netlink {
        step: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{step}")]
    Netns {
        step: String,
        #[source]
        source: NetnsError,
    },
    #[error("{step}")]
    Sysctl {
        step: String,
        #[source]
        source: SysctlError,
    },
    #[error("{what} vanished while it was being set up")]
    Vanished { what: String },
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

/// Both ends as they ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodVeth {
    pub host: Link,
    pub pod: Link,
}

/// Creates and configures both ends. On any error the pair is deleted again,
/// so nothing is left half-made. Routes are added, never replaced: a pod that
/// already has a default route makes this fail instead of losing it.
pub fn create(host: &Netlink, spec: &PodNetSpec<'_>) -> Result<PodVeth, PodNetError> {
    create_pair(host, spec, PairKind::Veth)
}

/// As [`create`], with a netkit pair (L2 mode) instead of a veth: the
/// primary is the host end, the peer the pod's, and the peer drops whatever
/// the pod sends until a program is attached as its policy (see
/// [`Netlink::create_netkit_pair`]).
pub fn create_netkit(host: &Netlink, spec: &PodNetSpec<'_>) -> Result<PodVeth, PodNetError> {
    create_pair(host, spec, PairKind::Netkit)
}

#[derive(Clone, Copy)]
enum PairKind {
    Veth,
    Netkit,
}

fn create_pair(
    host: &Netlink,
    spec: &PodNetSpec<'_>,
    kind: PairKind,
) -> Result<PodVeth, PodNetError> {
    let in_pod = |what: &str| format!("{what} in {}", spec.netns.display());
    let netns_file = netns::open(spec.netns).map_err(|source| PodNetError::Netns {
        step: in_pod("opening the namespace"),
        source,
    })?;
    let (made, what) = match kind {
        PairKind::Veth => (
            host.create_veth_with_peer_in(
                spec.host_ifname,
                spec.ifname,
                Some(spec.mtu),
                netns_file.as_fd(),
            ),
            "veth",
        ),
        PairKind::Netkit => (
            host.create_netkit_pair(
                spec.host_ifname,
                spec.ifname,
                Some(spec.mtu),
                Some(netns_file.as_fd()),
            ),
            "netkit",
        ),
    };
    let link = made.map_err(|source| PodNetError::Netlink {
        step: in_pod(&format!(
            "creating {what} {} with {}",
            spec.host_ifname, spec.ifname
        )),
        source,
    })?;
    match configure(host, &link, spec) {
        Ok(made) => Ok(made),
        Err(e) => {
            let _ = host.del_link(link.index);
            Err(e)
        }
    }
}

fn configure(
    host_nl: &Netlink,
    host: &Link,
    spec: &PodNetSpec<'_>,
) -> Result<PodVeth, PodNetError> {
    let pod = configure_pod(spec)?;
    // The host side: no IPv6 (the datapath is IPv4), then up.
    let key = format!("net/ipv6/conf/{}/disable_ipv6", host.name);
    sysctl::set_if_exists(&key, "1").map_err(|source| PodNetError::Sysctl {
        step: format!("disabling IPv6 on {}", host.name),
        source,
    })?;
    host_nl
        .set_up(host.index)
        .map_err(|source| PodNetError::Netlink {
            step: format!("setting {} up", host.name),
            source,
        })?;
    let host = host_nl
        .link_by_index(host.index)
        .map_err(|source| PodNetError::Netlink {
            step: format!("reading {} back", host.name),
            source,
        })?
        .ok_or_else(|| PodNetError::Vanished {
            what: host.name.clone(),
        })?;
    Ok(PodVeth { host, pod })
}

/// Inside the pod: no IPv6, address, up, `lo` up, the route to the router
/// and the default route. Runs on a thread of its own in the pod's namespace.
fn configure_pod(spec: &PodNetSpec<'_>) -> Result<Link, PodNetError> {
    let netns_path: PathBuf = spec.netns.to_owned();
    let (ifname, ip, router) = (spec.ifname.to_string(), spec.ip, spec.router);
    let in_pod = {
        let netns_path = netns_path.clone();
        move |what: &str| format!("{what} in {}", netns_path.display())
    };
    let step = in_pod.clone();
    netns::run_in(&netns_path, move || -> Result<Link, PodNetError> {
        let nl_err = |what: &str| {
            let step = in_pod(what);
            move |source| PodNetError::Netlink { step, source }
        };
        let nl = Netlink::new().map_err(nl_err("opening netlink"))?;
        let link = nl
            .link_by_name(&ifname)
            .map_err(nl_err(&format!("looking up {ifname}")))?
            .ok_or_else(|| PodNetError::Vanished {
                what: in_pod(&ifname),
            })?;
        sysctl::set_if_exists(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1").map_err(
            |source| PodNetError::Sysctl {
                step: in_pod(&format!("disabling IPv6 on {ifname}")),
                source,
            },
        )?;
        nl.add_address(link.index, ip, 32)
            .map_err(nl_err("configuring the pod interface"))?;
        nl.set_up(link.index)
            .map_err(nl_err("configuring the pod interface"))?;
        if let Some(lo) = nl.link_by_name("lo").map_err(nl_err("looking up lo"))? {
            nl.set_up(lo.index).map_err(nl_err("setting lo up"))?;
        }
        nl.add_route(&Route::link_scope(router.into(), link.index))
            .map_err(nl_err("configuring the pod interface"))?;
        nl.add_route(&Route::via(DEFAULT_ROUTE, router, link.index))
            .map_err(nl_err("configuring the pod interface"))?;
        nl.link_by_index(link.index)
            .map_err(nl_err(&format!("reading {ifname} back")))?
            .ok_or_else(|| PodNetError::Vanished {
                what: in_pod(&ifname),
            })
    })
    .map_err(|source| PodNetError::Netns {
        step: step("entering the namespace"),
        source,
    })?
}
