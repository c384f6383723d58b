// SPDX-License-Identifier: GPL-2.0
/* Programs on the node's own devices.
 *
 * from_host: TCX egress of ciliate_host, i.e. what the node itself sends
 *   towards pod addresses it routes through ciliate_host (remote PodCIDRs in
 *   tunnel mode). Today it hands everything on unchanged.
 * from_netdev: TCX ingress of the native device (eth0), i.e. what arrives from
 *   the network between nodes. Packets for a pod on this node go straight to
 *   it; everything else goes to the stack. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/eth.h"
#include "lib/lookup.h"
#include "lib/deliver.h"

char _license[] SEC("license") = "GPL";

SEC("classifier/from_host")
int from_host(struct __sk_buff *skb)
{
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
		return deliver_local(skb, &pi, cfg, dst, TRACE_FROM_NETDEV, METRIC_INGRESS);
	return TC_ACT_OK;
}
