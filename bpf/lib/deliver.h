/* Delivery to a pod on this node: the one place that rewrites L2 and TTL and
 * hands the packet to the pod's namespace, whether it came from a local pod
 * (lxc.c), from another node (overlay.c, host.c's from_netdev) or from the
 * node itself (host.c's from_host).
 *
 * An ipvlan endpoint (ENDPOINT_F_IPVLAN) has no device of its own in the
 * node's namespace: its eth0 is an ipvlan L3 slave of a native device (the
 * master, dst->ifindex), and only the ipvlan driver moves packets into it:
 * the master's receive handler for what arrives on the master, the slave's
 * transmit for what a sibling slave sends. So such a delivery never
 * redirects into the pod: on the master's ingress and at a slave's egress it
 * returns TC_ACT_OK and the driver delivers; anywhere else in the node it
 * redirects to the master's ingress, where from_netdev passes it on. And a
 * program running at an ipvlan slave (HOOK_POD_EGRESS, inside the pod's
 * namespace) cannot reach any device of the node: it passes even what is for
 * a veth endpoint, which the driver routes in the node's namespace (to_netdev
 * on the master delivers it). Redirecting instead is the upstream bug that
 * broke NodePort with the backend on the entry node. */
#ifndef CILIATE_DELIVER_H
#define CILIATE_DELIVER_H

#include "common.h"
#include "events.h"
#include "eth.h"

/* The hook the calling program runs at. bpf_redirect_peer, which enters the
 * pod's namespace directly, works only from a tc ingress hook; from an egress
 * hook the packet goes out of the pod's lxc device instead. */
#define HOOK_INGRESS 0
#define HOOK_EGRESS 1
/* tc egress of an ipvlan slave inside a pod's namespace (bpf/ipvlan.c's entry
 * tail-calls from_container_ipvlan there). */
#define HOOK_POD_EGRESS 2

/* The routed hop into the pod: TTL and MACs. Returns 0, or a drop verdict. */
static __always_inline int deliver_rewrite(struct __sk_buff *skb, struct pkt_info *pi,
					   const struct endpoint_info *dst, __u8 dir, int hop)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > data_end)
		return drop(skb, pi, DROP_INVALID, dir);
	pi->dst_ep = dst->lxc_id;
	if (hop) {
		if (ip->ttl <= 1)
			return drop(skb, pi, DROP_TTL_EXCEEDED, dir);
		ip_decrease_ttl(ip);
	}
	mac_copy(eth->h_dest, dst->mac);
	mac_copy(eth->h_source, dst->node_mac);
	return 0;
}

static __always_inline int deliver_local(struct __sk_buff *skb, struct pkt_info *pi,
					 const struct datapath_config *cfg,
					 const struct endpoint_info *dst, __u8 point, __u8 dir,
					 __u8 hook)
{
	int ret;

	if (dst->flags & ENDPOINT_F_IPVLAN) {
		/* The driver takes it from here: this is the hop. */
		if (hook == HOOK_POD_EGRESS ||
		    (hook == HOOK_INGRESS && skb->ifindex == dst->ifindex)) {
			ret = deliver_rewrite(skb, pi, dst, dir, 1);
			if (ret)
				return ret;
			trace(skb, pi, cfg, point, dir, dst->ifindex);
			return TC_ACT_OK;
		}
		/* Into the master's receive path; from_netdev makes the hop.
		 * The MACs are the master's, so that it takes the frame as
		 * its own (PACKET_HOST). */
		ret = deliver_rewrite(skb, pi, dst, dir, 0);
		if (ret)
			return ret;
		trace(skb, pi, cfg, point, dir, dst->ifindex);
		return bpf_redirect(dst->ifindex, BPF_F_INGRESS);
	}
	if (hook == HOOK_POD_EGRESS) {
		/* A veth endpoint seen from an ipvlan pod: unchanged to the
		 * driver, which routes it in the node's namespace. */
		pi->dst_ep = dst->lxc_id;
		trace(skb, pi, cfg, TRACE_TO_STACK, dir, 0);
		return TC_ACT_OK;
	}
	ret = deliver_rewrite(skb, pi, dst, dir, 1);
	if (ret)
		return ret;
	trace(skb, pi, cfg, point, dir, dst->ifindex);
	if (hook == HOOK_EGRESS)
		return bpf_redirect(dst->ifindex, 0);
	return bpf_redirect_peer(dst->ifindex, 0);
}

#endif
