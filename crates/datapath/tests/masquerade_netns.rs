//! Masquerading against the real kernel: a pod (a namespace made for the
//! test, like the node and the outside network, removed however it ends)
//! opens a TCP connection and pings an outside host that has no route to
//! the PodCIDR. `from_container` routes out of the native device, `to_netdev`
//! SNATs to the node IP, and `from_netdev` brings the replies back to the
//! pod: the outside host sees the node's address, and the pod gets its
//! answers. The kernels on both ends check every checksum rewritten.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ciliate_datapath::loader::{Datapath, LXC_ATTACH, NETDEV_ATTACH};
use ciliate_datapath::maps::{
    monotonic_seconds, Ct4Key, DatapathConfig, CT_F_RX_CLOSING, CT_F_TX_CLOSING, CT_KEY_MASQ,
    IPPROTO_TCP, MASQ_F_BPF, NAT_DIR_EGRESS, NAT_F_MASQUERADE,
};
use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_datapath::netns;
use common::*;

const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 63, 0, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 63, 0, 10);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 1);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 2);
const PORT: u16 = 8080;

#[test]
fn a_pod_reaches_outside_with_the_node_ip_over_tcp_and_ping() {
    root_only!();
    let mut spaces = Namespaces::new();
    let node = spaces.create("masq-node");
    let outside = spaces.create("masq-out");
    let pod = spaces.create("masq-pod");
    // The outside host knows nothing of 10.63.0.0/24: only a masqueraded
    // packet can be answered.
    let (native, _) = wire_native(&node, &outside, NODE_IP, OUTSIDE_IP);
    sysctls(
        &node,
        &[
            ("net/ipv4/conf/all/forwarding", "0"),
            ("net/ipv4/conf/nat0/forwarding", "1"),
        ],
    );
    sysctls(
        &pod,
        &[
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
        ],
    );
    ip(&pod, &["link", "set", "lo", "up"]);

    let lxc = "lxcmasq0";
    let (bpffs, mut maps) = datapath_in(&node, vec![]);
    let veth = add_pod(&node, &pod, lxc, POD, ROUTER_IP, &mut maps);
    Netlink::new_in(&netns::named_path(&node))
        .unwrap()
        .add_route(&Route::link_scope(POD.into(), veth.host.index))
        .unwrap();
    let root = bpffs.root();
    in_netns(&node, move || {
        let mut datapath = Datapath::open(&root).unwrap();
        datapath.attach(lxc, LXC_ATTACH).unwrap();
        datapath.attach("nat0", NETDEV_ATTACH).unwrap();
    });
    let mut cfg = DatapathConfig::new(ROUTER_IP, false);
    cfg.native_ifindex = native.index;
    cfg.node_ip = u32::from_ne_bytes(NODE_IP.octets());
    cfg.masquerade = MASQ_F_BPF;
    maps.config.set(0, cfg, 0).unwrap();

    // TCP: the server sees the node's address, the pod its answer.
    let listener = in_netns(&outside, || {
        TcpListener::bind(SocketAddr::from((OUTSIDE_IP, PORT))).unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accepting");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("reading the request");
        conn.write_all(b"pong").unwrap();
        peer
    });
    let mut stream = in_netns(&pod, || {
        TcpStream::connect_timeout(
            &SocketAddr::from((OUTSIDE_IP, PORT)),
            Duration::from_secs(5),
        )
        .expect("connecting to the outside host")
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let local_port = stream.local_addr().unwrap().port();
    stream.write_all(b"ping").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reading the answer");
    drop(stream);
    assert_eq!(answer, b"pong");
    let peer = server.join().expect("the server thread");
    assert_eq!(peer.ip(), NODE_IP, "the outside host sees the node's IP");

    let egress = Ct4Key::new(
        POD,
        local_port,
        OUTSIDE_IP,
        PORT,
        IPPROTO_TCP,
        NAT_DIR_EGRESS,
    );
    let mapping = maps.snat4.get(&egress, 0).expect("the flow's mapping");
    assert_eq!(
        (mapping.to(), mapping.flags),
        ((NODE_IP, peer.port()), NAT_F_MASQUERADE)
    );
    // Both sides closed: the flow expires ct_timeout_tcp_fin after its
    // last packet, so the agent's GC collects it then. The pod's last ACK
    // may still be on its way.
    let key = Ct4Key::new(POD, local_port, OUTSIDE_IP, PORT, IPPROTO_TCP, CT_KEY_MASQ);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let conn = loop {
        let conn = maps.ct4_tcp.get(&key, 0).expect("the connection entry");
        if conn.flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING) == CT_F_TX_CLOSING | CT_F_RX_CLOSING
            || std::time::Instant::now() > deadline
        {
            break conn;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        conn.flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING),
        CT_F_TX_CLOSING | CT_F_RX_CLOSING,
        "{conn:?}"
    );
    let mapping = maps.snat4.get(&egress, 0).unwrap();
    assert_eq!(mapping.lifetime, conn.lifetime);
    assert!(
        conn.lifetime <= monotonic_seconds() + cfg.ct_timeout_tcp_fin,
        "a closed flow lives at most ct_timeout_tcp_fin"
    );

    // ICMP echo: answered although the outside host cannot route to the pod.
    assert!(ping(&pod, OUTSIDE_IP, 3, 10), "the pod's ping is answered");
    let icmp_mappings = maps
        .snat4
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.proto == 1 && k.flags == NAT_DIR_EGRESS)
        .count();
    assert_eq!(icmp_mappings, 1, "one mapping for the ping's identifier");

    assert_eq!(drops(&maps), vec![], "no drops");
}
