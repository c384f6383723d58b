//! ipvlan endpoints (`datapathMode: ipvlan`) in the kernel with
//! `BPF_PROG_TEST_RUN`: the per-endpoint entry and the `from_container_ipvlan`
//! it tail-calls, and every program that delivers to an ipvlan pod. The rule
//! under test (lib/deliver.h): nothing that runs in the pod's namespace
//! redirects, and delivery to an ipvlan pod passes the packet to the ipvlan
//! driver (TC_ACT_OK) on the master's ingress or a sibling's egress, or
//! redirects it into the master's ingress from anywhere else in the node.
//! Verdicts, bytes, counters and events. The pins and the TCX link of an
//! endpoint's entry are tested at the end on a veth (this kernel has no
//! ipvlan; crates/lab/tests/vm_ipvlan.rs runs the real thing in the VM).

#[macro_use]
mod common;

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ciliate_datapath::ipvlan::{IpvlanEntry, FROM_CONTAINER_IPVLAN};
use ciliate_datapath::loader::Datapath;
use ciliate_datapath::maps::{
    be_addr, DatapathConfig, EndpointInfo, EndpointKey, Lb4Backend, Lb4Key, Lb4ReverseNat,
    Lb4Service, TraceEvent, BE_STATE_ACTIVE, CT_F_NODEPORT, ENDPOINT_F_IPVLAN, EVENT_DROP,
    EVENT_TRACE, IPPROTO_TCP, IPV4_SVC_LOOPBACK, LB_SCOPE_EXTERNAL, MASQ_F_BPF, METRIC_EGRESS,
    METRIC_INGRESS, ROUTING_NATIVE, SVC_F_CLUSTER_IP, SVC_F_NODEPORT,
};
use ciliate_datapath::reasons::{
    DROP_INVALID_SIP, DROP_MISSED_TAIL_CALL, DROP_NO_SERVICE, DROP_TTL_EXCEEDED,
    DROP_UNSUPPORTED_L3, TRACE_FROM_HOST, TRACE_FROM_NETDEV, TRACE_FROM_OVERLAY,
    TRACE_NO_SERVICE_REPLY, TRACE_TO_ENDPOINT, TRACE_TO_STACK,
};
use common::*;

/// The master's MAC, which its ipvlan slaves share.
const MASTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// Two ipvlan pods on the master the test programs run on (ifindex 1)...
const IV_A: [u8; 4] = [10, 77, 0, 30];
const IV_B: [u8; 4] = [10, 77, 0, 31];
/// ... and one on another master, reached by redirecting into its ingress.
const IV_FAR: [u8; 4] = [10, 77, 0, 32];
const FAR_MASTER: u32 = 4343;
const NODE_IP: [u8; 4] = [192, 168, 10, 1];
const REMOTE_NODE: [u8; 4] = [192, 168, 10, 2];
const REMOTE_POD: [u8; 4] = [10, 78, 0, 20];
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const SVC_PORT: u16 = 80;
const BE_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
const HOST_PORT: u16 = 6443;
const CLIENT_PORT: u16 = 40000;
const OUTSIDE_PORT: u16 = 50000;
const WORLD: [u8; 4] = [198, 51, 100, 7];
const REV_CLUSTER: u32 = 5;
const REV_NODEPORT: u32 = 6;

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn ipvlan_endpoint(lxc_id: u16, master: u32) -> EndpointInfo {
    EndpointInfo {
        ifindex: master,
        lxc_id,
        flags: ENDPOINT_F_IPVLAN,
        mac: MASTER_MAC,
        node_mac: MASTER_MAC,
        sec_identity: 0,
    }
}

