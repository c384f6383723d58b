//! ADD: address from the agent, veth, pod configuration, endpoint; any failure
//! undoes every earlier step.

use ciliate_api::{
    Client, ClientError, DatapathMode, EndpointCreateRequest, IpamAllocateRequest, IpamAllocation,
};
use ciliate_datapath::netlink::{format_mac, Netlink};
use serde_json::Value;

use crate::conf::{Env, NetConf};
use crate::error::{chain, code, CniError, CniResult};
use crate::result::{CniOutput, Interface, IpConfig, RouteEntry};
use crate::veth::{self, Veth};
use crate::{info, warn};

pub fn run(env: &Env, conf: &NetConf) -> CniResult<Value> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let netns_path = env.require_netns()?;
    let prev = conf.prev_result()?;
    // Checked first: a missing namespace is "container unknown" (code 3).
    veth::open_netns(netns_path)?;
    let host_name = veth::host_ifname(container_id, ifname);

    let host_nl = Netlink::new().map_err(|e| CniError::io("opening netlink", &e))?;
    let existing = host_nl
        .link_by_name(&host_name)
        .map_err(|e| CniError::io(&format!("looking up {host_name}"), &e))?;
    if existing.is_some() {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!(
                "host device {host_name} of container {container_id} interface {ifname} exists already: \
                 the previous attachment was not removed (run DEL first)"
            ),
        ));
    }
    if veth::pod_has(netns_path, ifname)? {
        return Err(CniError::new(
            code::ALREADY_EXISTS,
            format!(
                "interface {ifname} exists already in {}: CNI_IFNAME must name a new interface",
                netns_path.display()
            ),
        ));
    }

    let client = Client::new(&conf.socket_path);
    let owner = env.args.pod().unwrap_or_else(|| container_id.to_string());
    let request = IpamAllocateRequest {
        owner: owner.clone(),
        container_id: Some(container_id.to_string()),
    };
    let alloc: IpamAllocation = client
        .post("/v1/ipam", &request)
        .map_err(|e| CniError::agent(&format!("allocating an address for {owner}"), &e))?;
    info!(
        "allocated {} from {} (router {}, mtu {})",
        alloc.ip, alloc.cidr, alloc.router, alloc.mtu
    );

    let mut undo = Undo {
        client: &client,
        host_nl: &host_nl,
        container_id,
        ip: Some(alloc.ip),
        host_name: None,
        endpoint: false,
    };
    let attached = (|| {
        check_allocation(&alloc)?;
        undo.host_name = Some(host_name.clone());
        let veth = match alloc.datapath_mode {
            DatapathMode::Veth => veth::setup(&host_nl, netns_path, &host_name, ifname, &alloc)?,
            other @ (DatapathMode::Ipvlan | DatapathMode::Netkit) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("the agent's datapathMode {other}: not implemented yet by this plugin"),
                ))
            }
        };
        info!(
            "created {} (index {}) and {ifname} in {}",
            veth.host.name,
            veth.host.index,
            netns_path.display()
        );
        let request = endpoint_request(env, container_id, ifname, &veth, &alloc)?;
        let endpoint: ciliate_api::Endpoint = match client.post("/v1/endpoint", &request) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                // An error answer means the agent created nothing; a lost
                // answer (timeout, closed connection) may hide an endpoint.
                undo.endpoint = e.status().is_none();
                return Err(CniError::agent(
                    &format!("registering the endpoint of {owner} with the agent"),
                    &e,
                ));
            }
        };
        undo.endpoint = true;
        info!(
            "endpoint {} ready: {} on {}",
            endpoint.id, endpoint.ip, endpoint.host_ifname
        );
        Ok(build_result(
            prev,
            conf,
            ifname,
            &veth,
            &alloc,
            netns_path.display().to_string(),
        ))
    })();
    attached.map_err(|e| undo.run(e))
}

