/* Masquerading: pod traffic that leaves the cluster leaves with the node's
 * IP. The one place that decides which packets are masqueraded (BPF mode, on
 * the native device's egress: to_netdev) or handed to iptables (iptables
 * mode, from from_container), and that translates their replies back
 * (from_netdev).
 *
 * Lifetimes: every masqueraded connection has a conntrack entry of its own,
 * keyed by the pod's tuple as it leaves (before SNAT) with CT_KEY_MASQ, so it
 * never meets the service entries (flags 0, CT_KEY_SERVICE) of the same
 * tuple, e.g. a pod that reached an outside backend through a ClusterIP.
 * ct_account keeps its TCP state (SYN, answered, FIN or RST from each side)
 * and lifetime exactly as for services, and both NAT mappings get that
 * lifetime on every packet. So a finished flow's three entries expire
 * together ct_timeout_tcp_fin after its last FIN/RST and the agent's GC
 * deletes them; an unanswered SYN lives ct_timeout_tcp_syn, UDP and ICMP
 * ct_timeout_any. State bits in the NAT entries would have saved a lookup
 * but duplicated the TCP state machine conntrack already has.
 *
 * Connections from outside to a pod (native routing, the source neither in
 * the ipcache nor in ipv4NativeRoutingCIDR or ip-masq-agent's list) get a
 * CT_KEY_MASQ entry with CT_F_INBOUND from from_netdev, under the same key
 * as the pod's replies, so those leave with the pod's address, with the
 * same lifetimes. A pod's TCP packet or echo reply that needs masquerading
 * but has no mapping and no such entry (its mapping expired, or it was
 * made before a restart of the maps) is dropped, DROP_MASQ_NO_MAPPING.
 *
 * Not handled (BPF mode):
 * - IP fragments that would be masqueraded are dropped (DROP_FRAG_MASQ):
 *   only the first carries ports.
 * - Protocols other than TCP, UDP and ICMP echo (SCTP, GRE, the pod's own
 *   ICMP errors) leave untranslated, with the pod's address.
 * - An ICMP error about a pod's connection through a service to an outside
 *   backend is translated back to the pod, but its quote keeps the backend
 *   as destination, not the frontend the pod used: the pod's stack may not
 *   match it to the socket. */
#ifndef CILIATE_MASQ_H
#define CILIATE_MASQ_H

#include "common.h"
#include "maps.h"
#include "events.h"
#include "eth.h"
#include "lookup.h"
#include "conntrack.h"
#include "deliver.h"
#include "lb.h"
#include "nat.h"

/* What masq.h reads of a packet: Ethernet, an IPv4 header with the largest
 * options, and a TCP header without options (whose flags decide) or, of an
 * ICMP error, the outer ICMP header plus the quoted IP header and 8 bytes. */
#define MASQ_PULL_LEN (sizeof(struct ethhdr) + 60 + 20)

/* Makes the first len bytes of the packet (or all of a shorter one) linear,
 * so data/data_end reach them: a driver or GRO may leave all but the first
 * headers in page fragments, and an ICMP error's quote then looks truncated
 * and a TCP header's flags absent. Costs nothing when they already are.
 * Invalidates every packet pointer: callers load data/data_end again.
 * Returns 0, or -1 when the pull failed. */
static __always_inline int masq_pull(struct __sk_buff *skb, __u32 len)
{
	if (len > skb->len)
		len = skb->len;
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	return bpf_skb_pull_data(skb, len) < 0 ? -1 : 0;
}

/* Is addr in the cluster as far as the datapath knows without ip-masq-agent:
 * a pod or node (the ipcache) or in ipv4NativeRoutingCIDR. */
static __always_inline int masq_in_cluster(const struct datapath_config *cfg, __be32 addr)
{
	__u32 plen = cfg->native_routing_prefixlen;

	if (ipcache(addr))
		return 1;
	if (plen) {
		__be32 mask = plen >= 32 ? 0xffffffff : bpf_htonl(~((1U << (32 - plen)) - 1));

		if ((addr & mask) == (cfg->native_routing_cidr & mask))
			return 1;
	}
	return 0;
}

