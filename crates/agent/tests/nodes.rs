//! The built agent in a node namespace against a real etcd: it registers its
//! node, waits for the operator's PodCIDR (played here through the store),
//! turns other nodes' CiliateNodes into ipcache entries and routes and
//! removes them again, survives garbage in the store, re-registers, cleans up
//! after an earlier run, and starts without etcd when it knows its PodCIDR.

mod cluster;

use std::net::Ipv4Addr;
use std::process::Command;

use ciliate_agent::nodes::load_routes;
use ciliate_datapath::maps::IPCACHE_F_HOST;
use ciliate_datapath::require_root;
use ciliate_store::{AddressType, CiliateNode};
use cluster::{wait_for, Agent, Net, NODE_IP, WAIT};
use ipnet::Ipv4Net;

fn prefix(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn cluster_pool(net: &Net, routing: &str) -> String {
    format!(
        "ipam: {{mode: cluster-pool}}\netcd: {{endpoints: [\"{}\"]}}\nkvstoreLeaseTTL: 5\ndevices: [eth0]\n{routing}",
        net.endpoint()
    )
}

/// Another node as its agent would register it.
fn remote(name: &str, node_ip: &str, cidr: &str) -> CiliateNode {
    let mut node = CiliateNode::new(name);
    node.set_address(AddressType::InternalIp, node_ip.parse().unwrap());
    let cidr = prefix(cidr);
    node.set_address(
        AddressType::CiliumInternalIp,
        cidr.hosts().next().unwrap().into(),
    );
    node.spec.health.ipv4 = cidr.hosts().nth(1);
    node.spec.ipam.pod_cidrs = vec![cidr.into()];
    node
}

/// Starts the agent, checks that it registers and waits for a PodCIDR, then
/// assigns `cidr` as the operator would and waits until the agent serves.
fn start_and_assign(net: &Net, agent: &mut Agent, cidr: &str) -> ciliate_api::Status {
    agent.spawn();
    let registered = wait_for(
        "the agent to register its node",
        WAIT,
        || agent.log_text(),
        || net.client.get(&agent.name).ok().flatten(),
    );
    assert_eq!(registered.internal_ip(), Some(NODE_IP.into()));
    assert!(registered.spec.ipam.pod_cidrs.is_empty(), "{registered:?}");
    assert_eq!(registered.ciliate_internal_ip(), None);
    // Without a PodCIDR the agent does not serve yet, and says what it waits for.
    wait_for(
        "the agent to say it waits for the operator",
        WAIT,
        || agent.log_text(),
        || {
            agent
                .log_text()
                .contains("waiting for the operator to assign a PodCIDR")
                .then_some(())
        },
    );
    assert!(
        agent
            .client()
            .get::<ciliate_api::Status>("/v1/status")
            .is_err(),
        "the agent serves before it has a PodCIDR"
    );
    assert!(agent.exited().is_none(), "{}", agent.log_text());

    net.client.assign_pod_cidr(&agent.name, cidr);
    let status = agent.wait_ready();
    assert_eq!(status.ipam.cidr, prefix(cidr));
    assert_eq!(status.ipam.mode, "cluster-pool");
    assert_eq!(status.router_ip, prefix(cidr).hosts().next().unwrap());
    assert_eq!(status.node_ip, Some(NODE_IP));
    status
}

/// Waits until the store shows this node fully registered.
fn wait_registered(net: &Net, agent: &Agent, cidr: &str) -> CiliateNode {
    let router = prefix(cidr).hosts().next().unwrap();
    wait_for(
        "the full registration (router and health IPs, PodCIDR)",
        WAIT,
        || format!("{:?}\n{}", net.client.get(&agent.name), agent.log_text()),
        || {
            let node = net.client.get(&agent.name).ok()??;
            (node.ciliate_internal_ip() == Some(router.into())
                && node.spec.health.ipv4.is_some()
                && node.spec.ipam.pod_cidrs == vec![prefix(cidr).into()]
                && node.internal_ip() == Some(NODE_IP.into()))
            .then_some(node)
        },
    )
}

#[test]
fn tunnel_mode_registers_and_routes_to_other_nodes() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    // A hardened host's strict reverse-path filtering would drop what pods
    // send the node (their addresses are routed through ciliate_host).
    let strict = Command::new("ip")
        .args(["netns", "exec", &net.node.name, "sh", "-c"])
        .arg("echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter")
        .status()
        .unwrap();
    assert!(strict.success());
    let mut agent = Agent::new(&net.node, &cluster_pool(&net, "routingMode: tunnel\n"));
    let status = start_and_assign(&net, &mut agent, "172.20.5.0/24");
    assert_eq!(status.mtu, 1450);
    assert_eq!(net.node.sysctl("net/ipv4/conf/all/rp_filter"), "0");
    // What the node sends its own pods takes the PodCIDR route, so it is
    // sized for the pods.
    let own = net
        .node
        .route_to("172.20.5.0/24")
        .expect("the PodCIDR route");
    assert_eq!(
        (own.oif, own.mtu),
        (
            Some(
                net.node
                    .netlink()
                    .link_by_name("ciliate_host")
                    .unwrap()
                    .unwrap()
                    .index
            ),
            Some(1450)
        )
    );
    let registered = wait_registered(&net, &agent, "172.20.5.0/24");
    let health_ip = registered.spec.health.ipv4.unwrap();
    assert!(prefix("172.20.5.0/24").contains(&health_ip));
    let kv = wait_for(
        "kvstore Ok",
        WAIT,
        || agent.log_text(),
        || agent.status().kvstore.filter(|k| k.state == "Ok"),
    );
    assert!(kv.message.contains(&net.endpoint()), "{kv:?}");

    // The node's devices and datapath.
    let nl = net.node.netlink();
    let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
    let host = nl.link_by_name("ciliate_host").unwrap().unwrap();
    let config = agent.maps().config.get(&0, 0).unwrap();
    assert_eq!(config.native_ifindex, eth0.index);
    assert_eq!(net.node.sysctl("net/ipv4/conf/eth0/forwarding"), "1");
    // The node's own sockets never get a port SNAT hands out.
    assert_eq!(
        net.node.sysctl("net/ipv4/ip_local_reserved_ports"),
        "61000-65535"
    );
    for device in ["ciliate_host", "ciliate_vxlan"] {
        assert_eq!(
            net.node
                .sysctl(&format!("net/ipv4/conf/{device}/forwarding")),
            "1",
            "{device}"
        );
        assert_eq!(
            net.node
                .sysctl(&format!("net/ipv4/conf/{device}/rp_filter")),
            "0",
            "{device}"
        );
    }
    assert!(net.node.ip_link("ciliate_host").contains("NOARP"));
    for pin in ["eth0-from_netdev", "ciliate_host-from_host"] {
        assert!(
            agent.bpf.join("links").join(pin).exists(),
            "no pinned link {pin}"
        );
    }
    // This node's own addresses are in the ipcache, without a tunnel.
    let ipcache = agent.ipcache();
    let own = ipcache[&prefix("192.168.77.2/32")];
    assert_eq!((own.tunnel_endpoint(), own.flags), (None, IPCACHE_F_HOST));
    assert!(ipcache.contains_key(&prefix("172.20.5.1/32")));

    // Another node appears: ipcache entries and a route through ciliate_host.
    net.client
        .put(&remote("remote-a", "192.168.77.3", "172.20.6.0/24"))
        .unwrap();
    let route = wait_for(
        "the route to remote-a's PodCIDR",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.6.0/24"),
    );
    assert_eq!(route.oif, Some(host.index));
    assert_eq!(route.gateway, None);
    assert_eq!(route.src, Some(ip("172.20.5.1")));
    assert_eq!(route.mtu, Some(1450));
    let ipcache = agent.ipcache();
    let pods = ipcache[&prefix("172.20.6.0/24")];
    assert_eq!(pods.tunnel_endpoint(), Some(ip("192.168.77.3")));
    let node_entry = ipcache[&prefix("192.168.77.3/32")];
    assert_eq!(node_entry.tunnel_endpoint(), Some(ip("192.168.77.3")));
    assert_eq!(node_entry.sec_identity, 6);
    assert_eq!(node_entry.flags, IPCACHE_F_HOST);

    let nodes = wait_for(
        "remote-a in the node list",
        WAIT,
        || format!("{:?}", agent.nodes()),
        || Some(agent.nodes()).filter(|n| n.len() == 2),
    );
    assert!(nodes[0].local && nodes[0].name == agent.name);
    assert_eq!(nodes[0].pod_cidrs, vec![prefix("172.20.5.0/24")]);
    assert_eq!(nodes[0].health_ip, Some(health_ip));
    assert_eq!(
        (nodes[1].name.as_str(), nodes[1].local, nodes[1].internal_ip),
        ("remote-a", false, Some(ip("192.168.77.3")))
    );
    assert_eq!(nodes[1].health_ip, Some(ip("172.20.6.2")));

    // Garbage and incomplete objects are skipped; the agent keeps working.
    net.client.put_raw("garbage", b"{not json").unwrap();
    net.client.put(&CiliateNode::new("no-address")).unwrap();
    let mut overlapping = remote("overlap", "192.168.77.9", "172.20.5.0/24");
    overlapping.spec.ipam.pod_cidrs = vec!["172.20.0.0/16".parse().unwrap()];
    net.client.put(&overlapping).unwrap();
    net.client
        .put(&remote("remote-b", "192.168.77.4", "172.20.8.0/24"))
        .unwrap();
    wait_for(
        "the route to remote-b after the garbage",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.8.0/24"),
    );
    assert!(agent.exited().is_none());
    let log = agent.log_text();
    assert!(
        log.contains("garbage"),
        "the bad object is reported:\n{log}"
    );
    assert!(log.contains("no InternalIP"), "{log}");
    assert!(log.contains("overlaps"), "{log}");
    assert!(net.node.route_to("172.20.0.0/16").is_none());
    wait_for(
        "remote-b in the node list",
        WAIT,
        || format!("{:?}", agent.nodes()),
        || (agent.nodes().len() == 3).then_some(()),
    );

    // remote-a moves to another PodCIDR: the old route and entry go.
    net.client
        .put(&remote("remote-a", "192.168.77.3", "172.20.7.0/24"))
        .unwrap();
    wait_for(
        "remote-a's new route",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.7.0/24"),
    );
    wait_for(
        "remote-a's old route to go",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.6.0/24").is_none().then_some(()),
    );
    let ipcache = agent.ipcache();
    assert!(!ipcache.contains_key(&prefix("172.20.6.0/24")));
    assert!(ipcache.contains_key(&prefix("172.20.7.0/24")));

    // remote-a goes: everything of it goes.
    net.client.delete("remote-a").unwrap();
    wait_for(
        "remote-a's route to go",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.7.0/24").is_none().then_some(()),
    );
    // The node list is published after the kernel is written.
    let expected = vec![agent.name.clone(), "remote-b".to_string()];
    wait_for(
        "the node list without remote-a",
        WAIT,
        || format!("{:?}", agent.nodes()),
        || {
            let names: Vec<String> = agent.nodes().into_iter().map(|n| n.name).collect();
            (names == expected).then_some(())
        },
    );
    let ipcache = agent.ipcache();
    assert!(!ipcache.contains_key(&prefix("172.20.7.0/24")));
    assert!(!ipcache.contains_key(&prefix("192.168.77.3/32")));
    assert!(ipcache.contains_key(&prefix("172.20.8.0/24")));

    // This node's object deleted while the agent lives: it registers again,
    // PodCIDR included.
    let before = net.client.get(&agent.name).unwrap().unwrap();
    assert!(net.client.delete(&agent.name).unwrap());
    let again = wait_registered(&net, &agent, "172.20.5.0/24");
    let version = |n: &CiliateNode| -> u64 {
        n.metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(version(&again) > version(&before), "{before:?}\n{again:?}");
    assert!(
        agent.log_text().contains("registering it again"),
        "{}",
        agent.log_text()
    );

    // A crash; meanwhile remote-b goes. The restarted agent starts at once
    // with its saved PodCIDR and removes what remote-b left behind.
    agent.stop(true);
    net.client.delete("remote-b").unwrap();
    agent.spawn();
    let status = agent.wait_ready();
    assert_eq!(status.ipam.cidr, prefix("172.20.5.0/24"));
    wait_for(
        "the stale route to remote-b to go",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.8.0/24").is_none().then_some(()),
    );
    wait_for(
        "the stale ipcache entries of remote-b to go",
        WAIT,
        || agent.log_text(),
        || {
            let ipcache = agent.ipcache();
            (!ipcache.contains_key(&prefix("172.20.8.0/24"))
                && !ipcache.contains_key(&prefix("192.168.77.4/32")))
            .then_some(())
        },
    );
    wait_for(
        "only this node in the node list",
        WAIT,
        || format!("{:?}", agent.nodes()),
        || (agent.nodes().len() == 1).then_some(()),
    );
    wait_registered(&net, &agent, "172.20.5.0/24");
}

#[test]
fn native_mode_routes_via_node_ips() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let mut agent = Agent::new(
        &net.node,
        &cluster_pool(
            &net,
            "routingMode: native\nautoDirectNodeRoutes: true\nipv4NativeRoutingCIDR: 172.20.0.0/16\n",
        ),
    );
    let status = start_and_assign(&net, &mut agent, "172.20.1.0/24");
    assert_eq!(status.mtu, 1500);
    assert_eq!(status.datapath.routing_mode, "native");
    wait_registered(&net, &agent, "172.20.1.0/24");
    let nl = net.node.netlink();
    assert!(nl.link_by_name("ciliate_vxlan").unwrap().is_none());
    let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
    assert_eq!(
        agent.maps().config.get(&0, 0).unwrap().native_ifindex,
        eth0.index
    );

    net.client
        .put(&remote("remote-n", "192.168.77.5", "172.20.2.0/24"))
        .unwrap();
    let route = wait_for(
        "the direct route to remote-n's PodCIDR",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.2.0/24"),
    );
    assert_eq!(route.gateway, Some(ip("192.168.77.5")));
    assert_eq!(route.oif, Some(eth0.index));
    let ipcache = agent.ipcache();
    assert_eq!(ipcache[&prefix("172.20.2.0/24")].tunnel_endpoint(), None);
    assert_eq!(ipcache[&prefix("192.168.77.5/32")].tunnel_endpoint(), None);

    net.client.delete("remote-n").unwrap();
    wait_for(
        "the direct route to go",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.2.0/24").is_none().then_some(()),
    );
    assert!(!agent.ipcache().contains_key(&prefix("172.20.2.0/24")));

    // A route via a node that left while the agent was down is removed by
    // the next run (it knows the route from its stateDir).
    net.client
        .put(&remote("remote-m", "192.168.77.7", "172.20.3.0/24"))
        .unwrap();
    wait_for(
        "the direct route to remote-m",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.3.0/24"),
    );
    // Saved before it was made, so the crash below cannot lose it.
    let saved = load_routes(&agent.state_dir());
    assert!(
        saved
            .iter()
            .any(|r| r.dst == prefix("172.20.3.0/24") && r.gateway == Some(ip("192.168.77.7"))),
        "the routes file does not name the route it made: {saved:?}"
    );
    agent.stop(true);
    net.client.delete("remote-m").unwrap();
    agent.spawn();
    agent.wait_ready();
    wait_for(
        "the stale direct route to go",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.3.0/24").is_none().then_some(()),
    );
    assert!(!agent.ipcache().contains_key(&prefix("172.20.3.0/24")));
}

