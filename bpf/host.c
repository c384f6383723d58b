// SPDX-License-Identifier: GPL-2.0
/* Programs on the node's own devices.
 *
 * from_host: TCX egress of ciliate_host, i.e. what the node's stack sends
 *   towards pod addresses: the node's PodCIDR is routed `dev ciliate_host`
 *   (NOARP), and in tunnel mode every remote PodCIDR too. A pod on this node
 *   gets it directly, after what only traffic from the stack needs (a
 *   reply from a host-network service backend is reverse-translated, a
 *   connection netfilter translated is recorded); what the ipcache puts
 *   behind another node's tunnel endpoint goes into the tunnel with the host
 *   identity; everything else goes on unchanged.
 * from_netdev: TCX ingress of the native device (eth0), i.e. what arrives from
 *   the network between nodes. IPv4 for a pod on this node goes straight to
 *   it (reverse-translated first if it replies to a service connection;
 *   to an ipvlan pod by passing it to the ipvlan driver: lib/deliver.h);
 *   NodePort/LoadBalancer/externalIP traffic from outside is load-balanced
 *   and replies of NodePort connections forwarded to other nodes go back to
 *   their clients (lib/nodeport.h); everything else (ARP, the tunnel's UDP,
 *   traffic for the node itself) goes to the stack untouched. Replies to
 *   masqueraded pod connections are translated back and delivered to the pod.
 * to_netdev: TCX egress of the native device: masquerading (lib/masq.h),
 *   and what an ipvlan pod sends to a veth endpoint of this node. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/eth.h"
#include "lib/lookup.h"
#include "lib/deliver.h"
#include "lib/encap.h"
#include "lib/lb.h"
#include "lib/nodeport.h"
#include "lib/masq.h"

char _license[] SEC("license") = "GPL";

/* Directions, from the endpoints' point of view: towards a pod on this node is
 * METRIC_INGRESS, leaving the node (into the tunnel, or on) is METRIC_EGRESS. */
SEC("classifier/from_host")
int from_host(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct datapath_config *cfg = config();
	struct ethhdr *eth = data;
	struct ipcache_value *remote;
	struct pkt_info pi = {};
	struct endpoint_info *dst;
	struct iphdr *ip;
	__u32 lifetime;
	int ret;

	if ((void *)(eth + 1) > data_end || eth->h_proto != ETH_P_IP_BE)
		return TC_ACT_OK;
	pi.eth_proto = eth->h_proto;
	if (!cfg || !cfg->router_ip)
		return TC_ACT_OK;
	if (parse_ipv4(data, data_end, &ip, &pi) < 0)
		return drop(skb, &pi, DROP_INVALID, METRIC_EGRESS);

	dst = endpoint(ip->daddr);
	if (dst) {
		/* Pods and other nodes reach a pod with bpf_redirect_peer: only
		 * what the stack routes gets here. A reply from a host-network
		 * backend (pod -> ClusterIP -> node IP:6443) gets its frontend
		 * back as source; anything else may be a connection netfilter
		 * translated (a hostPort), whose replies only netfilter can
		 * translate back. For an ipvlan pod from_netdev does both, on
		 * the master's ingress, where deliver_local sends it. */
		pi.dst_ep = dst->lxc_id;
		if (pi.has_ports && !(dst->flags & ENDPOINT_F_IPVLAN)) {
			ret = lb4_reply(skb, &pi, cfg, METRIC_INGRESS, &lifetime);
			if (ret != LB_NONE && ret != LB_XLATED)
				return ret;
			if (ret == LB_NONE)
				masq_track_via_stack(skb, &pi, cfg);
		}
		return deliver_local(skb, &pi, cfg, dst, TRACE_FROM_HOST, METRIC_INGRESS,
				     HOOK_EGRESS);
	}
	remote = ipcache(ip->daddr);
	if (remote && remote->tunnel_endpoint)
		return encap_to_node(skb, &pi, cfg, remote, IDENTITY_HOST, METRIC_EGRESS);
	trace(skb, &pi, cfg, TRACE_FROM_HOST, METRIC_EGRESS, 0);
	return TC_ACT_OK;
}

