/* NodePort, LoadBalancer and externalIP frontends reached from outside the
 * cluster, on the native device (from_netdev): DNAT to a backend, delivered
 * here when the backend is on this node, else SNATed to this node's IP and
 * forwarded (tunnel or FIB) so the reply comes back through this node. The
 * reply of a forwarded connection arrives at from_netdev (native routing) or
 * from_overlay (tunnel) addressed to the node IP: nodeport_reply restores
 * client and frontend and routes it back out to the client.
 * Needs cfg->node_ip; without it (no native device) nothing here applies. */
#ifndef CILIATE_NODEPORT_H
#define CILIATE_NODEPORT_H

#include "common.h"
#include "maps.h"
#include "events.h"
#include "lookup.h"
#include "deliver.h"
#include "encap.h"
#include "fib.h"
#include "lb.h"
#include "nat.h"

/* The reply of a connection nodeport_lb forwarded to another node, whose
 * INGRESS mapping (NAT_F_NODEPORT) snat4_reply_mapping found. Returns the
 * verdict. */
static __always_inline int nodeport_reply(struct __sk_buff *skb, struct pkt_info *pi,
					  const struct datapath_config *cfg,
					  struct nat4_entry *nat)
{
	__be16 nat_port = pi->dport;
	struct ct4_key egress;
	__u32 lifetime = 0;
	int ret;

	ret = snat4_reply(skb, pi, nat, METRIC_EGRESS, &egress);
	if (ret != LB_XLATED)
		return ret;
	ret = lb4_reply(skb, pi, cfg, METRIC_EGRESS, &lifetime);
	/* The NAT mapping outlived its connection entry: the frontend the
	 * client used is unknown, so the reply cannot be made right. */
	if (ret == LB_NONE)
		return drop(skb, pi, DROP_NAT_FAILED, METRIC_EGRESS);
	if (ret != LB_XLATED)
		return ret;
	snat4_renew(nat, &egress, cfg->node_ip, nat_port, lifetime);
	return fib_redirect(skb, pi, cfg, METRIC_EGRESS);
}

/* A packet from outside to an outside-reachable frontend on this node: the
 * node IP (NodePort wildcard) or an externalIP / LoadBalancer IP. Returns
 * LB_NONE when pi is not one, else the verdict. */
static __always_inline int nodeport_lb(struct __sk_buff *skb, struct pkt_info *pi,
				       const struct datapath_config *cfg)
{
	struct ct4_entry *conn = NULL;
	struct ipcache_value *remote;
	struct endpoint_info *dst;
	__be32 addr;
	int ret;

	if (!cfg->node_ip || !pi->has_ports)
		return LB_NONE;
	addr = pi->dst_ip == cfg->node_ip ? 0 : pi->dst_ip;
	ret = lb4_xlate(skb, pi, cfg, addr, LB_SCOPE_EXTERNAL, SVC_F_OUTSIDE, CT_F_NODEPORT,
			METRIC_INGRESS, &conn);
	if (ret != LB_XLATED)
		return ret;
	/* A host-network backend on this node: SNAT to the node's own IP
	 * would make the packet a martian to the stack, and DNAT alone would
	 * need a reverse NAT of the host's reply on its way out, which does
	 * not exist. Refuse it visibly instead. */
	if (pi->dst_ip == cfg->node_ip)
		return drop(skb, pi, DROP_HOST_BACKEND_UNSUPPORTED, METRIC_INGRESS);
	dst = endpoint(pi->dst_ip);
	if (dst)
		return deliver_local(skb, pi, cfg, dst, TRACE_FROM_NETDEV, METRIC_INGRESS,
				     HOOK_INGRESS);
	if (!conn)
		return drop(skb, pi, DROP_NAT_FAILED, METRIC_EGRESS);
	conn->flags |= CT_F_SNAT;
	ret = snat4(skb, pi, cfg->node_ip, NAT_F_NODEPORT, conn->lifetime, METRIC_EGRESS);
	if (ret != LB_XLATED)
		return ret;
	remote = ipcache(pi->dst_ip);
	if (remote && remote->tunnel_endpoint)
		return encap_to_node(skb, pi, cfg, remote, IDENTITY_HOST, METRIC_EGRESS);
	return fib_redirect(skb, pi, cfg, METRIC_EGRESS);
}

#endif
