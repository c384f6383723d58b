//! Masquerading in the datapath, run in the kernel with `BPF_PROG_TEST_RUN`
//! on synthetic packets: `to_netdev` SNATs pod traffic that leaves the
//! cluster to the node IP (TCP, UDP, ICMP echo), `from_netdev` translates the
//! replies back and delivers them to the pod, lifetimes follow the TCP state,
//! and iptables mode hands pod traffic to the stack in `from_container`.
//! Connections the host stack delivers to a pod from elsewhere (a hostPort
//! netfilter DNATed) are recorded by `from_host`, and `from_container`
//! hands their replies back to the stack.
//! Every rewritten packet has its checksums recomputed here.

#[macro_use]
mod common;

use std::net::Ipv4Addr;

use ciliate_datapath::maps::{
    be_addr, ipcache_key, monotonic_seconds, Ct4Entry, Ct4Key, DatapathConfig, IpcacheValue,
    IpmasqValue, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, Nat4Entry, TraceEvent,
    BE_STATE_ACTIVE, CT_F_INBOUND, CT_F_RX_CLOSING, CT_F_SEEN_REPLY, CT_F_TX_CLOSING,
    CT_F_VIA_STACK, CT_KEY_MASQ, EVENT_TRACE, IDENTITY_HOST, IPCACHE_F_HOST, IPPROTO_TCP,
    IPPROTO_UDP, LB_SCOPE_EXTERNAL, MASQ_F_BPF, MASQ_F_IPTABLES, MASQ_F_IP_MASQ_AGENT,
    METRIC_EGRESS, METRIC_INGRESS, NAT_DIR_EGRESS, NAT_DIR_INGRESS, NAT_F_MASQUERADE,
    NAT_F_NODEPORT, NAT_PORT_MAX, NAT_PORT_MIN, SVC_F_NODEPORT,
};
use ciliate_datapath::netlink::format_mac;
use ciliate_datapath::reasons::{
    DROP_FRAG_MASQ, DROP_MASQ_NO_ENDPOINT, DROP_MASQ_NO_MAPPING, DROP_NAT_NO_MAPPING,
    TRACE_FROM_NETDEV, TRACE_REV_SNAT, TRACE_SNAT, TRACE_TO_NETDEV, TRACE_TO_OVERLAY,
    TRACE_TO_STACK,
};
use common::*;

const NODE_IP: [u8; 4] = [192, 168, 10, 1];
/// Outside the cluster: the lab router's network.
const WORLD: [u8; 4] = [10, 10, 1, 200];
const REMOTE_POD: [u8; 4] = [10, 78, 0, 20];
const REMOTE_NODE: [u8; 4] = [192, 168, 10, 2];
const NATIVE_CIDR_HOST: [u8; 4] = [172, 20, 3, 4];
const NON_MASQ: [u8; 4] = [10, 10, 2, 200];
const POD_PORT: u16 = 40000;
const WEB: u16 = 80;
const IN_RANGE_PORT: u16 = 62000;
const T_TCP: u32 = 1000;
const T_SYN: u32 = 100;
const T_FIN: u32 = 10;
const T_ANY: u32 = 50;
const ICMP: u8 = 1;

fn v4(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn config(masquerade: u32) -> DatapathConfig {
    let mut cfg = DatapathConfig::new(v4(ROUTER), true);
    cfg.node_ip = be_addr(v4(NODE_IP));
    cfg.masquerade = masquerade;
    cfg.native_routing_cidr = be_addr(Ipv4Addr::new(172, 20, 0, 0));
    cfg.native_routing_prefixlen = 16;
    cfg.ct_timeout_tcp = T_TCP;
    cfg.ct_timeout_tcp_syn = T_SYN;
    cfg.ct_timeout_tcp_fin = T_FIN;
    cfg.ct_timeout_any = T_ANY;
    cfg
}

/// Pod B (behind POD_B_IFINDEX) is the pod that reaches outside; remote
/// pods and a remote node are in the ipcache, 10.10.2.0/24 in ipmasq4.
fn harness(masquerade: u32) -> Harness {
    let mut h = Harness::new(true);
    h.maps.config.set(0, config(masquerade), 0).unwrap();
    remote_pods_and_node(&mut h.maps);
    h.maps
        .ipmasq4
        .insert(
            &ipcache_key("10.10.2.0/24".parse().unwrap()),
            IpmasqValue { flags: 0 },
            0,
        )
        .unwrap();
    h
}

/// A segment on the native device: leaving (`src` a pod) or arriving.
fn seg(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame((NET_MAC, DEV_MAC), src, dst, flags)
}

fn arriving(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame((DEV_MAC, NET_MAC), src, dst, flags)
}

/// An ICMP echo (type 8) or echo reply (type 0) with identifier `id`.
fn echo(src: [u8; 4], dst: [u8; 4], kind: u8, id: u16) -> Vec<u8> {
    let mut i = vec![kind, 0, 0, 0, 0, 0, 0, 7];
    i[4..6].copy_from_slice(&id.to_be_bytes());
    i.extend_from_slice(b"ping payload");
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    eth(NET_MAC, DEV_MAC, 0x0800, &ipv4(src, dst, 64, ICMP, &i))
}

fn echo_id(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[38], frame[39]])
}

/// IPv4 header checksum and ICMP checksum (no pseudo header) are valid.
fn assert_icmp_checksums(frame: &[u8]) {
    assert_eq!(checksum(&frame[14..34]), 0, "IPv4 header checksum is valid");
    assert_eq!(checksum(&frame[34..]), 0, "ICMP checksum is valid");
}

fn addrs(frame: &[u8]) -> ([u8; 4], [u8; 4]) {
    (
        frame[26..30].try_into().unwrap(),
        frame[30..34].try_into().unwrap(),
    )
}

fn masq_ct(h: &Harness, src: ([u8; 4], u16), dst: ([u8; 4], u16), proto: u8) -> Ct4Entry {
    let key = Ct4Key::new(v4(src.0), src.1, v4(dst.0), dst.1, proto, CT_KEY_MASQ);
    let map = if proto == IPPROTO_TCP {
        &h.maps.ct4_tcp
    } else {
        &h.maps.ct4_any
    };
    map.get(&key, 0)
        .unwrap_or_else(|e| panic!("masquerade conntrack entry {key:?}: {e}"))
}

