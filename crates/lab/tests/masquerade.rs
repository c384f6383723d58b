//! Masquerading end to end: pods reach the lab's outside world (the router's
//! fabric address 192.168.10.200 and its networks 10.10.1.0/24 and
//! 10.10.2.0/24) with their node's address, except towards ip-masq-agent's
//! nonMasqueradeCIDRs, where they keep their own and the router needs
//! routes back to the PodCIDRs. Captures run on the router (tcpdump).
//!
//! One two-node lab per routing mode (tunnel, native) and masquerade mode
//! (bpf, iptables), made by the first test that needs it and taken down when
//! the test binary exits. The tests of one lab change lab-wide state (the
//! ip-masq-agent ConfigMap, the router's routes), so they take turns (a lock
//! per lab); different labs run at the same time.
//! Needs root, tcpdump and the workspace's binaries (`cargo build --workspace --bins`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ciliate_datapath::netns;
use ciliate_lab::configmaps::{ip_masq_agent_yaml, IP_MASQ_AGENT};
use ciliate_lab::{Lab, LabSpec, Masquerade, RoutingMode};
use common::{ok, run, Capture, Packet};

/// The router's fabric address and its first and second outside network.
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 200);
const WORLD: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 200);
/// The nonMasqueradeCIDRs of tests 3 and 4.
const EXCLUDED: [&str; 2] = ["10.10.1.0/24", "10.10.2.0/24"];
/// Ports BPF masquerading translates to (the contract's NAT range).
const MASQ_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs, etcd in a namespace")
}

/// A lab of this file, held by one test at a time.
struct Held {
    lab: Lab,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Held {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

/// The shared lab of a routing and masquerade mode: made once, down at
/// exit; the caller gets it for itself until it drops it.
fn shared(routing: RoutingMode, masquerade: Masquerade) -> Held {
    static LABS: OnceLock<Mutex<BTreeMap<String, &'static Mutex<()>>>> = OnceLock::new();
    extern "C" fn down_all() {
        if let Some(labs) = LABS.get() {
            for name in labs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
            {
                if let Err(e) = Lab::down(name) {
                    eprintln!("taking lab {name} down: {e}");
                }
            }
        }
    }
    let name = format!(
        "mq{}{}{}",
        std::process::id(),
        &routing.to_string()[..1],
        &masquerade.to_string()[..1]
    );
    let labs = LABS.get_or_init(|| {
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(down_all) };
        Mutex::new(BTreeMap::new())
    });
    // The first test of a mode makes the lab holding the lab's turn, so
    // the others of that mode wait for it; other modes go on meanwhile.
    let guard = {
        let mut labs = labs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(turn) = labs.get(&name).copied() {
            drop(labs);
            turn.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        } else {
            let turn: &'static Mutex<()> = Box::leak(Box::new(Mutex::new(())));
            labs.insert(name.clone(), turn);
            let guard = turn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            drop(labs);
            make_lab(&name, routing, masquerade);
            guard
        }
    };
    let lab = Lab::open(&name).expect("the lab was made");
    assert_eq!(lab.state().masquerade, masquerade);
    Held { lab, _turn: guard }
}

fn make_lab(name: &str, routing: RoutingMode, masquerade: Masquerade) {
    let mut agent_config = serde_yaml::Mapping::new();
    // Short lifetimes of finished TCP flows and frequent GC, so that NAT
    // entries are collected within seconds of the end of a flow.
    agent_config.insert("bpfCTTimeoutRegularTCPFin".into(), 2.into());
    agent_config.insert("conntrackGCInterval".into(), 2.into());
    let lab = Lab::up(&LabSpec {
        routing,
        masquerade,
        agent_config,
        ..LabSpec::new(name, 2)
    })
    .expect("lab up");
    if masquerade == Masquerade::Iptables {
        // The same for the kernel's conntrack, which iptables mode uses.
        for node in lab.nodes() {
            ok(
                &lab,
                &node.name,
                &[
                    "sysctl",
                    "-qw",
                    "net.netfilter.nf_conntrack_tcp_timeout_time_wait=2",
                    "net.netfilter.nf_conntrack_tcp_timeout_close_wait=2",
                    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait=2",
                    "net.netfilter.nf_conntrack_tcp_timeout_last_ack=2",
                ],
            );
        }
    }
}

/// A pod with nothing but a shell on `node` (made once per lab).
fn client(lab: &mut Lab, name: &str, node: &str) -> ciliate_lab::PodInfo {
    lab.apply_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, command: [sleep, infinity]}}]}}\n"
    ))
    .unwrap();
    lab.pod(name).unwrap().clone()
}