#[test]
fn a_restarted_agent_starts_without_etcd_and_registers_later() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let mut net = Net::new();
    net.etcd.stop();
    let mut agent = Agent::new(&net.node, &cluster_pool(&net, ""));
    // What an earlier run saved.
    std::fs::create_dir_all(agent.state_dir()).unwrap();
    std::fs::write(
        agent.state_dir().join("state.json"),
        r#"{"podCidr": "172.20.9.0/24"}"#,
    )
    .unwrap();
    agent.spawn();
    let status = agent.wait_ready();
    assert_eq!(status.ipam.cidr, prefix("172.20.9.0/24"));
    let kv = status.kvstore.expect("a store is configured");
    assert!(
        kv.state == "Connecting" || kv.state == "Failure",
        "etcd is down but the store is {kv:?}"
    );
    wait_for(
        "kvstore Failure with the reason",
        WAIT,
        || agent.log_text(),
        || {
            agent
                .status()
                .kvstore
                .filter(|k| k.state == "Failure" && k.message.contains(&net.endpoint()))
        },
    );

    net.etcd.restart().expect("restart etcd");
    // Registered with the saved PodCIDR pre-filled, so the operator keeps it.
    wait_registered(&net, &agent, "172.20.9.0/24");
    wait_for(
        "kvstore Ok",
        WAIT,
        || agent.log_text(),
        || agent.status().kvstore.filter(|k| k.state == "Ok"),
    );
    // The node manager works once the store is there.
    net.client
        .put(&remote("remote-c", "192.168.77.6", "172.20.10.0/24"))
        .unwrap();
    wait_for(
        "the route to remote-c",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.10.0/24"),
    );
}