/// The harness (veth pods A and B) plus ipvlan pods IV_A (301), IV_B (302)
/// on master ifindex 1 and IV_FAR (303) on FAR_MASTER; native routing with
/// a node IP, remote pods and node in the ipcache.
fn harness(masquerade: u32) -> Harness {
    let mut h = Harness::new(true);
    let mut cfg = DatapathConfig::new(ip(ROUTER), true);
    cfg.routing_mode = ROUTING_NATIVE;
    cfg.node_ip = be_addr(ip(NODE_IP));
    cfg.masquerade = masquerade;
    h.maps.config.set(0, cfg, 0).unwrap();
    for (addr, id, master) in [
        (IV_A, 301, TEST_IFINDEX),
        (IV_B, 302, TEST_IFINDEX),
        (IV_FAR, 303, FAR_MASTER),
    ] {
        h.maps
            .endpoints
            .insert(EndpointKey::new(ip(addr)), ipvlan_endpoint(id, master), 0)
            .unwrap();
    }
    remote_pods_and_node(&mut h.maps);
    h
}

fn entry(h: &Harness, pod: [u8; 4]) -> IpvlanEntry {
    h.datapath.ipvlan_entry(ip(pod)).expect("loading the entry")
}

fn run_prog(prog: &SchedClassifier, packet: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; packet.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// What an ipvlan pod sends, through its entry: the pod's stack addresses
/// frames from and to the slave's MAC, the master's.
fn send(entry: &IpvlanEntry, packet: &[u8]) -> (u32, Vec<u8>) {
    run_prog(entry.program(), packet, None)
}

fn pod_tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame((MASTER_MAC, MASTER_MAC), src, dst, flags)
}

/// Arriving on a native device from the network.
fn net_tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame((MASTER_MAC, NET_MAC), src, dst, flags)
}

fn events(h: &mut Harness) -> Vec<TraceEvent> {
    drain(&mut h.events)
}

fn only_event(h: &mut Harness) -> TraceEvent {
    let evs = events(h);
    assert_eq!(evs.len(), 1, "one event: {evs:?}");
    evs[0]
}

fn ttl(frame: &[u8]) -> u8 {
    frame[14 + 8]
}

/// The routed hop into an ipvlan pod: the master's MACs, TTL one less,
/// checksums valid, the rest as in `before`.
fn assert_hop(out: &[u8], before: &[u8]) {
    assert_eq!(&out[0..6], &MASTER_MAC, "to the slave's (the master's) MAC");
    assert_eq!(&out[6..12], &MASTER_MAC);
    assert_eq!(ttl(out), ttl(before) - 1, "TTL decremented once");
    assert_checksums(out, false);
}

fn service(h: &mut Harness, frontend: ([u8; 4], u16), flags: u16, rev: u32, be: ([u8; 4], u16)) {
    let addr = ip(frontend.0);
    h.maps
        .lb4_backends
        .insert(
            rev,
            Lb4Backend::new(ip(be.0), be.1, IPPROTO_TCP, BE_STATE_ACTIVE),
            0,
        )
        .unwrap();
    let slot1 = Lb4Service {
        backend_id: rev,
        ..Lb4Service::default()
    };
    let key = |slot| Lb4Key::new(addr, frontend.1, IPPROTO_TCP, LB_SCOPE_EXTERNAL, slot);
    h.maps.lb4_services.insert(key(1), slot1, 0).unwrap();
    let slot0 = Lb4Service {
        rev_nat_index: rev,
        count: 1,
        flags,
        ..Lb4Service::default()
    };
    h.maps.lb4_services.insert(key(0), slot0, 0).unwrap();
    h.maps
        .lb4_reverse_nat
        .insert(rev, Lb4ReverseNat::new(addr, frontend.1), 0)
        .unwrap();
}

/// A ClusterIP `frontend` backed by `backend`, and IV_A's SYN to it through
/// IV_A's entry: (the entry, the SYN, the verdict, the output).
fn syn_through_cluster_ip(
    h: &mut Harness,
    frontend: ([u8; 4], u16),
    backend: ([u8; 4], u16),
) -> (IpvlanEntry, Vec<u8>, u32, Vec<u8>) {
    service(h, frontend, SVC_F_CLUSTER_IP, REV_CLUSTER, backend);
    let a = entry(h, IV_A);
    let syn = pod_tcp((IV_A, CLIENT_PORT), frontend, TCP_SYN);
    let (verdict, out) = send(&a, &syn);
    (a, syn, verdict, out)
}

