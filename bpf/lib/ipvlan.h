/* ipvlan endpoints (datapathMode ipvlan): what bpf/ipvlan.c's entry program
 * hands to the from_container_ipvlan it tail-calls. The entry is loaded once
 * per endpoint, with that endpoint's address as a constant; from_container_ipvlan
 * is shared by all of them and learns whose packet it has from skb->cb, which
 * a tail call keeps. */
#ifndef CILIATE_IPVLAN_H
#define CILIATE_IPVLAN_H

/* skb->cb slot holding the address (network byte order) of the endpoint
 * whose slave the packet leaves by: the only source it may carry. */
#define IPVLAN_CB_ENDPOINT_IP 0

#endif
