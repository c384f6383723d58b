//! The default lab as a cluster: three nodes, etcd and ciliate-operator in the
//! fabric, agents with cluster-pool IPAM that learn about each other through
//! the store, in tunnel and in native routing mode. Needs root and the
//! workspace's binaries (`cargo build --workspace --bins`: ciliate-agent,
//! ciliate-cni, ciliate-operator, ciliate).
//!
//! For each routing mode, one lab (bringing one up is the slow part) and these
//! checks in order:
//! - node i gets 172.20.i.0/24 (agents start one after another);
//! - `ciliate node list -o json` on node0 shows all three nodes;
//! - node0's ipcache and routes reach the other nodes' PodCIDRs the way the
//!   mode says (tunnel: ipcache tunnel endpoint + route via ciliate_host;
//!   native: no tunnel endpoint + route via the node's IP on eth0);
//! - `connectivity::run` passes every scenario (none skipped);
//! - a cross-node TCP stream survives restarting the remote node's agent,
//!   and the PodCIDRs do not change;
//! - restarting the operator changes no PodCIDR;
//! - node2 leaving (agent killed, CiliateNode deleted) removes its PodCIDR
//!   from node0's ipcache and routes; node2 coming back (agent restarted)
//!   brings them back with the same PodCIDR, and pods reach it again.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

mod common;

use ciliate_lab::connectivity::{self, Outcome};
use ciliate_lab::{Lab, LabGuard, LabSpec, RoutingMode};
use common::{ok, Stream};
use ipnet::Ipv4Net;
use serde_json::Value;

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs, etcd in a namespace")
}

fn cidr(i: usize) -> Ipv4Net {
    format!("172.20.{i}.0/24").parse().unwrap()
}

fn json(lab: &Lab, target: &str, argv: &[&str]) -> Value {
    serde_json::from_str(&ok(lab, target, argv)).unwrap()
}

/// Waits until `check` holds, up to `secs` seconds; panics with `what` and the last state.
fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: still not true after {secs} s: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// node0's view of a PodCIDR: its ipcache entry's tunnel endpoint (None if
/// the prefix is absent) and its route (None if absent).
fn view(lab: &Lab, cidr: Ipv4Net) -> (Option<Value>, Option<Value>) {
    let entries = json(
        lab,
        "node0",
        &["ciliate", "bpf", "ipcache", "list", "-o", "json"],
    );
    let entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == cidr.to_string())
        .cloned();
    let routes = json(
        lab,
        "node0",
        &["ip", "-j", "route", "show", &cidr.to_string()],
    );
    let route = routes.as_array().unwrap().first().cloned();
    (entry, route)
}

/// Checks node0 reaches node `i`'s PodCIDR as the routing mode says.
fn reaches(lab: &Lab, routing: RoutingMode, i: usize) -> Result<(), String> {
    let node_ip = lab.node(&format!("node{i}")).unwrap().ip().to_string();
    let (entry, route) = view(lab, cidr(i));
    let entry = entry.ok_or("no ipcache entry")?;
    let route = route.ok_or("no route")?;
    match routing {
        RoutingMode::Tunnel => {
            if entry["tunnelEndpoint"] != node_ip.as_str() {
                return Err(format!(
                    "ipcache entry {entry} does not tunnel to {node_ip}"
                ));
            }
            if route["dev"] != "ciliate_host" {
                return Err(format!("route {route} is not via ciliate_host"));
            }
        }
        RoutingMode::Native => {
            if !entry["tunnelEndpoint"].is_null() {
                return Err(format!("ipcache entry {entry} has a tunnel endpoint"));
            }
            if route["gateway"] != node_ip.as_str() || route["dev"] != "eth0" {
                return Err(format!("route {route} is not via {node_ip} dev eth0"));
            }
        }
    }
    Ok(())
}

fn gone(lab: &Lab, i: usize) -> Result<(), String> {
    match view(lab, cidr(i)) {
        (None, None) => Ok(()),
        other => Err(format!("node0 still has {other:?}")),
    }
}

/// The PodCIDR each node's agent reports.
fn agent_cidrs(lab: &Lab) -> Vec<Ipv4Net> {
    lab.nodes()
        .iter()
        .map(|n| {
            let s: ciliate_api::Status = lab.client(&n.name).unwrap().get("/v1/status").unwrap();
            s.ipam.cidr
        })
        .collect()
}

/// The PodCIDRs of every CiliateNode in the store, by name.
fn stored_cidrs(lab: &Lab) -> Vec<(String, Vec<String>)> {
    let list = lab
        .with_store(|store| async move { store.list::<ciliate_store::CiliateNode>().await })
        .unwrap();
    list.items
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.spec
                    .ipam
                    .pod_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            )
        })
        .collect()
}

