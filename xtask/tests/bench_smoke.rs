//! `cargo xtask bench services` end to end, short: counts 1 and 10, one
//! second per measurement, real namespaces, real iptables rules, ciliate's
//! real datapath. Checks the JSON the run wrote, not the returned struct, so
//! that the file people and the CI read is what is tested.

use std::path::PathBuf;

use serde_json::Value;
use xtask::iptables::Backend;
use xtask::services::{self, CpuMode, Options};

fn rows<'a>(report: &'a Value, mechanism: &str) -> Vec<&'a Value> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["mechanism"] == mechanism)
        .collect()
}

fn rate(row: &Value) -> f64 {
    row["rate_per_s"].as_f64().unwrap_or(0.0)
}

#[test]
fn a_short_run_writes_every_row_with_measured_iptables_rates() {
    ciliate_datapath::require_root!("network namespaces, iptables rules and BPF programs");
    let out = tempfile::tempdir().unwrap();
    services::run(&Options {
        counts: vec![1, 10],
        seconds: 1.0,
        rounds: 1,
        concurrency: 2,
        iptables: Backend::Nft,
        cpus: CpuMode::Split,
        seed: 7,
        out: PathBuf::from(out.path()),
        timeout_ms: 500,
    })
    .expect("the benchmark runs");

    let json = std::fs::read_to_string(out.path().join("services.json")).unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    let md = std::fs::read_to_string(out.path().join("services.md")).unwrap();
    assert!(md.contains("| services | target | iptables conn/s"), "{md}");

    for mechanism in ["iptables", "ciliate"] {
        for n in [1, 10] {
            for target in ["pod-to-pod", "last", "random"] {
                let found = rows(&report, mechanism)
                    .into_iter()
                    .filter(|r| r["services"] == n && r["target"] == target)
                    .count();
                assert_eq!(found, 1, "{mechanism} N={n} {target}: {json}");
            }
        }
    }
    for row in rows(&report, "iptables") {
        assert_eq!(row["status"], "ok", "{row}");
        assert!(rate(row) > 0.0, "iptables measured nothing: {row}");
        assert!(row["p99_us"].as_f64().unwrap() >= row["p50_us"].as_f64().unwrap());
    }
    let last_10 = rows(&report, "iptables")
        .into_iter()
        .find(|r| r["services"] == 10 && r["target"] == "last")
        .unwrap();
    assert_eq!(
        last_10["address"], "10.96.0.10:80",
        "the service programmed last"
    );

    // Every ciliate row measures: pod to pod and through the ClusterIPs.
    for row in rows(&report, "ciliate") {
        assert_eq!(row["status"], "ok", "{row}");
        assert!(rate(row) > 0.0, "ciliate measured nothing: {row}");
    }
    let programming = report["programming"].as_array().unwrap();
    assert_eq!(programming.len(), 4, "both mechanisms at both counts");
    assert!(programming.iter().all(|p| p["seconds"].as_f64().is_some()));
}
