//! ADD: address from the agent, the pod's interface (a veth, or an ipvlan
//! slave: the agent's datapathMode says), pod configuration, endpoint; any
//! failure undoes every earlier step.

use ciliate_api::{
    add_lock, Client, ClientError, DatapathMode, EndpointCreateRequest, IpamAllocateRequest,
    IpamAllocation,
};
use ciliate_datapath::netlink::{format_mac, Link, Netlink};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::conf::{Env, NetConf};
use crate::error::{chain, code, CniError, CniResult};
use crate::netkit;
use crate::result::{CniOutput, Interface, IpConfig, RouteEntry};
use crate::veth::{self, Veth};
use crate::{fault, info, ipvlan, warn};

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
    // Marks this ADD in flight until the process ends, however it ends:
    // reclaiming addresses no endpoint uses (DEL, GC, the agent's start)
    // spares the one it is about to allocate.
    let _in_flight = match add_lock::AddLock::hold(&conf.socket_path, container_id) {
        Ok(lock) => Some(lock),
        Err(e) => {
            warn!(
                "cannot mark the ADD in flight under {}: {e}; a concurrent GC may reclaim its address",
                add_lock::dir(&conf.socket_path).display()
            );
            None
        }
    };
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
    fault::at("add-after-allocate");

    let mut undo = Undo {
        client: &client,
        host_nl: &host_nl,
        container_id,
        ip: Some(alloc.ip),
        host_name: None,
        pod_interface: None,
        endpoint: false,
    };
    let attached = (|| {
        check_allocation(&alloc)?;
        undo.host_name = Some(host_name.clone());
        let made = match alloc.datapath_mode {
            DatapathMode::Veth | DatapathMode::Netkit => {
                let pair = if alloc.datapath_mode == DatapathMode::Netkit {
                    netkit::setup(&host_nl, netns_path, &host_name, ifname, &alloc)?
                } else {
                    veth::setup(&host_nl, netns_path, &host_name, ifname, &alloc)?
                };
                info!(
                    "created {} (index {}) and {ifname} in {}",
                    pair.host.name,
                    pair.host.index,
                    netns_path.display()
                );
                Made::pair(pair, alloc.router)
            }
            DatapathMode::Ipvlan => {
                undo.pod_interface = Some((netns_path, ifname));
                let made = ipvlan::setup(&host_nl, netns_path, &host_name, ifname, &alloc)?;
                info!(
                    "created {ifname} (ipvlan L3 on {}) in {}",
                    made.master.name,
                    netns_path.display()
                );
                Made::ipvlan(made)
            }
        };
        fault::at("add-after-device");
        let request = endpoint_request(env, container_id, ifname, &made, &alloc)?;
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
            &made,
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

/// What ADD made for the pod, whatever its kind.
struct Made {
    /// The node-side device (`lxc...`); none for ipvlan.
    host: Option<Link>,
    pod: Link,
    /// The node-side MAC: the host device's, or the ipvlan master's.
    host_mac: Option<[u8; 6]>,
    /// The pod's default gateway; none for ipvlan, routed through its device.
    gateway: Option<Ipv4Addr>,
}

impl Made {
    fn pair(veth: Veth, router: Ipv4Addr) -> Self {
        Self {
            host_mac: veth.host.mac,
            host: Some(veth.host),
            pod: veth.pod,
            gateway: Some(router),
        }
    }

    fn ipvlan(made: ipvlan::IpvlanPod) -> Self {
        Self {
            host: None,
            pod: made.pod,
            host_mac: made.master.mac,
            gateway: None,
        }
    }
}

fn endpoint_request(
    env: &Env,
    container_id: &str,
    ifname: &str,
    made: &Made,
    alloc: &IpamAllocation,
) -> CniResult<EndpointCreateRequest> {
    let mac = |mac: Option<[u8; 6]>, name: &str| {
        mac.map(format_mac)
            .ok_or_else(|| CniError::new(code::IO, format!("{name} has no MAC address")))
    };
    let host_name = made.host.as_ref().map(|h| h.name.as_str());
    Ok(EndpointCreateRequest {
        container_id: container_id.to_string(),
        netns: env.netns.clone().unwrap_or_default(),
        ifname: ifname.to_string(),
        host_ifname: host_name.unwrap_or_default().to_string(),
        host_ifindex: made.host.as_ref().map_or(0, |h| h.index),
        ip: alloc.ip,
        mac: mac(made.pod.mac, &made.pod.name)?,
        host_mac: mac(made.host_mac, host_name.unwrap_or("the ipvlan master"))?,
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
    made: &Made,
    alloc: &IpamAllocation,
    sandbox: String,
) -> Value {
    let mut out = prev.unwrap_or_default();
    if let Some(host) = &made.host {
        out.interfaces.push(Interface {
            name: host.name.clone(),
            mac: host.mac.map(format_mac),
            ..Interface::default()
        });
    }
    let pod_index = out.interfaces.len();
    out.interfaces.push(Interface {
        name: ifname.to_string(),
        mac: made.pod.mac.map(format_mac),
        sandbox: Some(sandbox),
        ..Interface::default()
    });
    let gateway = made.gateway.map(|g| g.to_string());
    out.ips.push(IpConfig {
        address: format!("{}/32", alloc.ip),
        gateway: gateway.clone(),
        interface: Some(pod_index),
        ..IpConfig::default()
    });
    out.routes.push(RouteEntry {
        dst: "0.0.0.0/0".to_string(),
        gw: gateway,
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
    /// ipvlan: the pod's interface (namespace, name), which no node-side
    /// device takes along when deleted.
    pod_interface: Option<(&'a Path, &'a str)>,
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
        let ours = match self.pod_interface {
            Some((netns, ifname)) => {
                ep.host_ifname.is_empty() && ep.ifname == ifname && Path::new(&ep.netns) == netns
            }
            None => Some(&ep.host_ifname) == self.host_name.as_ref(),
        };
        if Some(ep.ip) != self.ip || !ours {
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
        if let Some((netns, ifname)) = self.pod_interface {
            match ipvlan::teardown(netns, ifname) {
                Ok(true) => info!("undo: deleted {ifname} in {}", netns.display()),
                Ok(false) => {}
                Err(e) => problems.push(format!("deleting {ifname}: {e}")),
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
            // Only while it is still this container's: an agent restarted
            // meanwhile may have reclaimed it and handed it to another.
            let uri = format!("/v1/ipam/{ip}?containerId={}", self.container_id);
            match ignore_404(self.client.delete(&uri)) {
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
            running: true,
            kind: Some("veth".into()),
            link: None,
        };
        let veth = Veth {
            host: link(7, "lxc0123456789a", [2, 0, 0, 0, 0, 1]),
            pod: link(2, "eth0", [2, 0, 0, 0, 0, 2]),
        };
        let made = Made::pair(veth, alloc().router);
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
            &made,
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

    #[test]
    fn an_ipvlan_result_has_the_pod_interface_only_and_no_gateway() {
        use ciliate_datapath::netlink::Link;
        let link = |index, name: &str, kind: Option<&str>| Link {
            index,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, 9]),
            mtu: 1500,
            up: true,
            lower_up: true,
            running: true,
            kind: kind.map(Into::into),
            link: None,
        };
        let made = Made::ipvlan(ipvlan::IpvlanPod {
            pod: link(5, "eth0", Some("ipvlan")),
            master: link(2, "ens3", None),
        });
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"ciliate"}"#).unwrap();
        let out = build_result(None, &conf, "eth0", &made, &alloc(), "/run/netns/p".into());
        assert_eq!(
            out["interfaces"],
            serde_json::json!([{"name": "eth0", "mac": "02:00:00:00:00:09", "sandbox": "/run/netns/p"}])
        );
        assert_eq!(
            out["ips"],
            serde_json::json!([{"address": "10.201.0.5/32", "interface": 0}])
        );
        assert_eq!(out["routes"], serde_json::json!([{"dst": "0.0.0.0/0"}]));
        let env = Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".to_string()),
            "CNI_NETNS" => Some("/run/netns/p".to_string()),
            _ => None,
        })
        .unwrap();
        let req = endpoint_request(&env, "c1", "eth0", &made, &alloc()).unwrap();
        assert_eq!((req.host_ifname.as_str(), req.host_ifindex), ("", 0));
        assert_eq!(req.host_mac, "02:00:00:00:00:09", "the master's MAC");
    }
}
