//! ipvlan endpoints against a kernel that has ipvlan (the VM: `cargo xtask
//! vm-test`; declared `test = false`, the host kernel has none). One node
//! namespace with a native device `nat0` whose peer is an outside host, two
//! pods whose eth0 are ipvlan L3 slaves of `nat0` with their entries
//! attached, a veth pod and `ciliate_host`, all made for the test and
//! removed however it ends. Real packets: pod to sibling pod, to a ClusterIP
//! backed by the sibling, to the node, to the outside (masqueraded), to the
//! veth pod and back, the node to the pod, and the outside to a NodePort whose
//! backend is on this node (the upstream ipvlan bug).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use ciliate_datapath::loader::{Datapath, HOST_ATTACH, LXC_ATTACH, NETDEV_ATTACH};
use ciliate_datapath::maps::{
    be_addr, ipcache_key, DatapathConfig, EndpointInfo, EndpointKey, IpcacheValue, Lb4Backend,
    Lb4Key, Lb4ReverseNat, Lb4Service, BE_STATE_ACTIVE, ENDPOINT_F_IPVLAN, IPPROTO_TCP,
    IPPROTO_UDP, LB_SCOPE_EXTERNAL, MASQ_F_BPF, ROUTING_NATIVE, SVC_F_CLUSTER_IP, SVC_F_NODEPORT,
};
use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_datapath::netns;
use common::*;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
const POD_CIDR: &str = "10.66.0.0/24";
const IV_A: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 10);
const IV_B: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 11);
const VETH_POD: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 20);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 66, 10);
/// A UDP service whose backend is the outside host.
const VIP_OUT: Ipv4Addr = Ipv4Addr::new(10, 96, 66, 11);
const NODE_PORT: u16 = 30080;
const BE_PORT: u16 = 8080;

fn service(
    maps: &mut ciliate_datapath::loader::Maps,
    proto: u8,
    frontend: (Ipv4Addr, u16),
    flags: u16,
    rev: u32,
    be: (Ipv4Addr, u16),
) {
    maps.lb4_backends
        .insert(rev, Lb4Backend::new(be.0, be.1, proto, BE_STATE_ACTIVE), 0)
        .unwrap();
    let key = |slot| Lb4Key::new(frontend.0, frontend.1, proto, LB_SCOPE_EXTERNAL, slot);
    let slot1 = Lb4Service {
        backend_id: rev,
        ..Lb4Service::default()
    };
    maps.lb4_services.insert(key(1), slot1, 0).unwrap();
    let slot0 = Lb4Service {
        rev_nat_index: rev,
        count: 1,
        flags,
        ..Lb4Service::default()
    };
    maps.lb4_services.insert(key(0), slot0, 0).unwrap();
    maps.lb4_reverse_nat
        .insert(rev, Lb4ReverseNat::new(frontend.0, frontend.1), 0)
        .unwrap();
}

/// Serves `count` connections on `port` inside `ns`: each gets "pong"
/// after its "ping"; returns the peers the server saw.
fn serve(ns: &str, port: u16, count: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let listener = in_netns(ns, move || {
        TcpListener::bind(("0.0.0.0", port)).expect("binding the server")
    });
    std::thread::spawn(move || {
        (0..count)
            .map(|_| {
                let (mut conn, peer) = listener.accept().expect("accepting");
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut buf = [0u8; 4];
                conn.read_exact(&mut buf).expect("reading the request");
                conn.write_all(b"pong").unwrap();
                peer
            })
            .collect()
    })
}

/// From inside `ns`, connects to `to`, sends "ping" and returns the answer,
/// or what went wrong.
fn ping_pong(ns: &str, to: (Ipv4Addr, u16)) -> String {
    let connected = in_netns(ns, move || {
        TcpStream::connect_timeout(&SocketAddr::from(to), Duration::from_secs(10))
    });
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(e) => return format!("connecting to {}:{}: {e}", to.0, to.1),
    };
    let mut answer = String::new();
    let exchange = stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .and_then(|()| stream.write_all(b"ping"))
        .and_then(|()| stream.read_to_string(&mut answer));
    match exchange {
        Ok(_) => answer,
        Err(e) => format!("talking to {}:{}: {e}", to.0, to.1),
    }
}

/// Echoes UDP datagrams on `port` inside `ns` until none comes for 20 s.
fn udp_echo_server(ns: &str, port: u16) {
    let socket = in_netns(ns, move || {
        UdpSocket::bind(("0.0.0.0", port)).expect("binding")
    });
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], peer);
        }
    });
}

