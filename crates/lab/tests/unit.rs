//! Pure logic of the lab: manifests, names, state, CNI plumbing, planning.
//! No root needed.

use std::net::Ipv4Addr;

use ciliate_lab::manifest::{self, Object};
use ciliate_lab::{
    cni, connectivity, lab, names, IpamMode, LabError, LabSpec, LabState, RoutingMode,
};
use serde_json::json;

const PODS: &str = include_str!("../../../examples/pods.yaml");

#[test]
fn parses_the_example_pods() {
    let m = manifest::parse(PODS).unwrap();
    let pods: Vec<_> = m.pods().collect();
    assert_eq!(pods.len(), 2);
    let server = pods.iter().find(|p| p.name == "server").unwrap();
    assert_eq!(server.namespace, "default");
    assert_eq!(server.node_name.as_deref(), Some("node0"));
    assert_eq!(server.containers.len(), 2);
    assert_eq!(
        server.containers[0].argv[..3],
        ["python3", "-m", "http.server"]
    );
    assert_eq!(server.containers[0].working_dir.as_deref(), Some("/tmp"));
    let client = pods.iter().find(|p| p.name == "client").unwrap();
    assert_eq!(client.containers[0].argv, ["sleep", "infinity"]);
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}

#[test]
fn command_args_env_and_defaults() {
    let m = manifest::parse(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  hostNetwork: true
  containers:
  - name: main
    command: [sh, -c]
    args: ["echo $(GREETING) $$(GREETING)"]
    env: [{name: GREETING, value: hi}]
  - name: idle
    image: nginx
"#,
    )
    .unwrap();
    let pod = m.pods().next().unwrap();
    assert_eq!(pod.namespace, "default");
    assert_eq!(pod.node_name, None);
    assert!(pod.host_network);
    assert_eq!(pod.containers[0].argv, ["sh", "-c", "echo hi $(GREETING)"]);
    assert_eq!(
        pod.containers[0].env,
        [("GREETING".to_string(), "hi".to_string())]
    );
    assert!(pod.containers[1].argv.is_empty());
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains("idle") && w.contains("no command")),
        "{:?}",
        m.warnings
    );
}

#[test]
fn other_kinds_are_skipped_and_lists_expanded() {
    let m = manifest::parse(
        r"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: team-a}
  spec: {containers: [{name: c, command: [sleep, '1']}]}
",
    )
    .unwrap();
    assert_eq!(m.objects.len(), 2);
    assert!(
        matches!(&m.objects[0], Object::Skipped { kind, name } if kind == "Deployment" && name == "web")
    );
    assert!(matches!(&m.objects[1], Object::Pod(p) if p.key() == "team-a/a"));
    assert!(
        m.warnings[0].contains("skipping Deployment web"),
        "{:?}",
        m.warnings
    );
}

fn manifest_error(text: &str) -> String {
    match manifest::parse(text) {
        Err(e @ LabError::Manifest { .. }) => e.to_string(),
        other => panic!("expected a manifest error, got {other:?}"),
    }
}

#[test]
fn bad_manifests_name_the_document_and_field() {
    let e = manifest_error("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, command: 5}]}\n");
    assert!(
        e.contains("document 1") && e.contains("spec.containers[0].command"),
        "{e}"
    );

    let e = manifest_error("a: [\n");
    assert!(e.contains("not valid YAML"), "{e}");

    let e = manifest_error("---\nkind: Pod\nmetadata: {name: x}\n");
    assert!(e.contains("apiVersion: missing"), "{e}");

    let e = manifest_error("apiVersion: v1\nmetadata: {name: x}\n");
    assert!(e.contains("kind: missing"), "{e}");

    let e = manifest_error(
        "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n",
    );
    assert!(e.contains("apiVersion") && e.contains("allowed: v1"), "{e}");

    let e = manifest_error(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c}]}\n",
    );
    assert!(
        e.contains("metadata.name") && e.contains("Bad_Name") && e.contains("DNS subdomain"),
        "{e}"
    );

    let e =
        manifest_error("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n");
    assert!(
        e.contains("spec.containers") && e.contains("at least one"),
        "{e}"
    );

    let e = manifest_error("- 1\n- 2\n");
    assert!(e.contains("found a list"), "{e}");

    let twice = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c}]}\n";
    let e = manifest_error(&format!("{twice}---\n{twice}"));
    assert!(e.contains("appears twice"), "{e}");
}

