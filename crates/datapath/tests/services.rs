//! Services in the datapath (kube-proxy replacement), run in the kernel with
//! `BPF_PROG_TEST_RUN` on synthetic packets: ClusterIP from pods in
//! `from_container`, NodePort/LoadBalancer/externalIP from outside in
//! `from_netdev`, replies through `from_container`, `from_netdev` and
//! `from_overlay`, conntrack, NAT, affinity, hairpin and the ICMP answer of a
//! service without backends. Every rewritten packet has its checksums
//! recomputed here.

#[macro_use]
mod common;

use std::net::Ipv4Addr;

use ciliate_datapath::maps::{
    addr_of, be_addr, ipcache_key, monotonic_seconds, Ct4Entry, Ct4Key, DatapathConfig,
    EndpointInfo, EndpointKey, IpcacheValue, Lb4AffinityKey, Lb4AffinityValue, Lb4Backend, Lb4Key,
    Lb4ReverseNat, Lb4Service, Nat4Entry, BE_STATE_ACTIVE, BE_STATE_TERMINATING, CT_F_LOOPBACK,
    CT_F_NODEPORT, CT_F_RX_CLOSING, CT_F_SEEN_REPLY, CT_F_SNAT, CT_F_TX_CLOSING, CT_KEY_SERVICE,
    EVENT_DROP, IPCACHE_F_HOST, IPPROTO_TCP, IPPROTO_UDP, IPV4_SVC_LOOPBACK, LB_SCOPE_EXTERNAL,
    LB_SCOPE_INTERNAL, METRIC_EGRESS, METRIC_INGRESS, NAT_DIR_EGRESS, NAT_DIR_INGRESS,
    NAT_F_NODEPORT, NAT_MAP_SIZE, NAT_PORT_MAX, NAT_PORT_MIN, SVC_F_AFFINITY, SVC_F_CLUSTER_IP,
    SVC_F_EXTERNAL_IP, SVC_F_NODEPORT, SVC_F_TWO_SCOPES,
};
use ciliate_datapath::reasons::{
    DROP_FRAG_NOSUPPORT, DROP_HOST_BACKEND_UNSUPPORTED, DROP_NAT_NO_MAPPING, DROP_NO_SERVICE,
};
use common::*;

const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const EXTERNAL_IP: [u8; 4] = [203, 0, 113, 7];
const SVC_PORT: u16 = 80;
const BE_PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;
const NODE_IP: [u8; 4] = [192, 168, 10, 1];
const REMOTE_NODE: [u8; 4] = [192, 168, 10, 2];
const REMOTE_POD: [u8; 4] = [10, 78, 0, 20];
const TUNNEL_IFINDEX: u32 = 777;
const CLIENT_PORT: u16 = 40000;
/// An outside client's port: an ordinary ephemeral one, below the NAT range.
const OUTSIDE_PORT: u16 = 50000;
/// An outside client's port inside the NAT range, which SNAT keeps if it can.
const IN_RANGE_PORT: u16 = 62000;
const LOOPBACK: [u8; 4] = IPV4_SVC_LOOPBACK.octets();
/// Rev-NAT indexes of the frontends the tests program.
const REV_CLUSTER: u32 = 5;
const REV_NODEPORT: u32 = 6;
const REV_EXTERNAL: u32 = 7;
/// Distinct timeouts so a lifetime tells which state chose it.
const T_TCP: u32 = 1000;
const T_SYN: u32 = 100;
const T_FIN: u32 = 10;
const T_ANY: u32 = 50;

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

/// The harness with services enabled: node IP (or none), a tunnel device,
/// 10.78.0.0/24 behind REMOTE_NODE in the ipcache and REMOTE_NODE itself
/// marked as a node address.
fn harness(node_ip: Option<[u8; 4]>, remote_via_tunnel: bool) -> Harness {
    let mut h = Harness::new(false);
    let mut cfg = DatapathConfig::new(ip(ROUTER), false);
    cfg.node_ip = node_ip.map_or(0, |a| be_addr(ip(a)));
    cfg.tunnel_ifindex = TUNNEL_IFINDEX;
    cfg.ct_timeout_tcp = T_TCP;
    cfg.ct_timeout_tcp_syn = T_SYN;
    cfg.ct_timeout_tcp_fin = T_FIN;
    cfg.ct_timeout_any = T_ANY;
    h.maps.config.set(0, cfg, 0).unwrap();
    let tunnel = if remote_via_tunnel {
        be_addr(ip(REMOTE_NODE))
    } else {
        0
    };
    let pods = IpcacheValue {
        sec_identity: 5151,
        tunnel_endpoint: tunnel,
        flags: 0,
        pad: 0,
    };
    h.maps
        .ipcache
        .insert(&ipcache_key("10.78.0.0/24".parse().unwrap()), pods, 0)
        .unwrap();
    let node = IpcacheValue {
        sec_identity: 1,
        tunnel_endpoint: 0,
        flags: IPCACHE_F_HOST,
        pad: 0,
    };
    h.maps
        .ipcache
        .insert(&ipcache_key("192.168.10.2/32".parse().unwrap()), node, 0)
        .unwrap();
    h
}

fn backend(h: &mut Harness, id: u32, addr: [u8; 4], port: u16, proto: u8, state: u8) {
    h.maps
        .lb4_backends
        .insert(id, Lb4Backend::new(ip(addr), port, proto, state), 0)
        .unwrap();
}

/// Writes a frontend's slot 0 and slots 1..=backends.len() for one scope.
fn service(
    h: &mut Harness,
    frontend: ([u8; 4], u16, u8, u8),
    flags: u16,
    rev: u32,
    backends: &[u32],
    affinity_timeout: u32,
) {
    let (addr, port, proto, scope) = frontend;
    for (slot, id) in backends.iter().enumerate() {
        let key = Lb4Key::new(ip(addr), port, proto, scope, slot as u16 + 1);
        let value = Lb4Service {
            backend_id: *id,
            ..Lb4Service::default()
        };
        h.maps.lb4_services.insert(key, value, 0).unwrap();
    }
    let slot0 = Lb4Service {
        backend_id: 0,
        rev_nat_index: rev,
        count: backends.len() as u16,
        flags,
        affinity_timeout,
    };
    h.maps
        .lb4_services
        .insert(Lb4Key::new(ip(addr), port, proto, scope, 0), slot0, 0)
        .unwrap();
    h.maps
        .lb4_reverse_nat
        .insert(rev, Lb4ReverseNat::new(ip(addr), port), 0)
        .unwrap();
}

const CLUSTER_TCP: ([u8; 4], u16, u8, u8) = (CLUSTER_IP, SVC_PORT, IPPROTO_TCP, LB_SCOPE_EXTERNAL);
const NODEPORT_TCP: ([u8; 4], u16, u8, u8) =
    ([0, 0, 0, 0], NODE_PORT, IPPROTO_TCP, LB_SCOPE_EXTERNAL);

