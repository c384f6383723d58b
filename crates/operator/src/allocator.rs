//! Cluster-pool IPAM arithmetic: hands out `/mask` PodCIDRs from the pools, lowest
//! first, and remembers which node holds which. Pure: no I/O, no clock.
//!
//! Every pool is cut into blocks of `/mask`. A block is free or held by exactly one
//! node. CIDRs found on node objects are [`Allocator::restore`]d before anything is
//! allocated; one of another size inside a pool holds every block it overlaps, so
//! nothing handed out later can overlap it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The longest mask: a node's PodCIDR holds its router IP, its health endpoint
/// and at least one pod besides its network and broadcast addresses, so a /30 (two
/// usable addresses) is too small. The agent accepts the same range.
pub const MAX_MASK: u8 = 29;

/// Pools and mask that cannot work together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no pool given")]
    NoPools,
    #[error("{pool} is not a network address (did you mean {}?)", pool.trunc())]
    NotNetwork { pool: Ipv4Net },
    #[error("pools {a} and {b} overlap")]
    Overlap { a: Ipv4Net, b: Ipv4Net },
    #[error("a /{mask} is larger than the pool {pool}")]
    MaskShorterThanPool { mask: u8, pool: Ipv4Net },
    #[error("/{mask} is longer than /{MAX_MASK} (a PodCIDR needs room for the router IP, the health endpoint and at least one pod)")]
    MaskTooLong { mask: u8 },
}

/// Why a node cannot get a PodCIDR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("cluster-pool exhausted: all {total} /{mask} CIDRs of {pools} are in use")]
    Exhausted { total: u64, mask: u8, pools: String },
}

/// Why a CIDR found on a node object is not (or not only) that node's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Not ours to manage: left on the node, and the node gets no other.
    #[error("{cidr} is outside every cluster pool ({pools}); left alone")]
    OutsidePools { cidr: Ipv4Net, pools: String },
    /// Held by another node already; the node that came later gets a fresh one.
    #[error("{cidr} is already the PodCIDR of node {owner}")]
    Conflict { cidr: Ipv4Net, owner: String },
}

#[derive(Debug)]
pub struct Allocator {
    pools: Vec<Ipv4Net>,
    mask: u8,
    /// Held blocks: first address -> node.
    used: BTreeMap<u32, String>,
    /// Node -> the in-pool CIDRs it holds, in the order it got them.
    nodes: BTreeMap<String, Vec<Ipv4Net>>,
}

impl Allocator {
    /// Pools are used in the order given; each must be a network address, none may
    /// overlap another, and `mask` must fit in every pool and be at most /29.
    pub fn new(pools: &[Ipv4Net], mask: u8) -> Result<Self, PoolError> {
        if pools.is_empty() {
            return Err(PoolError::NoPools);
        }
        for (i, pool) in pools.iter().enumerate() {
            if pool.network() != pool.addr() {
                return Err(PoolError::NotNetwork { pool: *pool });
            }
            if let Some(other) = pools[..i]
                .iter()
                .find(|o| o.contains(pool) || pool.contains(*o))
            {
                return Err(PoolError::Overlap {
                    a: *other,
                    b: *pool,
                });
            }
        }
        if mask > MAX_MASK {
            return Err(PoolError::MaskTooLong { mask });
        }
        if let Some(pool) = pools.iter().find(|p| p.prefix_len() > mask) {
            return Err(PoolError::MaskShorterThanPool { mask, pool: *pool });
        }
        Ok(Self {
            pools: pools.to_vec(),
            mask,
            used: BTreeMap::new(),
            nodes: BTreeMap::new(),
        })
    }

    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many `/mask` CIDRs the pools hold together.
    pub fn capacity(&self) -> u64 {
        self.pools
            .iter()
            .map(|p| 1u64 << (self.mask - p.prefix_len()))
            .sum()
    }

    /// How many of them are held.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// The in-pool CIDRs `node` holds.
    pub fn cidrs(&self, node: &str) -> &[Ipv4Net] {
        self.nodes.get(node).map_or(&[], Vec::as_slice)
    }

    /// Records that `node` holds `cidr` (found on its object). Idempotent.
    pub fn restore(&mut self, node: &str, cidr: Ipv4Net) -> Result<(), RestoreError> {
        let cidr = cidr.trunc();
        let blocks = self.blocks_of(cidr);
        if blocks.is_empty() {
            return Err(RestoreError::OutsidePools {
                cidr,
                pools: self.pool_list(),
            });
        }
        if let Some(owner) = blocks
            .iter()
            .filter_map(|b| self.used.get(b))
            .find(|owner| *owner != node)
        {
            return Err(RestoreError::Conflict {
                cidr,
                owner: owner.clone(),
            });
        }
        let held = self.nodes.entry(node.to_string()).or_default();
        if !held.contains(&cidr) {
            held.push(cidr);
        }
        for block in blocks {
            self.used.insert(block, node.to_string());
        }
        Ok(())
    }

