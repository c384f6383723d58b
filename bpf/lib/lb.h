/* Service load balancing: the frontend lookup (exact or NodePort wildcard,
 * per scope), the backend choice (conntrack, sessionAffinity, random slot),
 * the DNAT of a client's packet, hairpin, and the reverse translation of
 * replies. Every program that translates calls lb4_xlate; every program that
 * may carry a reply to a translated connection calls lb4_reply before it
 * delivers or forwards. */
#ifndef CILIATE_LB_H
#define CILIATE_LB_H

#include "common.h"
#include "maps.h"
#include "events.h"
#include "lookup.h"
#include "conntrack.h"
#include "csum.h"
#include "icmp.h"

/* Outcomes besides a verdict for the kernel (TC_ACT_*). */
#define LB_NONE 0x100   /* nothing to translate: the caller goes on as before */
#define LB_XLATED 0x101 /* translated: pi holds the new tuple, the caller forwards */

/* Every slot-0 flag that makes a frontend reachable from outside the cluster. */
#define SVC_F_OUTSIDE (SVC_F_NODEPORT | SVC_F_EXTERNAL_IP | SVC_F_LOADBALANCER)

/* Is daddr an address of a node (this one, or another per the ipcache)? Then
 * NodePort frontends are looked up as the wildcard address 0. */
static __always_inline int is_node_address(const struct datapath_config *cfg, __be32 daddr,
					   const struct ipcache_value *remote)
{
	if (cfg->node_ip && daddr == cfg->node_ip)
		return 1;
	return remote && (remote->flags & IPCACHE_F_HOST);
}

/* Slot 0 of the frontend (addr, pi's dport and protocol) for scope, leaving
 * the key that found it in key for the slot lookups. A service with two
 * scopes answers an INTERNAL-scope lookup from its INTERNAL entry. */
static __always_inline struct lb4_service *lb4_lookup_service(struct lb4_key *key, __be32 addr,
							       const struct pkt_info *pi,
							       __u8 scope)
{
	struct lb4_service *svc, *internal;

	key->address = addr;
	key->dport = pi->dport;
	key->backend_slot = 0;
	key->proto = pi->proto;
	key->scope = LB_SCOPE_EXTERNAL;
	key->pad = 0;
	svc = bpf_map_lookup_elem(&ciliate_lb4_svc, key);
	if (!svc || scope != LB_SCOPE_INTERNAL || !(svc->flags & SVC_F_TWO_SCOPES))
		return svc;
	key->scope = LB_SCOPE_INTERNAL;
	internal = bpf_map_lookup_elem(&ciliate_lb4_svc, key);
	if (internal)
		return internal;
	/* The agent writes the INTERNAL entry right after the flag: until
	 * then the EXTERNAL one serves. */
	key->scope = LB_SCOPE_EXTERNAL;
	return svc;
}

/* A backend for a new connection from client: the one it had while its
 * affinity lasts and that backend is active, else a random slot. Returns the
 * backend id, 0 if none. */
static __always_inline __u32 lb4_pick(struct lb4_key *key, const struct lb4_service *svc,
				      __be32 client, __u32 now)
{
	struct lb4_affinity_key akey = { .client_ip = client, .rev_nat_index = svc->rev_nat_index };
	struct lb4_affinity_value aval = { .last_used = now };
	struct lb4_affinity_value *aff;
	struct lb4_service *slot;
	struct lb4_backend *be;

	if (svc->flags & SVC_F_AFFINITY) {
		aff = bpf_map_lookup_elem(&ciliate_lb4_aff, &akey);
		if (aff && now - aff->last_used <= svc->affinity_timeout) {
			__u32 id = aff->backend_id;

			be = bpf_map_lookup_elem(&ciliate_lb4_be, &id);
			if (be && be->state == BE_STATE_ACTIVE) {
				aff->last_used = now;
				return id;
			}
		}
	}
	if (!svc->count)
		return 0;
	key->backend_slot = bpf_get_prandom_u32() % svc->count + 1;
	slot = bpf_map_lookup_elem(&ciliate_lb4_svc, key);
	if (!slot)
		return 0;
	if (svc->flags & SVC_F_AFFINITY) {
		aval.backend_id = slot->backend_id;
		bpf_map_update_elem(&ciliate_lb4_aff, &akey, &aval, BPF_ANY);
	}
	return slot->backend_id;
}

