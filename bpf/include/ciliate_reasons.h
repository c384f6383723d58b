/* Drop reasons and trace observation points. crates/datapath/build.rs reads the
 * `#define` lines of this file to generate the Rust tables, so every code has
 * exactly one number and one name. Format: #define NAME VALUE // Human name */
#ifndef CILIATE_REASONS_H
#define CILIATE_REASONS_H

#define REASON_FORWARDED 0 // Forwarded

#define DROP_INVALID_SIP 132 // Invalid source ip
#define DROP_INVALID 134 // Invalid packet
#define DROP_UNSUPPORTED_L3 139 // Unsupported L3 protocol
#define DROP_INVALID_ARP 140 // Invalid ARP packet
#define DROP_ARP_NOT_ROUTER 141 // ARP request not for the router IP
#define DROP_NO_CONFIG 142 // Datapath not configured
#define DROP_TTL_EXCEEDED 143 // TTL exceeded
#define DROP_UNKNOWN_ENDPOINT 144 // Packet from an unknown endpoint
#define DROP_NO_TUNNEL_DEVICE 145 // No tunnel device configured
#define DROP_ENCAP_FAILED 146 // Setting the tunnel key failed
#define DROP_NO_ROUTE 147 // No route to destination
#define DROP_FRAG_NEEDED 148 // Fragmentation needed
#define DROP_MISSED_TAIL_CALL 151 // Missed tail call
#define DROP_CSUM 153 // Checksum update failed
#define DROP_CT_CREATE_FAILED 155 // Conntrack entry could not be created
#define DROP_FRAG_NOSUPPORT 157 // Fragmented packet to a service
#define DROP_NO_SERVICE 158 // Service backend not found
#define DROP_NAT_NO_MAPPING 160 // No free port for SNAT
#define DROP_NAT_FAILED 161 // NAT rewrite failed
#define DROP_HOST_BACKEND_UNSUPPORTED 165 // NodePort to a host-network backend is not supported
#define DROP_FRAG_MASQ 166 // Fragmented packet to masquerade
#define DROP_MASQ_NO_ENDPOINT 167 // Masqueraded reply to a pod no longer on this node
#define DROP_MASQ_NO_MAPPING 168 // No SNAT mapping for a packet leaving the cluster

#define TRACE_TO_ENDPOINT 1 // to-endpoint
#define TRACE_TO_STACK 2 // to-stack
#define TRACE_ARP_REPLY 3 // arp-reply
/* 4 was from-stack: to_container, whose work from_host does now. */
#define TRACE_TO_OVERLAY 5 // to-overlay
#define TRACE_FROM_OVERLAY 6 // from-overlay
#define TRACE_TO_NETDEV 7 // to-netdev
#define TRACE_FROM_NETDEV 8 // from-netdev
#define TRACE_FROM_HOST 9 // from-host
#define TRACE_NO_SERVICE_REPLY 10 // no-service-reply
#define TRACE_SNAT 11 // snat
#define TRACE_REV_SNAT 12 // rev-snat

#endif
