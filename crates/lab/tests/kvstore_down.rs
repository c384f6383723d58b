//! etcd down: a two-node tunnel lab with a pod on each node; the lab's etcd
//! is stopped and node1's agent restarted without it. Checks:
//! - the agent comes back serving, and `ciliate status` (Status.kvstore) on
//!   node1 shows a non-Ok state naming the etcd endpoint and the error;
//! - the connectivity test says so in its header;
//! - the pods still reach each other across the nodes (ICMP, new TCP
//!   connections): the datapath keeps forwarding what it already knows;
//! - with etcd started again node1's kvstore state becomes Ok and a node
//!   change still propagates: node0 leaving (agent killed, CiliateNode
//!   deleted) leaves node1's ipcache, node0 coming back returns to it.
//!
//! Needs root and the workspace's binaries (`cargo build --workspace --bins`).

use std::time::{Duration, Instant};

use ciliate_lab::{Lab, LabGuard, LabSpec, RoutingMode};
use serde_json::Value;

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  nodeName: node0
  containers: [{name: c, image: none, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  nodeName: node1
  containers:
    - {name: echo, image: none, workingDir: /tmp, command: [socat, 'TCP4-LISTEN:9000,fork,reuseaddr', 'EXEC:cat']}
";

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs, etcd in a namespace")
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

/// Runs a command and returns its stdout, or what went wrong.
fn run(lab: &Lab, target: &str, argv: &[&str]) -> Result<String, String> {
    let out = lab.exec(target, argv).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{}` in {target}: {:?}: {stdout}{}",
            argv.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// ICMP and a new TCP connection (echoed) from pod a to pod b.
fn a_reaches_b(lab: &Lab, b: &str) -> Result<(), String> {
    run(lab, "a", &["ping", "-n", "-c", "1", "-W", "2", b])?;
    let echoed = run(
        lab,
        "a",
        &[
            "sh",
            "-c",
            &format!("echo across-nodes | socat -T 3 - TCP4:{b}:9000"),
        ],
    )?;
    if echoed.trim() == "across-nodes" {
        Ok(())
    } else {
        Err(format!("echo answered {echoed:?}"))
    }
}

fn kvstore(lab: &Lab, node: &str) -> Result<ciliate_api::KvstoreStatus, String> {
    let status: ciliate_api::Status = lab
        .client(node)
        .map_err(|e| e.to_string())?
        .get("/v1/status")
        .map_err(|e| e.to_string())?;
    status
        .kvstore
        .ok_or_else(|| format!("{node} reports no kvstore"))
}

/// Whether node1's ipcache has an entry for `prefix`.
fn node1_knows(lab: &Lab, prefix: &str) -> bool {
    let entries: Value = serde_json::from_str(
        &run(
            lab,
            "node1",
            &["ciliate", "bpf", "ipcache", "list", "-o", "json"],
        )
        .unwrap(),
    )
    .unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["prefix"] == prefix)
}

#[test]
fn etcd_down_keeps_forwarding_and_recovers() {
    if !root() {
        return;
    }
    let name = format!("k{}", std::process::id());
    let mut lab = LabGuard::up(&LabSpec {
        routing: RoutingMode::Tunnel,
        ..LabSpec::new(&name, 2)
    })
    .expect("lab up");
    let timeout = Duration::from_mins(1);
    lab.apply_yaml(PODS).unwrap();
    let b = lab.pod("b").unwrap().ip.to_string();
    let node0_cidr = lab.node("node0").unwrap().pod_cidr.unwrap().to_string();
    eventually(30, "pod a reaches pod b on the other node", || {
        a_reaches_b(&lab, &b)
    });
    assert_eq!(kvstore(&lab, "node1").unwrap().state, "Ok");

    // etcd goes away; node1's agent restarts without it.
    lab.stop_etcd().unwrap();
    assert!(!lab.services()[0].alive, "{:?}", lab.services());
    lab.kill_agent("node1").unwrap();
    lab.start_agent("node1", timeout)
        .expect("the agent starts without etcd (PodCIDR saved in its state)");
    let endpoint = lab.state().etcd.as_ref().unwrap().endpoint.clone();
    eventually(40, "node1 reports the store as failing", || {
        let k = kvstore(&lab, "node1")?;
        if k.state == "Failure"
            && k.message.contains(&endpoint)
            && k.message.len() > endpoint.len() + 8
        {
            Ok(())
        } else {
            Err(format!("{k:?}"))
        }
    });
    let shown = run(&lab, "node1", &["ciliate", "status"]).unwrap_or_else(|e| e);
    let line = shown
        .lines()
        .find(|l| l.starts_with("KVStore"))
        .unwrap_or_else(|| panic!("no KVStore line in:\n{shown}"));
    eprintln!("etcd down, node1: {line}");
    assert!(
        line.contains("Failure") && line.contains(&endpoint),
        "{line}"
    );

    // The datapath keeps forwarding what it knew, both ways.
    a_reaches_b(&lab, &b).expect("a still reaches b with etcd down");
    let a = lab.pod("a").unwrap().ip.to_string();
    run(&lab, "b", &["ping", "-n", "-c", "1", "-W", "2", &a]).expect("b still reaches a");
    assert!(node1_knows(&lab, &node0_cidr), "node1 kept node0's PodCIDR");

    // The connectivity test's header names the failing store (the run itself
    // may then fail: the lab cannot publish its test pods without etcd).
    let mut out = Vec::new();
    let run_result = ciliate_lab::connectivity::run(
        &mut lab,
        &ciliate_lab::connectivity::Options {
            tests: vec!["pod-to-pod-same-node".into()],
            transfer_bytes: 1 << 20,
            ..ciliate_lab::connectivity::Options::default()
        },
        &mut out,
    );
    let printed = String::from_utf8_lossy(&out);
    eprintln!("{printed}");
    assert!(
        printed.contains("⚠️  node1: kvstore Failure: etcd: "),
        "{printed}\n{:?}",
        run_result.map(|r| r.summary())
    );

    // etcd comes back: the store is Ok again and changes propagate.
    lab.start_etcd(timeout).unwrap();
    eventually(40, "node1 reports the store as Ok", || {
        let k = kvstore(&lab, "node1")?;
        if k.state == "Ok" {
            Ok(())
        } else {
            Err(format!("{k:?}"))
        }
    });
    lab.kill_agent("node0").unwrap();
    let deleted = lab
        .with_store(|store| async move {
            store
                .delete::<ciliate_store::CiliateNode>(None, "node0")
                .await
        })
        .unwrap();
    assert!(deleted, "node0 was registered again after etcd came back");
    eventually(30, "node1 forgets node0", || {
        if node1_knows(&lab, &node0_cidr) {
            Err("node0's PodCIDR is still in node1's ipcache".into())
        } else {
            Ok(())
        }
    });
    lab.start_agent("node0", timeout).unwrap();
    eventually(30, "node1 learns node0 again", || {
        if node1_knows(&lab, &node0_cidr) {
            Ok(())
        } else {
            Err("node0's PodCIDR is not in node1's ipcache".into())
        }
    });
    eventually(30, "pod a reaches pod b again", || a_reaches_b(&lab, &b));

    lab.down().unwrap();
    assert!(ciliate_lab::leftovers(&name).is_empty());
}
