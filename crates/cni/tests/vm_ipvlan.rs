//! The built plugin against a real `ciliate-agent` in `datapathMode: ipvlan`:
//! ADD makes the pod's eth0 an ipvlan L3 slave of the node's native device
//! with the agent's entry program on it, CHECK and DEL, and a failed ADD
//! leaves nothing in either namespace. ipvlan needs a kernel this machine
//! may lack: `test = false`, run in the VM by `cargo xtask vm-test`.

mod common;

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ciliate_datapath::netlink::format_mac;
use ciliate_datapath::require_root;
use common::{add, del, host_ifname, Agent, Ns, Outcome};
use serde_json::{json, Value};

const NODE_IP: &str = "192.168.88.1";

/// An agent in ipvlan mode whose node has `nat0` (192.168.88.1/24) to an
/// outside namespace, its default route through it.
fn ipvlan_agent(outside: &Ns) -> Agent {
    let outside_path = outside.path();
    let outside_path2 = outside_path.clone();
    Agent::start_with(
        "10.202.0.0/24",
        "routingMode: native\nipv4NativeRoutingCIDR: 10.202.0.0/16\ndatapathMode: ipvlan\ndevices: [nat0]\n",
        move |node| {
            let nl = node.netlink();
            // The driver hands what a pod sends to a node address to the
            // loopback device, as on any real node.
            let lo = nl.link_by_name("lo").unwrap().unwrap();
            nl.set_up(lo.index).unwrap();
            let peer_ns = ciliate_datapath::netns::open(&outside_path2).unwrap();
            let nat0 = nl
                .create_veth_with_peer_in("nat0", "peer0", None, std::os::fd::AsFd::as_fd(&peer_ns))
                .unwrap();
            nl.add_address(nat0.index, NODE_IP.parse().unwrap(), 24)
                .unwrap();
            nl.set_up(nat0.index).unwrap();
            // Carrier: the peer is up too.
            let onl = ciliate_datapath::netlink::Netlink::new_in(&outside_path).unwrap();
            let peer0 = onl.link_by_name("peer0").unwrap().unwrap();
            onl.set_up(peer0.index).unwrap();
            nl.add_route(&ciliate_datapath::netlink::Route::via(
                "0.0.0.0/0".parse().unwrap(),
                "192.168.88.2".parse().unwrap(),
                nat0.index,
            ))
            .unwrap();
        },
    )
}

fn check(agent: &Agent, conf: &Value, container: &str, pod: &Ns) -> Outcome {
    agent
        .run("CHECK")
        .pod(container, &pod.path_str(), "eth0")
        .stdin(conf.to_string())
        .run()
}

