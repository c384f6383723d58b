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
/* Service maps are hash maps without preallocation: their size is a ceiling,
 * not memory. Conntrack and NAT are preallocated LRU maps, so they are sized
 * for a lab node rather than Cilium's 512k (a full node would raise them). */
#define LB_SERVICES_MAP_SIZE 262144
#define LB_BACKENDS_MAP_SIZE 262144
#define LB_REVNAT_MAP_SIZE 262144
#define LB_AFFINITY_MAP_SIZE 65536
#define CT_TCP_MAP_SIZE 131072
#define CT_ANY_MAP_SIZE 65536
#define NAT_MAP_SIZE 131072
/* ip-masq-agent's nonMasqueradeCIDRs (Cilium's ipmasq_v4 has 16384 entries). */
#define IPMASQ_MAP_SIZE 16384

/* ciliate_lxc: local endpoints by IPv4 address (network byte order). */
struct endpoint_key {
	__u32 ip4;
};

#define ENDPOINT_F_HEALTH 0x1
/* The pod's pair is netkit: from_container runs at the peer's transmit, not
 * at a tc ingress hook (datapathMode: netkit). */
#define ENDPOINT_F_NETKIT 0x2
/* The pod's eth0 is an ipvlan L3 slave of a native device (datapathMode
 * ipvlan): delivered by passing packets to the ipvlan driver (lib/deliver.h). */
#define ENDPOINT_F_IPVLAN 0x4

struct endpoint_info {
	__u32 ifindex;      /* host-side device (lxc*); ipvlan: the master device */
	__u16 lxc_id;       /* endpoint id */
	__u16 flags;        /* ENDPOINT_F_* */
	__u8 mac[6];        /* pod-side MAC (eth0 in the pod; ipvlan: the master's) */
	__u8 node_mac[6];   /* host-side MAC (lxc*; ipvlan: the master's) */
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
	__u32 node_ip;        /* this node's InternalIP, network byte order: NodePort's
			       * wildcard frontend and the source of SNATed traffic; 0 = none */
	/* Conntrack lifetimes in seconds (Cilium's bpf-ct-timeout-* options). */
	__u32 ct_timeout_tcp;     /* established TCP */
	__u32 ct_timeout_tcp_syn; /* TCP until the reply's first packet */
	__u32 ct_timeout_tcp_fin; /* TCP after FIN or RST */
	__u32 ct_timeout_any;     /* UDP and other non-TCP */
	/* Masquerading of pod traffic that leaves the cluster (lib/masq.h). */
	__u32 masquerade;               /* MASQ_F_*; 0 = enableIPv4Masquerade false */
	__u32 native_routing_cidr;      /* ipv4NativeRoutingCIDR's network, network byte order:
					 * never masqueraded */
	__u32 native_routing_prefixlen; /* its prefix length; 0 = no such CIDR */
};

/* datapath_config.masquerade. BPF and IPTABLES are exclusive. */
#define MASQ_F_BPF 0x1           /* bpf.masquerade: to_netdev SNATs to node_ip */
#define MASQ_F_IPTABLES 0x2      /* bpf.masquerade false: the agent's iptables chain does,
				  * so from_container hands such traffic to the stack */
#define MASQ_F_IP_MASQ_AGENT 0x4 /* ipMasqAgent.enabled: destinations in
				  * ciliate_ipmasq4 are not masqueraded (BPF mode) */

/* Source port range for SNAT (NodePort to a remote backend, masquerade).
 * Disjoint from Linux's default ip_local_port_range (32768-60999), so a
 * mapping on the node IP never takes a port the host's own sockets use and
 * only replies to ports in this range need a NAT lookup. */
#define NAT_PORT_MIN 61000
#define NAT_PORT_MAX 65535
#define NAT_COLLISION_RETRIES 32

/* The source a pod sees when it reaches itself through a service (hairpin):
 * Cilium's ipv4-service-loopback-address, 169.254.42.1. */