#[test]
fn lab_names() {
    for ok in ["ciliate", "t123a", "a"] {
        names::validate_lab_name(ok).unwrap();
    }
    for bad in ["", "Lab", "my-lab", "1lab", "a_b", "abcdefghijklmnopqrstu"] {
        let e = names::validate_lab_name(bad).unwrap_err().to_string();
        assert!(
            e.contains("lab name") && e.contains(&format!("{bad:?}")),
            "{e}"
        );
    }
}

#[test]
fn derived_names() {
    let id = names::container_id("lab", "default", "web");
    assert_eq!(id.len(), 64);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(id, names::container_id("lab", "default", "web"));
    assert_ne!(id, names::container_id("lab2", "default", "web"));

    assert_eq!(
        names::pod_netns("lab", "default", "web", false),
        "lab-pod-default-web"
    );
    let long = "a".repeat(200);
    let n = names::pod_netns("lab", "default", &long, false);
    assert!(
        n.len() <= names::MAX_POD_NETNS && n.starts_with("lab-pod-default-aaa"),
        "{n}"
    );
    assert_ne!(
        n,
        names::pod_netns("lab", "default", &format!("{long}b"), false)
    );
    // The two pods whose plain names meet get distinct hashed names.
    assert_eq!(
        names::pod_netns("l", "a-b", "c", false),
        names::pod_netns("l", "a", "b-c", false)
    );
    assert_ne!(
        names::pod_netns("l", "a-b", "c", true),
        names::pod_netns("l", "a", "b-c", true)
    );
    assert!(names::pod_netns("l", "a", "b-c", true).starts_with("l-pod-a-b-c-"));

    assert_eq!(names::node_netns("lab", "node0"), "lab-node0");
    assert_eq!(names::health_netns("lab", "node0"), "lab-node0-health");
    assert!(names::node_netns("lab", "node0").starts_with(&names::netns_prefix("lab")));
}

#[test]
fn plan_addresses_and_cidrs() {
    let plan = LabSpec::new("x", 3).plan().unwrap();
    let got: Vec<_> = plan
        .iter()
        .map(|(n, a, c)| (n.as_str(), a.to_string(), c.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("node0", "192.168.10.100/24".into(), "172.20.0.0/24".into()),
            ("node1", "192.168.10.101/24".into(), "172.20.1.0/24".into()),
            ("node2", "192.168.10.102/24".into(), "172.20.2.0/24".into()),
        ]
    );
    let e = LabSpec::new("x", 0).plan().unwrap_err().to_string();
    assert!(e.contains("--nodes") && e.contains("1 to"), "{e}");
    let e = LabSpec::new("x", 200).plan().unwrap_err().to_string();
    assert!(e.contains("--nodes"), "{e}");
    let e = LabSpec::new("bad-name", 1).plan().unwrap_err().to_string();
    assert!(e.contains("lab name"), "{e}");
}

