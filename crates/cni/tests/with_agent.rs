//! The built plugin against a real `ciliate-agent`, each test with an agent of
//! its own in a node namespace, its own bpffs, state and socket: ADD, CHECK,
//! DEL (twice, after a failed ADD, with the netns gone), an exhausted `PodCIDR`,
//! failed ADDs undone, GC, STATUS, chaining and old result versions.

mod common;

use std::net::Ipv4Addr;

use ciliate_datapath::netlink::format_mac;
use ciliate_datapath::require_root;
use common::{add, del, host_ifname, Agent, Ns};
use serde_json::{json, Value};

fn pod_ip(result: &Value) -> Ipv4Addr {
    let ips = result["ips"].as_array().unwrap();
    ips.last().unwrap()["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .parse()
        .unwrap()
}

/// Only `lo` in the pod, and no host device for the attachment on the node.
#[track_caller]
fn assert_gone(agent: &Agent, pod: &Ns, container: &str, ifname: &str) {
    let name = host_ifname(container, ifname);
    assert!(
        !agent.node.link_names().contains(&name),
        "{name} is still on the node"
    );
    assert_eq!(
        pod.link_names(),
        vec!["lo".to_string()],
        "devices left in the pod"
    );
}

#[test]
fn add_check_del() {
    require_root!();
    let agent = Agent::start("10.201.0.0/24");
    let conf = agent.conf("1.1.0");
    let pod = Ns::new("cnipod");
    let container = "c-lifecycle";
    let host_name = host_ifname(container, "eth0");
    let status = agent.status();

    let out = add(&agent, &conf, container, &pod, "eth0");
    out.assert_ok();
    let result = out.json();
    let ip = pod_ip(&result);
    assert!(status.ipam.cidr.contains(&ip));

    // The node's side.
    let nl = agent.node.netlink();
    let host = nl
        .link_by_name(&host_name)
        .unwrap()
        .expect("host device exists");
    assert!(host.up);
    assert_eq!(host.mtu, status.mtu);
    // The pod's side.
    let pnl = pod.netlink();
    let eth0 = pnl.link_by_name("eth0").unwrap().expect("eth0 in the pod");
    assert!(eth0.up);
    assert_eq!(eth0.mtu, status.mtu);
    assert_eq!(pnl.addresses(eth0.index).unwrap(), vec![(ip, 32)]);
    assert!(pnl.link_by_name("lo").unwrap().unwrap().up);
    let router = status.router_ip;
    let pod_routes = pnl.routes().unwrap();
    assert!(
        pod_routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(router)),
        "{pod_routes:?}"
    );
    assert!(
        pod_routes
            .iter()
            .any(|r| r.dst == router.into() && r.scope_link),
        "{pod_routes:?}"
    );
    let v6 = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.name,
            "cat",
            "/proc/sys/net/ipv6/conf/eth0/disable_ipv6",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&v6.stdout).trim(), "1");

    // The result, shaped for 1.1.0.
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": host_name, "mac": format_mac(host.mac.unwrap())},
                {"name": "eth0", "mac": format_mac(eth0.mac.unwrap()), "sandbox": pod.path_str()}
            ],
            "ips": [{"address": format!("{ip}/32"), "gateway": router.to_string(), "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": router.to_string()}],
            "dns": {}
        })
    );

    // The agent's endpoint.
    let ep: ciliate_api::Endpoint = agent
        .client()
        .get(&format!("/v1/endpoint/container-id:{container}"))
        .unwrap();
    assert_eq!(
        (ep.ip, ep.host_ifname.as_str(), ep.host_ifindex),
        (ip, host_name.as_str(), host.index)
    );
    assert_eq!(ep.mac, format_mac(eth0.mac.unwrap()));
    assert_eq!(ep.host_mac, format_mac(host.mac.unwrap()));
    assert_eq!(
        (ep.pod_namespace.as_deref(), ep.pod_name.as_deref()),
        (Some("default"), Some(container))
    );
    assert_eq!(ep.netns, pod.path_str());

    // The pod reaches its router (ciliate_host) through the datapath.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.name,
            "ping",
            "-c1",
            "-W2",
            &router.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping router: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // CHECK agrees; STATUS is ready.
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    agent
        .run("CHECK")
        .pod(container, &pod.path_str(), "eth0")
        .stdin(check.to_string())
        .run()
        .assert_ok();
    let out = agent.run("STATUS").stdin(conf.to_string()).run();
    out.assert_ok();
    assert!(
        out.stdout.is_empty(),
        "STATUS prints nothing: {:?}",
        out.stdout
    );

    // ADD again without DEL: refused, nothing changes.
    let allocated = agent.status().ipam.allocated;
    add(&agent, &conf, container, &pod, "eth0")
        .assert_error(102, &[&host_name, "exists already", "run DEL first"]);
    assert_eq!(agent.status().ipam.allocated, allocated);
    assert!(nl.link_by_name(&host_name).unwrap().is_some());

    // CHECK notices a missing address.
    pnl.del_address(eth0.index, ip, 32).unwrap();
    let out = agent
        .run("CHECK")
        .pod(container, &pod.path_str(), "eth0")
        .stdin(check.to_string())
        .run();
    out.assert_error(101, &[&format!("does not have {ip}/32"), "eth0"]);

    // DEL removes everything and can be repeated.
    del(&agent, &conf, container, &pod.path_str(), "eth0").assert_ok();
    assert_gone(&agent, &pod, container, "eth0");
    let err = agent
        .client()
        .get::<ciliate_api::Endpoint>(&format!("/v1/endpoint/container-id:{container}"))
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(
        agent.status().ipam.allocated,
        status.ipam.allocated,
        "the address is released"
    );
    del(&agent, &conf, container, &pod.path_str(), "eth0").assert_ok();

    // CHECK after DEL names what is missing.
    let out = agent
        .run("CHECK")
        .pod(container, &pod.path_str(), "eth0")
        .stdin(check.to_string())
        .run();
    out.assert_error(
        101,
        &[
            &format!("host device {host_name} does not exist"),
            "the agent has no endpoint",
        ],
    );
}

