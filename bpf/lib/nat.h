/* Source NAT of a connection (TCP, UDP, or ICMP echo whose identifier is the
 * port): the EGRESS mapping (client tuple -> new source)
 * and the INGRESS mapping (reply tuple -> the client), both in ciliate_snat4,
 * and the choice of a free source port. The two mappings of a connection are
 * kept alive together: a packet in either direction renews both and puts back
 * a twin the LRU or GC removed, so one never outlives the other. */
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

/* Outcomes of nat_claim. */
#define NAT_CLAIM_TAKEN -1   /* another connection holds the reply tuple */
#define NAT_CLAIM_REUSED 0   /* it already maps back to this client: renewed */
#define NAT_CLAIM_INSERTED 1 /* it was free and is ours now */

/* Makes the INGRESS mapping key -> entry (the client) exist. A reply tuple
 * is never shared: an existing mapping is reused only if it leads back to
 * the same client. The lookup comes before the BPF_NOEXIST update because a
 * failed update into a full LRU map still evicts a live entry to make room. */
static __always_inline int nat_claim(const struct ct4_key *key, const struct nat4_entry *entry)
{
	struct nat4_entry *cur = bpf_map_lookup_elem(&ciliate_snat4, key);

	if (!cur) {
		if (bpf_map_update_elem(&ciliate_snat4, key, entry, BPF_NOEXIST) == 0)
			return NAT_CLAIM_INSERTED;
		/* Another CPU inserted it between the lookup and the update. */
		cur = bpf_map_lookup_elem(&ciliate_snat4, key);
		if (!cur)
			return NAT_CLAIM_TAKEN;
	}
	if (cur->to_addr != entry->to_addr || cur->to_port != entry->to_port)
		return NAT_CLAIM_TAKEN;
	cur->lifetime = entry->lifetime;
	return NAT_CLAIM_REUSED;
}

/* SNATs the packet pi describes to to_addr with the port its connection
 * already has, or a new one: the client's own port if it is in the NAT range,
 * else (or when taken) random ones, NAT_COLLISION_RETRIES times. Both
 * mappings get nat_flags and live until lifetime. Returns LB_XLATED or a drop
 * verdict. */
