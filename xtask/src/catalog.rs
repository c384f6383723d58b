//! The benchmark's cluster: two pods and N ClusterIP services, every one of
//! them `port 80 -> targetPort 8080` of the server pod. Both mechanisms are
//! given exactly this list.

use std::net::{Ipv4Addr, SocketAddrV4};

use sha2::{Digest, Sha256};

/// The pods' network (kube-proxy's `--cluster-cidr`).
pub const POD_CIDR: &str = "10.200.0.0/16";
/// The pods' gateway on the node.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 20);
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// The first ClusterIP; services take consecutive addresses after it
/// (10.96.0.0/12, as the API server's default service range).
const FIRST_VIP: u32 = u32::from_be_bytes([10, 96, 0, 1]);
/// 10.96.0.1 ..= 10.111.255.254.
pub const MAX_SERVICES: usize = (1 << 20) - 2;

/// One ClusterIP service with one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub index: usize,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub backend: SocketAddrV4,
}

impl Service {
    pub fn new(index: usize) -> Self {
        assert!(index < MAX_SERVICES, "service index {index} out of range");
        Self {
            index,
            vip: Ipv4Addr::from(FIRST_VIP + index as u32),
            port: SERVICE_PORT,
            backend: SocketAddrV4::new(SERVER_IP, TARGET_PORT),
        }
    }

    pub fn frontend(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.vip, self.port)
    }

    /// kube-proxy's `ServicePortName` string: `namespace/name:port`.
    pub fn port_name(&self) -> String {
        format!("bench/svc-{}:http", self.index)
    }

    /// `KUBE-SVC-<hash>`, as kube-proxy names it (`servicePortChainName`).
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", chain_hash(&[&self.port_name(), "tcp"]))
    }

    /// `KUBE-SEP-<hash>` of its one endpoint (`servicePortEndpointChainName`).
    pub fn sep_chain(&self) -> String {
        let endpoint = self.backend.to_string();
        format!(
            "KUBE-SEP-{}",
            chain_hash(&[&self.port_name(), "tcp", &endpoint])
        )
    }
}

/// The first `count` services.
pub fn services(count: usize) -> Vec<Service> {
    (0..count).map(Service::new).collect()
}

/// kube-proxy's chain suffix: the first 16 characters of the base32 (RFC 4648)
/// sha256 of the concatenated parts.
fn chain_hash(parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(parts.concat().as_bytes());
    // 16 characters are 80 bits: the first 10 bytes.
    let mut bits: u128 = 0;
    for byte in &digest[..10] {
        bits = (bits << 8) | u128::from(*byte);
    }
    (0..16)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_take_consecutive_cluster_ips() {
        let list = services(3);
        assert_eq!(list[0].vip, Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(list[2].vip, Ipv4Addr::new(10, 96, 0, 3));
        assert_eq!(
            Service::new(MAX_SERVICES - 1).vip,
            Ipv4Addr::new(10, 111, 255, 254)
        );
        assert_eq!(list[1].backend, SocketAddrV4::new(SERVER_IP, TARGET_PORT));
    }

    #[test]
    fn chain_names_are_kube_proxy_shaped_and_distinct() {
        // kube-proxy: "KUBE-SVC-" + 16 base32 characters.
        let a = Service::new(0);
        let b = Service::new(1);
        for name in [a.svc_chain(), a.sep_chain(), b.svc_chain()] {
            assert_eq!(name.len(), 9 + 16, "{name}");
            assert!(name[9..]
                .bytes()
                .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
        }
        assert_ne!(a.svc_chain(), b.svc_chain());
        assert_ne!(a.svc_chain(), a.sep_chain());
        // base32 of sha256("") starts with 4OYMIQUY7QOBJGX3 (RFC 4648).
        assert_eq!(chain_hash(&[""]), "4OYMIQUY7QOBJGX3");
    }
}