/* Is daddr inside the cluster or a network reachable without NAT: pods and
 * nodes (the ipcache), ipv4NativeRoutingCIDR, and with ip-masq-agent its
 * nonMasqueradeCIDRs (link-local included unless masqLinkLocal: the agent
 * writes it there). */
static __always_inline int masq_excluded(const struct datapath_config *cfg, __be32 daddr)
{
	struct ipmasq_key key = { .prefixlen = 32, .ip4 = daddr };

	if (masq_in_cluster(cfg, daddr))
		return 1;
	if ((cfg->masquerade & MASQ_F_IP_MASQ_AGENT) &&
	    bpf_map_lookup_elem(&ciliate_ipmasq4, &key))
		return 1;
	return 0;
}

/* Whether pi's packet, about to leave through the native device, must leave
 * with the node's address: its source is a pod of this node and its
 * destination is outside (masq_excluded). Sets pi->src_ep. */
static __always_inline int masq_needed(const struct datapath_config *cfg, struct pkt_info *pi)
{
	struct endpoint_info *src = endpoint(pi->src_ip);

	if (!src)
		return 0;
	pi->src_ep = src->lxc_id;
	return !masq_excluded(cfg, pi->dst_ip);
}

/* iptables mode: from_container hands the pod's packet that it would route
 * out itself (fib_redirect) to the stack instead, so netfilter's POSTROUTING
 * (the agent's CILIATE_POST_nat chain) masquerades it. Only traffic that
 * leaves the cluster: towards a pod or node on another node (native routing)
 * fib_redirect keeps both directions of the flow out of host conntrack
 * (replies come back by from_netdev, never through netfilter, which would
 * see one direction only and drop it as INVALID). ip-masq-agent's CIDRs are
 * the chain's business (RETURN rules). Only while the source is still the
 * pod's own address pod_ip: a service reply whose source from_container
 * already made the frontend (a NodePort reply from the node IP) must not be
 * masqueraded again. */
static __always_inline int masq_via_stack(const struct datapath_config *cfg,
					  const struct pkt_info *pi, __be32 pod_ip)
{
	return (cfg->masquerade & MASQ_F_IPTABLES) && pi->src_ip == pod_ip &&
	       !masq_in_cluster(cfg, pi->dst_ip);
}

/* to_netdev in BPF mode: SNATs pi's packet to the node IP when masq_needed.
 * A mapping is made only for a connection the pod starts (TCP SYN without
 * ACK, UDP, ICMP echo request); any packet of a flow that has one uses it.
 * A reply of a connection from outside that masq_track_inbound recorded
 * leaves untouched, as do the pod's ICMP errors and protocols without
 * ports. A TCP packet or echo reply of neither kind is dropped
 * (DROP_MASQ_NO_MAPPING) rather than leak the pod's address.
 * Returns TC_ACT_OK or a drop verdict. */
