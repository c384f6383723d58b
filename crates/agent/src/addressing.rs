//! What the agent runs with that the configuration alone cannot say: the
//! node's PodCIDR and router IP (from `ipv4Range`, the state saved in
//! `stateDir`, or the operator) and its native device with the node IP.
//! Resolved once at start and handed to device setup, IPAM and the daemon.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The node's PodCIDR and the router IP, the CIDR's first address, which
/// sits on `ciliate_host` (Cilium's CiliumInternalIP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub cidr: Ipv4Net,
    pub router: Ipv4Addr,
}

/// A PodCIDR this agent cannot use, and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: PodCIDR {cidr} is not allowed: {allowed}")]
pub struct InvalidPodCidr {
    /// `config key ipv4Range`, `spec.ipam.podCIDRs of CiliateNode node0`, ...
    pub origin: String,
    pub cidr: Ipv4Net,
    pub allowed: String,
}

impl PodNetwork {
    /// The PodCIDR, checked as `ipv4Range` is (a network address, /8 to /29);
    /// `origin` says where it came from, for the error.
    pub fn new(cidr: Ipv4Net, origin: &str) -> Result<Self, InvalidPodCidr> {
        let cidr = crate::config::check_cidr(cidr, &crate::config::POD_CIDR_PREFIXES).map_err(
            |allowed| InvalidPodCidr {
                origin: origin.to_string(),
                cidr,
                allowed,
            },
        )?;
        let router = cidr
            .hosts()
            .next()
            .expect("a prefix of /29 or shorter has hosts");
        Ok(Self { cidr, router })
    }
}

/// The device that connects the node to the other nodes (`devices[0]`, or
/// the device of the default route), and its first IPv4 address: the node's
/// InternalIP, the address other nodes tunnel or route to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeDevice {
    pub name: String,
    pub ifindex: u32,
    pub ip: Ipv4Addr,
}

/// Everything resolved at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddressing {
    pub pod: PodNetwork,
    /// None only without `devices`, a store and a default route (a lone node).
    pub native: Option<NativeDevice>,
}

impl NodeAddressing {
    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.native.as_ref().map(|d| d.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_is_the_first_address() {
        let pod = PodNetwork::new("172.20.3.0/24".parse().unwrap(), "test").unwrap();
        assert_eq!(pod.router, Ipv4Addr::new(172, 20, 3, 1));
        let err = PodNetwork::new(
            "172.20.3.0/30".parse().unwrap(),
            "spec.ipam.podCIDRs of CiliateNode node0",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("172.20.3.0/30")
                && err.contains("spec.ipam.podCIDRs of CiliateNode node0")
                && err.contains("/29")
                && !err.contains("ipv4Range"),
            "{err}"
        );
    }
}