#[test]
fn state_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LabSpec::new("rt", 2);
    let plan = spec.plan().unwrap();
    let nodes = plan
        .iter()
        .enumerate()
        .map(|(i, (name, address, cidr))| ciliate_lab::NodeInfo {
            name: name.clone(),
            index: i,
            netns: names::node_netns("rt", name),
            netns_path: format!("/run/netns/rt-{name}").into(),
            address: *address,
            pod_cidr: Some(*cidr),
            dir: dir.path().join(name),
            socket: dir.path().join(name).join("ciliate.sock"),
            config: dir.path().join(name).join("agent.yaml"),
            conflist: dir.path().join(name).join("net.d/05-ciliate.conflist"),
            bpf_root: dir.path().join("bpffs").join(name),
            health_netns: names::health_netns("rt", name),
            agent: Some(ciliate_lab::ProcessRecord {
                pid: 42,
                start_time: 7,
                argv: vec!["ciliate-agent".into()],
                log: "/x".into(),
            }),
        })
        .collect();
    let state = LabState {
        version: ciliate_lab::state::STATE_VERSION,
        name: "rt".into(),
        dir: dir.path().to_owned(),
        fabric_netns: "rt-fabric".into(),
        fabric_cidr: spec.fabric_cidr,
        bpffs: dir.path().join("bpffs"),
        bin_dir: "/bin".into(),
        cni_path: "/a:/b".into(),
        routing: RoutingMode::Native,
        ipam: IpamMode::ClusterPool,
        etcd: Some(ciliate_lab::EtcdInfo {
            endpoint: spec.etcd_endpoint(),
            data_dir: dir.path().join("etcd"),
            binary: "/usr/bin/etcd".into(),
            process: None,
        }),
        operator: Some(ciliate_lab::OperatorInfo {
            config: dir.path().join("operator.yaml"),
            log: dir.path().join("operator.log"),
            process: None,
        }),
        nodes,
        pods: vec![ciliate_lab::PodInfo {
            namespace: "default".into(),
            name: "web".into(),
            node: "node1".into(),
            netns: "rt-pod-default-web".into(),
            netns_path: "/run/netns/rt-pod-default-web".into(),
            container_id: names::container_id("rt", "default", "web"),
            ip: Ipv4Addr::new(172, 20, 1, 5),
            host_network: false,
            cni_result: Some(json!({"ips": [{"address": "172.20.1.5/24"}]})),
            spec_hash: "abc".into(),
            dir: dir.path().join("pods/default_web"),
            containers: vec![ciliate_lab::ContainerInfo {
                name: "c".into(),
                process: None,
            }],
            condition: ciliate_lab::PodCondition::Terminating,
        }],
        router: Some(ciliate_lab::RouterInfo {
            netns: names::router_netns("rt"),
            netns_path: "/run/netns/rt-router".into(),
            address: "192.168.10.200/24".parse().unwrap(),
            networks: ciliate_lab::fabric::outside_networks(),
            server: None,
        }),
        kube_proxy_replacement: true,
        masquerade: ciliate_lab::Masquerade::Iptables,
        tunnel_protocol: ciliate_lab::TunnelProtocol::Geneve,
        datapath_mode: ciliate_lab::DatapathMode::Netkit,
        next_node: 3,
    };
    state.save(dir.path()).unwrap();
    let back = LabState::load(dir.path()).unwrap();
    assert_eq!(back, state);
    assert_eq!(
        back.node("node1").unwrap().ip(),
        Ipv4Addr::new(192, 168, 10, 101)
    );
    assert_eq!(back.pod("default", "web").unwrap().key(), "default/web");

    std::fs::write(LabState::path(dir.path()), "{not json").unwrap();
    let e = LabState::load(dir.path()).unwrap_err();
    assert!(matches!(e, LabError::State { .. }), "{e}");
}

#[test]
fn plugin_config_is_injected_like_libcni() {
    let list = json!({"cniVersion": "1.1.0", "name": "ciliate", "plugins": [{"type": "ciliate", "socketPath": "/s"}]});
    let plugin = &list["plugins"][0];
    let first = cni::plugin_config(&list, plugin, None);
    assert_eq!(
        first,
        json!({"type": "ciliate", "socketPath": "/s", "name": "ciliate", "cniVersion": "1.1.0"})
    );
    let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "172.20.0.9/32"}]});
    let second = cni::plugin_config(&list, plugin, Some(&prev));
    assert_eq!(second["prevResult"], prev);
    assert_eq!(cni::result_ipv4(&prev), Some(Ipv4Addr::new(172, 20, 0, 9)));
    assert_eq!(cni::result_ipv4(&json!({"ips": []})), None);

    let conflist = cni::conflist("/n/ciliate.sock".as_ref(), "/n/cni.log".as_ref());
    assert_eq!(
        conflist,
        json!({"cniVersion": "1.1.0", "name": "ciliate",
               "plugins": [{"type": "ciliate", "socketPath": "/n/ciliate.sock", "logFile": "/n/cni.log"}]})
    );
}

#[test]
fn cni_args_and_plugin_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("ciliate");
    std::fs::write(&bin, "").unwrap();
    let path = format!("/nonexistent:{}", dir.path().display());
    assert_eq!(cni::find_plugin(&path, "ciliate"), Some(bin));
    assert_eq!(cni::find_plugin(&path, "bridge"), None);
    assert_eq!(cni::find_plugin(&path, "../ciliate"), None);

    let inv = cni::Invocation {
        pod: "default/web",
        pod_namespace: "default",
        pod_name: "web",
        container_id: "abc",
        netns_path: "/run/netns/x".as_ref(),
        ifname: "eth0",
        cni_path: &path,
        runtime_netns: "/run/netns/y".as_ref(),
    };
    assert_eq!(
        inv.cni_args(),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc"
    );
}

