/* Map keys and values shared by the BPF programs and the Rust control plane.
 * This header is the single source of truth for these layouts: the Rust types in
 * crates/datapath/src/maps.rs are checked against the BTF of the compiled object.
 * Every struct is padding-free so both sides agree byte for byte. */
#ifndef CILIATE_MAPS_H
#define CILIATE_MAPS_H

#include <linux/types.h>

#define ENDPOINTS_MAP_SIZE 65535
#define IPCACHE_MAP_SIZE 512000
#define METRICS_MAP_SIZE 512
#define EVENTS_RING_SIZE (256 * 1024)

/* ciliate_lxc: local endpoints by IPv4 address (network byte order). */
struct endpoint_key {
	__u32 ip4;
};

#define ENDPOINT_F_HEALTH 0x1

struct endpoint_info {
	__u32 ifindex;      /* host-side device (lxc*) */
	__u16 lxc_id;       /* endpoint id */
	__u16 flags;        /* ENDPOINT_F_* */
	__u8 mac[6];        /* pod-side MAC (eth0 in the pod) */
	__u8 node_mac[6];   /* host-side MAC (lxc*) */
	__u32 sec_identity; /* security identity, 0 until policy lands */
};

/* ciliate_ipcache: LPM trie from prefix to identity and, for prefixes behind
 * another node, the tunnel endpoint (that node's IP). */
struct ipcache_key {
	__u32 prefixlen; /* LPM prefix length, in bits */
	__u32 ip4;       /* network byte order */
};

#define IPCACHE_F_HOST 0x1 /* the prefix is a node's own address */

struct ipcache_value {
	__u32 sec_identity;
	__u32 tunnel_endpoint; /* network byte order; 0 = not behind a tunnel */
	__u16 flags;           /* IPCACHE_F_* */
	__u16 pad;
};

#define ROUTING_TUNNEL 0
#define ROUTING_NATIVE 1

/* Reserved security identities. */
#define IDENTITY_HOST 1 /* the node itself: what it sends into the tunnel carries this VNI */

/* ciliate_config: one entry written by the agent. */
struct datapath_config {
	__u32 router_ip;      /* network byte order; ARP answers for it */
	__u32 trace_enabled;  /* emit trace events (drops are always emitted) */
	__u32 tunnel_ifindex; /* ciliate_vxlan / ciliate_geneve, 0 if none */
	__u32 routing_mode;   /* ROUTING_* */
	__u32 identity;       /* identity of this node's pods until policy assigns one */
	__u32 native_ifindex; /* device FIB lookups route from (BPF host routing), 0 = leave it to the stack */
};

/* ciliate_metrics: per-CPU counters indexed by metrics_index(reason, dir). */
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

#define METRIC_INGRESS 1 /* towards the endpoint */
#define METRIC_EGRESS 2  /* away from the endpoint */

static inline __u32 metrics_index(__u8 reason, __u8 dir)
{
	return (__u32)reason | ((__u32)(dir & 1) << 8);
}

/* ciliate_events: ring buffer records read by the agent's monitor. */
#define EVENT_TRACE 1
#define EVENT_DROP 2

struct trace_event {
	__u8 type;          /* EVENT_* */
	__u8 reason;        /* DROP_* for drops, TRACE_* for traces */
	__u8 dir;           /* METRIC_* */
	__u8 proto;         /* IP protocol, 0 for ARP */
	__u32 ifindex;      /* device the program ran on */
	__u32 src_ip;       /* network byte order */
	__u32 dst_ip;       /* network byte order */
	__u16 sport;        /* network byte order, 0 if none */
	__u16 dport;        /* network byte order, 0 if none */
	__u16 src_ep;       /* endpoint id of the source, 0 if not local */
	__u16 dst_ep;       /* endpoint id of the destination, 0 if not local */
	__u32 len;          /* packet length */
	__u32 dst_ifindex;  /* redirect target, 0 if none */
	__u16 eth_proto;    /* network byte order */
	__u16 pad;
	__u32 src_identity; /* the tunnel key's VNI: as received, or as set on encap; 0 if none */
	__u32 pad2;
	__u64 ktime_ns;
};

#endif