    /// `node`'s PodCIDR: the first it holds, else the lowest free one.
    pub fn allocate(&mut self, node: &str) -> Result<Ipv4Net, AllocError> {
        if let Some(cidr) = self.cidrs(node).first() {
            return Ok(*cidr);
        }
        let size = self.block_size();
        for pool in &self.pools {
            let (first, last) = bounds(*pool);
            // Held blocks are aligned, so the first one not where we expect it leaves
            // a gap at `next`.
            let mut next = first;
            for &start in self.used.range(first as u32..=last as u32).map(|(s, _)| s) {
                if u64::from(start) != next {
                    break;
                }
                next += size;
            }
            if next <= last {
                let cidr = Ipv4Net::new(Ipv4Addr::from(next as u32), self.mask)
                    .expect("mask validated in new");
                self.used.insert(next as u32, node.to_string());
                self.nodes.insert(node.to_string(), vec![cidr]);
                return Ok(cidr);
            }
        }
        Err(AllocError::Exhausted {
            total: self.capacity(),
            mask: self.mask,
            pools: self.pool_list(),
        })
    }

    /// Frees every CIDR `node` holds; returns them.
    pub fn release(&mut self, node: &str) -> Vec<Ipv4Net> {
        let cidrs = self.nodes.remove(node).unwrap_or_default();
        for cidr in &cidrs {
            self.free_blocks(node, *cidr);
        }
        cidrs
    }

    /// Frees the CIDRs `node` holds that are not in `keep`; returns them.
    pub fn retain(&mut self, node: &str, keep: &[Ipv4Net]) -> Vec<Ipv4Net> {
        let Some(held) = self.nodes.get_mut(node) else {
            return Vec::new();
        };
        let (kept, dropped): (Vec<_>, Vec<_>) = held.iter().partition(|c| keep.contains(c));
        if kept.is_empty() {
            self.nodes.remove(node);
        } else {
            *held = kept;
        }
        for cidr in &dropped {
            self.free_blocks(node, *cidr);
        }
        dropped
    }

    fn free_blocks(&mut self, node: &str, cidr: Ipv4Net) {
        for block in self.blocks_of(cidr) {
            if self.used.get(&block).is_some_and(|owner| owner == node) {
                self.used.remove(&block);
            }
        }
    }

    fn block_size(&self) -> u64 {
        1u64 << (32 - self.mask)
    }

    /// First addresses of the pool blocks `cidr` overlaps.
    fn blocks_of(&self, cidr: Ipv4Net) -> Vec<u32> {
        let size = self.block_size();
        let (lo, hi) = bounds(cidr);
        let mut blocks = Vec::new();
        for pool in &self.pools {
            let (first, last) = bounds(*pool);
            let (from, to) = (lo.max(first), hi.min(last));
            // Pools are aligned to their prefix and the mask is no shorter, so blocks
            // are aligned to their size.
            let mut block = from - from % size;
            while from <= to && block <= to {
                blocks.push(block as u32);
                block += size;
            }
        }
        blocks
    }

    fn pool_list(&self) -> String {
        let pools: Vec<String> = self.pools.iter().map(ToString::to_string).collect();
        pools.join(", ")
    }
}