fn node_of(spec: &LabSpec) -> ciliate_lab::NodeInfo {
    let (name, address, cidr) = spec.plan().unwrap().remove(0);
    ciliate_lab::NodeInfo {
        netns: names::node_netns("cfg", &name),
        netns_path: "/run/netns/cfg-node0".into(),
        address,
        pod_cidr: (spec.ipam == IpamMode::HostScope).then_some(cidr),
        dir: "/run/ciliate-lab/cfg/node0".into(),
        socket: "/run/ciliate-lab/cfg/node0/ciliate.sock".into(),
        config: "/run/ciliate-lab/cfg/node0/agent.yaml".into(),
        conflist: "/c".into(),
        bpf_root: "/run/ciliate-lab/cfg/bpffs/node0".into(),
        health_netns: names::health_netns("cfg", &name),
        agent: None,
        index: 0,
        name,
    }
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn agent_config_host_scope_merges_extra_keys() {
    let mut spec = LabSpec::new("cfg", 1);
    spec.ipam = IpamMode::HostScope;
    spec.agent_config = serde_yaml::from_str("debug: true\nbpf: {mapSize: 10}\n").unwrap();
    let config = lab::agent_config(&node_of(&spec), &spec, Some("http://192.168.10.1:2379"));
    assert_eq!(
        config,
        yaml(
            "nodeName: node0
ipv4Range: 172.20.0.0/24
routingMode: tunnel
tunnelProtocol: vxlan
datapathMode: veth
enableIPv4Masquerade: true
bpf: {root: /run/ciliate-lab/cfg/bpffs/node0, masquerade: true, mapSize: 10}
stateDir: /run/ciliate-lab/cfg/node0/state
socketPath: /run/ciliate-lab/cfg/node0/ciliate.sock
healthNetns: cfg-node0-health
debug: true
"
        )
    );
}

#[test]
fn agent_config_cluster_pool_tunnel_and_native() {
    let spec = LabSpec::new("cfg", 3);
    assert_eq!(spec.ipam, IpamMode::ClusterPool);
    assert_eq!(spec.routing, RoutingMode::Tunnel);
    assert_eq!(LabSpec::default().nodes, 3);
    let endpoint = spec.etcd_endpoint();
    assert_eq!(endpoint, "http://192.168.10.1:2379");
    let common = "nodeName: node0
ipam: {mode: cluster-pool}
etcd: {endpoints: [\"http://192.168.10.1:2379\"]}
devices: [eth0]
enableIPv4Masquerade: true
bpf: {root: /run/ciliate-lab/cfg/bpffs/node0, masquerade: true}
ipMasqAgent: {enabled: true, config: {nonMasqueradeCIDRs: []}}
stateDir: /run/ciliate-lab/cfg/node0/state
socketPath: /run/ciliate-lab/cfg/node0/ciliate.sock
healthNetns: cfg-node0-health
";
    let tunnel = lab::agent_config(&node_of(&spec), &spec, Some(&endpoint));
    assert_eq!(
        tunnel,
        yaml(&format!(
            "{common}routingMode: tunnel\ntunnelProtocol: vxlan\ndatapathMode: veth\n"
        ))
    );

    let native = LabSpec {
        routing: RoutingMode::Native,
        ..spec
    };
    let config = lab::agent_config(&node_of(&native), &native, Some(&endpoint));
    assert_eq!(
        config,
        yaml(&format!(
            "{common}routingMode: native\ndatapathMode: veth\nautoDirectNodeRoutes: true\nipv4NativeRoutingCIDR: 172.20.0.0/16\n"
        ))
    );
}

#[test]
fn datapath_modes_and_tunnel_protocols_reach_the_agents_and_bad_pairs_are_refused() {
    use ciliate_lab::{DatapathMode, TunnelProtocol};
    let endpoint = "http://192.168.10.1:2379";
    let spec = LabSpec {
        tunnel_protocol: TunnelProtocol::Geneve,
        datapath_mode: DatapathMode::Netkit,
        ..LabSpec::new("cfg", 2)
    };
    let c = lab::agent_config(&node_of(&spec), &spec, Some(endpoint));
    assert_eq!(c["tunnelProtocol"], yaml("geneve"));
    assert_eq!(c["datapathMode"], yaml("netkit"));
    let spec = LabSpec {
        routing: RoutingMode::Native,
        datapath_mode: DatapathMode::Ipvlan,
        ..LabSpec::new("cfg", 2)
    };
    let c = lab::agent_config(&node_of(&spec), &spec, Some(endpoint));
    assert_eq!(c["datapathMode"], yaml("ipvlan"));
    assert!(c.get("tunnelProtocol").is_none(), "{c:?}");
    assert!(spec.plan().is_ok());

    let err = LabSpec {
        datapath_mode: DatapathMode::Ipvlan,
        ..LabSpec::new("cfg", 2)
    }
    .plan()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--datapath-mode")
            && err.contains("ipvlan")
            && err.contains("--routing native"),
        "{err}"
    );
    let err = LabSpec {
        routing: RoutingMode::Native,
        tunnel_protocol: TunnelProtocol::Geneve,
        ..LabSpec::new("cfg", 2)
    }
    .plan()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--tunnel-protocol") && err.contains("geneve"),
        "{err}"
    );
}

#[test]
fn agent_config_masquerade_modes() {
    use ciliate_lab::Masquerade::{Bpf, Iptables, Off};
    let endpoint = "http://192.168.10.1:2379";
    let get = |m: ciliate_lab::Masquerade, ipam: IpamMode, routing: RoutingMode| {
        let spec = LabSpec {
            masquerade: m,
            ipam,
            routing,
            ..LabSpec::new("cfg", 2)
        };
        lab::agent_config(&node_of(&spec), &spec, Some(endpoint))
    };
    let c = get(Iptables, IpamMode::ClusterPool, RoutingMode::Tunnel);
    assert_eq!(c["enableIPv4Masquerade"], yaml("true"));
    assert_eq!(c["bpf"]["masquerade"], yaml("false"));
    assert_eq!(
        c["ipMasqAgent"],
        yaml("{enabled: true, config: {nonMasqueradeCIDRs: []}}")
    );
    let c = get(Off, IpamMode::ClusterPool, RoutingMode::Tunnel);
    assert_eq!(c["enableIPv4Masquerade"], yaml("false"));
    assert!(c["bpf"].get("masquerade").is_none(), "{c:?}");
    assert!(c.get("ipMasqAgent").is_none(), "{c:?}");
    // Host-scope agents have no store to read the ConfigMap from; native
    // routing always says what is inside the cluster.
    let c = get(Bpf, IpamMode::HostScope, RoutingMode::Native);
    assert!(c.get("ipMasqAgent").is_none(), "{c:?}");
    assert!(c.get("autoDirectNodeRoutes").is_none(), "{c:?}");
    assert_eq!(c["ipv4NativeRoutingCIDR"], yaml("172.20.0.0/16"));
    assert_eq!(c["bpf"]["masquerade"], yaml("true"));
}

#[test]
fn manifest_takes_config_maps_and_the_ip_masq_agent_helper_writes_one() {
    let text = ciliate_lab::configmaps::ip_masq_agent_yaml(&["10.10.1.0/24", "10.10.2.0/24"]);
    let m = manifest::parse(&text).unwrap();
    let [manifest::Object::ConfigMap(map)] = m.objects.as_slice() else {
        panic!("one ConfigMap: {:?}", m.objects);
    };
    assert_eq!(
        ciliate_lab::services::key_of(&map.metadata),
        ciliate_lab::configmaps::IP_MASQ_AGENT
    );
    let config = &map.data.as_ref().unwrap()["config"];
    let parsed: serde_json::Value = serde_json::from_str(config).unwrap();
    assert_eq!(
        parsed,
        json!({"nonMasqueradeCIDRs": ["10.10.1.0/24", "10.10.2.0/24"]})
    );
    // Default namespace, and a wrong apiVersion named.
    let m = manifest::parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap();
    let [manifest::Object::ConfigMap(map)] = m.objects.as_slice() else {
        panic!("one ConfigMap");
    };
    assert_eq!(map.metadata.namespace.as_deref(), Some("default"));
    let e = manifest::parse("apiVersion: v2\nkind: ConfigMap\nmetadata: {name: x}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ConfigMap") && e.contains("v2"), "{e}");
}

