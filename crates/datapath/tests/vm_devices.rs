//! Devices the development kernel lacks, against a kernel that has them (the
//! VM suite: `test = false`, run by `cargo xtask vm-test`): netkit pairs with
//! the datapath's programs as their policy, and the external Geneve device.
//! Every test makes its own namespaces (unique names, removed however it
//! ends) and a private bpffs.
//!
//! netkit: `from_container` is the peer's policy (what the pod sends); the
//! primary keeps its default (pass). The tests check that the peer drops
//! everything until a program is attached, that TC_ACT_OK / TC_ACT_SHOT /
//! TC_ACT_REDIRECT keep their meaning there (NETKIT_PASS / DROP / REDIRECT),
//! that `bpf_redirect_peer` from a tc
//! ingress hook into the netkit primary reaches the pod, that a netkit pod
//! and a veth pod on one node reach each other both ways, and that pinned
//! links outlive the loader and follow a new object.

#[macro_use]
mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use ciliate_datapath::loader::{Datapath, Maps, Origin, LXC_ATTACH, NETDEV_ATTACH, NETKIT_ATTACH};
use ciliate_datapath::maps::{DatapathConfig, TraceEvent, METRIC_EGRESS};
use ciliate_datapath::netkit::{self, NetkitAttach};
use ciliate_datapath::netlink::{Netlink, Route};
use ciliate_datapath::netns;
use ciliate_datapath::podnet::PodVeth;
use ciliate_datapath::reasons::{
    DROP_INVALID_SIP, TRACE_FROM_NETDEV, TRACE_FROM_OVERLAY, TRACE_TO_ENDPOINT, TRACE_TO_OVERLAY,
};
use common::*;

const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);
const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 10);
const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 11);
const NETKIT_POLICY_DROP: u32 = 2;
const NETKIT_POLICY_PASS: u32 = 0;

/// A node namespace with IPv6 off, `lo` up and the router IP on `lo`, so a
/// pod's packet to it is the node's own traffic.
fn node_ns(spaces: &mut Namespaces, tag: &str) -> String {
    let node = spaces.create(tag);
    quiet(&node);
    ip(
        &node,
        &["addr", "add", &format!("{ROUTER_IP}/32"), "dev", "lo"],
    );
    // Two devices first, so that a pod's host end and its eth0 (index 2 in
    // the pod) never share an ifindex by chance.
    ip(
        &node,
        &[
            "link", "add", "pad0", "type", "veth", "peer", "name", "pad1",
        ],
    );
    node
}

/// IPv4 only, `lo` up: what devices send on their own over IPv6 would only
/// be counted as drops.
fn quiet(ns: &str) {
    ip(ns, &["link", "set", "lo", "up"]);
    sysctls(
        ns,
        &[
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/default/disable_ipv6", "1"),
        ],
    );
}

/// A pod wired as the CNI plugin wires it (its endpoint in the map, flagged
/// netkit for a netkit pair) with the node's route to it; its programs are
/// not attached yet.
fn wire_pod(
    node: &str,
    pod: &str,
    host_ifname: &str,
    ip_addr: Ipv4Addr,
    maps: &mut Maps,
    kind: PairKind,
) -> PodVeth {
    wire_pod_via(node, pod, host_ifname, ip_addr, ROUTER_IP, maps, kind)
}

fn wire_pod_via(
    node: &str,
    pod: &str,
    host_ifname: &str,
    ip_addr: Ipv4Addr,
    router: Ipv4Addr,
    maps: &mut Maps,
    kind: PairKind,
) -> PodVeth {
    quiet(pod);
    let pair = add_pod_of(kind, node, pod, host_ifname, ip_addr, router, maps);
    Netlink::new_in(&netns::named_path(node))
        .unwrap()
        .add_route(&Route::link_scope(ip_addr.into(), pair.host.index))
        .unwrap();
    pair
}

/// A node namespace ([`node_ns`]) with the datapath loaded on a private
/// bpffs, nothing attached, configured with the router IP.
fn loaded_node(spaces: &mut Namespaces, tag: &str, trace: bool) -> (String, TestBpffs, Maps) {
    let node = node_ns(spaces, tag);
    let (bpffs, mut maps) = datapath_in(&node, vec![]);
    maps.config
        .set(0, DatapathConfig::new(ROUTER_IP, trace), 0)
        .unwrap();
    (node, bpffs, maps)
}

