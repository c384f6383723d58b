//! The real runtime path: containerd (Debian's, with runc) drives ciliate's
//! CNI plugin through CRI, as kubelet would. Needs root, containerd, runc,
//! containernetworking-plugins, gcc (scripts/install-deps.sh) and the
//! workspace's binaries (`cargo build --workspace --bins`).
//!
//! One two-node lab (tunnel routing) for the file, with a containerd inside
//! each node's namespace: node0's conflist chains ciliate, portmap and
//! bandwidth, node1's has ciliate alone. The tests take turns on it:
//! - pods made with RunPodSandbox on both nodes get addresses from their
//!   node's PodCIDR, the agent's endpoints carry the CRI metadata's pod name
//!   and namespace, the pods reach each other and a ClusterIP service, and
//!   Stop/RemovePodSandbox release the address, endpoint (and its BPF map
//!   entry), device, network namespace and the runtime's files;
//! - under the chained list, hostPort (portmap) reaches the pod from outside
//!   the cluster, from the other node and from a pod on it, bandwidth shapes its device, prevResult flows through, CHECK
//!   passes on the healthy pod and fails naming the device removed by hand,
//!   and the pod is still released cleanly afterwards;
//! - the plugin killed mid-ADD (after the allocation, after making the
//!   device, and in the runtime's DEL too) and the agent killed mid-ADD
//!   leave no address, device or BPF endpoint entry once the runtime's
//!   retry, CNI GC and the agent's restart have run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

mod common;

use ciliate_api::{Endpoint, Status};
use ciliate_datapath::netns;
use ciliate_lab::containerd::{self, Containerd};
use ciliate_lab::cri::{self, CriClient};
use ciliate_lab::{cni, Lab, LabSpec};
use common::{ok, run};
use serde_json::Value;

const NAMESPACE: &str = "cri-test";

fn root() -> bool {
    ciliate_datapath::testing::running_as_root(
        "namespaces, BPF, containerd and runc inside the lab's nodes",
    )
}

/// The file's lab and its containerds (index = node index).
struct Suite {
    lab: String,
    runtimes: Vec<Containerd>,
}

impl Suite {
    fn lab(&self) -> Lab {
        Lab::open(&self.lab).unwrap()
    }
}