/// Pod A's TCP segment from `sport` to `dst`.
fn from_pod_a(sport: u16, dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame((LXC_A_MAC, POD_A_MAC), (POD_A, sport), dst, flags)
}

/// A segment arriving on the native device (or out of the tunnel).
fn from_net(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    tcp_frame((DEV_MAC, NET_MAC), src, dst, flags)
}

/// Makes `pod` send through the test device too, so its own packets (a
/// backend's replies) can run through `from_container`.
fn send_as(h: &mut Harness, pod: [u8; 4], lxc_id: u16) {
    let info = EndpointInfo {
        ifindex: TEST_IFINDEX,
        lxc_id,
        flags: 0,
        mac: POD_B_MAC,
        node_mac: LXC_B_MAC,
        sec_identity: 0,
    };
    h.maps
        .endpoints
        .insert(EndpointKey::new(ip(pod)), info, 0)
        .unwrap();
}

fn ct_tcp(h: &Harness, key: Ct4Key) -> Ct4Entry {
    h.maps
        .ct4_tcp
        .get(&key, 0)
        .unwrap_or_else(|e| panic!("conntrack entry {key:?}: {e}"))
}

fn conn_key(src: ([u8; 4], u16), dst: ([u8; 4], u16), proto: u8) -> Ct4Key {
    Ct4Key::new(ip(src.0), src.1, ip(dst.0), dst.1, proto, 0)
}

fn svc_key(src: ([u8; 4], u16), dst: ([u8; 4], u16), proto: u8) -> Ct4Key {
    Ct4Key::new(ip(src.0), src.1, ip(dst.0), dst.1, proto, CT_KEY_SERVICE)
}

/// Runs `program` and returns (verdict, output, its tuple).
fn run(h: &Harness, program: &str, packet: &[u8]) -> (u32, Vec<u8>, Tuple) {
    let (verdict, out) = h.run(program, packet);
    let t = tuple_of(&out);
    (verdict, out, t)
}

#[test]
fn new_clusterip_connection_is_dnated_with_valid_checksums_and_conntrack() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);

    let packet = from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN);
    let (verdict, out, t) = run(&h, "from_container", &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the local backend");
    assert_eq!(t.dst, (POD_B, BE_PORT), "destination is the backend");
    assert_eq!(t.src, (POD_A, CLIENT_PORT), "source untouched");
    assert_eq!(&out[0..6], &POD_B_MAC);
    assert_eq!(out[22], 63, "TTL decremented on delivery");
    assert_checksums(&out, false);
    assert_eq!(&out[54..], &packet[54..], "payload untouched");

    let svc = ct_tcp(
        &h,
        svc_key((POD_A, CLIENT_PORT), (CLUSTER_IP, SVC_PORT), IPPROTO_TCP),
    );
    assert_eq!(svc.backend_id, 1);
    let conn = ct_tcp(
        &h,
        conn_key((POD_A, CLIENT_PORT), (POD_B, BE_PORT), IPPROTO_TCP),
    );
    assert_eq!(conn.rev_nat_index, REV_CLUSTER);
    assert_eq!(addr_of(conn.frontend_addr), ip(CLUSTER_IP));
    assert_eq!(conn.backend_id, 1);
    assert_eq!(conn.flags, 0, "no reply yet, nothing closing, no SNAT");
    assert_eq!((conn.tx_packets, conn.rx_packets), (1, 0));
    assert_eq!(conn.tx_bytes, packet.len() as u64);
    assert_eq!(conn.tx_flags_seen, TCP_SYN);
    assert_lifetime(conn.lifetime, T_SYN, "SYN-only connection");
    assert_eq!(svc.lifetime, conn.lifetime, "service entry lives as long");
    assert!(conn.created <= monotonic_seconds() && conn.created + 2 >= monotonic_seconds());
}

#[test]
fn established_connections_keep_their_backend_and_new_ones_spread() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    backend(&mut h, 2, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(
        &mut h,
        CLUSTER_TCP,
        SVC_F_CLUSTER_IP,
        REV_CLUSTER,
        &[1, 2],
        0,
    );

    let first = run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    )
    .2
    .dst;
    for _ in 0..16 {
        let (_, out, t) = run(
            &h,
            "from_container",
            &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_ACK),
        );
        assert_eq!(t.dst, first, "an established connection keeps its backend");
        assert_checksums(&out, false);
    }
    let conn = ct_tcp(&h, conn_key((POD_A, CLIENT_PORT), first, IPPROTO_TCP));
    assert_eq!(conn.tx_packets, 17);

    let mut seen = std::collections::BTreeSet::new();
    for port in 0..64 {
        let (verdict, _, t) = run(
            &h,
            "from_container",
            &from_pod_a(41000 + port, (CLUSTER_IP, SVC_PORT), TCP_SYN),
        );
        seen.insert(t.dst);
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "to the local pod or into the tunnel"
        );
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![(POD_B, BE_PORT), (REMOTE_POD, BE_PORT)],
        "64 new connections use both backends"
    );
}