/// First and last address, widened so that sums cannot overflow.
fn bounds(net: Ipv4Net) -> (u64, u64) {
    (
        u64::from(u32::from(net.network())),
        u64::from(u32::from(net.broadcast())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn pool(pools: &[&str], mask: u8) -> Allocator {
        let pools: Vec<Ipv4Net> = pools.iter().map(|p| net(p)).collect();
        Allocator::new(&pools, mask).unwrap()
    }

    #[test]
    fn hands_out_distinct_cidrs_lowest_first() {
        let mut a = pool(&["172.20.0.0/16"], 24);
        assert_eq!(a.capacity(), 256);
        assert_eq!(a.allocate("n0").unwrap(), net("172.20.0.0/24"));
        assert_eq!(a.allocate("n1").unwrap(), net("172.20.1.0/24"));
        assert_eq!(a.allocate("n2").unwrap(), net("172.20.2.0/24"));
        // Asking again gives the node the one it has.
        assert_eq!(a.allocate("n1").unwrap(), net("172.20.1.0/24"));
        assert_eq!(a.in_use(), 3);
    }

    #[test]
    fn fills_the_first_pool_then_the_next_and_reuses_freed_cidrs() {
        let mut a = pool(&["10.9.0.0/28", "10.8.0.0/29"], 29);
        assert_eq!(a.allocate("a").unwrap(), net("10.9.0.0/29"));
        assert_eq!(a.allocate("b").unwrap(), net("10.9.0.8/29"));
        assert_eq!(a.allocate("c").unwrap(), net("10.8.0.0/29"));
        let err = a.allocate("d").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster-pool exhausted: all 3 /29 CIDRs of 10.9.0.0/28, 10.8.0.0/29 are in use"
        );
        assert_eq!(a.release("a"), vec![net("10.9.0.0/29")]);
        assert_eq!(a.release("a"), vec![]);
        assert_eq!(a.allocate("d").unwrap(), net("10.9.0.0/29"));
    }

    #[test]
    fn exhaustion_message_names_count_mask_and_pool() {
        let mut a = pool(&["172.20.0.0/16"], 24);
        for i in 0..256 {
            a.allocate(&format!("n{i}")).unwrap();
        }
        assert_eq!(
            a.allocate("one-too-many").unwrap_err().to_string(),
            "cluster-pool exhausted: all 256 /24 CIDRs of 172.20.0.0/16 are in use"
        );
    }

    #[test]
    fn restored_cidrs_are_skipped_by_allocation() {
        let mut a = pool(&["172.20.0.0/16"], 24);
        a.restore("n1", net("172.20.1.0/24")).unwrap();
        a.restore("n1", net("172.20.1.0/24")).unwrap(); // idempotent
        a.restore("n0", net("172.20.0.0/24")).unwrap();
        assert_eq!(a.allocate("new").unwrap(), net("172.20.2.0/24"));
        assert_eq!(a.allocate("n1").unwrap(), net("172.20.1.0/24"));
    }

    #[test]
    fn a_cidr_held_by_another_node_is_a_conflict() {
        let mut a = pool(&["172.20.0.0/16"], 24);
        a.restore("first", net("172.20.5.0/24")).unwrap();
        let err = a.restore("later", net("172.20.5.0/24")).unwrap_err();
        assert_eq!(
            err,
            RestoreError::Conflict {
                cidr: net("172.20.5.0/24"),
                owner: "first".into()
            }
        );
        assert!(a.cidrs("later").is_empty());
        assert_eq!(a.allocate("later").unwrap(), net("172.20.0.0/24"));
    }

    #[test]
    fn a_cidr_outside_every_pool_is_left_alone() {
        let mut a = pool(&["172.20.0.0/16"], 24);
        let err = a.restore("n", net("10.0.0.0/24")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.0.0.0/24 is outside every cluster pool (172.20.0.0/16); left alone"
        );
        assert_eq!(a.in_use(), 0);
    }

    #[test]
    fn cidrs_of_another_size_hold_every_block_they_touch() {
        let mut a = pool(&["172.20.0.0/16"], 24);
        a.restore("big", net("172.20.0.0/23")).unwrap(); // two blocks
        a.restore("small", net("172.20.2.128/25")).unwrap(); // part of one
        assert_eq!(a.in_use(), 3);
        assert!(matches!(
            a.restore("other", net("172.20.1.0/24")),
            Err(RestoreError::Conflict { owner, .. }) if owner == "big"
        ));
        assert_eq!(a.allocate("new").unwrap(), net("172.20.3.0/24"));
        a.release("big");
        assert_eq!(a.allocate("newer").unwrap(), net("172.20.0.0/24"));
        // A host address restores its network.
        a.restore("sloppy", net("172.20.9.7/24")).unwrap();
        assert_eq!(a.cidrs("sloppy"), &[net("172.20.9.0/24")]);
    }

    #[test]
    fn retain_frees_what_a_node_no_longer_carries() {
        let mut a = pool(&["172.20.0.0/16"], 24);
        a.allocate("n").unwrap();
        a.restore("n", net("172.20.7.0/24")).unwrap();
        assert_eq!(
            a.retain("n", &[net("172.20.7.0/24")]),
            vec![net("172.20.0.0/24")]
        );
        assert_eq!(a.cidrs("n"), &[net("172.20.7.0/24")]);
        assert_eq!(a.allocate("m").unwrap(), net("172.20.0.0/24"));
    }

    #[test]
    fn bad_pools_are_refused() {
        let err = |pools: &[&str], mask| {
            let pools: Vec<Ipv4Net> = pools.iter().map(|p| net(p)).collect();
            Allocator::new(&pools, mask).unwrap_err()
        };
        assert_eq!(err(&[], 24), PoolError::NoPools);
        assert_eq!(
            err(&["172.20.0.0/16", "172.20.4.0/22"], 24).to_string(),
            "pools 172.20.0.0/16 and 172.20.4.0/22 overlap"
        );
        assert_eq!(
            err(&["172.20.0.0/16"], 15).to_string(),
            "a /15 is larger than the pool 172.20.0.0/16"
        );
        assert_eq!(
            err(&["172.20.0.0/16"], 30).to_string(),
            "/30 is longer than /29 (a PodCIDR needs room for the router IP, the health endpoint and at least one pod)"
        );
        assert!(Allocator::new(&[net("172.20.0.0/16")], 29).is_ok());
        assert_eq!(
            err(&["172.20.1.0/16"], 24).to_string(),
            "172.20.1.0/16 is not a network address (did you mean 172.20.0.0/16?)"
        );
    }

    #[test]
    fn the_whole_address_space_does_not_overflow() {
        let mut a = pool(&["0.0.0.0/0"], 0);
        assert_eq!(a.capacity(), 1);
        assert_eq!(a.allocate("n").unwrap(), net("0.0.0.0/0"));
        assert!(a.allocate("m").is_err());
        let mut a = pool(&["255.255.255.248/29"], 29);
        assert_eq!(a.allocate("n").unwrap(), net("255.255.255.248/29"));
        assert!(a.allocate("m").is_err());
    }
}
