//! BPF host routing and the tunnel against the real kernel, in namespaces
//! made for each test (unique names, removed even when a test fails):
//! - every `bpf_fib_lookup` outcome of `from_container`, run with
//!   `BPF_PROG_TEST_RUN` inside a namespace that has the routes and
//!   neighbours to produce it;
//! - a pod pinging another "node" through `bpf_redirect_neigh` and
//!   `bpf_redirect` out of the native device;
//! - a node reaching another node's router IP through VXLAN (`from_host`
//!   encapsulates, the other side's `from_overlay` hands it to the stack), a
//!   pod doing the same, and the node reaching a local pod through
//!   `ciliate_host`.

#[macro_use]
mod common;

use std::net::Ipv4Addr;

use ciliate_datapath::loader::{Datapath, Maps, LXC_ATTACH};
use ciliate_datapath::maps::{
    ipcache_key, DatapathConfig, IpcacheValue, TraceEvent, EVENT_TRACE, IDENTITY_HOST,
    METRIC_EGRESS, METRIC_INGRESS,
};
use ciliate_datapath::netlink::{format_mac, Netlink, Route};
use ciliate_datapath::reasons::{
    DROP_FRAG_NEEDED, DROP_NO_ROUTE, DROP_TTL_EXCEEDED, TRACE_FROM_HOST, TRACE_FROM_OVERLAY,
    TRACE_TO_NETDEV, TRACE_TO_OVERLAY, TRACE_TO_STACK,
};
use ciliate_datapath::{netns, sysctl};
use common::*;

fn from_pod(dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    eth(
        LXC_A_MAC,
        POD_A_MAC,
        0x0800,
        &ipv4(POD_A, dst, ttl, 1, payload),
    )
}