#[test]
fn replies_get_the_frontend_as_source_wherever_they_arrive() {
    root_only!();
    // Local backend: the reply passes the backend's from_container.
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    );
    send_as(&mut h, POD_B, 202);
    let reply = tcp_frame(
        (LXC_B_MAC, POD_B_MAC),
        (POD_B, BE_PORT),
        (POD_A, CLIENT_PORT),
        TCP_SYN | TCP_ACK,
    );
    let (verdict, out, t) = run(&h, "from_container", &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered to the client pod");
    assert_eq!(t.src, (CLUSTER_IP, SVC_PORT), "source is the frontend");
    assert_eq!(t.dst, (POD_A, CLIENT_PORT));
    assert_eq!(&out[0..6], &POD_A_MAC);
    assert_checksums(&out, false);
    let conn = ct_tcp(
        &h,
        conn_key((POD_A, CLIENT_PORT), (POD_B, BE_PORT), IPPROTO_TCP),
    );
    assert_eq!(conn.flags & CT_F_SEEN_REPLY, CT_F_SEEN_REPLY);
    assert_eq!((conn.rx_packets, conn.rx_bytes), (1, reply.len() as u64));
    assert_eq!(conn.rx_flags_seen, TCP_SYN | TCP_ACK);
    assert_lifetime(conn.lifetime, T_TCP, "answered connection");

    // Remote backend: the reply comes out of the tunnel, or (native
    // routing) in through the native device, and is translated before
    // delivery to the client.
    for program in ["from_overlay", "from_netdev"] {
        let mut h = harness(None, true);
        backend(&mut h, 2, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
        service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[2], 0);
        let (verdict, _, t) = run(
            &h,
            "from_container",
            &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT, "into the tunnel");
        assert_eq!(t.dst, (REMOTE_POD, BE_PORT));
        let reply = from_net((REMOTE_POD, BE_PORT), (POD_A, CLIENT_PORT), TCP_ACK);
        let (verdict, out, t) = run(&h, program, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{program} delivers to the client");
        assert_eq!(
            t.src,
            (CLUSTER_IP, SVC_PORT),
            "{program}: frontend as source"
        );
        assert_eq!(t.dst, (POD_A, CLIENT_PORT));
        assert_checksums(&out, false);
    }
}

#[test]
fn a_service_without_backends_answers_icmp_port_unreachable() {
    root_only!();
    let mut h = harness(None, true);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[], 0);
    let packet = from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN);
    let before = h.counter(DROP_NO_SERVICE, METRIC_EGRESS);
    let (verdict, out) = h.run("from_container", &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT, "the answer goes back to the pod");
    assert_eq!(h.counter(DROP_NO_SERVICE, METRIC_EGRESS), before + 1);
    let ev = h.next_event().expect("the drop is emitted");
    assert_eq!((ev.kind, ev.reason), (EVENT_DROP, DROP_NO_SERVICE));
    assert_eq!(ev.len as usize, packet.len());

    assert_eq!(
        out.len(),
        14 + 20 + 8 + 40,
        "IP + ICMP + quoted IP header + the whole TCP header"
    );
    assert_eq!(&out[0..6], &POD_A_MAC, "back to the sender's MAC");
    assert_eq!(&out[6..12], &LXC_A_MAC);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let ip4 = &out[14..34];
    assert_eq!(ip4[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip4[2], ip4[3]]), 68);
    assert_eq!(ip4[9], 1, "ICMP");
    assert_eq!(
        &ip4[12..16],
        &CLUSTER_IP,
        "from the address the client tried"
    );
    assert_eq!(&ip4[16..20], &POD_A);
    assert_eq!(checksum(ip4), 0, "IPv4 header checksum is valid");
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 3), "destination/port unreachable");
    assert_eq!(checksum(icmp), 0, "ICMP checksum is valid");
    assert_eq!(
        &icmp[8..],
        &packet[14..14 + 40],
        "quotes the client's IP header and TCP header"
    );
}

#[test]
fn a_removed_backend_makes_its_established_connection_pick_again() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    let t = run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    )
    .2;
    assert_eq!(t.dst, (REMOTE_POD, BE_PORT));

    backend(&mut h, 2, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[2], 0);
    h.maps.lb4_backends.remove(&1).unwrap();
    let (verdict, out, t) = run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_ACK),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(t.dst, (POD_B, BE_PORT), "the remaining backend");
    assert_checksums(&out, false);
    let svc = ct_tcp(
        &h,
        svc_key((POD_A, CLIENT_PORT), (CLUSTER_IP, SVC_PORT), IPPROTO_TCP),
    );
    assert_eq!(svc.backend_id, 2, "the service entry names the new backend");
}

#[test]
fn a_terminating_backend_keeps_its_connections_and_gets_no_new_ones() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    );

    // Backend 1 terminates: still in the backends map, in no slot.
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_TERMINATING);
    backend(&mut h, 2, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[2], 0);
    for _ in 0..4 {
        let t = run(
            &h,
            "from_container",
            &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_ACK),
        )
        .2;
        assert_eq!(
            t.dst,
            (POD_B, BE_PORT),
            "established stays on the terminating backend"
        );
    }
    for port in 0..16 {
        let t = run(
            &h,
            "from_container",
            &from_pod_a(42000 + port, (CLUSTER_IP, SVC_PORT), TCP_SYN),
        )
        .2;
        assert_eq!(
            t.dst,
            (REMOTE_POD, BE_PORT),
            "new connections never pick it"
        );
    }
    // Even with no active backend left, the established connection goes on.
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[], 0);
    let (verdict, _, t) = run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_ACK),
    );
    assert_eq!((verdict, t.dst), (TC_ACT_REDIRECT, (POD_B, BE_PORT)));
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend_until_it_expires() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    backend(&mut h, 2, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    // In the backends map and active, but in no slot: only affinity leads there.
    backend(
        &mut h,
        9,
        [10, 78, 0, 99],
        BE_PORT,
        IPPROTO_TCP,
        BE_STATE_ACTIVE,
    );
    let flags = SVC_F_CLUSTER_IP | SVC_F_AFFINITY;
    service(&mut h, CLUSTER_TCP, flags, REV_CLUSTER, &[1, 2], 100);

    let first = run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    )
    .2
    .dst;
    for port in 1..=24 {
        let t = run(
            &h,
            "from_container",
            &from_pod_a(CLIENT_PORT + port, (CLUSTER_IP, SVC_PORT), TCP_SYN),
        )
        .2;
        assert_eq!(t.dst, first, "every connection of the client, same backend");
    }
    let akey = Lb4AffinityKey {
        client_ip: be_addr(ip(POD_A)),
        rev_nat_index: REV_CLUSTER,
    };
    let aff = h.maps.lb4_affinity.get(&akey, 0).unwrap();
    let be = h.maps.lb4_backends.get(&aff.backend_id, 0).unwrap();
    assert_eq!(
        (be.address, be.port),
        (be_addr(ip(first.0)), first.1.to_be())
    );
    assert_lifetime(aff.last_used, 0, "affinity last used");

    let now = monotonic_seconds();
    let stale = Lb4AffinityValue {
        backend_id: 9,
        last_used: now - 50,
    };
    h.maps.lb4_affinity.insert(akey, stale, 0).unwrap();
    let t = run(
        &h,
        "from_container",
        &from_pod_a(45000, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    )
    .2;
    assert_eq!(
        t.dst,
        ([10, 78, 0, 99], BE_PORT),
        "within the timeout: affinity wins"
    );

    let expired = Lb4AffinityValue {
        backend_id: 9,
        last_used: now - 101,
    };
    h.maps.lb4_affinity.insert(akey, expired, 0).unwrap();
    let t = run(
        &h,
        "from_container",
        &from_pod_a(45001, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    )
    .2;
    assert_ne!(t.dst.0, [10, 78, 0, 99], "expired: a slot is picked");
    let aff = h.maps.lb4_affinity.get(&akey, 0).unwrap();
    assert_ne!(aff.backend_id, 9, "the new choice is remembered");
    assert_lifetime(aff.last_used, 0, "affinity renewed");
}

#[test]
fn hairpin_connections_come_from_the_loopback_address_and_replies_go_back() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_A, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    let (verdict, out, t) = run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT, "back into the pod itself");
    assert_eq!(t.src, (LOOPBACK, CLIENT_PORT), "source is 169.254.42.1");
    assert_eq!(t.dst, (POD_A, BE_PORT));
    assert_eq!(&out[0..6], &POD_A_MAC);
    assert_checksums(&out, false);
    let conn = ct_tcp(
        &h,
        conn_key((LOOPBACK, CLIENT_PORT), (POD_A, BE_PORT), IPPROTO_TCP),
    );
    assert_eq!(conn.flags & CT_F_LOOPBACK, CT_F_LOOPBACK);

    let reply = from_pod_a(BE_PORT, (LOOPBACK, CLIENT_PORT), TCP_SYN | TCP_ACK);
    let (verdict, out, t) = run(&h, "from_container", &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        t.src,
        (CLUSTER_IP, SVC_PORT),
        "the reply comes from the frontend"
    );
    assert_eq!(t.dst, (POD_A, CLIENT_PORT), "to the client socket");
    assert_checksums(&out, false);
}

