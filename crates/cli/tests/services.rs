//! The service, load-balancing, conntrack and NAT commands: `bpf lb list`,
//! `bpf ct list global`, `bpf ct flush global` and `bpf nat list` on entries
//! written by hand into maps pinned in a private bpffs (`--bpf-root`), and
//! `service list` against a stand-in for the agent's API on a unix socket.
//! The bpf commands need root (a bpffs, loading the datapath).

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use ciliate_datapath::loader::{Datapath, Maps};
use ciliate_datapath::maps::{
    be_addr, monotonic_seconds, Ct4Entry, Ct4Key, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service,
    Nat4Entry, BE_STATE_ACTIVE, BE_STATE_TERMINATING, CT_F_NODEPORT, CT_F_SEEN_REPLY,
    CT_KEY_SERVICE, IPPROTO_TCP, IPPROTO_UDP, LB_SCOPE_EXTERNAL, LB_SCOPE_INTERNAL, NAT_DIR_EGRESS,
    NAT_DIR_INGRESS, NAT_F_MASQUERADE, NAT_F_NODEPORT, SVC_F_AFFINITY, SVC_F_CLUSTER_IP,
    SVC_F_NODEPORT, SVC_F_TWO_SCOPES,
};
use serde_json::{json, Value};

const CILIATE: &str = env!("CARGO_BIN_EXE_ciliate");

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// A bpffs mounted in a temporary directory with the datapath's maps pinned
/// under it; unmounted (and the directory removed) on drop.
struct PinnedMaps {
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl PinnedMaps {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bpf");
        std::fs::create_dir(&root).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a bpffs on {}", root.display());
        let pinned = Self { root, dir };
        Datapath::open(&pinned.root).expect("load the datapath and pin its maps");
        pinned
    }

    fn maps(&self) -> Maps {
        Maps::open(&self.root).unwrap()
    }

    fn ciliate(&self, args: &[&str]) -> String {
        let mut command = Command::new(CILIATE);
        command.args(args).arg("--bpf-root").arg(&self.root);
        // No agent: the commands must not need one with --bpf-root.
        command
            .arg("--socket")
            .arg(self.dir.path().join("no-agent.sock"));
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "ciliate {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ciliate(&args)).unwrap()
    }
}

impl Drop for PinnedMaps {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn bpf_lb_list_shows_slots_backends_and_reverse_nat() {
    ciliate_datapath::require_root!("a bpffs and loading the datapath");
    let pinned = PinnedMaps::new();
    let mut maps = pinned.maps();
    let cip = ip("10.96.0.10");
    maps.lb4_backends
        .insert(
            7,
            Lb4Backend::new(ip("172.20.1.5"), 8080, IPPROTO_TCP, BE_STATE_ACTIVE),
            0,
        )
        .unwrap();
    maps.lb4_backends
        .insert(
            8,
            Lb4Backend::new(ip("172.20.2.5"), 8080, IPPROTO_TCP, BE_STATE_TERMINATING),
            0,
        )
        .unwrap();
    maps.lb4_reverse_nat
        .insert(3, Lb4ReverseNat::new(cip, 80), 0)
        .unwrap();
    let head = Lb4Service {
        rev_nat_index: 3,
        count: 1,
        flags: SVC_F_CLUSTER_IP | SVC_F_AFFINITY,
        affinity_timeout: 10_800,
        ..Lb4Service::default()
    };
    maps.lb4_services
        .insert(
            Lb4Key::new(cip, 80, IPPROTO_TCP, LB_SCOPE_EXTERNAL, 0),
            head,
            0,
        )
        .unwrap();
    let slot = |id| Lb4Service {
        backend_id: id,
        ..Lb4Service::default()
    };
    maps.lb4_services
        .insert(
            Lb4Key::new(cip, 80, IPPROTO_TCP, LB_SCOPE_EXTERNAL, 1),
            slot(7),
            0,
        )
        .unwrap();
    let np = Lb4Service {
        rev_nat_index: 4,
        count: 1,
        flags: SVC_F_NODEPORT | SVC_F_TWO_SCOPES,
        ..Lb4Service::default()
    };
    maps.lb4_services
        .insert(
            Lb4Key::new(
                Ipv4Addr::UNSPECIFIED,
                30080,
                IPPROTO_UDP,
                LB_SCOPE_INTERNAL,
                0,
            ),
            np,
            0,
        )
        .unwrap();

