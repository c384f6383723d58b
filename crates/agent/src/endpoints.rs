//! The endpoint registry and the one place that programs the datapath for an
//! endpoint: attach the lxc programs (TCX on a veth's host end, the policy of
//! a netkit pair), write the endpoint map entry, route the pod's address to
//! its device. Creation is all-or-nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ciliate_api::{DatapathMode, Endpoint, EndpointCreateRequest, EndpointState};
use ciliate_datapath::loader::{Datapath, Maps, LXC_ATTACH, NETKIT_ATTACH};
use ciliate_datapath::maps::{EndpointInfo, EndpointKey, ENDPOINT_F_HEALTH, ENDPOINT_F_NETKIT};
use ciliate_datapath::netlink::{self, Netlink, Route};
use ciliate_datapath::sysctl;
use ipnet::Ipv4Net;

use crate::error::AgentError;

/// Endpoint ids are 1..=MAX_ENDPOINT_ID, as Cilium's.
pub const MAX_ENDPOINT_ID: u16 = 4095;

/// How a request names an endpoint: `42` or `container-id:abc`.
pub enum EndpointRef {
    Id(u16),
    ContainerId(String),
}

impl EndpointRef {
    pub fn parse(text: &str) -> Result<Self, AgentError> {
        if let Some(cid) = text.strip_prefix("container-id:") {
            if cid.is_empty() {
                return Err(AgentError::BadRequest(
                    "endpoint reference container-id: needs an id".into(),
                ));
            }
            return Ok(Self::ContainerId(cid.to_string()));
        }
        text.parse().map(Self::Id).map_err(|_| {
            AgentError::BadRequest(format!(
                "endpoint reference {text:?} is invalid: use a numeric id (1-{MAX_ENDPOINT_ID}) or container-id:<id>"
            ))
        })
    }
}

#[derive(Default)]
pub struct Registry {
    endpoints: BTreeMap<u16, Endpoint>,
}

impl Registry {
    pub fn from_map(endpoints: BTreeMap<u16, Endpoint>) -> Self {
        Self { endpoints }
    }

    pub fn all(&self) -> &BTreeMap<u16, Endpoint> {
        &self.endpoints
    }

    pub fn find(&self, r: &EndpointRef) -> Option<&Endpoint> {
        match r {
            EndpointRef::Id(id) => self.endpoints.get(id),
            EndpointRef::ContainerId(cid) => {
                self.endpoints.values().find(|e| &e.container_id == cid)
            }
        }
    }

    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.ip == ip)
    }

    fn free_id(&self) -> Option<u16> {
        (1..=MAX_ENDPOINT_ID).find(|id| !self.endpoints.contains_key(id))
    }

    pub fn insert(&mut self, ep: Endpoint) {
        self.endpoints.insert(ep.id, ep);
    }

    pub fn remove(&mut self, id: u16) -> Option<Endpoint> {
        self.endpoints.remove(&id)
    }

    pub fn set_state(&mut self, id: u16, state: EndpointState) {
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.state = state;
        }
    }

    /// Builds the endpoint a request describes, with a fresh id.
    pub fn new_endpoint(&self, req: &EndpointCreateRequest) -> Result<Endpoint, AgentError> {
        let id = self.free_id().ok_or_else(|| {
            AgentError::Conflict(format!("all {MAX_ENDPOINT_ID} endpoint ids are in use"))
        })?;
        Ok(Endpoint {
            id,
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            host_ifname: req.host_ifname.clone(),
            host_ifindex: req.host_ifindex,
            ip: req.ip,
            mac: req.mac.to_lowercase(),
            host_mac: req.host_mac.to_lowercase(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            health: req.health,
            state: EndpointState::Ready,
            datapath_mode: req.datapath_mode,
        })
    }
}

