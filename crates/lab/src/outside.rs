//! The outside world of the lab as pods see it: which source address the
//! router should see for a pod's packet (masqueraded to its node's IP or
//! not, from what the node's agent reports), and the router's HTTP answer.

use std::net::Ipv4Addr;

use ciliate_api::{IpMasqState, Status};
use ipnet::Ipv4Net;

use crate::lab::Lab;
use crate::state::PodInfo;

/// What the router should see as the source of a pod's packet, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedSource {
    pub source: Ipv4Addr,
    /// Whether that is the node's IP (masqueraded).
    pub masqueraded: bool,
    /// Why, for messages: `masqueraded (BPF)`, `in nonMasqueradeCIDRs (configmap ...)`.
    pub why: String,
}

/// The source the router sees for `pod`'s packets to `dest`, from its
/// node's agent: `GET /v1/status` (masquerading on, its mode, the native
/// routing CIDR) and, with ip-masq-agent, `GET /v1/ipmasq` (the list in force).
pub fn expected_source(lab: &Lab, pod: &PodInfo, dest: Ipv4Addr) -> Result<ExpectedSource, String> {
    let node = lab.node(&pod.node).map_err(|e| e.to_string())?;
    let client = ciliate_api::Client::new(&node.socket);
    let status: Status = client
        .get("/v1/status")
        .map_err(|e| format!("{}: GET /v1/status: {e}", node.name))?;
    let m = &status.masquerading;
    let own = |why: String| ExpectedSource {
        source: pod.ip,
        masqueraded: false,
        why,
    };
    if !m.enabled {
        return Ok(own(format!("{}: enableIPv4Masquerade is off", node.name)));
    }
    if let Some(cidr) = m
        .snat_exclusion_cidr
        .as_deref()
        .and_then(|c| c.parse::<Ipv4Net>().ok())
        .filter(|c| c.contains(&dest))
    {
        return Ok(own(format!("{dest} is in ipv4NativeRoutingCIDR {cidr}")));
    }
    if m.ip_masq_agent {
        let state: IpMasqState = client
            .get("/v1/ipmasq")
            .map_err(|e| format!("{}: GET /v1/ipmasq: {e}", node.name))?;
        if let Some(cidr) = excluded_by(&state, dest) {
            return Ok(own(format!(
                "{dest} is in nonMasqueradeCIDRs {cidr} ({})",
                state.source
            )));
        }
    }
    Ok(ExpectedSource {
        source: status.node_ip.unwrap_or(node.ip()),
        masqueraded: true,
        why: format!("masqueraded to {}'s IP ({})", node.name, m.mode),
    })
}

/// The nonMasqueradeCIDR of `state` holding `dest` (link-local counts
/// unless masqLinkLocal), if any.
pub fn excluded_by(state: &IpMasqState, dest: Ipv4Addr) -> Option<String> {
    if state.enabled && !state.masq_link_local && dest.is_link_local() {
        return Some("169.254.0.0/16".into());
    }
    state
        .cidrs
        .iter()
        .filter(|_| state.enabled)
        .find(|c| c.parse::<Ipv4Net>().is_ok_and(|n| n.contains(&dest)))
        .cloned()
}

/// The source address in the router's answer `client <address>`.
pub fn client_address(body: &str) -> Option<Ipv4Addr> {
    body.lines()
        .find_map(|l| l.trim().strip_prefix("client "))
        .and_then(|a| a.trim().parse().ok())
}

/// Whether the router has a route back to `pod` (its PodCIDR via a node).
pub fn router_routes_to(lab: &Lab, pod: &PodInfo) -> bool {
    lab.router_pod_routes()
        .unwrap_or_default()
        .iter()
        .any(|(cidr, _)| cidr.contains(&pod.ip))
}