fn egress_key(src: ([u8; 4], u16), dst: ([u8; 4], u16), proto: u8) -> Ct4Key {
    Ct4Key::new(v4(src.0), src.1, v4(dst.0), dst.1, proto, NAT_DIR_EGRESS)
}

fn ingress_key(src: ([u8; 4], u16), nat_port: u16, proto: u8) -> Ct4Key {
    Ct4Key::new(
        v4(src.0),
        src.1,
        v4(NODE_IP),
        nat_port,
        proto,
        NAT_DIR_INGRESS,
    )
}

fn events(h: &mut Harness) -> Vec<TraceEvent> {
    drain(&mut h.events)
}

fn nat_count(h: &Harness) -> usize {
    h.maps.snat4.keys().count()
}

/// Sends pod B's SYN out and returns the translated port.
fn open(h: &mut Harness, sport: u16) -> u16 {
    let syn = seg((POD_B, sport), (WORLD, WEB), TCP_SYN);
    let (verdict, out) = h.run("to_netdev", &syn);
    assert_eq!(verdict, TC_ACT_OK);
    let t = tuple_of(&out);
    assert_eq!(t.src.0, NODE_IP, "SNAT to the node IP");
    t.src.1
}

#[test]
fn a_pod_syn_is_masqueraded_and_its_flow_keeps_the_mapping() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    let syn = seg((POD_B, POD_PORT), (WORLD, WEB), TCP_SYN);
    let (verdict, out) = h.run("to_netdev", &syn);
    assert_eq!(verdict, TC_ACT_OK, "the packet goes on out of the device");
    let t = tuple_of(&out);
    let port = t.src.1;
    assert_eq!(t.src.0, NODE_IP);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "port {port}");
    assert_eq!(t.dst, (WORLD, WEB), "destination untouched");
    assert_checksums(&out, false);
    assert_eq!(out[34 + 13], TCP_SYN, "flags untouched");
    assert_eq!(&out[54..], &syn[54..], "payload untouched");
    assert_eq!(&out[..14], &syn[..14], "MACs untouched");

    let e = h
        .maps
        .snat4
        .get(&egress_key((POD_B, POD_PORT), (WORLD, WEB), IPPROTO_TCP), 0)
        .unwrap();
    assert_eq!((e.to(), e.flags), ((v4(NODE_IP), port), NAT_F_MASQUERADE));
    let i = h
        .maps
        .snat4
        .get(&ingress_key((WORLD, WEB), port, IPPROTO_TCP), 0)
        .unwrap();
    assert_eq!((i.to(), i.flags), ((v4(POD_B), POD_PORT), NAT_F_MASQUERADE));
    let ct = masq_ct(&h, (POD_B, POD_PORT), (WORLD, WEB), IPPROTO_TCP);
    assert_lifetime(ct.lifetime, T_SYN, "SYN sent");
    assert_eq!((e.lifetime, i.lifetime), (ct.lifetime, ct.lifetime));

    // The SNAT trace: the pod's tuple, and the new source in nat_addr/nat_port.
    let snat: Vec<TraceEvent> = events(&mut h)
        .into_iter()
        .filter(|ev| ev.reason == TRACE_SNAT)
        .collect();
    assert_eq!(snat.len(), 1, "{snat:?}");
    let ev = snat[0];
    assert_eq!(
        (
            ev.kind,
            ev.dir,
            ev.src_ip,
            u16::from_be(ev.sport),
            ev.src_ep
        ),
        (
            EVENT_TRACE,
            METRIC_EGRESS,
            be_addr(v4(POD_B)),
            POD_PORT,
            202
        )
    );
    assert_eq!(
        (ev.nat_addr, u16::from_be(ev.nat_port)),
        (be_addr(v4(NODE_IP)), port)
    );

    // Established packets of the flow reuse the mapping.
    for flags in [TCP_ACK, TCP_ACK | 0x08] {
        let (verdict, out) = h.run("to_netdev", &seg((POD_B, POD_PORT), (WORLD, WEB), flags));
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(tuple_of(&out).src, (NODE_IP, port));
        assert_checksums(&out, false);
    }
    assert_eq!(nat_count(&h), 2, "one mapping pair for the flow");
}

