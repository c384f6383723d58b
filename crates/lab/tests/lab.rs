//! The lab for real: namespaces, the agent, CNI, processes, and `down`.
//! Needs root (and the workspace's binaries, `cargo build --workspace`);
//! without root every test says SKIPPED loudly and returns.
//!
//! Each test uses its own lab name (`t<pid><letter>`), so tests run in parallel.
//! These test the lab's own mechanics with host-scope IPAM (the lab gives each
//! agent its PodCIDR; etcd still runs in the fabric and gets the pods);
//! `multinode.rs` tests the default cluster (cluster-pool, operator, routing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use ciliate_lab::{names, ApplyOutcome, IpamMode, Lab, LabError, LabGuard, LabSpec};
use serde_json::{json, Value};

const PODS: &str = include_str!("../../../examples/pods.yaml");

fn root() -> bool {
    ciliate_datapath::testing::running_as_root(
        "the lab creates network namespaces and mounts bpffs",
    )
}

fn lab_name(tag: char) -> String {
    format!("t{}{tag}", std::process::id())
}

/// A lab whose agents get their PodCIDR from the lab (no operator).
fn spec(name: &str, nodes: usize) -> LabSpec {
    LabSpec {
        ipam: IpamMode::HostScope,
        ..LabSpec::new(name, nodes)
    }
}

/// The pods of the lab's store, as `namespace/name`.
fn stored_pods(lab: &Lab) -> Vec<(String, ciliate_store::Pod)> {
    lab.with_store(|store| async move { store.list::<ciliate_store::Pod>().await })
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default()
                ),
                p,
            )
        })
        .collect()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command in a node or pod and requires success.
