//! The pod's veth: `lxc<hash>` on the host, `CNI_IFNAME` in the pod.

use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use ciliate_api::IpamAllocation;
use ciliate_datapath::netlink::{Link, Netlink, Route};
use ciliate_datapath::{netns, sysctl};
use sha2::{Digest, Sha256};

use crate::error::{code, CniError, CniResult};

/// `0.0.0.0/0`.
pub const DEFAULT_ROUTE: ipnet::Ipv4Net = ipnet::Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

/// `lxc` + the first 11 hex digits of sha256(`container_id/ifname`): 14
/// characters, the same every time, so DEL finds what ADD made.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let mut name = String::from("lxc");
    for b in &digest[..6] {
        let _ = write!(name, "{b:02x}");
    }
    name.truncate(3 + 11);
    name
}

/// Opens the pod's namespace file; a missing one is "container unknown" (code 3).
pub fn open_netns(path: &Path) -> CniResult<File> {
    netns::open(path).map_err(|e| match &e {
        netns::NetnsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "CNI_NETNS {} does not exist: the container's network namespace is gone \
                     or was never made",
                    path.display()
                ),
            )
        }
        _ => CniError::io(&format!("opening CNI_NETNS {}", path.display()), &e),
    })
}

/// Both ends as they ended up.
#[derive(Debug)]
pub struct Veth {
    pub host: Link,
    pub pod: Link,
}

/// Creates the pair with the pod end born in the pod namespace under its final
/// name, then configures both ends. On failure, deletes the pair again.
pub fn setup(
    host_nl: &Netlink,
    netns_path: &Path,
    netns_file: &File,
    host_name: &str,
    ifname: &str,
    alloc: &IpamAllocation,
) -> CniResult<Veth> {
    let host = host_nl
        .create_veth_with_peer_in(host_name, ifname, Some(alloc.mtu), netns_file.as_fd())
        .map_err(|e| {
            CniError::io(
                &format!(
                    "creating veth {host_name} with {ifname} in {}",
                    netns_path.display()
                ),
                &e,
            )
        })?;
    match configure(host_nl, &host, netns_path, ifname, alloc) {
        Ok(veth) => Ok(veth),
        Err(e) => {
            if let Err(undo) = host_nl.del_link(host.index) {
                return Err(e.note(&format!(
                    "and removing {host_name} again failed: {}",
                    crate::error::chain(&undo)
                )));
            }
            Err(e)
        }
    }
}

fn configure(
    host_nl: &Netlink,
    host: &Link,
    netns_path: &Path,
    ifname: &str,
    alloc: &IpamAllocation,
) -> CniResult<Veth> {
    let pod = configure_pod(netns_path, ifname, alloc)?;
    // The host side: no IPv6 (the datapath is IPv4), then up.
    sysctl::set_if_exists(&format!("net/ipv6/conf/{}/disable_ipv6", host.name), "1")
        .map_err(|e| CniError::io(&format!("disabling IPv6 on {}", host.name), &e))?;
    host_nl
        .set_up(host.index)
        .map_err(|e| CniError::io(&format!("setting {} up", host.name), &e))?;
    let host = host_nl
        .link_by_index(host.index)
        .map_err(|e| CniError::io(&format!("reading {} back", host.name), &e))?
        .ok_or_else(|| {
            CniError::new(
                code::IO,
                format!("{} vanished while it was being set up", host.name),
            )
        })?;
    Ok(Veth { host, pod })
}