/// Checks a create request on its own terms (not against the registry).
pub fn validate_request(req: &EndpointCreateRequest) -> Result<(), AgentError> {
    if req.datapath_mode == ciliate_api::DatapathMode::Ipvlan {
        return crate::ipvlan::validate_request(req);
    }
    let bad = |field: &str, value: &str, allowed: &str| {
        Err(AgentError::BadRequest(format!(
            "field {field}: value {value:?} is invalid: {allowed}"
        )))
    };
    if req.container_id.is_empty() {
        return bad("containerId", "", "must not be empty");
    }
    if req.host_ifname.is_empty() || req.host_ifname.len() > 15 {
        return bad(
            "hostIfname",
            &req.host_ifname,
            "a device name of 1-15 characters",
        );
    }
    if req.host_ifindex == 0 {
        return bad("hostIfindex", "0", "the ifindex of the host-side device");
    }
    for (field, mac) in [("mac", &req.mac), ("hostMac", &req.host_mac)] {
        if netlink::parse_mac(mac).is_err() {
            return bad(field, mac, "a MAC address like 0a:1b:2c:3d:4e:5f");
        }
    }
    Ok(())
}

/// The endpoint map entry of an endpoint.
pub fn map_entry(ep: &Endpoint) -> (EndpointKey, EndpointInfo) {
    let mut flags = 0;
    if ep.health {
        flags |= ENDPOINT_F_HEALTH;
    }
    // from_container must not use bpf_redirect_peer from a netkit peer.
    if ep.datapath_mode == DatapathMode::Netkit {
        flags |= ENDPOINT_F_NETKIT;
    }
    let info = EndpointInfo {
        ifindex: ep.host_ifindex,
        lxc_id: ep.id,
        flags,
        mac: netlink::parse_mac(&ep.mac).unwrap_or_default(),
        node_mac: netlink::parse_mac(&ep.host_mac).unwrap_or_default(),
        sec_identity: 0,
    };
    (EndpointKey::new(ep.ip), info)
}

/// The host route to the pod that agents before the one-attach layout made:
/// `IP/32 dev lxc... src ROUTER scope link`. The node now reaches its pods
/// through the PodCIDR route `dev ciliate_host`, where from_host delivers;
/// this one would bypass it, so a restored endpoint loses it.
pub fn legacy_host_route(ep: &Endpoint, router: Ipv4Addr) -> Route {
    Route {
        dst: Ipv4Net::new(ep.ip, 32).expect("/32 is valid"),
        gateway: None,
        oif: Some(ep.host_ifindex),
        scope_link: true,
        src: Some(router),
        onlink: false,
        mtu: None,
    }
}

/// Programs the kernel for `ep`. On error, undoes what it did.
///
/// `stack_forwards`: iptables masquerading, where the datapath hands pod
/// traffic leaving the node to the stack, which must forward it. A pod's
/// device forwards in any mode (see `isolate_from_kernel_routing`).
pub fn plumb(
    ep: &Endpoint,
    datapath: &mut Datapath,
    maps: &mut Maps,
    nl: &Netlink,
    stack_forwards: bool,
) -> Result<(), AgentError> {
    isolate_from_kernel_routing(&ep.host_ifname, stack_forwards || !ep.health)?;
    let attaching = std::time::Instant::now();
    match ep.datapath_mode {
        // The pair's policy: from_container on the peer; until then the
        // peer drops what the pod sends.
        DatapathMode::Netkit => {
            check_netkit_device(ep, nl)?;
            datapath.attach_netkit(&ep.host_ifname, NETKIT_ATTACH)?;
        }
        _ => datapath.attach(&ep.host_ifname, LXC_ATTACH)?,
    }
    tracing::debug!(device = %ep.host_ifname, took_us = attaching.elapsed().as_micros(), "attached");
    let (key, info) = map_entry(ep);
    if let Err(source) = maps.endpoints.insert(key, info, 0) {
        let _ = datapath.detach(&ep.host_ifname);
        return Err(AgentError::Map {
            context: format!("writing endpoint {} ({}) to the endpoint map", ep.id, ep.ip),
            source,
        });
    }
    Ok(())
}

