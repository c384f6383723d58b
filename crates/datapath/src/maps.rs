//! Rust views of the map keys and values in `bpf/include/ciliate_maps.h`.
//! `tests/layout.rs` checks every type here against the object's BTF.

use std::net::Ipv4Addr;

/// Names of the pinned maps, as in the C definitions.
pub const ENDPOINTS_MAP: &str = "ciliate_lxc";
pub const CONFIG_MAP: &str = "ciliate_config";
pub const IPCACHE_MAP: &str = "ciliate_ipcache";
pub const METRICS_MAP: &str = "ciliate_metrics";
pub const EVENTS_MAP: &str = "ciliate_events";
pub const LB4_SERVICES_MAP: &str = "ciliate_lb4_svc";
pub const LB4_BACKENDS_MAP: &str = "ciliate_lb4_be";
pub const LB4_REVERSE_NAT_MAP: &str = "ciliate_lb4_rev";
pub const LB4_AFFINITY_MAP: &str = "ciliate_lb4_aff";
pub const CT4_TCP_MAP: &str = "ciliate_ct4_tcp";
pub const CT4_ANY_MAP: &str = "ciliate_ct4_any";
pub const SNAT4_MAP: &str = "ciliate_snat4";
pub const IPMASQ4_MAP: &str = "ciliate_ipmasq4";
pub const ALL_MAPS: &[&str] = &[
    ENDPOINTS_MAP,
    IPCACHE_MAP,
    CONFIG_MAP,
    METRICS_MAP,
    EVENTS_MAP,
    LB4_SERVICES_MAP,
    LB4_BACKENDS_MAP,
    LB4_REVERSE_NAT_MAP,
    LB4_AFFINITY_MAP,
    CT4_TCP_MAP,
    CT4_ANY_MAP,
    SNAT4_MAP,
    IPMASQ4_MAP,
];

/// Map sizes, as in `ciliate_maps.h`.
pub const LB_SERVICES_MAP_SIZE: u32 = 262_144;
pub const LB_BACKENDS_MAP_SIZE: u32 = 262_144;
pub const CT_TCP_MAP_SIZE: u32 = 131_072;
pub const CT_ANY_MAP_SIZE: u32 = 65_536;
pub const NAT_MAP_SIZE: u32 = 131_072;
pub const IPMASQ_MAP_SIZE: u32 = 16_384;

/// SNAT source ports: above Linux's default `ip_local_port_range` (32768-60999).
pub const NAT_PORT_MIN: u16 = 61000;
pub const NAT_PORT_MAX: u16 = 65535;
/// The source a pod sees when it reaches itself through a service.
pub const IPV4_SVC_LOOPBACK: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

pub const LB_SCOPE_EXTERNAL: u8 = 0;
pub const LB_SCOPE_INTERNAL: u8 = 1;
pub const SVC_F_CLUSTER_IP: u16 = 0x01;
pub const SVC_F_NODEPORT: u16 = 0x02;
pub const SVC_F_EXTERNAL_IP: u16 = 0x04;
pub const SVC_F_LOADBALANCER: u16 = 0x08;
pub const SVC_F_AFFINITY: u16 = 0x10;
pub const SVC_F_TWO_SCOPES: u16 = 0x20;
pub const BE_STATE_ACTIVE: u8 = 0;
pub const BE_STATE_TERMINATING: u8 = 1;
pub const CT_KEY_SERVICE: u8 = 0x1;
pub const CT_KEY_MASQ: u8 = 0x2;
pub const CT_F_TX_CLOSING: u16 = 0x01;
pub const CT_F_RX_CLOSING: u16 = 0x02;
pub const CT_F_SEEN_REPLY: u16 = 0x04;
pub const CT_F_NODEPORT: u16 = 0x08;
pub const CT_F_LOOPBACK: u16 = 0x10;
pub const CT_F_SNAT: u16 = 0x20;
/// `CT_KEY_MASQ` entries: a connection from outside to a pod, keyed by the
/// pod's reply tuple; its replies leave untranslated.
pub const CT_F_INBOUND: u16 = 0x40;
/// With `CT_F_INBOUND`: the host stack delivered the connection to the pod
/// from outside, another node or its pods (a hostPort netfilter DNATed);
/// its replies go back through the stack.
pub const CT_F_VIA_STACK: u16 = 0x80;
pub const NAT_DIR_EGRESS: u8 = 0;
pub const NAT_DIR_INGRESS: u8 = 1;
pub const NAT_F_NODEPORT: u16 = 0x1;
pub const NAT_F_MASQUERADE: u16 = 0x2;
/// `DatapathConfig::masquerade` flags.
pub const MASQ_F_BPF: u32 = 0x1;
pub const MASQ_F_IPTABLES: u32 = 0x2;
pub const MASQ_F_IP_MASQ_AGENT: u32 = 0x4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Network byte order address as the maps hold it.
pub fn be_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The address a map holds in network byte order.
pub fn addr_of(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

/// The clock conntrack and NAT lifetimes count in: whole seconds of
/// CLOCK_MONOTONIC, as `bpf_ktime_get_ns() / 1e9` in the datapath.
pub fn monotonic_seconds() -> u32 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    now.tv_sec() as u32
}
pub const IPCACHE_F_HOST: u16 = 0x1;
pub const ROUTING_TUNNEL: u32 = 0;
pub const ROUTING_NATIVE: u32 = 1;
/// The reserved identity of the node itself: the VNI of what `from_host` encapsulates.
pub const IDENTITY_HOST: u32 = 1;

