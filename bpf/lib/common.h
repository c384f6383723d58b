#ifndef CILIATE_COMMON_H
#define CILIATE_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ciliate_maps.h"
#include "ciliate_reasons.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#endif
