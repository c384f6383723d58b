//! Services in the lab: the outside host, Services and EndpointSlices in the
//! store, and kube-proxy replacement end to end in tunnel and native routing.
//! Needs root and the workspace's binaries (`cargo build --workspace --bins`).
//!
//! `router_and_service_objects` needs only the lab. The tests in `tunnel` and
//! `native` need the agents' service manager and the BPF service datapath
//! (`kubeProxyReplacement`, conntrack timeouts, `GET /v1/service`): they share
//! one two-node lab per routing mode (made by the first test that needs it,
//! taken down when the test binary exits), each test with its own pods and
//! services, so they may run at the same time.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ciliate_datapath::netns;
use ciliate_lab::connectivity::{name_server, DropWatcher};
use ciliate_lab::{names, IpamMode, Lab, LabGuard, LabSpec, PodCondition, RoutingMode};
use common::{client_pod, http, ok, run, Stream};

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs, etcd in a namespace")
}

/// A pod on `node` that answers HTTP on 8080 with its name and echoes TCP
/// and UDP on 9000.
fn server_pod(name: &str, node: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n\
         \x20 - {{name: http, command: [python3, -c, \"{}\"]}}\n\
         \x20 - {{name: tcp, command: [socat, 'TCP4-LISTEN:9000,fork,reuseaddr', 'EXEC:cat']}}\n\
         \x20 - {{name: udp, command: [socat, 'UDP4-RECVFROM:9000,fork', 'EXEC:cat']}}\n",
        name_server(8080)
    )
}

/// A service `name` of `ty` selecting `selector`, HTTP 80 -> 8080, TCP echo
/// 9000, UDP echo 9000, plus `extra` port lines.
fn service(name: &str, ty: &str, selector: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec:\n  type: {ty}\n  selector: {{{selector}}}\n  ports:\n\
         \x20 - {{name: http, port: 80, targetPort: 8080}}\n\
         \x20 - {{name: echo, port: 9000}}\n\
         \x20 - {{name: udp, port: 9000, protocol: UDP}}\n{extra}"
    )
}

/// Waits until the pod's servers accept on 127.0.0.1 (no datapath involved).
fn wait_listening(lab: &Lab, pod: &str, port: u16) {
    let path = lab.pod(pod).unwrap().netns_path.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !netns::run_in(&path, move || {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_millis(300),
        )
        .is_ok()
    })
    .unwrap()
    {
        assert!(Instant::now() < deadline, "{pod} does not listen on {port}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn apply(lab: &mut Lab, yaml: &str) {
    lab.apply_yaml(yaml).unwrap();
    // Server pods (several containers) made by this manifest: wait for them.
    for pod in lab.pods().to_vec() {
        if yaml.contains(&format!("{{name: {},", pod.name)) && pod.containers.len() > 1 {
            wait_listening(lab, &pod.name, 8080);
            wait_listening(lab, &pod.name, 9000);
        }
    }
}

fn cluster_ip(lab: &Lab, svc: &str) -> Ipv4Addr {
    let s = lab.service(svc).unwrap().expect("the service is stored");
    ciliate_lab::services::cluster_ip(&s).expect("a clusterIP")
}

fn node_port(lab: &Lab, svc: &str, port: &str) -> u16 {
    let s = lab.service(svc).unwrap().expect("the service is stored");
    let p = s.spec.unwrap().ports.unwrap();
    let np = p
        .iter()
        .find(|p| p.name.as_deref() == Some(port))
        .and_then(|p| p.node_port)
        .expect("a nodePort");
    u16::try_from(np).unwrap()
}

fn programmed(lab: &Lab) {
    lab.wait_services_programmed(Duration::from_mins(1))
        .expect("the agents program the services");
}

#[test]
fn router_and_service_objects() {
    if !root() {
        return;
    }
    let name = format!("sv{}r", std::process::id());
    let mut lab = LabGuard::up(&LabSpec {
        ipam: IpamMode::HostScope,
        ..LabSpec::new(&name, 2)
    })
    .expect("lab up");

    // The outside host: on the fabric at .200, only the fabric's route.
    let router = lab.state().router.clone().expect("a router");
    assert_eq!(router.netns, names::router_netns(&name));
    assert_eq!(router.ip(), Ipv4Addr::new(192, 168, 10, 200));
    let addrs = ciliate_lab::fabric::addresses(&router.netns_path, "eth0").unwrap();
    assert_eq!(addrs, [(router.ip(), 24)]);
    let route_list: serde_json::Value =
        serde_json::from_str(&ok(&lab, "router", &["ip", "-j", "-4", "route"])).unwrap();
    let dsts: Vec<&str> = route_list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(dsts, ["192.168.10.0/24"], "only the fabric: {route_list}");
    for node in lab.nodes() {
        ok(
            &lab,
            "router",
            &["ping", "-n", "-c", "1", "-W", "2", &node.ip().to_string()],
        );
    }
    assert!(lab.status().router.is_some());
    assert!(
        lab.health_problems().is_empty(),
        "{:?}",
        lab.health_problems()
    );

    // Services and their EndpointSlices in the store.
    apply(&mut lab, &server_pod("web-a", "node0", "app: web"));
    let svc = service("web", "NodePort", "app: web", "");
    let outcome = lab.apply_yaml(&svc).unwrap();
    assert!(
        outcome[0]
            .to_string()
            .starts_with("service/default/web created: NodePort, clusterIP 10.96."),
        "{}",
        outcome[0]
    );
    let ip = cluster_ip(&lab, "web");
    let np = node_port(&lab, "web", "http");
    // Re-applied: the same addresses, unchanged.
    let again = lab.apply_yaml(&svc).unwrap();
    assert!(again[0].to_string().contains("unchanged"), "{}", again[0]);
    assert_eq!(
        (cluster_ip(&lab, "web"), node_port(&lab, "web", "http")),
        (ip, np)
    );
    // Another service may not take that nodePort.
    let e = lab
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: thief}}\nspec: {{type: NodePort, ports: [{{port: 80, nodePort: {np}}}]}}\n"
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&np.to_string()) && e.contains("default/web has it"),
        "{e}"
    );

    let endpoints = |lab: &Lab| -> Vec<(String, bool, bool, bool, String)> {
        let slices = lab.list_endpoint_slices().unwrap();
        let mut out: Vec<_> = slices
            .iter()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    == Some(&"web".to_string())
            })
            .flat_map(|s| s.endpoints.iter())
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.addresses[0].clone(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                    e.node_name.clone().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let a_ip = lab.pod("web-a").unwrap().ip.to_string();
    assert_eq!(
        endpoints(&lab),
        [(a_ip.clone(), true, true, false, "node0".into())]
    );
    // A pod coming and going refreshes the slice.
    apply(&mut lab, &server_pod("web-b", "node1", "app: web"));
    let b_ip = lab.pod("web-b").unwrap().ip.to_string();
    let mut both = vec![
        (a_ip.clone(), true, true, false, "node0".to_string()),
        (b_ip.clone(), true, true, false, "node1".to_string()),
    ];
    both.sort();
    assert_eq!(endpoints(&lab), both);
    lab.set_pod_condition("web-a", PodCondition::Terminating)
        .unwrap();
    assert!(endpoints(&lab).contains(&(a_ip.clone(), false, true, true, "node0".into())));
    lab.set_pod_condition("web-a", PodCondition::Ready).unwrap();
    assert_eq!(endpoints(&lab), both);
    lab.delete_pod("web-b").unwrap();
    assert_eq!(endpoints(&lab), [(a_ip, true, true, false, "node0".into())]);
    // Deleting the service deletes its slices.
    assert_eq!(lab.delete_yaml(&svc).unwrap(), ["service/default/web"]);
    assert!(lab.list_endpoint_slices().unwrap().is_empty());

    lab.down().unwrap();
    assert!(
        ciliate_lab::leftovers(&name).is_empty(),
        "{:?}",
        ciliate_lab::leftovers(&name)
    );
}

