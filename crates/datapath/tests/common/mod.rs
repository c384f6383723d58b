//! Shared by the datapath tests: a private bpffs per test, the
//! `BPF_PROG_TEST_RUN` harness, namespaces made for a test, and packet builders.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::programs::{TestRun, TestRunOptions};
use ciliate_datapath::loader::{Datapath, Maps, HOST_ATTACH, OVERLAY_ATTACH};
use ciliate_datapath::maps::{
    ipcache_key, metrics_index, DatapathConfig, EndpointInfo, EndpointKey, IpcacheValue,
    TraceEvent, ENDPOINT_F_NETKIT, EVENT_DROP,
};
use ciliate_datapath::netlink::{Link, Netlink};
use ciliate_datapath::netns;
use ciliate_datapath::podnet::{self, PodNetSpec, PodVeth};
use ciliate_datapath::reasons::REASON_FORWARDED;

// The packet builders live in the crate, so the benchmarks build the same packets.
// Not every test file uses every one.
#[allow(unused_imports)]
pub use ciliate_datapath::packets::{
    checksum, eth, ipv4, l4_checksum, tcp_frame, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// True when running as root; otherwise prints loudly why the test is skipped.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: loading BPF programs needs root (CI runs as root)");
    false
}

/// A bpffs mounted on a fresh temporary directory, unmounted on drop.
pub struct TestBpffs {
    dir: tempfile::TempDir,
}

impl TestBpffs {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ciliate-test-bpffs-")
            .tempdir()
            .unwrap();
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting a private bpffs");
        Self { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestBpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
pub const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
pub const LXC_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa2];
pub const LXC_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];

pub fn tcp_ports(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x02; // SYN
    t
}

pub fn icmp_echo() -> Vec<u8> {
    let mut i = vec![8, 0, 0, 0, 0, 1, 0, 1];
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    i
}

/// An Ethernet/IPv4 ARP message.
pub fn arp(op: u16, sha: [u8; 6], sip: [u8; 4], tha: [u8; 6], tip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&sip);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tip);
    a
}

/// MACs on the native device: the node's and the outside router's.
pub const DEV_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd1];
pub const NET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const ROUTER: [u8; 4] = [10, 77, 0, 1];
pub const POD_A: [u8; 4] = [10, 77, 0, 10];
pub const POD_B: [u8; 4] = [10, 77, 0, 11];
pub const OUTSIDE: [u8; 4] = [192, 168, 10, 100];
/// The device `BPF_PROG_TEST_RUN` runs a tc program on: the loopback (ifindex 1).
pub const TEST_IFINDEX: u32 = 1;
pub const POD_B_IFINDEX: u32 = 4242;

pub struct Harness {
    pub bpffs: TestBpffs,
    pub datapath: Datapath,
    pub maps: Maps,
    pub events: aya::maps::RingBuf<aya::maps::MapData>,
}

impl Harness {
    /// Pod A sends through the test device; pod B sits behind POD_B_IFINDEX.
    pub fn new(trace: bool) -> Self {
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
            bpffs,
            datapath,
            maps,
            events,
        }
    }

    pub fn run(&self, program: &str, packet: &[u8]) -> (u32, Vec<u8>) {
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

    pub fn counter(&self, reason: u8, dir: u8) -> u64 {
        let values = self
            .maps
            .metrics
            .get(&metrics_index(reason, dir), 0)
            .unwrap();
        values.iter().map(|v| v.packets).sum()
    }

    pub fn next_event(&mut self) -> Option<TraceEvent> {
        self.events
            .next()
            .and_then(|item| TraceEvent::from_bytes(&item))
    }
}