#define IPV4_SVC_LOOPBACK 0x012AFEA9 /* network byte order, read as a little-endian __u32 */

/* ciliate_lb4_svc: a frontend (address, port, protocol, scope) and a slot.
 * Slot 0 is the service itself: count of active backends, reverse-NAT index,
 * flags. Slots 1..count each name one active backend. Terminating backends
 * are in no slot, so new connections never pick them, but stay in the
 * backends map so established connections finish. */
struct lb4_key {
	__u32 address;      /* frontend IP, network byte order; 0 = any address of a node (NodePort) */
	__u16 dport;        /* network byte order */
	__u16 backend_slot; /* 0 = the service entry */
	__u8 proto;         /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 scope;         /* LB_SCOPE_* */
	__u16 pad;
};

/* Every frontend has an EXTERNAL-scope entry. A service whose traffic policy
 * is Local for one side only (externalTrafficPolicy or internalTrafficPolicy)
 * also has an INTERNAL-scope entry (SVC_F_TWO_SCOPES), used for packets from
 * inside the cluster (pods). The agent fills each scope with the backends that
 * side may use. */
#define LB_SCOPE_EXTERNAL 0
#define LB_SCOPE_INTERNAL 1

#define SVC_F_CLUSTER_IP 0x01   /* spec.clusterIP: reachable from pods only */
#define SVC_F_NODEPORT 0x02     /* a node address and spec.ports[].nodePort */
#define SVC_F_EXTERNAL_IP 0x04  /* spec.externalIPs */
#define SVC_F_LOADBALANCER 0x08 /* status.loadBalancer.ingress */
#define SVC_F_AFFINITY 0x10     /* sessionAffinity: ClientIP */
#define SVC_F_TWO_SCOPES 0x20   /* an INTERNAL-scope entry exists too */

struct lb4_service {
	__u32 backend_id;       /* slots 1..count */
	__u32 rev_nat_index;    /* slot 0: the frontend replies are translated back to */
	__u16 count;            /* slot 0: number of active backends */
	__u16 flags;            /* slot 0: SVC_F_* */
	__u32 affinity_timeout; /* slot 0, with SVC_F_AFFINITY: seconds */
};

/* ciliate_lb4_be: backend id to address. */
#define BE_STATE_ACTIVE 0
#define BE_STATE_TERMINATING 1

struct lb4_backend {
	__u32 address; /* network byte order */
	__u16 port;    /* network byte order */
	__u8 proto;
	__u8 state; /* BE_STATE_* (for people: the datapath uses the slots) */
};

/* ciliate_lb4_rev: reverse-NAT index to the frontend replies come from. */
struct lb4_reverse_nat {
	__u32 address; /* network byte order; 0 = the node's IP (NodePort wildcard) */
	__u16 port;    /* network byte order */
	__u16 pad;
};

/* ciliate_lb4_aff: sessionAffinity ClientIP, (client, service) to backend. */
struct lb4_affinity_key {
	__u32 client_ip; /* network byte order */
	__u32 rev_nat_index;
};

struct lb4_affinity_value {
	__u32 backend_id;
	__u32 last_used; /* CLOCK_MONOTONIC second */
};

/* ciliate_ct4_tcp (TCP) and ciliate_ct4_any (everything else): LRU maps of
 * connections the datapath translated, keyed by the tuple of the original
 * direction (the client's packet as it leaves the client, before SNAT).
 * A reply is looked up with its tuple reversed. */
struct ct4_key {
	__u32 daddr; /* network byte order */
	__u32 saddr;
	__u16 dport; /* network byte order */
	__u16 sport;
	__u8 proto;
	__u8 flags; /* CT_KEY_* */
	__u16 pad;
};

/* The client's tuple towards the frontend (before DNAT): which backend it got. */
#define CT_KEY_SERVICE 0x1
/* A masqueraded connection (lib/masq.h): the pod's tuple as it leaves, before
 * SNAT. It carries the TCP state the NAT mappings' lifetimes follow. */