#[test]
fn no_native_device_is_refused_naming_devices() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let node = cluster::Ns::new("agnodev");
    let mut agent = Agent::new(
        &node,
        "ipam: {mode: cluster-pool}\netcd: {endpoints: [\"http://192.168.77.1:2379\"]}\n",
    );
    agent.spawn();
    let log = agent.log.clone();
    let status = wait_for(
        "the agent to exit",
        WAIT,
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || agent.exited(),
    );
    assert!(!status.success());
    let log = agent.log_text();
    assert!(
        log.contains("devices") && log.contains("default route"),
        "{log}"
    );
    let mut agent = Agent::new(
        &node,
        "ipam: {mode: cluster-pool}\netcd: {endpoints: [\"http://192.168.77.1:2379\"]}\ndevices: [eth9]\n",
    );
    agent.spawn();
    let log = agent.log.clone();
    wait_for(
        "the agent to exit",
        WAIT,
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || agent.exited(),
    );
    let log = agent.log_text();
    assert!(log.contains("devices") && log.contains("eth9"), "{log}");
}

/// A restarted agent whose saved PodCIDR the operator gave to another node
/// meanwhile: the operator's word stands. The agent keeps running with its
/// own, says so in its status, and never writes its CIDR over the operator's
/// (which, with an operator rewriting it, would be a write loop).
#[test]
fn a_saved_cidr_never_overwrites_the_operators() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let mut agent = Agent::new(&net.node, &cluster_pool(&net, ""));
    std::fs::create_dir_all(agent.state_dir()).unwrap();
    std::fs::write(
        agent.state_dir().join("state.json"),
        r#"{"podCidr": "172.20.9.0/24"}"#,
    )
    .unwrap();
    agent.spawn();
    assert_eq!(agent.wait_ready().ipam.cidr, prefix("172.20.9.0/24"));
    // With nothing stored yet, the saved CIDR is pre-filled.
    wait_registered(&net, &agent, "172.20.9.0/24");

    // The operator, which gave 172.20.9.0/24 to another node, insists on
    // another CIDR for this one, as its controller does.
    let operators: ipnet::IpNet = "172.20.11.0/24".parse().unwrap();
    let mut writes = 0;
    let mut last_change = std::time::Instant::now();
    let mut last_rv = None;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        if let Some(mut node) = net.client.get(&agent.name).unwrap() {
            if node.metadata.resource_version != last_rv {
                last_rv.clone_from(&node.metadata.resource_version);
                last_change = std::time::Instant::now();
            }
            if node.spec.ipam.pod_cidrs != vec![operators] {
                node.spec.ipam.pod_cidrs = vec![operators];
                if net.client.put(&node).is_ok() {
                    writes += 1;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        writes <= 2,
        "the operator had to write this node's PodCIDR {writes} times: the agent keeps writing its own over it\n{}",
        agent.log_text()
    );
    assert!(
        last_change.elapsed() >= std::time::Duration::from_secs(4),
        "the object still changes\n{}",
        agent.log_text()
    );
    let stored = net.client.get(&agent.name).unwrap().unwrap();
    assert_eq!(stored.spec.ipam.pod_cidrs, vec![operators]);
    // The agent still runs with its own and reports the mismatch.
    let status = agent.status();
    assert_eq!(status.ipam.cidr, prefix("172.20.9.0/24"));
    let kv = status.kvstore.expect("a store is configured");
    assert!(
        kv.state == "Warning"
            && kv.message.contains("172.20.11.0/24")
            && kv.message.contains("172.20.9.0/24"),
        "{kv:?}"
    );
    assert!(
        agent.log_text().contains("PodCIDR mismatch"),
        "{}",
        agent.log_text()
    );
    assert!(agent.exited().is_none(), "{}", agent.log_text());
}

/// A known node whose object becomes unusable (its InternalIP removed, its
/// PodCIDR overlapping this node's) is removed as if it were deleted: what it
/// said before is no longer true.
#[test]
fn a_node_whose_update_is_rejected_is_removed() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let net = Net::new();
    let mut agent = Agent::new(&net.node, &cluster_pool(&net, "routingMode: tunnel\n"));
    start_and_assign(&net, &mut agent, "172.20.5.0/24");
    for (name, node_ip, cidr) in [
        ("remote-x", "192.168.77.3", "172.20.6.0/24"),
        ("remote-y", "192.168.77.4", "172.20.7.0/24"),
    ] {
        net.client.put(&remote(name, node_ip, cidr)).unwrap();
        wait_for(
            &format!("the route to {name}"),
            WAIT,
            || agent.log_text(),
            || net.node.route_to(cidr),
        );
    }

    // remote-x loses its InternalIP.
    let mut x = net.client.get("remote-x").unwrap().unwrap();
    x.spec.addresses.clear();
    net.client.put(&x).unwrap();
    // remote-y's PodCIDR now overlaps this node's.
    let mut y = net.client.get("remote-y").unwrap().unwrap();
    y.spec.ipam.pod_cidrs = vec!["172.20.0.0/16".parse().unwrap()];
    net.client.put(&y).unwrap();

    for (cidr, node_ip) in [
        ("172.20.6.0/24", "192.168.77.3/32"),
        ("172.20.7.0/24", "192.168.77.4/32"),
    ] {
        wait_for(
            &format!("the route to {cidr} to go"),
            WAIT,
            || agent.log_text(),
            || net.node.route_to(cidr).is_none().then_some(()),
        );
        let ipcache = agent.ipcache();
        assert!(!ipcache.contains_key(&prefix(cidr)), "{ipcache:?}");
        assert!(!ipcache.contains_key(&prefix(node_ip)), "{ipcache:?}");
    }
    // The routes go before the node list is published: wait for the list.
    wait_for(
        "the rejected nodes to leave the node list",
        WAIT,
        || format!("{:?}", agent.nodes()),
        || agent.nodes().iter().all(|n| n.local).then_some(()),
    );
    assert!(agent.exited().is_none(), "{}", agent.log_text());
}

