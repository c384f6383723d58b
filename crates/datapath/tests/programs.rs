//! Every branch of `from_container`, `from_overlay`,
//! `from_host` and `from_netdev`, run in the kernel with `BPF_PROG_TEST_RUN`
//! on synthetic packets: verdict, output bytes, counters and events. (The FIB
//! outcomes need routes and neighbours: tests/fib.rs runs those in namespaces.)

#[macro_use]
mod common;

use std::net::Ipv4Addr;

use ciliate_datapath::maps::{
    ipcache_key, DatapathConfig, EndpointKey, IpcacheValue, EVENT_TRACE, IDENTITY_HOST,
    METRIC_EGRESS, METRIC_INGRESS, ROUTING_NATIVE,
};
use ciliate_datapath::reasons::{
    DROP_ARP_NOT_ROUTER, DROP_INVALID, DROP_INVALID_ARP, DROP_INVALID_SIP, DROP_NO_CONFIG,
    DROP_NO_TUNNEL_DEVICE, DROP_TTL_EXCEEDED, DROP_UNSUPPORTED_L3, REASON_FORWARDED,
    TRACE_ARP_REPLY, TRACE_FROM_HOST, TRACE_FROM_NETDEV, TRACE_FROM_OVERLAY, TRACE_TO_ENDPOINT,
    TRACE_TO_OVERLAY, TRACE_TO_STACK,
};
use common::*;

#[test]
fn arp_request_for_router_is_answered_with_lxc_mac() {
    root_only!();
    let mut h = Harness::new(true);
    let request = eth(
        [0xff; 6],
        POD_A_MAC,
        0x0806,
        &arp(1, POD_A_MAC, POD_A, [0; 6], ROUTER),
    );
    let (verdict, out) = h.run("from_container", &request);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the reply goes back out of the same device"
    );
    let expected = eth(
        POD_A_MAC,
        LXC_A_MAC,
        0x0806,
        &arp(2, LXC_A_MAC, ROUTER, POD_A_MAC, POD_A),
    );
    assert_eq!(out, expected);
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.kind, ev.reason, ev.src_ep),
        (EVENT_TRACE, TRACE_ARP_REPLY, 101)
    );
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_EGRESS), 1);
}

#[test]
fn arp_for_another_target_is_dropped() {
    root_only!();
    let mut h = Harness::new(false);
    let request = eth(
        [0xff; 6],
        POD_A_MAC,
        0x0806,
        &arp(1, POD_A_MAC, POD_A, [0; 6], POD_B),
    );
    expect_drop(
        &mut h,
        "from_container",
        &request,
        DROP_ARP_NOT_ROUTER,
        METRIC_EGRESS,
    );
}

#[test]
fn arp_request_from_a_foreign_address_is_dropped() {
    root_only!();
    let mut h = Harness::new(false);
    let request = eth(
        [0xff; 6],
        POD_A_MAC,
        0x0806,
        &arp(1, POD_A_MAC, [10, 77, 0, 99], [0; 6], ROUTER),
    );
    expect_drop(
        &mut h,
        "from_container",
        &request,
        DROP_INVALID_SIP,
        METRIC_EGRESS,
    );
}

#[test]
fn arp_reply_from_pod_goes_to_the_stack() {
    root_only!();
    let h = Harness::new(false);
    let reply = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0806,
        &arp(2, POD_A_MAC, POD_A, LXC_A_MAC, ROUTER),
    );
    let (verdict, out) = h.run("from_container", &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, reply, "passed unchanged");
}

#[test]
fn malformed_arp_is_dropped() {
    root_only!();
    let mut h = Harness::new(false);
    let mut body = arp(1, POD_A_MAC, POD_A, [0; 6], ROUTER);
    body.truncate(20);
    let truncated = eth([0xff; 6], POD_A_MAC, 0x0806, &body);
    expect_drop(
        &mut h,
        "from_container",
        &truncated,
        DROP_INVALID_ARP,
        METRIC_EGRESS,
    );
    let mut bad_op = arp(9, POD_A_MAC, POD_A, [0; 6], ROUTER);
    bad_op[5] = 4;
    let bad = eth([0xff; 6], POD_A_MAC, 0x0806, &bad_op);
    expect_drop(
        &mut h,
        "from_container",
        &bad,
        DROP_INVALID_ARP,
        METRIC_EGRESS,
    );
}

