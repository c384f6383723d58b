//! The built plugin against bad input, with no agent running: each case gives
//! the right CNI code, a message naming the problem, nothing but JSON on
//! stdout, and no device left behind. Runs every case inside a node namespace
//! made for the test, never in the machine's own.

mod common;

use ciliate_datapath::require_root;
use common::{conf, host_ifname, Ns, Run};
use serde_json::json;

const MISSING_SOCKET: &str = "/nonexistent-ciliate-test/ciliate.sock";

fn good_conf() -> String {
    conf("1.1.0", std::path::Path::new(MISSING_SOCKET)).to_string()
}

/// The node and pod namespaces hold nothing but `lo`.
#[track_caller]
fn assert_untouched(node: &Ns, pod: Option<&Ns>) {
    assert_eq!(
        node.link_names(),
        vec!["lo".to_string()],
        "devices left in the node namespace"
    );
    if let Some(pod) = pod {
        assert_eq!(
            pod.link_names(),
            vec!["lo".to_string()],
            "devices left in the pod namespace"
        );
    }
}

#[test]
fn version_needs_nothing_but_the_command() {
    let out = Run::new(None, "VERSION")
        .stdin(r#"{"cniVersion":"1.0.0"}"#)
        .run();
    out.assert_ok();
    assert_eq!(
        out.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn malformed_and_invalid_configuration() {
    require_root!();
    let node = Ns::new("cnibad");
    let pod = Ns::new("cnibadpod");
    let cases: &[(&str, u64, &[&str])] = &[
        ("", 6, &["network configuration on stdin is empty"]),
        (
            "{\"cniVersion\": \"1.1.0\",",
            6,
            &["cannot decode the network configuration on stdin", "EOF"],
        ),
        ("[]", 6, &["must be a JSON object, not an array"]),
        (
            r#"{"name":"n","type":"ciliate"}"#,
            7,
            &["cniVersion is missing"],
        ),
        (
            r#"{"cniVersion":"0.2.0","name":"n","type":"ciliate"}"#,
            1,
            &["cniVersion \"0.2.0\" is not supported", "1.1.0"],
        ),
        (
            r#"{"cniVersion":"1.1.0","name":"n","type":"bridge"}"#,
            7,
            &["type \"bridge\" is invalid", "\"ciliate\""],
        ),
        (
            r#"{"cniVersion":"1.1.0","type":"ciliate"}"#,
            7,
            &["name is missing"],
        ),
        (
            r#"{"cniVersion":"1.1.0","name":"n","type":"ciliate","socketPath":5}"#,
            7,
            &["socketPath 5 is invalid", "absolute path"],
        ),
        (
            r#"{"cniVersion":"1.1.0","name":"n","type":"ciliate","prevResult":{"ips":[{"gateway":"10.0.0.1"}]}}"#,
            6,
            &["prevResult is not a valid CNI result", "ips[0]", "address"],
        ),
    ];
    for (stdin, code, parts) in cases {
        let out = Run::new(Some(&node), "ADD")
            .pod("c-bad-conf", &pod.path_str(), "eth0")
            .stdin(*stdin)
            .run();
        out.assert_error(*code, parts);
        // Errors come in the configuration's version when it has a usable one.
        if stdin.contains("\"0.2.0\"") || !stdin.contains("cniVersion") {
            assert_eq!(out.json()["cniVersion"], "1.1.0");
        }
    }
    assert_untouched(&node, Some(&pod));
}

#[test]
fn missing_and_invalid_environment() {
    require_root!();
    let node = Ns::new("cnienv");
    let pod = Ns::new("cnienvpod");
    let netns = pod.path_str();

    let out = Run {
        node: Some(&node),
        env: vec![],
        stdin: good_conf(),
    }
    .run();
    out.assert_error(
        4,
        &[
            "CNI_COMMAND is not set",
            "ADD, DEL, CHECK, GC, STATUS, VERSION",
        ],
    );
    Run::new(Some(&node), "ADDD")
        .stdin(good_conf())
        .run()
        .assert_error(4, &["CNI_COMMAND \"ADDD\" is invalid"]);

    for command in ["ADD", "DEL", "CHECK"] {
        let out = Run::new(Some(&node), command)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .stdin(good_conf())
            .run();
        out.assert_error(4, &["CNI_CONTAINERID is not set", command]);
    }
    let out = Run::new(Some(&node), "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", &netns)
        .stdin(good_conf())
        .run();
    out.assert_error(4, &["CNI_IFNAME is not set"]);
    let out = Run::new(Some(&node), "ADD")
        .pod("c1", &netns, "")
        .stdin(good_conf())
        .run();
    out.assert_error(4, &[r#"CNI_IFNAME "" is invalid: must be 1-15 characters"#]);
    let out = Run::new(Some(&node), "ADD")
        .pod("c1", &netns, "much-too-long-name0")
        .stdin(good_conf())
        .run();
    out.assert_error(4, &["CNI_IFNAME \"much-too-long-name0\" is invalid"]);
    let out = Run::new(Some(&node), "ADD")
        .pod("-bad id", &netns, "eth0")
        .stdin(good_conf())
        .run();
    out.assert_error(4, &["CNI_CONTAINERID \"-bad id\" is invalid"]);
    let out = Run::new(Some(&node), "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_IFNAME", "eth0")
        .stdin(good_conf())
        .run();
    out.assert_error(4, &["CNI_NETNS is not set"]);
    let out = Run::new(Some(&node), "ADD")
        .pod("c1", &netns, "eth0")
        .env("CNI_ARGS", "K8S_POD_NAME=web;COLOR=blue")
        .stdin(good_conf())
        .run();
    out.assert_error(
        2,
        &["CNI_ARGS key COLOR is not supported", "IgnoreUnknown=1"],
    );
    let out = Run::new(Some(&node), "ADD")
        .pod("c1", &netns, "eth0")
        .env("CNI_ARGS", "garbage")
        .stdin(good_conf())
        .run();
    out.assert_error(4, &["CNI_ARGS entry \"garbage\" is invalid", "KEY=VALUE"]);
    assert_untouched(&node, Some(&pod));
}

#[test]
fn unknown_netns_is_container_unknown() {
    require_root!();
    let node = Ns::new("cninons");
    let missing = format!("/run/netns/ciliate-missing-{}", std::process::id());
    let out = Run::new(Some(&node), "ADD")
        .pod("c-nons", &missing, "eth0")
        .args("default", "web")
        .stdin(good_conf())
        .run();
    out.assert_error(3, &[&format!("CNI_NETNS {missing} does not exist")]);
    assert_untouched(&node, None);
    // DEL does not need the netns, but it needs the agent (unreachable here): code 11.
    let out = Run::new(Some(&node), "DEL")
        .pod("c-nons", &missing, "eth0")
        .stdin(good_conf())
        .run();
    out.assert_error(11, &["cannot reach the ciliate agent", MISSING_SOCKET]);
}

#[test]
fn agent_not_running() {
    require_root!();
    let node = Ns::new("cnianr");
    let pod = Ns::new("cnianrpod");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ciliate.sock");
    let log = dir.path().join("cni.log");
    let mut c = conf("1.1.0", &socket);
    c["logFile"] = json!(log);
    let stdin = c.to_string();
    let netns = pod.path_str();
    let container = "c-no-agent";

    let out = Run::new(Some(&node), "ADD")
        .pod(container, &netns, "eth0")
        .args("default", "web")
        .stdin(&stdin)
        .run();
    out.assert_error(
        11,
        &[
            "allocating an address for default/web",
            "cannot reach the ciliate agent",
            &socket.display().to_string(),
        ],
    );
    assert_untouched(&node, Some(&pod));
    assert!(
        out.stderr.is_empty(),
        "the log goes to logFile: {}",
        out.stderr
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ADD container=c-no-agent ifname=eth0") && logged.contains("cannot reach"),
        "{logged}"
    );

    let out = Run::new(Some(&node), "DEL")
        .pod(container, &netns, "eth0")
        .stdin(&stdin)
        .run();
    out.assert_error(
        11,
        &[
            "deleting the endpoint of container c-no-agent",
            "cannot reach the ciliate agent",
        ],
    );

    let out = Run::new(Some(&node), "STATUS").stdin(&stdin).run();
    out.assert_error(
        50,
        &[
            "the ciliate agent is not available",
            &socket.display().to_string(),
        ],
    );

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "x", "ifname": "eth0"}]);
    let out = Run::new(Some(&node), "GC").stdin(gc.to_string()).run();
    out.assert_error(11, &["listing the agent's endpoints"]);

    // CHECK finds the missing host device before it asks the agent.
    let mut check = c.clone();
    check["prevResult"] = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": host_ifname(container, "eth0")}, {"name": "eth0", "sandbox": netns}],
        "ips": [{"address": "10.201.0.5/32", "gateway": "10.201.0.1", "interface": 1}]
    });
    let out = Run::new(Some(&node), "CHECK")
        .pod(container, &netns, "eth0")
        .stdin(check.to_string())
        .run();
    out.assert_error(11, &["reading the endpoint of container c-no-agent"]);
    assert_untouched(&node, Some(&pod));
}

#[test]
fn check_needs_prev_result_and_gc_needs_attachments() {
    require_root!();
    let node = Ns::new("cnichk");
    let pod = Ns::new("cnichkpod");
    let out = Run::new(Some(&node), "CHECK")
        .pod("c1", &pod.path_str(), "eth0")
        .stdin(good_conf())
        .run();
    out.assert_error(7, &["prevResult is missing"]);
    let old = conf("0.3.1", std::path::Path::new(MISSING_SOCKET)).to_string();
    let out = Run::new(Some(&node), "CHECK")
        .pod("c1", &pod.path_str(), "eth0")
        .stdin(old.clone())
        .run();
    out.assert_error(1, &["CHECK needs cniVersion 0.4.0 or later", "0.3.1"]);
    assert_eq!(out.json()["cniVersion"], "0.3.1");
    Run::new(Some(&node), "GC")
        .stdin(good_conf())
        .run()
        .assert_error(7, &["cni.dev/valid-attachments is missing"]);
    Run::new(Some(&node), "STATUS")
        .stdin(old)
        .run()
        .assert_error(1, &["STATUS needs cniVersion 1.1.0"]);
    assert_untouched(&node, Some(&pod));
}