/* Translates a client's packet to a service frontend: svc_addr is the
 * frontend address to look up (pi's destination, or 0 for the NodePort
 * wildcard), scope the side the client is on, required the slot-0 flags of
 * which one must be set (0 = any frontend), ct_flags the CT_F_* of a new
 * connection entry, dir the metrics direction. On LB_XLATED the packet and pi
 * are DNATed (and SNATed to IPV4_SVC_LOOPBACK for hairpin) and *conn is the
 * connection entry. Returns LB_NONE when no frontend matches. */
static __always_inline int lb4_xlate(struct __sk_buff *skb, struct pkt_info *pi,
				     const struct datapath_config *cfg, __be32 svc_addr, __u8 scope,
				     __u16 required, __u16 ct_flags, __u8 dir,
				     struct ct4_entry **conn)
{
	struct lb4_backend *be = NULL;
	struct ct4_entry *sct, *ct;
	struct ct4_key skey, ckey;
	struct lb4_service *svc;
	__be32 frontend = pi->dst_ip;
	__u32 backend_id = 0, rev_nat, now;
	__be32 be_addr;
	__be16 be_port;
	struct lb4_key key;
	int hairpin;

	svc = lb4_lookup_service(&key, svc_addr, pi, scope);
	if (!svc || (required && !(svc->flags & required)))
		return LB_NONE;
	/* Later fragments carry no ports and could not follow this one. */
	if (pi->is_frag)
		return drop(skb, pi, DROP_FRAG_NOSUPPORT, dir);
	rev_nat = svc->rev_nat_index;
	now = ct_now();

	/* An established connection keeps its backend while that exists,
	 * active or terminating. */
	ct_key_of(&skey, pi, CT_KEY_SERVICE);
	sct = ct_lookup(&skey);
	if (sct) {
		backend_id = sct->backend_id;
		be = bpf_map_lookup_elem(&ciliate_lb4_be, &backend_id);
	}
	if (!be) {
		if (!svc->count)
			return icmp_port_unreachable(skb, pi, cfg, dir);
		backend_id = lb4_pick(&key, svc, pi->src_ip, now);
		be = bpf_map_lookup_elem(&ciliate_lb4_be, &backend_id);
		if (!be)
			return drop(skb, pi, DROP_NO_SERVICE, dir);
		if (sct)
			sct->backend_id = backend_id;
		else
			sct = ct_create(&skey, rev_nat, backend_id, frontend, 0, now);
		if (!sct)
			return drop(skb, pi, DROP_CT_CREATE_FAILED, dir);
		/* Another CPU created the entry for the same flow first: its
		 * backend, so the flow never splits across two. */
		if (sct->backend_id != backend_id) {
			__u32 won = sct->backend_id;
			struct lb4_backend *wbe = bpf_map_lookup_elem(&ciliate_lb4_be, &won);

			if (wbe) {
				backend_id = won;
				be = wbe;
			} else {
				sct->backend_id = backend_id;
			}
		}
	}
	be_addr = be->address;
	be_port = be->port;