#[test]
fn replies_are_translated_back_and_delivered_and_lifetimes_follow_tcp_state() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    let port = open(&mut h, POD_PORT);
    events(&mut h);

    let reply = arriving((WORLD, WEB), (NODE_IP, port), TCP_SYN | TCP_ACK);
    let (verdict, out) = h.run("from_netdev", &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected to the pod");
    let t = tuple_of(&out);
    assert_eq!(t.dst, (POD_B, POD_PORT), "destination is the pod again");
    assert_eq!(t.src, (WORLD, WEB));
    assert_checksums(&out, false);
    assert_eq!(&out[0..6], &POD_B_MAC, "to the pod's MAC");
    assert_eq!(&out[6..12], &LXC_B_MAC, "from its lxc device");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    let evs = events(&mut h);
    let rev = evs
        .iter()
        .find(|ev| ev.reason == TRACE_REV_SNAT)
        .expect("a rev-snat trace");
    assert_eq!(
        (rev.dst_ip, u16::from_be(rev.dport), rev.dir),
        (be_addr(v4(POD_B)), POD_PORT, METRIC_INGRESS),
        "after the translation"
    );
    assert_eq!(
        (rev.nat_addr, u16::from_be(rev.nat_port)),
        (be_addr(v4(NODE_IP)), port),
        "what the reply had before"
    );
    let deliver = evs
        .iter()
        .find(|ev| ev.reason == TRACE_FROM_NETDEV)
        .expect("a delivery trace");
    assert_eq!(
        (deliver.dst_ifindex, deliver.dst_ep),
        (POD_B_IFINDEX, 202),
        "to pod B's lxc"
    );

    let check = |h: &Harness, timeout: u32, what: &str| {
        let ct = masq_ct(h, (POD_B, POD_PORT), (WORLD, WEB), IPPROTO_TCP);
        assert_lifetime(ct.lifetime, timeout, what);
        let e = h
            .maps
            .snat4
            .get(&egress_key((POD_B, POD_PORT), (WORLD, WEB), IPPROTO_TCP), 0)
            .unwrap();
        let i = h
            .maps
            .snat4
            .get(&ingress_key((WORLD, WEB), port, IPPROTO_TCP), 0)
            .unwrap();
        assert_eq!(
            (e.lifetime, i.lifetime),
            (ct.lifetime, ct.lifetime),
            "{what}: both mappings follow the connection"
        );
        ct
    };
    check(&h, T_TCP, "answered");
    let out_seg = |flags| seg((POD_B, POD_PORT), (WORLD, WEB), flags);
    let in_seg = |flags| arriving((WORLD, WEB), (NODE_IP, port), flags);
    assert_eq!(h.run("to_netdev", &out_seg(TCP_ACK)).0, TC_ACT_OK);
    check(&h, T_TCP, "established");
    assert_eq!(h.run("to_netdev", &out_seg(TCP_FIN | TCP_ACK)).0, TC_ACT_OK);
    check(&h, T_TCP, "half closed");
    assert_eq!(
        h.run("from_netdev", &in_seg(TCP_FIN | TCP_ACK)).0,
        TC_ACT_REDIRECT
    );
    let ct = check(&h, T_FIN, "FIN both ways");
    assert_eq!(
        ct.flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING | CT_F_SEEN_REPLY),
        CT_F_TX_CLOSING | CT_F_RX_CLOSING | CT_F_SEEN_REPLY
    );

    // A reset from outside closes at once.
    let port = open(&mut h, POD_PORT + 1);
    let in_rst = arriving((WORLD, WEB), (NODE_IP, port), TCP_RST);
    assert_eq!(h.run("from_netdev", &in_rst).0, TC_ACT_REDIRECT);
    let ct = masq_ct(&h, (POD_B, POD_PORT + 1), (WORLD, WEB), IPPROTO_TCP);
    assert_lifetime(ct.lifetime, T_FIN, "RST");

    // A reply for a pod that is gone is a counted drop.
    h.maps
        .endpoints
        .remove(&ciliate_datapath::maps::EndpointKey::new(v4(POD_B)))
        .unwrap();
    events(&mut h);
    expect_drop(
        &mut h,
        "from_netdev",
        &in_seg(TCP_ACK),
        DROP_MASQ_NO_ENDPOINT,
        METRIC_INGRESS,
    );
}

#[test]
fn cluster_and_excluded_destinations_and_other_sources_are_not_translated() {
    root_only!();
    let mut h = harness(MASQ_F_BPF | MASQ_F_IP_MASQ_AGENT);
    for (src, dst, what) in [
        (POD_B, REMOTE_POD, "a pod on another node (ipcache)"),
        (POD_B, REMOTE_NODE, "another node (ipcache)"),
        (POD_B, NATIVE_CIDR_HOST, "ipv4NativeRoutingCIDR"),
        (POD_B, NON_MASQ, "ip-masq-agent's nonMasqueradeCIDRs"),
        (NODE_IP, WORLD, "the node itself"),
        (
            [10, 99, 0, 7],
            WORLD,
            "an address that is no local endpoint",
        ),
    ] {
        let syn = seg((src, POD_PORT), (dst, WEB), TCP_SYN);
        assert_eq!(h.run("to_netdev", &syn), (TC_ACT_OK, syn), "{what}");
    }
    assert_eq!(nat_count(&h), 0, "no mapping made");

    // Without ip-masq-agent its map does not count.
    h.maps.config.set(0, config(MASQ_F_BPF), 0).unwrap();
    let (_, out) = h.run(
        "to_netdev",
        &seg((POD_B, POD_PORT), (NON_MASQ, WEB), TCP_SYN),
    );
    assert_eq!(tuple_of(&out).src.0, NODE_IP);
}

#[test]
fn only_connections_the_pod_starts_get_a_mapping() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    // Packets of no connection the pod started nor one from_netdev saw
    // coming in: they would leave with the pod's private address.
    for packet in [
        seg((POD_B, 8080), (WORLD, 50000), TCP_SYN | TCP_ACK),
        seg((POD_B, 8080), (WORLD, 50000), TCP_ACK),
        seg((POD_B, 8080), (WORLD, 50000), TCP_RST),
        echo(POD_B, WORLD, 0, 99),
    ] {
        expect_drop(
            &mut h,
            "to_netdev",
            &packet,
            DROP_MASQ_NO_MAPPING,
            METRIC_EGRESS,
        );
    }
    assert_eq!(nat_count(&h), 0, "no mapping made");
    // A fragment of what would be masqueraded never leaves with the pod's address.
    let mut frag = seg((POD_B, POD_PORT), (WORLD, WEB), TCP_SYN);
    frag[20] = 0x20; // more fragments
    let c = checksum(&{
        let mut hdr = frag[14..34].to_vec();
        hdr[10] = 0;
        hdr[11] = 0;
        hdr
    });
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    expect_drop(&mut h, "to_netdev", &frag, DROP_FRAG_MASQ, METRIC_EGRESS);
}

