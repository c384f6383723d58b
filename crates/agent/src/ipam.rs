//! Host-scope IPAM: addresses from the node's PodCIDR. The first address is
//! the router IP; network and broadcast addresses are never handed out.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("PodCIDR {cidr} is exhausted: all {capacity} addresses are allocated")]
    Exhausted { cidr: Ipv4Net, capacity: usize },
    #[error("address {ip} is not allocated")]
    NotAllocated { ip: Ipv4Addr },
    #[error("address {ip} is outside the PodCIDR {cidr}")]
    OutOfRange { ip: Ipv4Addr, cidr: Ipv4Net },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub owner: String,
    #[serde(default)]
    pub container_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Ipam {
    cidr: Ipv4Net,
    router: Ipv4Addr,
    allocated: BTreeMap<Ipv4Addr, Allocation>,
    /// Where the next search starts, so released addresses are not reused at once.
    next: u32,
}

impl Ipam {
    pub fn new(cidr: Ipv4Net) -> Self {
        let router = cidr.hosts().next().expect("PodCIDR has hosts");
        Self {
            cidr,
            router,
            allocated: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    pub fn router(&self) -> Ipv4Addr {
        self.router
    }

    /// Addresses that can be handed out (hosts minus the router).
    pub fn capacity(&self) -> usize {
        self.cidr.hosts().count() - 1
    }

    pub fn allocations(&self) -> &BTreeMap<Ipv4Addr, Allocation> {
        &self.allocated
    }

    /// Re-records an allocation read back from disk. Entries outside the
    /// current CIDR are reported, not kept.
    pub fn restore(&mut self, ip: Ipv4Addr, alloc: Allocation) -> Result<(), IpamError> {
        if !self.cidr.contains(&ip)
            || ip == self.router
            || ip == self.cidr.network()
            || ip == self.cidr.broadcast()
        {
            return Err(IpamError::OutOfRange {
                ip,
                cidr: self.cidr,
            });
        }
        self.allocated.insert(ip, alloc);
        Ok(())
    }

    pub fn allocate(&mut self, alloc: Allocation) -> Result<Ipv4Addr, IpamError> {
        let hosts: Vec<Ipv4Addr> = self.cidr.hosts().skip(1).collect();
        let n = hosts.len() as u32;
        for i in 0..n {
            let ip = hosts[((self.next + i) % n) as usize];
            if let std::collections::btree_map::Entry::Vacant(slot) = self.allocated.entry(ip) {
                slot.insert(alloc);
                self.next = (self.next + i + 1) % n;
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr,
            capacity: hosts.len(),
        })
    }

    pub fn release(&mut self, ip: Ipv4Addr) -> Result<Allocation, IpamError> {
        self.allocated
            .remove(&ip)
            .ok_or(IpamError::NotAllocated { ip })
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Allocation> {
        self.allocated.get(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(o: &str) -> Allocation {
        Allocation {
            owner: o.into(),
            container_id: None,
        }
    }

    #[test]
    fn skips_router_and_exhausts() {
        let mut ipam = Ipam::new("10.0.0.0/29".parse().unwrap());
        assert_eq!(ipam.router(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ipam.capacity(), 5);
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(owner(&i.to_string())).unwrap())
            .collect();
        assert_eq!(got[0], "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(got[4], "10.0.0.6".parse::<Ipv4Addr>().unwrap());
        let err = ipam.allocate(owner("x")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PodCIDR 10.0.0.0/29 is exhausted: all 5 addresses are allocated"
        );
    }

    #[test]
    fn release_and_reuse_later() {
        let mut ipam = Ipam::new("10.0.0.0/29".parse().unwrap());
        let a = ipam.allocate(owner("a")).unwrap();
        let b = ipam.allocate(owner("b")).unwrap();
        ipam.release(a).unwrap();
        assert_eq!(
            ipam.release(a).unwrap_err(),
            IpamError::NotAllocated { ip: a }
        );
        let c = ipam.allocate(owner("c")).unwrap();
        assert_ne!(c, a, "a just-released address is not handed out first");
        assert_ne!(c, b);
    }

    #[test]
    fn restore_refuses_foreign_addresses() {
        let mut ipam = Ipam::new("10.0.0.0/24".parse().unwrap());
        assert!(ipam
            .restore("10.0.1.5".parse().unwrap(), owner("x"))
            .is_err());
        assert!(ipam
            .restore("10.0.0.1".parse().unwrap(), owner("x"))
            .is_err());
        ipam.restore("10.0.0.9".parse().unwrap(), owner("x"))
            .unwrap();
        assert_eq!(ipam.get("10.0.0.9".parse().unwrap()).unwrap().owner, "x");
    }
}