#[test]
fn a_sibling_ipvlan_pod_gets_the_packet_passed_to_the_driver() {
    root_only!();
    let mut h = harness(0);
    let a = entry(&h, IV_A);
    let packet = pod_tcp((IV_A, CLIENT_PORT), (IV_B, BE_PORT), TCP_SYN);
    let (verdict, out) = send(&a, &packet);
    assert_eq!(
        verdict, TC_ACT_OK,
        "never a redirect from the pod's namespace"
    );
    assert_hop(&out, &packet);
    assert_eq!(&out[34..], &packet[34..], "TCP untouched");
    let ev = only_event(&mut h);
    assert_eq!(
        (
            ev.kind,
            ev.reason,
            ev.dir,
            ev.src_ep,
            ev.dst_ep,
            ev.dst_ifindex
        ),
        (
            EVENT_TRACE,
            TRACE_TO_ENDPOINT,
            METRIC_EGRESS,
            301,
            302,
            TEST_IFINDEX
        )
    );

    let mut expiring = packet.clone();
    expiring[14 + 8] = 1;
    let c = checksum(&{
        let mut hdr = expiring[14..34].to_vec();
        hdr[10] = 0;
        hdr[11] = 0;
        hdr
    });
    expiring[24..26].copy_from_slice(&c.to_be_bytes());
    let before = h.counter(DROP_TTL_EXCEEDED, METRIC_EGRESS);
    assert_eq!(send(&a, &expiring).0, TC_ACT_SHOT);
    assert_eq!(h.counter(DROP_TTL_EXCEEDED, METRIC_EGRESS), before + 1);
}

#[test]
fn an_entry_with_an_empty_slot_drops_and_counts() {
    root_only!();
    let mut h = harness(0);
    let mut a = entry(&h, IV_A);
    a.clear_slot().unwrap();
    let packet = pod_tcp((IV_A, CLIENT_PORT), (IV_B, BE_PORT), TCP_SYN);
    let before = h.counter(DROP_MISSED_TAIL_CALL, METRIC_EGRESS);
    assert_eq!(send(&a, &packet).0, TC_ACT_SHOT);
    assert_eq!(h.counter(DROP_MISSED_TAIL_CALL, METRIC_EGRESS), before + 1);
    let ev = only_event(&mut h);
    assert_eq!((ev.kind, ev.reason), (EVENT_DROP, DROP_MISSED_TAIL_CALL));
    assert_eq!(ev.src_ip, be_addr(ip(IV_A)), "names the endpoint");
}

#[test]
fn an_ipvlan_pod_may_send_only_from_its_own_address() {
    root_only!();
    let mut h = harness(0);
    let a = entry(&h, IV_A);
    // Another ipvlan pod's address, a veth pod's, and no endpoint's.
    for src in [IV_B, POD_A, [10, 77, 0, 99]] {
        let packet = pod_tcp((src, CLIENT_PORT), (REMOTE_POD, BE_PORT), TCP_SYN);
        let before = h.counter(DROP_INVALID_SIP, METRIC_EGRESS);
        assert_eq!(send(&a, &packet).0, TC_ACT_SHOT, "source {src:?}");
        assert_eq!(h.counter(DROP_INVALID_SIP, METRIC_EGRESS), before + 1);
    }
    // from_container_ipvlan reached without the entry naming the pod.
    let prog = h.datapath.program(FROM_CONTAINER_IPVLAN).unwrap();
    let packet = pod_tcp((IV_A, CLIENT_PORT), (REMOTE_POD, BE_PORT), TCP_SYN);
    let mut ctx = vec![0u8; 192];
    assert_eq!(run_prog(prog, &packet, Some(&ctx)).0, TC_ACT_SHOT);
    // With cb[0] = its address it goes.
    ctx[48..52].copy_from_slice(&IV_A);
    assert_eq!(run_prog(prog, &packet, Some(&ctx)).0, TC_ACT_OK);
    drain(&mut h.events);
    // And an ipvlan pod's address through a veth device is refused too.
    let veth = pod_tcp((IV_A, CLIENT_PORT), (REMOTE_POD, BE_PORT), TCP_SYN);
    expect_drop(
        &mut h,
        "from_container",
        &veth,
        DROP_INVALID_SIP,
        METRIC_EGRESS,
    );
}