#[test]
fn pod_to_pod_on_the_node_is_redirected_to_the_peer_with_rewritten_l2_and_ttl() {
    root_only!();
    let mut h = Harness::new(true);
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, POD_B, 64, 6, &tcp_ports(40000, 8080)),
    );
    let (verdict, out) = h.run("from_container", &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &POD_B_MAC, "destination MAC is pod B's");
    assert_eq!(&out[6..12], &LXC_B_MAC, "source MAC is pod B's lxc");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(
        checksum(&out[14..34]),
        0,
        "IPv4 header checksum stays valid"
    );
    assert_eq!(&out[34..], &packet[34..], "payload untouched");
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.kind, ev.reason, ev.src_ep, ev.dst_ep, ev.dst_ifindex),
        (EVENT_TRACE, TRACE_TO_ENDPOINT, 101, 202, POD_B_IFINDEX)
    );
    assert_eq!(
        (u16::from_be(ev.sport), u16::from_be(ev.dport), ev.proto),
        (40000, 8080, 6)
    );
}

#[test]
fn pod_to_node_goes_to_the_stack_untouched() {
    root_only!();
    let mut h = Harness::new(true);
    for dst in [ROUTER, OUTSIDE] {
        let packet = eth(
            LXC_A_MAC,
            POD_A_MAC,
            0x0800,
            &ipv4(POD_A, dst, 64, 1, &icmp_echo()),
        );
        let (verdict, out) = h.run("from_container", &packet);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, packet);
        let ev = h.next_event().unwrap();
        assert_eq!((ev.kind, ev.reason), (EVENT_TRACE, TRACE_TO_STACK));
    }
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_EGRESS), 2);
}

#[test]
fn no_trace_events_without_a_listener() {
    root_only!();
    let mut h = Harness::new(false);
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, POD_B, 64, 1, &icmp_echo()),
    );
    assert_eq!(h.run("from_container", &packet).0, TC_ACT_REDIRECT);
    assert!(
        h.next_event().is_none(),
        "traces are off while nobody listens"
    );
    assert_eq!(
        h.counter(REASON_FORWARDED, METRIC_EGRESS),
        1,
        "but still counted"
    );
}

#[test]
fn spoofed_source_is_dropped() {
    root_only!();
    let mut h = Harness::new(false);
    // Pod B's address, but sent through pod A's device.
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_B, ROUTER, 64, 1, &icmp_echo()),
    );
    expect_drop(
        &mut h,
        "from_container",
        &packet,
        DROP_INVALID_SIP,
        METRIC_EGRESS,
    );
    let unknown = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4([10, 77, 0, 99], POD_B, 64, 1, &icmp_echo()),
    );
    expect_drop(
        &mut h,
        "from_container",
        &unknown,
        DROP_INVALID_SIP,
        METRIC_EGRESS,
    );
}

#[test]
fn expiring_ttl_is_dropped() {
    root_only!();
    let mut h = Harness::new(false);
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, POD_B, 1, 1, &icmp_echo()),
    );
    expect_drop(
        &mut h,
        "from_container",
        &packet,
        DROP_TTL_EXCEEDED,
        METRIC_EGRESS,
    );
}