#[test]
fn exhausted_pod_cidr() {
    require_root!();
    // A /29 has 6 hosts: the router takes one, the health endpoint another.
    let agent = Agent::start("10.201.0.0/29");
    let conf = agent.conf("1.1.0");
    let free = agent.status().ipam.capacity - agent.status().ipam.allocated;
    assert_eq!(free, 4, "{:?}", agent.status().ipam);
    let pods: Vec<Ns> = (0..=free).map(|_| Ns::new("cnifull")).collect();
    let ids: Vec<String> = (0..=free).map(|i| format!("c-full-{i}")).collect();
    for i in 0..free {
        add(&agent, &conf, &ids[i], &pods[i], "eth0").assert_ok();
    }
    let out = agent.run("STATUS").stdin(conf.to_string()).run();
    out.assert_error(50, &["PodCIDR 10.201.0.0/29", "exhausted"]);

    let last = free;
    let out = add(&agent, &conf, &ids[last], &pods[last], "eth0");
    out.assert_error(
        11,
        &[
            "allocating an address for default/c-full-4",
            "10.201.0.0/29 is exhausted",
        ],
    );
    assert_gone(&agent, &pods[last], &ids[last], "eth0");
    del(&agent, &conf, &ids[last], &pods[last].path_str(), "eth0").assert_ok();

    // Freeing one makes room again.
    del(&agent, &conf, &ids[0], &pods[0].path_str(), "eth0").assert_ok();
    agent
        .run("STATUS")
        .stdin(conf.to_string())
        .run()
        .assert_ok();
    add(&agent, &conf, &ids[last], &pods[last], "eth0").assert_ok();
    for i in 1..=last {
        del(&agent, &conf, &ids[i], &pods[i].path_str(), "eth0").assert_ok();
        assert_gone(&agent, &pods[i], &ids[i], "eth0");
    }
    assert_eq!(
        agent.status().ipam.allocated,
        1,
        "only the health endpoint's address is left"
    );
}

#[test]
fn failed_adds_leave_nothing_and_del_still_works() {
    require_root!();
    let agent = Agent::start("10.201.1.0/24");
    let conf = agent.conf("1.0.0");
    let pod = Ns::new("cniundo");
    let baseline = agent.status().ipam.allocated;

    // The netns does not exist: code 3, then DEL succeeds.
    let missing = format!("/run/netns/ciliate-gone-{}", std::process::id());
    let out = agent
        .run("ADD")
        .pod("c-nonetns", &missing, "eth0")
        .stdin(conf.to_string())
        .run();
    out.assert_error(3, &[&missing]);
    del(&agent, &conf, "c-nonetns", &missing, "eth0").assert_ok();

    add(&agent, &conf, "c-twice", &pod, "eth0").assert_ok();
    let with_one = agent.status().ipam.allocated;
    let endpoint_is_kept = || {
        agent
            .client()
            .get::<ciliate_api::Endpoint>("/v1/endpoint/container-id:c-twice")
            .expect("the first attachment's endpoint is still there")
    };

    // A second interface in the same pod fails on the pod's routes (they are
    // the first interface's): the veth and the address are undone.
    let out = add(&agent, &conf, "c-twice", &pod, "eth1");
    out.assert_error(5, &["adding route", "dev eth1", "File exists"]);
    assert!(
        out.json()["details"].as_str().unwrap().contains("undone"),
        "{}",
        out.stdout
    );
    assert!(!agent
        .node
        .link_names()
        .contains(&host_ifname("c-twice", "eth1")));
    assert!(!pod.link_names().contains(&"eth1".to_string()));
    assert_eq!(
        agent.status().ipam.allocated,
        with_one,
        "the second address was released"
    );

    // In another netns the veth works out, but the agent refuses a second
    // endpoint for the container: veth and address are undone, the first
    // attachment is untouched.
    let other = Ns::new("cniundo2");
    let out = add(&agent, &conf, "c-twice", &other, "eth1");
    out.assert_error(
        100,
        &[
            "registering the endpoint of default/c-twice",
            "already has endpoint",
        ],
    );
    assert!(
        out.json()["details"].as_str().unwrap().contains("undone"),
        "{}",
        out.stdout
    );
    assert_gone(&agent, &other, "c-twice", "eth1");
    assert_eq!(
        agent.status().ipam.allocated,
        with_one,
        "the second address was released"
    );
    assert_eq!(endpoint_is_kept().ifname, "eth0");
    assert!(pod.link_names().contains(&"eth0".to_string()));

    // DEL of the failed attachment succeeds and leaves the good one alone.
    del(&agent, &conf, "c-twice", &other.path_str(), "eth1").assert_ok();
    assert_eq!(endpoint_is_kept().ifname, "eth0");
    assert!(pod.link_names().contains(&"eth0".to_string()));
    del(&agent, &conf, "c-twice", &pod.path_str(), "eth0").assert_ok();
    assert_gone(&agent, &pod, "c-twice", "eth0");
    assert_eq!(agent.status().ipam.allocated, baseline);
}

