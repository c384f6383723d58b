//! The CLI against a real agent in a one-node lab: status, endpoints, maps,
//! metrics and the monitor, in table and JSON form. Needs root and the
//! workspace's binaries (`cargo build --workspace --bins`).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ciliate_lab::{LabGuard, LabSpec};
use serde_json::Value;

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web}
spec:
  nodeName: node0
  containers: [{name: c, image: none, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web}
spec:
  nodeName: node0
  containers: [{name: c, image: none, command: [sleep, infinity]}]
";

const CILIATE: &str = env!("CARGO_BIN_EXE_ciliate");

fn root() -> bool {
    ciliate_datapath::testing::running_as_root("namespaces, BPF, bpffs")
}

/// Runs `ciliate ARGS` inside node0, where it reaches node0's agent.
fn ciliate(lab: &LabGuard, args: &[&str]) -> String {
    let mut command = vec![CILIATE];
    command.extend_from_slice(args);
    let out = lab.exec("node0", &command).unwrap();
    assert!(
        out.status.success(),
        "ciliate {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(lab: &LabGuard, args: &[&str]) -> Value {
    serde_json::from_str(&ciliate(lab, args)).unwrap()
}

#[test]
fn status_endpoints_maps_metrics_and_monitor() {
    if !root() {
        return;
    }
    let mut lab = LabGuard::up(&LabSpec {
        ipam: ciliate_lab::IpamMode::HostScope,
        ..LabSpec::new(format!("c{}", std::process::id()), 1)
    })
    .unwrap();
    lab.apply_yaml(PODS).unwrap();
    let a = lab.pod("web/a").unwrap().clone();
    let b = lab.pod("web/b").unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .exec("web/a", &["ping", "-c", "1", "-W", "1", &b.ip.to_string()])
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "a cannot reach b");
    }

    // The API is root-only.
    let socket = &lab.node("node0").unwrap().socket;
    let mode = std::fs::metadata(socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o600,
        "API socket {} must be root-only",
        socket.display()
    );

    // status --verbose lists every allocated address with its owner.
    let text = ciliate(&lab, &["status", "--verbose"]);
    assert!(
        text.contains("IPv4: 3/253 allocated from 172.20.0.0/24"),
        "{text}"
    );
    assert!(text.contains(&format!("{} (web/a)", a.ip)), "{text}");
    assert!(text.contains("(health)"), "{text}");
    // BPF masquerading is the default; the line reads like cilium's.
    let masq = text
        .lines()
        .find(|l| l.starts_with("Masquerading:"))
        .unwrap_or_else(|| panic!("no Masquerading line in {text}"));
    assert!(
        masq.contains(" BPF [") && masq.ends_with(" [IPv4: Enabled]"),
        "{masq}"
    );
    let status = json(&lab, &["status", "-o", "json"]);
    assert_eq!(status["masquerading"]["mode"], "BPF");
    assert_eq!(status["nodeName"], "node0");
    assert_eq!(status["endpointsReady"], 3);

    // endpoint list / get, with the networking section.
    let list = json(&lab, &["endpoint", "list", "-o", "json"]);
    let ep = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["podName"] == "a")
        .expect("endpoint of web/a")
        .clone();
    let id = ep["id"].to_string();
    let text = ciliate(&lab, &["endpoint", "list"]);
    assert!(
        text.contains("k8s:web/a") && text.contains("reserved:health"),
        "{text}"
    );
    let text = ciliate(&lab, &["endpoint", "get", &id]);
    for needle in [
        format!(
            "Interface:    {} (index {})",
            ep["hostIfname"].as_str().unwrap(),
            ep["hostIfindex"]
        ),
        format!("MAC:          {}", ep["mac"].as_str().unwrap()),
        format!("Host MAC:     {}", ep["hostMac"].as_str().unwrap()),
        format!("Addressing:   IPv4 {}", a.ip),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
    let by_container = json(
        &lab,
        &[
            "endpoint",
            "get",
            &format!("container-id:{}", a.container_id),
            "-o",
            "json",
        ],
    );
    assert_eq!(by_container["id"], ep["id"]);

    // bpf endpoint list shows what the agent wrote to the map.
    let entries = json(&lab, &["bpf", "endpoint", "list", "-o", "json"]);
    let entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ip"] == a.ip.to_string())
        .expect("map entry of a");
    assert_eq!(entry["id"], ep["id"]);
    assert_eq!(entry["ifindex"], ep["hostIfindex"]);
    assert_eq!(entry["mac"], ep["mac"]);
    assert!(ciliate(&lab, &["bpf", "endpoint", "list"]).contains(&format!("id={id}")));

    // bpf ipcache / tunnel list show what is in the ipcache (written here as
    // the agent will once nodes come from the cluster store).
    let mut maps =
        ciliate_datapath::loader::Maps::open(&lab.node("node0").unwrap().bpf_root).unwrap();
    let remote = ciliate_datapath::maps::IpcacheValue {
        sec_identity: 6,
        tunnel_endpoint: u32::from_ne_bytes([192, 168, 10, 101]),
        flags: 0,
        pad: 0,
    };
    maps.ipcache
        .insert(
            &ciliate_datapath::maps::ipcache_key("172.20.1.0/24".parse().unwrap()),
            remote,
            0,
        )
        .unwrap();
    let ipcache = json(&lab, &["bpf", "ipcache", "list", "-o", "json"]);
    assert_eq!(ipcache[0]["prefix"], "172.20.1.0/24", "{ipcache}");
    assert_eq!(ipcache[0]["tunnelEndpoint"], "192.168.10.101");
    let text = ciliate(&lab, &["bpf", "tunnel", "list"]);
    assert!(
        text.contains("172.20.1.0/24") && text.contains("192.168.10.101"),
        "{text}"
    );

    // monitor --type drop decodes a drop with its reason: a spoofed source.
    let node = lab.node("node0").unwrap().clone();
    let mut monitor = Command::new("nsenter")
        .arg(format!("--net={}", node.netns_path.display()))
        .args([CILIATE, "--socket"])
        .arg(&node.socket)
        .args(["monitor", "--type", "drop", "-o", "json", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = monitor.stdout.take().unwrap();
    let reader =
        std::thread::spawn(move || BufReader::new(stdout).lines().next().map(Result::unwrap));
    assert!(lab
        .exec(
            "web/a",
            &["ip", "addr", "add", "172.20.0.250/32", "dev", "eth0"]
        )
        .unwrap()
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "monitor saw no drop");
        let _ = lab.exec(
            "web/a",
            &[
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                "172.20.0.250",
                &b.ip.to_string(),
            ],
        );
    }
    let _ = monitor.wait();
    let event: Value =
        serde_json::from_str(&reader.join().unwrap().expect("a drop event")).unwrap();
    assert_eq!(event["type"], "drop");
    assert_eq!(event["reason"], "Invalid source ip");
    assert_eq!(event["src"], "172.20.0.250");
    assert_eq!(event["dst"], b.ip.to_string());

    // ... and the drop is counted.
    let metrics = json(&lab, &["metrics", "list", "-o", "json"]);
    let counted = metrics
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["reason"] == "Invalid source ip" && m["packets"].as_u64() >= Some(1));
    assert!(counted, "{metrics}");
    assert!(ciliate(&lab, &["bpf", "metrics", "list"]).contains("Forwarded"));
}

#[test]
fn transfer_size_out_of_range_is_refused_before_anything_runs() {
    for bad in ["0", "1025", "99999999999999999999"] {
        let out = Command::new(CILIATE)
            .args([
                "connectivity",
                "test",
                "--name",
                "nolab",
                "--transfer-mib",
                bad,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--transfer-mib") && stderr.contains(bad),
            "{bad}: {stderr}"
        );
    }
    let help = Command::new(CILIATE)
        .args(["connectivity", "test", "--transfer-mib", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&help.stderr);
    assert!(stderr.contains("1..=1024"), "{stderr}");
}

#[test]
fn request_timeout_and_retry_out_of_range_are_refused_before_anything_runs() {
    for (flag, bad, allowed) in [
        ("--request-timeout", "0", "1..=600"),
        ("--request-timeout", "601", "1..=600"),
        ("--retry", "21", "0..=20"),
        ("--retry", "many", "invalid digit"),
        ("--retry-delay", "61", "0..=60"),
    ] {
        let out = Command::new(CILIATE)
            .args(["connectivity", "test", "--name", "nolab", flag, bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {bad}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(bad) && stderr.contains(allowed),
            "{flag} {bad}: {stderr}"
        );
    }
}
