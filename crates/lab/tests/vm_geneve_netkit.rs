//! `tunnelProtocol: geneve` and `datapathMode: netkit` in a two-node lab,
//! beyond what the per-mode connectivity test (vm_modes) checks:
//! - Geneve: the nodes' `ciliate_geneve` is an external device on UDP 6081
//!   with the node MTU, pods get the node MTU less 50 and a full-size packet
//!   crosses unfragmented; what crosses the fabric is UDP 6081, never 8472;
//!   restarting the agents with `tunnelProtocol: vxlan` removes
//!   `ciliate_geneve` (and its pinned link) and the pods talk over 8472.
//! - netkit: the pod's pair is netkit in L2 mode with the peer blackholed
//!   by default, from_container pinned as the peer's policy and the primary
//!   passing;
//!   pods reach each other on one node, across nodes and through a
//!   ClusterIP, also while the node's agent is down; the plugin's CHECK
//!   passes; deleting a pod removes its pins.
//!
//! Geneve and netkit need a kernel the development machine lacks: this target
//! is `test = false` and runs in the VM (`cargo xtask vm-test`). Needs root,
//! etcd, tcpdump and the workspace's binaries (`cargo build --workspace --bins`).

mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::Duration;

use ciliate_datapath::netkit::{self, NetkitAttach};
use ciliate_datapath::netlink::Netlink;
use ciliate_lab::{DatapathMode, Lab, LabGuard, LabSpec, RoutingMode, TunnelProtocol};
use common::{ok, run, Capture, Packet};

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs, etcd in a namespace")
}

fn sleeper(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, command: [sleep, infinity]}}]}}\n"
    )
}

fn apply(lab: &mut Lab, yaml: &str) {
    lab.apply_yaml(yaml).expect("applying the manifest");
}

fn pod_ip(lab: &Lab, pod: &str) -> String {
    lab.pod(pod).unwrap().ip.to_string()
}

/// `ping` from a pod, which must be answered (a deadline, not a measurement).
fn pings(lab: &Lab, from: &str, to: &str, extra: &[&str]) {
    let mut argv = vec!["ping", "-n", "-q", "-c", "3", "-i", "0.3", "-w", "30"];
    argv.extend_from_slice(extra);
    argv.push(to);
    ok(lab, from, &argv);
}

/// `curl http://to/` from a pod: the body (the answering pod's name).
fn http(lab: &Lab, from: &str, to: &str) -> String {
    ok(
        lab,
        from,
        &["curl", "-sS", "--max-time", "20", &format!("http://{to}/")],
    )
    .trim()
    .to_string()
}

/// A link's kind in a node's namespace, `None` if there is no such device.
fn kind_of(lab: &Lab, node: &str, device: &str) -> Option<String> {
    Netlink::new_in(&lab.node(node).unwrap().netns_path)
        .unwrap()
        .link_by_name(device)
        .unwrap()
        .map(|l| l.kind.unwrap_or_default())
}