#[test]
fn nodeport_with_a_local_backend_is_delivered_and_answered_from_the_node_port() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);

    let client = (OUTSIDE, OUTSIDE_PORT);
    let packet = from_net(client, (NODE_IP, NODE_PORT), TCP_SYN);
    let (verdict, out, t) = run(&h, "from_netdev", &packet);
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "into the backend pod (redirect_peer)"
    );
    assert_eq!(t.dst, (POD_B, BE_PORT));
    assert_eq!(t.src, client, "no SNAT for a local backend");
    assert_eq!(&out[0..6], &POD_B_MAC);
    assert_checksums(&out, false);
    let conn = ct_tcp(&h, conn_key(client, (POD_B, BE_PORT), IPPROTO_TCP));
    assert_eq!(conn.flags, CT_F_NODEPORT);
    assert_eq!(addr_of(conn.frontend_addr), ip(NODE_IP));
    assert!(h.maps.snat4.keys().next().is_none(), "no NAT mapping");

    send_as(&mut h, POD_B, 202);
    let reply = tcp_frame(
        (LXC_B_MAC, POD_B_MAC),
        (POD_B, BE_PORT),
        client,
        TCP_SYN | TCP_ACK,
    );
    let (verdict, out, t) = run(&h, "from_container", &reply);
    // No native device in this test: the FIB path hands it to the stack
    // (tests/fib.rs covers the FIB redirect itself).
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(t.src, (NODE_IP, NODE_PORT), "source is node IP:nodePort");
    assert_eq!(t.dst, client, "back to the outside client");
    assert_checksums(&out, false);
}

/// NodePort to a backend on another node: DNAT + SNAT on the way in, both
/// NAT mappings, and the reply restored through `reply_program`. The client
/// uses an ordinary ephemeral port (below the NAT range), so the node picks
/// one from the NAT range, clear of the host's own ephemeral ports.
fn nodeport_remote(via_tunnel: bool, reply_program: &str) {
    let mut h = harness(Some(NODE_IP), via_tunnel);
    backend(&mut h, 1, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);

    let client = (OUTSIDE, OUTSIDE_PORT);
    let packet = from_net(client, (NODE_IP, NODE_PORT), TCP_SYN);
    let (verdict, out, t) = run(&h, "from_netdev", &packet);
    if via_tunnel {
        assert_eq!(verdict, TC_ACT_REDIRECT, "into the tunnel");
    } else {
        assert_eq!(
            verdict, TC_ACT_OK,
            "no native device here: FIB path to the stack"
        );
    }
    assert_eq!(t.dst, (REMOTE_POD, BE_PORT));
    let nat_port = t.src.1;
    assert_eq!(t.src.0, NODE_IP, "SNAT to the node IP");
    assert!(
        (NAT_PORT_MIN..=NAT_PORT_MAX).contains(&nat_port) && nat_port > 60999,
        "the NAT port {nat_port} is above the host's ephemeral range (32768-60999)"
    );
    assert_checksums(&out, false);

    let conn = ct_tcp(&h, conn_key(client, (REMOTE_POD, BE_PORT), IPPROTO_TCP));
    assert_eq!(conn.flags, CT_F_NODEPORT | CT_F_SNAT);
    let egress = Ct4Key::new(
        ip(OUTSIDE),
        OUTSIDE_PORT,
        ip(REMOTE_POD),
        BE_PORT,
        IPPROTO_TCP,
        NAT_DIR_EGRESS,
    );
    let e = h.maps.snat4.get(&egress, 0).unwrap();
    assert_eq!((e.to(), e.flags), ((ip(NODE_IP), nat_port), NAT_F_NODEPORT));
    assert_eq!(e.lifetime, conn.lifetime);
    let ingress = Ct4Key::new(
        ip(REMOTE_POD),
        BE_PORT,
        ip(NODE_IP),
        nat_port,
        IPPROTO_TCP,
        NAT_DIR_INGRESS,
    );
    let i = h.maps.snat4.get(&ingress, 0).unwrap();
    assert_eq!(
        (i.to(), i.flags),
        ((ip(OUTSIDE), OUTSIDE_PORT), NAT_F_NODEPORT)
    );

    // The established flow reuses its mapping.
    let (_, _, t) = run(
        &h,
        "from_netdev",
        &from_net(client, (NODE_IP, NODE_PORT), TCP_ACK),
    );
    assert_eq!(t.src, (NODE_IP, nat_port));

    // The reply renews both mappings, the EGRESS twin included.
    let mut stale = h.maps.snat4.get(&egress, 0).unwrap();
    stale.lifetime = 1;
    h.maps.snat4.insert(egress, stale, 0).unwrap();
    let reply = from_net(
        (REMOTE_POD, BE_PORT),
        (NODE_IP, nat_port),
        TCP_SYN | TCP_ACK,
    );
    let (verdict, out, t) = run(&h, reply_program, &reply);
    assert_eq!(
        verdict, TC_ACT_OK,
        "FIB path (to the stack without a native device)"
    );
    assert_eq!(
        t.src,
        (NODE_IP, NODE_PORT),
        "{reply_program}: source is the frontend"
    );
    assert_eq!(t.dst, client, "{reply_program}: destination is the client");
    assert_checksums(&out, false);
    let conn = ct_tcp(&h, conn_key(client, (REMOTE_POD, BE_PORT), IPPROTO_TCP));
    assert_eq!(conn.flags & CT_F_SEEN_REPLY, CT_F_SEEN_REPLY);
    let i = h.maps.snat4.get(&ingress, 0).unwrap();
    assert_eq!(i.lifetime, conn.lifetime, "the reply renews its mapping");
    let e = h.maps.snat4.get(&egress, 0).unwrap();
    assert_eq!(e.lifetime, conn.lifetime, "and the EGRESS twin with it");

    // A lost EGRESS twin is put back by the reply, with the same port.
    h.maps.snat4.remove(&egress).unwrap();
    run(&h, reply_program, &reply);
    let e = h.maps.snat4.get(&egress, 0).unwrap();
    assert_eq!((e.to(), e.flags), ((ip(NODE_IP), nat_port), NAT_F_NODEPORT));
    assert_eq!(e.lifetime, conn.lifetime);

    // A lost INGRESS twin is put back by the client's next packet, which
    // keeps its port: the reply tuple still leads to the client.
    h.maps.snat4.remove(&ingress).unwrap();
    let (_, _, t) = run(
        &h,
        "from_netdev",
        &from_net(client, (NODE_IP, NODE_PORT), TCP_ACK),
    );
    assert_eq!(t.src, (NODE_IP, nat_port), "the mapping is kept");
    let i = h.maps.snat4.get(&ingress, 0).unwrap();
    assert_eq!(i.to(), (ip(OUTSIDE), OUTSIDE_PORT), "INGRESS twin restored");
    let conn = ct_tcp(&h, conn_key(client, (REMOTE_POD, BE_PORT), IPPROTO_TCP));
    assert_eq!(i.lifetime, conn.lifetime);
}

