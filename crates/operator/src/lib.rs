//! `ciliate-operator`: the cluster-wide half of cluster-pool IPAM.
//!
//! It watches CiliateNodes in the store and gives every node without one a PodCIDR
//! (a `/clusterPoolIPv4MaskSize` block of `clusterPoolIPv4PodCIDRList`), written with
//! a compare-and-swap that keeps the agent's lease on its node object. PodCIDRs already
//! on node objects are restored before anything is handed out, so they are stable
//! across operator restarts; a deleted node's PodCIDR is free again.
//!
//! - [`config`]: the YAML file and flags, refused with key, value and what is allowed.
//! - [`allocator`]: the pool arithmetic (pure).
//! - [`controller`]: the watch loop that applies it to the store.

pub mod allocator;
pub mod config;
pub mod controller;