    let list = pinned.json(&["bpf", "lb", "list"]);
    assert_eq!(
        list,
        json!([
            {"service": "0.0.0.0:30080/UDP", "scope": "internal", "slot": 0, "revNatIndex": 4,
             "count": 1, "flags": ["NodePort", "two-scopes"]},
            {"service": "10.96.0.10:80/TCP", "scope": "external", "slot": 0, "revNatIndex": 3,
             "count": 1, "flags": ["ClusterIP", "sessionAffinity"], "affinityTimeout": 10800},
            {"service": "10.96.0.10:80/TCP", "scope": "external", "slot": 1, "revNatIndex": 3,
             "backendId": 7, "backend": "172.20.1.5:8080/TCP", "backendState": "active"},
        ])
    );
    let text = pinned.ciliate(&["bpf", "lb", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE ADDRESS")
            && lines[0].contains("BACKEND ADDRESS (REVNAT_ID) (SLOT)"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("0.0.0.0:30080/UDP/i (0)")
            && lines[1].contains("0.0.0.0:0 (4) (0) [NodePort, two-scopes]"),
        "{text}"
    );
    assert!(
        lines[2].contains("[ClusterIP, sessionAffinity, affinity 10800s] count=1"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("10.96.0.10:80/TCP (1)")
            && lines[3].ends_with("172.20.1.5:8080/TCP (3) (1)"),
        "{text}"
    );
}

#[test]
fn bpf_ct_list_and_flush_global() {
    ciliate_datapath::require_root!("a bpffs and loading the datapath");
    let pinned = PinnedMaps::new();
    let mut maps = pinned.maps();
    let now = monotonic_seconds();
    let client = ip("172.20.0.5");
    let svc_key = Ct4Key::new(
        client,
        40000,
        ip("10.96.0.10"),
        80,
        IPPROTO_TCP,
        CT_KEY_SERVICE,
    );
    let conn_key = Ct4Key::new(client, 40000, ip("172.20.1.5"), 8080, IPPROTO_TCP, 0);
    let udp_key = Ct4Key::new(client, 5000, ip("172.20.1.5"), 5353, IPPROTO_UDP, 0);
    maps.ct4_tcp
        .insert(
            svc_key,
            Ct4Entry {
                lifetime: now + 100,
                backend_id: 7,
                rev_nat_index: 3,
                ..Ct4Entry::default()
            },
            0,
        )
        .unwrap();
    let conn = Ct4Entry {
        tx_packets: 3,
        tx_bytes: 180,
        rx_packets: 2,
        rx_bytes: 120,
        lifetime: now + 3600,
        created: now,
        rev_nat_index: 3,
        flags: CT_F_SEEN_REPLY | CT_F_NODEPORT,
        frontend_addr: be_addr(ip("10.96.0.10")),
        ..Ct4Entry::default()
    };
    maps.ct4_tcp.insert(conn_key, conn, 0).unwrap();
    maps.ct4_any
        .insert(
            udp_key,
            Ct4Entry {
                lifetime: now + 60,
                ..Ct4Entry::default()
            },
            0,
        )
        .unwrap();

    let list = pinned.json(&["bpf", "ct", "list", "global"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let find = |dst: &str, service: bool| {
        list.iter()
            .find(|e| e["destination"] == dst && e["service"] == service)
            .unwrap_or_else(|| panic!("{dst} in {list:?}"))
            .clone()
    };
    let c = find("172.20.1.5:8080", false);
    assert_eq!(c["proto"], "TCP");
    assert_eq!(c["source"], "172.20.0.5:40000");
    assert_eq!(c["flags"], json!(["seen-reply", "nodeport"]));
    assert_eq!(
        (c["txPackets"].as_u64(), c["rxBytes"].as_u64()),
        (Some(3), Some(120))
    );
    assert_eq!(c["frontend"], "10.96.0.10");
    let remaining = c["remaining"].as_i64().unwrap();
    assert!((3590..=3600).contains(&remaining), "{remaining}");
    assert_eq!(find("10.96.0.10:80", true)["backendId"], 7);
    assert_eq!(find("172.20.1.5:5353", false)["proto"], "UDP");

    let text = pinned.ciliate(&["bpf", "ct", "list", "global"]);
    assert!(
        text.lines().any(
            |l| l.starts_with("TCP OUT 172.20.0.5:40000 -> 10.96.0.10:80 service ")
                && l.contains("BackendID=7")
        ),
        "{text}"
    );
    assert!(
        text.contains("Flags=[seen-reply,nodeport] RevNatIndex=3"),
        "{text}"
    );

    // Only `global` exists.
    let out = Command::new(CILIATE)
        .args(["bpf", "ct", "list", "endpoint"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("global"));

    let flushed = pinned.json(&["bpf", "ct", "flush", "global"]);
    assert_eq!(
        flushed,
        json!([{"map": "ciliate_ct4_tcp", "entries": 2}, {"map": "ciliate_ct4_any", "entries": 1}])
    );
    assert_eq!(pinned.json(&["bpf", "ct", "list", "global"]), json!([]));
    let text = pinned.ciliate(&["bpf", "ct", "flush", "global"]);
    assert!(
        text.contains("Flushed 0 entries from ciliate_ct4_tcp"),
        "{text}"
    );
}

#[test]
fn bpf_nat_list() {
    ciliate_datapath::require_root!("a bpffs and loading the datapath");
    let pinned = PinnedMaps::new();
    let mut maps = pinned.maps();
    let now = monotonic_seconds();
    let node = ip("192.168.10.100");
    let outside = ip("192.168.10.200");
    let backend = ip("172.20.1.5");
    let entry = |to: Ipv4Addr, port: u16| Nat4Entry {
        to_addr: be_addr(to),
        to_port: port.to_be(),
        flags: NAT_F_NODEPORT,
        lifetime: now + 60,
        created: now.saturating_sub(5),
    };
    maps.snat4
        .insert(
            Ct4Key::new(outside, 51000, backend, 8080, IPPROTO_TCP, NAT_DIR_EGRESS),
            entry(node, 51000),
            0,
        )
        .unwrap();
    maps.snat4
        .insert(
            Ct4Key::new(backend, 8080, node, 51000, IPPROTO_TCP, NAT_DIR_INGRESS),
            entry(outside, 51000),
            0,
        )
        .unwrap();
    let list = pinned.json(&["bpf", "nat", "list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let egress = list.iter().find(|e| e["direction"] == "egress").unwrap();
    assert_eq!(egress["source"], "192.168.10.200:51000");
    assert_eq!(egress["destination"], "172.20.1.5:8080");
    assert_eq!(egress["to"], "192.168.10.100:51000");
    assert_eq!(egress["flags"], json!(["nodeport"]));
    let ingress = list.iter().find(|e| e["direction"] == "ingress").unwrap();
    assert_eq!(ingress["to"], "192.168.10.200:51000");
    let text = pinned.ciliate(&["bpf", "nat", "list"]);
    assert!(
        text.contains(
            "TCP OUT 192.168.10.200:51000 -> 172.20.1.5:8080 XLATE_SRC 192.168.10.100:51000"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "TCP IN 172.20.1.5:8080 -> 192.168.10.100:51000 XLATE_DST 192.168.10.200:51000"
        ),
        "{text}"
    );
}

#[test]
fn bpf_ipmasq_list_and_masquerade_nat_entries() {
    ciliate_datapath::require_root!("a bpffs and loading the datapath");
    let pinned = PinnedMaps::new();
    let mut maps = pinned.maps();
    for cidr in [
        "169.254.0.0/16",
        "10.10.2.0/24",
        "10.10.1.0/24",
        "10.0.0.0/8",
    ] {
        maps.ipmasq4
            .insert(
                &ciliate_datapath::maps::ipcache_key(cidr.parse().unwrap()),
                ciliate_datapath::maps::IpmasqValue::default(),
                0,
            )
            .unwrap();
    }
    assert_eq!(
        pinned.json(&["bpf", "ipmasq", "list"]),
        json!([{"prefix": "10.0.0.0/8"}, {"prefix": "10.10.1.0/24"}, {"prefix": "10.10.2.0/24"}, {"prefix": "169.254.0.0/16"}])
    );
    assert_eq!(
        pinned.ciliate(&["bpf", "ipmasq", "list"]),
        "IP PREFIX/ADDRESS\n10.0.0.0/8\n10.10.1.0/24\n10.10.2.0/24\n169.254.0.0/16\n"
    );

    // A pod's connection to the outside, masqueraded to the node's address.
    let now = monotonic_seconds();
    let pod = ip("172.20.0.5");
    let node = ip("192.168.10.100");
    let outside = ip("10.10.1.200");
    maps.snat4
        .insert(
            Ct4Key::new(pod, 40000, outside, 80, IPPROTO_TCP, NAT_DIR_EGRESS),
            Nat4Entry {
                to_addr: be_addr(node),
                to_port: 61000u16.to_be(),
                flags: NAT_F_MASQUERADE,
                lifetime: now + 60,
                created: now,
            },
            0,
        )
        .unwrap();
    let list = pinned.json(&["bpf", "nat", "list"]);
    assert_eq!(list[0]["flags"], json!(["masquerade"]));
    assert_eq!(list[0]["to"], "192.168.10.100:61000");
    let text = pinned.ciliate(&["bpf", "nat", "list"]);
    assert!(
        text.contains("TCP OUT 172.20.0.5:40000 -> 10.10.1.200:80 XLATE_SRC 192.168.10.100:61000")
            && text.contains("Flags=[masquerade]"),
        "{text}"
    );
}

/// Answers `GET /v1/service` with `body` on a unix socket, once per connection.
fn serve_once(path: &Path, body: String) -> std::thread::JoinHandle<String> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut request = String::new();
        reader.read_line(&mut request).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let mut out = &stream;
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    })
}

#[test]
fn service_list_prints_like_cilium_dbg() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let services = json!([
        {"id": 2, "frontend": "0.0.0.0:30080/TCP", "type": "NodePort", "service": "shop/web",
         "trafficPolicy": "Local", "sessionAffinity": false,
         "backends": [{"id": 1, "address": "172.20.0.5:8080/TCP", "state": "active", "nodeName": "node0"}]},
        {"id": 1, "frontend": "10.96.0.10:80/TCP", "type": "ClusterIP", "service": "shop/web",
         "trafficPolicy": "Cluster", "sessionAffinity": false,
         "backends": [
            {"id": 1, "address": "172.20.0.5:8080/TCP", "state": "active", "nodeName": "node0"},
            {"id": 2, "address": "172.20.1.5:8080/TCP", "state": "terminating", "nodeName": "node1"}]}
    ]);
    let server = serve_once(&socket, services.to_string());
    let out = Command::new(CILIATE)
        .arg("--socket")
        .arg(&socket)
        .args(["service", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.join().unwrap().starts_with("GET /v1/service "));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            vec!["ID", "Frontend", "Service Type", "Backend"],
            vec![
                "1",
                "10.96.0.10:80/TCP",
                "ClusterIP",
                "1 => 172.20.0.5:8080/TCP (active)"
            ],
            vec!["2 => 172.20.1.5:8080/TCP (terminating)"],
            vec![
                "2",
                "0.0.0.0:30080/TCP",
                "NodePort (Local)",
                "1 => 172.20.0.5:8080/TCP (active)"
            ],
        ],
        "{text}"
    );

    std::fs::remove_file(&socket).unwrap();
    let server = serve_once(&socket, services.to_string());
    let out = Command::new(CILIATE)
        .arg("--socket")
        .arg(&socket)
        .args(["service", "list", "-o", "json"])
        .output()
        .unwrap();
    server.join().unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], 1, "sorted by id");
    assert_eq!(listed[1]["backends"][0]["nodeName"], "node0");
}
