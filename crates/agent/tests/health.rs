//! cilium-health's responder and prober against the real kernel: two network
//! namespaces joined by a veth (unique names, removed by a guard however the
//! test ends), the responder bound inside one, the prober probing from the
//! other with real ICMP echoes and TCP connections. Needs root; without it
//! every test says loudly that it skipped.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ciliate_agent::config::{parse_file, Config, Overrides};
use ciliate_agent::health_server;
use ciliate_agent::prober::{http_probe, HealthState, Prober, ProberConfig};
use ciliate_api::{HealthSummary, Node, NodeHealth};
use ciliate_datapath::netlink::Netlink;
use ciliate_datapath::netns;
use ciliate_datapath::require_root;
use tokio::sync::{oneshot, watch};

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// In A's subnet, but nobody has it: no ARP answer, no reply.
const GHOST_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 77);
/// TEST-NET-1: A has no route there at all.
const NOWHERE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const TIMEOUT: Duration = Duration::from_secs(1);

/// Named namespaces that are deleted when the test ends, however it ends.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new() -> Self {
        Self(Vec::new())
    }

    /// Creates `/run/netns/chh-<tag>-<pid>-<n>` with `lo` up and returns its path.
    fn create(&mut self, tag: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("chh-{tag}-{}-{n}", std::process::id());
        let path = netns::create_named(&name).expect("create namespace");
        self.0.push(name);
        let nl = Netlink::new_in(&path).expect("netlink in namespace");
        let lo = nl.link_by_name("lo").unwrap().expect("lo exists");
        nl.set_up(lo.index).unwrap();
        path
    }

    fn name_of(path: &Path) -> String {
        path.file_name().unwrap().to_string_lossy().into_owned()
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

/// Namespaces A (10.250.0.1/24 on `veth-a`) and B (10.250.0.2/24 on `veth-b`)
/// joined by a veth, both ends up. Returns B's netlink socket and `veth-b`'s index.
fn pair(ns: &mut Namespaces) -> (PathBuf, PathBuf, Netlink, u32) {
    let a = ns.create("a");
    let b = ns.create("b");
    let nl_a = Netlink::new_in(&a).unwrap();
    let nl_b = Netlink::new_in(&b).unwrap();
    let b_file = netns::open(&b).unwrap();
    let veth_a = nl_a
        .create_veth_with_peer_in("veth-a", "veth-b", None, b_file.as_fd())
        .unwrap();
    let veth_b = nl_b.link_by_name("veth-b").unwrap().expect("peer in B");
    nl_a.add_address(veth_a.index, A_IP, 24).unwrap();
    nl_b.add_address(veth_b.index, B_IP, 24).unwrap();
    nl_a.set_up(veth_a.index).unwrap();
    nl_b.set_up(veth_b.index).unwrap();
    // The first probe has one second: an ARP request sent before the kernel's
    // link-watch has activated the queue is dropped and only retried after
    // that second, which a loaded machine hits.
    wait_running(&nl_a, veth_a.index);
    wait_running(&nl_b, veth_b.index);
    (a, b, nl_b, veth_b.index)
}

/// Waits until the device is operationally up (`IFF_RUNNING`).
fn wait_running(nl: &Netlink, index: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let link = nl.link_by_index(index).unwrap().expect("device exists");
        if link.running {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became operationally up: {link:?}",
            link.name
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on a single-threaded runtime whose thread is inside the
/// namespace at `path`, so every socket it creates belongs there.
fn in_netns<T, F, Fut>(path: &Path, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _guard = netns::enter(&path).expect("enter namespace");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The inode of the network namespace a socket belongs to (`SIOCGSKNS`).
fn socket_netns_inode(socket: &impl AsRawFd) -> u64 {
    // SAFETY: SIOCGSKNS takes no argument and returns a new namespace fd.
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGSKNS) };
    assert!(fd >= 0, "SIOCGSKNS: {}", std::io::Error::last_os_error());
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.metadata().unwrap().ino()
}

fn node(name: &str, host: Ipv4Addr, health: Option<Ipv4Addr>, local: bool) -> Node {
    Node {
        name: name.into(),
        internal_ip: Some(host),
        ciliate_internal_ip: None,
        health_ip: health,
        pod_cidrs: Vec::new(),
        local,
    }
}

fn find<'a>(nodes: &'a [NodeHealth], name: &str) -> &'a NodeHealth {
    nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no {name} in {nodes:#?}"))
}

#[test]
fn responder_answers_hello_inside_its_namespace_only() {
    require_root!("network namespaces, raw ICMP sockets");
    let mut ns = Namespaces::new();
    let b = ns.create("b");
    let other = ns.create("c");

    let listener = health_server::bind_in_netns(&b, 0).unwrap();
    let port = listener.local_addr().unwrap().port();
    // The socket lives in B, not in the namespace of the thread that asked for it.
    assert_eq!(socket_netns_inode(&listener), netns::inode(&b).unwrap());
    assert_ne!(
        socket_netns_inode(&listener),
        netns::inode(Path::new("/proc/thread-self/ns/net")).unwrap()
    );

    // Served from a runtime whose threads are all in the test's own namespace.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = rt.spawn(health_server::run(listener, async {
        let _ = stopped.await;
    }));

    // Inside B: GET /hello is 200, anything else 404.
    let probed = in_netns(&b, move || http_probe(Ipv4Addr::LOCALHOST, port, TIMEOUT));
    assert!(probed.is_ok(), "GET /hello inside B: {probed:?}");
    let answer = netns::run_in(&b, move || {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.write_all(b"GET /nope HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok::<_, std::io::Error>(text)
    })
    .unwrap()
    .unwrap();
    assert!(answer.starts_with("HTTP/1.0 404"), "{answer}");

    // Another namespace's loopback has nothing on that port.
    let refused = netns::run_in(&other, move || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map(|_| ())
    })
    .unwrap();
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the responder must not listen outside B"
    );

    stop.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
}

