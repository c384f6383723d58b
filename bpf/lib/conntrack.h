/* Conntrack of translated connections (ciliate_ct4_tcp for TCP,
 * ciliate_ct4_any for the rest): lookups, creation, and the per-packet update
 * of counters, TCP state and lifetime. Lifetimes are CLOCK_MONOTONIC seconds;
 * the agent's GC deletes entries whose lifetime has passed. */
#ifndef CILIATE_CONNTRACK_H
#define CILIATE_CONNTRACK_H

#include "common.h"
#include "maps.h"
#include "events.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define CT_TX 0 /* the client's direction */
#define CT_RX 1 /* the reply's direction */

#define CT_F_CLOSING (CT_F_TX_CLOSING | CT_F_RX_CLOSING)

static __always_inline __u32 ct_now(void)
{
	return bpf_ktime_get_ns() / 1000000000ULL;
}

static __always_inline void *ct_map(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return &ciliate_ct4_tcp;
	return &ciliate_ct4_any;
}

static __always_inline struct ct4_entry *ct_lookup(const struct ct4_key *key)
{
	return bpf_map_lookup_elem(ct_map(key->proto), key);
}

/* The client's tuple of the packet pi describes, with key flags. */
static __always_inline void ct_key_of(struct ct4_key *key, const struct pkt_info *pi, __u8 flags)
{
	key->daddr = pi->dst_ip;
	key->saddr = pi->src_ip;
	key->dport = pi->dport;
	key->sport = pi->sport;
	key->proto = pi->proto;
	key->flags = flags;
	key->pad = 0;
}

/* The tuple of the original direction when pi is a reply. */
static __always_inline void ct_key_reverse_of(struct ct4_key *key, const struct pkt_info *pi)
{
	key->daddr = pi->src_ip;
	key->saddr = pi->dst_ip;
	key->dport = pi->sport;
	key->sport = pi->dport;
	key->proto = pi->proto;
	key->flags = 0;
	key->pad = 0;
}

/* A new entry with the given fields, inserted with BPF_NOEXIST: when another
 * CPU created the same tuple first, its entry wins and is returned instead, so
 * the caller must take the backend from the result, never from its own
 * arguments. Returns NULL when the map refused. */
static __always_inline struct ct4_entry *ct_create(const struct ct4_key *key, __u32 rev_nat_index,
						   __u32 backend_id, __be32 frontend_addr,
						   __u16 flags, __u32 now)
{
	struct ct4_entry entry = {
		.created = now,
		.lifetime = now,
		.backend_id = backend_id,
		.rev_nat_index = rev_nat_index,
		.frontend_addr = frontend_addr,
		.flags = flags,
	};

	/* On -EEXIST the lookup finds the winner's entry. */
	bpf_map_update_elem(ct_map(key->proto), key, &entry, BPF_NOEXIST);
	return ct_lookup(key);
}

/* How long an idle connection in this state lives: SYN sent and no answer
 * yet, established, closing (FIN or RST seen from both sides, or a RST), or
 * not TCP. */
static __always_inline __u32 ct_timeout(const struct datapath_config *cfg, __u8 proto,
					__u16 flags)
{
	if (proto != IPPROTO_TCP)
		return cfg->ct_timeout_any;
	if ((flags & CT_F_CLOSING) == CT_F_CLOSING)
		return cfg->ct_timeout_tcp_fin;
	if (!(flags & CT_F_SEEN_REPLY))
		return cfg->ct_timeout_tcp_syn;
	return cfg->ct_timeout_tcp;
}

/* Accounts one packet of direction dir (CT_TX, CT_RX) to the entry and
 * renews its lifetime for the state the packet leaves it in. */
static __always_inline void ct_account(struct ct4_entry *ct, const struct datapath_config *cfg,
				       const struct pkt_info *pi, int dir, __u32 len, __u32 now)
{
	__u8 tcp = pi->proto == IPPROTO_TCP ? pi->tcp_flags : 0;
	__u16 flags = ct->flags;

	if (dir == CT_TX) {
		/* A fresh SYN on a closed tuple is a new connection reusing it. */
		if ((tcp & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			flags &= ~(CT_F_CLOSING | CT_F_SEEN_REPLY);
		ct->tx_packets += 1;
		ct->tx_bytes += len;
		ct->tx_flags_seen |= tcp;
		if (tcp & TCP_FLAG_FIN)
			flags |= CT_F_TX_CLOSING;
	} else {
		ct->rx_packets += 1;
		ct->rx_bytes += len;
		ct->rx_flags_seen |= tcp;
		flags |= CT_F_SEEN_REPLY;
		if (tcp & TCP_FLAG_FIN)
			flags |= CT_F_RX_CLOSING;
	}
	/* A reset ends the connection for both sides at once. */
	if (tcp & TCP_FLAG_RST)
		flags |= CT_F_CLOSING;
	ct->flags = flags;
	ct->lifetime = now + ct_timeout(cfg, pi->proto, flags);
}

#endif
