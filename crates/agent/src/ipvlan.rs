//! ipvlan endpoints (`datapathMode: ipvlan`): the pod's eth0 is an ipvlan L3
//! slave of the master device, made by the CNI plugin; the node has no device
//! of the pod's. Plumbing one: its endpoint map entry (flagged
//! `ENDPOINT_F_IPVLAN`, with the master's ifindex and MAC: lib/deliver.h
//! delivers to it through the master), its entry program on the slave's TCX
//! egress inside the pod's namespace with its prog array (pinned under
//! `bpf.root/ipvlan/`, see `ciliate_datapath::ipvlan`), and the node's route
//! to it through `ciliate_host` from the node IP: the ipvlan driver routes
//! what the pod sends with a lookup bound to the master, which finds the node
//! IP on the master but not the router IP on `ciliate_host`, so the node must
//! not answer the pod from there. All-or-nothing, like the veth's.

use std::net::Ipv4Addr;
use std::path::Path;

use ciliate_api::{DatapathMode, Endpoint, EndpointCreateRequest};
use ciliate_datapath::loader::{Datapath, Maps};
use ciliate_datapath::maps::{EndpointInfo, EndpointKey, ENDPOINT_F_HEALTH, ENDPOINT_F_IPVLAN};
use ciliate_datapath::netlink::{self, Link, Netlink, Route};
use ipnet::Ipv4Net;

use crate::error::AgentError;

/// The interface kind the kernel reports for a slave.
pub const KIND: &str = "ipvlan";

/// What the node contributes to an ipvlan endpoint.
pub struct NodeSide {
    /// The device the slaves hang off (`ipvlan.masterDevice`).
    pub master: Link,
    /// `ciliate_host`, which the node's route to the pod goes through.
    pub host_ifindex: u32,
    /// The source of the node's packets to the pod: the node IP (or, without
    /// one, the router IP).
    pub src: Ipv4Addr,
}

impl NodeSide {
    /// Looks the master up by name.
    pub fn new(
        nl: &Netlink,
        master: Option<&str>,
        host_ifindex: u32,
        src: Ipv4Addr,
    ) -> Result<Self, AgentError> {
        let name = master.ok_or_else(|| {
            AgentError::Internal(
                "datapathMode ipvlan without a master device (ipvlan.masterDevice or a native device)"
                    .into(),
            )
        })?;
        let master = nl.link_by_name(name)?.ok_or_else(|| {
            AgentError::Internal(format!("the ipvlan master device {name} does not exist"))
        })?;
        Ok(Self {
            master,
            host_ifindex,
            src,
        })
    }
}

/// The checks of a create request for an ipvlan endpoint: no node-side
/// device, and the pod's namespace and interface named (the entry program is
/// attached there).
pub fn validate_request(req: &EndpointCreateRequest) -> Result<(), AgentError> {
    let bad = |field: &str, value: &str, allowed: &str| {
        Err(AgentError::BadRequest(format!(
            "field {field}: value {value:?} is invalid: {allowed}"
        )))
    };
    if req.container_id.is_empty() {
        return bad("containerId", "", "must not be empty");
    }
    if !req.host_ifname.is_empty() {
        return bad(
            "hostIfname",
            &req.host_ifname,
            "empty with datapathMode ipvlan (there is no host-side device)",
        );
    }
    if req.host_ifindex != 0 {
        return bad(
            "hostIfindex",
            &req.host_ifindex.to_string(),
            "0 with datapathMode ipvlan (there is no host-side device)",
        );
    }
    if req.netns.is_empty() || !Path::new(&req.netns).is_absolute() {
        return bad(
            "netns",
            &req.netns,
            "the absolute path of the pod's network namespace",
        );
    }
    if req.ifname.is_empty() || req.ifname.len() > 15 {
        return bad(
            "ifname",
            &req.ifname,
            "the pod's interface name, 1-15 characters",
        );
    }
    if netlink::parse_mac(&req.mac).is_err() {
        return bad("mac", &req.mac, "a MAC address like 0a:1b:2c:3d:4e:5f");
    }
    Ok(())
}

/// The name of the endpoint's pins under `bpf.root/ipvlan/`.
pub fn pin_name(ep: &Endpoint) -> String {
    format!("ep{}", ep.id)
}

/// The endpoint map entry: the master's ifindex and MAC, which the slave shares.
pub fn map_entry(ep: &Endpoint, master: &Link) -> (EndpointKey, EndpointInfo) {
    let mac = master.mac.unwrap_or_default();
    let health = if ep.health { ENDPOINT_F_HEALTH } else { 0 };
    let info = EndpointInfo {
        ifindex: master.index,
        lxc_id: ep.id,
        flags: ENDPOINT_F_IPVLAN | health,
        mac,
        node_mac: mac,
        sec_identity: 0,
    };
    (EndpointKey::new(ep.ip), info)
}

