/* Lookups every program shares. */
#ifndef CILIATE_LOOKUP_H
#define CILIATE_LOOKUP_H

#include "common.h"
#include "maps.h"

static __always_inline struct datapath_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ciliate_config, &zero);
}

static __always_inline struct endpoint_info *endpoint(__u32 ip4)
{
	struct endpoint_key key = { .ip4 = ip4 };

	return bpf_map_lookup_elem(&ciliate_lxc, &key);
}

static __always_inline struct ipcache_value *ipcache(__u32 ip4)
{
	struct ipcache_key key = { .prefixlen = 32, .ip4 = ip4 };

	return bpf_map_lookup_elem(&ciliate_ipcache, &key);
}

#endif
