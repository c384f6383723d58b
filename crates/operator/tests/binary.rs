//! The `ciliate-operator` binary: a bad configuration is refused at start (exit code 2,
//! naming the key, the value and what is allowed); a good one runs against a real etcd,
//! reports corrupt objects without stopping, and exits cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ciliate_store::testing::EtcdServer;
use ciliate_store::{report, CiliateNode, EtcdBackend, EtcdConfig, Event, Object, Store};
use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(20);
const OPERATOR: &str = env!("CARGO_BIN_EXE_ciliate-operator");

/// Runs the operator with `yaml` as its file plus `flags`; returns exit code and stderr.
fn start_with(yaml: &str, flags: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(OPERATOR)
        .arg("--config")
        .arg(&path)
        .args(flags)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Kills and reaps the child when dropped.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ETCD: &str = "etcd:\n  endpoints: [\"http://127.0.0.1:2379\"]\n";

fn refused(yaml: &str, flags: &[&str], words: &[&str]) {
    let (code, err) = start_with(yaml, flags);
    assert_eq!(code, Some(2), "{err}");
    for word in words {
        assert!(err.contains(word), "{word:?} missing in: {err}");
    }
}

#[test]
fn missing_required_keys_are_refused() {
    refused(
        "clusterPoolIPv4PodCIDRList: [172.20.0.0/16]\n",
        &[],
        &["etcd.endpoints", "required"],
    );
    refused(ETCD, &[], &["clusterPoolIPv4PodCIDRList", "required"]);
}

#[test]
fn unknown_keys_are_refused() {
    refused(
        &format!(
            "{ETCD}clusterPoolIPv4PodCIDRList: [172.20.0.0/16]\nclusterPoolIPv4MaskSise: 24\n"
        ),
        &[],
        &["clusterPoolIPv4MaskSise", "clusterPoolIPv4MaskSize"],
    );
}

#[test]
fn bad_values_are_refused_with_what_is_allowed() {
    refused(
        &format!("{ETCD}clusterPoolIPv4PodCIDRList: [172.20.0.0/16, 172.20.4.0/24]\n"),
        &[],
        &[
            "clusterPoolIPv4PodCIDRList",
            "172.20.4.0/24",
            "do not overlap",
        ],
    );
    refused(
        &format!("{ETCD}clusterPoolIPv4PodCIDRList: [172.20.0.0/16]\nclusterPoolIPv4MaskSize: 8\n"),
        &[],
        &["clusterPoolIPv4MaskSize", "\"8\"", "from 16", "to 29"],
    );
    refused(
        "etcd:\n  endpoints: [\"localhost\"]\nclusterPoolIPv4PodCIDRList: [172.20.0.0/16]\n",
        &[],
        &["etcd.endpoints", "localhost", "http://HOST:PORT"],
    );
}

#[test]
fn flags_are_validated_too() {
    let out = Command::new(OPERATOR)
        .args([
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--cluster-pool-ipv4-cidr",
            "172.20.0.0/16,10.0.0.0/33",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("clusterPoolIPv4PodCIDRList") && err.contains("10.0.0.0/33"),
        "{err}"
    );
    // A flag overrides a good file value with a bad one: refused.
    refused(
        &format!("{ETCD}clusterPoolIPv4PodCIDRList: [10.9.0.0/28]\nclusterPoolIPv4MaskSize: 29\n"),
        &["--cluster-pool-ipv4-mask-size", "30"],
        &["clusterPoolIPv4MaskSize", "30"],
    );
}

#[tokio::test]
async fn runs_against_etcd_reports_corrupt_objects_and_stops_on_sigterm() {
    let etcd = EtcdServer::start_local().unwrap_or_else(|e| panic!("{}", report(&e)));
    let store = Store::etcd(EtcdConfig::new(etcd.endpoint())).await.unwrap();
    let mut raw = EtcdBackend::connect(EtcdConfig::new(etcd.endpoint()))
        .await
        .unwrap()
        .client();
    raw.put("/ciliate/ciliatenode/_/broken", "{not json", None)
        .await
        .unwrap();
    store.create(&CiliateNode::new("node0")).await.unwrap();

    // The file names a pool the flag overrides.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("operator.yaml");
    std::fs::write(
        &config,
        format!(
            "etcd:\n  endpoints: [\"{}\"]\nclusterPoolIPv4PodCIDRList: [10.0.0.0/8]\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let log = dir.path().join("operator.log");
    // Killed on any early return below, so no operator outlives the test.
    let mut child = Reap(
        Command::new(OPERATOR)
            .arg("--config")
            .arg(&config)
            .args(["--cluster-pool-ipv4-cidr", "172.20.0.0/16"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    let mut watch = store.watch::<CiliateNode>();
    let node = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Event::Upsert(n))) = watch.next().await {
                if n.name() == "node0" && !n.spec.ipam.pod_cidrs.is_empty() {
                    return n;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "node0 got no PodCIDR; operator log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(
        node.spec.ipam.pod_cidrs,
        vec!["172.20.0.0/24".parse().unwrap()]
    );

    // The write is seen by watchers before the operator logs it.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("PodCIDR assigned")
    {
        assert!(Instant::now() < deadline, "the assignment was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the operator ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}; log:\n{output}");
    assert!(
        output.contains("cannot decode the CiliateNode stored at /ciliate/ciliatenode/_/broken"),
        "the corrupt object was not reported:\n{output}"
    );
    assert!(output.contains("stopping"), "{output}");
}