/// An allocation we can configure; the agent is trusted, but a bad answer
/// must not turn into a half-configured pod.
fn check_allocation(alloc: &IpamAllocation) -> CniResult<()> {
    let problem = if !alloc.cidr.contains(&alloc.ip) {
        Some(format!(
            "address {} is outside its PodCIDR {}",
            alloc.ip, alloc.cidr
        ))
    } else if alloc.ip == alloc.router {
        Some(format!("address {} is the router's", alloc.ip))
    } else if !(68..=65535).contains(&alloc.mtu) {
        Some(format!("MTU {} is outside 68-65535", alloc.mtu))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(CniError::new(
            code::AGENT_REFUSED,
            format!("the agent's allocation is unusable: {p}"),
        )),
    }
}

fn endpoint_request(
    env: &Env,
    container_id: &str,
    ifname: &str,
    veth: &Veth,
    alloc: &IpamAllocation,
) -> CniResult<EndpointCreateRequest> {
    let mac = |link: &ciliate_datapath::netlink::Link| {
        link.mac
            .map(format_mac)
            .ok_or_else(|| CniError::new(code::IO, format!("{} has no MAC address", link.name)))
    };
    Ok(EndpointCreateRequest {
        container_id: container_id.to_string(),
        netns: env.netns.clone().unwrap_or_default(),
        ifname: ifname.to_string(),
        host_ifname: veth.host.name.clone(),
        host_ifindex: veth.host.index,
        ip: alloc.ip,
        mac: mac(&veth.pod)?,
        host_mac: mac(&veth.host)?,
        pod_namespace: env.args.pod_namespace.clone(),
        pod_name: env.args.pod_name.clone(),
        health: false,
        datapath_mode: alloc.datapath_mode,
    })
}

/// The previous plugin's result, if any, with our interfaces, address and route appended.
fn build_result(
    prev: Option<CniOutput>,
    conf: &NetConf,
    ifname: &str,
    veth: &Veth,
    alloc: &IpamAllocation,
    sandbox: String,
) -> Value {
    let mut out = prev.unwrap_or_default();
    let pod_index = out.interfaces.len() + 1;
    out.interfaces.push(Interface {
        name: veth.host.name.clone(),
        mac: veth.host.mac.map(format_mac),
        ..Interface::default()
    });
    out.interfaces.push(Interface {
        name: ifname.to_string(),
        mac: veth.pod.mac.map(format_mac),
        sandbox: Some(sandbox),
        ..Interface::default()
    });
    out.ips.push(IpConfig {
        address: format!("{}/32", alloc.ip),
        gateway: Some(alloc.router.to_string()),
        interface: Some(pod_index),
        ..IpConfig::default()
    });
    out.routes.push(RouteEntry {
        dst: "0.0.0.0/0".to_string(),
        gw: Some(alloc.router.to_string()),
        ..RouteEntry::default()
    });
    out.for_version(&conf.cni_version).to_json()
}

/// What ADD has done so far, to be undone in reverse order on failure.
struct Undo<'a> {
    client: &'a Client,
    host_nl: &'a Netlink,
    container_id: &'a str,
    ip: Option<std::net::Ipv4Addr>,
    host_name: Option<String>,
    /// The endpoint create was sent (it may have succeeded even if the answer was lost).
    endpoint: bool,
}

