/* Delivery to a pod on this node: the one place that rewrites L2 and TTL and
 * hands the packet to the pod's namespace, whether it came from a local pod
 * (lxc.c), from another node (overlay.c, host.c's from_netdev) or from the
 * node itself (host.c's from_host). */
#ifndef CILIATE_DELIVER_H
#define CILIATE_DELIVER_H

#include "common.h"
#include "events.h"
#include "eth.h"

/* The hook the calling program runs at. bpf_redirect_peer, which enters the
 * pod's namespace directly, works only from a tc ingress hook; from an egress
 * hook the packet goes out of the pod's lxc device instead (through to_container). */
#define HOOK_INGRESS 0
#define HOOK_EGRESS 1

static __always_inline int deliver_local(struct __sk_buff *skb, struct pkt_info *pi,
					 const struct datapath_config *cfg,
					 const struct endpoint_info *dst, __u8 point, __u8 dir,
					 __u8 hook)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > data_end)
		return drop(skb, pi, DROP_INVALID, dir);
	pi->dst_ep = dst->lxc_id;
	if (ip->ttl <= 1)
		return drop(skb, pi, DROP_TTL_EXCEEDED, dir);
	ip_decrease_ttl(ip);
	mac_copy(eth->h_dest, dst->mac);
	mac_copy(eth->h_source, dst->node_mac);

	trace(skb, pi, cfg, point, dir, dst->ifindex);
	if (hook == HOOK_EGRESS)
		return bpf_redirect(dst->ifindex, 0);
	return bpf_redirect_peer(dst->ifindex, 0);
}

#endif