#define CT_KEY_MASQ 0x2

#define CT_F_TX_CLOSING 0x01 /* FIN or RST seen from the client */
#define CT_F_RX_CLOSING 0x02 /* FIN or RST seen from the backend */
#define CT_F_SEEN_REPLY 0x04 /* the backend has answered */
#define CT_F_NODEPORT 0x08   /* entered through a node's NodePort/LoadBalancer/externalIP */
#define CT_F_LOOPBACK 0x10   /* hairpin: the client is its own backend, seen from IPV4_SVC_LOOPBACK */
#define CT_F_SNAT 0x20       /* the source was translated too (NAT map has the mapping) */
/* CT_KEY_MASQ entries only: a connection from outside the cluster to a pod
 * (lib/masq.h), keyed by the pod's reply tuple so to_netdev finds it; its
 * replies leave untranslated. tx_* count the outside client's packets,
 * rx_* the pod's. */
#define CT_F_INBOUND 0x40
/* CT_KEY_MASQ entries only, with CT_F_INBOUND: the host stack delivered the
 * connection to the pod (from_host) from outside, another node or its
 * pods, e.g. a hostPort netfilter DNATed; the pod's replies go back through
 * the stack to be translated back. */
#define CT_F_VIA_STACK 0x80

struct ct4_entry {
	__u64 tx_packets; /* original direction */
	__u64 tx_bytes;
	__u64 rx_packets; /* reply direction */
	__u64 rx_bytes;
	__u32 lifetime;      /* CLOCK_MONOTONIC second after which it has expired */
	__u32 created;       /* CLOCK_MONOTONIC second */
	__u32 backend_id;    /* CT_KEY_SERVICE entries: the backend chosen */
	__u32 rev_nat_index; /* connection entries: replies' source becomes this frontend; 0 = none */
	__u16 flags;         /* CT_F_* */
	__u8 tx_flags_seen;  /* TCP flags seen from the client */
	__u8 rx_flags_seen;  /* TCP flags seen from the backend */
	__u32 frontend_addr; /* connection entries: the address the client used, network
			      * byte order: replies come from it when the reverse-NAT
			      * entry's address is 0 (NodePort on any node address) */
};

/* ciliate_snat4: source NAT, an LRU map shared by NodePort (to a backend on
 * another node) and masquerading. Keyed by a ct4_key whose flags say the
 * direction. EGRESS: the tuple as it leaves before SNAT, to the new source.
 * INGRESS: the reply's tuple as it arrives (destination = the translated
 * source), to the original source, which becomes the reply's destination. */
#define NAT_DIR_EGRESS 0
#define NAT_DIR_INGRESS 1

struct nat4_entry {
	__u32 to_addr; /* network byte order */
	__u16 to_port; /* network byte order */
	__u16 flags;   /* NAT_F_* */
	__u32 lifetime; /* CLOCK_MONOTONIC second after which it has expired */
	__u32 created;
};

#define NAT_F_NODEPORT 0x1   /* made by NodePort forwarding to another node */
#define NAT_F_MASQUERADE 0x2 /* made by masquerading pod traffic that leaves the cluster */


/* ciliate_ipmasq4: ip-masq-agent's nonMasqueradeCIDRs, an LPM trie (Cilium's
 * ipmasq_v4). A destination found here leaves with the pod's own address. */
struct ipmasq_key {
	__u32 prefixlen; /* LPM prefix length, in bits */
	__u32 ip4;       /* network byte order */
};

struct ipmasq_value {
	__u32 flags; /* none defined yet: 0 */
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
	__u16 nat_port;     /* TRACE_SNAT: the new source port; TRACE_REV_SNAT: the
			     * destination port the reply had before; network byte order */
	__u32 src_identity; /* the tunnel key's VNI: as received, or as set on encap; 0 if none */
	__u32 nat_addr;     /* the address matching nat_port, network byte order; 0 if none */
	__u64 ktime_ns;
};

#endif