/// Inside the pod: address, up, `lo` up, the route to the router and the default route.
fn configure_pod(netns_path: &Path, ifname: &str, alloc: &IpamAllocation) -> CniResult<Link> {
    let in_pod = |what: &str| format!("{what} in {}", netns_path.display());
    let guard = netns::enter(netns_path)
        .map_err(|e| CniError::io(&in_pod("entering the namespace"), &e))?;
    let result = (|| {
        let nl = Netlink::new().map_err(|e| CniError::io(&in_pod("opening netlink"), &e))?;
        let link = nl
            .link_by_name(ifname)
            .map_err(|e| CniError::io(&in_pod(&format!("looking up {ifname}")), &e))?
            .ok_or_else(|| CniError::new(code::IO, in_pod(&format!("{ifname} did not appear"))))?;
        sysctl::set_if_exists(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")
            .map_err(|e| CniError::io(&in_pod(&format!("disabling IPv6 on {ifname}")), &e))?;
        let step = |e: &ciliate_datapath::netlink::NetlinkError| {
            CniError::io(&in_pod("configuring the pod interface"), e)
        };
        nl.add_address(link.index, alloc.ip, 32)
            .map_err(|e| step(&e))?;
        nl.set_up(link.index).map_err(|e| step(&e))?;
        if let Some(lo) = nl.link_by_name("lo").map_err(|e| step(&e))? {
            nl.set_up(lo.index).map_err(|e| step(&e))?;
        }
        nl.add_route(&Route::link_scope(alloc.router.into(), link.index))
            .map_err(|e| step(&e))?;
        nl.add_route(&Route::via(DEFAULT_ROUTE, alloc.router, link.index))
            .map_err(|e| step(&e))?;
        nl.link_by_index(link.index)
            .map_err(|e| step(&e))?
            .ok_or_else(|| {
                CniError::new(
                    code::IO,
                    in_pod(&format!("{ifname} vanished while it was being set up")),
                )
            })
    })();
    guard
        .restore()
        .map_err(|e| CniError::io("returning to the host namespace", &e))?;
    result
}

/// Deletes the host device (its peer goes with it); `false` if there was none.
pub fn teardown(host_nl: &Netlink, host_name: &str) -> CniResult<bool> {
    host_nl
        .del_link_by_name(host_name)
        .map_err(|e| CniError::io(&format!("deleting {host_name}"), &e))
}

/// What CHECK looks at inside the pod.
#[derive(Debug)]
pub struct PodSide {
    pub link: Option<Link>,
    pub addresses: Vec<(Ipv4Addr, u8)>,
    pub routes: Vec<Route>,
}

pub fn inspect_pod(netns_path: &Path, ifname: &str) -> CniResult<PodSide> {
    open_netns(netns_path)?;
    let nl = Netlink::new_in(netns_path)
        .map_err(|e| CniError::io(&format!("opening netlink in {}", netns_path.display()), &e))?;
    let context = format!("inspecting {ifname} in {}", netns_path.display());
    let link = nl
        .link_by_name(ifname)
        .map_err(|e| CniError::io(&context, &e))?;
    let (addresses, routes) = match &link {
        Some(link) => (
            nl.addresses(link.index)
                .map_err(|e| CniError::io(&context, &e))?,
            nl.routes().map_err(|e| CniError::io(&context, &e))?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(PodSide {
        link,
        addresses,
        routes,
    })
}

/// Whether the pod already has an interface called `ifname`.
pub fn pod_has(netns_path: &Path, ifname: &str) -> CniResult<bool> {
    let nl = Netlink::new_in(netns_path)
        .map_err(|e| CniError::io(&format!("opening netlink in {}", netns_path.display()), &e))?;
    nl.link_by_name(ifname).map(|l| l.is_some()).map_err(|e| {
        CniError::io(
            &format!("looking up {ifname} in {}", netns_path.display()),
            &e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_fit() {
        let a = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(
            a.len(),
            14,
            "lxc + 11 hex digits, within the 15-character limit"
        );
        assert!(a.starts_with("lxc") && a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
        assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
        assert_ne!(a, host_ifname("0123456789abcdeF", "eth0"));
        // `printf c1/eth0 | sha256sum` starts with d72e032fedd.
        assert_eq!(host_ifname("c1", "eth0"), "lxcd72e032fedd");
    }
}