#[test]
fn probe_round_records_latency_then_errors_and_failures() {
    require_root!("network namespaces, raw ICMP sockets");
    let mut ns = Namespaces::new();
    let (a, b, nl_b, veth_b) = pair(&mut ns);
    let listener = health_server::bind_in_netns(&b, 0).unwrap();
    let port = listener.local_addr().unwrap().port();

    in_netns(&a, move || async move {
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(health_server::run(listener, async {
            let _ = stopped.await;
        }));
        let config = ProberConfig {
            interval: Duration::from_secs(1),
            timeout: TIMEOUT,
            port,
        };
        let state = HealthState::new(config.interval);
        let mut prober = Prober::new(config, state.clone()).unwrap();
        let nodes = vec![
            node("a", A_IP, None, true),
            node("b", B_IP, Some(B_IP), false),
            node("ghost", GHOST_IP, None, false),
            node("nowhere", NOWHERE_IP, None, false),
        ];

        // Round 1: B answers everything; the others fail with a reason.
        let round = prober.probe_round(&nodes).await;
        assert_eq!(round, state.snapshot());
        assert!(round.probed_at > 0);
        let names: Vec<&str> = round.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["b", "ghost", "nowhere"],
            "the local node is not probed"
        );
        let nb = find(&round.nodes, "b");
        let ep = nb.endpoint.as_ref().expect("B announced a health IP");
        for (what, p) in [("host", &nb.host), ("endpoint", ep)] {
            assert_eq!(p.ip, B_IP);
            for (proto, r) in [("ICMP", &p.icmp), ("TCP", &p.tcp)] {
                assert!(r.ok, "{what} {proto}: {r:?}");
                assert!(r.latency_us.is_some(), "{what} {proto}: {r:?}");
                assert_eq!((r.error.as_ref(), r.failures), (None, 0));
            }
        }
        let ghost = find(&round.nodes, "ghost");
        assert!(ghost.endpoint.is_none());
        assert_eq!(
            ghost.host.icmp.error.as_deref(),
            Some("no echo reply within 1s")
        );
        assert_eq!(
            ghost.host.tcp.error.as_deref(),
            Some(format!("no answer from {GHOST_IP}:{port} within 1s").as_str())
        );
        assert_eq!((ghost.host.icmp.failures, ghost.host.tcp.failures), (1, 1));
        let nowhere = find(&round.nodes, "nowhere");
        let icmp = nowhere.host.icmp.error.as_deref().unwrap();
        let tcp = nowhere.host.tcp.error.as_deref().unwrap();
        assert!(icmp.contains("Network is unreachable"), "{icmp}");
        assert!(
            tcp.starts_with(&format!("connecting to {NOWHERE_IP}:{port}: "))
                && tcp.contains("Network is unreachable"),
            "{tcp}"
        );
        assert_eq!(
            state.summary(),
            HealthSummary {
                reachable: 1,
                total: 3
            }
        );

        // Round 2: the responder is gone; ICMP still answers, TCP is refused.
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        let round = prober.probe_round(&nodes).await;
        let nb = find(&round.nodes, "b");
        let ep = nb.endpoint.as_ref().unwrap();
        for p in [&nb.host, ep] {
            assert!(p.icmp.ok && p.icmp.failures == 0, "{:?}", p.icmp);
            assert!(!p.tcp.ok, "{:?}", p.tcp);
            assert_eq!(p.tcp.failures, 1);
            let e = p.tcp.error.as_deref().unwrap();
            assert!(e.contains("Connection refused"), "{e}");
            // The last good latency is kept.
            assert!(p.tcp.latency_us.is_some());
        }
        assert_eq!(state.summary().reachable, 0);

        // Round 3: B's address is gone; nothing answers any more.
        nl_b.del_address(veth_b, B_IP, 24).unwrap();
        let round = prober.probe_round(&nodes).await;
        let nb = find(&round.nodes, "b");
        assert_eq!(
            nb.host.icmp.error.as_deref(),
            Some("no echo reply within 1s")
        );
        assert_eq!((nb.host.icmp.failures, nb.host.tcp.failures), (1, 2));
        assert!(!nb.host.tcp.ok);
        let ghost = find(&round.nodes, "ghost");
        assert_eq!((ghost.host.icmp.failures, ghost.host.tcp.failures), (3, 3));
        assert_eq!(
            state.summary(),
            HealthSummary {
                reachable: 0,
                total: 3
            }
        );
    });
}