pub const METRICS_MAP_SIZE: u32 = 512;
pub const ENDPOINT_F_HEALTH: u16 = 0x1;
/// The endpoint's pair is netkit (`datapathMode: netkit`).
pub const ENDPOINT_F_NETKIT: u16 = 0x2;
/// The pod's eth0 is an ipvlan L3 slave: `ifindex`, `mac` and `node_mac` are
/// the master device's, and the datapath delivers by passing to the driver.
pub const ENDPOINT_F_IPVLAN: u16 = 0x4;
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
    /// This node's InternalIP in network byte order: NodePort's wildcard
    /// frontend and the source of SNATed traffic; 0 if none.
    pub node_ip: u32,
    /// Conntrack lifetimes in seconds.
    pub ct_timeout_tcp: u32,
    pub ct_timeout_tcp_syn: u32,
    pub ct_timeout_tcp_fin: u32,
    pub ct_timeout_any: u32,
    /// `MASQ_F_*`; 0 = no masquerading.
    pub masquerade: u32,
    /// `ipv4NativeRoutingCIDR`'s network in network byte order: never masqueraded.
    pub native_routing_cidr: u32,
    /// Its prefix length; 0 = no such CIDR.
    pub native_routing_prefixlen: u32,
}

/// Cilium's defaults for `bpf-ct-timeout-regular-{tcp,tcp-syn,tcp-fin,any}`.
pub const CT_TIMEOUT_TCP: u32 = 21_600;
pub const CT_TIMEOUT_TCP_SYN: u32 = 60;
pub const CT_TIMEOUT_TCP_FIN: u32 = 10;
pub const CT_TIMEOUT_ANY: u32 = 60;

impl DatapathConfig {
    pub fn new(router: Ipv4Addr, trace_enabled: bool) -> Self {
        Self {
            router_ip: u32::from_ne_bytes(router.octets()),
            trace_enabled: u32::from(trace_enabled),
            ct_timeout_tcp: CT_TIMEOUT_TCP,
            ct_timeout_tcp_syn: CT_TIMEOUT_TCP_SYN,
            ct_timeout_tcp_fin: CT_TIMEOUT_TCP_FIN,
            ct_timeout_any: CT_TIMEOUT_ANY,
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

/// `ciliate_ipmasq4` value (ip-masq-agent's nonMasqueradeCIDRs; the key is
/// an LPM `Key<u32>` of prefix length and network-order address, as
/// `ipmasq_key` in C).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpmasqValue {
    pub flags: u32,
}

/// `ipmasq_key` in C, for the layout check; maps are accessed with
/// [`ipcache_key`]-style `Key<u32>` values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpmasqKey {
    pub prefixlen: u32,
    /// Network byte order.
    pub ip4: u32,
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
    /// `TRACE_SNAT`: the new source port; `TRACE_REV_SNAT`: the destination
    /// port the reply had before. Network byte order.
    pub nat_port: u16,
    /// The tunnel key's VNI: as received, or as set on encapsulation; 0 if none.
    pub src_identity: u32,
    /// The address matching `nat_port`, network byte order; 0 if none.
    pub nat_addr: u32,
    pub ktime_ns: u64,
}

/// `ciliate_lb4_svc` key: a frontend and a slot (0 = the service entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    /// Network byte order; 0 = any address of a node (NodePort).
    pub address: u32,
    /// Network byte order.
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    /// `LB_SCOPE_*`.
    pub scope: u8,
    pub pad: u16,
}