fn ipvlan_pins(agent: &Agent) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(agent.bpf.join("ipvlan"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What the datapath counted and how both namespaces route, for a failure message.
fn diagnose(agent: &Agent, pod: &Ns) -> String {
    let maps = ciliate_datapath::loader::Maps::open(&agent.bpf).unwrap();
    let mut text = format!(
        "counters (reason, dir, packets, bytes): {:?}\n",
        maps.metrics_totals().unwrap()
    );
    for ns in [&agent.node.name, &pod.name] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "nstat", "-az"])
            .output()
            .unwrap();
        let counters: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                (l.starts_with("Ip") || l.starts_with("Icmp"))
                    && l.split_whitespace().nth(1) != Some("0")
            })
            .map(str::to_string)
            .collect();
        let _ = writeln!(text, "nstat in {ns}: {counters:?}");
    }
    for (ns, args) in [
        (&agent.node.name, "-s link"),
        (&pod.name, "-s link"),
        (&agent.node.name, "route"),
        (&agent.node.name, "-d link"),
        (&pod.name, "route"),
        (&pod.name, "-d link"),
    ] {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", ns]).args(args.split(' '));
        let out = cmd.output().unwrap();
        let _ = writeln!(
            text,
            "ip -n {ns} {args}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    text
}

#[test]
fn add_check_del_make_and_remove_an_ipvlan_slave() {
    require_root!();
    let outside = Ns::new("cniivout");
    let agent = ipvlan_agent(&outside);
    let conf = agent.conf("1.1.0");
    let pod = Ns::new("cniivpod");
    let container = "c-ipvlan";
    let status = agent.status();
    assert_eq!(status.datapath.datapath_mode, "ipvlan");

    let out = add(&agent, &conf, container, &pod, "eth0");
    out.assert_ok();
    let result = out.json();
    let nat0 = agent.node.netlink().link_by_name("nat0").unwrap().unwrap();
    let pnl = pod.netlink();
    let eth0 = pnl.link_by_name("eth0").unwrap().expect("eth0 in the pod");
    assert_eq!(eth0.kind.as_deref(), Some("ipvlan"));
    assert!(eth0.up);
    assert_eq!(eth0.mac, nat0.mac, "a slave shares its master's MAC");
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .parse()
        .unwrap();
    assert!(status.ipam.cidr.contains(&ip));
    assert_eq!(pnl.addresses(eth0.index).unwrap(), vec![(ip, 32)]);
    let routes = pnl.routes().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway.is_none() && r.oif == Some(eth0.index)),
        "default route through eth0, no gateway: {routes:?}"
    );
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": format_mac(eth0.mac.unwrap()), "sandbox": pod.path_str()}],
            "ips": [{"address": format!("{ip}/32"), "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    );
    // No device on the node's side, the temporary name included.
    assert!(!agent
        .node
        .link_names()
        .contains(&host_ifname(container, "eth0")));
    let ep: ciliate_api::Endpoint = agent
        .client()
        .get(&format!("/v1/endpoint/container-id:{container}"))
        .unwrap();
    assert_eq!(
        (
            ep.ip,
            ep.host_ifname.as_str(),
            ep.host_ifindex,
            ep.datapath_mode
        ),
        (ip, "", 0, ciliate_api::DatapathMode::Ipvlan)
    );
    assert_eq!(
        ipvlan_pins(&agent),
        [format!("ep{}-calls", ep.id), format!("ep{}-entry", ep.id)]
    );
    // The pod reaches its node through the driver and the datapath.
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.name, "ping", "-c1", "-W3", NODE_IP])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        diagnose(&agent, &pod)
    );

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    check(&agent, &with_prev, container, &pod).assert_ok();
    // CHECK notices a lost default route.
    pnl.del_route(
        &routes
            .iter()
            .find(|r| r.dst.prefix_len() == 0)
            .unwrap()
            .clone(),
    )
    .unwrap();
    check(&agent, &with_prev, container, &pod)
        .assert_error(101, &["has no default route dev eth0"]);

    del(&agent, &conf, container, &pod.path_str(), "eth0").assert_ok();
    assert_eq!(
        pod.link_names(),
        vec!["lo".to_string()],
        "the slave is gone"
    );
    assert!(ipvlan_pins(&agent).is_empty(), "the entry's pins are gone");
    assert_eq!(agent.status().ipam.allocated, status.ipam.allocated);
    del(&agent, &conf, container, &pod.path_str(), "eth0").assert_ok();
    check(&agent, &with_prev, container, &pod).assert_error(
        101,
        &["interface eth0 does not exist", "the agent has no endpoint"],
    );
}

#[test]
fn a_failed_ipvlan_add_leaves_nothing() {
    require_root!();
    let outside = Ns::new("cniivout");
    let agent = ipvlan_agent(&outside);
    let conf = agent.conf("1.1.0");
    let allocated = agent.status().ipam.allocated;

    // The pod has a default route already: configuring the slave fails
    // after it was made, moved and renamed.
    let pod = Ns::new("cniivfail");
    let lo = pod.netlink().link_by_name("lo").unwrap().unwrap();
    pod.netlink().set_up(lo.index).unwrap();
    pod.netlink()
        .add_route(&ciliate_datapath::netlink::Route::link_scope(
            "0.0.0.0/0".parse().unwrap(),
            lo.index,
        ))
        .unwrap();
    let out = add(&agent, &conf, "c-fail", &pod, "eth0");
    out.assert_error(5, &["default route", "eth0", "File exists"]);
    assert!(
        out.json()["details"].as_str().unwrap().contains("undone"),
        "{}",
        out.stdout
    );
    assert_eq!(
        pod.link_names(),
        vec!["lo".to_string()],
        "no slave left in the pod"
    );
    assert!(!agent
        .node
        .link_names()
        .contains(&host_ifname("c-fail", "eth0")));
    assert_eq!(
        agent.status().ipam.allocated,
        allocated,
        "the address is released"
    );
    assert!(agent.endpoints().iter().all(|e| e.container_id != "c-fail"));
    assert!(ipvlan_pins(&agent).is_empty());

    // The same pod without the route: ADD works, so nothing was left behind.
    let pod = Ns::new("cniivok");
    add(&agent, &conf, "c-fail", &pod, "eth0").assert_ok();
    del(&agent, &conf, "c-fail", &pod.path_str(), "eth0").assert_ok();
}