/// Polls `check` until it holds, giving up after 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn start_serves_both_namespaces_and_follows_the_node_list() {
    let config = |netns: &str, enabled: bool| {
        let file = parse_file(&format!(
            "nodeName: a\nipv4Range: 10.251.0.0/24\nhealthNetns: {netns}\nenableHealthChecking: {enabled}\n"
        ))
        .unwrap();
        Config::resolve(file, &Overrides::default()).unwrap()
    };
    // Off means nothing runs and nothing is served.
    let (_tx, nodes) = watch::channel(Vec::new());
    let (_stop, stopping) = watch::channel(false);
    assert!(
        ciliate_agent::health::start(&config("x", false), nodes, &stopping)
            .unwrap()
            .is_none()
    );

    require_root!("network namespaces, raw ICMP sockets");
    let mut ns = Namespaces::new();
    // A plays the node's host namespace, B the health endpoint's namespace.
    let (a, b, _nl_b, _) = pair(&mut ns);
    let config = config(&Namespaces::name_of(&b), true);
    let port = health_server::port(&config);

    in_netns(&a, move || async move {
        let (nodes_tx, nodes) = watch::channel(Vec::new());
        let (stop, stopping) = watch::channel(false);
        let state = ciliate_agent::health::start(&config, nodes, &stopping)
            .unwrap()
            .expect("health checking is on");

        // The host responder (in A) and the endpoint's (in B) both answer.
        let host = http_probe(Ipv4Addr::LOCALHOST, port, TIMEOUT).await;
        assert!(host.is_ok(), "host responder: {host:?}");
        let endpoint = http_probe(B_IP, port, TIMEOUT).await;
        assert!(endpoint.is_ok(), "health endpoint responder: {endpoint:?}");

        // A new node is probed at once, not at the next 5 s tick.
        nodes_tx
            .send(vec![
                node("a", A_IP, None, true),
                node("b", B_IP, Some(B_IP), false),
            ])
            .unwrap();
        eventually("b to be probed and reachable", || {
            state.summary()
                == HealthSummary {
                    reachable: 1,
                    total: 1,
                }
        })
        .await;
        let health = state.snapshot();
        assert_eq!(health.interval_seconds, 5);
        assert!(find(&health.nodes, "b").endpoint.as_ref().unwrap().tcp.ok);

        // A node that goes away is dropped from the report.
        nodes_tx.send(vec![node("a", A_IP, None, true)]).unwrap();
        eventually("b to be forgotten", || state.snapshot().nodes.is_empty()).await;

        // Stopping the agent closes both responders.
        stop.send(true).unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut closed = false;
        for _ in 0..200 {
            if http_probe(Ipv4Addr::LOCALHOST, port, TIMEOUT)
                .await
                .is_err()
                && http_probe(B_IP, port, TIMEOUT).await.is_err()
            {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(closed, "{addr} still answers after the stop");
    });
}