/// The shared lab of a routing mode: made once, down at exit.
fn shared(routing: RoutingMode) -> Lab {
    static LABS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    static TUNNEL: OnceLock<String> = OnceLock::new();
    static NATIVE: OnceLock<String> = OnceLock::new();
    extern "C" fn down_all() {
        if let Some(labs) = LABS.get() {
            for name in labs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
            {
                if let Err(e) = Lab::down(name) {
                    eprintln!("taking lab {name} down: {e}");
                }
            }
        }
    }
    let cell = match routing {
        RoutingMode::Tunnel => &TUNNEL,
        RoutingMode::Native => &NATIVE,
    };
    let name = cell.get_or_init(|| {
        let labs = LABS.get_or_init(|| {
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(down_all) };
            Mutex::new(Vec::new())
        });
        let name = format!("sv{}{}", std::process::id(), &routing.to_string()[..1]);
        labs.lock().unwrap().push(name.clone());
        let mut agent_config = serde_yaml::Mapping::new();
        // Short conntrack lifetimes and GC, for the expiry test.
        agent_config.insert("bpfCTTimeoutRegularAny".into(), 4.into());
        agent_config.insert("conntrackGCInterval".into(), 2.into());
        Lab::up(&LabSpec {
            routing,
            agent_config,
            ..LabSpec::new(&name, 2)
        })
        .expect("lab up");
        name
    });
    let lab = Lab::open(name).unwrap();
    assert!(
        lab.state().kube_proxy_replacement,
        "the lab runs its agents without kubeProxyReplacement: these tests need the service datapath"
    );
    lab
}