#[test]
fn router_answers_are_parsed_and_exclusions_matched() {
    use ciliate_lab::outside::{client_address, excluded_by};
    assert_eq!(
        client_address("client 192.168.10.100\n"),
        Some(Ipv4Addr::new(192, 168, 10, 100))
    );
    assert_eq!(client_address("hello"), None);
    let state = ciliate_api::IpMasqState {
        enabled: true,
        source: "configmap kube-system/ip-masq-agent".into(),
        cidrs: vec!["10.10.1.0/24".into()],
        ..Default::default()
    };
    assert_eq!(
        excluded_by(&state, Ipv4Addr::new(10, 10, 1, 200)).as_deref(),
        Some("10.10.1.0/24")
    );
    assert_eq!(excluded_by(&state, Ipv4Addr::new(10, 10, 2, 200)), None);
    assert!(excluded_by(&state, Ipv4Addr::new(169, 254, 1, 1)).is_some());
    let off = ciliate_api::IpMasqState {
        enabled: false,
        ..state
    };
    assert_eq!(excluded_by(&off, Ipv4Addr::new(10, 10, 1, 200)), None);
}

#[test]
fn operator_config_names_the_store_and_pool() {
    let spec = LabSpec::new("cfg", 3);
    assert_eq!(
        lab::operator_config(&spec),
        yaml(
            "etcd: {endpoints: [\"http://192.168.10.1:2379\"]}
clusterPoolIPv4PodCIDRList: [172.20.0.0/16]
clusterPoolIPv4MaskSize: 24
"
        )
    );
}