fn cluster(routing: RoutingMode, tag: char) {
    let name = format!("m{}{tag}", std::process::id());
    let mut lab = LabGuard::up(&LabSpec {
        routing,
        ..LabSpec::new(&name, 3)
    })
    .expect("lab up");
    let timeout = Duration::from_mins(1);

    // PodCIDRs from the operator, in node order, in the lab's state and status.
    let want: Vec<Ipv4Net> = (0..3).map(cidr).collect();
    let recorded: Vec<Option<Ipv4Net>> = lab.nodes().iter().map(|n| n.pod_cidr).collect();
    assert_eq!(recorded, want.iter().copied().map(Some).collect::<Vec<_>>());
    assert_eq!(agent_cidrs(&lab), want);
    let status = lab.status();
    assert_eq!(status.routing, routing);
    let services: Vec<(&str, bool)> = status
        .processes
        .iter()
        .map(|p| (p.name.as_str(), p.alive))
        .collect();
    assert_eq!(services, [("etcd", true), ("ciliate-operator", true)]);

    // The nodes as node0's agent knows them, through the CLI.
    let nodes = json(&lab, "node0", &["ciliate", "node", "list", "-o", "json"]);
    let mut seen: Vec<(String, String, String)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["internalIp"].as_str().unwrap_or_default().to_string(),
                n["podCIDRs"][0].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            (
                format!("node{i}"),
                format!("192.168.10.{}", 100 + i),
                cidr(i).to_string(),
            )
        })
        .collect();
    assert_eq!(seen, expected, "{nodes:#}");
    let table = ok(&lab, "node0", &["ciliate", "node", "list"]);
    assert!(
        table.starts_with("NAME") && table.contains("CILIATE-INTERNAL-IP"),
        "{table}"
    );

    // node0 reaches the others' PodCIDRs the way the mode says.
    for i in [1, 2] {
        eventually(20, &format!("node0 routes to node{i}"), || {
            reaches(&lab, routing, i)
        });
    }

    // The connectivity test, as `ciliate connectivity test` runs it.
    let mut out = Vec::new();
    let report = connectivity::run(&mut lab, &connectivity::Options::default(), &mut out)
        .expect("connectivity test setup");
    let printed = String::from_utf8_lossy(&out);
    eprintln!("{printed}");
    assert!(report.passed(), "connectivity test failed:\n{printed}");
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
    // A rerun reuses the pods and passes again (only the quick scenarios).
    let again = connectivity::run(
        &mut lab,
        &connectivity::Options {
            tests: vec!["pod-to-pod".into()],
            ..connectivity::Options::default()
        },
        &mut Vec::new(),
    )
    .unwrap();
    assert!(again.passed(), "{again:#?}");

    // A cross-node TCP stream survives restarting the remote node's agent.
    let client = lab.pod("ciliate-test/client").unwrap().clone();
    let echo = lab.pod("ciliate-test/echo-other-node").unwrap().clone();
    assert_eq!(echo.node, "node1");
    let stream = Stream::start(
        &client.netns_path,
        SocketAddr::from((echo.ip, connectivity::ECHO_PORT)),
    );
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_agent("node1").unwrap();
    let at_kill = stream.received();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        stream.received() > at_kill,
        "the stream flows while node1's agent is dead"
    );
    lab.start_agent("node1", timeout).unwrap();
    let at_restart = stream.received();
    std::thread::sleep(Duration::from_secs(1));
    let (sent, echoed) = stream.finish();
    assert!(echoed > at_restart, "the stream flows after the restart");
    assert_eq!(echoed, sent, "every byte sent came back");
    assert_eq!(agent_cidrs(&lab), want, "PodCIDRs unchanged by the restart");
    for i in [1, 2] {
        eventually(20, &format!("node0 still routes to node{i}"), || {
            reaches(&lab, routing, i)
        });
    }

    // Restarting the operator changes no PodCIDR.
    let before = stored_cidrs(&lab);
    assert_eq!(
        before,
        (0..3)
            .map(|i| (format!("node{i}"), vec![cidr(i).to_string()]))
            .collect::<Vec<_>>()
    );
    lab.kill_operator().unwrap();
    lab.start_operator().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.health_problems().is_empty(),
        "{:?}",
        lab.health_problems()
    );
    assert_eq!(
        stored_cidrs(&lab),
        before,
        "the operator kept every PodCIDR"
    );
    assert_eq!(agent_cidrs(&lab), want);

    // node2 leaves: its agent dies and its CiliateNode is deleted.
    let health2: Vec<ciliate_api::Node> = lab.client("node2").unwrap().get("/v1/node").unwrap();
    let health2 = health2
        .iter()
        .find(|n| n.local)
        .and_then(|n| n.health_ip)
        .expect("node2 announces its health IP");
    ok(
        &lab,
        "ciliate-test/client",
        &["ping", "-c", "1", "-W", "2", &health2.to_string()],
    );
    lab.kill_agent("node2").unwrap();
    let deleted = lab
        .with_store(|store| async move {
            store
                .delete::<ciliate_store::CiliateNode>(None, "node2")
                .await
        })
        .unwrap();
    assert!(deleted, "node2 was registered");
    eventually(30, "node0 forgets node2", || gone(&lab, 2));
    eventually(10, "node0's node list drops node2", || {
        let nodes: Vec<ciliate_api::Node> = lab.client("node0").unwrap().get("/v1/node").unwrap();
        if nodes.iter().any(|n| n.name == "node2") {
            Err(format!("{nodes:?}"))
        } else {
            Ok(())
        }
    });
    reaches(&lab, routing, 1).expect("node1 is untouched");

    // node2 comes back with its PodCIDR (saved in its state directory).
    lab.start_agent("node2", timeout).unwrap();
    assert_eq!(agent_cidrs(&lab), want);
    eventually(30, "node0 learns node2 again", || reaches(&lab, routing, 2));
    eventually(
        20,
        "the client reaches node2's health endpoint again",
        || {
            let out = lab
                .exec(
                    "ciliate-test/client",
                    &["ping", "-c", "1", "-W", "1", &health2.to_string()],
                )
                .unwrap();
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    );
    let ip: Ipv4Addr = "192.168.10.102".parse().unwrap();
    assert_eq!(lab.node("node2").unwrap().ip(), ip);

    lab.down().unwrap();
    assert!(ciliate_lab::leftovers(&name).is_empty());
}

#[test]
fn tunnel_cluster() {
    if root() {
        cluster(RoutingMode::Tunnel, 't');
    }
}

#[test]
fn native_cluster() {
    if root() {
        cluster(RoutingMode::Native, 'n');
    }
}