#[test]
fn del_when_the_netns_is_gone() {
    require_root!();
    let agent = Agent::start("10.201.2.0/24");
    let conf = agent.conf("0.4.0");
    let pod = Ns::new("cnigone");
    let baseline = agent.status().ipam.allocated;
    let out = add(&agent, &conf, "c-gone", &pod, "eth0");
    out.assert_ok();
    let netns = pod.path_str();
    pod.delete();
    del(&agent, &conf, "c-gone", &netns, "eth0").assert_ok();
    del(&agent, &conf, "c-gone", "", "eth0").assert_ok();
    assert!(!agent
        .node
        .link_names()
        .contains(&host_ifname("c-gone", "eth0")));
    assert!(agent.endpoints().iter().all(|e| e.container_id != "c-gone"));
    assert_eq!(agent.status().ipam.allocated, baseline);
}

#[test]
fn versions_and_chaining() {
    require_root!();
    let agent = Agent::start("10.201.3.0/24");
    let old = Ns::new("cniold");
    let out = add(&agent, &agent.conf("0.3.1"), "c-old", &old, "eth0");
    out.assert_ok();
    let result = out.json();
    assert_eq!(result["cniVersion"], "0.3.1");
    assert_eq!(result["ips"][0]["version"], "4");

    // Chained after another plugin: its result is kept, ours appended.
    let chained = Ns::new("cnichain");
    let mut conf = agent.conf("1.0.0");
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "sandbox": chained.path_str(), "mtu": 9000}],
        "ips": [{"address": "192.168.7.2/24", "interface": 0}],
        "routes": [{"dst": "192.168.0.0/16", "gw": "192.168.7.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    });
    let out = add(&agent, &conf, "c-chain", &chained, "eth0");
    out.assert_ok();
    let result = out.json();
    assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(result["interfaces"][0]["mtu"], 9000);
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    assert_eq!(result["ips"][1]["interface"], 2);
    assert!(result["ips"][1].get("version").is_none());
    assert_eq!(result["routes"].as_array().unwrap().len(), 2);
    assert_eq!(result["dns"]["nameservers"][0], "10.96.0.10");
    let mut check = agent.conf("1.0.0");
    check["prevResult"] = result;
    agent
        .run("CHECK")
        .pod("c-chain", &chained.path_str(), "eth0")
        .stdin(check.to_string())
        .run()
        .assert_ok();

    del(
        &agent,
        &agent.conf("0.3.1"),
        "c-old",
        &old.path_str(),
        "eth0",
    )
    .assert_ok();
    del(&agent, &conf, "c-chain", &chained.path_str(), "eth0").assert_ok();
    assert_gone(&agent, &old, "c-old", "eth0");
}

#[test]
fn gc_removes_what_the_runtime_forgot() {
    require_root!();
    let agent = Agent::start("10.201.4.0/24");
    let conf = agent.conf("1.1.0");
    let keep = Ns::new("cnikeep");
    let forget = Ns::new("cniforget");
    add(&agent, &conf, "c-keep", &keep, "eth0").assert_ok();
    add(&agent, &conf, "c-forget", &forget, "eth0").assert_ok();
    let before = agent.endpoints().len();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c-keep", "ifname": "eth0"}]);
    agent.run("GC").stdin(gc.to_string()).run().assert_ok();

    let endpoints = agent.endpoints();
    assert_eq!(endpoints.len(), before - 1);
    assert!(endpoints.iter().any(|e| e.container_id == "c-keep"));
    assert!(
        endpoints.iter().any(|e| e.health),
        "the health endpoint is never collected"
    );
    assert_gone(&agent, &forget, "c-forget", "eth0");
    assert!(agent
        .node
        .link_names()
        .contains(&host_ifname("c-keep", "eth0")));
    // Nothing more to collect the second time.
    agent.run("GC").stdin(gc.to_string()).run().assert_ok();
    del(&agent, &conf, "c-keep", &keep.path_str(), "eth0").assert_ok();
}
