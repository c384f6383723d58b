/* The answer to a connection attempt to a service without backends: an ICMP
 * destination unreachable (port unreachable) built from the client's packet
 * and sent back out of the device it came in on, so the client fails fast
 * instead of waiting for a timeout (an ipvlan pod's: into its device's
 * ingress, the way back from its egress). The client's packet itself counts as a
 * DROP_NO_SERVICE drop. */
#ifndef CILIATE_ICMP_H
#define CILIATE_ICMP_H

#include "common.h"
#include "events.h"
#include "csum.h"
#include "eth.h"

/* <linux/icmp.h> drags in libc headers, so the few bits needed are here. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

/* Quoted from the client's packet: its IP header and the start of its L4
 * header. RFC 792 asks for 8 bytes; a TCP packet gets its whole 20-byte
 * header, because a pod's TCP packets carry CHECKSUM_PARTIAL and the kernel
 * refuses to cut a packet in front of the checksum field it still has to
 * fill (bpf_skb_change_tail's minimum length). */
#define ICMP_QUOTE_UDP (sizeof(struct iphdr) + 8)
#define ICMP_QUOTE_TCP (sizeof(struct iphdr) + 20)
/* What goes in front of the quote. */
#define ICMP_ROOM (sizeof(struct iphdr) + sizeof(struct icmphdr))

struct icmp_reply_hdr {
	struct iphdr ip;
	struct icmphdr icmp;
};

struct icmp_csum_buf {
	struct icmphdr icmp;
	__u8 quote[ICMP_QUOTE_TCP];
};

/* Builds and sends the answer with a quote of quote_len bytes (a constant at
 * each call site, so the verifier sees fixed sizes). */
static __always_inline int icmp_answer(struct __sk_buff *skb, struct pkt_info *pi,
				       const struct datapath_config *cfg, __u8 dir,
				       const __u32 quote_len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct icmp_reply_hdr hdr = {};
	struct icmp_csum_buf buf = {};
	__u8 macs[12];

	if (data + sizeof(*eth) + quote_len > data_end)
		return TC_ACT_SHOT;
	mac_copy(macs, eth->h_source);
	mac_copy(macs + 6, eth->h_dest);

	hdr.ip.version = 4;
	hdr.ip.ihl = 5;
	hdr.ip.tot_len = bpf_htons(ICMP_ROOM + quote_len);
	hdr.ip.ttl = 64;
	hdr.ip.protocol = IPPROTO_ICMP;
	/* From the address the client tried, so it matches its socket. */
	hdr.ip.saddr = ip->daddr;
	hdr.ip.daddr = ip->saddr;
	hdr.ip.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&hdr.ip, sizeof(hdr.ip), 0));
	hdr.icmp.type = ICMP_DEST_UNREACH;
	hdr.icmp.code = ICMP_PORT_UNREACH;

	/* Cut the client's packet to its quote, then open room for the new
	 * headers between the Ethernet header and the quote. */
	if (bpf_skb_change_tail(skb, sizeof(struct ethhdr) + quote_len, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, ICMP_ROOM, BPF_ADJ_ROOM_MAC, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + ICMP_ROOM, buf.quote, quote_len) < 0)
		return TC_ACT_SHOT;
	buf.icmp = hdr.icmp;
	hdr.icmp.checksum = csum_fold(
		bpf_csum_diff(NULL, 0, (__be32 *)&buf, sizeof(buf.icmp) + quote_len, 0));
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &hdr, sizeof(hdr), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return TC_ACT_SHOT;

	pi->src_ip = hdr.ip.saddr;
	pi->dst_ip = hdr.ip.daddr;
	pi->proto = IPPROTO_ICMP;
	pi->sport = 0;
	pi->dport = 0;
	trace(skb, pi, cfg, TRACE_NO_SERVICE_REPLY, dir, skb->ifindex);
	/* From the pod's own egress (ipvlan), back up into the pod. */
	return bpf_redirect(skb->ifindex, pi->in_pod ? BPF_F_INGRESS : 0);
}

static __always_inline int icmp_port_unreachable(struct __sk_buff *skb, struct pkt_info *pi,
						 const struct datapath_config *cfg, __u8 dir)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);

	count(skb, DROP_NO_SERVICE, dir);
	emit(skb, pi, EVENT_DROP, DROP_NO_SERVICE, dir, 0);
	/* The quote is fixed-size: packets with IP options get no answer. */
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return TC_ACT_SHOT;
	if (ip->protocol == IPPROTO_TCP)
		return icmp_answer(skb, pi, cfg, dir, ICMP_QUOTE_TCP);
	return icmp_answer(skb, pi, cfg, dir, ICMP_QUOTE_UDP);
}

#endif
