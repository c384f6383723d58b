// SPDX-License-Identifier: GPL-2.0
/* from_overlay: TCX ingress of the node's external-mode tunnel device
 * (ciliate_vxlan). The kernel has already removed the outer headers; the
 * tunnel key still says which node sent the packet and, in its VNI, the
 * identity of the sending pod. Packets for a pod on this node go straight
 * to it (reverse-translated first if they reply to a service connection);
 * replies of NodePort connections this node forwarded go back to their
 * outside clients; the rest (this node's own addresses) go to the stack,
 * marked as addressed to this host. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/eth.h"
#include "lib/lookup.h"
#include "lib/deliver.h"
#include "lib/lb.h"
#include "lib/nodeport.h"

char _license[] SEC("license") = "GPL";

SEC("classifier/from_overlay")
int from_overlay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct datapath_config *cfg = config();
	struct ethhdr *eth = data;
	struct bpf_tunnel_key key = {};
	struct pkt_info pi = {};
	struct endpoint_info *dst;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end)
		return drop(skb, &pi, DROP_INVALID, METRIC_INGRESS);
	pi.eth_proto = eth->h_proto;
	if (!cfg || !cfg->router_ip)
		return drop(skb, &pi, DROP_NO_CONFIG, METRIC_INGRESS);
	if (eth->h_proto != ETH_P_IP_BE)
		return drop(skb, &pi, DROP_UNSUPPORTED_L3, METRIC_INGRESS);
	if (parse_ipv4(data, data_end, &ip, &pi) < 0)
		return drop(skb, &pi, DROP_INVALID, METRIC_INGRESS);
	/* The sender's identity; none when the packet carries no tunnel key. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		pi.src_identity = key.tunnel_id;

	dst = endpoint(ip->daddr);
	if (dst) {
		__u32 lifetime;
		/* A reply to a local client pod whose backend is elsewhere. */
		int ret = lb4_reply(skb, &pi, cfg, METRIC_INGRESS, &lifetime);

		if (ret != LB_NONE && ret != LB_XLATED)
			return ret;
		return deliver_local(skb, &pi, cfg, dst, TRACE_FROM_OVERLAY, METRIC_INGRESS,
				     HOOK_INGRESS);
	}
	/* A reply from the backend of a NodePort connection this node
	 * forwarded to another node: back to the outside client. */
	{
		struct nat4_entry *nat = snat4_reply_mapping(&pi, cfg, NAT_F_NODEPORT);

		if (nat)
			return nodeport_reply(skb, &pi, cfg, nat);
	}
	/* The inner frame is addressed to the sender's device (its lxc or
	 * ciliate_host MAC), not to the tunnel device, so the stack would take
	 * it for another host's (PACKET_OTHERHOST) and drop it. */
	if (skb->pkt_type == PACKET_OTHERHOST)
		bpf_skb_change_type(skb, PACKET_HOST);
	trace(skb, &pi, cfg, TRACE_TO_STACK, METRIC_INGRESS, 0);
	return TC_ACT_OK;
}