#[test]
fn arp_from_an_ipvlan_pod_is_a_counted_drop() {
    root_only!();
    let h = harness(0);
    let a = entry(&h, IV_A);
    let request = eth(
        [0xff; 6],
        MASTER_MAC,
        0x0806,
        &arp(1, MASTER_MAC, IV_A, [0; 6], ROUTER),
    );
    let before = h.counter(DROP_UNSUPPORTED_L3, METRIC_EGRESS);
    assert_eq!(send(&a, &request).0, TC_ACT_SHOT);
    assert_eq!(h.counter(DROP_UNSUPPORTED_L3, METRIC_EGRESS), before + 1);
}

#[test]
fn what_leaves_the_pod_for_the_node_other_nodes_or_the_world_passes_unchanged() {
    root_only!();
    let mut h = harness(0);
    let a = entry(&h, IV_A);
    for dst in [REMOTE_POD, REMOTE_NODE, NODE_IP, WORLD, ROUTER] {
        let packet = pod_tcp((IV_A, CLIENT_PORT), (dst, BE_PORT), TCP_SYN);
        let (verdict, out) = send(&a, &packet);
        assert_eq!(verdict, TC_ACT_OK, "to {dst:?}: the driver routes it");
        assert_eq!(out, packet, "to {dst:?}: untouched (the stack routes it)");
        let ev = only_event(&mut h);
        assert_eq!(
            (ev.reason, ev.src_ep, ev.dst_ifindex),
            (TRACE_TO_STACK, 301, 0)
        );
    }
}

#[test]
fn a_veth_endpoint_is_reached_from_an_ipvlan_pod_through_to_netdev() {
    root_only!();
    let mut h = harness(0);
    let a = entry(&h, IV_A);
    let packet = pod_tcp((IV_A, CLIENT_PORT), (POD_B, BE_PORT), TCP_SYN);
    let (verdict, out) = send(&a, &packet);
    assert_eq!(verdict, TC_ACT_OK, "no device of the node is reachable");
    assert_eq!(out, packet, "untouched: the driver routes it");
    let ev = only_event(&mut h);
    assert_eq!(
        (ev.reason, ev.src_ep, ev.dst_ep),
        (TRACE_TO_STACK, 301, 202)
    );

    // The driver's route lookup, bound to the master, takes the default
    // route: the frame leaves addressed to the gateway and to_netdev
    // delivers it into pod B's lxc device.
    let routed = tcp_frame(
        (NET_MAC, MASTER_MAC),
        (IV_A, CLIENT_PORT),
        (POD_B, BE_PORT),
        TCP_SYN,
    );
    let (verdict, out) = h.run("to_netdev", &routed);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(&out[0..6], &POD_B_MAC);
    assert_eq!(&out[6..12], &LXC_B_MAC);
    assert_eq!(ttl(&out), 63);
    assert_checksums(&out, false);
    let ev = only_event(&mut h);
    assert_eq!(
        (ev.reason, ev.dir, ev.dst_ep, ev.dst_ifindex),
        (TRACE_TO_ENDPOINT, METRIC_INGRESS, 202, POD_B_IFINDEX)
    );

    // What to_netdev sees for ipvlan pods or anything else is not its business.
    for dst in [IV_B, WORLD] {
        let other = tcp_frame(
            (NET_MAC, MASTER_MAC),
            (IV_A, CLIENT_PORT),
            (dst, BE_PORT),
            TCP_SYN,
        );
        assert_eq!(h.run("to_netdev", &other), (TC_ACT_OK, other.clone()));
    }
    assert!(events(&mut h).is_empty());
}