#[test]
fn udp_and_icmp_echo_are_masqueraded_and_answered() {
    root_only!();
    let h = harness(MASQ_F_BPF);
    // UDP, with and without a checksum.
    for (sport, with_csum) in [(5353u16, true), (5354, false)] {
        let packet = udp_frame((NET_MAC, DEV_MAC), (POD_B, sport), (WORLD, 53), with_csum);
        let (verdict, out) = h.run("to_netdev", &packet);
        assert_eq!(verdict, TC_ACT_OK);
        let t = tuple_of(&out);
        let port = t.src.1;
        assert_eq!(t.src.0, NODE_IP);
        assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port));
        assert_checksums(&out, !with_csum);
        let ct = masq_ct(&h, (POD_B, sport), (WORLD, 53), IPPROTO_UDP);
        assert_lifetime(ct.lifetime, T_ANY, "UDP");
        let reply = udp_frame((DEV_MAC, NET_MAC), (WORLD, 53), (NODE_IP, port), with_csum);
        let (verdict, out) = h.run("from_netdev", &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(tuple_of(&out).dst, (POD_B, sport));
        assert_checksums(&out, !with_csum);
    }

    // ICMP echo: the identifier is translated like a port.
    let request = echo(POD_B, WORLD, 8, 7);
    let (verdict, out) = h.run("to_netdev", &request);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE_IP, WORLD));
    let id = echo_id(&out);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&id), "id {id}");
    assert_icmp_checksums(&out);
    assert_eq!(&out[42..], &request[42..], "sequence and payload untouched");
    let i = h
        .maps
        .snat4
        .get(&ingress_key((WORLD, 0), id, ICMP), 0)
        .unwrap();
    assert_eq!((i.to(), i.flags), ((v4(POD_B), 7), NAT_F_MASQUERADE));
    let ct = masq_ct(&h, (POD_B, 7), (WORLD, 0), ICMP);
    assert_lifetime(ct.lifetime, T_ANY, "ICMP");
    // The next echo of the same ping keeps the identifier.
    let (_, again) = h.run("to_netdev", &request);
    assert_eq!(echo_id(&again), id);

    let mut reply = echo(WORLD, NODE_IP, 0, id);
    reply[0..12].copy_from_slice(&[DEV_MAC, NET_MAC].concat());
    let (verdict, out) = h.run("from_netdev", &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(addrs(&out), (WORLD, POD_B));
    assert_eq!(echo_id(&out), 7, "the pod's identifier again");
    assert_icmp_checksums(&out);
    assert_eq!(&out[0..6], &POD_B_MAC);
}

#[test]
fn a_taken_port_is_retried_and_no_free_port_drops() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    let other = Nat4Entry {
        to_addr: be_addr(Ipv4Addr::new(10, 77, 0, 99)),
        to_port: 1234u16.to_be(),
        flags: NAT_F_MASQUERADE,
        lifetime: monotonic_seconds() + 1000,
        created: monotonic_seconds(),
    };
    // The pod's own port is in the NAT range, but another pod holds it.
    let taken = ingress_key((WORLD, WEB), IN_RANGE_PORT, IPPROTO_TCP);
    h.maps.snat4.insert(taken, other, 0).unwrap();
    let port = open(&mut h, IN_RANGE_PORT);
    assert_ne!(port, IN_RANGE_PORT, "the taken port is not reused");
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port));
    assert_eq!(
        h.maps.snat4.get(&taken, 0).unwrap(),
        other,
        "the other stays"
    );
    let i = h
        .maps
        .snat4
        .get(&ingress_key((WORLD, WEB), port, IPPROTO_TCP), 0)
        .unwrap();
    assert_eq!(i.to(), (v4(POD_B), IN_RANGE_PORT));

    // Every port towards WORLD:WEB taken (by NodePort, which shares them).
    let np = Nat4Entry {
        flags: NAT_F_NODEPORT,
        ..other
    };
    for p in NAT_PORT_MIN..=NAT_PORT_MAX {
        h.maps
            .snat4
            .insert(ingress_key((WORLD, WEB), p, IPPROTO_TCP), np, 0)
            .unwrap();
    }
    let syn = seg((POD_B, POD_PORT + 5), (WORLD, WEB), TCP_SYN);
    events(&mut h);
    expect_drop(
        &mut h,
        "to_netdev",
        &syn,
        DROP_NAT_NO_MAPPING,
        METRIC_EGRESS,
    );
}

#[test]
fn without_bpf_masquerading_to_netdev_changes_nothing() {
    root_only!();
    for masquerade in [0, MASQ_F_IPTABLES, MASQ_F_IPTABLES | MASQ_F_IP_MASQ_AGENT] {
        let mut h = harness(masquerade);
        let syn = seg((POD_B, POD_PORT), (WORLD, WEB), TCP_SYN);
        assert_eq!(h.run("to_netdev", &syn), (TC_ACT_OK, syn.clone()));
        let request = echo(POD_B, WORLD, 8, 7);
        assert_eq!(h.run("to_netdev", &request), (TC_ACT_OK, request));
        assert_eq!(nat_count(&h), 0);
        assert!(events(&mut h).is_empty(), "no event");
    }
    // BPF masquerading without a node IP cannot translate either.
    let mut h = harness(MASQ_F_BPF);
    let mut cfg = config(MASQ_F_BPF);
    cfg.node_ip = 0;
    h.maps.config.set(0, cfg, 0).unwrap();
    let syn = seg((POD_B, POD_PORT), (WORLD, WEB), TCP_SYN);
    assert_eq!(h.run("to_netdev", &syn), (TC_ACT_OK, syn));
    assert!(events(&mut h).is_empty());
}

/// Pod A's packet as `from_container` sees it.
fn from_pod_a(sport: u16, dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame((LXC_A_MAC, POD_A_MAC), (POD_A, sport), dst, flags)
}

