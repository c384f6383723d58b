/* BPF host routing: a packet that leaves the node is routed by a FIB lookup
 * made as if it had arrived on the native device, and sent out of the device
 * the route names without passing through the host stack. The lxc devices
 * have forwarding off on purpose, so the lookup must name the native device
 * (which the agent sets to forwarding=1); without one (native_ifindex 0) the
 * stack routes. Whatever the FIB cannot forward itself (the node's own
 * addresses, forwarding disabled) goes to the stack too. */
#ifndef CILIATE_FIB_H
#define CILIATE_FIB_H

#include "common.h"
#include "events.h"
#include "eth.h"

#ifndef AF_INET
#define AF_INET 2
#endif

static __always_inline int fib_redirect(struct __sk_buff *skb, struct pkt_info *pi,
					const struct datapath_config *cfg, __u8 dir)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct bpf_fib_lookup params = {};
	struct bpf_redir_neigh nh = {};
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	long rc;

	if (!cfg->native_ifindex) {
		trace(skb, pi, cfg, TRACE_TO_STACK, dir, 0);
		return TC_ACT_OK;
	}
	if ((void *)(ip + 1) > data_end)
		return drop(skb, pi, DROP_INVALID, dir);

	params.family = AF_INET;
	params.tos = ip->tos;
	params.l4_protocol = ip->protocol;
	params.sport = pi->sport;
	params.dport = pi->dport;
	params.ipv4_src = ip->saddr;
	params.ipv4_dst = ip->daddr;
	params.ifindex = cfg->native_ifindex;
	/* tot_len stays 0: the kernel then checks the packet against the MTU of
	 * the device the route leads to, and lets GSO packets through. */
	rc = bpf_fib_lookup(skb, &params, sizeof(params), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		break;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return drop(skb, pi, DROP_NO_ROUTE, dir);
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return drop(skb, pi, DROP_FRAG_NEEDED, dir);
	default:
		/* NOT_FWDED (an address of this node, or no matching route),
		 * FWD_DISABLED, and anything the lookup cannot handle: the stack
		 * decides. */
		trace(skb, pi, cfg, TRACE_TO_STACK, dir, 0);
		return TC_ACT_OK;
	}

	/* A forwarded hop: the pointers are reloaded after the helper call. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = data + sizeof(*eth);
	if ((void *)(ip + 1) > data_end)
		return drop(skb, pi, DROP_INVALID, dir);
	if (ip->ttl <= 1)
		return drop(skb, pi, DROP_TTL_EXCEEDED, dir);
	ip_decrease_ttl(ip);

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The route is known but the next hop's MAC is not: the
		 * neighbour subsystem resolves it and fills in both MACs. The
		 * lookup left the next hop (gateway, or the destination itself
		 * when it is on the link) in ipv4_dst, or in ipv6_dst for an
		 * IPv6 gateway. */
		nh.nh_family = params.family;
		__builtin_memcpy(nh.ipv6_nh, params.ipv6_dst, sizeof(nh.ipv6_nh));
		trace(skb, pi, cfg, TRACE_TO_NETDEV, dir, params.ifindex);
		return bpf_redirect_neigh(params.ifindex, &nh, sizeof(nh), 0);
	}
	mac_copy(eth->h_dest, params.dmac);
	mac_copy(eth->h_source, params.smac);
	trace(skb, pi, cfg, TRACE_TO_NETDEV, dir, params.ifindex);
	return bpf_redirect(params.ifindex, 0);
}

#endif
