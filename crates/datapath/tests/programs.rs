//! Every branch of `from_container` and `to_container`, run in the kernel with
//! `BPF_PROG_TEST_RUN` on synthetic packets: verdict, output bytes, counters
//! and events.

mod common;

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use ciliate_datapath::loader::{Datapath, Maps};
use ciliate_datapath::maps::{
    ipcache_key, metrics_index, DatapathConfig, EndpointInfo, EndpointKey, IpcacheValue,
    TraceEvent, EVENT_DROP, EVENT_TRACE, METRIC_EGRESS, METRIC_INGRESS, ROUTING_NATIVE,
};
use ciliate_datapath::reasons::{
    DROP_ARP_NOT_ROUTER, DROP_INVALID, DROP_INVALID_ARP, DROP_INVALID_SIP, DROP_NO_CONFIG,
    DROP_NO_TUNNEL_DEVICE, DROP_TTL_EXCEEDED, DROP_UNSUPPORTED_L3, REASON_FORWARDED,
    TRACE_ARP_REPLY, TRACE_FROM_OVERLAY, TRACE_FROM_STACK, TRACE_TO_ENDPOINT, TRACE_TO_OVERLAY,
    TRACE_TO_STACK,
};
use common::*;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const ROUTER: [u8; 4] = [10, 77, 0, 1];
const POD_A: [u8; 4] = [10, 77, 0, 10];
const POD_B: [u8; 4] = [10, 77, 0, 11];
const OUTSIDE: [u8; 4] = [192, 168, 10, 100];
/// The device `BPF_PROG_TEST_RUN` runs a tc program on: the loopback (ifindex 1).
const TEST_IFINDEX: u32 = 1;
const POD_B_IFINDEX: u32 = 4242;

struct Harness {
    _bpffs: TestBpffs,
    datapath: Datapath,
    maps: Maps,
    events: aya::maps::RingBuf<aya::maps::MapData>,
}

impl Harness {
    /// Pod A sends through the test device; pod B sits behind POD_B_IFINDEX.
    fn new(trace: bool) -> Self {
        let bpffs = TestBpffs::new();
        let root = bpffs.root();
        let datapath = Datapath::open(&root).expect("loading the datapath");
        let mut maps = Maps::open(&root).unwrap();
        maps.config
            .set(0, DatapathConfig::new(Ipv4Addr::from(ROUTER), trace), 0)
            .unwrap();
        let a = EndpointInfo {
            ifindex: TEST_IFINDEX,
            lxc_id: 101,
            flags: 0,
            mac: POD_A_MAC,
            node_mac: LXC_A_MAC,
            sec_identity: 0,
        };
        let b = EndpointInfo {
            ifindex: POD_B_IFINDEX,
            lxc_id: 202,
            flags: 0,
            mac: POD_B_MAC,
            node_mac: LXC_B_MAC,
            sec_identity: 0,
        };
        maps.endpoints
            .insert(EndpointKey::new(Ipv4Addr::from(POD_A)), a, 0)
            .unwrap();
        maps.endpoints
            .insert(EndpointKey::new(Ipv4Addr::from(POD_B)), b, 0)
            .unwrap();
        let events = Maps::open_events(&root).unwrap();
        Self {
            _bpffs: bpffs,
            datapath,
            maps,
            events,
        }
    }

    fn run(&self, program: &str, packet: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.datapath.program(program).unwrap();
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counter(&self, reason: u8, dir: u8) -> u64 {
        let values = self
            .maps
            .metrics
            .get(&metrics_index(reason, dir), 0)
            .unwrap();
        values.iter().map(|v| v.packets).sum()
    }

    fn next_event(&mut self) -> Option<TraceEvent> {
        self.events
            .next()
            .and_then(|item| TraceEvent::from_bytes(&item))
    }
}

fn expect_drop(h: &mut Harness, program: &str, packet: &[u8], reason: u8, dir: u8) {
    let before = h.counter(reason, dir);
    let (verdict, _) = h.run(program, packet);
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "{program} must drop with reason {reason}"
    );
    assert_eq!(
        h.counter(reason, dir),
        before + 1,
        "drop counted under reason {reason}"
    );
    let ev = h.next_event().expect("every drop is emitted as an event");
    assert_eq!((ev.kind, ev.reason, ev.dir), (EVENT_DROP, reason, dir));
    assert_eq!(ev.len as usize, packet.len());
}

macro_rules! root_only {
    () => {
        if !require_root(module_path!()) {
            return;
        }
    };
}

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
fn to_container_passes_ipv4_and_arp_and_counts_them() {
    root_only!();
    let mut h = Harness::new(true);
    let packet = eth(
        POD_A_MAC,
        LXC_A_MAC,
        0x0800,
        &ipv4(ROUTER, POD_A, 64, 17, &tcp_ports(53, 5353)[..8]),
    );
    let (verdict, out) = h.run("to_container", &packet);
    assert_eq!((verdict, out), (TC_ACT_OK, packet));
    let ev = h.next_event().unwrap();
    assert_eq!(
        (ev.kind, ev.reason, ev.dir, ev.dst_ep, ev.proto),
        (EVENT_TRACE, TRACE_FROM_STACK, METRIC_INGRESS, 101, 17)
    );
    let request = eth(
        [0xff; 6],
        LXC_A_MAC,
        0x0806,
        &arp(1, LXC_A_MAC, ROUTER, [0; 6], POD_A),
    );
    assert_eq!(h.run("to_container", &request).0, TC_ACT_OK);
    assert_eq!(h.counter(REASON_FORWARDED, METRIC_INGRESS), 2);
}

#[test]
fn to_container_drops_what_it_cannot_parse() {
    root_only!();
    let mut h = Harness::new(false);
    let ipv6 = eth(POD_A_MAC, LXC_A_MAC, 0x86dd, &[0x60; 40]);
    expect_drop(
        &mut h,
        "to_container",
        &ipv6,
        DROP_UNSUPPORTED_L3,
        METRIC_INGRESS,
    );
    let mut bad_ihl = ipv4(ROUTER, POD_A, 64, 1, &icmp_echo());
    bad_ihl[0] = 0x44;
    expect_drop(
        &mut h,
        "to_container",
        &eth(POD_A_MAC, LXC_A_MAC, 0x0800, &bad_ihl),
        DROP_INVALID,
        METRIC_INGRESS,
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
fn native_routing_and_unknown_destinations_go_to_the_stack() {
    root_only!();
    let mut h = Harness::with_remote_node(true, TUNNEL_IFINDEX, ROUTING_NATIVE);
    let packet = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, REMOTE_POD, 64, 1, &icmp_echo()),
    );
    assert_eq!(h.run("from_container", &packet), (TC_ACT_OK, packet));
    assert_eq!(h.next_event().unwrap().reason, TRACE_TO_STACK);
    let h = Harness::with_remote_node(true, TUNNEL_IFINDEX, 0);
    let outside = eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, [10, 79, 0, 1], 64, 1, &icmp_echo()),
    );
    assert_eq!(
        h.run("from_container", &outside).0,
        TC_ACT_OK,
        "not in the ipcache: the stack"
    );
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