impl Undo<'_> {
    /// Deletes the container's endpoint, but only if it is the one this ADD
    /// made (same address and device): never another attachment's.
    fn delete_endpoint(&self) -> Result<(), ClientError> {
        let uri = format!("/v1/endpoint/container-id:{}", self.container_id);
        let ep: ciliate_api::Endpoint = match self.client.get(&uri) {
            Ok(ep) => ep,
            Err(e) if e.status() == Some(404) => return Ok(()),
            Err(e) => return Err(e),
        };
        if Some(ep.ip) != self.ip || Some(&ep.host_ifname) != self.host_name.as_ref() {
            return Ok(());
        }
        ignore_404(self.client.delete(&format!("/v1/endpoint/{}", ep.id)))?;
        info!("undo: deleted endpoint {}", ep.id);
        Ok(())
    }

    fn run(self, error: CniError) -> CniError {
        warn!("ADD failed, undoing: {error}");
        let mut problems = Vec::new();
        if self.endpoint {
            if let Err(e) = self.delete_endpoint() {
                problems.push(format!("deleting the endpoint: {}", chain(&e)));
            }
        }
        if let Some(name) = &self.host_name {
            match self.host_nl.del_link_by_name(name) {
                Ok(true) => info!("undo: deleted {name}"),
                Ok(false) => {}
                Err(e) => problems.push(format!("deleting {name}: {}", chain(&e))),
            }
        }
        if let Some(ip) = self.ip {
            // After a deleted endpoint the agent has released it already: 404.
            match ignore_404(self.client.delete(&format!("/v1/ipam/{ip}"))) {
                Ok(()) => info!("undo: released {ip}"),
                Err(e) => problems.push(format!("releasing {ip}: {}", chain(&e))),
            }
        }
        if problems.is_empty() {
            error.note("everything done before the failure was undone")
        } else {
            warn!("undo incomplete: {}", problems.join("; "));
            error.note(&format!(
                "undoing the earlier steps failed too: {}",
                problems.join("; ")
            ))
        }
    }
}

pub(crate) fn ignore_404(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(e) if e.status() == Some(404) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc() -> IpamAllocation {
        IpamAllocation {
            ip: "10.201.0.5".parse().unwrap(),
            cidr: "10.201.0.0/24".parse().unwrap(),
            router: "10.201.0.1".parse().unwrap(),
            mtu: 1500,
            owner: "default/web".into(),
            datapath_mode: DatapathMode::Veth,
            ipvlan_master: None,
        }
    }

    #[test]
    fn allocations_are_checked() {
        assert!(check_allocation(&alloc()).is_ok());
        let outside = IpamAllocation {
            ip: "10.9.0.5".parse().unwrap(),
            ..alloc()
        };
        assert!(check_allocation(&outside)
            .unwrap_err()
            .msg
            .contains("outside its PodCIDR 10.201.0.0/24"));
        let mtu = IpamAllocation { mtu: 10, ..alloc() };
        assert!(check_allocation(&mtu).unwrap_err().msg.contains("MTU 10"));
    }

    #[test]
    fn results_append_to_a_previous_result() {
        use ciliate_datapath::netlink::Link;
        let link = |index, name: &str, mac| Link {
            index,
            name: name.into(),
            mac: Some(mac),
            mtu: 1500,
            up: true,
            lower_up: true,
            kind: Some("veth".into()),
            link: None,
        };
        let veth = Veth {
            host: link(7, "lxc0123456789a", [2, 0, 0, 0, 0, 1]),
            pod: link(2, "eth0", [2, 0, 0, 0, 0, 2]),
        };
        let conf =
            NetConf::parse(br#"{"cniVersion":"0.4.0","name":"n","type":"ciliate"}"#).unwrap();
        let prev: CniOutput = serde_json::from_value(serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "net1", "sandbox": "/run/netns/p"}],
            "ips": [{"version": "4", "address": "192.168.1.2/24", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]}
        }))
        .unwrap();
        let out = build_result(
            Some(prev),
            &conf,
            "eth0",
            &veth,
            &alloc(),
            "/run/netns/p".into(),
        );
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(
            out["interfaces"][1],
            serde_json::json!({"name": "lxc0123456789a", "mac": "02:00:00:00:00:01"})
        );
        assert_eq!(
            out["interfaces"][2],
            serde_json::json!({"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p"})
        );
        assert_eq!(
            out["ips"][1],
            serde_json::json!({"version": "4", "address": "10.201.0.5/32", "gateway": "10.201.0.1", "interface": 2})
        );
        assert_eq!(out["ips"][0]["address"], "192.168.1.2/24");
        assert_eq!(
            out["routes"],
            serde_json::json!([{"dst": "0.0.0.0/0", "gw": "10.201.0.1"}])
        );
        assert_eq!(out["dns"]["nameservers"][0], "10.96.0.10");
    }
}
