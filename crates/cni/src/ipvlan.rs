//! The pod's interface in ipvlan mode (the agent's `datapathMode: ipvlan`):
//! an ipvlan L3 slave of the node's master device, which the agent names in
//! the allocation. It is made in the node's namespace under the attachment's
//! `lxc<hash>` name (a leftover there is found by the next ADD and removed by
//! DEL like a veth's host end), moved into the pod's namespace, renamed
//! `CNI_IFNAME`, given the address as a /32 and the default route through
//! it: no gateway, since an L3 slave has no ARP and its driver routes. There
//! is no device on the node's side; the slave shares the master's MAC.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use ciliate_api::IpamAllocation;
use ciliate_datapath::netlink::{Link, Netlink, Route};
use ciliate_datapath::{netns, sysctl};

use crate::error::{code, CniError, CniResult};
use crate::veth::{open_netns, DEFAULT_ROUTE};

/// The interface kind the kernel reports for the slave.
pub const KIND: &str = "ipvlan";

/// The slave as it ended up in the pod, and its master in the node.
#[derive(Debug)]
pub struct IpvlanPod {
    pub pod: Link,
    pub master: Link,
}

/// The default route an ipvlan pod has: through its interface, no gateway.
pub fn default_route(index: u32) -> Route {
    Route::link_scope(DEFAULT_ROUTE, index)
}

/// Makes the pod's interface. On failure nothing is left, in either namespace.
pub fn setup(
    host_nl: &Netlink,
    netns_path: &Path,
    tmp_name: &str,
    ifname: &str,
    alloc: &IpamAllocation,
) -> CniResult<IpvlanPod> {
    let master_name = alloc.ipvlan_master.as_deref().ok_or_else(|| {
        CniError::new(
            code::AGENT_REFUSED,
            "the agent's allocation says datapathMode ipvlan but names no master device (ipvlanMaster)",
        )
    })?;
    let master = host_nl
        .link_by_name(master_name)
        .map_err(|e| CniError::io(&format!("looking up the ipvlan master {master_name}"), &e))?
        .ok_or_else(|| {
            CniError::new(
                code::AGENT_REFUSED,
                format!(
                    "the ipvlan master device {master_name} the agent named does not exist in the plugin's network namespace"
                ),
            )
        })?;
    let netns_file = open_netns(netns_path)?;
    let slave = host_nl
        .create_ipvlan_l3(tmp_name, master.index, Some(alloc.mtu))
        .map_err(|e| {
            CniError::io(
                &format!("creating ipvlan L3 device {tmp_name} on {master_name}"),
                &e,
            )
        })?;
    if let Err(e) = host_nl.set_netns(slave.index, netns_file.as_fd()) {
        let _ = host_nl.del_link(slave.index);
        return Err(CniError::io(
            &format!("moving {tmp_name} into {}", netns_path.display()),
            &e,
        ));
    }
    match configure_pod(netns_path, tmp_name, ifname, alloc.ip) {
        Ok(pod) => Ok(IpvlanPod { pod, master }),
        Err(e) => {
            // Under whichever name it has by now.
            for name in [ifname, tmp_name] {
                let _ = delete_in(netns_path, name);
            }
            Err(e)
        }
    }
}

/// Inside the pod: rename, no IPv6, address, up, `lo` up, default route.
/// On a thread of its own in the pod's namespace.
fn configure_pod(netns_path: &Path, tmp_name: &str, ifname: &str, ip: Ipv4Addr) -> CniResult<Link> {
    let in_pod = {
        let path = netns_path.display().to_string();
        move |what: &str| format!("{what} in {path}")
    };
    let (tmp_name, ifname) = (tmp_name.to_string(), ifname.to_string());
    let step = in_pod.clone();
    netns::run_in(netns_path, move || -> CniResult<Link> {
        let nl_err = |what: String| {
            let what = in_pod(&what);
            move |e: ciliate_datapath::netlink::NetlinkError| CniError::io(&what, &e)
        };
        let nl = Netlink::new().map_err(nl_err("opening netlink".into()))?;
        let link = nl
            .link_by_name(&tmp_name)
            .map_err(nl_err(format!("looking up {tmp_name}")))?
            .ok_or_else(|| CniError::new(code::IO, in_pod(&format!("{tmp_name} vanished"))))?;
        nl.set_name(link.index, &ifname)
            .map_err(nl_err(format!("renaming {tmp_name} to {ifname}")))?;
        sysctl::set_if_exists(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")
            .map_err(|e| CniError::io(&in_pod(&format!("disabling IPv6 on {ifname}")), &e))?;
        nl.add_address(link.index, ip, 32)
            .map_err(nl_err(format!("adding {ip}/32 to {ifname}")))?;
        nl.set_up(link.index)
            .map_err(nl_err(format!("setting {ifname} up")))?;
        if let Some(lo) = nl
            .link_by_name("lo")
            .map_err(nl_err("looking up lo".into()))?
        {
            nl.set_up(lo.index)
                .map_err(nl_err("setting lo up".into()))?;
        }
        nl.add_route(&default_route(link.index))
            .map_err(nl_err(format!("adding the default route through {ifname}")))?;
        nl.link_by_index(link.index)
            .map_err(nl_err(format!("reading {ifname} back")))?
            .ok_or_else(|| CniError::new(code::IO, in_pod(&format!("{ifname} vanished"))))
    })
    .map_err(|e| CniError::io(&step("entering the namespace"), &e))?
}

/// Deletes the pod's interface `ifname` if it is an ipvlan slave; `false`
/// when there is none (or the namespace is gone: DEL must not fail then).
pub fn teardown(netns_path: &Path, ifname: &str) -> CniResult<bool> {
    if !netns_path.exists() {
        return Ok(false);
    }
    delete_in(netns_path, ifname)
}

fn delete_in(netns_path: &Path, ifname: &str) -> CniResult<bool> {
    let context = format!("deleting {ifname} in {}", netns_path.display());
    let nl = match Netlink::new_in(netns_path) {
        Ok(nl) => nl,
        // The namespace went away meanwhile: so did the slave.
        Err(_) if !netns_path.exists() => return Ok(false),
        Err(e) => return Err(CniError::io(&context, &e)),
    };
    match nl
        .link_by_name(ifname)
        .map_err(|e| CniError::io(&context, &e))?
    {
        Some(link) if link.kind.as_deref() == Some(KIND) => {
            nl.del_link(link.index)
                .map_err(|e| CniError::io(&context, &e))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
