//! The pod's veth: `lxc<hash>` on the host, `CNI_IFNAME` in the pod.

use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;

use ciliate_api::IpamAllocation;
use ciliate_datapath::netlink::{Link, Netlink, Route};
use ciliate_datapath::{netns, podnet};
use sha2::{Digest, Sha256};

use crate::error::{code, CniError, CniResult};

pub use podnet::DEFAULT_ROUTE;

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
pub type Veth = podnet::PodVeth;

/// Creates the pair with the pod end born in the pod namespace under its final
/// name and configures both ends (the same code as the agent's health
/// endpoint). On failure nothing is left.
pub fn setup(
    host_nl: &Netlink,
    netns_path: &Path,
    host_name: &str,
    ifname: &str,
    alloc: &IpamAllocation,
) -> CniResult<Veth> {
    create_pair(
        podnet::create,
        host_nl,
        netns_path,
        host_name,
        ifname,
        alloc,
    )
}

/// What a pod's pair is made with: [`podnet::create`] or [`podnet::create_netkit`].
pub type PairMaker = fn(&Netlink, &podnet::PodNetSpec<'_>) -> Result<Veth, podnet::PodNetError>;

/// Makes and configures the pod's pair with `make`, from the allocation.
pub fn create_pair(
    make: PairMaker,
    host_nl: &Netlink,
    netns_path: &Path,
    host_name: &str,
    ifname: &str,
    alloc: &IpamAllocation,
) -> CniResult<Veth> {
    let spec = podnet::PodNetSpec {
        host_ifname: host_name,
        ifname,
        netns: netns_path,
        ip: alloc.ip,
        router: alloc.router,
        mtu: alloc.mtu,
    };
    make(host_nl, &spec).map_err(|e| CniError::new(code::IO, crate::error::chain(&e)))
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