#[test]
fn unsupported_l3_and_truncated_ipv4_are_dropped() {
    root_only!();
    let mut h = Harness::new(false);
    let ipv6 = eth(LXC_A_MAC, POD_A_MAC, 0x86dd, &[0x60; 40]);
    expect_drop(
        &mut h,
        "from_container",
        &ipv6,
        DROP_UNSUPPORTED_L3,
        METRIC_EGRESS,
    );
    // (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than an IPv4
    // header, so a bad header length stands in for truncation.)
    let mut bad_ihl = ipv4(POD_A, POD_B, 64, 1, &icmp_echo());
    bad_ihl[0] = 0x43;
    expect_drop(
        &mut h,
        "from_container",
        &eth(LXC_A_MAC, POD_A_MAC, 0x0800, &bad_ihl),
        DROP_INVALID,
        METRIC_EGRESS,
    );
}

#[test]
fn unconfigured_datapath_drops_with_a_reason() {
    root_only!();
    let mut h = Harness::new(false);
    h.maps.config.set(0, DatapathConfig::default(), 0).unwrap();
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, POD_B, 64, 1, &icmp_echo()),
    );
    expect_drop(
        &mut h,
        "from_container",
        &packet,
        DROP_NO_CONFIG,
        METRIC_EGRESS,
    );
}

#[test]
fn from_host_drops_what_it_cannot_parse() {
    root_only!();
    let mut h = Harness::new(false);
    let mut bad_ihl = ipv4(ROUTER, POD_A, 64, 1, &icmp_echo());
    bad_ihl[0] = 0x44;
    expect_drop(
        &mut h,
        "from_host",
        &eth(POD_A_MAC, LXC_A_MAC, 0x0800, &bad_ihl),
        DROP_INVALID,
        METRIC_EGRESS,
    );
}

const REMOTE_POD: [u8; 4] = [10, 78, 0, 20];
const REMOTE_NODE: [u8; 4] = [192, 168, 10, 101];
const TUNNEL_IFINDEX: u32 = 777;

impl Harness {
    /// Tunnel mode with 10.78.0.0/24 behind REMOTE_NODE.
    fn with_remote_node(trace: bool, tunnel_ifindex: u32, routing_mode: u32) -> Self {
        let mut h = Self::new(trace);
        let mut cfg = DatapathConfig::new(Ipv4Addr::from(ROUTER), trace);
        cfg.tunnel_ifindex = tunnel_ifindex;
        cfg.routing_mode = routing_mode;
        cfg.identity = 4242;
        h.maps.config.set(0, cfg, 0).unwrap();
        let value = IpcacheValue {
            sec_identity: 5151,
            tunnel_endpoint: u32::from_ne_bytes(REMOTE_NODE),
            flags: 0,
            pad: 0,
        };
        h.maps
            .ipcache
            .insert(&ipcache_key("10.78.0.0/24".parse().unwrap()), value, 0)
            .unwrap();
        h
    }
}

#[test]
fn pod_to_remote_pod_is_encapsulated_towards_its_node() {
    root_only!();
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, 0);
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, REMOTE_POD, 64, 6, &tcp_ports(1, 2)),
    );
    let (verdict, out) = h.run("from_container", &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected to the tunnel device");
    assert_eq!(
        out, packet,
        "the inner packet is not touched; the tunnel device adds the outer headers"
    );
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.kind, ev.reason, ev.dst_ifindex),
        (EVENT_TRACE, TRACE_TO_OVERLAY, TUNNEL_IFINDEX)
    );
}

#[test]
fn without_a_tunnel_device_remote_traffic_is_dropped_with_a_reason() {
    root_only!();
    let mut h = Harness::with_remote_node(false, 0, 0);
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, REMOTE_POD, 64, 1, &icmp_echo()),
    );
    expect_drop(
        &mut h,
        "from_container",
        &packet,
        DROP_NO_TUNNEL_DEVICE,
        METRIC_EGRESS,
    );
}

