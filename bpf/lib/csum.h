/* Rewriting addresses and ports of TCP/UDP packets and ICMP echoes with their checksums kept
 * valid: the one place that changes a tuple in a packet (DNAT, SNAT and both
 * reverse translations go through l4_rewrite). */
#ifndef CILIATE_CSUM_H
#define CILIATE_CSUM_H

#include <stddef.h>
#include "common.h"
#include "events.h"
#include "eth.h"

#define IP_CSUM_OFF (sizeof(struct ethhdr) + offsetof(struct iphdr, check))
#define IP_SADDR_OFF (sizeof(struct ethhdr) + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (sizeof(struct ethhdr) + offsetof(struct iphdr, daddr))

#define REWRITE_SRC 0
#define REWRITE_DST 1

/* Folds a 32-bit one's complement sum (bpf_csum_diff's result) to the 16-bit
 * checksum field. */
static __always_inline __u16 csum_fold(__s64 csum)
{
	__u32 sum = (__u32)csum;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Where the L4 checksum of pi's packet is. */
static __always_inline __u32 l4_csum_off(const struct pkt_info *pi)
{
	if (pi->proto == IPPROTO_TCP)
		return pi->l4_off + 16;
	if (pi->proto == IPPROTO_UDP)
		return pi->l4_off + 6;
	return pi->l4_off + ICMP_CSUM_OFF;
}

/* Replaces the source or destination (which: REWRITE_*) address and port of
 * the TCP/UDP packet, or ICMP echo, pi describes; fixes the IP header
 * checksum and the L4 checksum, and updates pi to the new tuple. TCP and UDP
 * checksums cover the addresses through their pseudo header; the ICMP
 * checksum has none, so only the echo identifier (the "port", one field for
 * both directions) changes it. A UDP checksum of 0 (none) stays 0.
 * Invalidates packet pointers. Returns 0, or -1 when a helper refused
 * (truncated L4 header). */
static __always_inline int l4_rewrite(struct __sk_buff *skb, struct pkt_info *pi, int which,
				      __be32 new_addr, __be16 new_port)
{
	__u32 csum_off = l4_csum_off(pi);
	__u64 l4_flags = pi->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be32 old_addr = which == REWRITE_SRC ? pi->src_ip : pi->dst_ip;
	__be16 old_port = which == REWRITE_SRC ? pi->sport : pi->dport;
	int icmp = pi->proto == IPPROTO_ICMP;
	__u32 port_off;

	if (old_addr != new_addr) {
		if (!icmp && bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
						 l4_flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, which == REWRITE_SRC ? IP_SADDR_OFF : IP_DADDR_OFF,
					&new_addr, sizeof(new_addr), 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (icmp)
			port_off = pi->l4_off + ICMP_ECHO_ID_OFF;
		else
			port_off = pi->l4_off + (which == REWRITE_SRC ? 0 : 2);
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					l4_flags | sizeof(new_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return -1;
	}
	if (which == REWRITE_SRC) {
		pi->src_ip = new_addr;
		pi->sport = new_port;
	} else {
		pi->dst_ip = new_addr;
		pi->dport = new_port;
	}
	return 0;
}

#endif