/// etcd down when a crashed agent comes back: the datapath keeps forwarding
/// what it already knows (routes and ipcache entries of other nodes are not
/// pruned), the store is reported down, and once etcd is back the node
/// registers and only then is a node deleted meanwhile removed.
#[test]
fn etcd_down_at_restart_keeps_what_the_datapath_knows() {
    require_root!("network namespaces, devices, a bpffs and etcd");
    let mut net = Net::new();
    let mut agent = Agent::new(&net.node, &cluster_pool(&net, "routingMode: tunnel\n"));
    start_and_assign(&net, &mut agent, "172.20.5.0/24");
    for (name, node_ip, cidr) in [
        ("remote-k", "192.168.77.3", "172.20.6.0/24"),
        ("remote-g", "192.168.77.4", "172.20.7.0/24"),
    ] {
        net.client.put(&remote(name, node_ip, cidr)).unwrap();
        wait_for(
            &format!("the route to {name}"),
            WAIT,
            || agent.log_text(),
            || net.node.route_to(cidr),
        );
    }
    let known = agent.ipcache();
    for entry in [
        "172.20.6.0/24",
        "192.168.77.3/32",
        "172.20.7.0/24",
        "192.168.77.4/32",
    ] {
        assert!(known.contains_key(&prefix(entry)), "{entry}: {known:?}");
    }

    agent.stop(true);
    // remote-g goes while this agent is away; then etcd goes too.
    assert!(net.client.delete("remote-g").unwrap());
    net.etcd.stop();
    agent.spawn();
    agent.wait_ready();
    wait_for(
        "kvstore Failure",
        WAIT,
        || agent.log_text(),
        || agent.status().kvstore.filter(|k| k.state == "Failure"),
    );
    // Some time to do something wrong: everything stays.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let kv = agent.status().kvstore.unwrap();
    assert!(
        kv.state == "Connecting" || kv.state == "Failure",
        "etcd is down but the store is {kv:?}"
    );
    for cidr in ["172.20.6.0/24", "172.20.7.0/24"] {
        assert!(
            net.node.route_to(cidr).is_some(),
            "the route to {cidr} was removed while etcd was down\n{}",
            agent.log_text()
        );
    }
    let kept = agent.ipcache();
    for entry in [
        "172.20.6.0/24",
        "192.168.77.3/32",
        "172.20.7.0/24",
        "192.168.77.4/32",
    ] {
        assert_eq!(
            kept.get(&prefix(entry)),
            known.get(&prefix(entry)),
            "{entry}"
        );
    }

    // etcd is back: the node registers, and the list removes remote-g only.
    net.etcd.restart().expect("restart etcd");
    wait_registered(&net, &agent, "172.20.5.0/24");
    wait_for(
        "kvstore Ok",
        WAIT,
        || agent.log_text(),
        || agent.status().kvstore.filter(|k| k.state == "Ok"),
    );
    wait_for(
        "the route to the deleted remote-g to go",
        WAIT,
        || agent.log_text(),
        || net.node.route_to("172.20.7.0/24").is_none().then_some(()),
    );
    let after = agent.ipcache();
    assert!(!after.contains_key(&prefix("172.20.7.0/24")), "{after:?}");
    assert!(!after.contains_key(&prefix("192.168.77.4/32")), "{after:?}");
    assert!(net.node.route_to("172.20.6.0/24").is_some());
    assert_eq!(
        after.get(&prefix("172.20.6.0/24")),
        known.get(&prefix("172.20.6.0/24"))
    );
}