#[test]
fn fib_outcomes_decide_between_redirect_stack_and_drop() {
    root_only!();
    let mut spaces = Namespaces::new();
    let node = spaces.create("fib-node");
    let peer = spaces.create("fib-peer");
    let node_ip = Ipv4Addr::new(192, 168, 77, 1);
    let (native, peer_mac) = wire_native(&node, &peer, node_ip, Ipv4Addr::new(192, 168, 77, 2));
    ip(
        &node,
        &[
            "neigh",
            "replace",
            "192.168.77.2",
            "lladdr",
            &format_mac(peer_mac),
            "dev",
            "nat0",
            "nud",
            "permanent",
        ],
    );
    for route in [
        "10.99.0.0/24 via 192.168.77.2 dev nat0", // SUCCESS: the gateway's MAC is known
        "10.98.0.0/24 via 192.168.77.3 dev nat0", // NO_NEIGH: nobody knows .3 yet
        "unreachable 10.97.0.0/24",
        "blackhole 10.96.0.0/24",
        "prohibit 10.95.0.0/24",
    ] {
        let mut args = vec!["route", "add"];
        args.extend(route.split_whitespace());
        ip(&node, &args);
    }
    sysctls(
        &node,
        &[
            ("net/ipv4/conf/all/forwarding", "0"),
            ("net/ipv4/conf/nat0/forwarding", "1"),
        ],
    );

    // BPF_PROG_TEST_RUN and bpf_fib_lookup act in the calling thread's namespace.
    in_netns(&node, move || {
        let mut h = Harness::new(true);
        let mut cfg = DatapathConfig::new(Ipv4Addr::from(ROUTER), true);
        cfg.native_ifindex = native.index;
        h.maps.config.set(0, cfg, 0).unwrap();
        // A remote PodCIDR as native mode writes it: an identity, no tunnel endpoint.
        let value = IpcacheValue {
            sec_identity: 6161,
            ..IpcacheValue::default()
        };
        h.maps
            .ipcache
            .insert(&ipcache_key("10.99.0.0/24".parse().unwrap()), value, 0)
            .unwrap();
        let native_mac = native.mac.unwrap();

        // SUCCESS: MACs from the FIB result, TTL down, out of the native device.
        let packet = from_pod([10, 99, 0, 5], 64, &icmp_echo());
        let (verdict, out) = h.run("from_container", &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(&out[0..6], &peer_mac, "destination MAC: the gateway's");
        assert_eq!(&out[6..12], &native_mac, "source MAC: the native device's");
        assert_eq!(out[14 + 8], 63, "TTL decremented");
        assert_eq!(checksum(&out[14..34]), 0, "header checksum still valid");
        assert_eq!(&out[34..], &packet[34..], "payload untouched");
        let ev = h.next_event().unwrap();
        assert_eq!(
            (ev.kind, ev.reason, ev.dir, ev.dst_ifindex),
            (EVENT_TRACE, TRACE_TO_NETDEV, METRIC_EGRESS, native.index)
        );
        let expiring = from_pod([10, 99, 0, 5], 1, &icmp_echo());
        expect_drop(
            &mut h,
            "from_container",
            &expiring,
            DROP_TTL_EXCEEDED,
            METRIC_EGRESS,
        );

        // NO_NEIGH: bpf_redirect_neigh fills the MACs later, in the kernel.
        let packet = from_pod([10, 98, 0, 5], 64, &icmp_echo());
        let (verdict, out) = h.run("from_container", &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            &out[0..12],
            &packet[0..12],
            "MACs left to the neighbour subsystem"
        );
        assert_eq!(out[14 + 8], 63, "TTL decremented");
        assert_eq!(checksum(&out[14..34]), 0);
        let ev = h.next_event().unwrap();
        assert_eq!((ev.reason, ev.dst_ifindex), (TRACE_TO_NETDEV, native.index));

        // Unreachable, blackhole and prohibit routes: dropped with a reason.
        for dst in [[10, 97, 0, 5], [10, 96, 0, 5], [10, 95, 0, 5]] {
            expect_drop(
                &mut h,
                "from_container",
                &from_pod(dst, 64, &icmp_echo()),
                DROP_NO_ROUTE,
                METRIC_EGRESS,
            );
        }

        // Larger than the MTU of the device the route leads to (1500).
        let big = from_pod([10, 99, 0, 5], 64, &vec![0u8; 1600]);
        expect_drop(
            &mut h,
            "from_container",
            &big,
            DROP_FRAG_NEEDED,
            METRIC_EGRESS,
        );

        // NOT_FWDED: the node's own address goes to the stack untouched. So
        // does a destination without any route: the kernel reports a failed
        // lookup as NOT_FWDED too, and the stack answers it.
        for dst in [node_ip.octets(), [10, 94, 0, 1]] {
            let packet = from_pod(dst, 64, &icmp_echo());
            assert_eq!(
                h.run("from_container", &packet),
                (TC_ACT_OK, packet),
                "{dst:?} goes to the stack"
            );
            assert_eq!(h.next_event().unwrap().reason, TRACE_TO_STACK);
        }

        // FWD_DISABLED: the native device does not forward: the stack decides.
        sysctl::set("net/ipv4/conf/nat0/forwarding", "0").unwrap();
        let packet = from_pod([10, 99, 0, 5], 64, &icmp_echo());
        assert_eq!(h.run("from_container", &packet), (TC_ACT_OK, packet));
        assert_eq!(h.next_event().unwrap().reason, TRACE_TO_STACK);
    });
}

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 10);
const POD_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 1);

