// SPDX-License-Identifier: GPL-2.0
/* Programs on the host side of each pod's veth (lxc*), or the policy of its
 * netkit pair (datapathMode: netkit).
 *
 * from_container: TCX ingress of the lxc device, i.e. every packet the pod
 *   sends (netkit: the peer's policy, run when the pod's end transmits).
 *   It answers ARP for the router IP, delivers to pods on this node with
 *   bpf_redirect_peer (from a netkit peer with bpf_redirect, see pod_hook),
 *   sends what the ipcache puts behind another node's
 *   tunnel endpoint into the tunnel, and routes everything else with a FIB
 *   lookup out of the native device (BPF host routing), or hands it to the
 *   host stack when the FIB says it is for this node. Before that, services:
 *   a reply of a connection translated to this pod gets its frontend back as
 *   source (a NodePort reply then routes out to the outside client), and a
 *   packet to a frontend is DNATed to a backend (lib/lb.h). In iptables
 *   masquerading mode what would leave through the FIB goes to the stack.
 * from_container_ipvlan: the same for a pod whose eth0 is an ipvlan L3 slave
 *   (datapathMode ipvlan), tail-called by bpf/ipvlan.c's entry on the slave's
 *   tc egress inside the pod's namespace. No device of the node can be
 *   reached from there, so every packet it lets go is passed (TC_ACT_OK) to
 *   the ipvlan driver, translated first: the driver hands it to a sibling
 *   slave or routes it in the node's namespace out of the master (to the
 *   node, to other nodes, to a NodePort client, to be masqueraded by
 *   to_netdev). See lib/deliver.h.
 * Nothing runs where the lxc device sends into the pod, which saves an
 * attach (an RCU grace period under RTNL) per endpoint: every BPF delivery
 * enters the pod directly, and the node routes what its stack sends to pods
 * through ciliate_host, whose from_host (host.c) delivers it.
 * Verdicts mean the same at both kinds of hook: TC_ACT_OK / TC_ACT_SHOT /
 * TC_ACT_REDIRECT are netkit's NETKIT_PASS / NETKIT_DROP / NETKIT_REDIRECT. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/eth.h"
#include "lib/lookup.h"
#include "lib/deliver.h"
#include "lib/encap.h"
#include "lib/fib.h"
#include "lib/lb.h"
#include "lib/masq.h"
#include "lib/ipvlan.h"

char _license[] SEC("license") = "GPL";

/* Answers the pod's ARP request for its gateway with the MAC of its lxc device,
 * so that every packet the pod routes comes to from_container. */
static __always_inline int handle_arp(struct __sk_buff *skb, struct pkt_info *pi,
				      const struct datapath_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth *arp = data + sizeof(*eth);
	struct endpoint_info *ep;
	__be32 sip;

	if ((void *)(arp + 1) > data_end)
		return drop(skb, pi, DROP_INVALID_ARP, METRIC_EGRESS);
	pi->src_ip = arp->sip;
	pi->dst_ip = arp->tip;
	if (arp->hw_type != bpf_htons(1) || arp->proto != ETH_P_IP_BE || arp->hw_len != 6 ||
	    arp->proto_len != 4)
		return drop(skb, pi, DROP_INVALID_ARP, METRIC_EGRESS);
	/* The host resolving the pod's address: the pod's answer goes to the stack. */
	if (arp->op == ARPOP_REPLY_BE) {
		trace(skb, pi, cfg, TRACE_TO_STACK, METRIC_EGRESS, 0);
		return TC_ACT_OK;
	}
	if (arp->op != ARPOP_REQUEST_BE)
		return drop(skb, pi, DROP_INVALID_ARP, METRIC_EGRESS);
	if (arp->tip != cfg->router_ip)
		return drop(skb, pi, DROP_ARP_NOT_ROUTER, METRIC_EGRESS);

	ep = endpoint(arp->sip);
	if (!ep || ep->ifindex != skb->ifindex)
		return drop(skb, pi, DROP_INVALID_SIP, METRIC_EGRESS);
	pi->src_ep = ep->lxc_id;

	sip = arp->sip;
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, ep->node_mac);
	arp->op = ARPOP_REPLY_BE;
	mac_copy(arp->tha, arp->sha);
	arp->tip = sip;
	mac_copy(arp->sha, ep->node_mac);
	arp->sip = cfg->router_ip;

	trace(skb, pi, cfg, TRACE_ARP_REPLY, METRIC_EGRESS, skb->ifindex);
	return bpf_redirect(skb->ifindex, 0);
}

/* The hook this pod's from_container runs at. A netkit pod's runs when its
 * peer transmits, which is no tc ingress hook: the kernel drops what
 * bpf_redirect_peer sends from there, so its deliveries go through the
 * destination's host device instead (bpf_redirect, as from an egress hook). */
static __always_inline __u8 pod_hook(const struct endpoint_info *src)
{
	return (src->flags & ENDPOINT_F_NETKIT) ? HOOK_EGRESS : HOOK_INGRESS;
}