/// The node's route to the pod: `IP/32 dev ciliate_host src SRC scope link`.
pub fn host_route(ep: &Endpoint, node: &NodeSide) -> Route {
    Route {
        dst: Ipv4Net::new(ep.ip, 32).expect("/32 is valid"),
        gateway: None,
        oif: Some(node.host_ifindex),
        scope_link: true,
        src: Some(node.src),
        onlink: false,
        mtu: None,
    }
}

/// Whether the endpoint's slave is still there: its namespace exists and
/// holds its interface as an ipvlan device.
pub fn slave_exists(ep: &Endpoint) -> bool {
    let path = Path::new(&ep.netns);
    if ep.netns.is_empty() || !path.exists() {
        return false;
    }
    Netlink::new_in(path)
        .and_then(|nl| nl.link_by_name(&ep.ifname))
        .is_ok_and(|link| link.is_some_and(|l| l.kind.as_deref() == Some(KIND)))
}

/// Programs the kernel for `ep`. On error, undoes what it did.
pub fn plumb(
    ep: &Endpoint,
    node: &NodeSide,
    datapath: &mut Datapath,
    maps: &mut Maps,
    nl: &Netlink,
) -> Result<(), AgentError> {
    debug_assert_eq!(ep.datapath_mode, DatapathMode::Ipvlan);
    let (key, info) = map_entry(ep, &node.master);
    maps.endpoints
        .insert(key, info, 0)
        .map_err(|source| AgentError::Map {
            context: format!("writing endpoint {} ({}) to the endpoint map", ep.id, ep.ip),
            source,
        })?;
    let undo_map = |maps: &mut Maps| {
        let _ = maps.endpoints.remove(&key);
    };
    // From the first packet on, the pod's traffic passes from_container_ipvlan.
    if let Err(e) = datapath.attach_ipvlan(&pin_name(ep), ep.ip, Path::new(&ep.netns), &ep.ifname) {
        undo_map(maps);
        return Err(e.into());
    }
    if let Err(e) = nl.replace_route(&host_route(ep, node)) {
        let _ = datapath.detach_ipvlan(&pin_name(ep));
        undo_map(maps);
        return Err(e.into());
    }
    Ok(())
}

/// Removes what `plumb` made. Missing pieces are fine. The pod's slave is
/// the plugin's (DEL deletes it, or it goes with the pod's namespace).
pub fn unplumb(
    ep: &Endpoint,
    node: &NodeSide,
    datapath: &Datapath,
    maps: &mut Maps,
    nl: &Netlink,
) -> Result<(), AgentError> {
    crate::endpoints::remove_map_entry(ep, maps)?;
    datapath.detach_ipvlan(&pin_name(ep))?;
    let _ = nl.del_route(&host_route(ep, node));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> EndpointCreateRequest {
        EndpointCreateRequest {
            container_id: "c1".into(),
            netns: "/run/netns/p1".into(),
            ifname: "eth0".into(),
            host_ifname: String::new(),
            host_ifindex: 0,
            ip: "10.0.0.5".parse().unwrap(),
            mac: "02:00:00:00:00:01".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_namespace: None,
            pod_name: None,
            health: false,
            datapath_mode: DatapathMode::Ipvlan,
        }
    }

    #[test]
    fn requests_name_no_host_device_but_the_pods_namespace() {
        assert!(validate_request(&request()).is_ok());
        let cases = [
            (
                EndpointCreateRequest {
                    host_ifname: "lxc1".into(),
                    ..request()
                },
                "field hostIfname: value \"lxc1\"",
            ),
            (
                EndpointCreateRequest {
                    host_ifindex: 7,
                    ..request()
                },
                "field hostIfindex: value \"7\"",
            ),
            (
                EndpointCreateRequest {
                    netns: "p1".into(),
                    ..request()
                },
                "field netns: value \"p1\"",
            ),
            (
                EndpointCreateRequest {
                    ifname: String::new(),
                    ..request()
                },
                "field ifname",
            ),
            (
                EndpointCreateRequest {
                    mac: "nope".into(),
                    ..request()
                },
                "field mac: value \"nope\"",
            ),
        ];
        for (req, expected) in cases {
            let err = validate_request(&req).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn the_map_entry_names_the_master() {
        let ep = crate::endpoints::Registry::default()
            .new_endpoint(&request())
            .unwrap();
        let master = Link {
            index: 3,
            name: "eth1".into(),
            mac: Some([2, 0, 0, 0, 0, 9]),
            mtu: 1500,
            up: true,
            lower_up: true,
            running: true,
            kind: None,
            link: None,
        };
        let (key, info) = map_entry(&ep, &master);
        assert_eq!(key.ip(), ep.ip);
        assert_eq!(
            (info.ifindex, info.flags, info.mac, info.node_mac),
            (3, ENDPOINT_F_IPVLAN, [2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 9])
        );
        assert_eq!(pin_name(&ep), "ep1");
    }
}
