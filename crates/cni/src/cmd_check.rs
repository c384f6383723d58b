//! CHECK: the attachment is still what ADD made: host device (none in ipvlan
//! mode; netkit: a netkit pair), pod interface with the address of
//! `prevResult` and its default route, and the agent's endpoint.

use ciliate_api::{Client, DatapathMode, Endpoint};
use ciliate_datapath::netlink::Netlink;

use crate::conf::{Env, NetConf};
use crate::error::{code, CniError, CniResult};
use crate::result::at_least;
use crate::veth::{self, DEFAULT_ROUTE};
use crate::{ipvlan, netkit};

pub fn run(env: &Env, conf: &NetConf) -> CniResult<()> {
    if !at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later; the configuration has {:?}",
                conf.cni_version
            ),
        ));
    }
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let netns_path = env.require_netns()?;
    let prev = conf.prev_result()?.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult is missing: CHECK compares the attachment with the result of ADD",
        )
    })?;
    let sandbox = netns_path.display().to_string();
    let (ip, gateway) = prev.ipv4_for(ifname, &sandbox).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("prevResult has no IPv4 address for interface {ifname} in {sandbox}"),
        )
    })?;
    let host_name = veth::host_ifname(container_id, ifname);
    let mut problems = Vec::new();

    let client = Client::new(&conf.socket_path);
    let endpoint =
        match client.get::<Endpoint>(&format!("/v1/endpoint/container-id:{container_id}")) {
            Ok(ep) => Some(ep),
            Err(e) if e.status() == Some(404) => {
                problems.push(format!(
                    "the agent has no endpoint for container {container_id}"
                ));
                None
            }
            Err(e) => {
                return Err(CniError::agent(
                    &format!("reading the endpoint of container {container_id}"),
                    &e,
                ))
            }
        };
    let pod = veth::inspect_pod(netns_path, ifname)?;
    // The agent's word, else what the pod has.
    let is_ipvlan = match &endpoint {
        Some(ep) => ep.datapath_mode == DatapathMode::Ipvlan,
        None => pod.link.as_ref().and_then(|l| l.kind.as_deref()) == Some(ipvlan::KIND),
    };

    let host_nl = Netlink::new().map_err(|e| CniError::io("opening netlink", &e))?;
    let host = host_nl
        .link_by_name(&host_name)
        .map_err(|e| CniError::io(&format!("looking up {host_name}"), &e))?;
    if !is_ipvlan {
        match &host {
            None => problems.push(format!("host device {host_name} does not exist")),
            Some(link) if !link.up => problems.push(format!("host device {host_name} is down")),
            Some(_) => {}
        }
    }

    match &pod.link {
        None => problems.push(format!("interface {ifname} does not exist in {sandbox}")),
        Some(link) => {
            if !link.up {
                problems.push(format!("interface {ifname} in {sandbox} is down"));
            }
            if is_ipvlan && link.kind.as_deref() != Some(ipvlan::KIND) {
                problems.push(format!(
                    "interface {ifname} in {sandbox} is a {} device, not an ipvlan slave",
                    link.kind.as_deref().unwrap_or("kindless")
                ));
            }
            if !pod.addresses.contains(&(ip, 32)) {
                let has: Vec<_> = pod
                    .addresses
                    .iter()
                    .map(|(a, p)| format!("{a}/{p}"))
                    .collect();
                problems.push(format!(
                    "interface {ifname} in {sandbox} does not have {ip}/32 (it has [{}])",
                    has.join(", ")
                ));
            }
            if is_ipvlan {
                let default = pod.routes.iter().any(|r| {
                    r.dst == DEFAULT_ROUTE && r.gateway.is_none() && r.oif == Some(link.index)
                });
                if !default {
                    problems.push(format!("{sandbox} has no default route dev {ifname}"));
                }
            } else if let Some(gw) = gateway.as_deref().and_then(|g| g.parse().ok()) {
                let default = pod.routes.iter().any(|r| {
                    r.dst == DEFAULT_ROUTE && r.gateway == Some(gw) && r.oif == Some(link.index)
                });
                if !default {
                    problems.push(format!(
                        "{sandbox} has no default route via {gw} dev {ifname}"
                    ));
                }
            }
        }
    }

    if let Some(ep) = endpoint {
        if ep.ip != ip {
            problems.push(format!(
                "the agent's endpoint {} has address {}, prevResult says {ip}",
                ep.id, ep.ip
            ));
        }
        let expected = if is_ipvlan { "" } else { host_name.as_str() };
        if ep.host_ifname != expected {
            problems.push(format!(
                "the agent's endpoint {} is on {:?}, expected {expected:?}",
                ep.id, ep.host_ifname
            ));
        }
        if ep.datapath_mode == DatapathMode::Netkit {
            problems.extend(netkit::check(&host_nl, host.as_ref(), pod.link.as_ref())?);
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "container {container_id} interface {ifname}: {}",
                problems.join("; ")
            ),
        ))
    }
}