#[test]
fn nodeport_with_a_remote_backend_through_the_tunnel() {
    root_only!();
    nodeport_remote(true, "from_overlay");
}

#[test]
fn nodeport_with_a_remote_backend_with_native_routing() {
    root_only!();
    nodeport_remote(false, "from_netdev");
}

#[test]
fn a_taken_nat_port_makes_snat_choose_another() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
    // Another client already holds the reply tuple with the client's port.
    let taken = Ct4Key::new(
        ip(REMOTE_POD),
        BE_PORT,
        ip(NODE_IP),
        IN_RANGE_PORT,
        IPPROTO_TCP,
        NAT_DIR_INGRESS,
    );
    let other = Nat4Entry {
        to_addr: be_addr(Ipv4Addr::new(198, 51, 100, 9)),
        to_port: 1234u16.to_be(),
        flags: NAT_F_NODEPORT,
        lifetime: monotonic_seconds() + 1000,
        created: monotonic_seconds(),
    };
    h.maps.snat4.insert(taken, other, 0).unwrap();

    let client = (OUTSIDE, IN_RANGE_PORT);
    let (verdict, out, t) = run(
        &h,
        "from_netdev",
        &from_net(client, (NODE_IP, NODE_PORT), TCP_SYN),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let port = t.src.1;
    assert_eq!(t.src.0, NODE_IP);
    assert_ne!(port, IN_RANGE_PORT, "the taken port is not reused");
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port));
    assert_checksums(&out, false);
    assert_eq!(
        h.maps.snat4.get(&taken, 0).unwrap(),
        other,
        "the other mapping stays"
    );
    let egress = Ct4Key::new(
        ip(OUTSIDE),
        IN_RANGE_PORT,
        ip(REMOTE_POD),
        BE_PORT,
        IPPROTO_TCP,
        NAT_DIR_EGRESS,
    );
    assert_eq!(
        h.maps.snat4.get(&egress, 0).unwrap().to(),
        (ip(NODE_IP), port)
    );
    let ingress = Ct4Key {
        dport: port.to_be(),
        ..taken
    };
    assert_eq!(
        h.maps.snat4.get(&ingress, 0).unwrap().to(),
        (ip(OUTSIDE), IN_RANGE_PORT)
    );
}

#[test]
fn a_client_port_in_the_nat_range_is_kept_and_a_mapping_back_to_it_reused() {
    root_only!();
    let client = (OUTSIDE, IN_RANGE_PORT);
    let ingress = Ct4Key::new(
        ip(REMOTE_POD),
        BE_PORT,
        ip(NODE_IP),
        IN_RANGE_PORT,
        IPPROTO_TCP,
        NAT_DIR_INGRESS,
    );
    for leftover in [false, true] {
        let mut h = harness(Some(NODE_IP), true);
        backend(&mut h, 1, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
        service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
        if leftover {
            // The INGRESS half of this very connection, its EGRESS twin lost.
            let back = Nat4Entry {
                to_addr: be_addr(ip(OUTSIDE)),
                to_port: IN_RANGE_PORT.to_be(),
                flags: NAT_F_NODEPORT,
                lifetime: monotonic_seconds() + 5,
                created: monotonic_seconds(),
            };
            h.maps.snat4.insert(ingress, back, 0).unwrap();
        }
        let (verdict, out, t) = run(
            &h,
            "from_netdev",
            &from_net(client, (NODE_IP, NODE_PORT), TCP_SYN),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            t.src,
            (NODE_IP, IN_RANGE_PORT),
            "leftover={leftover}: the client's port is kept"
        );
        assert_checksums(&out, false);
        assert_eq!(
            h.maps.snat4.keys().count(),
            2,
            "leftover={leftover}: one EGRESS and one INGRESS mapping"
        );
        let conn = ct_tcp(&h, conn_key(client, (REMOTE_POD, BE_PORT), IPPROTO_TCP));
        let i = h.maps.snat4.get(&ingress, 0).unwrap();
        assert_eq!(i.lifetime, conn.lifetime, "leftover={leftover}: renewed");
    }
}

#[test]
fn a_lost_ingress_twin_whose_port_went_to_another_connection_gets_a_new_port() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
    let client = (OUTSIDE, IN_RANGE_PORT);
    let syn = from_net(client, (NODE_IP, NODE_PORT), TCP_SYN);
    assert_eq!(run(&h, "from_netdev", &syn).2.src, (NODE_IP, IN_RANGE_PORT));

    let ingress = Ct4Key::new(
        ip(REMOTE_POD),
        BE_PORT,
        ip(NODE_IP),
        IN_RANGE_PORT,
        IPPROTO_TCP,
        NAT_DIR_INGRESS,
    );
    let other = Nat4Entry {
        to_addr: be_addr(Ipv4Addr::new(198, 51, 100, 9)),
        to_port: 1234u16.to_be(),
        flags: NAT_F_NODEPORT,
        lifetime: monotonic_seconds() + 1000,
        created: monotonic_seconds(),
    };
    h.maps.snat4.insert(ingress, other, 0).unwrap();

    let (verdict, out, t) = run(
        &h,
        "from_netdev",
        &from_net(client, (NODE_IP, NODE_PORT), TCP_ACK),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let port = t.src.1;
    assert_ne!(
        port, IN_RANGE_PORT,
        "replies to that port go to the other client now"
    );
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port));
    assert_checksums(&out, false);
    assert_eq!(h.maps.snat4.get(&ingress, 0).unwrap(), other);
    let egress = Ct4Key::new(
        ip(OUTSIDE),
        IN_RANGE_PORT,
        ip(REMOTE_POD),
        BE_PORT,
        IPPROTO_TCP,
        NAT_DIR_EGRESS,
    );
    assert_eq!(
        h.maps.snat4.get(&egress, 0).unwrap().to(),
        (ip(NODE_IP), port)
    );
    let mine = Ct4Key {
        dport: port.to_be(),
        ..ingress
    };
    assert_eq!(
        h.maps.snat4.get(&mine, 0).unwrap().to(),
        (ip(OUTSIDE), IN_RANGE_PORT)
    );
}