/// The world as every test but 3 and 4 expects it: no ip-masq-agent
/// ConfigMap (the lab's empty inline list in force: everything outside the
/// cluster masqueraded) and no routes to the PodCIDRs on the router.
fn reset(lab: &mut Lab) {
    lab.router_routes(false).unwrap();
    lab.delete_config_map(IP_MASQ_AGENT).unwrap();
    wait_masq_list(lab, &[]);
}

/// Waits until every agent has `cidrs` in force as its nonMasqueradeCIDRs
/// (`GET /v1/ipmasq`; link-local, which the agent may list, aside).
fn wait_masq_list(lab: &Lab, cidrs: &[&str]) {
    let want: BTreeSet<String> = cidrs.iter().map(ToString::to_string).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in lab.nodes() {
        let client = ciliate_api::Client::new(&node.socket);
        loop {
            let state = client.get::<ciliate_api::IpMasqState>("/v1/ipmasq");
            let have: Option<BTreeSet<String>> = state.as_ref().ok().map(|s| {
                s.cidrs
                    .iter()
                    .filter(|c| c.as_str() != "169.254.0.0/16")
                    .cloned()
                    .collect()
            });
            if have.as_ref() == Some(&want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: ip-masq-agent does not have {want:?} in force after 30 s: {state:?}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Puts the ip-masq-agent ConfigMap with [`EXCLUDED`] in force; dropping it
/// takes the ConfigMap and the router's routes away again.
struct Excluded<'a> {
    lab: &'a mut Lab,
}

impl<'a> Excluded<'a> {
    fn apply(lab: &'a mut Lab) -> Self {
        lab.apply_yaml(&ip_masq_agent_yaml(&EXCLUDED)).unwrap();
        wait_masq_list(lab, &EXCLUDED);
        Self { lab }
    }
}

impl Drop for Excluded<'_> {
    fn drop(&mut self) {
        let _ = self.lab.router_routes(false);
        let _ = self.lab.delete_config_map(IP_MASQ_AGENT);
    }
}

/// `curl http://dest/` from a pod: the body (`client <address>`) or curl's
/// exit code and message.
fn curl(
    lab: &Lab,
    pod: &str,
    dest: Ipv4Addr,
    connect_timeout: u32,
) -> Result<String, (i32, String)> {
    let out = run(
        lab,
        pod,
        &[
            "curl",
            "-sS",
            "--connect-timeout",
            &connect_timeout.to_string(),
            "--max-time",
            "10",
            &format!("http://{dest}/"),
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

fn node_ip(lab: &Lab, node: &str) -> Ipv4Addr {
    lab.node(node).unwrap().ip()
}

/// 1. Pods on each node ping the router's fabric address: the router sees
///    the node's IP as the source (and never the pod's), and the replies
///    reach the pod.
fn ping_router(routing: RoutingMode, masquerade: Masquerade) {
    let mut lab = shared(routing, masquerade);
    reset(&mut lab);
    for node in ["node0", "node1"] {
        let pod = client(&mut lab, &format!("w-{node}"), node);
        let capture = Capture::start(&lab, "icmp");
        let out = ok(
            &lab,
            &pod.name,
            &["ping", "-n", "-c", "2", "-W", "2", &ROUTER.to_string()],
        );
        assert!(out.contains("2 received"), "replies reach the pod: {out}");
        let packets = capture.stop();
        let requests: Vec<&Packet> = packets
            .iter()
            .filter(|p| p.info.starts_with("ICMP echo request"))
            .collect();
        let replies: Vec<&Packet> = packets
            .iter()
            .filter(|p| p.info.starts_with("ICMP echo reply"))
            .collect();
        let ip = node_ip(&lab, node);
        assert_eq!(requests.len(), 2, "{packets:#?}");
        assert!(
            requests.iter().all(|p| p.src == ip && p.dst == ROUTER),
            "the router sees {node}'s IP {ip}, not the pod's {}: {packets:#?}",
            pod.ip
        );
        assert!(
            replies.len() == 2 && replies.iter().all(|p| p.dst == ip),
            "the router answers {ip}: {packets:#?}"
        );
    }
}

/// 2. Pods on each node fetch http://10.10.1.200/: it works, and the router
///    sees the node's IP (its answer names it; tcpdump sees it too, from a
///    translated port in the NAT range in BPF mode).
fn http_world(routing: RoutingMode, masquerade: Masquerade) {
    let mut lab = shared(routing, masquerade);
    reset(&mut lab);
    for node in ["node0", "node1"] {
        let pod = client(&mut lab, &format!("w-{node}"), node);
        let ip = node_ip(&lab, node);
        let capture = Capture::start(&lab, "tcp port 80");
        let body = curl(&lab, &pod.name, WORLD, 5).expect("the router answers");
        let packets = capture.stop();
        assert_eq!(body, format!("client {ip}"), "from {}", pod.name);
        let syns: Vec<&Packet> = packets.iter().filter(|p| p.is_syn()).collect();
        assert_eq!(syns.len(), 1, "{packets:#?}");
        assert_eq!((syns[0].src, syns[0].dst), (ip, WORLD), "{packets:#?}");
        if masquerade == Masquerade::Bpf {
            let port = syns[0].sport.unwrap();
            assert!(MASQ_PORTS.contains(&port), "translated port {port}");
        }
        assert!(
            packets.iter().all(|p| p.src != pod.ip && p.dst != pod.ip),
            "the pod's own address never reaches the fabric: {packets:#?}"
        );
    }
}

/// 3. With nonMasqueradeCIDRs {10.10.1.0/24, 10.10.2.0/24} and no PodCIDR
///    routes on the router: the router sees the pod's own IP; its answers
///    cannot leave (no SYN-ACK on the fabric); the pod's SYN is retransmitted
///    unanswered (two or more SYNs from one source port) and curl gives up
///    with a connect timeout (exit 28).
fn excluded_without_routes(routing: RoutingMode, masquerade: Masquerade) {
    let mut lab = shared(routing, masquerade);
    reset(&mut lab);
    let pod = client(&mut lab, "w-node0", "node0");
    let excluded = Excluded::apply(&mut lab);
    let capture = Capture::start(excluded.lab, "tcp port 80");
    let result = curl(excluded.lab, &pod.name, WORLD, 4);
    let packets = capture.stop();
    match result {
        Err((28, _)) => {}
        other => panic!("curl must time out connecting (exit 28): {other:?}; {packets:#?}"),
    }
    let syns: Vec<&Packet> = packets.iter().filter(|p| p.is_syn()).collect();
    assert!(
        syns.iter().all(|p| p.src == pod.ip && p.dst == WORLD),
        "the router sees the pod's IP {}: {packets:#?}",
        pod.ip
    );
    let mut per_port: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    for s in &syns {
        *per_port.entry(s.sport).or_default() += 1;
    }
    assert!(
        per_port.len() == 1 && per_port.values().all(|&n| n >= 2),
        "one connection's SYN, retransmitted: {per_port:?} {packets:#?}"
    );
    assert!(
        !packets.iter().any(Packet::is_syn_ack),
        "no SYN-ACK leaves the router: {packets:#?}"
    );
    assert!(
        packets.iter().all(|p| p.dst == WORLD),
        "nothing goes back towards the pod: {packets:#?}"
    );
}

/// 4. The same after `lab router-routes add`: the request succeeds and the
///    router sees the pod's IP.
fn excluded_with_routes(routing: RoutingMode, masquerade: Masquerade) {
    let mut lab = shared(routing, masquerade);
    reset(&mut lab);
    for node in ["node0", "node1"] {
        client(&mut lab, &format!("w-{node}"), node);
    }
    let excluded = Excluded::apply(&mut lab);
    let routes = excluded.lab.router_routes(true).unwrap();
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(excluded.lab.router_pod_routes().unwrap(), routes);
    for node in ["node0", "node1"] {
        let pod = excluded.lab.pod(&format!("w-{node}")).unwrap().clone();
        for dest in [WORLD, Ipv4Addr::new(10, 10, 2, 200)] {
            let capture = Capture::start(excluded.lab, "tcp port 80");
            let body = curl(excluded.lab, &pod.name, dest, 5);
            let packets = capture.stop();
            assert_eq!(
                body,
                Ok(format!("client {}", pod.ip)),
                "{} -> {dest}: {packets:#?}",
                pod.name
            );
            assert!(
                packets
                    .iter()
                    .filter(|p| p.dst == dest)
                    .all(|p| p.src == pod.ip),
                "{packets:#?}"
            );
        }
    }
}

/// 5. Three pods on node0 each hold 50 connections to 10.10.1.200:80 open
///    at once: every connection has its own translated source port (on the
///    router and in the NAT table: the BPF map or the kernel's conntrack)
///    and completes; the translations are collected after the flows end.
fn many_connections(routing: RoutingMode, masquerade: Masquerade) {
    const PODS: usize = 3;
    const PER_POD: usize = 50;
    let mut lab = shared(routing, masquerade);
    reset(&mut lab);
    let pods: Vec<ciliate_lab::PodInfo> = (0..PODS)
        .map(|i| client(&mut lab, &format!("many-{i}"), "node0"))
        .collect();
    let pod_ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    let ip = node_ip(&lab, "node0");
    let to = SocketAddr::from((WORLD, 80));

    let capture = Capture::start(
        &lab,
        "tcp port 80 and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0",
    );
    let openers: Vec<_> = pods
        .iter()
        .map(|p| {
            let path = p.netns_path.clone();
            std::thread::spawn(move || {
                netns::run_in(&path, move || {
                    (0..PER_POD)
                        .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(10)))
                        .collect::<std::io::Result<Vec<TcpStream>>>()
                })
                .unwrap()
            })
        })
        .collect();
    let mut streams: Vec<TcpStream> = Vec::new();
    for o in openers {
        streams.extend(o.join().unwrap().expect("every connection is made"));
    }
    assert_eq!(streams.len(), PODS * PER_POD);
    let syns = capture.stop();

    // All open now: the router holds one connection per translated port.
    let on_router: BTreeSet<SocketAddr> = ok(
        &lab,
        "router",
        &["ss", "-tnH", "state", "established", "( sport = :80 )"],
    )
    .lines()
    .filter_map(|l| l.split_whitespace().last()?.parse().ok())
    .collect();
    let ports: BTreeSet<u16> = on_router
        .iter()
        .filter(|a| a.ip() == std::net::IpAddr::V4(ip))
        .map(SocketAddr::port)
        .collect();
    assert_eq!(
        ports.len(),
        PODS * PER_POD,
        "one translated port per connection from node0's IP: {on_router:?}"
    );
    assert!(
        on_router
            .iter()
            .all(|a| !pod_ips.iter().any(|p| a.ip() == std::net::IpAddr::V4(*p))),
        "no pod address on the router: {on_router:?}"
    );
    let syn_ports: BTreeSet<u16> = syns
        .iter()
        .filter(|p| p.src == ip && p.dst == WORLD)
        .filter_map(|p| p.sport)
        .collect();
    assert_eq!(syn_ports, ports, "the SYNs came from those ports");
    assert!(syns.iter().all(|p| p.src == ip), "{syns:#?}");
    let translated = nat_ports(&lab, masquerade, &pod_ips, ip);
    assert_eq!(
        translated, ports,
        "the NAT table maps each connection to the port the router sees"
    );

    // Every connection completes.
    let finishers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || -> std::io::Result<String> {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: world\r\n\r\n")?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok(answer)
            })
        })
        .collect();
    for f in finishers {
        let answer = f.join().unwrap().expect("the request is answered");
        assert!(
            answer.starts_with("HTTP/1.0 200") && answer.ends_with(&format!("client {ip}\n")),
            "{answer}"
        );
    }

    // And the translations go once the flows are over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = nat_ports(&lab, masquerade, &pod_ips, ip);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} translations still there 30 s after the flows ended",
            left.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The translated source ports node0's NAT table holds for connections
/// from `pods` to 10.10.1.200:80: `ciliate bpf nat list` (masquerade
/// entries) in BPF mode, the kernel's conntrack in iptables mode.
fn nat_ports(
    lab: &Lab,
    masquerade: Masquerade,
    pods: &BTreeSet<Ipv4Addr>,
    node: Ipv4Addr,
) -> BTreeSet<u16> {
    let from_pod = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(ip, _)| ip.parse().ok())
            .is_some_and(|ip| pods.contains(&ip))
    };
    if masquerade == Masquerade::Bpf {
        let text = ok(
            lab,
            "node0",
            &["ciliate", "bpf", "nat", "list", "-o", "json"],
        );
        let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let mut ports = BTreeSet::new();
        for e in &entries {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            let masq = e["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "masquerade"));
            if !masq {
                continue;
            }
            if field("direction") == "egress"
                && from_pod(&field("source"))
                && field("destination") == format!("{WORLD}:80")
            {
                let to: SocketAddr = field("to").parse().unwrap();
                assert_eq!(to.ip(), std::net::IpAddr::V4(node), "{e}");
                ports.insert(to.port());
            } else if field("direction") == "ingress" && from_pod(&field("to")) {
                // A reverse entry of a flow already counted by its egress twin.
                let dst: SocketAddr = field("destination").parse().unwrap();
                ports.insert(dst.port());
            }
        }
        ports
    } else {
        // ipv4 2 tcp 6 119 ESTABLISHED src=POD dst=WORLD sport=S dport=80
        //   src=WORLD dst=NODE sport=80 dport=TRANSLATED [ASSURED] ...
        let text = ok(lab, "node0", &["cat", "/proc/net/nf_conntrack"]);
        text.lines()
            .filter_map(|line| {
                let kv: Vec<(&str, &str)> = line
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .collect();
                let get = |k: &str, nth: usize| {
                    kv.iter()
                        .filter(|(key, _)| *key == k)
                        .nth(nth)
                        .map(|(_, v)| *v)
                };
                let src: Ipv4Addr = get("src", 0)?.parse().ok()?;
                let reply_dst: Ipv4Addr = get("dst", 1)?.parse().ok()?;
                (pods.contains(&src)
                    && get("dst", 0)? == WORLD.to_string()
                    && get("dport", 0)? == "80"
                    && reply_dst == node)
                    .then(|| get("dport", 1)?.parse().ok())
                    .flatten()
            })
            .collect()
    }
}