#[test]
fn a_tunnel_endpoint_decides_encapsulation_whatever_the_routing_mode() {
    root_only!();
    // The kernel side decides nothing about the cluster: in native mode the
    // agent writes no tunnel endpoints, so one that is there is followed.
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, ROUTING_NATIVE);
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, REMOTE_POD, 64, 1, &icmp_echo()),
    );
    assert_eq!(h.run("from_container", &packet), (TC_ACT_REDIRECT, packet));
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.reason, ev.dst_ifindex, ev.src_identity),
        (TRACE_TO_OVERLAY, TUNNEL_IFINDEX, 4242),
        "the VNI carries the node's pod identity while the endpoint has none"
    );

    // An endpoint with its own identity sends that one.
    let mut a = h
        .maps
        .endpoints
        .get(&EndpointKey::new(Ipv4Addr::from(POD_A)), 0)
        .unwrap();
    a.sec_identity = 31337;
    h.maps
        .endpoints
        .insert(EndpointKey::new(Ipv4Addr::from(POD_A)), a, 0)
        .unwrap();
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, REMOTE_POD, 64, 1, &icmp_echo()),
    );
    assert_eq!(h.run("from_container", &packet).0, TC_ACT_REDIRECT);
    assert_eq!(h.next_event().unwrap().src_identity, 31337);
}

#[test]
fn without_a_tunnel_endpoint_the_fib_path_hands_to_the_stack_when_there_is_no_native_device() {
    root_only!();
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, ROUTING_NATIVE);
    // A remote PodCIDR as native mode writes it: identity, no tunnel endpoint.
    let native = IpcacheValue {
        sec_identity: 6161,
        tunnel_endpoint: 0,
        flags: 0,
        pad: 0,
    };
    h.maps
        .ipcache
        .insert(&ipcache_key("10.79.0.0/24".parse().unwrap()), native, 0)
        .unwrap();
    // native_ifindex is 0 here (tests/fib.rs runs the FIB with a real device).
    for dst in [[10, 79, 0, 5], [10, 80, 0, 1]] {
        let packet = eth(
            LXC_A_MAC,
            POD_A_MAC,
            0x0800,
            &ipv4(POD_A, dst, 64, 1, &icmp_echo()),
        );
        assert_eq!(
            h.run("from_container", &packet),
            (TC_ACT_OK, packet),
            "{dst:?} goes to the stack untouched"
        );
        let ev = h.next_event().unwrap();
        assert_eq!((ev.reason, ev.dst_ifindex), (TRACE_TO_STACK, 0));
    }
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_EGRESS), 2);
}

#[test]
fn from_overlay_delivers_to_the_local_pod() {
    root_only!();
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, 0);
    let inner = eth(
        [0x02, 0, 0, 0, 0, 0x99],
        [0x02, 0, 0, 0, 0, 0x98],
        0x0800,
        &ipv4(REMOTE_POD, POD_B, 63, 17, &tcp_ports(5353, 53)[..8]),
    );
    let (verdict, out) = h.run("from_overlay", &inner);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&POD_B_MAC[..], &LXC_B_MAC[..]));
    assert_eq!(out[14 + 8], 62, "TTL decremented");
    assert_eq!(checksum(&out[14..34]), 0);
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.reason, ev.dst_ep, ev.dst_ifindex),
        (TRACE_FROM_OVERLAY, 202, POD_B_IFINDEX)
    );
}

#[test]
fn from_overlay_passes_node_traffic_and_drops_what_it_cannot_parse() {
    root_only!();
    let mut h = Harness::with_remote_node(false, TUNNEL_IFINDEX, 0);
    let to_node = eth(
        [2; 6],
        [3; 6],
        0x0800,
        &ipv4(REMOTE_POD, ROUTER, 64, 1, &icmp_echo()),
    );
    assert_eq!(h.run("from_overlay", &to_node), (TC_ACT_OK, to_node));
    let arp_frame = eth(
        [0xff; 6],
        [3; 6],
        0x0806,
        &arp(1, [3; 6], REMOTE_POD, [0; 6], POD_B),
    );
    expect_drop(
        &mut h,
        "from_overlay",
        &arp_frame,
        DROP_UNSUPPORTED_L3,
        METRIC_INGRESS,
    );
    let mut bad = ipv4(REMOTE_POD, POD_B, 64, 1, &icmp_echo());
    bad[0] = 0x41;
    expect_drop(
        &mut h,
        "from_overlay",
        &eth([2; 6], [3; 6], 0x0800, &bad),
        DROP_INVALID,
        METRIC_INGRESS,
    );
}

