//! `datapathMode: ipvlan` end to end: a two-node lab with native routing
//! whose pods' eth0 are ipvlan L3 slaves of their node's eth0, made by the
//! real CNI plugin, with the agents' entry programs in the pods' namespaces.
//! Above all the upstream bug stays fixed: NodePort from the outside host
//! through the node that runs the backend (whose reply must leave through
//! the ipvlan driver, not a redirect from the pod's namespace), through the
//! other node, and both at once. Then pod to pod on one node and across
//! nodes, pod to service, pod to the world (masqueraded: the router answers
//! `client <source it saw>`).
//!
//! ipvlan needs a kernel this machine may lack, so this target is `test =
//! false`: `cargo xtask vm-test` builds it and runs it in Debian's 6.12 under
//! QEMU. The tests share one lab, made by the first and taken down when the
//! binary exits; each makes its own pods and services.
//! Needs root, etcd and the workspace's binaries (`cargo build --workspace --bins`).

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use ciliate_datapath::netlink::Netlink;
use ciliate_lab::connectivity::{name_server, DropWatcher};
use ciliate_lab::{DatapathMode, Lab, LabSpec, RoutingMode};
use common::{client_pod, http, ok, run};

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs, etcd in a namespace")
}

/// The lab of this file: made once, down at exit.
fn lab() -> Lab {
    static NAME: OnceLock<String> = OnceLock::new();
    extern "C" fn down() {
        if let Some(name) = NAME.get() {
            if let Err(e) = Lab::down(name) {
                eprintln!("taking lab {name} down: {e}");
            }
        }
    }
    let name = NAME.get_or_init(|| {
        let name = format!("iv{}", std::process::id());
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(down) };
        Lab::up(&LabSpec {
            routing: RoutingMode::Native,
            datapath_mode: DatapathMode::Ipvlan,
            agent_timeout: common::VM_AGENT_TIMEOUT,
            ..LabSpec::new(&name, 2)
        })
        .expect("lab up");
        name
    });
    Lab::open(name).unwrap()
}

