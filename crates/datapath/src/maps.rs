//! Rust views of the map keys and values in `bpf/include/ciliate_maps.h`.
//! `tests/layout.rs` checks every type here against the object's BTF.

use std::net::Ipv4Addr;

/// Names of the pinned maps, as in the C definitions.
pub const ENDPOINTS_MAP: &str = "ciliate_lxc";
pub const CONFIG_MAP: &str = "ciliate_config";
pub const IPCACHE_MAP: &str = "ciliate_ipcache";
pub const METRICS_MAP: &str = "ciliate_metrics";
pub const EVENTS_MAP: &str = "ciliate_events";
pub const ALL_MAPS: &[&str] = &[
    ENDPOINTS_MAP,
    IPCACHE_MAP,
    CONFIG_MAP,
    METRICS_MAP,
    EVENTS_MAP,
];
pub const IPCACHE_F_HOST: u16 = 0x1;
pub const ROUTING_TUNNEL: u32 = 0;
pub const ROUTING_NATIVE: u32 = 1;
/// The reserved identity of the node itself: the VNI of what `from_host` encapsulates.
pub const IDENTITY_HOST: u32 = 1;

pub const METRICS_MAP_SIZE: u32 = 512;
pub const ENDPOINT_F_HEALTH: u16 = 0x1;
pub const METRIC_INGRESS: u8 = 1;
pub const METRIC_EGRESS: u8 = 2;
pub const EVENT_TRACE: u8 = 1;
pub const EVENT_DROP: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// IPv4 address in network byte order, as the packet carries it.
    pub ip4: u32,
}

impl EndpointKey {
    pub fn new(ip: Ipv4Addr) -> Self {
        Self {
            ip4: u32::from_ne_bytes(ip.octets()),
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip4.to_ne_bytes())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ifindex: u32,
    pub lxc_id: u16,
    pub flags: u16,
    pub mac: [u8; 6],
    pub node_mac: [u8; 6],
    pub sec_identity: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Router IP in network byte order.
    pub router_ip: u32,
    pub trace_enabled: u32,
    /// ifindex of the node's tunnel device, 0 if none.
    pub tunnel_ifindex: u32,
    /// `ROUTING_TUNNEL` or `ROUTING_NATIVE`.
    pub routing_mode: u32,
    /// Identity of this node's pods until policy assigns them one.
    pub identity: u32,
    /// ifindex of the native device FIB lookups are made from; 0 leaves
    /// routing of traffic that leaves the node to the host stack.
    pub native_ifindex: u32,
}

impl DatapathConfig {
    pub fn new(router: Ipv4Addr, trace_enabled: bool) -> Self {
        Self {
            router_ip: u32::from_ne_bytes(router.octets()),
            trace_enabled: u32::from(trace_enabled),
            ..Self::default()
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    /// Network byte order.
    pub ip4: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    pub sec_identity: u32,
    /// The node behind which the prefix lives, network byte order; 0 if none.
    pub tunnel_endpoint: u32,
    pub flags: u16,
    pub pad: u16,
}

impl IpcacheValue {
    pub fn tunnel_endpoint(&self) -> Option<Ipv4Addr> {
        (self.tunnel_endpoint != 0).then(|| Ipv4Addr::from(self.tunnel_endpoint.to_ne_bytes()))
    }
}

/// An ipcache key for a prefix, as the LPM trie wants it.
pub fn ipcache_key(net: ipnet::Ipv4Net) -> aya::maps::lpm_trie::Key<u32> {
    aya::maps::lpm_trie::Key::new(
        u32::from(net.prefix_len()),
        u32::from_ne_bytes(net.network().octets()),
    )
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Index of a (reason, direction) counter in the metrics map, as `metrics_index` in C.
pub fn metrics_index(reason: u8, dir: u8) -> u32 {
    u32::from(reason) | (u32::from(dir & 1) << 8)
}

/// The (reason, direction) a metrics map index stands for.
pub fn metrics_key(index: u32) -> (u8, u8) {
    let dir = if index >> 8 == 1 {
        METRIC_INGRESS
    } else {
        METRIC_EGRESS
    };
    ((index & 0xff) as u8, dir)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    pub kind: u8,
    pub reason: u8,
    pub dir: u8,
    pub proto: u8,
    pub ifindex: u32,
    pub src_ip: u32,
    pub dst_ip: u32,
    pub sport: u16,
    pub dport: u16,
    pub src_ep: u16,
    pub dst_ep: u16,
    pub len: u32,
    pub dst_ifindex: u32,
    pub eth_proto: u16,
    pub pad: u16,
    /// The tunnel key's VNI: as received, or as set on encapsulation; 0 if none.
    pub src_identity: u32,
    pub pad2: u32,
    pub ktime_ns: u64,
}

// SAFETY: all of these are repr(C), padding-free and valid for any bit pattern.
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointInfo {}
unsafe impl aya::Pod for DatapathConfig {}
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for MetricsValue {}
unsafe impl aya::Pod for TraceEvent {}

impl TraceEvent {
    /// Reads an event from a ring buffer record; `None` if the record is short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked above; TraceEvent is valid for any bit pattern.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}