fn ok(lab: &Lab, target: &str, argv: &[&str]) -> String {
    let out = lab.exec(target, argv).unwrap();
    assert!(
        out.status.success(),
        "`{}` in {target} failed: {}",
        argv.join(" "),
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries a command for a few seconds (servers need a moment to listen).
fn eventually(lab: &Lab, target: &str, argv: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.exec(target, argv).unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "`{}` in {target} kept failing: {}",
            argv.join(" "),
            show(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_gone(name: &str) {
    let left = ciliate_lab::leftovers(name);
    assert!(left.is_empty(), "lab {name} left things behind: {left:?}");
    let prefix = names::netns_prefix(name);
    let netns: Vec<_> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/run/ciliate-lab/{name}/")),
        "mounts left:\n{mounts}"
    );
    assert!(!names::lab_dir(name).exists());
}

fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Installs the recording stand-in plugin as CNI type `recorder` and makes a
/// node's conflist chain two of it (the second only passes `prevResult` on).
fn use_recorder(lab: &Lab, node: &str) -> PathBuf {
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/cni-recorder");
    let link = lab.dir().join("cni-bin/recorder");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(fake, &link).unwrap();
    let node = lab.node(node).unwrap();
    let record = node.dir.join("recorder");
    let cidr = node.pod_cidr.unwrap();
    let gateway = std::net::Ipv4Addr::from(u32::from(cidr.network()) + 1);
    let base = std::net::Ipv4Addr::from(u32::from(cidr.network()) + 200);
    let list = json!({
        "cniVersion": "1.1.0",
        "name": "recnet",
        "plugins": [
            {"type": "recorder", "recordDir": record, "recordIpBase": base.to_string(),
             "recordGateway": gateway.to_string()},
            {"type": "recorder", "recordDir": record, "recordChained": true},
        ],
    });
    std::fs::write(&node.conflist, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    record
}

fn calls(record: &Path) -> Vec<Value> {
    std::fs::read_to_string(record.join("calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn up_then_down_leaves_nothing() {
    if !root() {
        return;
    }
    let name = lab_name('a');
    let lab = LabGuard::up(&spec(&name, 1)).unwrap();
    let node = lab.node("node0").unwrap().clone();
    assert_eq!(node.ip().to_string(), "192.168.10.100");
    for ns in [names::fabric_netns(&name), node.netns.clone()] {
        assert!(Path::new("/run/netns").join(&ns).exists(), "{ns} missing");
    }
    // The node's eth0 is on the fabric with its address; the agent answers.
    let addrs = ciliate_lab::fabric::addresses(&node.netns_path, "eth0").unwrap();
    assert_eq!(addrs, [(node.ip(), 24)]);
    let status: ciliate_api::Status = lab.client("node0").unwrap().get("/v1/status").unwrap();
    assert_eq!(status.node_name, "node0");
    assert_eq!(Some(status.ipam.cidr), node.pod_cidr);

    // The fabric bridge is the outside host, with etcd on it and nowhere else.
    let fabric = ciliate_datapath::netns::named_path(&names::fabric_netns(&name));
    let br0 = ciliate_lab::fabric::addresses(&fabric, "br0").unwrap();
    assert_eq!(br0, [("192.168.10.1".parse().unwrap(), 24)]);
    let etcd = lab.state().etcd.clone().unwrap();
    assert_eq!(etcd.endpoint, "http://192.168.10.1:2379");
    let etcd_proc = etcd.process.clone().unwrap();
    assert_eq!(
        netns_inode(&PathBuf::from(format!("/proc/{}/ns/net", etcd_proc.pid))),
        netns_inode(&fabric)
    );
    assert!(etcd.data_dir.starts_with(lab.dir()) && etcd.data_dir.is_dir());
    let from_node = ok(
        &lab,
        "node0",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://192.168.10.1:2379/health",
        ],
    );
    assert!(from_node.contains("true"), "{from_node}");
    // 192.168.10.1:2379 as /proc/net/tcp writes it, in the machine's namespace.
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    assert!(
        !listening.contains("010AA8C0:094B"),
        "etcd must not listen in the machine's namespace:\n{listening}"
    );
    // Host-scope: no operator; status shows etcd.
    assert!(lab.state().operator.is_none());
    let services = lab.status().processes;
    assert_eq!(services.len(), 1, "{services:?}");
    assert!(services[0].name == "etcd" && services[0].alive);
    assert!(
        lab.health_problems().is_empty(),
        "{:?}",
        lab.health_problems()
    );
    // The agent runs in the node's namespace, and pins into the lab's bpffs.
    let agent = node.agent.clone().unwrap();
    assert_eq!(
        netns_inode(&PathBuf::from(format!("/proc/{}/ns/net", agent.pid))),
        netns_inode(&node.netns_path)
    );
    assert!(
        std::fs::read_dir(&node.bpf_root).unwrap().next().is_some(),
        "nothing pinned"
    );
    // `exec` on a node points clients at that node's agent.
    let env = ok(&lab, "node0", &["sh", "-c", "echo $CILIATE_SOCKET"]);
    assert_eq!(env.trim(), node.socket.to_str().unwrap());
    // No route out: the fabric is the node's only link to anything.
    let out = lab
        .exec("node0", &["ping", "-c", "1", "-W", "1", "1.1.1.1"])
        .unwrap();
    assert!(!out.status.success());

    // A second `up` of a healthy lab is a no-op; with another node count it is refused.
    let again = Lab::up(&spec(&name, 1)).unwrap();
    assert!(again.was_already_up());
    let e = Lab::up(&spec(&name, 2)).unwrap_err();
    assert!(
        matches!(e, LabError::Exists { .. }) && e.to_string().contains("1 nodes, not 2"),
        "{e}"
    );

    let report = lab.down().unwrap();
    assert!(
        report.processes >= 1 && report.mounts == 1 && report.removed_dir,
        "{report:?}"
    );
    assert!(!ciliate_lab::sys::alive(&agent));
    assert!(!ciliate_lab::sys::alive(&etcd_proc), "etcd stopped");
    assert_gone(&name);
    // Down again: nothing to do, no error.
    assert!(!Lab::down(&name).unwrap().found_anything());
}

#[test]
fn pods_are_made_as_a_runtime_makes_them() {
    if !root() {
        return;
    }
    let name = lab_name('b');
    let mut lab = LabGuard::up(&spec(&name, 1)).unwrap();
    let node = lab.node("node0").unwrap().clone();
    let record = use_recorder(&lab, "node0");

    // An unknown node is refused before anything is made, naming the nodes.
    let bad = PODS.replace("nodeName: node0", "nodeName: node7");
    let e = lab.apply_yaml(&bad).unwrap_err().to_string();
    assert!(
        e.contains("spec.nodeName") && e.contains("node7") && e.contains("node0"),
        "{e}"
    );
    assert!(lab.pods().is_empty() && calls(&record).is_empty());

    let outcomes = lab.apply_yaml(PODS).unwrap();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(
        o,
        ApplyOutcome::Created {
            scheduled: false,
            ..
        }
    )));

    // Exactly what containerd would pass, in the node's namespace.
    let adds = calls(&record);
    assert_eq!(adds.len(), 4, "two pods, two chained plugins: {adds:#?}");
    let node_ns = format!("net:[{}]", netns_inode(&node.netns_path));
    for (i, pod) in ["server", "client"].iter().enumerate() {
        let id = names::container_id(&name, "default", pod);
        let netns = format!("/run/netns/{name}-pod-default-{pod}");
        let (first, second) = (&adds[2 * i], &adds[2 * i + 1]);
        let want_env = json!({
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": lab.state().cni_path,
            "CNI_ARGS": format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={id}"
            ),
        });
        for call in [first, second] {
            assert_eq!(call["env"], want_env);
            assert_eq!(call["netns"], node_ns.as_str());
            assert_eq!(call["socketEnv"], Value::Null);
            assert_eq!(call["stdin"]["name"], "recnet");
            assert_eq!(call["stdin"]["cniVersion"], "1.1.0");
        }
        assert!(first["stdin"].get("prevResult").is_none());
        let pod_info = lab.pod(pod).unwrap().clone();
        assert_eq!(
            second["stdin"]["prevResult"],
            pod_info.cni_result.clone().unwrap()
        );
        assert_eq!(pod_info.netns_path, PathBuf::from(&netns));
        assert_eq!(pod_info.node, "node0");
        // The pod's commands run in the pod's namespace.
        for c in &pod_info.containers {
            let pid = c.process.as_ref().unwrap().pid;
            assert_eq!(
                netns_inode(&PathBuf::from(format!("/proc/{pid}/ns/net"))),
                netns_inode(&pod_info.netns_path)
            );
        }
    }

    // The store holds the pods as running, with their node and addresses.
    let stored = stored_pods(&lab);
    let keys: Vec<&str> = stored.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["default/client", "default/server"]);
    let server_pod = &stored[1].1;
    let status = server_pod.status.clone().unwrap();
    assert_eq!(
        status.pod_ip.as_deref(),
        Some(lab.pod("server").unwrap().ip.to_string().as_str())
    );
    assert_eq!(status.host_ip.as_deref(), Some("192.168.10.100"));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(
        server_pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node0")
    );

    // Re-applying changes nothing and calls no plugin.
    let again = lab.apply_yaml(PODS).unwrap();
    assert!(
        again
            .iter()
            .all(|o| matches!(o, ApplyOutcome::Unchanged { differs: false, .. })),
        "{again:?}"
    );
    assert_eq!(calls(&record).len(), 4);

    // Traffic over the stand-in's plain kernel routing: pod to pod (ICMP,
    // TCP, UDP), pod to node, node to pod.
    let server = lab.pod("server").unwrap().ip.to_string();
    let client = lab.pod("default/client").unwrap().ip.to_string();
    ok(&lab, "client", &["ping", "-c", "1", "-W", "2", &server]);
    ok(
        &lab,
        "client",
        &["ping", "-c", "1", "-W", "2", "192.168.10.100"],
    );
    ok(&lab, "node0", &["ping", "-c", "1", "-W", "2", &client]);
    let page = eventually(
        &lab,
        "client",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            &format!("http://{server}:8080/"),
        ],
    );
    assert!(page.contains("Directory listing"), "{page}");
    let echo = eventually(
        &lab,
        "client",
        &[
            "sh",
            "-c",
            &format!("echo hello-udp | socat -T 2 - UDP4:{server}:9000"),
        ],
    );
    assert_eq!(echo.trim(), "hello-udp");

    // Errors name what exists.
    let e = lab.exec("nope", &["true"]).unwrap_err().to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("node0") && e.contains("default/client"),
        "{e}"
    );

    // A pod without nodeName is placed round-robin and said so.
    let extra = "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: other}\nspec: {containers: [{name: c, command: [sleep, infinity]}]}\n";
    let out = lab.apply_yaml(extra).unwrap();
    assert!(
        matches!(&out[0], ApplyOutcome::Created { scheduled: true, node, .. } if node == "node0"),
        "{out:?}"
    );

    // Delete: processes killed, DEL in reverse order with the cached result, namespace gone.
    let server_info = lab.pod("server").unwrap().clone();
    let pids: Vec<i32> = server_info
        .containers
        .iter()
        .map(|c| c.process.as_ref().unwrap().pid)
        .collect();
    assert!(lab.delete_pod("server").unwrap());
    assert!(!lab.delete_pod("server").unwrap());
    let dels: Vec<Value> = calls(&record)
        .into_iter()
        .filter(|c| c["env"]["CNI_COMMAND"] == "DEL")
        .collect();
    assert_eq!(dels.len(), 2, "{dels:#?}");
    assert_eq!(
        dels[0]["stdin"]["recordChained"], true,
        "DEL runs the list in reverse"
    );
    for d in &dels {
        assert_eq!(
            d["stdin"]["prevResult"],
            server_info.cni_result.clone().unwrap()
        );
        assert_eq!(
            d["env"]["CNI_CONTAINERID"],
            server_info.container_id.as_str()
        );
    }
    assert!(!server_info.netns_path.exists());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap()
                    .contains(") Z")
        );
    }
    let deleted = lab.delete_yaml(PODS).unwrap();
    assert_eq!(deleted, ["pod/default/client"]);
    let keys: Vec<String> = stored_pods(&lab).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["other/extra"], "deleted pods leave the store");

    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