#[test]
fn from_overlay_hands_node_traffic_to_the_stack_with_a_trace() {
    root_only!();
    // The inner frame is addressed to the sender's device, so the program
    // marks it PACKET_HOST before the stack sees it. BPF_PROG_TEST_RUN does
    // not report pkt_type back (its ctx_out has no such field); tests/fib.rs
    // proves it with real VXLAN traffic that the stack would otherwise drop.
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, 0);
    let to_node = eth(
        [0x02, 0, 0, 0, 0, 0x99],
        [0x02, 0, 0, 0, 0, 0x98],
        0x0800,
        &ipv4(REMOTE_POD, ROUTER, 64, 6, &tcp_ports(1000, 4240)),
    );
    assert_eq!(h.run("from_overlay", &to_node), (TC_ACT_OK, to_node));
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.kind, ev.reason, ev.dir),
        (EVENT_TRACE, TRACE_TO_STACK, METRIC_INGRESS)
    );
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_INGRESS), 1);
}

#[test]
fn from_host_encapsulates_remote_pods_with_the_host_identity() {
    root_only!();
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, 0);
    let packet = eth(
        [0x02, 0, 0, 0, 0, 0xc1],
        [0x02, 0, 0, 0, 0, 0xc1],
        0x0800,
        &ipv4(ROUTER, REMOTE_POD, 64, 6, &tcp_ports(33000, 80)),
    );
    let (verdict, out) = h.run("from_host", &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected to the tunnel device");
    assert_eq!(out, packet, "the inner packet is not touched");
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.kind, ev.reason, ev.dir, ev.dst_ifindex),
        (EVENT_TRACE, TRACE_TO_OVERLAY, METRIC_EGRESS, TUNNEL_IFINDEX)
    );
    assert_eq!(
        ev.src_identity, IDENTITY_HOST,
        "the VNI is the host's identity, not the pods' (4242)"
    );
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_EGRESS), 1);
}

#[test]
fn from_host_delivers_to_local_pods_and_passes_everything_else() {
    root_only!();
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, 0);
    let host_mac = [0x02, 0, 0, 0, 0, 0xc1];
    let to_pod = eth(
        host_mac,
        host_mac,
        0x0800,
        &ipv4(ROUTER, POD_B, 64, 1, &icmp_echo()),
    );
    let (verdict, out) = h.run("from_host", &to_pod);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&POD_B_MAC[..], &LXC_B_MAC[..]));
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(checksum(&out[14..34]), 0);
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.reason, ev.dir, ev.dst_ep, ev.dst_ifindex),
        (TRACE_FROM_HOST, METRIC_INGRESS, 202, POD_B_IFINDEX)
    );

    // Not behind a tunnel endpoint: on unchanged, traced.
    let outside = eth(
        host_mac,
        host_mac,
        0x0800,
        &ipv4(ROUTER, OUTSIDE, 64, 1, &icmp_echo()),
    );
    assert_eq!(h.run("from_host", &outside), (TC_ACT_OK, outside));
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.reason, ev.dir, ev.dst_ifindex),
        (TRACE_FROM_HOST, METRIC_EGRESS, 0)
    );
    // Not IPv4: untouched, not even counted.
    let before = h.counter(REASON_FORWARDED, METRIC_EGRESS);
    let arp_frame = eth(
        [0xff; 6],
        host_mac,
        0x0806,
        &arp(1, host_mac, ROUTER, [0; 6], REMOTE_POD),
    );
    assert_eq!(h.run("from_host", &arp_frame), (TC_ACT_OK, arp_frame));
    let ipv6 = eth(host_mac, host_mac, 0x86dd, &[0x60; 40]);
    assert_eq!(h.run("from_host", &ipv6), (TC_ACT_OK, ipv6));
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_EGRESS), before);
    assert!(h.next_event().is_none());
}