SEC("classifier/from_netdev")
int from_netdev(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct datapath_config *cfg = config();
	struct ethhdr *eth = data;
	struct pkt_info pi = {};
	struct endpoint_info *dst;
	struct nat4_entry *nat;
	struct iphdr *ip;
	__u32 lifetime;
	int ret;

	if ((void *)(eth + 1) > data_end || eth->h_proto != ETH_P_IP_BE)
		return TC_ACT_OK;
	pi.eth_proto = eth->h_proto;
	if (!cfg || !cfg->router_ip)
		return TC_ACT_OK;
	if (parse_ipv4(data, data_end, &ip, &pi) < 0)
		return drop(skb, &pi, DROP_INVALID, METRIC_INGRESS);
	dst = endpoint(ip->daddr);
	if (dst) {
		/* A reply to a local client pod whose backend is elsewhere. */
		ret = lb4_reply(skb, &pi, cfg, METRIC_INGRESS, &lifetime);
		if (ret != LB_NONE && ret != LB_XLATED)
			return ret;
		/* Else perhaps a connection from outside, whose replies must
		 * not be masqueraded. */
		if (ret == LB_NONE) {
			ret = masq_track_inbound(skb, &pi, cfg);
			if (ret)
				return ret;
		}
		return deliver_local(skb, &pi, cfg, dst, TRACE_FROM_NETDEV, METRIC_INGRESS,
				     HOOK_INGRESS);
	}
	/* A reply to a connection this node SNATed: of a pod that reached
	 * outside (masquerading), or from a backend on another node (NodePort,
	 * native routing). One lookup tells which. An ICMP echo reply's
	 * identifier is its "port" here. Masquerade mappings count only while
	 * BPF masquerades: pinned ones left from before a switch to iptables
	 * (or off) must not capture replies netfilter's conntrack owns now. */
	if (pi.proto == IPPROTO_ICMP) {
		if (masq_pull(skb, MASQ_PULL_LEN) < 0)
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		parse_icmp_echo(data, data_end, &pi);
	}
	nat = snat4_reply_mapping(&pi, cfg,
				  NAT_F_NODEPORT |
					  ((cfg->masquerade & MASQ_F_BPF) ? NAT_F_MASQUERADE : 0));
	if (nat) {
		if (nat->flags & NAT_F_MASQUERADE)
			return masq_reply(skb, &pi, cfg, nat);
		return nodeport_reply(skb, &pi, cfg, nat);
	}
	/* An ICMP error about a masqueraded packet goes to its pod. */
	if (cfg->masquerade & MASQ_F_BPF) {
		ret = masq_icmp_error(skb, &pi, cfg);
		if (ret != LB_NONE)
			return ret;
	}
	/* A new or established connection to an outside-reachable frontend. */
	ret = nodeport_lb(skb, &pi, cfg);
	if (ret != LB_NONE)
		return ret;
	return TC_ACT_OK;
}

/* Masquerading (lib/masq.h): what leaves through the native device, whether
 * from_container redirected it here (bpf_redirect / bpf_redirect_neigh pass
 * this hook) or the stack forwards it. Without MASQ_F_BPF it costs the
 * config lookup and lets everything through. Nothing is counted here unless
 * dropped: the packet was counted where it was routed.
 * Before that, a packet for a veth endpoint of this node (the health
 * endpoint) that an ipvlan pod sent: the ipvlan driver routes what its pods
 * send with a lookup bound to the master, which never finds the endpoint's
 * lxc route and sends it towards the default gateway. It is delivered here
 * instead (lib/deliver.h). */
SEC("classifier/to_netdev")
int to_netdev(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct datapath_config *cfg = config();
	struct ethhdr *eth = data;
	struct endpoint_info *dst;
	struct pkt_info pi = {};
	struct iphdr *ip;

	if (!cfg)
		return TC_ACT_OK;
	if ((void *)(eth + 1) > data_end || eth->h_proto != ETH_P_IP_BE)
		return TC_ACT_OK;
	pi.eth_proto = eth->h_proto;
	if (parse_ipv4(data, data_end, &ip, &pi) < 0)
		return TC_ACT_OK;
	dst = endpoint(ip->daddr);
	if (dst && !(dst->flags & ENDPOINT_F_IPVLAN))
		return deliver_local(skb, &pi, cfg, dst, TRACE_TO_ENDPOINT, METRIC_INGRESS,
				     HOOK_EGRESS);

	if (!(cfg->masquerade & MASQ_F_BPF) || !cfg->node_ip)
		return TC_ACT_OK;
	/* The TCP flags and the ICMP echo header decide: they must be linear. */
	if (masq_pull(skb, MASQ_PULL_LEN) < 0)
		return TC_ACT_OK;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (parse_ipv4(data, data_end, &ip, &pi) < 0)
		return TC_ACT_OK;
	return masq_snat(skb, &pi, cfg);
}