fn down_cleans_up_after_a_crash() {
    if !root() {
        return;
    }
    let name = lab_name('c');
    let mut lab = LabGuard::up(&spec(&name, 2)).unwrap();
    assert_eq!(lab.nodes().len(), 2);
    assert_eq!(
        lab.node("node1").unwrap().ip().to_string(),
        "192.168.10.101"
    );
    // Nodes reach each other over the fabric.
    ok(
        &lab,
        "node0",
        &["ping", "-c", "1", "-W", "2", "192.168.10.101"],
    );
    use_recorder(&lab, "node0");
    use_recorder(&lab, "node1");
    lab.apply_yaml(&PODS.replace(
        "nodeName: node0\n  containers:\n    - name: client",
        "nodeName: node1\n  containers:\n    - name: client",
    ))
    .unwrap();
    assert_eq!(lab.pod("client").unwrap().node, "node1");

    // A stray process nobody recorded, in a node's namespace.
    let mut stray = lab
        .command("node1", &["sleep".into(), "1000".into()])
        .unwrap()
        .spawn()
        .unwrap();
    let mut pids: BTreeSet<i32> = lab
        .nodes()
        .iter()
        .map(|n| n.agent.as_ref().unwrap().pid)
        .collect();
    pids.extend(
        lab.pods()
            .iter()
            .flat_map(|p| p.containers.iter().map(|c| c.process.as_ref().unwrap().pid)),
    );

    // Crash: agents killed, state file gone.
    for n in lab.nodes() {
        // SAFETY: kill(2) on the lab's own agent.
        unsafe { libc::kill(n.agent.as_ref().unwrap().pid, libc::SIGKILL) };
    }
    std::fs::remove_file(lab.dir().join("state.json")).unwrap();
    assert!(matches!(Lab::open(&name), Err(LabError::NoLab { .. })));
    let e = Lab::up(&spec(&name, 2)).unwrap_err();
    assert!(matches!(e, LabError::Exists { .. }), "{e}");

    let report = Lab::down(&name).unwrap();
    assert!(report.namespaces.len() >= 3 + 2, "{report:?}");
    let etcd = lab.state().etcd.clone().unwrap().process.unwrap();
    assert!(
        !ciliate_lab::sys::alive(&etcd),
        "etcd found and stopped without state"
    );
    let _ = stray.wait();
    std::thread::sleep(Duration::from_millis(100));
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "pid {pid} still runs: {stat}"
        );
    }
    assert_gone(&name);
    drop(lab);
}