/// Opens the datapath pinned under `root` inside `node` and runs `f` on it.
fn with_datapath<T: Send + 'static>(
    node: &str,
    root: PathBuf,
    f: impl FnOnce(&mut Datapath) -> T + Send + 'static,
) -> T {
    in_netns(node, move || {
        let mut datapath = Datapath::open(&root).expect("opening the datapath");
        f(&mut datapath)
    })
}

fn attach_netkit(node: &str, root: PathBuf, device: &'static str) {
    with_datapath(node, root, move |dp| {
        dp.attach_netkit(device, NETKIT_ATTACH)
            .unwrap_or_else(|e| panic!("attaching to {device}: {e:?}"));
    });
}

/// `rx_packets` of a device in `ns` (`ip netns exec` mounts that
/// namespace's sysfs for the command).
fn rx_packets(ns: &str, device: &str) -> u64 {
    let path = format!("/sys/class/net/{device}/statistics/rx_packets");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat", &path])
        .output()
        .unwrap();
    assert!(out.status.success(), "reading {path} in {ns}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn counter(maps: &Maps, reason: u8, dir: u8) -> u64 {
    maps.metrics_totals()
        .unwrap()
        .into_iter()
        .find(|(r, d, ..)| (*r, *d) == (reason, dir))
        .map_or(0, |(.., packets, _)| packets)
}

#[test]
fn a_netkit_pair_is_l2_and_its_peer_drops_until_from_container_is_attached() {
    root_only!();
    let mut spaces = Namespaces::new();
    let (node, bpffs, mut maps) = loaded_node(&mut spaces, "nk-node", true);
    let pod_a = spaces.create("nk-a");
    let pod_b = spaces.create("nk-b");
    let a = wire_pod(
        &node,
        &pod_a,
        "lxcnka",
        POD_A_IP,
        &mut maps,
        PairKind::Netkit,
    );
    let b = wire_pod(
        &node,
        &pod_b,
        "lxcnkb",
        POD_B_IP,
        &mut maps,
        PairKind::Netkit,
    );

    // What the kernel made: netkit, L2, the pod end in the pod's namespace
    // under its final name, the peer blackholed, the primary forwarding.
    assert_eq!(a.host.kind.as_deref(), Some("netkit"));
    assert_eq!(a.pod.kind.as_deref(), Some("netkit"));
    assert!(
        a.pod.mac.is_some() && a.host.mac.is_some(),
        "L2 devices have MACs"
    );
    let nl = Netlink::new_in(&netns::named_path(&node)).unwrap();
    let info = nl
        .netkit_info(a.host.index)
        .unwrap()
        .expect("a netkit device");
    assert!(info.l2 && info.primary, "{info:?}");
    assert_eq!(info.policy, Some(NETKIT_POLICY_PASS), "{info:?}");
    assert_eq!(info.peer_policy, Some(NETKIT_POLICY_DROP), "{info:?}");
    assert_eq!(nl.netkit_info(1).unwrap(), None, "lo is no netkit device");
    let ip_d = ip_output(&pod_a, &["-d", "link", "show", "eth0"]);
    assert!(ip_d.contains("netkit"), "ip -d link in the pod: {ip_d}");

    // Without programs the peer drops: the pod reaches nothing, and the node
    // sees nothing of it on the primary.
    let rx_before = rx_packets(&node, "lxcnka");
    assert!(
        !ping(&pod_a, ROUTER_IP, 1, 2),
        "a pod without programs is cut off"
    );
    assert_eq!(
        rx_packets(&node, "lxcnka"),
        rx_before,
        "nothing came through the blackholed peer"
    );

    // With them: the pod reaches the node (from_container TC_ACT_OK =
    // NETKIT_PASS into the node; the answer through the primary's default
    // policy) and the other pod (TC_ACT_REDIRECT).
    let root = bpffs.root();
    attach_netkit(&node, root.clone(), "lxcnka");
    attach_netkit(&node, root.clone(), "lxcnkb");
    let mut events = Maps::open_events(&root).unwrap();
    drain(&mut events);
    assert!(ping(&pod_a, ROUTER_IP, 2, 10), "pod A reaches the node");
    assert!(ping(&pod_a, POD_B_IP, 2, 10), "pod A reaches pod B");
    assert!(ping(&pod_b, POD_A_IP, 2, 10), "pod B reaches pod A");
    assert!(ping(&node, POD_B_IP, 2, 10), "the node reaches pod B");
    let delivered: Vec<TraceEvent> = drain(&mut events)
        .into_iter()
        .filter(|ev| ev.reason == TRACE_TO_ENDPOINT)
        .collect();
    assert!(
        delivered.iter().any(|ev| ev.dst_ifindex == b.host.index),
        "from_container delivered to B through B's primary: {delivered:?}"
    );
    assert_eq!(drops(&maps), vec![], "no drops");

    // TC_ACT_SHOT at the peer (NETKIT_DROP): a spoofed source is dropped and
    // counted, and never reaches pod B.
    ip(&pod_a, &["addr", "add", "10.64.0.99/32", "dev", "eth0"]);
    let shot = counter(&maps, DROP_INVALID_SIP, METRIC_EGRESS);
    let b_rx = rx_packets(&pod_b, "eth0");
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &pod_a, "ping", "-n", "-q", "-c", "1", "-w", "2",
        ])
        .args(["-I", "10.64.0.99", &POD_B_IP.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a spoofed ping must not be answered");
    assert!(
        counter(&maps, DROP_INVALID_SIP, METRIC_EGRESS) > shot,
        "from_container dropped the spoofed packet with a reason"
    );
    assert_eq!(rx_packets(&pod_b, "eth0"), b_rx, "pod B received nothing");
}

#[test]
fn redirect_peer_from_a_tc_ingress_hook_reaches_a_netkit_pod() {
    root_only!();
    let mut spaces = Namespaces::new();
    let node = node_ns(&mut spaces, "nk-rp-node");
    let outside = spaces.create("nk-rp-out");
    let pod = spaces.create("nk-rp-pod");
    let node_ip = Ipv4Addr::new(192, 168, 64, 1);
    let outside_ip = Ipv4Addr::new(192, 168, 64, 2);
    let (native, _) = wire_native(&node, &outside, node_ip, outside_ip);
    // The outside routes the PodCIDR to the node (native routing).
    ip(
        &outside,
        &["route", "add", "10.64.0.0/24", "via", &node_ip.to_string()],
    );
    sysctls(
        &node,
        &[
            ("net/ipv4/conf/all/forwarding", "0"),
            ("net/ipv4/conf/nat0/forwarding", "1"),
        ],
    );
    let (bpffs, mut maps) = datapath_in(&node, vec![("nat0".to_string(), NETDEV_ATTACH)]);
    let mut cfg = DatapathConfig::new(ROUTER_IP, true);
    cfg.native_ifindex = native.index;
    cfg.node_ip = u32::from_ne_bytes(node_ip.octets());
    maps.config.set(0, cfg, 0).unwrap();
    let pair = wire_pod(
        &node,
        &pod,
        "lxcnkrp",
        POD_A_IP,
        &mut maps,
        PairKind::Netkit,
    );
    let root = bpffs.root();
    attach_netkit(&node, root.clone(), "lxcnkrp");
    let mut events = Maps::open_events(&root).unwrap();
    drain(&mut events);

    // from_netdev (TCX ingress of nat0) delivers with bpf_redirect_peer to
    // the primary: the kernel hands the packet to the netkit peer inside
    // the pod. The answer leaves through from_container's FIB redirect.
    assert!(
        ping(&outside, POD_A_IP, 3, 10),
        "the outside reaches the netkit pod"
    );
    let events = drain(&mut events);
    assert!(
        events.iter().any(|ev| ev.reason == TRACE_FROM_NETDEV
            && ev.dst_ep == 1
            && ev.dst_ifindex == pair.host.index),
        "from_netdev delivered to the pod's primary: {events:?}"
    );
    assert_eq!(drops(&maps), vec![], "no drops");
}

#[test]
fn netkit_and_veth_pods_on_one_node_reach_each_other() {
    root_only!();
    let mut spaces = Namespaces::new();
    let (node, bpffs, mut maps) = loaded_node(&mut spaces, "nk-mix-node", true);
    let nk_pod = spaces.create("nk-mix-nk");
    let veth_pod = spaces.create("nk-mix-veth");
    wire_pod(
        &node,
        &nk_pod,
        "lxcmixnk",
        POD_A_IP,
        &mut maps,
        PairKind::Netkit,
    );
    wire_pod(
        &node,
        &veth_pod,
        "lxcmixve",
        POD_B_IP,
        &mut maps,
        PairKind::Veth,
    );
    let root = bpffs.root();
    with_datapath(&node, root, |dp| {
        dp.attach_netkit("lxcmixnk", NETKIT_ATTACH).unwrap();
        dp.attach("lxcmixve", LXC_ATTACH).unwrap();
    });
    // netkit -> veth: bpf_redirect to the lxc (out of it into the pod);
    // veth -> netkit: bpf_redirect_peer from TCX ingress.
    assert!(
        ping(&nk_pod, POD_B_IP, 2, 10),
        "netkit pod reaches veth pod"
    );
    assert!(
        ping(&veth_pod, POD_A_IP, 2, 10),
        "veth pod reaches netkit pod"
    );
    assert_eq!(drops(&maps), vec![], "no drops");
}

#[test]
fn pinned_netkit_links_outlive_the_loader_follow_a_new_object_and_go_with_their_pins() {
    root_only!();
    let mut spaces = Namespaces::new();
    let (node, bpffs, mut maps) = loaded_node(&mut spaces, "nk-pin-node", false);
    let pod = spaces.create("nk-pin-pod");
    let pair = wire_pod(
        &node,
        &pod,
        "lxcnkpin",
        POD_A_IP,
        &mut maps,
        PairKind::Netkit,
    );
    let root = bpffs.root();
    attach_netkit(&node, root.clone(), "lxcnkpin");

    // The loader is gone (the thread's Datapath was dropped): the pins hold.
    let links = root.join("links");
    let link_of = |program: &str| {
        let fd = netkit::open_pinned(&links.join(format!("lxcnkpin-{program}"))).unwrap();
        netkit::link_info(fd.as_fd()).unwrap()
    };
    // The kernel names each link by the device its program runs on: the
    // peer (the pod's eth0, by its index in the pod) or the primary.
    let info = link_of("from_container");
    assert_eq!(info.link_type, netkit::LINK_TYPE_NETKIT);
    assert_eq!(
        info.netkit,
        Some((pair.pod.index, Some(NetkitAttach::Peer))),
        "from_container runs on the peer"
    );
    assert!(
        ping(&pod, ROUTER_IP, 2, 10),
        "traffic flows with no loader running"
    );

    // Attaching again keeps the live links.
    let link_id = || link_of("from_container").id;
    let before = link_id();
    attach_netkit(&node, root.clone(), "lxcnkpin");
    assert_eq!(link_id(), before, "the live link was kept");

    // A new object (simulated: the pinned programs' directory looks like an
    // older object's) is loaded, and every pinned netkit link is moved onto
    // the new programs without being re-created.
    let progs = root.join("progs");
    let current = std::fs::read_dir(&progs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::rename(&current, progs.join("0000000000000000")).unwrap();
    let (origin, ids) = with_datapath(&node, root.clone(), |dp| (dp.origin(), dp.program_ids()));
    assert_eq!(origin, Origin::Replaced);
    let new_id = ids.iter().find(|(n, ..)| n == "from_container").unwrap().1;
    assert_eq!(
        link_of("from_container").prog_id,
        new_id,
        "the link runs the new program"
    );
    assert_eq!(link_id(), before, "the same link, updated");
    assert!(
        ping(&pod, ROUTER_IP, 2, 10),
        "traffic flows on the new programs"
    );

    // Detaching removes the pins: the peer's blackhole policy is back.
    with_datapath(&node, root.clone(), |dp| dp.detach("lxcnkpin").unwrap());
    assert!(!links.join("lxcnkpin-from_container").exists());
    assert!(
        !ping(&pod, ROUTER_IP, 1, 2),
        "without its programs the pod is cut off again"
    );
    // A pin left by a deleted device is stale and replaced on the next attach.
    attach_netkit(&node, root.clone(), "lxcnkpin");
    Netlink::new_in(&netns::named_path(&node))
        .unwrap()
        .del_link(pair.host.index)
        .unwrap();
    let stale = link_of("from_container");
    assert_eq!(
        stale.netkit.map(|(index, _)| index),
        Some(0),
        "the device is gone"
    );
    let again = wire_pod(
        &node,
        &pod,
        "lxcnkpin",
        POD_A_IP,
        &mut maps,
        PairKind::Netkit,
    );
    attach_netkit(&node, root, "lxcnkpin");
    assert_eq!(
        link_of("from_container").netkit.map(|(index, _)| index),
        Some(again.pod.index),
        "the stale pin was replaced by a link on the new device"
    );
    assert!(ping(&pod, ROUTER_IP, 2, 10), "the re-made pod talks");
}

#[test]
fn netkit_pods_on_two_nodes_talk_through_geneve_with_the_identity_in_the_vni() {
    root_only!();
    let mut spaces = Namespaces::new();
    let a_ns = spaces.create("gnv-a");
    let b_ns = spaces.create("gnv-b");
    let pod_a = spaces.create("gnv-pa");
    let pod_b = spaces.create("gnv-pb");
    let a_ip = Ipv4Addr::new(192, 168, 65, 1);
    let b_ip = Ipv4Addr::new(192, 168, 65, 2);
    wire_native(&a_ns, &b_ns, a_ip, b_ip);
    let mut a = tunnel_node(
        Tunnel::Geneve,
        a_ns,
        Ipv4Addr::new(10, 80, 0, 1),
        "10.81.0.0/24",
        b_ip,
    );
    let mut b = tunnel_node(
        Tunnel::Geneve,
        b_ns,
        Ipv4Addr::new(10, 81, 0, 1),
        "10.80.0.0/24",
        a_ip,
    );
    assert_eq!(a.tunnel.kind.as_deref(), Some("geneve"));
    assert_eq!(a.tunnel.mtu, 1500);
    let d = ip_output(&a.ns, &["-d", "link", "show", "ciliate_geneve"]);
    assert!(
        d.contains("geneve external") && d.contains("dstport 6081"),
        "an external Geneve device on 6081: {d}"
    );

    let a_pod_ip = Ipv4Addr::new(10, 80, 0, 10);
    let b_pod_ip = Ipv4Addr::new(10, 81, 0, 10);
    for (node, pod, lxc, ip_addr) in [
        (&mut a, &pod_a, "lxcgnva", a_pod_ip),
        (&mut b, &pod_b, "lxcgnvb", b_pod_ip),
    ] {
        let pair = wire_pod_via(
            &node.ns,
            pod,
            lxc,
            ip_addr,
            node.router,
            &mut node.maps,
            PairKind::Netkit,
        );
        // The node MTU less Geneve's 50 bytes of outer headers (Ethernet,
        // IPv4, UDP, Geneve without options), as the agent gives pods.
        ip(pod, &["link", "set", "eth0", "mtu", "1450"]);
        ip(&node.ns, &["link", "set", lxc, "mtu", "1450"]);
        assert_eq!(pair.host.kind.as_deref(), Some("netkit"));
        attach_netkit(&node.ns, node.bpffs.root(), lxc);
    }
    drain(&mut a.events);
    drain(&mut b.events);

    // A full-size packet fits: 1450 bytes inside, 1500 on the wire.
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &pod_a, "ping", "-n", "-q", "-c", "2", "-w", "10", "-M", "do", "-s",
            "1422",
        ])
        .arg(b_pod_ip.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pod A reaches pod B with a 1450-byte packet, unfragmented: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let a_events = drain(&mut a.events);
    let b_events = drain(&mut b.events);
    assert!(
        a_events.iter().any(|ev| ev.reason == TRACE_TO_OVERLAY
            && ev.src_identity == TUNNEL_POD_IDENTITY
            && ev.dst_ifindex == a.tunnel.index),
        "A encapsulated into ciliate_geneve with the pod identity: {a_events:?}"
    );
    assert!(
        b_events.iter().any(|ev| ev.reason == TRACE_FROM_OVERLAY
            && ev.src_identity == TUNNEL_POD_IDENTITY
            && ev.dst_ep == 1),
        "B's from_overlay read the identity from the VNI and delivered: {b_events:?}"
    );
    assert!(ping(&pod_b, a_pod_ip, 2, 10), "and back");
    assert_eq!(drops(&a.maps), vec![], "no drops on A");
    assert_eq!(drops(&b.maps), vec![], "no drops on B");
}
