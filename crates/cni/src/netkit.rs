//! The pod's netkit pair (`datapathMode: netkit`): the primary `lxc<hash>`
//! stays on the host under the same name a veth's host end has (so DEL
//! finds and deletes it the same way, and the peer goes with it), the peer is
//! `CNI_IFNAME` in the pod. The pair is in L2 mode (the datapath parses
//! Ethernet) and its peer drops everything until the agent attaches
//! `from_container` as its policy, so a pod never sends unfiltered, not even
//! between ADD creating the pair and the agent registering the endpoint.

use std::path::Path;

use ciliate_api::IpamAllocation;
use ciliate_datapath::netlink::{Link, Netlink};
use ciliate_datapath::podnet;

use crate::error::{CniError, CniResult};
use crate::veth::{self, Veth};

/// The netkit policy that drops (`blackhole`).
const POLICY_BLACKHOLE: u32 = 2;

/// Creates the pair with the peer born in the pod namespace under its final
/// name and configures both ends as [`crate::veth::setup`] does a veth. On
/// failure nothing is left.
pub fn setup(
    host_nl: &Netlink,
    netns_path: &Path,
    host_name: &str,
    ifname: &str,
    alloc: &IpamAllocation,
) -> CniResult<Veth> {
    veth::create_pair(
        podnet::create_netkit,
        host_nl,
        netns_path,
        host_name,
        ifname,
        alloc,
    )
}

/// What CHECK finds wrong with a netkit attachment beyond what every
/// attachment is checked for: both ends must be netkit, the host end the
/// primary of an L2 pair whose peer blackholes when no program is attached.
pub fn check(host_nl: &Netlink, host: Option<&Link>, pod: Option<&Link>) -> CniResult<Vec<String>> {
    let mut problems = Vec::new();
    if let Some(pod) = pod.filter(|l| l.kind.as_deref() != Some("netkit")) {
        problems.push(format!(
            "interface {} in the pod is {}, not the peer of a netkit pair (datapathMode netkit)",
            pod.name,
            pod.kind
                .as_deref()
                .unwrap_or("a device without a link kind")
        ));
    }
    let Some(host) = host else {
        return Ok(problems);
    };
    let info = host_nl
        .netkit_info(host.index)
        .map_err(|e| CniError::io(&format!("reading the netkit settings of {}", host.name), &e))?;
    match info {
        None => problems.push(format!(
            "host device {} is {}, not a netkit primary (datapathMode netkit)",
            host.name,
            host.kind
                .as_deref()
                .unwrap_or("a device without a link kind")
        )),
        Some(info) => {
            if !info.primary {
                problems.push(format!(
                    "host device {} is a netkit peer, not the primary",
                    host.name
                ));
            }
            if !info.l2 {
                problems.push(format!(
                    "netkit pair {} is in L3 mode; the datapath needs L2",
                    host.name
                ));
            }
            if info.peer_policy != Some(POLICY_BLACKHOLE) {
                problems.push(format!(
                    "netkit pair {}: the peer's default policy is {:?}, not blackhole (2): without its program the pod would send unfiltered",
                    host.name, info.peer_policy
                ));
            }
        }
    }
    Ok(problems)
}