pub fn expect_drop(h: &mut Harness, program: &str, packet: &[u8], reason: u8, dir: u8) {
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

#[macro_export]
macro_rules! root_only {
    () => {
        if !common::require_root(module_path!()) {
            return;
        }
    };
}

/// Named namespaces that are deleted when the test ends, however it ends.
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Creates `/run/netns/cdp-<tag>-<pid>-<n>` and returns its name.
    pub fn create(&mut self, tag: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("cdp-{tag}-{}-{n}", std::process::id());
        netns::create_named(&name).expect("create namespace");
        self.0.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Err(e) = netns::delete_named(name) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Runs `f` on a thread of its own inside the named namespace (`BPF_PROG_TEST_RUN`,
/// sysctls and attaching by device name all act in the calling thread's
/// namespace). A panic in `f` fails the caller with its own message.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns::named_path(name);
    let result = std::thread::spawn(move || {
        let guard = netns::enter(&path).expect("entering the test namespace");
        let out = f();
        guard.restore().expect("leaving the test namespace");
        out
    })
    .join();
    match result {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `ip -n NS ARGS...`, which must succeed.
pub fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -n NS ARGS...` output (stdout), which must succeed.
pub fn ip_output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sets sysctls (`net/ipv4/conf/DEV/KEY` style) inside the namespace.
pub fn sysctls(ns: &str, settings: &[(&str, &str)]) {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    in_netns(ns, move || {
        for (key, value) in settings {
            ciliate_datapath::sysctl::set(&key, &value)
                .unwrap_or_else(|e| panic!("setting {key}={value}: {e}"));
        }
    });
}

/// `ping -c COUNT` from inside the namespace; true when every echo was
/// answered within `deadline` seconds (a give-up bound, not a measurement).
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32, deadline: u32) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-q", "-i", "0.2", "-c"])
        .arg(count.to_string())
        .arg("-w")
        .arg(deadline.to_string())
        .arg(dst.to_string())
        .output()
        .expect("running ping");
    if !out.status.success() {
        eprintln!(
            "ping {dst} from {ns}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// An Ethernet/IPv4/UDP frame; with `with_csum` false its checksum is 0 (none).
pub fn udp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    with_csum: bool,
) -> Vec<u8> {
    let payload = b"udp to a service";
    let mut u = vec![0; 8];
    u[0..2].copy_from_slice(&src.1.to_be_bytes());
    u[2..4].copy_from_slice(&dst.1.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    if with_csum {
        let c = l4_checksum(src.0, dst.0, 17, &u);
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    eth(macs.0, macs.1, 0x0800, &ipv4(src.0, dst.0, 64, 17, &u))
}

/// Addresses and ports of an Ethernet/IPv4/TCP-or-UDP frame (no options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: ([u8; 4], u16),
    pub dst: ([u8; 4], u16),
}

pub fn tuple_of(frame: &[u8]) -> Tuple {
    let ip = &frame[14..];
    let l4 = &ip[20..];
    Tuple {
        src: (
            ip[12..16].try_into().unwrap(),
            u16::from_be_bytes([l4[0], l4[1]]),
        ),
        dst: (
            ip[16..20].try_into().unwrap(),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    }
}

/// Asserts that the IPv4 header checksum and the TCP/UDP checksum of the
/// frame are what a receiver recomputing them gets (a UDP checksum of 0 means
/// none and must stay 0 when `udp_none` says so).
pub fn assert_checksums(frame: &[u8], udp_none: bool) {
    let ip = &frame[14..34];
    assert_eq!(checksum(ip), 0, "IPv4 header checksum is valid");
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = &frame[34..14 + total];
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    if ip[9] == 17 && udp_none {
        assert_eq!(&l4[6..8], &[0, 0], "a UDP checksum of 0 (none) stays 0");
        return;
    }
    assert_eq!(
        l4_checksum(src, dst, ip[9], l4),
        0,
        "L4 checksum is valid for the rewritten addresses and ports"
    );
}

/// A pod in `pod` wired to `node` through `lxc_name` as the CNI plugin does it,
/// with the node's route to it, its forwarding off (only BPF carries its
/// traffic) and its endpoint in the map.
pub fn add_pod(
    node: &str,
    pod: &str,
    lxc_name: &str,
    ip: Ipv4Addr,
    router: Ipv4Addr,
    maps: &mut Maps,
) -> PodVeth {
    add_pod_of(PairKind::Veth, node, pod, lxc_name, ip, router, maps)
}

/// The pod's device pair: a veth, or a netkit pair (`datapathMode: netkit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairKind {
    Veth,
    Netkit,
}

/// As [`add_pod`], with the pair of `kind`; a netkit pod's endpoint carries
/// `ENDPOINT_F_NETKIT`. Its programs are not attached.
pub fn add_pod_of(
    kind: PairKind,
    node: &str,
    pod: &str,
    lxc_name: &str,
    ip: Ipv4Addr,
    router: Ipv4Addr,
    maps: &mut Maps,
) -> PodVeth {
    let nl = Netlink::new_in(&netns::named_path(node)).unwrap();
    let spec = PodNetSpec {
        host_ifname: lxc_name,
        ifname: "eth0",
        netns: &netns::named_path(pod),
        ip,
        router,
        mtu: 1400,
    };
    let veth = match kind {
        PairKind::Veth => podnet::create(&nl, &spec),
        PairKind::Netkit => podnet::create_netkit(&nl, &spec),
    }
    .unwrap();
    sysctls(
        node,
        &[
            (&format!("net/ipv4/conf/{lxc_name}/forwarding"), "0"),
            (&format!("net/ipv4/conf/{lxc_name}/arp_ignore"), "1"),
            (&format!("net/ipv4/conf/{lxc_name}/rp_filter"), "0"),
        ],
    );
    let endpoint = EndpointInfo {
        ifindex: veth.host.index,
        lxc_id: 1,
        flags: if kind == PairKind::Netkit {
            ENDPOINT_F_NETKIT
        } else {
            0
        },
        mac: veth.pod.mac.unwrap(),
        node_mac: veth.host.mac.unwrap(),
        sec_identity: 0,
    };
    maps.endpoints
        .insert(EndpointKey::new(ip), endpoint, 0)
        .unwrap();
    veth
}

/// Loads the datapath on a bpffs of its own and attaches `sets` inside `node`
/// (attaching resolves device names in the calling thread's namespace).
pub fn datapath_in(node: &str, sets: Vec<(String, ProgramSet)>) -> (TestBpffs, Maps) {
    let bpffs = TestBpffs::new();
    let root = bpffs.root();
    let thread_root = root.clone();
    in_netns(node, move || {
        let mut datapath = Datapath::open(&thread_root).expect("loading the datapath");
        for (device, set) in sets {
            datapath
                .attach(&device, set)
                .unwrap_or_else(|e| panic!("attaching to {device}: {e:?}"));
        }
    });
    let maps = Maps::open(&root).unwrap();
    (bpffs, maps)
}

pub type ProgramSet = &'static [(&'static str, aya::programs::TcAttachType)];

pub fn drain(events: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    while let Some(item) = events.next() {
        if let Some(ev) = TraceEvent::from_bytes(&item) {
            out.push(ev);
        }
    }
    out
}

/// Every drop the datapath counted: (reason, direction, packets).
pub fn drops(maps: &Maps) -> Vec<(u8, u8, u64)> {
    maps.metrics_totals()
        .unwrap()
        .into_iter()
        .filter(|(reason, ..)| *reason != REASON_FORWARDED)
        .map(|(reason, dir, packets, _)| (reason, dir, packets))
        .collect()
}

/// A veth `nat0` in `node` (the native device) whose peer `peer0` is in
/// `peer`, both addressed in one /24 and up, with `lo` up on both sides.
/// IPv6 is off in both (the datapath is IPv4; what a device would send on
/// its own, router solicitations and the like, would only be counted as
/// drops). Returns the native device and the peer's MAC.
pub fn wire_native(
    node: &str,
    peer: &str,
    node_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
) -> (Link, [u8; 6]) {
    for ns in [node, peer] {
        sysctls(
            ns,
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
        );
    }
    let nl = Netlink::new_in(&netns::named_path(node)).unwrap();
    let peer_nl = Netlink::new_in(&netns::named_path(peer)).unwrap();
    let peer_file = netns::open(&netns::named_path(peer)).unwrap();
    let native = nl
        .create_veth_with_peer_in("nat0", "peer0", None, peer_file.as_fd())
        .unwrap();
    nl.add_address(native.index, node_ip, 24).unwrap();
    nl.set_up(native.index).unwrap();
    let peer_link = peer_nl.link_by_name("peer0").unwrap().unwrap();
    peer_nl.add_address(peer_link.index, peer_ip, 24).unwrap();
    peer_nl.set_up(peer_link.index).unwrap();
    for (nl, _) in [(&nl, node), (&peer_nl, peer)] {
        let lo = nl.link_by_name("lo").unwrap().unwrap();
        nl.set_up(lo.index).unwrap();
    }
    let native = nl.link_by_index(native.index).unwrap().unwrap();
    (native, peer_link.mac.unwrap())
}

/// Asserts lifetime = now + timeout, with `now` taken around the run.
pub fn assert_lifetime(lifetime: u32, timeout: u32, what: &str) {
    let now = ciliate_datapath::maps::monotonic_seconds();
    assert!(
        lifetime + 2 >= now + timeout && lifetime <= now + timeout,
        "{what}: lifetime {lifetime} is not now ({now}) + {timeout}"
    );
}

/// The node's tunnel device kind (`tunnelProtocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    Vxlan,
    Geneve,
}

impl Tunnel {
    pub fn device(self) -> &'static str {
        match self {
            Self::Vxlan => "ciliate_vxlan",
            Self::Geneve => "ciliate_geneve",
        }
    }
}