#[test]
fn traffic_to_node_ports_below_the_nat_range_skips_nat() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    // Even a mapping there (which SNAT never makes) is not consulted.
    let ssh = Ct4Key::new(
        ip(REMOTE_POD),
        BE_PORT,
        ip(NODE_IP),
        22,
        IPPROTO_TCP,
        NAT_DIR_INGRESS,
    );
    let entry = Nat4Entry {
        to_addr: be_addr(ip(OUTSIDE)),
        to_port: 22u16.to_be(),
        flags: NAT_F_NODEPORT,
        lifetime: monotonic_seconds() + 1000,
        created: monotonic_seconds(),
    };
    h.maps.snat4.insert(ssh, entry, 0).unwrap();
    let packet = from_net((REMOTE_POD, BE_PORT), (NODE_IP, 22), TCP_ACK);
    for program in ["from_netdev", "from_overlay"] {
        let (verdict, out) = h.run(program, &packet);
        assert_eq!(
            (verdict, out),
            (TC_ACT_OK, packet.clone()),
            "{program}: to the stack untouched"
        );
    }
}

/// Pins the calling thread to one CPU, so that its map updates and its
/// `BPF_PROG_TEST_RUN`s share one LRU free list.
fn pin_to_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|cur| (0..nix::sched::CpuSet::count()).find(|&c| cur.is_set(c).unwrap_or(false)))
        .unwrap_or(0);
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

#[test]
fn a_full_nat_map_loses_no_entry_to_a_failed_port_search() {
    root_only!();
    pin_to_one_cpu();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
    let entry = Nat4Entry {
        to_addr: be_addr(Ipv4Addr::new(198, 51, 100, 9)),
        to_port: 1234u16.to_be(),
        flags: NAT_F_NODEPORT,
        lifetime: monotonic_seconds() + 1000,
        created: monotonic_seconds(),
    };
    // Every reply tuple the packet could use is taken, and the rest of the
    // map is filled to the last preallocated entry from this CPU, so no
    // free entry is left anywhere: a map update would have to evict.
    let ports = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
    for n in 0..NAT_MAP_SIZE {
        let key = if n < ports {
            Ct4Key::new(
                ip(REMOTE_POD),
                BE_PORT,
                ip(NODE_IP),
                NAT_PORT_MIN + n as u16,
                IPPROTO_TCP,
                NAT_DIR_INGRESS,
            )
        } else {
            Ct4Key::new(
                Ipv4Addr::from(0x0a00_0000 + n),
                1,
                ip(NODE_IP),
                2,
                IPPROTO_UDP,
                NAT_DIR_EGRESS,
            )
        };
        h.maps.snat4.insert(key, entry, 0).unwrap();
    }
    assert_eq!(h.maps.snat4.keys().count() as u32, NAT_MAP_SIZE);

    let packet = from_net((OUTSIDE, OUTSIDE_PORT), (NODE_IP, NODE_PORT), TCP_SYN);
    expect_drop(
        &mut h,
        "from_netdev",
        &packet,
        DROP_NAT_NO_MAPPING,
        METRIC_EGRESS,
    );
    assert_eq!(
        h.maps.snat4.keys().count() as u32,
        NAT_MAP_SIZE,
        "looking for a port evicted no live mapping"
    );
}

#[test]
fn snat_without_a_free_port_drops_with_nat_no_mapping() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
    let entry = Nat4Entry {
        to_addr: be_addr(Ipv4Addr::new(198, 51, 100, 9)),
        to_port: 1234u16.to_be(),
        flags: NAT_F_NODEPORT,
        lifetime: monotonic_seconds() + 1000,
        created: monotonic_seconds(),
    };
    for port in NAT_PORT_MIN..=NAT_PORT_MAX {
        let key = Ct4Key::new(
            ip(REMOTE_POD),
            BE_PORT,
            ip(NODE_IP),
            port,
            IPPROTO_TCP,
            NAT_DIR_INGRESS,
        );
        h.maps.snat4.insert(key, entry, 0).unwrap();
    }
    let packet = from_net((OUTSIDE, OUTSIDE_PORT), (NODE_IP, NODE_PORT), TCP_SYN);
    expect_drop(
        &mut h,
        "from_netdev",
        &packet,
        DROP_NAT_NO_MAPPING,
        METRIC_EGRESS,
    );
}

#[test]
fn from_netdev_translates_outside_frontends_only() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    let packet = from_net((OUTSIDE, OUTSIDE_PORT), (CLUSTER_IP, SVC_PORT), TCP_SYN);
    let (verdict, out) = h.run("from_netdev", &packet);
    assert_eq!(
        (verdict, out),
        (TC_ACT_OK, packet),
        "ClusterIP-only: untouched"
    );
    assert!(h.maps.ct4_tcp.keys().next().is_none(), "no conntrack");

    let external = (EXTERNAL_IP, SVC_PORT, IPPROTO_TCP, LB_SCOPE_EXTERNAL);
    service(&mut h, external, SVC_F_EXTERNAL_IP, REV_EXTERNAL, &[1], 0);
    let packet = from_net((OUTSIDE, OUTSIDE_PORT), (EXTERNAL_IP, SVC_PORT), TCP_SYN);
    let (verdict, out, t) = run(&h, "from_netdev", &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(t.dst, (POD_B, BE_PORT), "externalIP: translated");
    assert_checksums(&out, false);

    // Node traffic that is no NodePort (SSH to the node) passes untouched.
    let ssh = from_net((OUTSIDE, OUTSIDE_PORT), (NODE_IP, 22), TCP_SYN);
    let (verdict, out) = h.run("from_netdev", &ssh);
    assert_eq!((verdict, out), (TC_ACT_OK, ssh));
}

#[test]
fn two_scopes_give_pods_the_internal_backends_and_outside_the_external_ones() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    backend(&mut h, 2, REMOTE_POD, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    let flags = SVC_F_NODEPORT | SVC_F_TWO_SCOPES;
    service(&mut h, NODEPORT_TCP, flags, REV_NODEPORT, &[1], 0);
    let internal = ([0, 0, 0, 0], NODE_PORT, IPPROTO_TCP, LB_SCOPE_INTERNAL);
    service(&mut h, internal, flags, REV_NODEPORT, &[2], 0);

    for port in 0..4 {
        let t = run(
            &h,
            "from_container",
            &from_pod_a(43000 + port, (NODE_IP, NODE_PORT), TCP_SYN),
        )
        .2;
        assert_eq!(t.dst, (REMOTE_POD, BE_PORT), "pods use the INTERNAL scope");
        let t = run(
            &h,
            "from_netdev",
            &from_net((OUTSIDE, 43000 + port), (NODE_IP, NODE_PORT), TCP_SYN),
        )
        .2;
        assert_eq!(t.dst, (POD_B, BE_PORT), "outside uses the EXTERNAL scope");
    }
}