static __always_inline int masq_snat(struct __sk_buff *skb, struct pkt_info *pi,
				     const struct datapath_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct pkt_info orig;
	struct ct4_key key;
	struct ct4_entry *ct;
	__u16 ct_flags = 0;
	int new_conn, ret;
	__u32 now;

	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	if (pi->proto != IPPROTO_TCP && pi->proto != IPPROTO_UDP && pi->proto != IPPROTO_ICMP)
		return TC_ACT_OK;
	if (!masq_needed(cfg, pi))
		return TC_ACT_OK;
	/* Fragments after the first carry no ports (and the first cannot be
	 * told apart from them once translated): none leaves with the
	 * pod's address, each is a counted drop. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return drop(skb, pi, DROP_FRAG_MASQ, METRIC_EGRESS);
	if (pi->proto == IPPROTO_ICMP) {
		ret = parse_icmp_echo(data, data_end, pi);
		if (ret < 0)
			return TC_ACT_OK;
		new_conn = ret == ICMP_ECHO;
	} else {
		if (!pi->has_ports)
			return drop(skb, pi, DROP_INVALID, METRIC_EGRESS);
		new_conn = pi->proto == IPPROTO_UDP ||
			   (pi->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	}

	now = ct_now();
	ct_key_of(&key, pi, CT_KEY_MASQ);
	ct = ct_lookup(&key);
	if (ct && (ct->flags & CT_F_INBOUND)) {
		/* A closed inbound connection's tuple reused by a connection
		 * the pod starts: that one is masqueraded. */
		if (pi->proto == IPPROTO_TCP && new_conn &&
		    (ct->flags & CT_F_CLOSING) == CT_F_CLOSING) {
			bpf_map_delete_elem(ct_map(key.proto), &key);
			ct = NULL;
		} else {
			/* The pod answers a connection from outside. */
			ct_account(ct, cfg, pi, CT_RX, skb->len, now);
			return TC_ACT_OK;
		}
	}
	if (!ct) {
		if (!new_conn) {
			/* The connection entry was lost (LRU) but the flow
			 * still has its mapping: it goes on with it. Without
			 * one the packet belongs to no connection the pod
			 * started nor one from_netdev saw come in: it must
			 * not leave with the pod's private address. */
			struct nat4_entry *m;

			key.flags = NAT_DIR_EGRESS;
			m = bpf_map_lookup_elem(&ciliate_snat4, &key);
			if (!m || !(m->flags & NAT_F_MASQUERADE))
				return drop(skb, pi, DROP_MASQ_NO_MAPPING, METRIC_EGRESS);
			key.flags = CT_KEY_MASQ;
			ct_flags = CT_F_SEEN_REPLY;
		}
		ct = ct_create(&key, 0, 0, 0, ct_flags, now);
		if (!ct)
			return drop(skb, pi, DROP_CT_CREATE_FAILED, METRIC_EGRESS);
	}
	ct_account(ct, cfg, pi, CT_TX, skb->len, now);

	orig = *pi;
	ret = snat4(skb, pi, cfg->node_ip, NAT_F_MASQUERADE, ct->lifetime, METRIC_EGRESS);
	if (ret != LB_XLATED)
		return ret;
	trace_nat(skb, &orig, cfg, TRACE_SNAT, METRIC_EGRESS, pi->src_ip, pi->sport);
	return TC_ACT_OK;
}

/* from_netdev in BPF mode, before delivering pi's packet to a local pod:
 * a connection from outside the cluster (a source whose replies to_netdev
 * would masquerade) gets a CT_KEY_MASQ entry with CT_F_INBOUND, keyed by the
 * pod's reply tuple as masq_snat looks it up, so the pod's replies leave
 * untranslated (the client expects the address it connected to) and carry
 * its state. Started by a TCP SYN without ACK, UDP, an ICMP echo request;
 * later packets of the connection renew it. Returns 0, or a drop verdict. */
