//! `ciliate connectivity test` in every datapath mode the issue names:
//! veth+vxlan, veth+geneve, veth+native, ipvlan+native, netkit+native.
//!
//! Geneve, ipvlan and netkit need a kernel this machine may lack, so this
//! target is `test = false`: `cargo xtask vm-test` builds it and runs it in
//! Debian's 6.12 kernel under QEMU. On a kernel without the feature the
//! agent refuses to start (see the agent's kernel_features test) and the
//! test fails saying so. Each test brings up its own two-node lab, checks
//! the mode is really in force (the agents' status, the pod's interface
//! kind, the tunnel device), runs every connectivity scenario (none may be
//! skipped) and takes the lab down.
//! Needs root, etcd and the workspace's binaries (`cargo build --workspace --bins`).

mod common;

use ciliate_datapath::netlink::Netlink;
use ciliate_lab::connectivity::{self, Outcome};
use ciliate_lab::{DatapathMode, LabGuard, LabSpec, RoutingMode, TunnelProtocol};

fn check_mode(routing: RoutingMode, tunnel: TunnelProtocol, mode: DatapathMode) {
    if !ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs, etcd in a namespace") {
        return;
    }
    let tag = match (routing, tunnel) {
        (RoutingMode::Tunnel, TunnelProtocol::Vxlan) => "vx",
        (RoutingMode::Tunnel, TunnelProtocol::Geneve) => "gn",
        (RoutingMode::Native, _) => "na",
    };
    let name = format!("vm{}{tag}{}", std::process::id(), &mode.to_string()[..2]);
    let spec = LabSpec {
        routing,
        tunnel_protocol: tunnel,
        datapath_mode: mode,
        agent_timeout: common::VM_AGENT_TIMEOUT,
        ..LabSpec::new(&name, 2)
    };
    let mut lab = LabGuard::up(&spec).expect("lab up");

    // The agents run the mode asked for.
    for node in ["node0", "node1"] {
        let status: ciliate_api::Status = lab
            .client(node)
            .unwrap()
            .get("/v1/status")
            .expect("agent status");
        assert_eq!(status.datapath.datapath_mode, mode.to_string(), "{node}");
        let expected_routing = match routing {
            RoutingMode::Tunnel => format!("tunnel [{tunnel}]"),
            RoutingMode::Native => "native".into(),
        };
        assert_eq!(status.datapath.routing_mode, expected_routing, "{node}");
        let nl = Netlink::new_in(&lab.node(node).unwrap().netns_path).unwrap();
        for (device, kind) in [("ciliate_vxlan", "vxlan"), ("ciliate_geneve", "geneve")] {
            let wanted = routing == RoutingMode::Tunnel && tunnel.to_string() == kind;
            let link = nl.link_by_name(device).unwrap();
            assert_eq!(
                link.as_ref().and_then(|l| l.kind.as_deref()) == Some(kind),
                wanted,
                "{node}: {device} present iff the mode tunnels with {kind}: {link:?}"
            );
        }
    }

    let mut out = Vec::new();
    let report = connectivity::run(&mut lab, &connectivity::Options::default(), &mut out)
        .expect("connectivity test setup");
    let printed = String::from_utf8_lossy(&out);
    eprintln!("{printed}");
    assert!(
        report.passed(),
        "connectivity test failed in {name}:\n{printed}"
    );
    let outcomes: Vec<(&str, &Outcome)> = report
        .results
        .iter()
        .map(|r| (r.name.as_str(), &r.outcome))
        .collect();
    assert!(
        outcomes.iter().all(|(_, o)| **o == Outcome::Passed),
        "every scenario runs and passes: {outcomes:?}"
    );
    assert_eq!(outcomes.len(), connectivity::SCENARIOS.len());

    // The test pods got the interface the mode makes.
    let kind = match mode {
        DatapathMode::Veth => "veth",
        DatapathMode::Ipvlan => "ipvlan",
        DatapathMode::Netkit => "netkit",
    };
    let pods: Vec<_> = lab
        .pods()
        .iter()
        .filter(|p| p.namespace == "ciliate-test" && !p.host_network)
        .cloned()
        .collect();
    assert!(pods.len() >= 3, "{pods:?}");
    for pod in pods {
        let eth0 = Netlink::new_in(&pod.netns_path)
            .unwrap()
            .link_by_name("eth0")
            .unwrap()
            .expect("the pod's eth0");
        assert_eq!(
            eth0.kind.as_deref(),
            Some(kind),
            "{}/{}",
            pod.namespace,
            pod.name
        );
    }
    lab.down().expect("lab down");
}

#[test]
fn connectivity_veth_vxlan() {
    check_mode(
        RoutingMode::Tunnel,
        TunnelProtocol::Vxlan,
        DatapathMode::Veth,
    );
}

#[test]
fn connectivity_veth_geneve() {
    check_mode(
        RoutingMode::Tunnel,
        TunnelProtocol::Geneve,
        DatapathMode::Veth,
    );
}

#[test]
fn connectivity_veth_native() {
    check_mode(
        RoutingMode::Native,
        TunnelProtocol::Vxlan,
        DatapathMode::Veth,
    );
}

#[test]
fn connectivity_ipvlan_native() {
    check_mode(
        RoutingMode::Native,
        TunnelProtocol::Vxlan,
        DatapathMode::Ipvlan,
    );
}

#[test]
fn connectivity_netkit_native() {
    check_mode(
        RoutingMode::Native,
        TunnelProtocol::Vxlan,
        DatapathMode::Netkit,
    );
}