#[test]
fn the_node_other_pods_and_other_devices_reach_an_ipvlan_pod_through_its_masters_ingress() {
    root_only!();
    let mut h = harness(0);
    // A veth pod (ingress of its lxc), the node (egress of ciliate_host),
    // the tunnel and a native device that is not IV_FAR's master.
    let cases: [(&str, Vec<u8>, u8); 4] = [
        (
            "from_container",
            tcp_frame(
                (LXC_A_MAC, POD_A_MAC),
                (POD_A, CLIENT_PORT),
                (IV_FAR, BE_PORT),
                TCP_SYN,
            ),
            TRACE_TO_ENDPOINT,
        ),
        (
            "from_host",
            tcp_frame(
                (LXC_A_MAC, MASTER_MAC),
                (ROUTER, CLIENT_PORT),
                (IV_FAR, BE_PORT),
                TCP_SYN,
            ),
            TRACE_FROM_HOST,
        ),
        (
            "from_overlay",
            net_tcp((REMOTE_POD, CLIENT_PORT), (IV_FAR, BE_PORT), TCP_SYN),
            TRACE_FROM_OVERLAY,
        ),
        (
            "from_netdev",
            net_tcp((REMOTE_POD, CLIENT_PORT), (IV_FAR, BE_PORT), TCP_SYN),
            TRACE_FROM_NETDEV,
        ),
    ];
    for (program, packet, point) in cases {
        let (verdict, out) = h.run(program, &packet);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "{program}: into the master's ingress"
        );
        assert_eq!(
            &out[0..12],
            &[MASTER_MAC, MASTER_MAC].concat(),
            "{program}: the master's MACs"
        );
        assert_eq!(
            ttl(&out),
            64,
            "{program}: the hop is from_netdev's, on the master"
        );
        assert_eq!(&out[14..], &packet[14..], "{program}: IP untouched");
        let ev = only_event(&mut h);
        assert_eq!(
            (ev.reason, ev.dst_ep, ev.dst_ifindex),
            (point, 303, FAR_MASTER),
            "{program}"
        );
    }

    // On the master itself from_netdev passes it to the ipvlan driver.
    let packet = net_tcp((REMOTE_POD, CLIENT_PORT), (IV_A, BE_PORT), TCP_SYN);
    let (verdict, out) = h.run("from_netdev", &packet);
    assert_eq!(
        verdict, TC_ACT_OK,
        "the driver's receive handler delivers it"
    );
    assert_hop(&out, &packet);
    let ev = only_event(&mut h);
    assert_eq!(
        (ev.reason, ev.dir, ev.dst_ep, ev.dst_ifindex),
        (TRACE_FROM_NETDEV, METRIC_INGRESS, 301, TEST_IFINDEX)
    );
}