	/* Hairpin: the client is its own backend. It must see the packet
	 * come from elsewhere, or it would answer itself directly. */
	hairpin = be_addr == pi->src_ip;
	ckey.daddr = be_addr;
	ckey.saddr = hairpin ? IPV4_SVC_LOOPBACK : pi->src_ip;
	ckey.dport = be_port;
	ckey.sport = pi->sport;
	ckey.proto = pi->proto;
	ckey.flags = 0;
	ckey.pad = 0;
	ct = ct_lookup(&ckey);
	if (!ct)
		ct = ct_create(&ckey, rev_nat, backend_id, frontend,
			       ct_flags | (hairpin ? CT_F_LOOPBACK : 0), now);
	if (!ct)
		return drop(skb, pi, DROP_CT_CREATE_FAILED, dir);
	/* The same tuple may have served another frontend before. */
	ct->rev_nat_index = rev_nat;
	ct->frontend_addr = frontend;
	ct_account(ct, cfg, pi, CT_TX, skb->len, now);
	sct->lifetime = ct->lifetime;

	if (l4_rewrite(skb, pi, REWRITE_DST, be_addr, be_port) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	if (hairpin && l4_rewrite(skb, pi, REWRITE_SRC, IPV4_SVC_LOOPBACK, pi->sport) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	*conn = ct;
	return LB_XLATED;
}

/* Reverse translation of a reply to a connection lb4_xlate translated: its
 * source becomes the frontend the client used (and for hairpin, its
 * destination the client again). Counts the reply in the connection entry and
 * leaves the entry's new lifetime in *lifetime. Returns LB_NONE when pi is
 * not such a reply, LB_XLATED, or a drop verdict. */
static __always_inline int lb4_reply(struct __sk_buff *skb, struct pkt_info *pi,
				     const struct datapath_config *cfg, __u8 dir,
				     __u32 *lifetime)
{
	struct lb4_reverse_nat *rev;
	struct ct4_entry *ct, *sct;
	struct ct4_key key, skey;
	__be32 faddr;
	__u32 index;

	if (!pi->has_ports)
		return LB_NONE;
	ct_key_reverse_of(&key, pi);
	ct = ct_lookup(&key);
	if (!ct || !ct->rev_nat_index)
		return LB_NONE;
	if (pi->is_frag)
		return drop(skb, pi, DROP_FRAG_NOSUPPORT, dir);
	index = ct->rev_nat_index;
	rev = bpf_map_lookup_elem(&ciliate_lb4_rev, &index);
	if (!rev)
		return drop(skb, pi, DROP_NO_SERVICE, dir);
	ct_account(ct, cfg, pi, CT_RX, skb->len, ct_now());
	*lifetime = ct->lifetime;
	faddr = rev->address ? rev->address : ct->frontend_addr;

	/* The service entry (client tuple towards the frontend) lives as
	 * long as its connection, so a flow only the server keeps busy (UDP
	 * push) keeps its backend. For hairpin the client is the backend. */
	skey.saddr = (ct->flags & CT_F_LOOPBACK) ? key.daddr : key.saddr;
	skey.sport = key.sport;
	skey.daddr = ct->frontend_addr;
	skey.dport = rev->port;
	skey.proto = key.proto;
	skey.flags = CT_KEY_SERVICE;
	skey.pad = 0;
	sct = ct_lookup(&skey);
	if (sct)
		sct->lifetime = ct->lifetime;

	if ((ct->flags & CT_F_LOOPBACK) &&
	    l4_rewrite(skb, pi, REWRITE_DST, pi->src_ip, pi->dport) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	if (l4_rewrite(skb, pi, REWRITE_SRC, faddr, rev->port) < 0)
		return drop(skb, pi, DROP_CSUM, dir);
	return LB_XLATED;
}

/* from_container: a pod's packet to any frontend (ClusterIP, NodePort on any
 * node's address, externalIP, LoadBalancer IP), with the INTERNAL scope. */
static __always_inline int lb4_from_pod(struct __sk_buff *skb, struct pkt_info *pi,
					const struct datapath_config *cfg,
					const struct ipcache_value *remote)
{
	struct ct4_entry *conn = NULL;
	__be32 addr = is_node_address(cfg, pi->dst_ip, remote) ? 0 : pi->dst_ip;

	return lb4_xlate(skb, pi, cfg, addr, LB_SCOPE_INTERNAL, 0, 0, METRIC_EGRESS, &conn);
}

#endif