macro_rules! per_mode {
    ($module:ident, $routing:expr, $masquerade:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn a_pod_pinging_the_router_is_seen_with_its_node_ip() {
                if root() {
                    ping_router($routing, $masquerade);
                }
            }

            #[test]
            fn a_pod_fetching_from_the_world_is_seen_with_its_node_ip() {
                if root() {
                    http_world($routing, $masquerade);
                }
            }

            #[test]
            fn an_excluded_destination_sees_the_pod_ip_and_cannot_answer_without_routes() {
                if root() {
                    excluded_without_routes($routing, $masquerade);
                }
            }

            #[test]
            fn an_excluded_destination_answers_the_pod_ip_with_router_routes() {
                if root() {
                    excluded_with_routes($routing, $masquerade);
                }
            }

            #[test]
            fn many_concurrent_connections_get_distinct_ports_and_are_collected() {
                if root() {
                    many_connections($routing, $masquerade);
                }
            }
        }
    };
}

per_mode!(tunnel_bpf, RoutingMode::Tunnel, Masquerade::Bpf);
per_mode!(tunnel_iptables, RoutingMode::Tunnel, Masquerade::Iptables);
per_mode!(native_bpf, RoutingMode::Native, Masquerade::Bpf);
per_mode!(native_iptables, RoutingMode::Native, Masquerade::Iptables);

#[test]
fn tcpdump_lines_are_parsed() {
    let p = Packet::parse(
        "01:51:27.245985 IP 192.168.10.100.61234 > 10.10.1.200.80: Flags [S], seq 1, win 64860, length 0",
    )
    .unwrap();
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (
            Ipv4Addr::new(192, 168, 10, 100),
            Some(61234),
            WORLD,
            Some(80)
        )
    );
    assert!(p.is_syn() && !p.is_syn_ack());
    let p = Packet::parse(
        "01:51:27.246013 IP 10.10.1.200.80 > 172.20.0.3.54012: Flags [S.], seq 3, ack 2, length 0",
    )
    .unwrap();
    assert!(p.is_syn_ack() && !p.is_syn());
    let p = Packet::parse(
        "01:51:28.000000 IP 192.168.10.100 > 192.168.10.200: ICMP echo request, id 61000, seq 1, length 64",
    )
    .unwrap();
    assert_eq!(
        (p.src, p.sport, p.dst),
        (Ipv4Addr::new(192, 168, 10, 100), None, ROUTER)
    );
    assert!(p.info.starts_with("ICMP echo request"));
    assert_eq!(Packet::parse("listening on eth0, link-type EN10MB"), None);
}