#[test]
fn missing_lab_and_bad_names_are_clear() {
    if !root() {
        return;
    }
    let e = Lab::open(&lab_name('z')).unwrap_err().to_string();
    assert!(
        e.contains("does not exist") && e.contains("ciliate lab up"),
        "{e}"
    );
    let e = Lab::down("Bad-Name").unwrap_err().to_string();
    assert!(e.contains("lab name") && e.contains("Bad-Name"), "{e}");
    assert!(!Lab::down(&lab_name('z')).unwrap().found_anything());
}

/// The real thing: ciliate's CNI plugin and BPF datapath carry pod traffic.
#[test]
fn pods_talk_through_ciliate() {
    if !root() {
        return;
    }
    let name = lab_name('d');
    let mut lab = LabGuard::up(&spec(&name, 1)).unwrap();
    lab.apply_yaml(PODS).unwrap();
    let server = lab.pod("server").unwrap().clone();
    let client = lab.pod("client").unwrap().clone();
    let node = lab.node("node0").unwrap().clone();
    assert!(
        node.pod_cidr.unwrap().contains(&server.ip) && node.pod_cidr.unwrap().contains(&client.ip),
        "{server:?} {client:?}"
    );
    let status: ciliate_api::Status = lab.client("node0").unwrap().get("/v1/status").unwrap();
    let router = status.router_ip.to_string();
    let endpoints: Vec<ciliate_api::Endpoint> =
        lab.client("node0").unwrap().get("/v1/endpoint").unwrap();
    assert!(
        endpoints
            .iter()
            .any(|e| e.pod_name.as_deref() == Some("server") && e.ip == server.ip),
        "{endpoints:#?}"
    );

    let (s, c) = (server.ip.to_string(), client.ip.to_string());
    ok(
        &lab,
        "client",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &s],
    );
    ok(
        &lab,
        "client",
        &["ping", "-c", "1", "-W", "2", "192.168.10.100"],
    );
    ok(&lab, "client", &["ping", "-c", "1", "-W", "2", &router]);
    ok(&lab, "node0", &["ping", "-c", "1", "-W", "2", &c]);
    let page = eventually(
        &lab,
        "client",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            &format!("http://{s}:8080/"),
        ],
    );
    assert!(page.contains("Directory listing"), "{page}");
    let echo = eventually(
        &lab,
        "client",
        &[
            "sh",
            "-c",
            &format!("echo hello-udp | socat -T 2 - UDP4:{s}:9000"),
        ],
    );
    assert_eq!(echo.trim(), "hello-udp");
    // The node reaches the server over TCP too.
    eventually(
        &lab,
        "node0",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            &format!("http://{s}:8080/"),
        ],
    );

    // The connectivity test's drop watcher sees a drop the datapath makes:
    // a packet from an address that is not the pod's.
    let watcher = ciliate_lab::connectivity::DropWatcher::start("node0", &node.socket);
    ok(
        &lab,
        "client",
        &["ip", "addr", "add", "10.99.0.1/32", "dev", "eth0"],
    );
    let _ = lab
        .exec(
            "client",
            &["ping", "-c", "1", "-W", "1", "-I", "10.99.0.1", &s],
        )
        .unwrap();
    let (drops, errors) = watcher.stop();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        drops.iter().any(|d| d.node == "node0"
            && d.event.src == "10.99.0.1"
            && d.event.reason == "Invalid source ip"),
        "{drops:#?}"
    );

    assert!(lab.delete_pod("client").unwrap());
    let endpoints: Vec<ciliate_api::Endpoint> =
        lab.client("node0").unwrap().get("/v1/endpoint").unwrap();
    assert!(
        !endpoints
            .iter()
            .any(|e| e.pod_name.as_deref() == Some("client")),
        "{endpoints:#?}"
    );
    assert!(!client.netns_path.exists());

    // With the agent gone, ADD fails with the plugin's error and leaves nothing behind.
    let agent = node.agent.clone().unwrap();
    assert!(ciliate_lab::sys::kill_recorded(&agent), "it was running");
    assert!(!ciliate_lab::sys::alive(&agent));
    // A record of a process that is gone is not signalled again.
    assert!(!ciliate_lab::sys::kill_recorded(&agent));
    let late = "apiVersion: v1\nkind: Pod\nmetadata: {name: late}\nspec: {nodeName: node0, containers: [{name: c, command: [sleep, infinity]}]}\n";
    let e = lab.apply_yaml(late).unwrap_err();
    assert!(matches!(e, LabError::Cni { .. }), "{e}");
    assert!(
        e.to_string().contains("default/late") && e.to_string().contains("ADD"),
        "{e}"
    );
    assert!(lab.pods().iter().all(|p| p.name != "late"));
    assert!(!Path::new(&format!("/run/netns/{name}-pod-default-late")).exists());
    assert!(!lab.dir().join("pods/default_late").exists());
    let status = lab.status();
    assert!(!status.nodes[0].agent_alive && !status.nodes[0].agent_ready);

    lab.down().unwrap();
    assert_gone(&name);
}