impl Lb4Key {
    pub fn new(address: Ipv4Addr, port: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self {
            address: be_addr(address),
            dport: port.to_be(),
            backend_slot: slot,
            proto,
            scope,
            pad: 0,
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        addr_of(self.address)
    }

    pub fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

/// `ciliate_lb4_svc` value: slot 0 describes the service, slots 1..count
/// name a backend each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Service {
    pub backend_id: u32,
    pub rev_nat_index: u32,
    pub count: u16,
    /// `SVC_F_*`.
    pub flags: u16,
    pub affinity_timeout: u32,
}

/// `ciliate_lb4_be` value (key: backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lb4Backend {
    /// Network byte order.
    pub address: u32,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    /// `BE_STATE_*`.
    pub state: u8,
}

impl Lb4Backend {
    pub fn new(address: Ipv4Addr, port: u16, proto: u8, state: u8) -> Self {
        Self {
            address: be_addr(address),
            port: port.to_be(),
            proto,
            state,
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        addr_of(self.address)
    }

    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// `ciliate_lb4_rev` value (key: reverse-NAT index).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4ReverseNat {
    /// Network byte order; 0 = the node's IP.
    pub address: u32,
    /// Network byte order.
    pub port: u16,
    pub pad: u16,
}

impl Lb4ReverseNat {
    pub fn new(address: Ipv4Addr, port: u16) -> Self {
        Self {
            address: be_addr(address),
            port: port.to_be(),
            pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lb4AffinityKey {
    pub client_ip: u32,
    pub rev_nat_index: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4AffinityValue {
    pub backend_id: u32,
    /// CLOCK_MONOTONIC second.
    pub last_used: u32,
}

/// Conntrack and NAT key: a tuple in network byte order plus `CT_KEY_*`
/// (conntrack) or `NAT_DIR_*` (NAT) in `flags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct4Key {
    pub daddr: u32,
    pub saddr: u32,
    pub dport: u16,
    pub sport: u16,
    pub proto: u8,
    pub flags: u8,
    pub pad: u16,
}

impl Ct4Key {
    /// A key from host-order ports.
    pub fn new(
        saddr: Ipv4Addr,
        sport: u16,
        daddr: Ipv4Addr,
        dport: u16,
        proto: u8,
        flags: u8,
    ) -> Self {
        Self {
            daddr: be_addr(daddr),
            saddr: be_addr(saddr),
            dport: dport.to_be(),
            sport: sport.to_be(),
            proto,
            flags,
            pad: 0,
        }
    }

    pub fn src(&self) -> (Ipv4Addr, u16) {
        (addr_of(self.saddr), u16::from_be(self.sport))
    }

    pub fn dst(&self) -> (Ipv4Addr, u16) {
        (addr_of(self.daddr), u16::from_be(self.dport))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct4Entry {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// CLOCK_MONOTONIC second after which the entry has expired.
    pub lifetime: u32,
    pub created: u32,
    pub backend_id: u32,
    pub rev_nat_index: u32,
    /// `CT_F_*`.
    pub flags: u16,
    pub tx_flags_seen: u8,
    pub rx_flags_seen: u8,
    /// Connection entries: the address the client used (network byte order),
    /// where replies come from when the reverse-NAT entry's address is 0.
    pub frontend_addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat4Entry {
    /// Network byte order.
    pub to_addr: u32,
    /// Network byte order.
    pub to_port: u16,
    /// `NAT_F_*`.
    pub flags: u16,
    pub lifetime: u32,
    pub created: u32,
}

impl Nat4Entry {
    pub fn to(&self) -> (Ipv4Addr, u16) {
        (addr_of(self.to_addr), u16::from_be(self.to_port))
    }
}

// SAFETY: all of these are repr(C), padding-free and valid for any bit pattern.
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointInfo {}
unsafe impl aya::Pod for DatapathConfig {}
unsafe impl aya::Pod for IpmasqValue {}
unsafe impl aya::Pod for IpmasqKey {}
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for MetricsValue {}
unsafe impl aya::Pod for TraceEvent {}
unsafe impl aya::Pod for Lb4Key {}
unsafe impl aya::Pod for Lb4Service {}
unsafe impl aya::Pod for Lb4Backend {}
unsafe impl aya::Pod for Lb4ReverseNat {}
unsafe impl aya::Pod for Lb4AffinityKey {}
unsafe impl aya::Pod for Lb4AffinityValue {}
unsafe impl aya::Pod for Ct4Key {}
unsafe impl aya::Pod for Ct4Entry {}
unsafe impl aya::Pod for Nat4Entry {}

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
