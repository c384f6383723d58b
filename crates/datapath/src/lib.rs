//! The kernel side of ciliate as seen from Rust: the compiled BPF objects, the
//! map layouts, loading and attaching, and the netlink/netns plumbing that
//! creates the devices the programs run on. Nothing here decides anything
//! about the cluster; the agent decides and writes maps through this crate.

pub mod ipvlan;
pub mod loader;
pub mod maps;
pub mod netkit;
pub mod netlink;
pub mod netns;
pub mod packets;
pub mod podnet;
pub mod reasons;
pub mod sysctl;
pub mod testing;

/// The compiled `bpf/lxc.c`: `from_container` (and its ipvlan variant) and their maps.
pub const LXC_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lxc.o"));

/// The compiled `bpf/overlay.c`: `from_overlay` on the node's tunnel device.
pub const OVERLAY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay.o"));

/// The compiled `bpf/host.c`: `from_host` on ciliate_host, `from_netdev` on the native device.
pub const HOST_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/host.o"));

/// The compiled `bpf/ipvlan.c`: the entry on an ipvlan slave, loaded per endpoint.
pub const IPVLAN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipvlan.o"));

/// `bpf/layout.c`: never loaded; its BTF describes every shared struct.
pub const LAYOUT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/layout.o"));