/// A pod on `node` that answers HTTP on 8080 with its name, echoes UDP on
/// 9000 and tells a TCP client on 9100 the address it connected from.
fn server_pod(name: &str, node: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n\
         \x20 - {{name: http, command: [python3, -c, \"{}\"]}}\n\
         \x20 - {{name: udp, command: [socat, 'UDP4-RECVFROM:9000,fork', 'EXEC:cat']}}\n\
         \x20 - {{name: who, command: [socat, 'TCP4-LISTEN:9100,fork,reuseaddr', 'SYSTEM:echo $SOCAT_PEERADDR']}}\n",
        name_server(8080)
    )
}

/// A `ty` service selecting `selector`: HTTP 80 -> 8080, UDP echo 9000.
fn service(name: &str, ty: &str, selector: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec:\n  type: {ty}\n  selector: {{{selector}}}\n  ports:\n\
         \x20 - {{name: http, port: 80, targetPort: 8080}}\n\
         \x20 - {{name: udp, port: 9000, protocol: UDP}}\n"
    )
}

/// Applies `yaml` and waits for its server pods to listen.
fn apply(lab: &mut Lab, yaml: &str) {
    lab.apply_yaml(yaml).unwrap();
    for pod in lab.pods().to_vec() {
        if yaml.contains(&format!("{{name: {},", pod.name)) && pod.containers.len() > 1 {
            let deadline = std::time::Instant::now() + Duration::from_mins(1);
            while !run(
                lab,
                &pod.name,
                &["curl", "-s", "--max-time", "1", "http://127.0.0.1:8080/"],
            )
            .status
            .success()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} does not listen on 8080",
                    pod.name
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

fn node_ip(lab: &Lab, node: &str) -> String {
    lab.node(node).unwrap().ip().to_string()
}

fn pod_ip(lab: &Lab, pod: &str) -> String {
    lab.pod(pod).unwrap().ip.to_string()
}

fn service_port(lab: &Lab, svc: &str, port: &str) -> (String, u16) {
    let s = lab.service(svc).unwrap().expect("the service is stored");
    let ip = ciliate_lab::services::cluster_ip(&s).expect("a clusterIP");
    let node_port = s
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some(port))
        .and_then(|p| p.node_port)
        .map_or(0, |p| u16::try_from(p).unwrap());
    (ip.to_string(), node_port)
}

fn programmed(lab: &Lab) {
    lab.wait_services_programmed(Duration::from_mins(1))
        .expect("the agents program the services");
}

/// A UDP datagram from `from` to `ip:port`: whether its echo came back.
/// The server forks a process per datagram, which a loaded VM may take
/// seconds to start: a lost echo is tried again, twice.
fn udp_echo(lab: &Lab, from: &str, ip: &str, port: u16) -> bool {
    (0..3).any(|_| {
        let out = run(
            lab,
            from,
            &[
                "sh",
                "-c",
                &format!("echo ivlan-{from} | socat -T 8 - UDP4:{ip}:{port}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).contains(&format!("ivlan-{from}"))
    })
}

fn ping(lab: &Lab, from: &str, to: &str) -> Result<(), String> {
    let out = run(lab, from, &["ping", "-n", "-q", "-c", "2", "-W", "3", to]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ping {to} from {from}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// The address a server pod at `ip` saw `from` connect from (its port 9100).
fn seen_from(lab: &Lab, from: &str, ip: &str) -> String {
    ok(
        lab,
        from,
        &["socat", "-T", "3", "-", &format!("TCP4:{ip}:9100")],
    )
    .trim()
    .to_string()
}

/// The pod's eth0 is an ipvlan slave (the lab runs the mode it claims).
fn assert_ipvlan(lab: &Lab, pod: &str) {
    let path = lab.pod(pod).unwrap().netns_path.clone();
    let eth0 = Netlink::new_in(&path)
        .unwrap()
        .link_by_name("eth0")
        .unwrap()
        .expect("the pod's eth0");
    assert_eq!(eth0.kind.as_deref(), Some("ipvlan"), "{pod}: {eth0:?}");
}

/// From the router through `node`'s NodePort of `svc`: HTTP (answered by one
/// of `backends`) and a UDP echo; `tries` HTTP requests, returning who answered.
fn through_nodeport(
    lab: &Lab,
    svc: &str,
    node: &str,
    tries: usize,
    failures: &mut Vec<String>,
) -> BTreeSet<String> {
    let (_, port) = service_port(lab, svc, "http");
    let url = format!("http://{}:{port}/", node_ip(lab, node));
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        match http(lab, "router", &url) {
            Ok(body) => {
                seen.insert(body);
            }
            Err(e) => failures.push(format!("{svc} via {node}: {e}")),
        }
    }
    let (_, udp) = service_port(lab, svc, "udp");
    if !udp_echo(lab, "router", &node_ip(lab, node), udp) {
        failures.push(format!(
            "{svc} via {node}: no UDP echo from {}:{udp}",
            node_ip(lab, node)
        ));
    }
    seen
}

#[test]
fn nodeport_in_ipvlan_mode_works_with_the_backend_on_the_entry_node() {
    if !root() {
        return;
    }
    let mut lab = lab();
    apply(&mut lab, &server_pod("npl-a", "node0", "npl: a"));
    apply(&mut lab, &service("npl", "NodePort", "npl: a"));
    programmed(&lab);
    assert_ipvlan(&lab, "npl-a");
    let mut failures = Vec::new();
    let seen = through_nodeport(&lab, "npl", "node0", 5, &mut failures);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(seen, BTreeSet::from(["npl-a".to_string()]));
}

#[test]
fn nodeport_in_ipvlan_mode_works_with_the_backend_on_another_node() {
    if !root() {
        return;
    }
    let mut lab = lab();
    apply(&mut lab, &server_pod("npr-b", "node1", "npr: b"));
    apply(&mut lab, &service("npr", "NodePort", "npr: b"));
    programmed(&lab);
    let mut failures = Vec::new();
    let seen = through_nodeport(&lab, "npr", "node0", 5, &mut failures);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(seen, BTreeSet::from(["npr-b".to_string()]));
}

#[test]
fn nodeport_in_ipvlan_mode_works_with_backends_on_both_nodes_through_both_nodes() {
    if !root() {
        return;
    }
    let mut lab = lab();
    apply(&mut lab, &server_pod("npb-a", "node0", "npb: x"));
    apply(&mut lab, &server_pod("npb-b", "node1", "npb: x"));
    apply(&mut lab, &service("npb", "NodePort", "npb: x"));
    programmed(&lab);
    let mut failures = Vec::new();
    let both = BTreeSet::from(["npb-a".to_string(), "npb-b".to_string()]);
    for node in ["node0", "node1"] {
        // Each backend is local through one node and remote through the
        // other; 20 tries miss one with probability 2^-19.
        let seen = through_nodeport(&lab, "npb", node, 20, &mut failures);
        if seen != both {
            failures.push(format!("through {node} only {seen:?} answered"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn pod_to_pod_on_the_same_node_in_ipvlan_mode() {
    if !root() {
        return;
    }
    let mut lab = lab();
    apply(&mut lab, &server_pod("same-srv", "node0", "same: srv"));
    apply(&mut lab, &client_pod("same-cli", "node0"));
    assert_ipvlan(&lab, "same-cli");
    let ip = pod_ip(&lab, "same-srv");
    ping(&lab, "same-cli", &ip).unwrap();
    assert_eq!(
        http(&lab, "same-cli", &format!("http://{ip}:8080/")).unwrap(),
        "same-srv"
    );
    assert!(udp_echo(&lab, "same-cli", &ip, 9000), "UDP echo");
    assert_eq!(
        seen_from(&lab, "same-cli", &ip),
        pod_ip(&lab, "same-cli"),
        "no NAT between pods"
    );
}

#[test]
fn pod_to_pod_across_nodes_in_ipvlan_mode() {
    if !root() {
        return;
    }
    let mut lab = lab();
    apply(&mut lab, &server_pod("far-srv", "node1", "far: srv"));
    apply(&mut lab, &client_pod("far-cli", "node0"));
    let ip = pod_ip(&lab, "far-srv");
    ping(&lab, "far-cli", &ip).unwrap();
    assert_eq!(
        http(&lab, "far-cli", &format!("http://{ip}:8080/")).unwrap(),
        "far-srv"
    );
    assert!(udp_echo(&lab, "far-cli", &ip, 9000), "UDP echo");
    assert_eq!(
        seen_from(&lab, "far-cli", &ip),
        pod_ip(&lab, "far-cli"),
        "no NAT between pods"
    );
}

#[test]
fn pod_to_service_in_ipvlan_mode() {
    if !root() {
        return;
    }
    let mut lab = lab();
    apply(&mut lab, &server_pod("svc-a", "node0", "svc: x"));
    apply(&mut lab, &server_pod("svc-b", "node1", "svc: x"));
    apply(&mut lab, &client_pod("svc-cli", "node0"));
    apply(&mut lab, &service("svc", "ClusterIP", "svc: x"));
    programmed(&lab);
    let (ip, _) = service_port(&lab, "svc", "http");
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(http(&lab, "svc-cli", &format!("http://{ip}/")).unwrap());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["svc-a".to_string(), "svc-b".to_string()]),
        "the sibling backend (delivered by the driver) and the remote one"
    );
    // UDP through the ClusterIP reaches one backend or the other; any drop
    // on the way is reported.
    let watchers: Vec<DropWatcher> = lab
        .nodes()
        .iter()
        .map(|n| DropWatcher::start(&n.name, &n.socket))
        .collect();
    let answered: Vec<bool> = (0..4)
        .map(|_| udp_echo(&lab, "svc-cli", &ip, 9000))
        .collect();
    let drops: Vec<_> = watchers.into_iter().map(DropWatcher::stop).collect();
    assert!(
        answered.iter().all(|a| *a),
        "UDP echoes through {ip}:9000 answered: {answered:?}; drops seen: {drops:?}"
    );
}

#[test]
fn pod_to_world_in_ipvlan_mode_is_masqueraded() {
    if !root() {
        return;
    }
    let mut lab = lab();
    apply(&mut lab, &client_pod("world-0", "node0"));
    apply(&mut lab, &client_pod("world-1", "node1"));
    let world = ciliate_lab::fabric::outside_networks()[0].addr();
    for (pod, node) in [("world-0", "node0"), ("world-1", "node1")] {
        let body = http(
            &lab,
            pod,
            &format!("http://{world}:{}/", ciliate_lab::fabric::ROUTER_HTTP_PORT),
        )
        .unwrap();
        assert_eq!(
            body,
            format!("client {}", node_ip(&lab, node)),
            "{pod} leaves with its node's address"
        );
    }
}
