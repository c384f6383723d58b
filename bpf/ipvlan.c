// SPDX-License-Identifier: GPL-2.0
/* ipvlan_entry: TCX egress of an ipvlan L3 slave (the pod's eth0) inside the
 *   pod's namespace (datapathMode ipvlan), i.e. every packet the pod sends.
 *   The agent loads it once per endpoint, with that endpoint's address in
 *   ENDPOINT_IP and a one-entry prog array of its own, and puts the node's
 *   from_container_ipvlan (bpf/lxc.c) in slot 0. So the shared program is
 *   replaced for every pod by one map update (an agent upgrade), without
 *   entering any pod's namespace. The entry names the endpoint in skb->cb
 *   (lib/ipvlan.h), whose address is then the only source the packet may
 *   carry. With slot 0 empty the packet is dropped, counted. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/events.h"
#include "lib/ipvlan.h"

char _license[] SEC("license") = "GPL";

/* The endpoint's IPv4 address, network byte order: set by the loader. */
volatile const __u32 ENDPOINT_IP = 0;

/* Not pinned by name: one per loaded entry; the agent pins it under the
 * endpoint's name. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ciliate_ipvlan_calls SEC(".maps");

SEC("classifier/ipvlan_entry")
int ipvlan_entry(struct __sk_buff *skb)
{
	struct pkt_info pi = { .in_pod = 1 };

	skb->cb[IPVLAN_CB_ENDPOINT_IP] = ENDPOINT_IP;
	bpf_tail_call(skb, &ciliate_ipvlan_calls, 0);
	pi.src_ip = ENDPOINT_IP;
	return drop(skb, &pi, DROP_MISSED_TAIL_CALL, METRIC_EGRESS);
}