#[test]
fn udp_without_a_checksum_keeps_none_and_with_one_keeps_it_valid() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, 5353, IPPROTO_UDP, BE_STATE_ACTIVE);
    let dns = (CLUSTER_IP, 53, IPPROTO_UDP, LB_SCOPE_EXTERNAL);
    service(&mut h, dns, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    for (with_csum, sport) in [(false, 40001), (true, 40002)] {
        let packet = udp_frame(
            (LXC_A_MAC, POD_A_MAC),
            (POD_A, sport),
            (CLUSTER_IP, 53),
            with_csum,
        );
        let (verdict, out, t) = run(&h, "from_container", &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(t.dst, (POD_B, 5353));
        assert_checksums(&out, !with_csum);
        let key = conn_key((POD_A, sport), (POD_B, 5353), IPPROTO_UDP);
        let conn = h.maps.ct4_any.get(&key, 0).unwrap();
        assert_lifetime(conn.lifetime, T_ANY, "UDP");
        assert!(
            h.maps.ct4_tcp.get(&key, 0).is_err(),
            "UDP is tracked in ct4_any only"
        );
    }
}

#[test]
fn a_pod_reaches_a_nodeport_on_another_node_through_the_wildcard() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
    for node in [REMOTE_NODE, NODE_IP] {
        let (verdict, out, t) = run(
            &h,
            "from_container",
            &from_pod_a(CLIENT_PORT, (node, NODE_PORT), TCP_SYN),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(t.dst, (POD_B, BE_PORT), "translated at the source");
        assert_checksums(&out, false);
        let conn = ct_tcp(
            &h,
            conn_key((POD_A, CLIENT_PORT), (POD_B, BE_PORT), IPPROTO_TCP),
        );
        assert_eq!(addr_of(conn.frontend_addr), ip(node));

        send_as(&mut h, POD_B, 202);
        let reply = tcp_frame(
            (LXC_B_MAC, POD_B_MAC),
            (POD_B, BE_PORT),
            (POD_A, CLIENT_PORT),
            TCP_ACK,
        );
        let t = run(&h, "from_container", &reply).2;
        assert_eq!(
            t.src,
            (node, NODE_PORT),
            "the reply comes from the node the pod used"
        );
        // Pod B back on its own device for the next round.
        let info = EndpointInfo {
            ifindex: POD_B_IFINDEX,
            lxc_id: 202,
            flags: 0,
            mac: POD_B_MAC,
            node_mac: LXC_B_MAC,
            sec_identity: 0,
        };
        h.maps
            .endpoints
            .insert(EndpointKey::new(ip(POD_B)), info, 0)
            .unwrap();
        h.maps
            .ct4_tcp
            .remove(&svc_key(
                (POD_A, CLIENT_PORT),
                (node, NODE_PORT),
                IPPROTO_TCP,
            ))
            .unwrap();
    }
}

#[test]
fn without_a_node_ip_there_is_no_nodeport_and_nothing_breaks() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
    // NODE_IP is nobody's address now.
    let packet = from_pod_a(CLIENT_PORT, (NODE_IP, NODE_PORT), TCP_SYN);
    let (verdict, out) = h.run("from_container", &packet);
    assert_eq!((verdict, out), (TC_ACT_OK, packet.clone()));
    let inbound = from_net((OUTSIDE, OUTSIDE_PORT), (NODE_IP, NODE_PORT), TCP_SYN);
    let (verdict, out) = h.run("from_netdev", &inbound);
    assert_eq!((verdict, out), (TC_ACT_OK, inbound.clone()));
    let (verdict, out) = h.run("from_overlay", &inbound);
    assert_eq!((verdict, out), (TC_ACT_OK, inbound));
}

#[test]
fn conntrack_lifetimes_follow_the_tcp_state() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    send_as(&mut h, POD_B, 202);

    let step = |h: &Harness, cport: u16, from_client: bool, flags: u8, timeout: u32, what| {
        let packet = if from_client {
            from_pod_a(cport, (CLUSTER_IP, SVC_PORT), flags)
        } else {
            tcp_frame(
                (LXC_B_MAC, POD_B_MAC),
                (POD_B, BE_PORT),
                (POD_A, cport),
                flags,
            )
        };
        assert_eq!(h.run("from_container", &packet).0, TC_ACT_REDIRECT);
        let conn = ct_tcp(h, conn_key((POD_A, cport), (POD_B, BE_PORT), IPPROTO_TCP));
        assert_lifetime(conn.lifetime, timeout, what);
        conn
    };
    // FIN both ways.
    step(&h, 46000, true, TCP_SYN, T_SYN, "SYN only");
    step(&h, 46000, false, TCP_SYN | TCP_ACK, T_TCP, "answered");
    step(&h, 46000, true, TCP_ACK, T_TCP, "established");
    step(&h, 46000, true, TCP_FIN | TCP_ACK, T_TCP, "half closed");
    let conn = step(&h, 46000, false, TCP_FIN | TCP_ACK, T_FIN, "FIN both ways");
    assert_eq!(
        conn.flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING),
        CT_F_TX_CLOSING | CT_F_RX_CLOSING
    );
    // A reset from either side closes at once.
    step(&h, 46001, true, TCP_SYN, T_SYN, "SYN only");
    step(&h, 46001, false, TCP_SYN | TCP_ACK, T_TCP, "answered");
    step(&h, 46001, false, TCP_RST, T_FIN, "RST");
    // A new SYN on a closed tuple starts over.
    step(&h, 46001, true, TCP_SYN, T_SYN, "tuple reused");
}

/// A host-network backend on this node (the API server at node IP:6443).
const HOST_BE_PORT: u16 = 6443;
/// ciliate_host's MAC: NOARP, so the stack's frames through it carry it as
/// both source and destination.
const CILIATE_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

#[test]
fn a_reply_from_a_host_network_backend_is_reverse_translated_in_from_host() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(
        &mut h,
        1,
        NODE_IP,
        HOST_BE_PORT,
        IPPROTO_TCP,
        BE_STATE_ACTIVE,
    );
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    let (verdict, _, t) = run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    );
    assert_eq!(verdict, TC_ACT_OK, "to the host stack");
    assert_eq!(t.dst, (NODE_IP, HOST_BE_PORT));

    // The host's answer, as the stack sends it out of ciliate_host (the
    // PodCIDR's device); from_host delivers it to the pod.
    let reply = tcp_frame(
        (CILIATE_HOST_MAC, CILIATE_HOST_MAC),
        (NODE_IP, HOST_BE_PORT),
        (POD_A, CLIENT_PORT),
        TCP_SYN | TCP_ACK,
    );
    let (verdict, out, t) = run(&h, "from_host", &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &out[..12],
        &[POD_A_MAC, LXC_A_MAC].concat()[..],
        "to the pod"
    );
    assert_eq!(t.src, (CLUSTER_IP, SVC_PORT), "source is the frontend");
    assert_eq!(t.dst, (POD_A, CLIENT_PORT));
    assert_checksums(&out, false);
    let conn = ct_tcp(
        &h,
        conn_key((POD_A, CLIENT_PORT), (NODE_IP, HOST_BE_PORT), IPPROTO_TCP),
    );
    assert_eq!(conn.flags & CT_F_SEEN_REPLY, CT_F_SEEN_REPLY);
    assert_eq!(conn.rx_packets, 1);

    // Anything else the host sends the pod is delivered as it is.
    let ssh = tcp_frame(
        (CILIATE_HOST_MAC, CILIATE_HOST_MAC),
        (NODE_IP, 22),
        (POD_A, CLIENT_PORT),
        TCP_ACK,
    );
    let (verdict, _, t) = run(&h, "from_host", &ssh);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((t.src, t.dst), ((NODE_IP, 22), (POD_A, CLIENT_PORT)));
}