#[test]
fn the_fabric_keeps_its_first_address_for_the_outside_host() {
    let spec = LabSpec::new("x", 3);
    assert_eq!(spec.fabric_gateway().to_string(), "192.168.10.1/24");
    let e = LabSpec {
        node_host_offset: 1,
        ..LabSpec::new("x", 3)
    }
    .plan()
    .unwrap_err()
    .to_string();
    assert!(e.contains("fabric CIDR"), "{e}");
}

#[test]
fn the_store_gets_the_pod_as_running() {
    let m = manifest::parse(PODS).unwrap();
    let server = m.pods().find(|p| p.name == "server").unwrap();
    let info = ciliate_lab::PodInfo {
        namespace: "default".into(),
        name: "server".into(),
        node: "node1".into(),
        netns: "x".into(),
        netns_path: "/x".into(),
        container_id: "id".into(),
        ip: Ipv4Addr::new(172, 20, 1, 9),
        host_network: false,
        cni_result: None,
        spec_hash: server.spec_hash.clone(),
        dir: "/x".into(),
        containers: vec![],
        condition: ciliate_lab::PodCondition::Ready,
    };
    let pod = lab::pod_object(server, &info, Ipv4Addr::new(192, 168, 10, 101));
    let json = serde_json::to_value(&pod).unwrap();
    assert_eq!(json["metadata"]["name"], "server");
    assert_eq!(json["metadata"]["labels"]["app"], "server");
    assert_eq!(json["spec"]["nodeName"], "node1");
    assert_eq!(json["spec"]["containers"][1]["name"], "echo");
    assert_eq!(
        json["status"],
        json!({"phase": "Running", "podIP": "172.20.1.9", "podIPs": [{"ip": "172.20.1.9"}],
               "hostIP": "192.168.10.101", "hostIPs": [{"ip": "192.168.10.101"}],
               "conditions": [{"type": "Ready", "status": "True"}]})
    );
}