#[test]
fn iptables_mode_hands_pod_traffic_to_the_stack_but_not_service_replies() {
    root_only!();
    let mut spaces = Namespaces::new();
    let node = spaces.create("masq-ipt-node");
    let peer = spaces.create("masq-ipt-peer");
    let (native, peer_mac) = wire_native(&node, &peer, v4(NODE_IP), v4(REMOTE_NODE));
    ip(
        &node,
        &[
            "neigh",
            "replace",
            "192.168.10.2",
            "lladdr",
            &format_mac(peer_mac),
            "dev",
            "nat0",
            "nud",
            "permanent",
        ],
    );
    for net in ["10.10.0.0/16", "10.78.0.0/24", "172.20.0.0/16"] {
        ip(&node, &["route", "add", net, "via", "192.168.10.2"]);
    }
    sysctls(&node, &[("net/ipv4/conf/nat0/forwarding", "1")]);

    in_netns(&node, move || {
        let mut h = harness(0);
        let mut cfg = config(0);
        cfg.native_ifindex = native.index;
        h.maps.config.set(0, cfg, 0).unwrap();
        // Pod A is the backend of a NodePort, reached from outside.
        h.maps
            .lb4_backends
            .insert(
                1,
                Lb4Backend::new(v4(POD_A), 8080, IPPROTO_TCP, BE_STATE_ACTIVE),
                0,
            )
            .unwrap();
        let np = |slot| {
            Lb4Key::new(
                Ipv4Addr::UNSPECIFIED,
                30080,
                IPPROTO_TCP,
                LB_SCOPE_EXTERNAL,
                slot,
            )
        };
        h.maps
            .lb4_services
            .insert(
                np(1),
                Lb4Service {
                    backend_id: 1,
                    ..Lb4Service::default()
                },
                0,
            )
            .unwrap();
        let svc = Lb4Service {
            rev_nat_index: 9,
            count: 1,
            flags: SVC_F_NODEPORT,
            ..Lb4Service::default()
        };
        h.maps.lb4_services.insert(np(0), svc, 0).unwrap();
        h.maps
            .lb4_reverse_nat
            .insert(9, Lb4ReverseNat::new(Ipv4Addr::UNSPECIFIED, 30080), 0)
            .unwrap();
        let client = ([10, 10, 1, 50], 50000);
        let to_np = arriving(client, (NODE_IP, 30080), TCP_SYN);
        assert_eq!(h.run("from_netdev", &to_np).0, TC_ACT_REDIRECT);
        let np_reply = from_pod_a(8080, client, TCP_SYN | TCP_ACK);
        let to_world = from_pod_a(POD_PORT, (WORLD, WEB), TCP_SYN);

        // BPF mode (or none): both leave through the FIB.
        for packet in [&to_world, &np_reply] {
            assert_eq!(h.run("from_container", packet).0, TC_ACT_REDIRECT);
        }
        events(&mut h);

        // iptables mode: the pod's own traffic goes to the stack untouched,
        // the NodePort reply (source now the node IP) still leaves by the FIB.
        cfg.masquerade = MASQ_F_IPTABLES;
        h.maps.config.set(0, cfg, 0).unwrap();
        assert_eq!(
            h.run("from_container", &to_world),
            (TC_ACT_OK, to_world.clone())
        );
        let ev = h.next_event().unwrap();
        assert_eq!((ev.reason, ev.dir), (TRACE_TO_STACK, METRIC_EGRESS));
        let (verdict, out) = h.run("from_container", &np_reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(tuple_of(&out).src, (NODE_IP, 30080));
        let ev = h.next_event().unwrap();
        assert_eq!(ev.reason, TRACE_TO_NETDEV);
        // Pods and nodes are still reached without the stack: here and on
        // other nodes (native routing), where host conntrack would see one
        // direction only.
        let to_pod = from_pod_a(POD_PORT, (POD_B, WEB), TCP_SYN);
        assert_eq!(h.run("from_container", &to_pod).0, TC_ACT_REDIRECT);
        events(&mut h);
        for (dst, what) in [
            (REMOTE_POD, "a pod on another node (ipcache)"),
            (REMOTE_NODE, "another node (ipcache)"),
            (NATIVE_CIDR_HOST, "ipv4NativeRoutingCIDR"),
        ] {
            let packet = from_pod_a(POD_PORT, (dst, WEB), TCP_SYN);
            let (verdict, out) = h.run("from_container", &packet);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{what}: redirected by the FIB");
            assert_eq!(
                tuple_of(&out).src,
                (POD_A, POD_PORT),
                "{what}: untranslated"
            );
            let ev = h.next_event().unwrap();
            assert_eq!(ev.reason, TRACE_TO_NETDEV, "{what}");
        }
    });
}

/// An ICMP error from `router` to the node about `quoted` (an Ethernet
/// frame as it left): its IP header and first 8 bytes of L4.
fn icmp_error(router: [u8; 4], kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut i = vec![kind, code, 0, 0, 0, 0, 0x05, 0x78];
    i.extend_from_slice(&quoted[14..14 + 28]);
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    eth(
        DEV_MAC,
        NET_MAC,
        0x0800,
        &ipv4(router, NODE_IP, 64, ICMP, &i),
    )
}

#[test]
fn icmp_errors_about_masqueraded_packets_reach_the_pod() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    let router = [10, 10, 0, 254];
    let syn = seg((POD_B, POD_PORT), (WORLD, WEB), TCP_SYN);
    let (_, left) = h.run("to_netdev", &syn);
    let udp = udp_frame((NET_MAC, DEV_MAC), (POD_B, 5353), (WORLD, 53), true);
    let (_, left_udp) = h.run("to_netdev", &udp);
    let request = echo(POD_B, WORLD, 8, 7);
    let (_, left_echo) = h.run("to_netdev", &request);

    // Fragmentation needed (TCP), port unreachable (UDP), time exceeded (ping).
    for (kind, code, quoted, original) in [
        (3, 4, &left, &syn),
        (3, 3, &left_udp, &udp),
        (11, 0, &left_echo, &request),
    ] {
        let error = icmp_error(router, kind, code, quoted);
        let (verdict, out) = h.run("from_netdev", &error);
        assert_eq!(verdict, TC_ACT_REDIRECT, "type {kind} delivered to the pod");
        assert_eq!(addrs(&out), (router, POD_B), "outer destination is the pod");
        assert_icmp_checksums(&out);
        // The quote is the packet as the pod sent it, but for its own L4
        // checksum (UDP's, ICMP's; TCP's is beyond 8 bytes), left as it was:
        // receivers do not check it.
        let masked = |quote: &[u8]| {
            let mut q = quote[..28].to_vec();
            let at = if q[9] == IPPROTO_UDP { 26 } else { 22 };
            if q[9] != IPPROTO_TCP {
                q[at..at + 2].copy_from_slice(&[0, 0]);
            }
            q
        };
        assert_eq!(masked(&out[42..]), masked(&original[14..]), "type {kind}");
        assert_eq!(checksum(&out[42..62]), 0, "quoted IP header checksum");
        assert_eq!(&out[0..6], &POD_B_MAC);
    }

    // Errors about packets that were not masqueraded go on to the stack:
    // a port below the NAT range (no lookup), one in the range without a
    // mapping, and one whose mapping is NodePort's.
    let below = seg((NODE_IP, 40000), (WORLD, WEB), TCP_SYN);
    let unmapped = seg((NODE_IP, IN_RANGE_PORT), (WORLD, WEB), TCP_SYN);
    let nodeport = seg((NODE_IP, IN_RANGE_PORT + 1), (WORLD, WEB), TCP_SYN);
    let np = Nat4Entry {
        to_addr: be_addr(Ipv4Addr::new(10, 10, 1, 50)),
        to_port: 50000u16.to_be(),
        flags: NAT_F_NODEPORT,
        lifetime: monotonic_seconds() + 1000,
        created: monotonic_seconds(),
    };
    h.maps
        .snat4
        .insert(
            ingress_key((WORLD, WEB), IN_RANGE_PORT + 1, IPPROTO_TCP),
            np,
            0,
        )
        .unwrap();
    for (quoted, what) in [
        (&below, "below the NAT range"),
        (&unmapped, "no mapping"),
        (&nodeport, "a NodePort mapping"),
    ] {
        let error = icmp_error(router, 3, 4, quoted);
        assert_eq!(h.run("from_netdev", &error), (TC_ACT_OK, error), "{what}");
    }
}

