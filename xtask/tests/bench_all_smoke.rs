//! `cargo xtask bench` end to end with tiny sizes: every section runs on real
//! labs, namespaces and programs, and the three files are written. Speed is
//! not asserted; that each figure was measured (not failed) is.
//!
//! The labs need ciliate-agent, ciliate-cni and ciliate-operator next to the
//! test executable's directory (`cargo test --workspace` builds them) or in
//! `$CILIATE_BIN_DIR`.

use std::path::PathBuf;

use serde_json::Value;
use xtask::bench::{self, Section};
use xtask::iptables::Backend;
use xtask::pod_to_pod::{self, Config};
use xtask::services::{self, CpuMode};
use xtask::{control_plane, per_packet};

#[test]
fn every_section_runs_and_writes_json_markdown_and_a_chart() {
    ciliate_datapath::require_root!("labs, network namespaces, iptables rules and BPF programs");
    let out = tempfile::tempdir().unwrap();
    let result = bench::run(&bench::Options {
        sections: Section::ALL.to_vec(),
        out: PathBuf::from(out.path()),
        pod_to_pod: pod_to_pod::Options {
            configs: Config::ALL.to_vec(),
            seconds: 1.0,
            rounds: 1,
            cpus: CpuMode::Split,
            timeout_ms: 1000,
            bin_dir: None,
        },
        services: services::Options {
            counts: vec![1, 10],
            seconds: 0.5,
            rounds: 1,
            concurrency: 2,
            iptables: Backend::Nft,
            cpus: CpuMode::Split,
            seed: 7,
            out: PathBuf::from(out.path()),
            timeout_ms: 500,
        },
        per_packet: per_packet::Options {
            packets: 20,
            repeat: 100,
        },
        control_plane: control_plane::Options {
            endpoints: 3,
            services: 20,
            cri_pods: 2,
            program_timeout_s: 60,
            bin_dir: None,
        },
    });
    let md = std::fs::read_to_string(out.path().join("bench.md")).expect("bench.md");
    result.unwrap_or_else(|e| panic!("the benchmark failed: {e:#}\n{md}"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench.json")).unwrap())
            .unwrap();
    let svg = std::fs::read_to_string(out.path().join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for heading in [
        "## Goals",
        "## Pod to pod across nodes",
        "## Services",
        "## Per-packet cost",
        "## Control plane",
    ] {
        assert!(md.contains(heading), "{heading} missing from:\n{md}");
    }

    let rows = json["pod_to_pod"]["rows"]
        .as_array()
        .expect("pod-to-pod rows");
    assert_eq!(rows.len(), 12, "4 datapaths x 3 tests");
    for row in rows {
        let value = row["rounds"][0]["value"].as_f64();
        assert!(value.is_some_and(|v| v > 0.0), "not measured: {row}");
    }
    let kernel_rr = rows
        .iter()
        .find(|r| r["config"] == "kernel" && r["test"] == "rr")
        .unwrap();
    assert_eq!(kernel_rr["vs_kernel"], 1.0, "the baseline against itself");

    for row in json["per_packet"]["rows"].as_array().unwrap() {
        assert!(row["error"].is_null(), "{row}");
        for k in ["new_ns", "established_ns", "repeat_ns"] {
            assert!(row[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {row}");
        }
    }

    let cp = &json["control_plane"];
    assert!(cp["errors"].is_null(), "{cp}");
    assert_eq!(cp["add"]["calls"], 3);
    assert_eq!(cp["del"]["calls"], 3);
    assert!(cp["add"]["p99_ms"].as_f64().unwrap() >= cp["add"]["p50_ms"].as_f64().unwrap());
    assert!(cp["rss_endpoints_mib"].as_f64().is_some_and(|v| v > 0.0));
    assert!(cp["program_s"].as_f64().is_some(), "20 services programmed");
    // The agent's share of each ADD, read from its log: one per pod.
    let agent = &cp["agent_create"];
    assert_eq!(agent["total"]["samples"], 3, "{cp}");
    for part in ["plumb", "persist"] {
        assert!(
            agent[part]["p50_ms"].as_f64() <= agent["total"]["p99_ms"].as_f64(),
            "{part} is part of the creation: {agent}"
        );
    }
    assert!(
        agent["plumb"]["p50_ms"].as_f64().is_some_and(|v| v > 0.0),
        "{agent}"
    );
    for what in ["run_sandbox", "remove_sandbox", "add", "del"] {
        let l = &cp["cri"][what];
        assert_eq!(l["calls"], 2, "{what} through containerd: {cp}");
        assert!(l["p50_ms"].as_f64().is_some_and(|v| v > 0.0), "{what}: {l}");
    }
    // The plugin's ADD is part of RunPodSandbox.
    assert!(
        cp["cri"]["add"]["max_ms"].as_f64() <= cp["cri"]["run_sandbox"]["max_ms"].as_f64(),
        "{cp}"
    );

    assert!(json["services"]["rows"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
    let goals = json["goals"].as_array().unwrap();
    assert!(goals.len() >= 7, "{goals:?}");
    for goal in goals {
        let verdict = goal["verdict"].as_str().unwrap();
        assert!(
            verdict == "met" || verdict.starts_with("missed by"),
            "every goal was measured: {goal}"
        );
    }
}