#[test]
fn nodeport_to_a_host_network_backend_on_this_node_is_a_counted_drop() {
    root_only!();
    let mut h = harness(Some(NODE_IP), true);
    backend(
        &mut h,
        1,
        NODE_IP,
        HOST_BE_PORT,
        IPPROTO_TCP,
        BE_STATE_ACTIVE,
    );
    service(&mut h, NODEPORT_TCP, SVC_F_NODEPORT, REV_NODEPORT, &[1], 0);
    let packet = from_net((OUTSIDE, OUTSIDE_PORT), (NODE_IP, NODE_PORT), TCP_SYN);
    expect_drop(
        &mut h,
        "from_netdev",
        &packet,
        DROP_HOST_BACKEND_UNSUPPORTED,
        METRIC_INGRESS,
    );
    assert!(
        h.maps.snat4.keys().next().is_none(),
        "no SNAT to the node IP"
    );
}

#[test]
fn replies_renew_the_service_entry_so_a_server_push_flow_keeps_its_backend() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, 5353, IPPROTO_UDP, BE_STATE_ACTIVE);
    let udp = (CLUSTER_IP, 53, IPPROTO_UDP, LB_SCOPE_EXTERNAL);
    service(&mut h, udp, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    let client = (POD_A, CLIENT_PORT);
    let packet = udp_frame((LXC_A_MAC, POD_A_MAC), client, (CLUSTER_IP, 53), true);
    assert_eq!(run(&h, "from_container", &packet).2.dst, (POD_B, 5353));

    let skey = svc_key(client, (CLUSTER_IP, 53), IPPROTO_UDP);
    let mut sct = h.maps.ct4_any.get(&skey, 0).unwrap();
    sct.lifetime = 1;
    h.maps.ct4_any.insert(skey, sct, 0).unwrap();
    send_as(&mut h, POD_B, 202);
    let push = udp_frame((LXC_B_MAC, POD_B_MAC), (POD_B, 5353), client, true);
    let (verdict, out, t) = run(&h, "from_container", &push);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(t.src, (CLUSTER_IP, 53));
    assert_checksums(&out, false);
    let conn = h
        .maps
        .ct4_any
        .get(&conn_key(client, (POD_B, 5353), IPPROTO_UDP), 0)
        .unwrap();
    let sct = h.maps.ct4_any.get(&skey, 0).unwrap();
    assert_lifetime(conn.lifetime, T_ANY, "pushed-to connection");
    assert_eq!(
        sct.lifetime, conn.lifetime,
        "the service entry lives as long"
    );

    // Hairpin: the client is its own backend, the service entry is its.
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_A, BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE);
    service(&mut h, CLUSTER_TCP, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    run(
        &h,
        "from_container",
        &from_pod_a(CLIENT_PORT, (CLUSTER_IP, SVC_PORT), TCP_SYN),
    );
    let skey = svc_key(client, (CLUSTER_IP, SVC_PORT), IPPROTO_TCP);
    let mut sct = ct_tcp(&h, skey);
    sct.lifetime = 1;
    h.maps.ct4_tcp.insert(skey, sct, 0).unwrap();
    let reply = from_pod_a(BE_PORT, (LOOPBACK, CLIENT_PORT), TCP_SYN | TCP_ACK);
    assert_eq!(
        run(&h, "from_container", &reply).2.src,
        (CLUSTER_IP, SVC_PORT)
    );
    let conn = ct_tcp(
        &h,
        conn_key((LOOPBACK, CLIENT_PORT), (POD_A, BE_PORT), IPPROTO_TCP),
    );
    assert_eq!(ct_tcp(&h, skey).lifetime, conn.lifetime, "hairpin too");
}

/// The frame as an IPv4 fragment: `more` sets MF, `offset` in 8-byte units.
fn fragment(mut frame: Vec<u8>, more: bool, offset: u16) -> Vec<u8> {
    let field = offset | if more { 0x2000 } else { 0 };
    frame[20..22].copy_from_slice(&field.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame
}

#[test]
fn fragments_to_a_service_or_of_its_replies_are_dropped_and_others_pass() {
    root_only!();
    let mut h = harness(None, true);
    backend(&mut h, 1, POD_B, 5353, IPPROTO_UDP, BE_STATE_ACTIVE);
    let udp = (CLUSTER_IP, 53, IPPROTO_UDP, LB_SCOPE_EXTERNAL);
    service(&mut h, udp, SVC_F_CLUSTER_IP, REV_CLUSTER, &[1], 0);
    let client = (POD_A, CLIENT_PORT);
    let to_svc = udp_frame((LXC_A_MAC, POD_A_MAC), client, (CLUSTER_IP, 53), true);
    expect_drop(
        &mut h,
        "from_container",
        &fragment(to_svc.clone(), true, 0),
        DROP_FRAG_NOSUPPORT,
        METRIC_EGRESS,
    );
    assert!(
        h.maps.ct4_any.keys().next().is_none(),
        "no connection for a dropped fragment"
    );

    // Pod to pod, first and later fragments alike: no service, delivered.
    let to_pod = udp_frame((LXC_A_MAC, POD_A_MAC), client, (POD_B, 5353), true);
    for (more, offset) in [(true, 0), (false, 3)] {
        let (verdict, _) = h.run("from_container", &fragment(to_pod.clone(), more, offset));
        assert_eq!(
            verdict, TC_ACT_REDIRECT,
            "pod-to-pod fragment (MF {more}, offset {offset})"
        );
    }

    // A reply of a translated connection, fragmented.
    assert_eq!(run(&h, "from_container", &to_svc).2.dst, (POD_B, 5353));
    send_as(&mut h, POD_B, 202);
    let reply = udp_frame((LXC_B_MAC, POD_B_MAC), (POD_B, 5353), client, true);
    expect_drop(
        &mut h,
        "from_container",
        &fragment(reply, true, 0),
        DROP_FRAG_NOSUPPORT,
        METRIC_EGRESS,
    );
}