#[test]
fn a_pod_pings_another_node_through_bpf_host_routing() {
    root_only!();
    let mut spaces = Namespaces::new();
    let a = spaces.create("fib-a");
    let b = spaces.create("fib-b");
    let pod = spaces.create("fib-pod");
    let (native, _) = wire_native(
        &a,
        &b,
        Ipv4Addr::new(192, 168, 78, 1),
        Ipv4Addr::new(192, 168, 78, 2),
    );
    // Node B: an address behind it and the way back to A's PodCIDR.
    ip(&b, &["addr", "add", "10.61.0.1/32", "dev", "lo"]);
    ip(&b, &["route", "add", "10.60.0.0/24", "via", "192.168.78.1"]);
    // Node A: B's address via B, and forwarding only on the native device.
    ip(
        &a,
        &[
            "route",
            "add",
            "10.61.0.0/24",
            "via",
            "192.168.78.2",
            "dev",
            "nat0",
        ],
    );
    sysctls(
        &a,
        &[
            ("net/ipv4/conf/all/forwarding", "0"),
            ("net/ipv4/conf/nat0/forwarding", "1"),
        ],
    );

    let lxc = "lxcfib0";
    // Load first (the endpoint goes into the maps), attach once the pod is wired.
    let (bpffs, mut maps) = datapath_in(&a, vec![]);
    let veth = add_pod(&a, &pod, lxc, POD_IP, POD_ROUTER, &mut maps);
    Netlink::new_in(&netns::named_path(&a))
        .unwrap()
        .add_route(&Route::link_scope(POD_IP.into(), veth.host.index))
        .unwrap();
    let root = bpffs.root();
    in_netns(&a, move || {
        Datapath::open(&root)
            .unwrap()
            .attach(lxc, LXC_ATTACH)
            .unwrap();
    });
    let mut events = Maps::open_events(&bpffs.root()).unwrap();

    // Without a native device the stack gets the packet, and with forwarding
    // off on the lxc device it routes nothing: no answer.
    maps.config
        .set(0, DatapathConfig::new(POD_ROUTER, true), 0)
        .unwrap();
    let target = Ipv4Addr::new(10, 61, 0, 1);
    assert!(
        !ping(&pod, target, 1, 2),
        "without BPF host routing the node must not forward pod traffic"
    );
    assert!(
        ip_output(&a, &["neigh", "show", "192.168.78.2", "dev", "nat0"])
            .trim()
            .is_empty(),
        "the gateway's MAC is still unknown, so the first lookup says NO_NEIGH"
    );
    drain(&mut events);

    // With it: the first echo leaves through bpf_redirect_neigh (which
    // resolves the gateway), the next ones through bpf_redirect with the MACs
    // from the FIB. Node B answers through node A's stack.
    let mut cfg = DatapathConfig::new(POD_ROUTER, true);
    cfg.native_ifindex = native.index;
    maps.config.set(0, cfg, 0).unwrap();
    assert!(ping(&pod, target, 3, 10), "the pod reaches node B");
    let to_netdev: Vec<TraceEvent> = drain(&mut events)
        .into_iter()
        .filter(|ev| ev.reason == TRACE_TO_NETDEV)
        .collect();
    assert!(
        to_netdev.len() >= 3,
        "every echo request left through the native device: {to_netdev:?}"
    );
    for ev in &to_netdev {
        assert_eq!(
            (ev.dst_ifindex, ev.src_ip, ev.dst_ip),
            (
                native.index,
                u32::from_ne_bytes(POD_IP.octets()),
                u32::from_ne_bytes(target.octets())
            )
        );
    }
    assert!(
        !ip_output(&a, &["neigh", "show", "192.168.78.2", "dev", "nat0"])
            .trim()
            .is_empty(),
        "the neighbour was resolved"
    );
    assert_eq!(drops(&maps), vec![], "no drops");
}

