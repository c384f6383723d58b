//! Services against the real kernel: two pods on one node (namespaces made
//! for the test, removed however it ends) talk TCP through a ClusterIP, and
//! a pod reaches itself through its own service (hairpin). The kernel's TCP
//! stacks on both ends check every checksum and tuple the datapath rewrote.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ciliate_datapath::loader::{Datapath, LXC_ATTACH};
use ciliate_datapath::maps::{
    Ct4Key, DatapathConfig, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, BE_STATE_ACTIVE,
    CT_F_SEEN_REPLY, IPPROTO_TCP, IPV4_SVC_LOOPBACK, LB_SCOPE_EXTERNAL, SVC_F_CLUSTER_IP,
};
use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_datapath::netns;
use common::*;

const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 62, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 62, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 62, 0, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 62, 10);
const SELF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 62, 11);

/// One backend per frontend, rev-NAT index = `rev`.
fn one_backend_service(
    maps: &mut ciliate_datapath::loader::Maps,
    vip: Ipv4Addr,
    rev: u32,
    be: (Ipv4Addr, u16),
) {
    maps.lb4_backends
        .insert(
            rev,
            Lb4Backend::new(be.0, be.1, IPPROTO_TCP, BE_STATE_ACTIVE),
            0,
        )
        .unwrap();
    let slot = Lb4Service {
        backend_id: rev,
        ..Lb4Service::default()
    };
    maps.lb4_services
        .insert(
            Lb4Key::new(vip, 80, IPPROTO_TCP, LB_SCOPE_EXTERNAL, 1),
            slot,
            0,
        )
        .unwrap();
    let svc = Lb4Service {
        backend_id: 0,
        rev_nat_index: rev,
        count: 1,
        flags: SVC_F_CLUSTER_IP,
        affinity_timeout: 0,
    };
    maps.lb4_services
        .insert(
            Lb4Key::new(vip, 80, IPPROTO_TCP, LB_SCOPE_EXTERNAL, 0),
            svc,
            0,
        )
        .unwrap();
    maps.lb4_reverse_nat
        .insert(rev, Lb4ReverseNat::new(vip, 80), 0)
        .unwrap();
}

/// Accepts one connection on `listener`, answers "pong" to what it reads and
/// returns the client address the server saw.
fn serve_once(listener: TcpListener) -> std::thread::JoinHandle<SocketAddr> {
    std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accepting");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("reading the request");
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").unwrap();
        peer
    })
}

/// Connects from inside `ns` to `vip`:80, sends "ping" and returns the answer.
fn ping_pong(ns: &str, vip: Ipv4Addr) -> Vec<u8> {
    let mut stream = in_netns(ns, move || {
        TcpStream::connect_timeout(&SocketAddr::from((vip, 80)), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {vip}:80: {e}"))
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"ping").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reading the answer");
    answer
}

#[test]
fn pods_talk_tcp_through_a_cluster_ip_and_to_themselves_through_their_service() {
    root_only!();
    let mut spaces = Namespaces::new();
    let node = spaces.create("svc-node");
    let client_ns = spaces.create("svc-client");
    let server_ns = spaces.create("svc-server");
    for ns in [&node, &client_ns, &server_ns] {
        ip(ns, &["link", "set", "lo", "up"]);
        // IPv4 only: what the devices would send on their own over IPv6
        // would only be counted as drops.
        sysctls(
            ns,
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
        );
    }

    let (bpffs, mut maps) = datapath_in(&node, vec![]);
    let nl = Netlink::new_in(&netns::named_path(&node)).unwrap();
    let mut devices = Vec::new();
    for (ns, lxc, addr) in [
        (&client_ns, "lxcsvc0", CLIENT),
        (&server_ns, "lxcsvc1", SERVER),
    ] {
        let veth = add_pod(&node, ns, lxc, addr, ROUTER_IP, &mut maps);
        nl.add_route(&Route::link_scope(addr.into(), veth.host.index))
            .unwrap();
        devices.push(lxc);
    }
    let root = bpffs.root();
    in_netns(&node, move || {
        let mut datapath = Datapath::open(&root).unwrap();
        for lxc in devices {
            datapath.attach(lxc, LXC_ATTACH).unwrap();
        }
    });
    maps.config
        .set(0, DatapathConfig::new(ROUTER_IP, false), 0)
        .unwrap();
    one_backend_service(&mut maps, VIP, 1, (SERVER, 8080));
    one_backend_service(&mut maps, SELF_VIP, 2, (CLIENT, 8081));

    // Pod to pod through the ClusterIP.
    let listener = in_netns(&server_ns, || TcpListener::bind("0.0.0.0:8080").unwrap());
    let server = serve_once(listener);
    assert_eq!(ping_pong(&client_ns, VIP), b"pong");
    let peer = server.join().expect("the server thread");
    assert_eq!(peer.ip(), CLIENT, "no SNAT between pods");
    let conn = maps
        .ct4_tcp
        .get(
            &Ct4Key::new(CLIENT, peer.port(), SERVER, 8080, IPPROTO_TCP, 0),
            0,
        )
        .expect("the connection entry");
    assert_eq!(conn.flags & CT_F_SEEN_REPLY, CT_F_SEEN_REPLY);
    assert!(conn.tx_packets >= 3 && conn.rx_packets >= 3, "{conn:?}");

    // The client pod to itself through its own service: it sees the
    // connection come from 169.254.42.1.
    let listener = in_netns(&client_ns, || TcpListener::bind("0.0.0.0:8081").unwrap());
    let server = serve_once(listener);
    assert_eq!(ping_pong(&client_ns, SELF_VIP), b"pong");
    let peer = server.join().expect("the server thread");
    assert_eq!(
        peer.ip(),
        IPV4_SVC_LOOPBACK,
        "hairpin comes from the loopback address"
    );

    assert_eq!(drops(&maps), vec![], "no drops");
}