#[test]
fn connectivity_pods_and_test_selection() {
    let nodes: Vec<String> = ["node0", "node1", "node2"].map(String::from).to_vec();
    let m = manifest::parse(&connectivity::manifest(&nodes)).unwrap();
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let placed: Vec<(String, Option<String>)> =
        m.pods().map(|p| (p.key(), p.node_name.clone())).collect();
    assert_eq!(
        placed,
        [
            ("ciliate-test/client".to_string(), Some("node0".to_string())),
            ("ciliate-test/echo-same-node".into(), Some("node0".into())),
            ("ciliate-test/echo-other-node".into(), Some("node1".into())),
        ]
    );
    let echo = m.pods().nth(1).unwrap();
    let commands: Vec<String> = echo.containers.iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(
        commands,
        [
            format!("python3 -c {}", connectivity::name_server(8080)),
            "socat TCP4-LISTEN:9000,fork,reuseaddr EXEC:cat".into(),
            "socat UDP4-RECVFROM:9000,fork EXEC:cat".into(),
        ]
    );
    // One node: no echo-other-node.
    let one = manifest::parse(&connectivity::manifest(&nodes[..1])).unwrap();
    assert_eq!(one.pods().count(), 2);

    assert_eq!(connectivity::select(&[]).unwrap(), connectivity::SCENARIOS);
    assert_eq!(
        connectivity::select(&["other-node".into(), "health".into()]).unwrap(),
        ["pod-to-pod-other-node", "health"]
    );
    let e = connectivity::select(&["nope".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--test") && e.contains("nope") && e.contains("pod-to-host"),
        "{e}"
    );
}

#[test]
fn missing_binaries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = ciliate_lab::find_bin_dir(Some(dir.path()), &["ciliate-agent"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ciliate-agent") && e.contains(&dir.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn a_skipped_scenario_is_not_a_pass_and_fails_when_asked_for() {
    use connectivity::{judge, Action, Outcome, Report, ScenarioResult};
    let one_node = || Err("the lab has one node; it needs two".to_string());
    // The default run: skipped, and said so.
    let (outcome, actions) = judge("pod-to-pod-other-node", one_node(), false);
    assert!(matches!(&outcome, Outcome::Skipped { reason } if reason.contains("one node")));
    assert!(actions.is_empty());
    // Asked for with --test: a failure naming why.
    let (asked, actions) = judge("pod-to-pod-other-node", one_node(), true);
    assert_eq!(asked, Outcome::Failed);
    let error = actions[0].error.as_deref().unwrap();
    assert!(
        actions[0].name.contains("--test") && error.contains("one node"),
        "{actions:?}"
    );
    let ok = Action::once("ping".into(), None);
    let bad = Action::once("curl".into(), Some("exit 28".into()));
    assert_eq!(judge("x", Ok(vec![ok.clone()]), true).0, Outcome::Passed);
    assert_eq!(
        judge("x", Ok(vec![ok.clone(), bad]), false).0,
        Outcome::Failed
    );

    let result = |name: &str, outcome: Outcome| ScenarioResult {
        name: name.into(),
        outcome,
        actions: Vec::new(),
        drops: Vec::new(),
        monitor_errors: Vec::new(),
    };
    let report = Report {
        results: vec![
            result("pod-to-pod-same-node", Outcome::Passed),
            result("pod-to-pod-other-node", outcome),
        ],
        kvstore: Vec::new(),
    };
    assert!(report.passed());
    let summary = report.summary();
    assert!(
        summary.contains("1 of 2 tests passed")
            && summary.contains("1 skipped (pod-to-pod-other-node: the lab has one node"),
        "{summary}"
    );
    let report = Report {
        results: vec![
            result("pod-to-pod-same-node", Outcome::Passed),
            result("pod-to-pod-other-node", asked),
        ],
        kvstore: Vec::new(),
    };
    assert!(!report.passed());
    assert!(
        report
            .summary()
            .contains("1 of 2 tests failed, 1 passed: pod-to-pod-other-node"),
        "{}",
        report.summary()
    );
}

#[test]
fn kill_recorded_leaves_a_process_that_only_has_the_pid() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let real = ciliate_lab::ProcessRecord {
        pid,
        start_time: ciliate_lab::sys::start_time(pid).unwrap(),
        argv: vec!["sleep".into(), "30".into()],
        log: "/dev/null".into(),
    };
    // The same pid started at another time: another process, left alone.
    let reused = ciliate_lab::ProcessRecord {
        start_time: real.start_time + 1,
        ..real.clone()
    };
    assert!(!ciliate_lab::sys::kill_recorded(&reused));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert!(ciliate_lab::sys::kill_recorded(&real));
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}
