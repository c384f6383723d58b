//! Proof that ciliate's BPF programs carry pod traffic, and that the pinned
//! datapath keeps carrying it while the agent is dead. Needs root and the
//! workspace's binaries (`cargo build --workspace --bins`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ciliate_api::Endpoint;
use ciliate_datapath::netns;
use ciliate_lab::{LabGuard, LabSpec};

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default}
spec:
  nodeName: node0
  containers: [{name: c, image: none, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default}
spec:
  nodeName: node0
  containers: [{name: c, image: none, command: [sleep, infinity]}]
";

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs")
}

fn lab(tag: char) -> LabGuard {
    let mut lab = LabGuard::up(&LabSpec {
        ipam: ciliate_lab::IpamMode::HostScope,
        ..LabSpec::new(format!("p{}{tag}", std::process::id()), 1)
    })
    .expect("lab up");
    lab.apply_yaml(PODS).expect("apply pods");
    lab
}

fn ping(lab: &LabGuard, from: &str, to: &str) -> bool {
    lab.exec(from, &["ping", "-c", "1", "-W", "1", to])
        .unwrap()
        .status
        .success()
}

fn eventually_ping(lab: &LabGuard, from: &str, to: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(lab, from, to) {
        assert!(Instant::now() < deadline, "{from} cannot ping {to}");
    }
}

#[test]
fn pod_traffic_needs_the_bpf_programs() {
    if !root() {
        return;
    }
    let mut lab = lab('n');
    let b_ip = lab.pod("b").unwrap().ip.to_string();
    let node = lab.node("node0").unwrap().clone();
    let node_ip = node.ip().to_string();
    eventually_ping(&lab, "a", &b_ip);
    assert!(
        ping(&lab, "a", &node_ip),
        "pod to node works with the programs"
    );

    // Detach a's programs by removing their pinned TCX links, and forget the
    // router's MAC in the pod so nothing cached helps.
    let endpoints: Vec<Endpoint> = lab.client("node0").unwrap().get("/v1/endpoint").unwrap();
    let a = endpoints
        .iter()
        .find(|e| e.pod_name.as_deref() == Some("a"))
        .expect("endpoint of a");
    // The node reaches the pod through ciliate_host, whose from_host
    // delivers it: the pod's own device has no route and no program for
    // what the node sends (one TCX attach per pod).
    let a_ip = a.ip.to_string();
    assert_node_reaches_through_ciliate_host(&lab, &a_ip, "with the programs");
    let pins: Vec<String> = std::fs::read_dir(node.bpf_root.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("{}-", a.host_ifname)))
        .collect();
    assert_eq!(pins, [format!("{}-from_container", a.host_ifname)]);
    std::fs::remove_file(node.bpf_root.join("links").join(&pins[0]))
        .expect("the pod's link is pinned");
    assert!(lab
        .exec("a", &["ip", "neigh", "flush", "all"])
        .unwrap()
        .status
        .success());
    assert!(
        !ping(&lab, "a", &b_ip),
        "without from_container the kernel must not route pod to pod"
    );
    assert!(
        !ping(&lab, "a", &node_ip),
        "without from_container the pod reaches nothing"
    );
    assert!(
        !ping(&lab, "b", &a.ip.to_string()),
        "nor can others reach it"
    );

    // A restarted agent restores the endpoint and attaches again. Meanwhile
    // the pod got the route an agent before the one-attach layout made
    // (`IP/32 dev lxc... src ROUTER`), which would bypass from_host: the
    // restored endpoint loses it.
    lab.kill_agent("node0").unwrap();
    let addr = lab
        .exec(
            "node0",
            &["ip", "-4", "-o", "addr", "show", "dev", "ciliate_host"],
        )
        .unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout).to_string();
    let router = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("the router IP on ciliate_host: {addr}"))
        .to_string();
    let legacy = [
        "ip",
        "route",
        "add",
        &a_ip,
        "dev",
        &a.host_ifname,
        "scope",
        "link",
        "src",
        &router,
    ];
    assert!(lab.exec("node0", &legacy).unwrap().status.success());
    lab.start_agent("node0", Duration::from_secs(30)).unwrap();
    eventually_ping(&lab, "a", &b_ip);
    assert!(ping(&lab, "a", &node_ip));
    assert_node_reaches_through_ciliate_host(&lab, &a_ip, "after the restart");
}

/// node0 routes `ip` through ciliate_host (where from_host delivers) and
/// reaches it.
fn assert_node_reaches_through_ciliate_host(lab: &LabGuard, ip: &str, when: &str) {
    let route = lab
        .exec("node0", &["ip", "-4", "route", "get", ip])
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(route.contains("dev ciliate_host"), "{when}: {route}");
    assert!(ping(lab, "node0", ip), "{when}: node0 reaches {ip}");
}