#[test]
fn from_host_without_a_tunnel_device_drops_with_a_reason() {
    root_only!();
    let mut h = Harness::with_remote_node(false, 0, 0);
    let packet = eth(
        [2; 6],
        [2; 6],
        0x0800,
        &ipv4(ROUTER, REMOTE_POD, 64, 1, &icmp_echo()),
    );
    expect_drop(
        &mut h,
        "from_host",
        &packet,
        DROP_NO_TUNNEL_DEVICE,
        METRIC_EGRESS,
    );
    // Unconfigured: the node's own traffic is never held up.
    h.maps.config.set(0, DatapathConfig::default(), 0).unwrap();
    assert_eq!(h.run("from_host", &packet), (TC_ACT_OK, packet));
}

#[test]
fn from_netdev_delivers_ipv4_for_local_pods() {
    root_only!();
    let mut h = Harness::new(true);
    let packet = eth(
        [0x02, 0, 0, 0, 0, 0xe0],
        [0x02, 0, 0, 0, 0, 0xe1],
        0x0800,
        &ipv4(REMOTE_POD, POD_B, 62, 6, &tcp_ports(40000, 8080)),
    );
    let (verdict, out) = h.run("from_netdev", &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((&out[0..6], &out[6..12]), (&POD_B_MAC[..], &LXC_B_MAC[..]));
    assert_eq!(out[14 + 8], 61, "TTL decremented");
    assert_eq!(checksum(&out[14..34]), 0);
    assert_eq!(&out[34..], &packet[34..]);
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.reason, ev.dir, ev.dst_ep, ev.dst_ifindex),
        (TRACE_FROM_NETDEV, METRIC_INGRESS, 202, POD_B_IFINDEX)
    );
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_INGRESS), 1);
    let expiring = eth(
        [2; 6],
        [3; 6],
        0x0800,
        &ipv4(REMOTE_POD, POD_B, 1, 1, &icmp_echo()),
    );
    expect_drop(
        &mut h,
        "from_netdev",
        &expiring,
        DROP_TTL_EXCEEDED,
        METRIC_INGRESS,
    );
}

#[test]
fn from_netdev_passes_everything_else_untouched() {
    root_only!();
    let mut h = Harness::new(true);
    let node_mac = [0x02, 0, 0, 0, 0, 0xe0];
    let peer_mac = [0x02, 0, 0, 0, 0, 0xe1];
    // VXLAN between the nodes: UDP to 8472 on the node's own address.
    let mut vxlan = vec![0u8; 8 + 8 + 14 + 28];
    vxlan[0..2].copy_from_slice(&40000u16.to_be_bytes());
    vxlan[2..4].copy_from_slice(&8472u16.to_be_bytes());
    let udp_len = u16::try_from(vxlan.len()).unwrap();
    vxlan[4..6].copy_from_slice(&udp_len.to_be_bytes());
    vxlan[8] = 0x08;
    let frames = [
        eth(
            node_mac,
            peer_mac,
            0x0800,
            &ipv4(REMOTE_NODE, OUTSIDE, 64, 17, &vxlan),
        ),
        eth(
            node_mac,
            peer_mac,
            0x0800,
            &ipv4(REMOTE_NODE, OUTSIDE, 64, 1, &icmp_echo()),
        ),
        eth(
            [0xff; 6],
            peer_mac,
            0x0806,
            &arp(1, peer_mac, REMOTE_NODE, [0; 6], POD_B),
        ),
        eth(node_mac, peer_mac, 0x86dd, &[0x60; 40]),
    ];
    for frame in frames {
        assert_eq!(
            h.run("from_netdev", &frame),
            (TC_ACT_OK, frame.clone()),
            "passed to the stack unchanged"
        );
    }
    assert!(
        h.next_event().is_none(),
        "the node's own traffic is not traced"
    );
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_INGRESS), 0);
}