#[test]
fn clusterip_from_an_ipvlan_pod_to_a_sibling_backend_and_back_is_passed_both_ways() {
    root_only!();
    let mut h = harness(0);
    let (_, syn, verdict, out) =
        syn_through_cluster_ip(&mut h, (CLUSTER_IP, SVC_PORT), (IV_B, BE_PORT));
    let b = entry(&h, IV_B);
    assert_eq!(
        verdict, TC_ACT_OK,
        "DNATed, then the driver delivers to the sibling"
    );
    let t = tuple_of(&out);
    assert_eq!((t.src, t.dst), ((IV_A, CLIENT_PORT), (IV_B, BE_PORT)));
    assert_hop(&out, &syn);

    let reply = pod_tcp((IV_B, BE_PORT), (IV_A, CLIENT_PORT), TCP_SYN | TCP_ACK);
    let (verdict, out) = send(&b, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    let t = tuple_of(&out);
    assert_eq!(
        t.src,
        (CLUSTER_IP, SVC_PORT),
        "reverse-NATed in the backend's program"
    );
    assert_eq!(t.dst, (IV_A, CLIENT_PORT));
    assert_hop(&out, &reply);
}

#[test]
fn clusterip_from_an_ipvlan_pod_to_a_remote_backend_is_answered_through_from_netdev() {
    root_only!();
    let mut h = harness(0);
    let (_, _, verdict, out) =
        syn_through_cluster_ip(&mut h, (CLUSTER_IP, SVC_PORT), (REMOTE_POD, BE_PORT));
    assert_eq!(verdict, TC_ACT_OK, "DNATed, then the driver routes it");
    assert_eq!(tuple_of(&out).dst, (REMOTE_POD, BE_PORT));
    assert_eq!(ttl(&out), 64, "the stack's hop, not ours");
    assert_checksums(&out, false);

    let reply = net_tcp(
        (REMOTE_POD, BE_PORT),
        (IV_A, CLIENT_PORT),
        TCP_SYN | TCP_ACK,
    );
    let (verdict, out) = h.run("from_netdev", &reply);
    assert_eq!(verdict, TC_ACT_OK, "to the driver's receive handler");
    let t = tuple_of(&out);
    assert_eq!(
        (t.src, t.dst),
        ((CLUSTER_IP, SVC_PORT), (IV_A, CLIENT_PORT))
    );
    assert_hop(&out, &reply);
}

#[test]
fn a_host_network_backends_reply_is_reverse_natted_when_it_enters_the_master() {
    root_only!();
    let mut h = harness(0);
    let (_, _, verdict, out) =
        syn_through_cluster_ip(&mut h, (CLUSTER_IP, 443), (NODE_IP, HOST_PORT));
    assert_eq!(verdict, TC_ACT_OK, "to the node, through the driver");
    assert_eq!(tuple_of(&out).dst, (NODE_IP, HOST_PORT));

    // The node answers through ciliate_host (the PodCIDR's route):
    // from_host hands it to the master's ingress untranslated...
    let reply = tcp_frame(
        (LXC_A_MAC, MASTER_MAC),
        (NODE_IP, HOST_PORT),
        (IV_A, CLIENT_PORT),
        TCP_SYN | TCP_ACK,
    );
    let (verdict, out) = h.run("from_host", &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(tuple_of(&out).src, (NODE_IP, HOST_PORT));
    // ... and from_netdev there translates it, which from_host does itself
    // for a veth pod, and passes it to the driver.
    let (verdict, out) = h.run("from_netdev", &out);
    assert_eq!(verdict, TC_ACT_OK);
    let t = tuple_of(&out);
    assert_eq!((t.src, t.dst), ((CLUSTER_IP, 443), (IV_A, CLIENT_PORT)));
    assert_hop(&out, &reply);
}

#[test]
fn nodeport_with_a_local_ipvlan_backend_is_passed_in_and_answered_by_passing_out() {
    root_only!();
    let mut h = harness(0);
    service(
        &mut h,
        ([0; 4], NODE_PORT),
        SVC_F_NODEPORT,
        REV_NODEPORT,
        (IV_B, BE_PORT),
    );
    let client = (WORLD, OUTSIDE_PORT);
    let syn = net_tcp(client, (NODE_IP, NODE_PORT), TCP_SYN);
    let (verdict, out) = h.run("from_netdev", &syn);
    assert_eq!(verdict, TC_ACT_OK, "DNATed and passed to the ipvlan driver");
    let t = tuple_of(&out);
    assert_eq!(
        (t.src, t.dst),
        (client, (IV_B, BE_PORT)),
        "no SNAT for a local backend"
    );
    assert_hop(&out, &syn);
    let conn = h
        .maps
        .ct4_tcp
        .get(
            &ciliate_datapath::maps::Ct4Key::new(
                ip(WORLD),
                OUTSIDE_PORT,
                ip(IV_B),
                BE_PORT,
                IPPROTO_TCP,
                0,
            ),
            0,
        )
        .unwrap();
    assert_eq!(conn.flags, CT_F_NODEPORT);
    drain(&mut h.events);

    // The upstream bug: the reply was redirected from the slave's egress.
    let b = entry(&h, IV_B);
    let reply = pod_tcp((IV_B, BE_PORT), client, TCP_SYN | TCP_ACK);
    let (verdict, out) = send(&b, &reply);
    assert_eq!(
        verdict, TC_ACT_OK,
        "passed: the driver routes it out of the master"
    );
    let t = tuple_of(&out);
    assert_eq!(t.src, (NODE_IP, NODE_PORT), "source is node IP:nodePort");
    assert_eq!(t.dst, client);
    assert_checksums(&out, false);
    let ev = only_event(&mut h);
    assert_eq!((ev.reason, ev.src_ep), (TRACE_TO_STACK, 302));
}

#[test]
fn nodeport_forwarded_from_another_node_reaches_an_ipvlan_backend_and_its_reply_goes_back() {
    root_only!();
    let h = harness(0);
    // The entry node SNATed the client to its own IP and a NAT port.
    let forwarded = net_tcp((REMOTE_NODE, 61000), (IV_B, BE_PORT), TCP_SYN);
    let (verdict, out) = h.run("from_netdev", &forwarded);
    assert_eq!(verdict, TC_ACT_OK);
    assert_hop(&out, &forwarded);
    let b = entry(&h, IV_B);
    let reply = pod_tcp((IV_B, BE_PORT), (REMOTE_NODE, 61000), TCP_SYN | TCP_ACK);
    assert_eq!(
        send(&b, &reply),
        (TC_ACT_OK, reply.clone()),
        "untouched, to the entry node"
    );
}

#[test]
fn hairpin_through_a_service_stays_with_the_driver() {
    root_only!();
    let mut h = harness(0);
    let (a, syn, verdict, out) =
        syn_through_cluster_ip(&mut h, (CLUSTER_IP, SVC_PORT), (IV_A, BE_PORT));
    assert_eq!(verdict, TC_ACT_OK);
    let t = tuple_of(&out);
    let loopback = IPV4_SVC_LOOPBACK.octets();
    assert_eq!((t.src, t.dst), ((loopback, CLIENT_PORT), (IV_A, BE_PORT)));
    assert_hop(&out, &syn);
    let reply = pod_tcp((IV_A, BE_PORT), (loopback, CLIENT_PORT), TCP_SYN | TCP_ACK);
    let (verdict, out) = send(&a, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    let t = tuple_of(&out);
    assert_eq!(
        (t.src, t.dst),
        ((CLUSTER_IP, SVC_PORT), (IV_A, CLIENT_PORT))
    );
}

#[test]
fn a_service_without_backends_answers_an_ipvlan_pod_on_its_own_device() {
    root_only!();
    let mut h = harness(0);
    let slot0 = Lb4Service {
        rev_nat_index: REV_CLUSTER,
        flags: SVC_F_CLUSTER_IP,
        ..Lb4Service::default()
    };
    h.maps
        .lb4_services
        .insert(
            Lb4Key::new(ip(CLUSTER_IP), SVC_PORT, IPPROTO_TCP, LB_SCOPE_EXTERNAL, 0),
            slot0,
            0,
        )
        .unwrap();
    let a = entry(&h, IV_A);
    let syn = pod_tcp((IV_A, CLIENT_PORT), (CLUSTER_IP, SVC_PORT), TCP_SYN);
    let before = h.counter(DROP_NO_SERVICE, METRIC_EGRESS);
    let (verdict, out) = send(&a, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT, "into the slave's own ingress");
    assert_eq!(h.counter(DROP_NO_SERVICE, METRIC_EGRESS), before + 1);
    assert_eq!(&out[26..30], &CLUSTER_IP, "from the address the pod tried");
    assert_eq!(&out[30..34], &IV_A);
    assert_eq!((out[34], out[35]), (3, 3), "port unreachable");
    let evs = events(&mut h);
    assert_eq!(
        evs.iter().map(|e| e.reason).collect::<Vec<_>>(),
        vec![DROP_NO_SERVICE, TRACE_NO_SERVICE_REPLY]
    );
}

#[test]
fn masqueraded_replies_reach_an_ipvlan_pod_through_the_driver() {
    root_only!();
    let h = harness(MASQ_F_BPF);
    // The driver routed the pod's SYN out of the master: to_netdev SNATs it.
    let syn = tcp_frame(
        (NET_MAC, MASTER_MAC),
        (IV_A, CLIENT_PORT),
        (WORLD, 80),
        TCP_SYN,
    );
    let (verdict, out) = h.run("to_netdev", &syn);
    assert_eq!(verdict, TC_ACT_OK);
    let t = tuple_of(&out);
    assert_eq!(t.src.0, NODE_IP, "masqueraded");
    let reply = net_tcp((WORLD, 80), t.src, TCP_SYN | TCP_ACK);
    let (verdict, out) = h.run("from_netdev", &reply);
    assert_eq!(verdict, TC_ACT_OK, "passed to the driver, not redirected");
    let t = tuple_of(&out);
    assert_eq!((t.src, t.dst), ((WORLD, 80), (IV_A, CLIENT_PORT)));
    assert_hop(&out, &reply);
}

/// The entry on a real device: a veth in a namespace stands in for the
/// slave (this kernel has no ipvlan), which is all TCX needs.
#[test]
fn an_endpoints_entry_is_attached_pinned_updated_and_removed() {
    root_only!();
    let bpffs = TestBpffs::new();
    let root = bpffs.root();
    let pod = ciliate_datapath::testing::TestNetns::new("iv-pod");
    let nl = pod.netlink();
    nl.create_veth("eth0", "peer0", None).unwrap();
    let name = "ep7";
    let mut datapath = Datapath::open(&root).unwrap();
    datapath
        .attach_ipvlan(name, ip(IV_A), &pod.path(), "eth0")
        .unwrap();
    let calls = root.join("ipvlan/ep7-calls");
    let link = root.join("ipvlan/ep7-entry");
    assert!(calls.exists() && link.exists(), "both pinned");
    assert!(datapath.is_ipvlan_attached(name));
    assert_eq!(datapath.ipvlan_endpoints(), vec![name.to_string()]);
    let attached = tcx_egress_programs(&pod, "eth0");
    assert_eq!(attached, vec!["ipvlan_entry".to_string()]);
    let slot = slot0_program_id(&calls);
    assert_eq!(slot, program_id(&datapath, FROM_CONTAINER_IPVLAN));
    // Attaching again changes nothing.
    datapath
        .attach_ipvlan(name, ip(IV_A), &pod.path(), "eth0")
        .unwrap();
    assert_eq!(tcx_egress_programs(&pod, "eth0").len(), 1);

    // A new object (its programs' pins gone, as after an upgrade) fills
    // every slot with its from_container_ipvlan.
    drop(datapath);
    for dir in std::fs::read_dir(root.join("progs")).unwrap() {
        std::fs::remove_dir_all(dir.unwrap().path()).unwrap();
    }
    let datapath = Datapath::open(&root).unwrap();
    let new_id = program_id(&datapath, FROM_CONTAINER_IPVLAN);
    assert_ne!(new_id, slot, "a fresh load");
    assert_eq!(slot0_program_id(&calls), new_id);

    datapath.detach_ipvlan(name).unwrap();
    assert!(!calls.exists() && !link.exists(), "both pins removed");
    assert!(tcx_egress_programs(&pod, "eth0").is_empty(), "detached");
    datapath.detach_ipvlan(name).unwrap();

    // A device that does not exist leaves nothing behind.
    let mut datapath = datapath;
    assert!(datapath
        .attach_ipvlan("ep8", ip(IV_B), &pod.path(), "nosuchdev")
        .is_err());
    assert!(datapath.ipvlan_endpoints().is_empty());
}

fn tcx_egress_programs(
    pod: &ciliate_datapath::testing::TestNetns,
    dev: &'static str,
) -> Vec<String> {
    in_netns(&pod.name, move || {
        let (_, programs) = SchedClassifier::query_tcx(dev, aya::programs::TcAttachType::Egress)
            .expect("querying TCX");
        programs
            .iter()
            .filter_map(|p| p.name_as_str().map(str::to_string))
            .collect()
    })
}

fn program_id(datapath: &Datapath, name: &str) -> u32 {
    datapath
        .program_ids()
        .into_iter()
        .find(|(n, ..)| n == name)
        .map(|(_, id, _)| id)
        .unwrap()
}

/// The program id in slot 0 of a pinned prog array (bpftool reads it).
fn slot0_program_id(pin: &std::path::Path) -> u32 {
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(pin)
        .arg("-j")
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let value = &dump[0]["value"];
    value
        .as_u64()
        .or_else(|| {
            value.as_array().map(|bytes| {
                let b: Vec<u8> = bytes
                    .iter()
                    .map(|x| {
                        u8::from_str_radix(x.as_str().unwrap().trim_start_matches("0x"), 16)
                            .unwrap()
                    })
                    .collect();
                u64::from(u32::from_le_bytes(b[0..4].try_into().unwrap()))
            })
        })
        .unwrap_or_else(|| panic!("slot 0 of {}: {dump}", pin.display())) as u32
}