/// The UDP ports of the tunnel packets seen on node0's fabric side while a
/// pod on node0 pings a pod on node1.
fn tunnel_ports(lab: &Lab) -> Vec<u16> {
    let capture = Capture::start_on(lab, "node0", "eth0", "udp port 6081 or udp port 8472");
    pings(lab, "gp0", &pod_ip(lab, "gp1"), &[]);
    let packets: Vec<Packet> = capture.stop();
    let mut ports: Vec<u16> = packets
        .iter()
        .flat_map(|p| [p.sport, p.dport])
        .flatten()
        .filter(|port| [6081, 8472].contains(port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[test]
fn geneve_carries_pod_traffic_on_6081_and_a_restart_with_vxlan_switches_devices() {
    if !root() {
        return;
    }
    let spec = LabSpec {
        routing: RoutingMode::Tunnel,
        tunnel_protocol: TunnelProtocol::Geneve,
        agent_timeout: common::VM_AGENT_TIMEOUT,
        ..LabSpec::new(format!("gn{}", std::process::id()), 2)
    };
    let mut lab = LabGuard::up(&spec).expect("lab up");
    for node in ["node0", "node1"] {
        assert_eq!(
            kind_of(&lab, node, "ciliate_geneve").as_deref(),
            Some("geneve")
        );
        assert_eq!(
            kind_of(&lab, node, "ciliate_vxlan"),
            None,
            "{node}: no VXLAN device"
        );
        let d = ok(&lab, node, &["ip", "-d", "link", "show", "ciliate_geneve"]);
        assert!(
            d.contains("geneve external") && d.contains("dstport 6081") && d.contains("mtu 1500"),
            "{node}: an external Geneve device on 6081 with the node MTU: {d}"
        );
    }
    apply(
        &mut lab,
        &(sleeper("gp0", "node0") + "---\n" + &sleeper("gp1", "node1")),
    );
    let eth0 = Netlink::new_in(&lab.pod("gp0").unwrap().netns_path)
        .unwrap()
        .link_by_name("eth0")
        .unwrap()
        .expect("the pod's eth0");
    assert_eq!(
        eth0.mtu, 1450,
        "pods get the node MTU less Geneve's 50 bytes"
    );

    // Pods on two nodes, with a full-size packet (1450 bytes: 1422 of
    // payload) that must not be fragmented: 1500 on the wire.
    pings(
        &lab,
        "gp0",
        &pod_ip(&lab, "gp1"),
        &["-M", "do", "-s", "1422"],
    );
    pings(&lab, "gp1", &pod_ip(&lab, "gp0"), &[]);
    assert_eq!(
        tunnel_ports(&lab),
        vec![6081],
        "the fabric carries Geneve only"
    );

    // Both agents restart with VXLAN: the Geneve device and its pinned link
    // go, ciliate_vxlan comes, and the same pods talk over 8472.
    for node in ["node0", "node1"] {
        lab.kill_agent(node).unwrap();
        let path = lab.node(node).unwrap().config.clone();
        let mut config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["tunnelProtocol"] = serde_yaml::Value::String("vxlan".into());
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        lab.start_agent(node, common::VM_AGENT_TIMEOUT).unwrap();
    }
    for node in ["node0", "node1"] {
        assert_eq!(
            kind_of(&lab, node, "ciliate_geneve"),
            None,
            "{node}: Geneve device removed"
        );
        assert_eq!(
            kind_of(&lab, node, "ciliate_vxlan").as_deref(),
            Some("vxlan")
        );
        let links = lab.node(node).unwrap().bpf_root.join("links");
        assert!(
            !links.join("ciliate_geneve-from_overlay").exists(),
            "{node}: the Geneve device's link pin is gone"
        );
        assert!(links.join("ciliate_vxlan-from_overlay").exists(), "{node}");
    }
    pings(
        &lab,
        "gp0",
        &pod_ip(&lab, "gp1"),
        &["-M", "do", "-s", "1422"],
    );
    assert_eq!(
        tunnel_ports(&lab),
        vec![8472],
        "the fabric carries VXLAN only"
    );
    lab.down().expect("lab down");
}

/// The host device (`lxc...`) of the endpoint with `ip` on `node`.
fn host_device(lab: &Lab, node: &str, ip: Ipv4Addr) -> String {
    let endpoints: Vec<ciliate_api::Endpoint> =
        lab.client(node).unwrap().get("/v1/endpoint").unwrap();
    let ep = endpoints
        .into_iter()
        .find(|e| e.ip == ip)
        .unwrap_or_else(|| panic!("no endpoint for {ip} on {node}"));
    assert_eq!(ep.datapath_mode, ciliate_api::DatapathMode::Netkit);
    ep.host_ifname
}

/// Runs the plugin's CHECK for `pod` as the runtime would: in the pod's
/// node, with the result of ADD as `prevResult`.
fn cni_check(lab: &Lab, pod: &str) -> std::process::Output {
    use std::io::Write as _;
    let info = lab.pod(pod).unwrap().clone();
    let node = lab.node(&info.node).unwrap();
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&node.conflist).unwrap()).unwrap();
    let config =
        ciliate_lab::cni::plugin_config(&list, &list["plugins"][0], info.cni_result.as_ref());
    let bin_dir = lab.state().bin_dir.clone();
    let plugin = bin_dir.join("ciliate-cni").to_string_lossy().into_owned();
    let mut child = lab
        .command(&info.node, &[plugin])
        .unwrap()
        .env("CNI_COMMAND", "CHECK")
        .env("CNI_CONTAINERID", &info.container_id)
        .env("CNI_NETNS", &info.netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &bin_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&config).unwrap())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn netkit_pods_talk_on_one_node_across_nodes_and_through_a_cluster_ip_with_or_without_the_agent() {
    if !root() {
        return;
    }
    let spec = LabSpec {
        routing: RoutingMode::Native,
        datapath_mode: DatapathMode::Netkit,
        agent_timeout: common::VM_AGENT_TIMEOUT,
        ..LabSpec::new(format!("nk{}", std::process::id()), 2)
    };
    let mut lab = LabGuard::up(&spec).expect("lab up");
    let server = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: ns0, labels: {{app: nk}}}}\n\
         spec:\n  nodeName: node0\n  containers:\n\
         \x20 - {{name: http, command: [python3, -c, \"{}\"]}}\n",
        ciliate_lab::connectivity::name_server(8080)
    );
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: nk}\n\
                   spec: {type: ClusterIP, selector: {app: nk}, ports: [{port: 80, targetPort: 8080}]}\n";
    apply(
        &mut lab,
        &[
            server.as_str(),
            &sleeper("nc0", "node0"),
            &sleeper("nc1", "node1"),
            service,
        ]
        .join("---\n"),
    );

    // The pods' pairs are netkit: the peer in the pod, the primary on the
    // node, L2, the peer blackholed unless a program decides, and
    // from_container pinned as the peer's policy.
    for (pod, node) in [("ns0", "node0"), ("nc0", "node0"), ("nc1", "node1")] {
        let info = lab.pod(pod).unwrap().clone();
        let eth0 = Netlink::new_in(&info.netns_path)
            .unwrap()
            .link_by_name("eth0")
            .unwrap()
            .expect("the pod's eth0");
        assert_eq!(eth0.kind.as_deref(), Some("netkit"), "{pod}");
        let d = ok(&lab, pod, &["ip", "-d", "link", "show", "eth0"]);
        assert!(d.contains("netkit"), "{pod}: ip -d link: {d}");
        let device = host_device(&lab, node, info.ip);
        let node_nl = Netlink::new_in(&lab.node(node).unwrap().netns_path).unwrap();
        let primary = node_nl.link_by_name(&device).unwrap().expect("the primary");
        let nk = node_nl.netkit_info(primary.index).unwrap().expect("netkit");
        assert!(nk.primary && nk.l2, "{pod}: {nk:?}");
        assert_eq!(
            nk.peer_policy,
            Some(2),
            "{pod}: the peer blackholes by default"
        );
        let links = lab.node(node).unwrap().bpf_root.join("links");
        // The link is named by the device its program runs on: the peer
        // (eth0, by its index in the pod). The primary keeps its default
        // policy: what the node sends to pods is from_host's.
        let fd = netkit::open_pinned(&links.join(format!("{device}-from_container")))
            .unwrap_or_else(|e| panic!("{pod}: from_container's link pin: {e}"));
        let link = netkit::link_info(fd.as_fd()).unwrap();
        assert_eq!(
            link.netkit,
            Some((eth0.index, Some(NetkitAttach::Peer))),
            "{pod}: from_container"
        );
        assert_eq!(nk.policy, Some(0), "{pod}: the primary passes");
        assert!(!links.join(format!("{device}-to_container")).exists());
    }

    // The plugin's CHECK finds what ADD made, netkit specifics included.
    let check = cni_check(&lab, "nc1");
    assert!(
        check.status.success(),
        "CHECK of a netkit pod: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    lab.wait_services_programmed(Duration::from_mins(2))
        .expect("the agents program the service");
    let vip = ciliate_lab::services::cluster_ip(&lab.service("nk").unwrap().expect("stored"))
        .expect("a clusterIP")
        .to_string();
    let server_ip = pod_ip(&lab, "ns0");
    let reach_all = |lab: &Lab, when: &str| {
        for client in ["nc0", "nc1"] {
            pings(lab, client, &server_ip, &[]);
            assert_eq!(
                http(lab, client, &format!("{server_ip}:8080")),
                "ns0",
                "{client} -> pod {when}"
            );
            assert_eq!(
                http(lab, client, &vip),
                "ns0",
                "{client} -> ClusterIP {when}"
            );
        }
        pings(lab, "ns0", &pod_ip(lab, "nc1"), &[]);
    };
    reach_all(&lab, "with the agents");

    // node0's agent down: the pinned links keep its pods' traffic flowing.
    lab.kill_agent("node0").unwrap();
    reach_all(&lab, "while node0's agent is down");
    lab.start_agent("node0", common::VM_AGENT_TIMEOUT).unwrap();
    reach_all(&lab, "after node0's agent restarted");

    // Deleting a pod removes its pair and its pins.
    let device = host_device(&lab, "node0", lab.pod("nc0").unwrap().ip);
    assert!(lab.delete_pod("nc0").unwrap());
    assert_eq!(kind_of(&lab, "node0", &device), None, "the pair is gone");
    let links = lab.node("node0").unwrap().bpf_root.join("links");
    assert!(
        !links.join(format!("{device}-from_container")).exists(),
        "{device}-from_container unpinned"
    );
    let out = run(&lab, "nc1", &["true"]);
    assert!(out.status.success());
    lab.down().expect("lab down");
}