static __always_inline int snat4(struct __sk_buff *skb, struct pkt_info *pi, __be32 to_addr,
				 __u16 nat_flags, __u32 lifetime, __u8 dir)
{
	struct ct4_key egress, ingress;
	struct nat4_entry entry = {};
	struct nat4_entry *nat;
	int i, claim = NAT_CLAIM_TAKEN;
	__be16 to_port;
	__u16 port;

	ct_key_of(&egress, pi, NAT_DIR_EGRESS);
	/* The reply's tuple, but for the port (and address) chosen below. */
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

	nat = bpf_map_lookup_elem(&ciliate_snat4, &egress);
	if (nat) {
		ingress.daddr = nat->to_addr;
		ingress.dport = nat->to_port;
		if (nat_claim(&ingress, &entry) != NAT_CLAIM_TAKEN) {
			nat->lifetime = lifetime;
			to_addr = nat->to_addr;
			to_port = nat->to_port;
			goto rewrite;
		}
		/* The INGRESS twin was lost and its reply tuple went to another
		 * connection since: this one needs a new port. */
		bpf_map_delete_elem(&ciliate_snat4, &egress);
	}

	ingress.daddr = to_addr;
	port = bpf_ntohs(pi->sport);
	if (port < NAT_PORT_MIN)
		port = nat_random_port();
	for (i = 0; i <= NAT_COLLISION_RETRIES; i++) {
		ingress.dport = bpf_htons(port);
		claim = nat_claim(&ingress, &entry);
		if (claim != NAT_CLAIM_TAKEN)
			break;
		port = nat_random_port();
	}
	if (claim == NAT_CLAIM_TAKEN)
		return drop(skb, pi, DROP_NAT_NO_MAPPING, dir);
	to_port = ingress.dport;
	entry.to_addr = to_addr;
	entry.to_port = to_port;
	if (bpf_map_update_elem(&ciliate_snat4, &egress, &entry, BPF_NOEXIST) < 0) {
		/* Another CPU mapped the same connection first: use its
		 * mapping, and free the reply tuple taken here for nothing. */
		if (claim == NAT_CLAIM_INSERTED)
			bpf_map_delete_elem(&ciliate_snat4, &ingress);
		nat = bpf_map_lookup_elem(&ciliate_snat4, &egress);
		if (!nat)
			return drop(skb, pi, DROP_NAT_FAILED, dir);
		nat->lifetime = lifetime;
		to_addr = nat->to_addr;
		to_port = nat->to_port;
	}
rewrite:
	if (l4_rewrite(skb, pi, REWRITE_SRC, to_addr, to_port) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	return LB_XLATED;
}

/* The mapping a packet replies to, if it is addressed to a NAT port of this
 * node (TCP/UDP destination port or ICMP echo identifier, see
 * parse_icmp_echo) and the INGRESS mapping there carries one of nat_flags.
 * SNAT only hands out ports from NAT_PORT_MIN up: other traffic to the node
 * (SSH, the tunnel's UDP, the kubelet) needs no lookup. NULL if none. One
 * lookup serves every kind of SNAT: the caller dispatches on the flags. */
static __always_inline struct nat4_entry *snat4_reply_mapping(const struct pkt_info *pi,
							      const struct datapath_config *cfg,
							      __u16 nat_flags)
{
	struct nat4_entry *m;
	struct ct4_key key;

	if (!cfg->node_ip || pi->dst_ip != cfg->node_ip || bpf_ntohs(pi->dport) < NAT_PORT_MIN)
		return NULL;
	if (pi->proto != IPPROTO_ICMP && !pi->has_ports)
		return NULL;
	ct_key_of(&key, pi, NAT_DIR_INGRESS);
	m = bpf_map_lookup_elem(&ciliate_snat4, &key);
	if (!m || !(m->flags & nat_flags))
		return NULL;
	return m;
}

/* A reply to a connection snat4 translated, whose INGRESS mapping m
 * snat4_reply_mapping found: the destination becomes the client again.
 * Returns LB_XLATED or a drop verdict. egress is the key of the mapping's
 * EGRESS twin, for snat4_renew once the lifetime is known. */
static __always_inline int snat4_reply(struct __sk_buff *skb, struct pkt_info *pi,
				       const struct nat4_entry *m, __u8 dir,
				       struct ct4_key *egress)
{
	if (pi->is_frag)
		return drop(skb, pi, DROP_FRAG_NOSUPPORT, dir);
	egress->saddr = m->to_addr;
	egress->sport = m->to_port;
	egress->daddr = pi->src_ip;
	egress->dport = pi->sport;
	egress->proto = pi->proto;
	egress->flags = NAT_DIR_EGRESS;
	egress->pad = 0;
	if (l4_rewrite(skb, pi, REWRITE_DST, m->to_addr, m->to_port) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	return LB_XLATED;
}

/* Renews both mappings of a connection on its reply: the INGRESS mapping
 * nat (at reply_dst:reply_dport, the translated source) and its EGRESS twin,
 * put back if it was lost so the client's next packet keeps the port. */
static __always_inline void snat4_renew(struct nat4_entry *nat, const struct ct4_key *egress,
					__be32 reply_dst, __be16 reply_dport, __u32 lifetime)
{
	struct nat4_entry twin = {
		.to_addr = reply_dst,
		.to_port = reply_dport,
		.flags = nat->flags,
		.lifetime = lifetime,
		.created = nat->created,
	};
	struct nat4_entry *e;

	nat->lifetime = lifetime;
	e = bpf_map_lookup_elem(&ciliate_snat4, egress);
	if (e)
		e->lifetime = lifetime;
	else
		bpf_map_update_elem(&ciliate_snat4, egress, &twin, BPF_NOEXIST);
}

#endif