/// A datagram from inside `ns` to `to`: its echo, or what went wrong.
fn udp_echo(ns: &str, to: (Ipv4Addr, u16)) -> String {
    let exchange = in_netns(ns, move || -> std::io::Result<String> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(SocketAddr::from(to))?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        socket.send(b"pong")?;
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    exchange.unwrap_or_else(|e| format!("UDP to {}:{}: {e}", to.0, to.1))
}

/// An ipvlan L3 slave of `master` in `node`, moved into `pod` as eth0 with
/// `addr`/32 and a default route through it (what the CNI plugin makes).
fn ipvlan_pod(node: &str, pod: &str, master: &str, tmp: &str, addr: Ipv4Addr) {
    ip(
        node,
        &[
            "link", "add", "link", master, "name", tmp, "type", "ipvlan", "mode", "l3",
        ],
    );
    ip(node, &["link", "set", tmp, "netns", pod]);
    ip(pod, &["link", "set", tmp, "name", "eth0"]);
    ip(pod, &["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
    ip(pod, &["link", "set", "eth0", "up"]);
    ip(pod, &["link", "set", "lo", "up"]);
    ip(pod, &["route", "add", "default", "dev", "eth0"]);
}

#[test]
fn ipvlan_pods_reach_each_other_services_the_node_the_outside_and_a_local_nodeport() {
    root_only!();
    let mut spaces = Namespaces::new();
    let node = spaces.create("iv-node");
    let outside = spaces.create("iv-out");
    let pod_a = spaces.create("iv-a");
    let pod_b = spaces.create("iv-b");
    let veth_pod = spaces.create("iv-v");
    for ns in [&pod_a, &pod_b, &veth_pod] {
        sysctls(
            ns,
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
        );
    }
    let (native, _) = wire_native(&node, &outside, NODE_IP, OUTSIDE_IP);
    let master_mac = native.mac.unwrap();
    ip(
        &node,
        &["route", "add", "default", "via", &OUTSIDE_IP.to_string()],
    );
    sysctls(&node, &[("net/ipv4/conf/nat0/forwarding", "1")]);
    ipvlan_pod(&node, &pod_a, "nat0", "iva", IV_A);
    ipvlan_pod(&node, &pod_b, "nat0", "ivb", IV_B);

    // ciliate_host: the node reaches its pods through it (from_host).
    let nl = Netlink::new_in(&netns::named_path(&node)).unwrap();
    let host = nl.create_veth("ciliate_host", "ciliate_net", None).unwrap();
    let net = nl.link_by_name("ciliate_net").unwrap().unwrap();
    nl.set_arp(host.index, false).unwrap();
    nl.set_up(net.index).unwrap();
    nl.set_up(host.index).unwrap();
    nl.add_address(host.index, ROUTER_IP, 32).unwrap();
    let mut to_cidr = Route::link_scope(POD_CIDR.parse().unwrap(), host.index);
    to_cidr.src = Some(ROUTER_IP);
    nl.add_route(&to_cidr).unwrap();
    for pod in [IV_A, IV_B] {
        // The node answers its ipvlan pods from its own IP, which their
        // replies reach through the driver (lib/deliver.h).
        let mut r = Route::link_scope(pod.into(), host.index);
        r.src = Some(NODE_IP);
        nl.add_route(&r).unwrap();
    }

    let (bpffs, mut maps) = datapath_in(
        &node,
        vec![
            ("nat0".to_string(), NETDEV_ATTACH),
            ("ciliate_host".to_string(), HOST_ATTACH),
        ],
    );
    let veth = add_pod(&node, &veth_pod, "lxcv", VETH_POD, ROUTER_IP, &mut maps);
    nl.add_route(&Route::link_scope(VETH_POD.into(), veth.host.index))
        .unwrap();
    let root = bpffs.root();
    let thread_root = root.clone();
    in_netns(&node, move || {
        Datapath::open(&thread_root)
            .unwrap()
            .attach("lxcv", LXC_ATTACH)
            .unwrap();
    });
    let mut datapath = Datapath::open(&root).unwrap();
    for (name, addr, pod, id) in [("a", IV_A, &pod_a, 11), ("b", IV_B, &pod_b, 12)] {
        datapath
            .attach_ipvlan(name, addr, &netns::named_path(pod), "eth0")
            .unwrap();
        let info = EndpointInfo {
            ifindex: native.index,
            lxc_id: id,
            flags: ENDPOINT_F_IPVLAN,
            mac: master_mac,
            node_mac: master_mac,
            sec_identity: 0,
        };
        maps.endpoints
            .insert(EndpointKey::new(addr), info, 0)
            .unwrap();
    }
    let mut cfg = DatapathConfig::new(ROUTER_IP, false);
    cfg.routing_mode = ROUTING_NATIVE;
    cfg.node_ip = be_addr(NODE_IP);
    cfg.native_ifindex = native.index;
    cfg.masquerade = MASQ_F_BPF;
    maps.config.set(0, cfg, 0).unwrap();
    let pods = IpcacheValue {
        sec_identity: 2,
        ..IpcacheValue::default()
    };
    maps.ipcache
        .insert(&ipcache_key(POD_CIDR.parse().unwrap()), pods, 0)
        .unwrap();
    service(
        &mut maps,
        IPPROTO_TCP,
        (VIP, 80),
        SVC_F_CLUSTER_IP,
        1,
        (IV_B, BE_PORT),
    );
    service(
        &mut maps,
        IPPROTO_UDP,
        (VIP, 53),
        SVC_F_CLUSTER_IP,
        3,
        (IV_B, 5353),
    );
    service(
        &mut maps,
        IPPROTO_UDP,
        (VIP_OUT, 53),
        SVC_F_CLUSTER_IP,
        4,
        (OUTSIDE_IP, 5353),
    );
    service(
        &mut maps,
        IPPROTO_TCP,
        (Ipv4Addr::UNSPECIFIED, NODE_PORT),
        SVC_F_NODEPORT,
        2,
        (IV_B, BE_PORT),
    );

    let mut failed = Vec::new();
    let mut check = |what: &str, ok: bool| {
        eprintln!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failed.push(what.to_string());
        }
    };
    check(
        "ping ipvlan pod -> sibling ipvlan pod",
        ping(&pod_a, IV_B, 2, 10),
    );
    check("ping ipvlan pod -> its node", ping(&pod_a, NODE_IP, 2, 10));
    check("ping node -> ipvlan pod", ping(&node, IV_A, 2, 10));
    check(
        "ping ipvlan pod -> outside (masqueraded)",
        ping(&pod_a, OUTSIDE_IP, 2, 10),
    );
    check("ping ipvlan pod -> veth pod", ping(&pod_a, VETH_POD, 2, 10));
    check("ping veth pod -> ipvlan pod", ping(&veth_pod, IV_A, 2, 10));

    udp_echo_server(&pod_b, 5353);
    udp_echo_server(&outside, 5353);
    for (what, to) in [
        ("UDP ipvlan pod -> ClusterIP -> sibling", (VIP, 53)),
        (
            "UDP ipvlan pod -> ClusterIP -> outside backend",
            (VIP_OUT, 53),
        ),
        ("UDP ipvlan pod -> sibling", (IV_B, 5353)),
    ] {
        let answer = udp_echo(&pod_a, to);
        check(&format!("{what} ({answer})"), answer == "pong");
    }
    let mut tcp = |what: &str, from: &str, to: (Ipv4Addr, u16)| {
        let answer = ping_pong(from, to);
        check(&format!("{what} ({answer})"), answer == "pong");
    };
    let server = serve(&pod_b, BE_PORT, 2);
    tcp("TCP ipvlan pod -> ClusterIP -> sibling", &pod_a, (VIP, 80));
    // The bug: the backend's reply must leave by the driver, not a redirect.
    tcp(
        "TCP outside -> NodePort -> ipvlan backend on this node",
        &outside,
        (NODE_IP, NODE_PORT),
    );
    let outside_server = serve(&outside, 9000, 1);
    tcp("TCP ipvlan pod -> outside", &pod_a, (OUTSIDE_IP, 9000));
    // A server whose client failed would wait for ever.
    assert!(failed.is_empty(), "failed: {failed:?}");
    let peers = server.join().unwrap();
    assert_eq!(peers[0].ip(), IV_A, "no SNAT between pods");
    assert_eq!(
        peers[1].ip(),
        OUTSIDE_IP,
        "NodePort to a local backend keeps the client"
    );
    assert_eq!(
        outside_server.join().unwrap()[0].ip(),
        NODE_IP,
        "masqueraded to the node IP"
    );

    assert_eq!(drops(&maps), vec![], "no drops");
    datapath.detach_ipvlan("a").unwrap();
    datapath.detach_ipvlan("b").unwrap();
}
