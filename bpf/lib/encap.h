/* Sending a packet into the tunnel towards the node that hosts its
 * destination: the one place that sets the tunnel key, whether the packet
 * came from a local pod (lxc.c) or from the node itself (host.c). */
#ifndef CILIATE_ENCAP_H
#define CILIATE_ENCAP_H

#include "common.h"
#include "events.h"

/* The outer header goes to the remote node's IP, and the VNI carries
 * `identity` (the sending pod's, or IDENTITY_HOST for the node itself) so the
 * other side knows who sent it without another lookup. The inner packet is
 * not touched; the tunnel device adds the outer headers. */
static __always_inline int encap_to_node(struct __sk_buff *skb, struct pkt_info *pi,
					 const struct datapath_config *cfg,
					 const struct ipcache_value *remote, __u32 identity,
					 __u8 dir)
{
	struct bpf_tunnel_key key = {};

	if (!cfg->tunnel_ifindex)
		return drop(skb, pi, DROP_NO_TUNNEL_DEVICE, dir);
	key.remote_ipv4 = bpf_ntohl(remote->tunnel_endpoint);
	key.tunnel_id = identity;
	key.tunnel_ttl = 64;
	pi->src_identity = identity;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, pi, DROP_ENCAP_FAILED, dir);
	trace(skb, pi, cfg, TRACE_TO_OVERLAY, dir, cfg->tunnel_ifindex);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

#endif