/// Removes what an agent before the one-attach layout made for `ep` and the
/// current layout must not have: its /32 route through the lxc device.
/// (A `to_container` link goes when the datapath loads the new object.)
pub fn remove_legacy_plumbing(
    ep: &Endpoint,
    router: Ipv4Addr,
    nl: &Netlink,
) -> Result<(), AgentError> {
    match nl.del_route(&legacy_host_route(ep, router)) {
        Ok(()) => {
            tracing::info!(id = ep.id, device = %ep.host_ifname, "removed the endpoint's route of an earlier layout");
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A netkit endpoint's host device must be the primary of a netkit pair:
/// anything else cannot take the programs as its policy.
fn check_netkit_device(ep: &Endpoint, nl: &Netlink) -> Result<(), AgentError> {
    let kind = nl
        .link_by_index(ep.host_ifindex)?
        .and_then(|link| link.kind)
        .unwrap_or_default();
    let primary = kind == "netkit"
        && nl
            .netkit_info(ep.host_ifindex)?
            .is_some_and(|info| info.primary);
    if primary {
        return Ok(());
    }
    Err(AgentError::BadRequest(format!(
        "field datapathMode: value \"netkit\" is invalid for device {} ({}): a netkit endpoint's hostIfname must be the primary of a netkit pair",
        ep.host_ifname,
        if kind.is_empty() { "no link kind" } else { kind.as_str() }
    )))
}

/// The kernel must not carry pod traffic: only the BPF programs do. With
/// forwarding off on the lxc device the stack delivers what a pod sends to
/// the node itself but never routes it on, and with `arp_ignore=1` the node
/// does not answer the pod's ARP (the lxc device has no address); so without
/// our programs a pod reaches nothing, and with them every path is theirs.
///
/// The exceptions, where the datapath itself passes a pod's packet to the
/// stack to be routed on, so the stack must forward what arrives on the
/// device: iptables masquerading (`stack_forwards`: netfilter's POSTROUTING
/// masquerades traffic leaving the node), and in every mode a pod's replies
/// of connections the stack delivered (a hostPort that netfilter DNATed,
/// e.g. chained portmap), which only netfilter can translate back. The
/// health endpoint has no such connections and keeps forwarding off. Without
/// our programs such a pod still reaches nothing: `arp_ignore=1` leaves its
/// gateway unresolved, and the datapath passes to the stack only replies of
/// connections `from_host` recorded and what the FIB cannot forward.
///
/// `rp_filter=0`: the node routes the pod's address through `ciliate_host`,
/// not through this device, so strict reverse-path filtering would drop what
/// the pod sends to the node itself.
fn isolate_from_kernel_routing(device: &str, stack_forwards: bool) -> Result<(), AgentError> {
    let forwarding = if stack_forwards { "1" } else { "0" };
    for (key, value) in [
        ("forwarding", forwarding),
        ("arp_ignore", "1"),
        ("rp_filter", "0"),
    ] {
        sysctl::set(&format!("net/ipv4/conf/{device}/{key}"), value)?;
    }
    Ok(())
}

/// Removes what `plumb` made. Missing pieces are fine: a deleted device takes
/// its links with it.
pub fn unplumb(ep: &Endpoint, datapath: &Datapath, maps: &mut Maps) -> Result<(), AgentError> {
    remove_map_entry(ep, maps)?;
    datapath.detach(&ep.host_ifname)?;
    Ok(())
}

/// Removes the endpoint's entry from the endpoint map; one already gone is fine.
pub fn remove_map_entry(ep: &Endpoint, maps: &mut Maps) -> Result<(), AgentError> {
    match maps.endpoints.remove(&EndpointKey::new(ep.ip)) {
        Ok(()) => Ok(()),
        Err(e) if crate::error::is_not_found(&e) => Ok(()),
        Err(source) => Err(AgentError::Map {
            context: format!("removing {} from the endpoint map", ep.ip),
            source,
        }),
    }
}