/// The shared suite, one test at a time; taken down at exit (containerd,
/// shims, pods and all, by `Lab::down`).
fn suite() -> MutexGuard<'static, Suite> {
    static SUITE: OnceLock<Mutex<Suite>> = OnceLock::new();
    static NAME: OnceLock<String> = OnceLock::new();
    extern "C" fn down() {
        if let Some(name) = NAME.get() {
            if let Err(e) = Lab::down(name) {
                eprintln!("taking lab {name} down: {e}");
            }
            let left = ciliate_lab::leftovers(name);
            if !left.is_empty() {
                eprintln!("lab {name} left: {left:?}");
            }
        }
    }
    SUITE
        .get_or_init(|| {
            let name = NAME.get_or_init(|| {
                // SAFETY: registers a plain function to run at exit.
                unsafe { libc::atexit(down) };
                format!("cri{}", std::process::id())
            });
            let lab = Lab::up(&LabSpec::new(name, 2)).expect("lab up");
            let runtimes = lab
                .nodes()
                .iter()
                .map(|n| {
                    let list =
                        containerd::conflist(&n.socket, &n.dir.join("cni.log"), n.index == 0);
                    Containerd::start(&lab, &n.name, &list).expect("containerd starts")
                })
                .collect();
            Mutex::new(Suite {
                lab: name.clone(),
                runtimes,
            })
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pod sandbox as the runtime reports it.
#[derive(Debug, Clone)]
struct Pod {
    name: String,
    id: String,
    ip: Ipv4Addr,
    netns: PathBuf,
}

fn run_pod(client: &CriClient, config: k8s_cri::v1::PodSandboxConfig) -> Pod {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let started = Instant::now();
    let id = client.run_pod_sandbox(config).expect("RunPodSandbox");
    eprintln!("RunPodSandbox {name}: {:?}", started.elapsed());
    let status = client.pod_sandbox_status(&id).expect("PodSandboxStatus");
    Pod {
        name,
        ip: cri::sandbox_ip(&status).expect("the sandbox has an IPv4 address"),
        netns: cri::sandbox_netns(&status).expect("the sandbox has a network namespace"),
        id,
    }
}

fn remove_pod(client: &CriClient, pod: &Pod) {
    client.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    client
        .remove_pod_sandbox(&pod.id)
        .expect("RemovePodSandbox");
}

/// A TCP server in a pod's namespace answering every connection with `reply`;
/// stops (closing its socket) when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(netns: &Path, port: u16, reply: &str) -> Self {
        let listener = netns::run_in(netns, move || TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .expect("binding in the pod");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reply = reply.to_string();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(reply.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `netns` to `to` and returns what the server says.
fn fetch(netns: &Path, to: SocketAddr) -> Result<String, String> {
    netns::run_in(netns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(got)
    })
    .map_err(|e| e.to_string())?
}

/// `fetch` until it answers, for up to 10 s (a new path may need a moment).
fn fetch_soon(netns: &Path, to: SocketAddr) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fetch(netns, to) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn endpoints(lab: &Lab, node: &str) -> Vec<Endpoint> {
    lab.client(node).unwrap().get("/v1/endpoint").unwrap()
}

fn endpoint_of(lab: &Lab, node: &str, pod: &Pod) -> Option<Endpoint> {
    endpoints(lab, node)
        .into_iter()
        .find(|e| e.container_id == pod.id)
}

fn allocated(lab: &Lab, node: &str) -> Vec<Ipv4Addr> {
    let status: Status = lab
        .client(node)
        .unwrap()
        .get("/v1/status?verbose=true")
        .unwrap();
    status.ipam.allocations.iter().map(|a| a.ip).collect()
}

/// The node's BPF endpoint map, as addresses.
fn bpf_endpoints(lab: &Lab, node: &str) -> Vec<String> {
    let out = ok(
        lab,
        node,
        &["ciliate", "bpf", "endpoint", "list", "-o", "json"],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["ip"].as_str().map(str::to_string))
        .collect()
}

fn device_exists(lab: &Lab, node: &str, name: &str) -> bool {
    run(lab, node, &["ip", "link", "show", "dev", name])
        .status
        .success()
}

/// Everything a pod held is gone from its node, the agent and the runtime.
fn assert_released(lab: &Lab, rt: &Containerd, client: &CriClient, pod: &Pod, host_ifname: &str) {
    let node = &rt.node;
    assert!(
        endpoint_of(lab, node, pod).is_none(),
        "{}: the agent still has an endpoint for sandbox {}",
        pod.name,
        pod.id
    );
    assert!(
        !allocated(lab, node).contains(&pod.ip),
        "{}: {} is still allocated on {node}",
        pod.name,
        pod.ip
    );
    assert!(
        !bpf_endpoints(lab, node).contains(&pod.ip.to_string()),
        "{}: {} is still in {node}'s BPF endpoint map",
        pod.name,
        pod.ip
    );
    assert!(
        !device_exists(lab, node, host_ifname),
        "{}: {host_ifname} still exists on {node}",
        pod.name
    );
    assert!(
        !pod.netns.exists(),
        "{}: its network namespace {} is still mounted",
        pod.name,
        pod.netns.display()
    );
    assert!(
        client
            .list_pod_sandboxes()
            .unwrap()
            .iter()
            .all(|s| s.id != pod.id),
        "{}: the runtime still lists sandbox {}",
        pod.name,
        pod.id
    );
    assert!(
        rt.cached_attachment(&pod.id).is_err(),
        "{}: libcni still caches a result for {}",
        pod.name,
        pod.id
    );
    assert!(
        !containerd::shim_socket(&rt.socket, &pod.id).exists(),
        "{}: the shim's socket is left",
        pod.name
    );
}

#[test]
fn pods_through_cri_on_two_nodes_reach_each_other_and_a_service_and_release_everything() {
    if !root() {
        return;
    }
    let suite = suite();
    let mut lab = suite.lab();
    let (rt0, rt1) = (&suite.runtimes[0], &suite.runtimes[1]);
    let (c0, c1) = (rt0.client().unwrap(), rt1.client().unwrap());
    let version = c0.version().unwrap();
    assert_eq!(version.runtime_name, "containerd");

    let a = run_pod(&c0, rt0.sandbox_config(NAMESPACE, "alpha"));
    let b = run_pod(&c1, rt1.sandbox_config(NAMESPACE, "beta"));

    // Addresses from each node's PodCIDR; the agent's endpoints carry the
    // CRI metadata (K8S_POD_NAMESPACE / K8S_POD_NAME from containerd).
    let mut host_ifnames = Vec::new();
    for (pod, node) in [(&a, "node0"), (&b, "node1")] {
        let cidr = lab.node(node).unwrap().pod_cidr.unwrap();
        assert!(
            cidr.contains(&pod.ip),
            "{} has {} outside {node}'s {cidr}",
            pod.name,
            pod.ip
        );
        let ep = endpoint_of(&lab, node, pod)
            .unwrap_or_else(|| panic!("{node}'s agent has no endpoint for sandbox {}", pod.id));
        assert_eq!(ep.ip, pod.ip);
        assert_eq!(ep.pod_namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(ep.pod_name.as_deref(), Some(pod.name.as_str()));
        assert_eq!(ep.netns, pod.netns.display().to_string());
        assert!(device_exists(&lab, node, &ep.host_ifname));
        assert!(bpf_endpoints(&lab, node).contains(&pod.ip.to_string()));
        host_ifnames.push(ep.host_ifname);
    }
    // The paths the cleanup relies on are the ones containerd uses.
    assert!(
        containerd::shim_socket(&rt0.socket, &a.id).exists(),
        "no shim socket at {}",
        containerd::shim_socket(&rt0.socket, &a.id).display()
    );
    assert!(a.netns.starts_with(&rt0.dir), "{}", a.netns.display());

    // Pod to pod, across nodes, both ways.
    let sa = Server::start(&a.netns, 8080, "alpha");
    let sb = Server::start(&b.netns, 8080, "beta");
    assert_eq!(
        fetch_soon(&a.netns, SocketAddr::from((b.ip, 8080))),
        Ok("beta".into())
    );
    assert_eq!(
        fetch_soon(&b.netns, SocketAddr::from((a.ip, 8080))),
        Ok("alpha".into())
    );

    // Pod to a ClusterIP service whose backend is the other node's pod.
    let service = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: cri-beta, namespace: {NAMESPACE}}}
spec: {{ports: [{{port: 80, targetPort: 8080, protocol: TCP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: cri-beta-1, namespace: {NAMESPACE}, labels: {{kubernetes.io/service-name: cri-beta}}}}
addressType: IPv4
endpoints: [{{addresses: [{}], nodeName: node1, conditions: {{ready: true}}}}]
ports: [{{name: '', port: 8080, protocol: TCP}}]
",
        b.ip
    );
    lab.apply_yaml(&service).expect("the service applies");
    lab.wait_services_programmed(Duration::from_mins(1))
        .expect("the agents program the service");
    let svc = lab
        .service(&format!("{NAMESPACE}/cri-beta"))
        .unwrap()
        .expect("stored");
    let vip = ciliate_lab::services::cluster_ip(&svc).expect("a clusterIP");
    assert_eq!(
        fetch_soon(&a.netns, SocketAddr::from((vip, 80))),
        Ok("beta".into())
    );
    drop((sa, sb));
    lab.delete_yaml(&service).expect("the service is deleted");

    remove_pod(&c0, &a);
    remove_pod(&c1, &b);
    assert_released(&lab, rt0, &c0, &a, &host_ifnames[0]);
    assert_released(&lab, rt1, &c1, &b, &host_ifnames[1]);
}

#[test]
fn chained_portmap_and_bandwidth_pass_check_and_check_names_a_removed_device() {
    if !root() {
        return;
    }
    let suite = suite();
    let lab = suite.lab();
    let rt = &suite.runtimes[0];
    let client = rt.client().unwrap();
    let node_ip = lab.node("node0").unwrap().ip();
    // Outside the NodePort range (30000-32767), which the agent serves itself.
    let host_port: u16 = 18080;

    let mut config = rt.sandbox_config(NAMESPACE, "web");
    config.port_mappings = vec![k8s_cri::v1::PortMapping {
        protocol: k8s_cri::v1::Protocol::Tcp.into(),
        container_port: 8080,
        host_port: i32::from(host_port),
        host_ip: String::new(),
    }];
    config.annotations = [
        ("kubernetes.io/ingress-bandwidth", "10M"),
        ("kubernetes.io/egress-bandwidth", "10M"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let pod = run_pod(&client, config);
    let ep = endpoint_of(&lab, "node0", &pod).expect("an endpoint");
    let lxc = ep.host_ifname.clone();

    // prevResult flowed: the list's final result (portmap's and bandwidth's
    // output) still holds what ciliate made.
    let cached = rt
        .cached_attachment(&pod.id)
        .expect("libcni cached the ADD");
    assert_eq!(
        cni::result_ipv4(&cached.result),
        Some(pod.ip),
        "{}",
        cached.result
    );
    let names: Vec<&str> = cached.result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        names.contains(&lxc.as_str()) && names.contains(&"eth0"),
        "{names:?}"
    );
    assert_eq!(
        cached.capability_args["portMappings"][0]["HostPort"], host_port,
        "{}",
        cached.capability_args
    );

    // hostPort: from outside the cluster to node0's address.
    let server = Server::start(&pod.netns, 8080, "web");
    let router = lab.router().unwrap().netns_path.clone();
    assert_eq!(
        fetch_soon(&router, SocketAddr::from((node_ip, host_port))),
        Ok("web".into()),
        "hostPort {host_port} on node0 does not reach the pod"
    );
    // And from inside the cluster: another node, and a pod on it (through
    // the tunnel to node0's address). Their replies too must go back through
    // node0's stack, which alone can translate them back.
    let node1 = lab.node("node1").unwrap().netns_path.clone();
    assert_eq!(
        fetch_soon(&node1, SocketAddr::from((node_ip, host_port))),
        Ok("web".into()),
        "hostPort {host_port} on node0 does not answer node1"
    );
    let (rt1, c1) = (&suite.runtimes[1], suite.runtimes[1].client().unwrap());
    let client_pod = run_pod(&c1, rt1.sandbox_config(NAMESPACE, "web-client"));
    let from_pod = fetch_soon(&client_pod.netns, SocketAddr::from((node_ip, host_port)));
    remove_pod(&c1, &client_pod);
    assert_eq!(
        from_pod,
        Ok("web".into()),
        "hostPort {host_port} on node0 does not answer a pod on node1"
    );
    drop(server);

    // bandwidth: ingress shaped by a tbf on the host device, egress through an ifb.
    let qdisc = ok(&lab, "node0", &["tc", "qdisc", "show", "dev", &lxc]);
    assert!(qdisc.contains("tbf"), "no tbf on {lxc}: {qdisc}");
    let ifbs = ok(&lab, "node0", &["ip", "-o", "link", "show", "type", "ifb"]);
    assert!(ifbs.contains("bwp"), "no bandwidth ifb device: {ifbs}");

    // CHECK through the whole list, as a runtime runs it (cached result,
    // capability arguments), from the node's namespace.
    let cni_path = rt.bin_dir.display().to_string();
    let inv = cni::Invocation {
        pod: "cri-test/web",
        pod_namespace: NAMESPACE,
        pod_name: "web",
        container_id: &pod.id,
        netns_path: &pod.netns,
        ifname: &cached.ifname,
        cni_path: &cni_path,
        runtime_netns: &rt.node_netns,
    };
    // Debian's portmap 1.1.1 fails CHECK on every IPv4-only pod once
    // ip6tables works (containernetworking/plugins#819: it looks for an
    // IPv6 DNAT chain it never made), so the list is checked without it, and
    // portmap alone may fail only that way.
    let mut without_portmap = cached.list.clone();
    without_portmap["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["type"] != "portmap");
    cni::check(
        &without_portmap,
        &inv,
        &cached.result,
        &cached.capability_args,
    )
    .expect("CHECK passes on a healthy pod (ciliate, bandwidth)");
    let mut only_portmap = cached.list.clone();
    only_portmap["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["type"] == "portmap");
    match cni::check(&only_portmap, &inv, &cached.result, &cached.capability_args) {
        Ok(()) => {}
        Err(e) => assert!(
            e.to_string().contains("could not check ipv6 dnat"),
            "portmap's CHECK failed other than by its known IPv6 bug: {e}"
        ),
    }

    // The host device removed by hand: CHECK fails, from ciliate, naming it.
    ok(&lab, "node0", &["ip", "link", "del", "dev", &lxc]);
    let err = cni::check(&cached.list, &inv, &cached.result, &cached.capability_args)
        .expect_err("CHECK fails once the host device is gone")
        .to_string();
    assert!(
        err.contains("\"ciliate\"") && err.contains(&format!("host device {lxc} does not exist")),
        "{err}"
    );

    // DEL still releases everything: address, endpoint, iptables, ifb.
    remove_pod(&client, &pod);
    assert_released(&lab, rt, &client, &pod, &lxc);
    let nat = ok(&lab, "node0", &["iptables", "-t", "nat", "-S"]);
    assert!(
        !nat.contains(&pod.ip.to_string()) && !nat.contains(&host_port.to_string()),
        "portmap left rules: {nat}"
    );
    let ifbs = ok(&lab, "node0", &["ip", "-o", "link", "show", "type", "ifb"]);
    assert!(
        !ifbs.contains("bwp"),
        "bandwidth left its ifb device: {ifbs}"
    );
}

/// The node's `lxc` devices.
fn lxc_devices(lab: &Lab, node: &str) -> Vec<String> {
    let out = ok(lab, node, &["ip", "-o", "link", "show"]);
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("lxc"))
        .collect();
    names.sort();
    names
}

/// Arms (`Some(action)`) or disarms the plugin's fault hook at `point`.
fn fault(rt: &Containerd, point: &str, action: Option<&str>) {
    let file = rt.faults_dir.join(point);
    match action {
        Some(a) => std::fs::write(&file, a).unwrap(),
        None => {
            let _ = std::fs::remove_file(&file);
        }
    }
}

/// GC through node `rt`'s list as a CNI 1.1 runtime runs it (containerd 1.6
/// has no GC), keeping the runtime's ready sandboxes.
fn gc(rt: &Containerd, client: &CriClient) {
    let keep: Vec<(String, String)> = client
        .list_pod_sandboxes()
        .unwrap()
        .iter()
        .filter(|s| s.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32)
        .map(|s| (s.id.clone(), "eth0".to_string()))
        .collect();
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(rt.conf_dir.join(containerd::CONFLIST_NAME)).unwrap(),
    )
    .unwrap();
    let cni_path = rt.bin_dir.display().to_string();
    let inv = cni::Invocation {
        pod: "gc",
        pod_namespace: "",
        pod_name: "",
        container_id: "",
        netns_path: Path::new(""),
        ifname: "",
        cni_path: &cni_path,
        runtime_netns: &rt.node_netns,
    };
    cni::gc(&list, &inv, &keep).expect("GC");
}

/// Item 4: the plugin or the agent dies mid-ADD. After the runtime's retry,
/// CNI GC and the agent's restart, the node holds exactly what it held
/// before plus the retried pod: no address, device or BPF endpoint entry is
/// left over.
#[test]
fn crashes_mid_add_leave_nothing_after_retry_gc_and_agent_restart() {
    if !root() {
        return;
    }
    let suite = suite();
    let mut lab = suite.lab();
    let rt = &suite.runtimes[1];
    let client = rt.client().unwrap();
    let node = rt.node.clone();
    let before = (
        allocated(&lab, &node),
        lxc_devices(&lab, &node),
        bpf_endpoints(&lab, &node),
    );

    // The plugin dies once its device exists, and again in the runtime's
    // DEL: the device and the address are left behind.
    fault(rt, "add-after-device", Some("abort"));
    fault(rt, "del", Some("abort"));
    // Each attempt under a name of its own: containerd keeps a name whose
    // sandbox it could not clean up reserved.
    let failed = client.run_pod_sandbox(rt.sandbox_config(NAMESPACE, "crashy-1"));
    fault(rt, "add-after-device", None);
    fault(rt, "del", None);
    let failed = failed.expect_err("RunPodSandbox succeeded through a crash");
    assert!(!failed.to_string().contains("reserve"), "{failed}");
    assert_eq!(
        allocated(&lab, &node).len(),
        before.0.len() + 1,
        "the crash left its address"
    );
    assert_eq!(
        lxc_devices(&lab, &node).len(),
        before.1.len() + 1,
        "the crash left its device"
    );

    // The plugin dies right after the allocation; the runtime's DEL (which
    // works) releases the address no endpoint uses.
    fault(rt, "add-after-allocate", Some("abort"));
    let failed = client.run_pod_sandbox(rt.sandbox_config(NAMESPACE, "crashy-2"));
    fault(rt, "add-after-allocate", None);
    let failed = failed.expect_err("RunPodSandbox succeeded through a crash");
    assert!(!failed.to_string().contains("reserve"), "{failed}");
    assert_eq!(
        allocated(&lab, &node).len(),
        before.0.len() + 1,
        "DEL released the address"
    );

    // The runtime's retry works; GC then removes the first crash's leftovers.
    let pod = run_pod(&client, rt.sandbox_config(NAMESPACE, "crashy"));
    gc(rt, &client);
    let ep = endpoint_of(&lab, &node, &pod).expect("the retried pod's endpoint");
    let with_pod = |mut v: Vec<String>, item: String| {
        v.push(item);
        v.sort();
        v
    };
    let mut want_ips = before.0.clone();
    want_ips.push(pod.ip);
    want_ips.sort();
    let mut ips = allocated(&lab, &node);
    ips.sort();
    assert_eq!(ips, want_ips, "after GC: addresses");
    assert_eq!(
        lxc_devices(&lab, &node),
        with_pod(before.1.clone(), ep.host_ifname.clone()),
        "after GC: devices"
    );

    // The agent dies while an ADD is paused with its device made: the ADD
    // fails (its undo removes the device), and so does the runtime's DEL.
    // The agent's restart releases the address no endpoint uses.
    fault(rt, "add-after-device", Some("pause"));
    let reached = rt.faults_dir.join("add-after-device.reached");
    let _ = std::fs::remove_file(&reached);
    let adding = {
        let socket = rt.socket.clone();
        let config = rt.sandbox_config(NAMESPACE, "crashy-agent");
        std::thread::spawn(move || CriClient::new(&socket).unwrap().run_pod_sandbox(config))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reached.exists() {
        assert!(Instant::now() < deadline, "the ADD never reached its pause");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.kill_agent(&node).unwrap();
    fault(rt, "add-after-device", None);
    assert!(
        adding.join().unwrap().is_err(),
        "the ADD succeeded without an agent"
    );
    lab.start_agent(&node, Duration::from_mins(1)).unwrap();
    let mut ips = allocated(&lab, &node);
    ips.sort();
    assert_eq!(ips, want_ips, "after the agent's restart: addresses");
    assert_eq!(
        lxc_devices(&lab, &node),
        with_pod(before.1.clone(), ep.host_ifname.clone()),
        "after the agent's restart: devices"
    );
    let mut want_bpf = with_pod(before.2.clone(), pod.ip.to_string());
    want_bpf.sort();
    let mut bpf = bpf_endpoints(&lab, &node);
    bpf.sort();
    assert_eq!(bpf, want_bpf, "BPF endpoint entries");

    remove_pod(&client, &pod);
    assert_released(&lab, rt, &client, &pod, &ep.host_ifname);
    let mut ips = allocated(&lab, &node);
    ips.sort();
    let mut want = before.0.clone();
    want.sort();
    assert_eq!(ips, want, "in the end: addresses");
    assert_eq!(lxc_devices(&lab, &node), before.1, "in the end: devices");
}