/// Pod B's connections to outside made while masquerading was BPF, and
/// their replies; after a switch to iptables (or off) the mappings pinned
/// from before capture none of them: they go to the stack untouched.
#[test]
fn stale_masquerade_mappings_capture_no_replies_after_a_mode_switch() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    let port = open(&mut h, POD_PORT);
    let (_, left_echo) = h.run("to_netdev", &echo(POD_B, WORLD, 8, 7));
    let id = echo_id(&left_echo);
    let syn_ack = arriving((WORLD, WEB), (NODE_IP, port), TCP_SYN | TCP_ACK);
    let mut echo_reply = echo(WORLD, NODE_IP, 0, id);
    echo_reply[0..12].copy_from_slice(&[DEV_MAC, NET_MAC].concat());
    let left = seg((NODE_IP, port), (WORLD, WEB), TCP_SYN);
    let error = icmp_error([10, 10, 0, 254], 3, 4, &left);
    // While BPF masquerades, all three are the pod's.
    for packet in [&syn_ack, &echo_reply, &error] {
        assert_eq!(h.run("from_netdev", packet).0, TC_ACT_REDIRECT);
    }
    for masquerade in [MASQ_F_IPTABLES, 0] {
        h.maps.config.set(0, config(masquerade), 0).unwrap();
        for packet in [&syn_ack, &echo_reply, &error] {
            assert_eq!(
                h.run("from_netdev", packet),
                (TC_ACT_OK, packet.clone()),
                "masquerade flags {masquerade:#x}"
            );
        }
    }
}

/// An arriving frame from outside (or another network) to pod B.
fn udp_in(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    udp_frame((DEV_MAC, NET_MAC), src, dst, true)
}

fn udp_out(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    udp_frame((NET_MAC, DEV_MAC), src, dst, true)
}

#[test]
fn replies_of_inbound_udp_and_echo_leave_untranslated() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    let client = (WORLD, 5000);
    let request = udp_in(client, (POD_B, 53));
    assert_eq!(h.run("from_netdev", &request).0, TC_ACT_REDIRECT);
    let ct = masq_ct(&h, (POD_B, 53), client, IPPROTO_UDP);
    assert_eq!(ct.flags & CT_F_INBOUND, CT_F_INBOUND, "{ct:?}");
    assert_eq!((ct.tx_packets, ct.rx_packets), (1, 0));
    assert_lifetime(ct.lifetime, T_ANY, "inbound UDP");

    let reply = udp_out((POD_B, 53), client);
    assert_eq!(h.run("to_netdev", &reply), (TC_ACT_OK, reply.clone()));
    let ct = masq_ct(&h, (POD_B, 53), client, IPPROTO_UDP);
    assert_eq!((ct.tx_packets, ct.rx_packets), (1, 1), "the reply counted");
    assert_eq!(nat_count(&h), 0, "no mapping made");

    // A ping from outside: its echo reply keeps the pod's address too.
    let mut request = echo(WORLD, POD_B, 8, 99);
    request[0..12].copy_from_slice(&[DEV_MAC, NET_MAC].concat());
    assert_eq!(h.run("from_netdev", &request).0, TC_ACT_REDIRECT);
    let ct = masq_ct(&h, (POD_B, 0), (WORLD, 99), ICMP);
    assert_eq!(ct.flags & CT_F_INBOUND, CT_F_INBOUND);
    let answer = echo(POD_B, WORLD, 0, 99);
    assert_eq!(h.run("to_netdev", &answer), (TC_ACT_OK, answer.clone()));
    assert_eq!(nat_count(&h), 0, "no mapping made");

    // The pod's own flow to another port of the client is still masqueraded.
    let (_, out) = h.run("to_netdev", &udp_out((POD_B, 53), (WORLD, 5001)));
    assert_eq!(tuple_of(&out).src.0, NODE_IP);

    // From inside the cluster nothing is recorded: the pod's replies are
    // never masqueraded anyway.
    let before = h.maps.ct4_any.keys().count();
    let from_pod = udp_in((REMOTE_POD, 5000), (POD_B, 53));
    assert_eq!(h.run("from_netdev", &from_pod).0, TC_ACT_REDIRECT);
    assert_eq!(h.maps.ct4_any.keys().count(), before);
    events(&mut h);
}

#[test]
fn without_bpf_masquerading_inbound_flows_are_not_recorded() {
    root_only!();
    for masquerade in [0, MASQ_F_IPTABLES] {
        let h = harness(masquerade);
        let request = udp_in((WORLD, 5000), (POD_B, 53));
        assert_eq!(h.run("from_netdev", &request).0, TC_ACT_REDIRECT);
        let syn = arriving((WORLD, 50000), (POD_B, 8080), TCP_SYN);
        assert_eq!(h.run("from_netdev", &syn).0, TC_ACT_REDIRECT);
        assert_eq!(h.maps.ct4_any.keys().count(), 0);
        assert_eq!(h.maps.ct4_tcp.keys().count(), 0);
    }
}