/// Counts what arrives on an accepted connection until EOF or error.
fn serve(listener: &TcpListener, received: &AtomicU64, failed: &AtomicBool) {
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("server read failed: {e}");
                failed.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[test]
fn tcp_stream_survives_agent_kill_and_restart() {
    if !root() {
        return;
    }
    let mut lab = lab('k');
    let a = lab.pod("a").unwrap().clone();
    let b = lab.pod("b").unwrap().clone();
    eventually_ping(&lab, "a", &b.ip.to_string());
    let programs_before: ciliate_api::Status =
        lab.client("node0").unwrap().get("/v1/status").unwrap();

    // Sockets belong to the namespace they are created in.
    let listener = netns::run_in(&b.netns_path, || TcpListener::bind("0.0.0.0:7000"))
        .unwrap()
        .unwrap();
    let addr = SocketAddr::from((b.ip, 7000));
    let stream = netns::run_in(&a.netns_path, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .unwrap()
    .expect("connecting a to b");

    let received = Arc::new(AtomicU64::new(0));
    let server_failed = Arc::new(AtomicBool::new(false));
    let server = {
        let (r, f) = (Arc::clone(&received), Arc::clone(&server_failed));
        std::thread::spawn(move || serve(&listener, &r, &f))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> std::io::Result<u64> {
            let mut stream = stream;
            let chunk = [0x5au8; 1024];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&chunk)?;
                sent += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(1));
            }
            stream.shutdown(std::net::Shutdown::Write)?;
            Ok(sent)
        })
    };

    std::thread::sleep(Duration::from_millis(500));
    lab.kill_agent("node0").unwrap();
    let at_kill = received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let while_dead = received.load(Ordering::Relaxed);
    assert!(
        while_dead > at_kill,
        "data must keep flowing while the agent is dead ({at_kill} -> {while_dead})"
    );

    lab.start_agent("node0", Duration::from_secs(30)).unwrap();
    let at_restart = received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent = client
        .join()
        .unwrap()
        .expect("the client never saw a reset or error");
    server.join().unwrap();
    assert!(
        !server_failed.load(Ordering::Relaxed),
        "the server never saw a reset or error"
    );
    let total = received.load(Ordering::Relaxed);
    assert!(total > at_restart, "data flows after the restart");
    assert_eq!(total, sent, "every byte sent arrived");

    // The restarted agent adopted the pinned programs instead of reloading them.
    let after: ciliate_api::Status = lab.client("node0").unwrap().get("/v1/status").unwrap();
    assert_eq!(after.datapath.object, "adopted");
    assert_eq!(
        after.datapath.programs, programs_before.datapath.programs,
        "same program ids: nothing reloaded"
    );
    assert_eq!(after.endpoints_ready, programs_before.endpoints_ready);
}

#[test]
fn tunnel_mode_has_an_external_vxlan_device_and_overlay_sized_pods() {
    if !root() {
        return;
    }
    let lab = lab('v');
    let node = lab.node("node0").unwrap().clone();
    let out = lab
        .exec(
            "node0",
            &["ip", "-d", "-j", "link", "show", "ciliate_vxlan"],
        )
        .unwrap();
    assert!(out.status.success(), "no ciliate_vxlan on the node");
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = &link[0]["linkinfo"]["info_data"];
    assert_eq!(data["external"], true, "{link}");
    assert_eq!(data["port"], 8472, "{link}");
    assert!(
        node.bpf_root
            .join("links/ciliate_vxlan-from_overlay")
            .exists(),
        "from_overlay is attached (and pinned) on the tunnel device"
    );
    let out = lab
        .exec("a", &["ip", "-j", "link", "show", "eth0"])
        .unwrap();
    let eth0: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        eth0[0]["mtu"], 1450,
        "pods leave room for the VXLAN headers"
    );
    // The node reaches its pods through ciliate_host (node MTU) with
    // packets sized for them: a 1488-byte ping is fragmented by the node
    // instead of being dropped at the pod's device.
    let a_ip = lab.pod("a").unwrap().ip.to_string();
    let big = lab
        .exec(
            "node0",
            &["ping", "-c", "1", "-W", "2", "-s", "1460", &a_ip],
        )
        .unwrap();
    assert!(
        big.status.success(),
        "node0 reaches pod a with a 1488-byte ping: {}",
        String::from_utf8_lossy(&big.stdout)
    );
}
