//! The agent binary refuses a bad configuration at start, naming the key, the
//! value and what is allowed, before it touches anything.

use std::process::Command;

fn start_with(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ciliate-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_key_is_refused() {
    let (code, err) = start_with("nodeName: n\nipv4Range: 10.0.0.0/24\ntunelProtocol: vxlan\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tunelProtocol") && err.contains("tunnelProtocol"),
        "{err}"
    );
}

#[test]
fn bad_values_are_refused_with_what_is_allowed() {
    let (code, err) = start_with("ipv4Range: 10.0.0.0/24\nroutingMode: bgp\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("routingMode") && err.contains("bgp") && err.contains("native"),
        "{err}"
    );
    let (code, err) = start_with("ipv4Range: 300.0.0.0/24\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("ipv4Range") && err.contains("300.0.0.0/24") && err.contains("CIDR"),
        "{err}"
    );
    let (code, err) = start_with("ipv4Range: 10.0.0.0/24\nbpf:\n  root: relative/dir\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bpf.root") && err.contains("absolute"),
        "{err}"
    );
}

#[test]
fn flags_are_validated_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_ciliate-agent"))
        .args(["--ipv4-range", "10.0.0.0/33", "--node-name", "n"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ipv4Range") && err.contains("10.0.0.0/33"),
        "{err}"
    );
}

#[test]
fn multi_node_settings_are_checked() {
    let (code, err) = start_with("nodeName: n\nipam: {mode: cluster-pool}\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("etcd.endpoints") && err.contains("cluster-pool"),
        "{err}"
    );
    let cluster =
        "nodeName: n\nipam: {mode: cluster-pool}\netcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n";
    let (code, err) = start_with(&format!("{cluster}autoDirectNodeRoutes: true\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("autoDirectNodeRoutes") && err.contains("tunnel") && err.contains("native"),
        "{err}"
    );
    let (code, err) = start_with(&format!(
        "{cluster}routingMode: native\nipv4NativeRoutingCIDR: 172.20.0.0/33\n"
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ipv4NativeRoutingCIDR") && err.contains("172.20.0.0/33"),
        "{err}"
    );
    let (code, err) = start_with(&format!("{cluster}ipv4Range: 10.0.0.0/24\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ipv4Range") && err.contains("operator"),
        "{err}"
    );
    let (code, err) = start_with(
        "nodeName: n\nipam: {mode: cluster-pool}\netcd: {endpoints: [\"127.0.0.1:2379\"]}\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("etcd.endpoints") && err.contains("127.0.0.1:2379") && err.contains("http://"),
        "{err}"
    );
    let (code, err) = start_with(&format!("{cluster}kvstoreLeaseTTL: 1\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("kvstoreLeaseTTL"), "{err}");
    let (code, err) = start_with(&format!("{cluster}clusterHealthPort: 0\n"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("clusterHealthPort"), "{err}");
}

#[test]
fn native_routing_with_masquerade_needs_the_native_cidr() {
    let (code, err) = start_with("nodeName: n\nipv4Range: 10.0.0.0/24\nroutingMode: native\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ipv4NativeRoutingCIDR")
            && err.contains("routingMode native")
            && err.contains("enableIPv4Masquerade"),
        "{err}"
    );
    let (code, err) = start_with(
        "nodeName: n\nipv4Range: 10.0.0.0/24\nipMasqAgent: {config: {nonMasqueradeCIDRs: [10.10.1.0/24, 10.10.1.0/33]}}\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ipMasqAgent.config.nonMasqueradeCIDRs[1]") && err.contains("10.10.1.0/33"),
        "{err}"
    );
}