#[test]
fn replies_of_inbound_tcp_leave_untranslated_and_follow_its_state() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    let client = (WORLD, 50000);
    let server = (POD_B, 8080);
    let inbound = |flags| arriving(client, server, flags);
    let outbound = |flags| seg(server, client, flags);
    let state = |h: &Harness| masq_ct(h, server, client, IPPROTO_TCP);

    assert_eq!(h.run("from_netdev", &inbound(TCP_SYN)).0, TC_ACT_REDIRECT);
    let ct = state(&h);
    assert_eq!(ct.flags, CT_F_INBOUND, "recorded, not answered yet");
    assert_lifetime(ct.lifetime, T_SYN, "inbound SYN");

    let syn_ack = outbound(TCP_SYN | TCP_ACK);
    assert_eq!(h.run("to_netdev", &syn_ack), (TC_ACT_OK, syn_ack.clone()));
    assert_lifetime(state(&h).lifetime, T_TCP, "answered");
    assert_eq!(h.run("from_netdev", &inbound(TCP_ACK)).0, TC_ACT_REDIRECT);
    let data = outbound(TCP_ACK | 0x08);
    assert_eq!(h.run("to_netdev", &data), (TC_ACT_OK, data.clone()));
    let fin = outbound(TCP_FIN | TCP_ACK);
    assert_eq!(h.run("to_netdev", &fin), (TC_ACT_OK, fin.clone()));
    assert_eq!(
        h.run("from_netdev", &inbound(TCP_FIN | TCP_ACK)).0,
        TC_ACT_REDIRECT
    );
    let ct = state(&h);
    assert_lifetime(ct.lifetime, T_FIN, "FIN both ways");
    assert_eq!((ct.tx_packets, ct.rx_packets), (3, 3));
    let last_ack = outbound(TCP_ACK);
    assert_eq!(h.run("to_netdev", &last_ack), (TC_ACT_OK, last_ack.clone()));
    assert_eq!(nat_count(&h), 0, "no mapping made");
    events(&mut h);

    // Once it is closed, the pod may start its own connection on the tuple:
    // that one is masqueraded.
    let (verdict, out) = h.run("to_netdev", &outbound(TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(tuple_of(&out).src.0, NODE_IP, "a new outgoing connection");
    let ct = state(&h);
    assert_eq!(ct.flags & CT_F_INBOUND, 0, "{ct:?}");
}

#[test]
fn a_mid_stream_packet_without_mapping_or_inbound_entry_is_dropped() {
    root_only!();
    let mut h = harness(MASQ_F_BPF);
    // The pod's established flow whose mapping is gone (GC, LRU, a restart).
    let port = open(&mut h, POD_PORT);
    let ack = seg((POD_B, POD_PORT), (WORLD, WEB), TCP_ACK);
    assert_eq!(tuple_of(&h.run("to_netdev", &ack).1).src, (NODE_IP, port));
    for key in [
        egress_key((POD_B, POD_PORT), (WORLD, WEB), IPPROTO_TCP),
        ingress_key((WORLD, WEB), port, IPPROTO_TCP),
    ] {
        h.maps.snat4.remove(&key).unwrap();
    }
    h.maps
        .ct4_tcp
        .remove(&Ct4Key::new(
            v4(POD_B),
            POD_PORT,
            v4(WORLD),
            WEB,
            IPPROTO_TCP,
            CT_KEY_MASQ,
        ))
        .unwrap();
    events(&mut h);
    expect_drop(
        &mut h,
        "to_netdev",
        &ack,
        DROP_MASQ_NO_MAPPING,
        METRIC_EGRESS,
    );
    assert_eq!(nat_count(&h), 0, "no mapping made for it");
    // A new SYN starts over with a new mapping.
    let (_, out) = h.run("to_netdev", &seg((POD_B, POD_PORT), (WORLD, WEB), TCP_SYN));
    assert_eq!(tuple_of(&out).src.0, NODE_IP);
}

/// `BPF_PROG_TEST_RUN` builds linear packets, so this only shows that the
/// pull in front of the quote's checks (masq_pull) lets a packet shorter
/// than what it asks for through to the stack untouched, for every mode.
#[test]
fn a_truncated_icmp_error_goes_to_the_stack_untouched() {
    root_only!();
    let h = harness(MASQ_F_BPF);
    let (_, left) = h.run("to_netdev", &seg((POD_B, POD_PORT), (WORLD, WEB), TCP_SYN));
    let mut i = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    i.extend_from_slice(&left[14..14 + 24]);
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    let error = eth(
        DEV_MAC,
        NET_MAC,
        0x0800,
        &ipv4([10, 10, 0, 254], NODE_IP, 64, ICMP, &i),
    );
    assert_eq!(h.run("from_netdev", &error), (TC_ACT_OK, error));
}

/// Pod A's device in tunnel mode: remote pods behind REMOTE_NODE's tunnel
/// endpoint, REMOTE_NODE and this node's own address in the ipcache as the
/// agent writes them (a remote node's identity, the host's).
const TUNNEL_IFINDEX: u32 = 777;
const REMOTE_NODE_IDENTITY: u32 = 6;

fn via_stack_harness() -> Harness {
    let mut h = harness(MASQ_F_BPF);
    let mut cfg = config(MASQ_F_BPF);
    cfg.tunnel_ifindex = TUNNEL_IFINDEX;
    h.maps.config.set(0, cfg, 0).unwrap();
    let tunnel_endpoint = u32::from_ne_bytes(REMOTE_NODE);
    for (net, sec_identity, flags) in [
        ("10.78.0.0/24", 5151, 0),
        ("192.168.10.2/32", REMOTE_NODE_IDENTITY, IPCACHE_F_HOST),
    ] {
        let value = IpcacheValue {
            sec_identity,
            tunnel_endpoint,
            flags,
            pad: 0,
        };
        h.maps
            .ipcache
            .insert(&ipcache_key(net.parse().unwrap()), value, 0)
            .unwrap();
    }
    let own = IpcacheValue {
        sec_identity: IDENTITY_HOST,
        flags: IPCACHE_F_HOST,
        ..IpcacheValue::default()
    };
    for net in ["192.168.10.1/32", "10.77.0.1/32"] {
        h.maps
            .ipcache
            .insert(&ipcache_key(net.parse().unwrap()), own, 0)
            .unwrap();
    }
    h
}

/// A frame the host stack sends pod A (out of ciliate_host: `from_host` sees it).
fn stack_to_pod_a(src: ([u8; 4], u16), dport: u16, flags: u8) -> Vec<u8> {
    tcp_frame((POD_A_MAC, LXC_A_MAC), src, (POD_A, dport), flags)
}

fn masq_ct_of(h: &Harness, src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Option<Ct4Entry> {
    let key = Ct4Key::new(v4(src.0), src.1, v4(dst.0), dst.1, IPPROTO_TCP, CT_KEY_MASQ);
    h.maps.ct4_tcp.get(&key, 0).ok()
}

/// A hostPort connection netfilter DNATed to pod A, from outside the cluster,
/// from a pod on another node or from another node itself: `from_host`
/// records it as it delivers it, and the pod's replies go to the stack (which translates them
/// back) instead of out through the FIB or the tunnel.
#[test]
fn replies_of_connections_the_stack_delivers_from_elsewhere_go_back_to_the_stack() {
    root_only!();
    let mut h = via_stack_harness();
    let server = (POD_A, 8080);
    for (client, what) in [
        ((WORLD, 50000), "an outside client"),
        ((REMOTE_POD, 50001), "a pod on another node"),
        ((REMOTE_NODE, 50002), "another node"),
    ] {
        let syn = stack_to_pod_a(client, server.1, TCP_SYN);
        assert_eq!(h.run("from_host", &syn).0, TC_ACT_REDIRECT);
        let ct = masq_ct_of(&h, server, client)
            .unwrap_or_else(|| panic!("{what}: the connection is recorded"));
        assert_eq!(ct.flags, CT_F_INBOUND | CT_F_VIA_STACK, "{what}: {ct:?}");
        assert_eq!((ct.tx_packets, ct.rx_packets), (1, 0), "{what}");
        assert_lifetime(ct.lifetime, T_SYN, what);
        events(&mut h);

        for flags in [TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK] {
            let reply = from_pod_a(server.1, client, flags);
            assert_eq!(
                h.run("from_container", &reply),
                (TC_ACT_OK, reply.clone()),
                "{what}: the pod's reply goes to the stack untouched"
            );
            let ev = events(&mut h);
            assert_eq!(
                ev.iter()
                    .map(|e| (e.reason, e.dst_ifindex))
                    .collect::<Vec<_>>(),
                [(TRACE_TO_STACK, 0)],
                "{what}"
            );
        }
        let ct = masq_ct_of(&h, server, client).unwrap();
        assert_eq!(
            (ct.tx_packets, ct.rx_packets),
            (1, 3),
            "{what}: replies counted"
        );
        assert_eq!(nat_count(&h), 0, "{what}: no mapping made");
    }

    // The contrast: the pod's own connection to that remote pod goes
    // through the tunnel, as the replies above would have without the entry.
    let own = from_pod_a(POD_PORT, (REMOTE_POD, 50001), TCP_SYN);
    assert_eq!(h.run("from_container", &own).0, TC_ACT_REDIRECT);
    let ev = events(&mut h);
    assert_eq!(ev[0].reason, TRACE_TO_OVERLAY);
    assert_eq!(ev[0].dst_ifindex, TUNNEL_IFINDEX);

    // UDP too, from its first packet.
    let client = (WORLD, 5353);
    let request = udp_frame((POD_A_MAC, LXC_A_MAC), client, (POD_A, 53), true);
    assert_eq!(h.run("from_host", &request).0, TC_ACT_REDIRECT);
    let ct = masq_ct(&h, (POD_A, 53), client, IPPROTO_UDP);
    assert_eq!(ct.flags, CT_F_INBOUND | CT_F_VIA_STACK, "{ct:?}");
    let reply = udp_frame((LXC_A_MAC, POD_A_MAC), (POD_A, 53), client, true);
    assert_eq!(h.run("from_container", &reply), (TC_ACT_OK, reply.clone()));
    let ct = masq_ct(&h, (POD_A, 53), client, IPPROTO_UDP);
    assert_eq!((ct.tx_packets, ct.rx_packets), (1, 1));
}

/// What needs no entry: the node's own connections (their replies reach
/// the stack anyway), a connection the pod started (the stack delivering
/// its SYN-ACK, e.g. after iptables masquerading), a pod of this node, and a
/// TCP segment that starts nothing.
#[test]
fn the_nodes_own_pod_started_and_local_pod_connections_get_no_via_stack_entry() {
    root_only!();
    let mut h = via_stack_harness();
    let server = (POD_A, 8080);
    for (client, what) in [
        ((NODE_IP, 40001), "the node's address"),
        ((ROUTER, 40002), "the router address"),
        ((POD_B, 40003), "a pod of this node"),
    ] {
        let syn = stack_to_pod_a(client, server.1, TCP_SYN);
        assert_eq!(h.run("from_host", &syn).0, TC_ACT_REDIRECT);
        assert_eq!(masq_ct_of(&h, server, client), None, "{what}");
    }
    let mid_stream = stack_to_pod_a((WORLD, 40004), server.1, TCP_ACK);
    assert_eq!(h.run("from_host", &mid_stream).0, TC_ACT_REDIRECT);
    assert_eq!(masq_ct_of(&h, server, (WORLD, 40004)), None, "no SYN");

    // Pod A starts connections to a remote pod and to the outside; the
    // stack hands it their SYN-ACKs: nothing is recorded and the pod's
    // next segments take their usual paths (the tunnel; the FIB, which
    // without a native device is the stack).
    for (peer, verdict) in [
        ((REMOTE_POD, WEB), TC_ACT_REDIRECT),
        ((WORLD, WEB), TC_ACT_OK),
    ] {
        let syn = from_pod_a(POD_PORT, peer, TCP_SYN);
        assert_eq!(h.run("from_container", &syn).0, verdict, "{peer:?}");
        let syn_ack = stack_to_pod_a(peer, POD_PORT, TCP_SYN | TCP_ACK);
        assert_eq!(h.run("from_host", &syn_ack).0, TC_ACT_REDIRECT);
        assert_eq!(masq_ct_of(&h, (POD_A, POD_PORT), peer), None, "{peer:?}");
        let ack = from_pod_a(POD_PORT, peer, TCP_ACK);
        assert_eq!(h.run("from_container", &ack).0, verdict, "{peer:?}");
    }
    assert_eq!(h.maps.ct4_tcp.keys().count(), 0);
    events(&mut h);
}
