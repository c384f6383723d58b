/* Packet parsing helpers shared by the programs. */
#ifndef CILIATE_ETH_H
#define CILIATE_ETH_H

#include "common.h"

#define ETH_P_ARP_BE bpf_htons(0x0806)
#define ETH_P_IP_BE bpf_htons(0x0800)
#define ARPOP_REQUEST_BE bpf_htons(1)
#define ARPOP_REPLY_BE bpf_htons(2)
/* IPv4 frag_off bits (host order): more fragments, fragment offset. */
#ifndef IP_MF
#define IP_MF 0x2000
#endif
#ifndef IP_OFFSET
#define IP_OFFSET 0x1FFF
#endif

/* ICMP echo (request and reply): the identifier plays the port of both ends
 * (Cilium's convention). A request's tuple is (src, id) -> (dst, 0), a
 * reply's (src, 0) -> (dst, id), so a reply's tuple is the request's
 * reversed, as for TCP and UDP. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMP_ECHO_ID_OFF 4  /* from the ICMP header's start */
#define ICMP_CSUM_OFF 2

/* An Ethernet/IPv4 ARP message, header and body together. */
struct arp_eth {
	__be16 hw_type;
	__be16 proto;
	__u8 hw_len;
	__u8 proto_len;
	__be16 op;
	__u8 sha[6];
	__be32 sip;
	__u8 tha[6];
	__be32 tip;
} __attribute__((packed));

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 6);
}

/* RFC 1624 incremental update, as the kernel's ip_decrease_ttl. */
static __always_inline void ip_decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

/* Fills addresses and ports of an IPv4 packet into pi. Returns 0, or -1 if the
 * headers are truncated. */
static __always_inline int parse_ipv4(void *data, void *data_end, struct iphdr **ipp,
				      struct pkt_info *pi)
{
	struct iphdr *ip = data + sizeof(struct ethhdr);

	if ((void *)(ip + 1) > data_end || ip->ihl < 5)
		return -1;
	pi->src_ip = ip->saddr;
	pi->dst_ip = ip->daddr;
	pi->proto = ip->protocol;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		__u16 *ports = (void *)ip + ip->ihl * 4;

		/* Fragments after the first carry no ports; leave them at 0. */
		pi->is_frag = !!(ip->frag_off & bpf_htons(IP_MF | IP_OFFSET));
		if (!(ip->frag_off & bpf_htons(IP_OFFSET)) && (void *)(ports + 2) <= data_end) {
			__u8 *flags = (__u8 *)ports + 13;

			pi->sport = ports[0];
			pi->dport = ports[1];
			pi->l4_off = sizeof(struct ethhdr) + ip->ihl * 4;
			pi->has_ports = 1;
			if (ip->protocol == IPPROTO_TCP && (void *)(flags + 1) <= data_end)
				pi->tcp_flags = *flags;
		}
	}
	*ipp = ip;
	return 0;
}

/* Fills the tuple of an ICMP echo request or reply into pi (see above):
 * l4_off and the identifier as sport (request) or dport (reply), without
 * has_ports, which stays the mark of TCP and UDP for services. Returns the
 * ICMP type, or -1 when pi's packet is not an unfragmented ICMP echo whose
 * header is readable. */
static __always_inline int parse_icmp_echo(void *data, void *data_end, struct pkt_info *pi)
{
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u8 *icmp;
	__be16 id;

	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_ICMP)
		return -1;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	icmp = (void *)ip + ip->ihl * 4;
	if ((void *)(icmp + 8) > data_end)
		return -1;
	id = *(__be16 *)(icmp + ICMP_ECHO_ID_OFF);
	if (icmp[0] == ICMP_ECHO) {
		pi->sport = id;
		pi->dport = 0;
	} else if (icmp[0] == ICMP_ECHOREPLY) {
		pi->sport = 0;
		pi->dport = id;
	} else {
		return -1;
	}
	pi->l4_off = sizeof(struct ethhdr) + ip->ihl * 4;
	return icmp[0];
}

#endif
