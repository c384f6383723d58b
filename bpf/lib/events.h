/* Counting and reporting of verdicts: every drop is counted and emitted, every
 * forward is counted and, while a monitor listens, emitted as a trace. */
#ifndef CILIATE_EVENTS_H
#define CILIATE_EVENTS_H

#include "common.h"
#include "maps.h"

/* What the programs know about a packet when they report on it. */
struct pkt_info {
	__u32 src_ip;
	__u32 dst_ip;
	__u16 sport;
	__u16 dport;
	__u16 src_ep;
	__u16 dst_ep;
	__u16 eth_proto;
	__u8 proto;
	__u32 src_identity;
	/* Set by parse_ipv4 for TCP and UDP packets whose ports are readable
	 * (not a later fragment): what services and conntrack work on. */
	__u16 l4_off;    /* offset of the TCP/UDP header from the packet start */
	__u8 has_ports;  /* sport and dport are the packet's */
	__u8 tcp_flags;  /* TCP: the flags byte (FIN, SYN, RST, ACK ...) */
	/* A TCP/UDP fragment (more follow, or not the first): services drop
	 * it, as the fragments without ports could not be translated alike. */
	__u8 is_frag;
	/* The program runs at an ipvlan slave inside the pod's namespace
	 * (from_container_ipvlan): an answer to the pod goes to its device's
	 * ingress, and nothing can be redirected to a device of the node. */
	__u8 in_pod;
};

static __always_inline void count(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	__u32 idx = metrics_index(reason, dir);
	struct metrics_value *m = bpf_map_lookup_elem(&ciliate_metrics, &idx);

	if (m) {
		m->packets += 1;
		m->bytes += skb->len;
	}
}

/* nat_addr/nat_port: the other side of a translation (see trace_event). */
static __always_inline void emit_nat(struct __sk_buff *skb, const struct pkt_info *pi, __u8 type,
				     __u8 reason, __u8 dir, __u32 dst_ifindex, __be32 nat_addr,
				     __be16 nat_port)
{
	struct trace_event ev = {
		.type = type,
		.reason = reason,
		.dir = dir,
		.proto = pi->proto,
		.ifindex = skb->ifindex,
		.src_ip = pi->src_ip,
		.dst_ip = pi->dst_ip,
		.sport = pi->sport,
		.dport = pi->dport,
		.src_ep = pi->src_ep,
		.dst_ep = pi->dst_ep,
		.len = skb->len,
		.dst_ifindex = dst_ifindex,
		.eth_proto = pi->eth_proto,
		.src_identity = pi->src_identity,
		.nat_port = nat_port,
		.nat_addr = nat_addr,
		.ktime_ns = bpf_ktime_get_ns(),
	};

	bpf_ringbuf_output(&ciliate_events, &ev, sizeof(ev), 0);
}

static __always_inline void emit(struct __sk_buff *skb, const struct pkt_info *pi, __u8 type,
				 __u8 reason, __u8 dir, __u32 dst_ifindex)
{
	emit_nat(skb, pi, type, reason, dir, dst_ifindex, 0, 0);
}

static __always_inline int drop(struct __sk_buff *skb, const struct pkt_info *pi, __u8 reason,
				__u8 dir)
{
	count(skb, reason, dir);
	emit(skb, pi, EVENT_DROP, reason, dir, 0);
	return TC_ACT_SHOT;
}

static __always_inline void trace(struct __sk_buff *skb, const struct pkt_info *pi,
				  const struct datapath_config *cfg, __u8 point, __u8 dir,
				  __u32 dst_ifindex)
{
	count(skb, REASON_FORWARDED, dir);
	if (cfg && cfg->trace_enabled)
		emit(skb, pi, EVENT_TRACE, point, dir, dst_ifindex);
}

/* A translation (TRACE_SNAT, TRACE_REV_SNAT) on the way of a packet whose
 * verdict is traced (and counted) by the caller or, on to_netdev, is the
 * packet going on: emitted while a monitor listens, never counted, so a
 * packet counts once however many translations it goes through. */
static __always_inline void trace_nat(struct __sk_buff *skb, const struct pkt_info *pi,
				      const struct datapath_config *cfg, __u8 point, __u8 dir,
				      __be32 nat_addr, __be16 nat_port)
{
	if (cfg && cfg->trace_enabled)
		emit_nat(skb, pi, EVENT_TRACE, point, dir, 0, nat_addr, nat_port);
}

#endif
