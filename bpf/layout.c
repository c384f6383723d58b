// SPDX-License-Identifier: GPL-2.0
/* Never loaded: one global of every shared struct, so that this object's BTF
 * describes each layout and the Rust side can be checked against it. */
#include "lib/common.h"

struct endpoint_key layout_endpoint_key;
struct endpoint_info layout_endpoint_info;
struct datapath_config layout_datapath_config;
struct ipcache_key layout_ipcache_key;
struct ipcache_value layout_ipcache_value;
struct metrics_value layout_metrics_value;
struct trace_event layout_trace_event;
struct lb4_key layout_lb4_key;
struct lb4_service layout_lb4_service;
struct lb4_backend layout_lb4_backend;
struct lb4_reverse_nat layout_lb4_reverse_nat;
struct lb4_affinity_key layout_lb4_affinity_key;
struct lb4_affinity_value layout_lb4_affinity_value;
struct ct4_key layout_ct4_key;
struct ct4_entry layout_ct4_entry;
struct nat4_entry layout_nat4_entry;
struct ipmasq_key layout_ipmasq_key;
struct ipmasq_value layout_ipmasq_value;