/// From the outside host through every node's NodePort, to a service whose
/// only backend is on node0 and to one whose only backend is on node1: every
/// node is the entry with the backend local and remote. The answer must come
/// back to the router (a reply forwarded elsewhere shows as a timeout).
fn nodeport_through_every_node(routing: RoutingMode) {
    let mut lab = shared(routing);
    apply(&mut lab, &server_pod("np-a", "node0", "np: a"));
    apply(&mut lab, &server_pod("np-b", "node1", "np: b"));
    apply(&mut lab, &service("np-a", "NodePort", "np: a", ""));
    apply(&mut lab, &service("np-b", "NodePort", "np: b", ""));
    programmed(&lab);
    let mut failures = Vec::new();
    for node in lab.nodes() {
        for backend in ["np-a", "np-b"] {
            let port = node_port(&lab, backend, "http");
            let url = format!("http://{}:{port}/", node.ip());
            let place = if lab.pod(backend).unwrap().node == node.name {
                "local"
            } else {
                "remote"
            };
            match http(&lab, "router", &url) {
                Ok(body) if body == backend => {}
                other => failures.push(format!(
                    "{url} via {} ({place} backend {backend}): {other:?}",
                    node.name
                )),
            }
            let udp = node_port(&lab, backend, "udp");
            let out = run(
                &lab,
                "router",
                &[
                    "sh",
                    "-c",
                    &format!(
                        "echo via-{} | socat -T 3 - UDP4:{}:{udp}",
                        node.name,
                        node.ip()
                    ),
                ],
            );
            if !String::from_utf8_lossy(&out.stdout).contains(&format!("via-{}", node.name)) {
                failures.push(format!(
                    "UDP {}:{udp} ({place} backend {backend}): no echo",
                    node.ip()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// 30 requests to a service with two backends reach both, from a pod to
/// the ClusterIP and from the router to a NodePort.
fn connections_spread(routing: RoutingMode) {
    let mut lab = shared(routing);
    apply(&mut lab, &server_pod("spread-a", "node0", "spread: x"));
    apply(&mut lab, &server_pod("spread-b", "node1", "spread: x"));
    apply(&mut lab, &client_pod("spread-client", "node0"));
    apply(&mut lab, &service("spread", "NodePort", "spread: x", ""));
    programmed(&lab);
    let ip = cluster_ip(&lab, "spread");
    let np = node_port(&lab, "spread", "http");
    for (from, url) in [
        ("spread-client", format!("http://{ip}/")),
        ("router", format!("http://{}:{np}/", lab.nodes()[1].ip())),
    ] {
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            seen.insert(http(&lab, from, &url).expect("every request is answered"));
        }
        assert_eq!(
            seen,
            BTreeSet::from(["spread-a".to_string(), "spread-b".to_string()]),
            "{from} -> {url}"
        );
    }
}

/// A backend turned terminating while a long TCP stream runs to it: the
/// stream finishes with every byte, new connections go to the other one.
fn terminating_backend(routing: RoutingMode) {
    let mut lab = shared(routing);
    apply(&mut lab, &server_pod("term-a", "node1", "term: x"));
    apply(&mut lab, &client_pod("term-client", "node0"));
    apply(&mut lab, &service("term", "ClusterIP", "term: x", ""));
    programmed(&lab);
    let ip = cluster_ip(&lab, "term");
    // Only term-a exists: the stream is to it.
    let client = lab.pod("term-client").unwrap().netns_path.clone();
    let stream = Stream::start(&client, SocketAddr::from((ip, 9000)));
    apply(&mut lab, &server_pod("term-b", "node0", "term: x"));
    lab.set_pod_condition("term-a", PodCondition::Terminating)
        .unwrap();
    programmed(&lab);
    for _ in 0..15 {
        assert_eq!(
            http(&lab, "term-client", &format!("http://{ip}/")).unwrap(),
            "term-b"
        );
    }
    let before = stream.received();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        stream.received() > before,
        "the stream to the terminating backend still flows"
    );
    let (sent, echoed) = stream.finish();
    assert_eq!(sent, echoed, "every byte came back");
}

/// Adding a port and a backend to a service under load loses no connection.
fn update_under_load(routing: RoutingMode) {
    let mut lab = shared(routing);
    apply(&mut lab, &server_pod("upd-a", "node1", "upd: x"));
    apply(&mut lab, &client_pod("upd-client", "node0"));
    apply(&mut lab, &service("upd", "NodePort", "upd: x", ""));
    programmed(&lab);
    let ip = cluster_ip(&lab, "upd");
    let client = lab.pod("upd-client").unwrap().netns_path.clone();
    let streams: Vec<Stream> = (0..4)
        .map(|_| Stream::start(&client, SocketAddr::from((ip, 9000))))
        .collect();
    apply(
        &mut lab,
        &service(
            "upd",
            "NodePort",
            "upd: x",
            "  - {name: alt, port: 8081, targetPort: 8080}\n",
        ),
    );
    apply(&mut lab, &server_pod("upd-b", "node0", "upd: x"));
    programmed(&lab);
    assert!(
        http(&lab, "upd-client", &format!("http://{ip}:8081/")).is_ok(),
        "the new port serves"
    );
    std::thread::sleep(Duration::from_secs(1));
    for s in streams {
        let (sent, echoed) = s.finish();
        assert_eq!(sent, echoed, "every byte came back");
    }
}

/// A UDP flow's conntrack entries disappear once expired (the lab's agents
/// use a 4 s non-TCP lifetime and collect every 2 s).
fn conntrack_expires(routing: RoutingMode) {
    let mut lab = shared(routing);
    apply(&mut lab, &server_pod("ct-a", "node1", "ct: x"));
    apply(&mut lab, &client_pod("ct-client", "node0"));
    apply(&mut lab, &service("ct", "ClusterIP", "ct: x", ""));
    programmed(&lab);
    let ip = cluster_ip(&lab, "ct");
    let client_ip = lab.pod("ct-client").unwrap().ip.to_string();
    let out = ok(
        &lab,
        "ct-client",
        &[
            "sh",
            "-c",
            &format!("echo ct | socat -T 2 - UDP4:{ip}:9000,sourceport=40123"),
        ],
    );
    assert!(out.contains("ct"), "{out}");
    // Entries of the flow: any CT entry naming the client and its port.
    let entries = |lab: &Lab| -> Vec<String> {
        let text = ok(
            lab,
            "node0",
            &["ciliate", "bpf", "ct", "list", "global", "-o", "json"],
        );
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .filter(|e| e.contains(&client_ip) && e.contains("40123"))
            .collect()
    };
    assert!(!entries(&lab).is_empty(), "the flow has conntrack entries");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = entries(&lab);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there after 30 s: {left:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A service without backends: TCP fails with "connection refused" (curl's
/// exit code 7, not 28 for a timeout), because the datapath answers with ICMP
/// port unreachable, and the client's node reports DROP_NO_SERVICE.
fn no_backends(routing: RoutingMode) {
    let mut lab = shared(routing);
    apply(&mut lab, &client_pod("nb-client", "node0"));
    apply(&mut lab, &service("nb", "ClusterIP", "nb: nothing", ""));
    programmed(&lab);
    let ip = cluster_ip(&lab, "nb");
    let node = lab.node("node0").unwrap().clone();
    let watcher = DropWatcher::start("node0", &node.socket);
    let out = run(
        &lab,
        "nb-client",
        &["curl", "-sS", "--max-time", "5", &format!("http://{ip}/")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl could not connect: {stderr}"
    );
    let (drops, errors) = watcher.stop();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        drops
            .iter()
            .any(|d| d.event.code == ciliate_datapath::reasons::DROP_NO_SERVICE),
        "no DROP_NO_SERVICE: {drops:?}"
    );
}

macro_rules! per_mode {
    ($module:ident, $routing:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn nodeport_reply_from_a_backend_on_the_entry_node_goes_back_to_the_client() {
                if root() {
                    nodeport_through_every_node($routing);
                }
            }

            #[test]
            fn connections_spread_across_backends() {
                if root() {
                    connections_spread($routing);
                }
            }

            #[test]
            fn a_terminating_backend_finishes_its_stream_and_takes_no_new_connections() {
                if root() {
                    terminating_backend($routing);
                }
            }

            #[test]
            fn a_service_updated_under_load_loses_no_connection() {
                if root() {
                    update_under_load($routing);
                }
            }

            #[test]
            fn conntrack_entries_expire_and_are_collected() {
                if root() {
                    conntrack_expires($routing);
                }
            }

            #[test]
            fn a_service_without_backends_refuses_and_reports_no_service() {
                if root() {
                    no_backends($routing);
                }
            }
        }
    };
}

per_mode!(tunnel, RoutingMode::Tunnel);
per_mode!(native, RoutingMode::Native);