/// The identity a tunnel node's pods send with, and the remote prefix's.
pub const TUNNEL_POD_IDENTITY: u32 = 4242;
pub const TUNNEL_REMOTE_IDENTITY: u32 = 5151;

pub struct TunnelNode {
    pub ns: String,
    pub router: Ipv4Addr,
    pub bpffs: TestBpffs,
    pub maps: Maps,
    pub events: aya::maps::RingBuf<aya::maps::MapData>,
    /// The tunnel device as created (MTU 1500).
    pub tunnel: Link,
}

/// A node as the agent sets it up in tunnel mode: `ciliate_host` (NOARP,
/// router IP) with `ciliate_net`, an external `ciliate_vxlan` (UDP 8472) or
/// `ciliate_geneve` (UDP 6081), the remote PodCIDR routed `dev ciliate_host
/// src <router>`, and the ipcache putting it behind the remote node.
pub fn tunnel_node(
    kind: Tunnel,
    ns: String,
    router: Ipv4Addr,
    remote_cidr: &str,
    remote_node: Ipv4Addr,
) -> TunnelNode {
    let nl = Netlink::new_in(&netns::named_path(&ns)).unwrap();
    let host = nl.create_veth("ciliate_host", "ciliate_net", None).unwrap();
    let net = nl.link_by_name("ciliate_net").unwrap().unwrap();
    nl.set_arp(host.index, false).unwrap();
    nl.set_up(net.index).unwrap();
    nl.set_up(host.index).unwrap();
    nl.add_address(host.index, router, 32).unwrap();
    let device = kind.device();
    let tunnel = match kind {
        Tunnel::Vxlan => nl.create_vxlan_external(device, 8472, Some(1500)),
        Tunnel::Geneve => nl.create_geneve_external(device, 6081, Some(1500)),
    }
    .unwrap();
    nl.set_up(tunnel.index).unwrap();
    ip(
        &ns,
        &[
            "route",
            "add",
            remote_cidr,
            "dev",
            "ciliate_host",
            "src",
            &router.to_string(),
        ],
    );
    // What arrives through the tunnel comes from addresses routed via
    // ciliate_host: strict reverse-path filtering would drop it.
    sysctls(
        &ns,
        &[
            ("net/ipv4/conf/all/rp_filter", "0"),
            (&format!("net/ipv4/conf/{device}/rp_filter"), "0"),
        ],
    );
    let (bpffs, mut maps) = datapath_in(
        &ns,
        vec![
            ("ciliate_host".to_string(), HOST_ATTACH),
            (device.to_string(), OVERLAY_ATTACH),
        ],
    );
    let mut cfg = DatapathConfig::new(router, true);
    cfg.tunnel_ifindex = tunnel.index;
    cfg.identity = TUNNEL_POD_IDENTITY;
    maps.config.set(0, cfg, 0).unwrap();
    let remote = IpcacheValue {
        sec_identity: TUNNEL_REMOTE_IDENTITY,
        tunnel_endpoint: u32::from_ne_bytes(remote_node.octets()),
        ..IpcacheValue::default()
    };
    maps.ipcache
        .insert(&ipcache_key(remote_cidr.parse().unwrap()), remote, 0)
        .unwrap();
    let events = Maps::open_events(&bpffs.root()).unwrap();
    let tunnel = nl.link_by_index(tunnel.index).unwrap().unwrap();
    TunnelNode {
        ns,
        router,
        bpffs,
        maps,
        events,
        tunnel,
    }
}

/// Another node's pods (10.78.0.0/24, identity 5151) and that node itself
/// (192.168.10.2, a host address) in the ipcache, with no tunnel endpoint.
pub fn remote_pods_and_node(maps: &mut Maps) {
    use ciliate_datapath::maps::{ipcache_key, IpcacheValue, IPCACHE_F_HOST};
    let pods = IpcacheValue {
        sec_identity: 5151,
        ..IpcacheValue::default()
    };
    maps.ipcache
        .insert(&ipcache_key("10.78.0.0/24".parse().unwrap()), pods, 0)
        .unwrap();
    let node = IpcacheValue {
        sec_identity: 1,
        flags: IPCACHE_F_HOST,
        ..IpcacheValue::default()
    };
    maps.ipcache
        .insert(&ipcache_key("192.168.10.2/32".parse().unwrap()), node, 0)
        .unwrap();
}