#[test]
fn nodes_and_pods_reach_each_other_through_the_tunnel() {
    root_only!();
    let mut spaces = Namespaces::new();
    let a_ns = spaces.create("tun-a");
    let b_ns = spaces.create("tun-b");
    let pod = spaces.create("tun-pod");
    let a_ip = Ipv4Addr::new(192, 168, 79, 1);
    let b_ip = Ipv4Addr::new(192, 168, 79, 2);
    wire_native(&a_ns, &b_ns, a_ip, b_ip);
    let mut a = tunnel_node(
        Tunnel::Vxlan,
        a_ns,
        Ipv4Addr::new(10, 70, 0, 1),
        "10.71.0.0/24",
        b_ip,
    );
    let mut b = tunnel_node(
        Tunnel::Vxlan,
        b_ns,
        Ipv4Addr::new(10, 71, 0, 1),
        "10.70.0.0/24",
        a_ip,
    );
    let host_identity_from = |ev: &TraceEvent, src: Ipv4Addr| {
        ev.src_identity == IDENTITY_HOST && ev.src_ip == u32::from_ne_bytes(src.octets())
    };

    // Node A to node B's router IP: from_host encapsulates with the host
    // identity; B's from_overlay gets a frame addressed to A's ciliate_host
    // MAC and must mark it for this host, or B's stack drops it. The answer
    // takes the same way back.
    assert!(
        ping(&a.ns, b.router, 2, 10),
        "node A reaches node B's router IP"
    );
    let a_events = drain(&mut a.events);
    let b_events = drain(&mut b.events);
    assert!(
        a_events.iter().any(|ev| ev.reason == TRACE_TO_OVERLAY
            && ev.dir == METRIC_EGRESS
            && host_identity_from(ev, a.router)),
        "A's from_host encapsulated with the host identity: {a_events:?}"
    );
    assert!(
        b_events.iter().any(|ev| ev.reason == TRACE_TO_STACK
            && ev.dir == METRIC_INGRESS
            && host_identity_from(ev, a.router)),
        "B's from_overlay handed it to the stack with the host identity from the VNI: {b_events:?}"
    );
    assert!(
        a_events
            .iter()
            .any(|ev| ev.reason == TRACE_TO_STACK && host_identity_from(ev, b.router)),
        "B's answer came back the same way: {a_events:?}"
    );

    // A pod on node A to node B's router IP: from_container encapsulates with
    // the pod identity; B answers through its from_host, and A's from_overlay
    // delivers to the pod.
    let pod_ip = Ipv4Addr::new(10, 70, 0, 10);
    add_pod(&a.ns, &pod, "lxctun0", pod_ip, a.router, &mut a.maps);
    let root = a.bpffs.root();
    in_netns(&a.ns, move || {
        Datapath::open(&root)
            .unwrap()
            .attach("lxctun0", LXC_ATTACH)
            .unwrap();
    });
    assert!(ping(&pod, b.router, 2, 10), "the pod reaches node B");
    let b_events = drain(&mut b.events);
    assert!(
        b_events.iter().any(|ev| ev.reason == TRACE_TO_STACK
            && ev.src_identity == TUNNEL_POD_IDENTITY
            && ev.src_ip == u32::from_ne_bytes(pod_ip.octets())),
        "B got the pod's identity from the VNI: {b_events:?}"
    );
    assert!(
        b_events
            .iter()
            .any(|ev| ev.reason == TRACE_TO_OVERLAY && host_identity_from(ev, b.router)),
        "B's answer went into the tunnel from from_host: {b_events:?}"
    );
    assert!(
        drain(&mut a.events)
            .iter()
            .any(|ev| ev.reason == TRACE_FROM_OVERLAY && ev.dst_ep == 1),
        "A delivered the answer to the pod"
    );

    // Node A to its own pod through ciliate_host (from_host runs at egress,
    // where bpf_redirect_peer cannot be used).
    ip(
        &a.ns,
        &[
            "route",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            "ciliate_host",
        ],
    );
    assert!(
        ping(&a.ns, pod_ip, 2, 10),
        "node A reaches its pod via ciliate_host"
    );
    assert!(
        drain(&mut a.events)
            .iter()
            .any(|ev| ev.reason == TRACE_FROM_HOST && ev.dst_ep == 1),
        "from_host delivered to the pod"
    );

    assert_eq!(drops(&a.maps), vec![], "no drops on node A");
    assert_eq!(drops(&b.maps), vec![], "no drops on node B");
}
