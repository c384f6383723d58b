// SPDX-License-Identifier: GPL-2.0
/* Programs on the node's own devices.
 *
 * from_host: TCX egress of ciliate_host, i.e. what the node itself sends
 *   towards pod addresses it routes through ciliate_host (in tunnel mode the
 *   agent routes every remote PodCIDR `dev ciliate_host`, which has NOARP).
 *   What the ipcache puts behind another node's tunnel endpoint goes into the
 *   tunnel with the host identity; a pod on this node gets it directly;
 *   everything else goes on unchanged.
 * from_netdev: TCX ingress of the native device (eth0), i.e. what arrives from
 *   the network between nodes. IPv4 for a pod on this node goes straight to
 *   it; everything else (ARP, the tunnel's UDP, traffic for the node itself)
 *   goes to the stack untouched. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/eth.h"
#include "lib/lookup.h"
#include "lib/deliver.h"
#include "lib/encap.h"

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

	if ((void *)(eth + 1) > data_end || eth->h_proto != ETH_P_IP_BE)
		return TC_ACT_OK;
	pi.eth_proto = eth->h_proto;
	if (!cfg || !cfg->router_ip)
		return TC_ACT_OK;
	if (parse_ipv4(data, data_end, &ip, &pi) < 0)
		return drop(skb, &pi, DROP_INVALID, METRIC_EGRESS);

	dst = endpoint(ip->daddr);
	if (dst)
		return deliver_local(skb, &pi, cfg, dst, TRACE_FROM_HOST, METRIC_INGRESS,
				     HOOK_EGRESS);
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
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end || eth->h_proto != ETH_P_IP_BE)
		return TC_ACT_OK;
	pi.eth_proto = eth->h_proto;
	if (!cfg || !cfg->router_ip)
		return TC_ACT_OK;
	if (parse_ipv4(data, data_end, &ip, &pi) < 0)
		return drop(skb, &pi, DROP_INVALID, METRIC_INGRESS);
	dst = endpoint(ip->daddr);
	if (dst)
		return deliver_local(skb, &pi, cfg, dst, TRACE_FROM_NETDEV, METRIC_INGRESS,
				     HOOK_INGRESS);
	return TC_ACT_OK;
}