static __always_inline int handle_ipv4(struct __sk_buff *skb, struct pkt_info *pi,
				       const struct datapath_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct endpoint_info *src, *dst;
	struct ipcache_value *remote;
	struct iphdr *ip;
	__be32 daddr, saddr;
	int ret;

	if (parse_ipv4(data, data_end, &ip, pi) < 0)
		return drop(skb, pi, DROP_INVALID, METRIC_EGRESS);
	saddr = ip->saddr;

	/* A pod may only send from its own address, and only through its own
	 * device: a veth pod's lxc, an ipvlan pod's slave, whose entry program
	 * named the address (an ipvlan endpoint's ifindex is its master's). */
	src = endpoint(ip->saddr);
	if (!src || !(src->flags & ENDPOINT_F_IPVLAN) != !pi->in_pod)
		return drop(skb, pi, DROP_INVALID_SIP, METRIC_EGRESS);
	if (pi->in_pod ? skb->cb[IPVLAN_CB_ENDPOINT_IP] != saddr : src->ifindex != skb->ifindex)
		return drop(skb, pi, DROP_INVALID_SIP, METRIC_EGRESS);
	pi->src_ep = src->lxc_id;

	daddr = ip->daddr;
	dst = endpoint(daddr);
	remote = dst ? NULL : ipcache(daddr);
	/* Services: a reply of a translated connection is translated back
	 * (this pod is the backend); anything else may be for a frontend
	 * (never a pod's address). Then the packet goes on to where its
	 * (new) destination is. */
	if (pi->has_ports) {
		__u32 lifetime;

		ret = lb4_reply(skb, pi, cfg, METRIC_EGRESS, &lifetime);
		if (ret == LB_NONE && !dst)
			ret = lb4_from_pod(skb, pi, cfg, remote);
		if (ret != LB_NONE && ret != LB_XLATED)
			return ret;
		if (pi->dst_ip != daddr) {
			daddr = pi->dst_ip;
			dst = endpoint(daddr);
			remote = dst ? NULL : ipcache(daddr);
		}
	}

	if (dst)
		return deliver_local(skb, pi, cfg, dst, TRACE_TO_ENDPOINT, METRIC_EGRESS,
				     pi->in_pod ? HOOK_POD_EGRESS : pod_hook(src));
	/* ipvlan: the driver routes it in the node's namespace, out of the
	 * master (or to the node itself), where to_netdev still sees it. */
	if (pi->in_pod) {
		trace(skb, pi, cfg, TRACE_TO_STACK, METRIC_EGRESS, 0);
		return TC_ACT_OK;
	}
	/* A reply of a connection the stack delivered (a hostPort): only
	 * netfilter can translate it back. */
	if (masq_reply_via_stack(skb, pi, cfg)) {
		trace(skb, pi, cfg, TRACE_TO_STACK, METRIC_EGRESS, 0);
		return TC_ACT_OK;
	}
	/* Behind another node's tunnel endpoint: the agent sets those only in
	 * tunnel mode, so their presence is the whole decision. */
	if (remote && remote->tunnel_endpoint)
		return encap_to_node(skb, pi, cfg, remote,
				     src->sec_identity ? src->sec_identity : cfg->identity,
				     METRIC_EGRESS);
	/* iptables masquerading: netfilter must see what leaves. */
	if (masq_via_stack(cfg, pi, saddr)) {
		trace(skb, pi, cfg, TRACE_TO_STACK, METRIC_EGRESS, 0);
		return TC_ACT_OK;
	}
	/* The node itself or beyond it (a NodePort reply to an outside
	 * client included): the FIB routes it out of the native device, or
	 * hands it to the stack. */
	return fib_redirect(skb, pi, cfg, METRIC_EGRESS);
}

static __always_inline int from_pod(struct __sk_buff *skb, __u8 in_pod)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct datapath_config *cfg = config();
	struct ethhdr *eth = data;
	struct pkt_info pi = { .in_pod = in_pod };

	if ((void *)(eth + 1) > data_end)
		return drop(skb, &pi, DROP_INVALID, METRIC_EGRESS);
	pi.eth_proto = eth->h_proto;
	if (!cfg || !cfg->router_ip)
		return drop(skb, &pi, DROP_NO_CONFIG, METRIC_EGRESS);

	/* An ipvlan L3 slave has no ARP (IFF_NOARP), and its driver would
	 * drop whatever is not IP. */
	if (eth->h_proto == ETH_P_ARP_BE && !in_pod)
		return handle_arp(skb, &pi, cfg);
	if (eth->h_proto == ETH_P_IP_BE)
		return handle_ipv4(skb, &pi, cfg);
	return drop(skb, &pi, DROP_UNSUPPORTED_L3, METRIC_EGRESS);
}

SEC("classifier/from_container")
int from_container(struct __sk_buff *skb)
{
	return from_pod(skb, 0);
}

SEC("classifier/from_container_ipvlan")
int from_container_ipvlan(struct __sk_buff *skb)
{
	return from_pod(skb, 1);
}