static __always_inline int masq_track_inbound(struct __sk_buff *skb, struct pkt_info *pi,
					      const struct datapath_config *cfg)
{
	struct ct4_key key;
	struct ct4_entry *ct;
	int start;
	__u32 now;

	if (!(cfg->masquerade & MASQ_F_BPF) || !cfg->node_ip)
		return 0;
	if (pi->proto == IPPROTO_ICMP) {
		void *data, *data_end;

		if (masq_pull(skb, MASQ_PULL_LEN) < 0)
			return 0;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (parse_icmp_echo(data, data_end, pi) != ICMP_ECHO)
			return 0;
		start = 1;
	} else if (pi->proto == IPPROTO_TCP || pi->proto == IPPROTO_UDP) {
		if (!pi->has_ports || pi->is_frag)
			return 0;
		start = pi->proto == IPPROTO_UDP ||
			(pi->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	} else {
		return 0;
	}
	if (masq_excluded(cfg, pi->src_ip))
		return 0;
	ct_key_reverse_of(&key, pi);
	key.flags = CT_KEY_MASQ;
	now = ct_now();
	ct = ct_lookup(&key);
	if (!ct) {
		if (!start)
			return 0;
		ct = ct_create(&key, 0, 0, 0, CT_F_INBOUND, now);
		if (!ct)
			return drop(skb, pi, DROP_CT_CREATE_FAILED, METRIC_INGRESS);
	}
	/* A connection the pod started on the same tuple is masqueraded:
	 * its replies never come here. */
	if (!(ct->flags & CT_F_INBOUND))
		return 0;
	/* The outside client is the connection's client (CT_TX). */
	ct_account(ct, cfg, pi, CT_TX, skb->len, now);
	return 0;
}

/* from_host: a connection the host stack delivers to a pod from a source
 * that is neither a pod of this node nor the node itself gets a CT_KEY_MASQ
 * entry with CT_F_INBOUND | CT_F_VIA_STACK, keyed by the pod's reply tuple,
 * so that from_container hands the replies back to the stack
 * (masq_reply_via_stack). Such a connection is one netfilter translated: a
 * hostPort the reference portmap plugin DNATs, from outside or from another
 * node or its pods (they reach the node's address, and the node routes the
 * result to the pod). Only netfilter can undo its translation: routed by
 * fib_redirect or into the tunnel the replies would leave with the pod's
 * address (and to_netdev would drop them, DROP_MASQ_NO_MAPPING). Nothing
 * else for a pod reaches this hook from elsewhere: pods and other nodes'
 * traffic for a pod is delivered with bpf_redirect_peer.
 * The node's own connections (kubelet's probes) need no entry: replies to
 * the node's addresses go to the stack anyway (fib_redirect), and they would
 * fill the table. TCP and UDP; started by a TCP SYN without ACK or any UDP
 * packet; later packets renew it. */
static __always_inline void masq_track_via_stack(struct __sk_buff *skb, struct pkt_info *pi,
						 const struct datapath_config *cfg)
{
	struct ipcache_value *src;
	struct ct4_key key;
	struct ct4_entry *ct;
	__u32 now;

	if (pi->proto != IPPROTO_TCP && pi->proto != IPPROTO_UDP)
		return;
	if (!pi->has_ports || pi->is_frag || endpoint(pi->src_ip))
		return;
	ct_key_reverse_of(&key, pi);
	key.flags = CT_KEY_MASQ;
	now = ct_now();
	ct = ct_lookup(&key);
	if (!ct) {
		if (pi->proto == IPPROTO_TCP &&
		    (pi->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
			return;
		src = ipcache(pi->src_ip);
		if (src && src->sec_identity == IDENTITY_HOST)
			return;
		ct = ct_create(&key, 0, 0, 0, CT_F_INBOUND | CT_F_VIA_STACK, now);
		if (!ct)
			return;
	}
	if (!(ct->flags & CT_F_VIA_STACK))
		return;
	ct_account(ct, cfg, pi, CT_TX, skb->len, now);
}

/* from_container: whether pi's packet is a pod's reply of a connection
 * masq_track_via_stack recorded, which must go back through the stack.
 * Accounts it to the connection. */
static __always_inline int masq_reply_via_stack(struct __sk_buff *skb, struct pkt_info *pi,
						const struct datapath_config *cfg)
{
	struct ct4_key key;
	struct ct4_entry *ct;

	if (pi->proto != IPPROTO_TCP && pi->proto != IPPROTO_UDP)
		return 0;
	if (!pi->has_ports || pi->is_frag)
		return 0;
	/* A connection the pod starts is never one the stack delivered. */
	if (pi->proto == IPPROTO_TCP &&
	    (pi->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return 0;
	ct_key_of(&key, pi, CT_KEY_MASQ);
	ct = ct_lookup(&key);
	if (!ct || !(ct->flags & CT_F_VIA_STACK))
		return 0;
	ct_account(ct, cfg, pi, CT_RX, skb->len, ct_now());
	return 1;
}

/* from_netdev: a reply to a masqueraded connection, whose INGRESS mapping nat
 * (NAT_F_MASQUERADE) snat4_reply_mapping found. Its destination becomes the
 * pod again, the connection's state and all three entries' lifetimes follow
 * the reply; a reply from an outside backend the pod reached through a
 * service gets the frontend as source (lb4_reply); then it is delivered to
 * the pod. Returns the verdict. */
static __always_inline int masq_reply(struct __sk_buff *skb, struct pkt_info *pi,
				      const struct datapath_config *cfg, struct nat4_entry *nat)
{
	__be32 nat_addr = pi->dst_ip;
	__be16 nat_port = pi->dport;
	struct endpoint_info *dst;
	struct ct4_key egress, key;
	struct ct4_entry *ct;
	__u32 now = ct_now();
	__u32 lifetime;
	int ret;

	dst = endpoint(nat->to_addr);
	if (!dst)
		return drop(skb, pi, DROP_MASQ_NO_ENDPOINT, METRIC_INGRESS);
	ret = snat4_reply(skb, pi, nat, METRIC_INGRESS, &egress);
	if (ret != LB_XLATED)
		return ret;
	key = egress;
	key.flags = CT_KEY_MASQ;
	ct = ct_lookup(&key);
	if (!ct)
		ct = ct_create(&key, 0, 0, 0, 0, now);
	if (!ct)
		return drop(skb, pi, DROP_CT_CREATE_FAILED, METRIC_INGRESS);
	ct_account(ct, cfg, pi, CT_RX, skb->len, now);
	snat4_renew(nat, &egress, nat_addr, nat_port, ct->lifetime);
	trace_nat(skb, pi, cfg, TRACE_REV_SNAT, METRIC_INGRESS, nat_addr, nat_port);

	if (pi->has_ports) {
		ret = lb4_reply(skb, pi, cfg, METRIC_INGRESS, &lifetime);
		if (ret != LB_NONE && ret != LB_XLATED)
			return ret;
	}
	return deliver_local(skb, pi, cfg, dst, TRACE_FROM_NETDEV, METRIC_INGRESS, HOOK_INGRESS);
}

/* Offsets in an ICMP error about a masqueraded packet, for an outer and a
 * quoted IPv4 header without options (anything else is left to the stack). */
#define ICMPERR_OFF (sizeof(struct ethhdr) + sizeof(struct iphdr))
#define ICMPERR_CSUM_OFF (ICMPERR_OFF + ICMP_CSUM_OFF)
#define ICMPERR_INNER_OFF (ICMPERR_OFF + 8)
#define ICMPERR_INNER_L4_OFF (ICMPERR_INNER_OFF + sizeof(struct iphdr))
#define ICMP_DEST_UNREACH_T 3 /* frag needed included (code 4) */
#define ICMP_TIME_EXCEEDED_T 11

/* from_netdev: an ICMP error (destination unreachable, fragmentation needed,
 * time exceeded) sent to the node IP about a packet to_netdev masqueraded.
 * The quoted packet left as node IP:NAT port, so the error is translated
 * like its connection's reply: the outer destination becomes the pod, the
 * quote's source address and port (or echo identifier) the pod's, with the
 * outer IP, the quoted IP and the ICMP checksum kept valid (the quote's own
 * TCP/UDP checksum, which receivers do not check and which is often cut off,
 * is left as it is); then it is delivered to the pod. Returns LB_NONE when
 * pi is not such an error, else the verdict. */
static __always_inline int masq_icmp_error(struct __sk_buff *skb, struct pkt_info *pi,
					   const struct datapath_config *cfg)
{
	void *data, *data_end;
	struct iphdr *ip, *inner;
	__u8 *icmp, *l4;
	__be32 old_addr, new_addr;
	__be16 old_port, new_port;
	__sum16 old_check, new_check;
	struct endpoint_info *dst;
	struct nat4_entry *m;
	struct ct4_key key;
	__u32 port_off;

	if (!cfg->node_ip || pi->dst_ip != cfg->node_ip || pi->proto != IPPROTO_ICMP)
		return LB_NONE;
	if (masq_pull(skb, ICMPERR_INNER_L4_OFF + 8) < 0)
		return LB_NONE;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + sizeof(struct ethhdr);
	inner = data + ICMPERR_INNER_OFF;
	icmp = data + ICMPERR_OFF;
	l4 = data + ICMPERR_INNER_L4_OFF;
	if (l4 + 8 > (__u8 *)data_end || ip->ihl != 5 || inner->ihl != 5)
		return LB_NONE;
	if (icmp[0] != ICMP_DEST_UNREACH_T && icmp[0] != ICMP_TIME_EXCEEDED_T)
		return LB_NONE;
	if (inner->saddr != cfg->node_ip)
		return LB_NONE;
	/* The INGRESS mapping is keyed by the reply's tuple: the quote's reversed. */
	key.saddr = inner->daddr;
	key.daddr = inner->saddr;
	key.proto = inner->protocol;
	key.flags = NAT_DIR_INGRESS;
	key.pad = 0;
	if (inner->protocol == IPPROTO_TCP || inner->protocol == IPPROTO_UDP) {
		key.sport = *(__be16 *)(l4 + 2);
		key.dport = *(__be16 *)l4;
		port_off = ICMPERR_INNER_L4_OFF;
	} else if (inner->protocol == IPPROTO_ICMP && l4[0] == ICMP_ECHO) {
		key.sport = 0;
		key.dport = *(__be16 *)(l4 + ICMP_ECHO_ID_OFF);
		port_off = ICMPERR_INNER_L4_OFF + ICMP_ECHO_ID_OFF;
	} else {
		return LB_NONE;
	}
	if (bpf_ntohs(key.dport) < NAT_PORT_MIN)
		return LB_NONE;
	m = bpf_map_lookup_elem(&ciliate_snat4, &key);
	if (!m || !(m->flags & NAT_F_MASQUERADE))
		return LB_NONE;
	dst = endpoint(m->to_addr);
	if (!dst)
		return drop(skb, pi, DROP_MASQ_NO_ENDPOINT, METRIC_INGRESS);

	old_addr = cfg->node_ip;
	new_addr = m->to_addr;
	old_port = key.dport;
	new_port = m->to_port;
	old_check = inner->check;
	/* RFC 1624: the quoted header's checksum with its source replaced. */
	new_check = csum_fold(bpf_csum_diff(&old_addr, sizeof(old_addr), &new_addr,
					    sizeof(new_addr), (__u16)~old_check));
	/* The ICMP checksum covers the whole quote: each change goes into it. */
	if (bpf_l4_csum_replace(skb, ICMPERR_CSUM_OFF, old_port, new_port, sizeof(new_port)) < 0 ||
	    bpf_l4_csum_replace(skb, ICMPERR_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0 ||
	    bpf_l4_csum_replace(skb, ICMPERR_CSUM_OFF, old_check, new_check,
				sizeof(new_check)) < 0)
		return drop(skb, pi, DROP_CSUM, METRIC_INGRESS);
	if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ICMPERR_INNER_OFF + offsetof(struct iphdr, saddr), &new_addr,
				sizeof(new_addr), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ICMPERR_INNER_OFF + offsetof(struct iphdr, check),
				&new_check, sizeof(new_check), 0) < 0)
		return drop(skb, pi, DROP_CSUM, METRIC_INGRESS);
	/* The outer destination (no pseudo header in ICMP's checksum). */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0 ||
	    bpf_skb_store_bytes(skb, IP_DADDR_OFF, &new_addr, sizeof(new_addr), 0) < 0)
		return drop(skb, pi, DROP_CSUM, METRIC_INGRESS);
	pi->dst_ip = new_addr;
	trace_nat(skb, pi, cfg, TRACE_REV_SNAT, METRIC_INGRESS, old_addr, old_port);
	return deliver_local(skb, pi, cfg, dst, TRACE_FROM_NETDEV, METRIC_INGRESS, HOOK_INGRESS);
}

#endif
