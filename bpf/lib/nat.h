/* Source NAT of a connection: the EGRESS mapping (client tuple -> new source)
 * and the INGRESS mapping (reply tuple -> the client), both in ciliate_snat4,
 * and the choice of a free source port. */
#ifndef CILIATE_NAT_H
#define CILIATE_NAT_H

#include "common.h"
#include "maps.h"
#include "events.h"
#include "csum.h"
#include "lb.h"

static __always_inline __u16 nat_random_port(void)
{
	return NAT_PORT_MIN + bpf_get_prandom_u32() % (NAT_PORT_MAX - NAT_PORT_MIN + 1);
}

/* SNATs the packet pi describes to to_addr with the port its connection
 * already has, or a new one: the client's own port if it is in the NAT range,
 * else (or on collision) random ones, NAT_COLLISION_RETRIES times. The
 * INGRESS mapping is inserted with BPF_NOEXIST, so two connections can never
 * share a reply tuple. Both mappings get nat_flags and live until lifetime.
 * Returns LB_XLATED or a drop verdict. */
static __always_inline int snat4(struct __sk_buff *skb, struct pkt_info *pi, __be32 to_addr,
				 __u16 nat_flags, __u32 lifetime, __u8 dir)
{
	struct ct4_key egress, ingress;
	struct nat4_entry entry = {};
	struct nat4_entry *nat;
	__u16 port;
	__be16 to_port;
	int i, found = 0;

	ct_key_of(&egress, pi, NAT_DIR_EGRESS);
	nat = bpf_map_lookup_elem(&ciliate_snat4, &egress);
	if (nat) {
		nat->lifetime = lifetime;
		to_port = nat->to_port;
		to_addr = nat->to_addr;
	} else {
		ingress.daddr = to_addr;
		ingress.saddr = pi->dst_ip;
		ingress.sport = pi->dport;
		ingress.proto = pi->proto;
		ingress.flags = NAT_DIR_INGRESS;
		ingress.pad = 0;
		entry.to_addr = pi->src_ip;
		entry.to_port = pi->sport;
		entry.flags = nat_flags;
		entry.lifetime = lifetime;
		entry.created = ct_now();
		port = bpf_ntohs(pi->sport);
		if (port < NAT_PORT_MIN)
			port = nat_random_port();
		for (i = 0; i <= NAT_COLLISION_RETRIES; i++) {
			ingress.dport = bpf_htons(port);
			if (bpf_map_update_elem(&ciliate_snat4, &ingress, &entry, BPF_NOEXIST) == 0) {
				found = 1;
				break;
			}
			port = nat_random_port();
		}
		if (!found)
			return drop(skb, pi, DROP_NAT_NO_MAPPING, dir);
		to_port = ingress.dport;
		entry.to_addr = to_addr;
		entry.to_port = to_port;
		if (bpf_map_update_elem(&ciliate_snat4, &egress, &entry, BPF_ANY) < 0) {
			bpf_map_delete_elem(&ciliate_snat4, &ingress);
			return drop(skb, pi, DROP_NAT_FAILED, dir);
		}
	}
	if (l4_rewrite(skb, pi, REWRITE_SRC, to_addr, to_port) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	return LB_XLATED;
}

/* A reply to a connection snat4 translated (its INGRESS mapping carries
 * nat_flags): the destination becomes the client again. Returns LB_NONE when
 * there is no mapping, LB_XLATED, or a drop verdict; *nat is the mapping. */
static __always_inline int snat4_reply(struct __sk_buff *skb, struct pkt_info *pi,
				       __u16 nat_flags, __u8 dir, struct nat4_entry **nat)
{
	struct nat4_entry *m;
	struct ct4_key key;

	ct_key_of(&key, pi, NAT_DIR_INGRESS);
	m = bpf_map_lookup_elem(&ciliate_snat4, &key);
	if (!m || !(m->flags & nat_flags))
		return LB_NONE;
	if (l4_rewrite(skb, pi, REWRITE_DST, m->to_addr, m->to_port) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	*nat = m;
	return LB_XLATED;
}

#endif
