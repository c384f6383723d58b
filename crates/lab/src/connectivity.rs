//! `ciliate connectivity test`: Cilium's connectivity check, over a lab.
//!
//! Test pods live in namespace [`TEST_NAMESPACE`]: `client` and
//! `echo-same-node` on node0, `echo-other-node` on node1. Each echo pod answers
//! HTTP on 8080 (python3), TCP echo on 9000 and UDP echo on 9000 (socat), and
//! ICMP (the kernel). Named scenarios then run actions (ping, curl, socat, a
//! full-size ping with DF, a multi-megabyte TCP echo from a socket in the
//! client's namespace with every byte checked) and print
//! one line each, like `cilium connectivity test`:
//!
//! ```text
//! [1] pod-to-pod-same-node ... ✅
//! [2] pod-to-pod-other-node ... ❌
//!     ❌ TCP client -> echo-other-node 172.20.1.12:8080: `curl ...` exit 28: ...
//!     🔥 node1 dropped: xx drop (No route to destination) ...
//! ```
//!
//! While a scenario runs, one reader per node follows the agent's
//! `GET /v1/monitor?type=drop`; a failing scenario shows what they saw.
//! The test pods stay after the run (a rerun reuses them); `cleanup` removes them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ciliate_api::client::{LineStream, StreamStopper};
use ciliate_api::{ClusterHealth, MonitorEvent, Status};
use ciliate_datapath::netns;
use serde::Serialize;

use crate::error::{LabError, Result};
use crate::lab::{ApplyOutcome, Lab};
use crate::names;
use crate::state::PodInfo;

/// The namespace of the test pods.
pub const TEST_NAMESPACE: &str = "ciliate-test";
/// HTTP (python3 http.server) on the echo pods.
pub const HTTP_PORT: u16 = 8080;
/// TCP and UDP echo (socat) on the echo pods.
pub const ECHO_PORT: u16 = 9000;

/// Every scenario, in the order they run.
pub const SCENARIOS: [&str; 14] = [
    "pod-to-pod-same-node",
    "pod-to-pod-other-node",
    "pod-to-host",
    "host-to-pod",
    "pod-to-remote-host",
    "pod-to-service",
    "pod-to-local-nodeport",
    "pod-to-remote-nodeport",
    "outside-to-nodeport",
    "pod-to-itself-via-service",
    "pod-to-world",
    "to-cidr",
    "health",
    "no-unexpected-drops",
];

/// The test pods.
pub const CLIENT: &str = "client";
pub const ECHO_SAME: &str = "echo-same-node";
pub const ECHO_OTHER: &str = "echo-other-node";
/// The test services: `echo` selects both echo pods, `echo-same-node` and
/// `echo-other-node` one each (their names), `client` the client pod.
pub const SVC_ECHO: &str = "echo";
/// Service ports: HTTP on 80 (to 8080), TCP echo on 9000, UDP echo on 5000 (to 9000).
pub const SVC_HTTP_PORT: u16 = 80;
pub const SVC_UDP_PORT: u16 = 5000;
/// The label every echo pod has, which the `echo` service selects.
pub const ECHO_LABEL: &str = "app.kubernetes.io/component";

/// An HTTP server answering every GET with its `$HOSTNAME` (the pod's name)
/// and a newline, so a client sees which backend a service picked. One line
/// of Python, no quotes or backslashes (it sits in a YAML flow sequence).
pub fn name_server(port: u16) -> String {
    format!(
        "import http.server as h,os;n=(os.environ.get('HOSTNAME','?')+chr(10)).encode();\
         H=type('H',(h.BaseHTTPRequestHandler,),{{'do_GET':lambda s:(s.send_response(200),\
         s.send_header('Content-Length',str(len(n))),s.end_headers(),s.wfile.write(n)),\
         'log_message':lambda s,*a:None}});h.ThreadingHTTPServer(('0.0.0.0',{port}),H).serve_forever()"
    )
}

/// How to run the test.
#[derive(Clone, Debug)]
pub struct Options {
    /// Run only scenarios whose name contains one of these (all when empty).
    pub tests: Vec<String>,
    /// Delete the test pods afterwards.
    pub cleanup: bool,
    /// Bytes sent (and echoed back) by the full-size TCP transfer.
    pub transfer_bytes: usize,
    /// Health checking is meant to be on: "disabled" fails the health scenario.
    pub expect_health: bool,
    /// Give-up bound for the health scenario (probes run every few seconds).
    pub health_timeout: Duration,
    /// Print every action, not only failed ones.
    pub verbose: bool,
    /// Bound of one request (curl's `--max-time`, socat's answer wait, ping's `-W`).
    pub request_timeout: Duration,
    /// A failed action is tried this many more times (cilium-cli's `--retry`):
    /// a slow first answer is not a datapath fault, and a drop on the way is
    /// still caught by the drop monitors and the drop-counter test.
    pub retries: u32,
    /// Pause before trying a failed action again.
    pub retry_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tests: Vec::new(),
            cleanup: false,
            transfer_bytes: 8 << 20,
            expect_health: true,
            health_timeout: Duration::from_mins(1),
            verbose: false,
            request_timeout: Duration::from_secs(5),
            retries: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// How a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Outcome {
    Passed,
    Failed,
    Skipped { reason: String },
}

/// One action of a scenario (one ping, one curl, ...).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub name: String,
    /// None when it succeeded, else what went wrong.
    pub error: Option<String>,
    /// What went wrong in the attempts before the last one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_errors: Vec<String>,
}

impl Action {
    /// An action tried once.
    pub fn once(name: String, error: Option<String>) -> Self {
        Self {
            name,
            error,
            earlier_errors: Vec::new(),
        }
    }

    /// Runs `attempt` until it succeeds or `retries` more tries failed, with
    /// `delay` between tries.
    fn retried(
        name: String,
        retries: u32,
        delay: Duration,
        mut attempt: impl FnMut() -> Option<String>,
    ) -> Self {
        let mut earlier_errors = Vec::new();
        loop {
            match attempt() {
                Some(e) if earlier_errors.len() < retries as usize => {
                    earlier_errors.push(e);
                    std::thread::sleep(delay);
                }
                error => {
                    return Self {
                        name,
                        error,
                        earlier_errors,
                    }
                }
            }
        }
    }
}

/// A drop a node's monitor reported while a scenario ran.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeenDrop {
    pub node: String,
    pub event: MonitorEvent,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioResult {
    pub name: String,
    pub outcome: Outcome,
    pub actions: Vec<Action>,
    /// Drops the monitors saw during the scenario.
    pub drops: Vec<SeenDrop>,
    /// Monitors that could not be followed (their node's agent did not answer).
    pub monitor_errors: Vec<String>,
}

impl ScenarioResult {
    pub fn failures(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.error.is_some())
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub results: Vec<ScenarioResult>,
    /// Nodes whose agent's store connection was not `Ok` when the run began.
    pub kvstore: Vec<String>,
}

impl Report {
    pub fn skipped(&self) -> Vec<(&str, &str)> {
        self.results
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Skipped { reason } => Some((r.name.as_str(), reason.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The last line of a run: how many passed, failed and were skipped.
    pub fn summary(&self) -> String {
        let total = self.results.len();
        let failed = self.failed();
        let skipped = self.skipped();
        let passed = total - failed.len() - skipped.len();
        let skipped_note = if skipped.is_empty() {
            String::new()
        } else {
            let which: Vec<String> = skipped
                .iter()
                .map(|(name, reason)| format!("{name}: {reason}"))
                .collect();
            format!(", {} skipped ({})", skipped.len(), which.join("; "))
        };
        if !failed.is_empty() {
            format!(
                "❌ {} of {total} tests failed, {passed} passed{skipped_note}: {}",
                failed.len(),
                failed.join(", ")
            )
        } else if skipped.is_empty() {
            format!("✅ All {total} tests passed")
        } else {
            format!("✅ {passed} of {total} tests passed{skipped_note}")
        }
    }

    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.outcome != Outcome::Failed)
    }

    pub fn failed(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .map(|r| r.name.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&ScenarioResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// The test pods' manifest for a lab whose nodes are `nodes` (node0 first).
/// The client serves HTTP too (its name), for pod-to-itself-via-service.
pub fn manifest(nodes: &[String]) -> String {
    let http = (
        "http",
        format!(r#"["python3", "-c", "{}"]"#, name_server(HTTP_PORT)),
    );
    let mut docs = vec![pod_yaml(
        CLIENT,
        &nodes[0],
        &[
            ("client", r#"["sleep", "infinity"]"#.to_string()),
            http.clone(),
        ],
    )];
    let echo = [
        http,
        (
            "tcp-echo",
            format!(r#"["socat", "TCP4-LISTEN:{ECHO_PORT},fork,reuseaddr", "EXEC:cat"]"#),
        ),
        (
            "udp-echo",
            format!(r#"["socat", "UDP4-RECVFROM:{ECHO_PORT},fork", "EXEC:cat"]"#),
        ),
    ];
    docs.push(pod_yaml(ECHO_SAME, &nodes[0], &echo));
    if let Some(other) = nodes.get(1) {
        docs.push(pod_yaml(ECHO_OTHER, other, &echo));
    }
    docs.join("---\n")
}

/// The test services (every one NodePort but `client`, which is ClusterIP).
pub fn services_manifest() -> String {
    let svc = |name: &str, ty: &str, selector: &str, ports: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {TEST_NAMESPACE}\n\
             spec:\n  type: {ty}\n  selector: {{{selector}}}\n  ports:\n{ports}"
        )
    };
    let http = format!(
        "    - {{name: http, port: {SVC_HTTP_PORT}, targetPort: {HTTP_PORT}, protocol: TCP}}\n"
    );
    let all = format!(
        "{http}    - {{name: tcp-echo, port: {ECHO_PORT}, protocol: TCP}}\n\
         \x20   - {{name: udp-echo, port: {SVC_UDP_PORT}, targetPort: {ECHO_PORT}, protocol: UDP}}\n"
    );
    [
        svc(SVC_ECHO, "NodePort", &format!("{ECHO_LABEL}: echo"), &all),
        svc(
            ECHO_SAME,
            "NodePort",
            &format!("app.kubernetes.io/name: {ECHO_SAME}"),
            &http,
        ),
        svc(
            ECHO_OTHER,
            "NodePort",
            &format!("app.kubernetes.io/name: {ECHO_OTHER}"),
            &http,
        ),
        svc(
            CLIENT,
            "ClusterIP",
            &format!("app.kubernetes.io/name: {CLIENT}"),
            &http,
        ),
    ]
    .join("---\n")
}

fn pod_yaml(name: &str, node: &str, containers: &[(&str, String)]) -> String {
    let component = if name == CLIENT { "client" } else { "echo" };
    let mut text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {TEST_NAMESPACE}\n  \
         labels: {{app.kubernetes.io/name: {name}, app.kubernetes.io/part-of: ciliate-connectivity-test, \
         {ECHO_LABEL}: {component}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n"
    );
    for (container, command) in containers {
        let _ = writeln!(
            text,
            "    - {{name: {container}, image: none, workingDir: /tmp, command: {command}}}"
        );
    }
    text
}

/// Which scenarios `tests` selects; an entry that matches none is an error.
pub fn select(tests: &[String]) -> Result<Vec<&'static str>> {
    for t in tests {
        if !SCENARIOS.iter().any(|s| s.contains(t.as_str())) {
            return Err(LabError::Invalid {
                field: "--test".into(),
                value: t.clone(),
                allowed: format!("(part of) a scenario name: {}", SCENARIOS.join(", ")),
            });
        }
    }
    Ok(SCENARIOS
        .iter()
        .copied()
        .filter(|s| tests.is_empty() || tests.iter().any(|t| s.contains(t.as_str())))
        .collect())
}

/// Creates (or reuses) the test pods, runs the selected scenarios, prints
/// progress to `out`, and returns what happened. Errors are problems of the
/// setup (no lab, pods that cannot be made); scenario failures are in the report.
pub fn run(lab: &mut Lab, options: &Options, out: &mut dyn Write) -> Result<Report> {
    let selected = select(&options.tests)?;
    lab.reload()?;
    let nodes = lab.state().node_names();
    let p = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    p(
        out,
        format!(
            "🔭 ciliate connectivity test: lab {}, {} node(s), routing {}, IPAM {}",
            lab.name(),
            nodes.len(),
            lab.state().routing,
            lab.state().ipam
        ),
    );
    let kvstore = kvstore_problems(lab);
    for problem in &kvstore {
        p(out, format!("⚠️  {problem}"));
    }
    let pods = deploy(lab, &nodes)?;
    for pod in pods.values() {
        p(
            out,
            format!(
                "ℹ️  {}/{} on {} at {}",
                pod.namespace, pod.name, pod.node, pod.ip
            ),
        );
    }
    let services = deploy_services(lab)?;
    match &services {
        Services::Ready(info) => {
            for (name, svc) in &info.services {
                p(out, format!("ℹ️  service {TEST_NAMESPACE}/{name}: {svc}"));
            }
        }
        Services::NotServed(reason) | Services::Broken(reason) => {
            p(out, format!("⚠️  services: {reason}"));
        }
    }
    let mut env = Env::new(lab, pods, options)?;
    env.services = services;
    let baseline = if selected.contains(&"no-unexpected-drops") {
        Some(drop_counters(lab))
    } else {
        None
    };

    let mut results = Vec::new();
    for (i, name) in selected.iter().enumerate() {
        let _ = write!(out, "[{}] {name} ... ", i + 1);
        let _ = out.flush();
        let watchers: Vec<DropWatcher> = if *name == "no-unexpected-drops" {
            Vec::new()
        } else {
            lab.nodes()
                .iter()
                .map(|n| DropWatcher::start(&n.name, &n.socket))
                .collect()
        };
        let outcome = match *name {
            "pod-to-pod-same-node" => Ok(pod_to_pod(&env, ECHO_SAME)),
            "pod-to-pod-other-node" => match env.pods.get(ECHO_OTHER) {
                Some(_) => Ok(pod_to_pod(&env, ECHO_OTHER)),
                None => Err("the lab has one node; it needs two".to_string()),
            },
            "pod-to-host" => Ok(pod_to_host(&env)),
            "host-to-pod" => Ok(host_to_pod(&env)),
            "pod-to-remote-host" => Ok(pod_to_remote_host(&env)),
            "pod-to-service" => env.with_services(pod_to_service),
            "pod-to-local-nodeport" => env.with_services(|env, s| nodeport_from_client(env, s, 0)),
            "pod-to-remote-nodeport" => {
                if env.lab.nodes().len() < 2 {
                    Err("the lab has one node; it needs two".to_string())
                } else {
                    env.with_services(|env, s| nodeport_from_client(env, s, 1))
                }
            }
            "outside-to-nodeport" => env.with_services(outside_to_nodeport),
            "pod-to-itself-via-service" => env.with_services(pod_to_itself),
            "pod-to-world" => pod_to_world(&env),
            "to-cidr" => to_cidr(&env),
            "health" => health(&env, options),
            "no-unexpected-drops" => Ok(no_unexpected_drops(
                lab,
                baseline.as_ref().expect("taken when selected"),
            )),
            _ => unreachable!("selected from SCENARIOS"),
        };
        let (outcome, actions) = judge(name, outcome, !options.tests.is_empty());
        let mut drops = Vec::new();
        let mut monitor_errors = Vec::new();
        for w in watchers {
            let (seen, errors) = w.stop();
            drops.extend(seen);
            monitor_errors.extend(errors);
        }
        let result = ScenarioResult {
            name: (*name).to_string(),
            outcome,
            actions,
            drops,
            monitor_errors,
        };
        print_result(out, &result, options.verbose);
        results.push(result);
    }
    drop(env);
    let report = Report { results, kvstore };
    p(out, report.summary());
    if options.cleanup {
        for name in [SVC_ECHO, ECHO_SAME, ECHO_OTHER, CLIENT] {
            lab.delete_service(&format!("{TEST_NAMESPACE}/{name}"))?;
        }
        for name in [CLIENT, ECHO_SAME, ECHO_OTHER] {
            lab.delete_pod(&format!("{TEST_NAMESPACE}/{name}"))?;
        }
        p(
            out,
            format!("🧹 deleted the test pods and services in {TEST_NAMESPACE}"),
        );
    } else {
        p(
            out,
            format!(
                "ℹ️  the test pods stay in {TEST_NAMESPACE} (a rerun reuses them; `--cleanup` removes them)"
            ),
        );
    }
    Ok(report)
}

/// How a scenario ended, from its actions or the reason it could not run
/// (`Err`). Skipped unless it was asked for by name (`requested`, with
/// `--test`): then not running it is a failure, never a pass.
pub fn judge(
    name: &str,
    ran: std::result::Result<Vec<Action>, String>,
    requested: bool,
) -> (Outcome, Vec<Action>) {
    match ran {
        Err(reason) if requested => (
            Outcome::Failed,
            vec![Action::once(
                format!("{name}, asked for with --test"),
                Some(format!("cannot run: {reason}")),
            )],
        ),
        Err(reason) => (Outcome::Skipped { reason }, Vec::new()),
        Ok(actions) if actions.iter().any(|a| a.error.is_some()) => (Outcome::Failed, actions),
        Ok(actions) => (Outcome::Passed, actions),
    }
}

fn print_result(out: &mut dyn Write, r: &ScenarioResult, verbose: bool) {
    let _ = match &r.outcome {
        Outcome::Passed => writeln!(out, "✅"),
        Outcome::Failed => writeln!(out, "❌"),
        Outcome::Skipped { reason } => writeln!(out, "⏭️  skipped: {reason}"),
    };
    for a in &r.actions {
        let tries = a.earlier_errors.len() + 1;
        match &a.error {
            Some(e) if tries > 1 => {
                let _ = writeln!(out, "    ❌ {}: {e} (failed {tries} tries)", a.name);
            }
            Some(e) => {
                let _ = writeln!(out, "    ❌ {}: {e}", a.name);
            }
            // Shown even when not verbose: a path that needs a second try is
            // worth a look.
            None if tries > 1 => {
                let _ = writeln!(
                    out,
                    "    ⚠️  {}: passed on try {tries}; before: {}",
                    a.name,
                    a.earlier_errors.join("; ")
                );
            }
            None if verbose => {
                let _ = writeln!(out, "    ✅ {}", a.name);
            }
            None => {}
        }
    }
    if r.outcome == Outcome::Failed {
        if r.drops.is_empty() {
            let _ = writeln!(
                out,
                "    (the nodes' monitors saw no drops during this test)"
            );
        }
        for d in &r.drops {
            let _ = writeln!(out, "    🔥 {} dropped: {}", d.node, d.event);
        }
    }
    // Without its monitor a node's drops are unknown: always say so.
    for e in &r.monitor_errors {
        let _ = writeln!(out, "    ⚠️  {e}");
    }
    let _ = out.flush();
}

/// Each node whose agent reports its store connection as other than `Ok`
/// (or does not answer): `node1: kvstore Failure: etcd: ...`.
fn kvstore_problems(lab: &Lab) -> Vec<String> {
    lab.nodes()
        .iter()
        .filter_map(|node| {
            match ciliate_api::Client::new(&node.socket).get::<Status>("/v1/status") {
                Err(e) => Some(format!(
                    "{}: its agent does not answer GET /v1/status: {}",
                    node.name,
                    report(&e)
                )),
                Ok(s) => s
                    .kvstore
                    .filter(|k| k.state != "Ok")
                    .map(|k| format!("{}: kvstore {}: {}", node.name, k.state, k.message)),
            }
        })
        .collect()
}

/// Creates the test pods (or finds them from an earlier run) and waits until
/// their servers listen.
fn deploy(lab: &mut Lab, nodes: &[String]) -> Result<BTreeMap<String, PodInfo>> {
    let yaml = manifest(nodes);
    for attempt in 0..2 {
        let outcomes = lab.apply_yaml(&yaml)?;
        let mut redo = false;
        for outcome in &outcomes {
            if let ApplyOutcome::Unchanged { pod, differs: true } = outcome {
                // Ours, from another version of this test: make it again.
                lab.delete_pod(pod)?;
                redo = true;
            }
        }
        for pod in lab.pods().to_vec() {
            if pod.namespace == TEST_NAMESPACE && !Lab::exited_containers(&pod).is_empty() {
                if attempt == 1 {
                    let (container, log) = Lab::exited_containers(&pod).remove(0);
                    return Err(LabError::Command {
                        what: format!("starting test pod {}", pod.key()),
                        argv: vec![container],
                        detail: format!(
                            "the container exited; {}",
                            log.map_or_else(String::new, |l| crate::sys::tail(&l, 10))
                        ),
                    });
                }
                lab.delete_pod(&pod.key())?;
                redo = true;
            }
        }
        if !redo {
            break;
        }
    }
    let mut pods = BTreeMap::new();
    for name in [CLIENT, ECHO_SAME, ECHO_OTHER] {
        if let Ok(pod) = lab.pod(&format!("{TEST_NAMESPACE}/{name}")) {
            pods.insert(name.to_string(), pod.clone());
        }
    }
    for name in [ECHO_SAME, ECHO_OTHER] {
        if let Some(pod) = pods.get(name) {
            for port in [HTTP_PORT, ECHO_PORT] {
                wait_listening(pod, port)?;
            }
        }
    }
    if let Some(client) = pods.get(CLIENT) {
        wait_listening(client, HTTP_PORT)?;
    }
    Ok(pods)
}

/// The test services as the store has them (addresses assigned).
#[derive(Clone, Debug, Default)]
pub struct ServicesInfo {
    pub services: BTreeMap<String, ServiceAddresses>,
}

/// A service's clusterIP and nodePorts by port name.
#[derive(Clone, Debug, Default)]
pub struct ServiceAddresses {
    pub cluster_ip: Option<Ipv4Addr>,
    pub node_ports: BTreeMap<String, u16>,
}

impl std::fmt::Display for ServiceAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cluster_ip {
            Some(ip) => write!(f, "clusterIP {ip}")?,
            None => write!(f, "no clusterIP")?,
        }
        for (name, port) in &self.node_ports {
            write!(f, ", {name} nodePort {port}")?;
        }
        Ok(())
    }
}

impl ServiceAddresses {
    pub fn of(svc: &k8s_openapi::api::core::v1::Service) -> Self {
        let node_ports = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| {
                let np = u16::try_from(p.node_port?).ok()?;
                Some((p.name.clone().unwrap_or_default(), np))
            })
            .collect();
        Self {
            cluster_ip: crate::services::cluster_ip(svc),
            node_ports,
        }
    }
}

/// Whether the service scenarios can run.
#[derive(Clone, Debug)]
enum Services {
    Ready(ServicesInfo),
    /// The agents do not serve services (skip, with why).
    NotServed(String),
    /// They should, but did not program them (fail, with what is missing).
    Broken(String),
}

/// Applies the test services and waits until every agent serves them.
fn deploy_services(lab: &mut Lab) -> Result<Services> {
    let mut info = ServicesInfo::default();
    for outcome in lab.apply_yaml(&services_manifest())? {
        if let ApplyOutcome::Service { service, .. } = outcome {
            if let Some(svc) = lab.service(&service)? {
                let name = service.rsplit('/').next().unwrap_or_default().to_string();
                info.services.insert(name, ServiceAddresses::of(&svc));
            }
        }
    }
    if !lab.state().kube_proxy_replacement {
        return Ok(Services::NotServed(
            "the agents run without kubeProxyReplacement".into(),
        ));
    }
    Ok(
        match lab.wait_services_programmed(Duration::from_secs(30)) {
            Ok(()) => Services::Ready(info),
            Err(e) => Services::Broken(e.to_string()),
        },
    )
}

/// Waits until something accepts on 127.0.0.1:`port` inside the pod (no
/// datapath involved: this only waits for the server to start).
fn wait_listening(pod: &PodInfo, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = netns::run_in(&pod.netns_path, move || {
            TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_millis(500),
            )
            .is_ok()
        })?;
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Command {
                what: format!("waiting for test pod {} to listen", pod.key()),
                argv: vec![format!("127.0.0.1:{port}")],
                detail: "nothing accepted connections within 15 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the scenarios need to know.
struct Env<'a> {
    lab: &'a Lab,
    pods: BTreeMap<String, PodInfo>,
    services: Services,
    /// Pod MTU of the client's node, for full-size packets.
    mtu: u32,
    transfer_bytes: usize,
    /// Request timeout in whole seconds, as the tools take it.
    timeout_secs: String,
    retries: u32,
    retry_delay: Duration,
}

impl<'a> Env<'a> {
    fn new(lab: &'a Lab, pods: BTreeMap<String, PodInfo>, options: &Options) -> Result<Self> {
        let node0 = &lab.nodes()[0];
        let status: Status = ciliate_api::Client::new(&node0.socket)
            .get("/v1/status")
            .map_err(|e| LabError::AgentNotReady {
                node: node0.name.clone(),
                problem: "does not answer GET /v1/status".into(),
                log: node0.dir.join("agent.log"),
                log_tail: crate::sys::tail(&node0.dir.join("agent.log"), 10),
                source: Some(Box::new(e)),
            })?;
        Ok(Self {
            lab,
            pods,
            services: Services::NotServed("not deployed".into()),
            mtu: status.mtu,
            transfer_bytes: options.transfer_bytes,
            timeout_secs: options.request_timeout.as_secs().max(1).to_string(),
            retries: options.retries,
            retry_delay: options.retry_delay,
        })
    }

    fn pod(&self, name: &str) -> &PodInfo {
        &self.pods[name]
    }

    /// Runs a service scenario when the services are served; skipped (with
    /// why) when the agents do not serve services, failed when they should
    /// but did not program them.
    fn with_services(
        &self,
        f: impl FnOnce(&Self, &ServicesInfo) -> std::result::Result<Vec<Action>, String>,
    ) -> std::result::Result<Vec<Action>, String> {
        match &self.services {
            Services::Ready(info) => f(self, info),
            Services::NotServed(reason) => Err(reason.clone()),
            Services::Broken(problem) => Ok(vec![Action::once(
                "the agents program the test services".into(),
                Some(problem.clone()),
            )]),
        }
    }

    /// `curl URL` from a node, pod or the router; succeeds when it answers
    /// and the body contains `expect` (a pod name: which backend answered).
    fn http_get(&self, name: String, from: &str, url: &str, expect: &str) -> Action {
        let t = &self.timeout_secs;
        self.exec(name, from, &["curl", "-sS", "--max-time", t, url], expect)
    }

    /// A UDP echo to `to:port`.
    fn udp_to(&self, name: String, from: &str, to: Ipv4Addr, port: u16) -> Action {
        let t = &self.timeout_secs;
        self.exec(
            name,
            from,
            &[
                "sh",
                "-c",
                &format!("echo ciliate-udp-echo | socat -T {t} - UDP4:{to}:{port}"),
            ],
            "ciliate-udp-echo",
        )
    }

    /// `attempt` as an action, tried again when it fails (see [`Options::retries`]).
    fn retried(&self, name: String, attempt: impl FnMut() -> Option<String>) -> Action {
        Action::retried(name, self.retries, self.retry_delay, attempt)
    }

    /// Runs a command in a node or pod; succeeds when it exits 0 and its
    /// stdout contains `expect`.
    fn exec(&self, name: String, target: &str, argv: &[&str], expect: &str) -> Action {
        self.retried(name, || match self.lab.exec(target, argv) {
            Err(e) => Some(format!("cannot run `{}` in {target}: {e}", argv.join(" "))),
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                if out.status.success() && stdout.contains(expect) {
                    None
                } else {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let said = format!("{} {}", stdout.trim(), stderr.trim());
                    let said: String = said.trim().chars().take(300).collect();
                    Some(format!(
                        "`{}` in {target}: exit {}{}: {said}",
                        argv.join(" "),
                        out.status
                            .code()
                            .map_or_else(|| "by signal".into(), |c| c.to_string()),
                        if out.status.success() {
                            format!(", output lacks {expect:?}")
                        } else {
                            String::new()
                        },
                    ))
                }
            }
        })
    }

    fn ping(&self, from: &str, from_label: &str, to: Ipv4Addr, to_label: &str) -> Action {
        self.ping_with(
            format!("ICMP {from_label} -> {to_label} ({to})"),
            from,
            to,
            &[],
        )
    }

    /// One ping with the request timeout and `options` (before the address).
    fn ping_with(&self, name: String, from: &str, to: Ipv4Addr, options: &[&str]) -> Action {
        let to = to.to_string();
        let mut argv = vec!["ping", "-n", "-c", "1", "-W", &self.timeout_secs];
        argv.extend_from_slice(options);
        argv.push(&to);
        self.exec(name, from, &argv, "")
    }

    fn http(
        &self,
        from: &str,
        from_label: &str,
        to: Ipv4Addr,
        port: u16,
        to_label: &str,
    ) -> Action {
        self.exec(
            format!("TCP {from_label} -> {to_label} ({to}:{port}, HTTP)"),
            from,
            &[
                "curl",
                "-sS",
                "--max-time",
                &self.timeout_secs,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{to}:{port}/"),
            ],
            "200",
        )
    }

    fn udp(&self, from: &str, from_label: &str, to: Ipv4Addr, to_label: &str) -> Action {
        self.udp_to(
            format!("UDP {from_label} -> {to_label} ({to}:{ECHO_PORT}, echo)"),
            from,
            to,
            ECHO_PORT,
        )
    }

    /// A ping as large as the pod MTU allows, with DF set: it must arrive whole.
    fn ping_full_size(&self, from: &str, from_label: &str, to: Ipv4Addr, to_label: &str) -> Action {
        let size = (self.mtu.saturating_sub(28)).to_string();
        self.ping_with(
            format!(
                "ICMP {from_label} -> {to_label} ({to}), full size ({} bytes, DF)",
                self.mtu
            ),
            from,
            to,
            &["-M", "do", "-s", &size],
        )
    }

    /// Sends [`Self::transfer_bytes`] over one TCP connection from a socket in
    /// `netns` to an echo server and checks every byte comes back, in order.
    /// Segments are full-size (the kernel fills the MSS), so an MTU problem on
    /// the path shows here as a stall instead of hiding behind small packets.
    fn tcp_transfer(&self, netns: &Path, to: SocketAddr, label: &str) -> Action {
        let bytes = self.transfer_bytes;
        let name = format!(
            "TCP {CLIENT} -> {label} ({to}, echo of {} MiB, full-size segments, every byte checked)",
            bytes >> 20
        );
        self.retried(name, || transfer(netns, to, bytes).err())
    }
}

/// ICMP, TCP (HTTP), UDP, a full-size ping with DF, and a multi-megabyte TCP
/// echo with every byte checked.
fn pod_to_pod(env: &Env<'_>, echo: &str) -> Vec<Action> {
    let client = env.pod(CLIENT);
    let target = env.pod(echo);
    let from = client.key();
    vec![
        env.ping(&from, CLIENT, target.ip, echo),
        env.http(&from, CLIENT, target.ip, HTTP_PORT, echo),
        env.udp(&from, CLIENT, target.ip, echo),
        env.ping_full_size(&from, CLIENT, target.ip, echo),
        env.tcp_transfer(
            &client.netns_path,
            SocketAddr::from((target.ip, ECHO_PORT)),
            echo,
        ),
    ]
}

/// A test service's addresses, or why the scenario cannot run.
fn service<'s>(
    info: &'s ServicesInfo,
    name: &str,
) -> std::result::Result<&'s ServiceAddresses, String> {
    info.services
        .get(name)
        .ok_or_else(|| format!("service {TEST_NAMESPACE}/{name} is not in the store"))
}

fn node_port(svc: &ServiceAddresses, port: &str) -> std::result::Result<u16, String> {
    svc.node_ports
        .get(port)
        .copied()
        .ok_or_else(|| format!("the service has no nodePort for port {port}"))
}

/// The client to the `echo` ClusterIP: HTTP, UDP and a full-size TCP echo
/// with every byte checked.
fn pod_to_service(env: &Env<'_>, info: &ServicesInfo) -> std::result::Result<Vec<Action>, String> {
    let echo = service(info, SVC_ECHO)?;
    let ip = echo.cluster_ip.ok_or("service echo has no clusterIP")?;
    let client = env.pod(CLIENT);
    let from = client.key();
    Ok(vec![
        env.http_get(
            format!("TCP {CLIENT} -> service echo ({ip}:{SVC_HTTP_PORT}, HTTP)"),
            &from,
            &format!("http://{ip}:{SVC_HTTP_PORT}/"),
            "echo-",
        ),
        env.udp_to(
            format!("UDP {CLIENT} -> service echo ({ip}:{SVC_UDP_PORT}, echo)"),
            &from,
            ip,
            SVC_UDP_PORT,
        ),
        env.tcp_transfer(
            &client.netns_path,
            SocketAddr::from((ip, ECHO_PORT)),
            "service echo",
        ),
    ])
}

/// The client to the `echo` NodePorts (HTTP and UDP) on node `index`: its
/// own node (0) or another one (1); translated at the client, like
/// Cilium's socket-LB.
fn nodeport_from_client(
    env: &Env<'_>,
    info: &ServicesInfo,
    index: usize,
) -> std::result::Result<Vec<Action>, String> {
    let echo = service(info, SVC_ECHO)?;
    let node = env.lab.nodes().get(index).ok_or("no such node")?;
    let (http, udp) = (node_port(echo, "http")?, node_port(echo, "udp-echo")?);
    let from = env.pod(CLIENT).key();
    let ip = node.ip();
    Ok(vec![
        env.http_get(
            format!("TCP {CLIENT} -> {} NodePort ({ip}:{http}, HTTP)", node.name),
            &from,
            &format!("http://{ip}:{http}/"),
            "echo-",
        ),
        env.udp_to(
            format!("UDP {CLIENT} -> {} NodePort ({ip}:{udp}, echo)", node.name),
            &from,
            ip,
            udp,
        ),
    ])
}

/// The outside host to every node's NodePorts, for a service whose backend
/// is only on node0, one only on node1, and one on both: every node is an
/// entry with a local backend, a remote one and both. The reply must name
/// the backend the service has.
fn outside_to_nodeport(
    env: &Env<'_>,
    info: &ServicesInfo,
) -> std::result::Result<Vec<Action>, String> {
    let Some(router) = &env.lab.state().router else {
        return Err(
            "the lab has no outside host (it was made before labs had one; make it again)".into(),
        );
    };
    let mut actions = Vec::new();
    for node in env.lab.nodes() {
        for (svc_name, backend) in [
            (ECHO_SAME, ECHO_SAME),
            (ECHO_OTHER, ECHO_OTHER),
            (SVC_ECHO, "echo-"),
        ] {
            let backends: Vec<&PodInfo> = env
                .pods
                .values()
                .filter(|p| p.name.starts_with(backend) && p.name != CLIENT)
                .collect();
            if backends.is_empty() {
                continue;
            }
            let svc = service(info, svc_name)?;
            let port = node_port(svc, "http")?;
            let place = if backends.iter().all(|b| b.node == node.name) {
                "local backend"
            } else if backends.iter().any(|b| b.node == node.name) {
                "local and remote backends"
            } else {
                "remote backend"
            };
            let ip = node.ip();
            actions.push(env.http_get(
                format!(
                    "TCP router ({}) -> {} NodePort {ip}:{port}, service {svc_name}, {place}",
                    router.ip(),
                    node.name
                ),
                names::ROUTER,
                &format!("http://{ip}:{port}/"),
                backend,
            ));
        }
        let echo = service(info, SVC_ECHO)?;
        let udp = node_port(echo, "udp-echo")?;
        actions.push(env.udp_to(
            format!(
                "UDP router -> {} NodePort {}:{udp}, service echo",
                node.name,
                node.ip()
            ),
            names::ROUTER,
            node.ip(),
            udp,
        ));
    }
    Ok(actions)
}

/// The client through its own service, answered by itself (hairpin).
fn pod_to_itself(env: &Env<'_>, info: &ServicesInfo) -> std::result::Result<Vec<Action>, String> {
    let svc = service(info, CLIENT)?;
    let ip = svc.cluster_ip.ok_or("service client has no clusterIP")?;
    Ok(vec![env.http_get(
        format!("TCP {CLIENT} -> its own service client ({ip}:{SVC_HTTP_PORT}) -> itself"),
        &env.pod(CLIENT).key(),
        &format!("http://{ip}:{SVC_HTTP_PORT}/"),
        CLIENT,
    )])
}

/// The pods that reach the world: one per node (the client on node0, the
/// echo pod on node1).
fn world_clients<'e>(env: &'e Env<'_>) -> Vec<&'e PodInfo> {
    [CLIENT, ECHO_OTHER]
        .iter()
        .filter_map(|n| env.pods.get(*n))
        .collect()
}

/// What the router should see from each pod for `dests`; the scenario
/// cannot run (Err, why) when a pod would arrive with its own address and
/// the router has no route back to it: its answers could not leave.
fn plan_world<'e>(
    env: &'e Env<'_>,
    dests: &[Ipv4Addr],
) -> std::result::Result<Vec<(&'e PodInfo, Vec<crate::outside::ExpectedSource>)>, String> {
    let mut plan = Vec::new();
    for pod in world_clients(env) {
        let mut expected = Vec::new();
        for &dest in dests {
            let e = crate::outside::expected_source(env.lab, pod, dest)?;
            if !e.masqueraded && !crate::outside::router_routes_to(env.lab, pod) {
                return Err(format!(
                    "{} -> {dest} is not masqueraded ({}) and the router has no route back to \
                     {}: its answers could not reach the pod; run `ciliate lab router-routes add`",
                    pod.name, e.why, pod.ip
                ));
            }
            expected.push(e);
        }
        plan.push((pod, expected));
    }
    Ok(plan)
}

/// `curl http://dest/` from `pod`: the router answers with the source it
/// saw, which must be `expected`.
fn http_source(
    env: &Env<'_>,
    pod: &PodInfo,
    dest: Ipv4Addr,
    e: &crate::outside::ExpectedSource,
) -> Action {
    let url = format!("http://{dest}:{}/", crate::fabric::ROUTER_HTTP_PORT);
    let name = format!(
        "TCP {} ({}) -> {url}: the router sees {} ({})",
        pod.name, pod.node, e.source, e.why
    );
    let curl = ["curl", "-sS", "--max-time", &env.timeout_secs, &url];
    env.retried(name, || match env.lab.exec(&pod.key(), &curl) {
        Err(e) => Some(format!("cannot run curl in {}: {e}", pod.key())),
        Ok(out) if !out.status.success() => Some(format!(
            "`curl {url}` exit {}: {}",
            out.status
                .code()
                .map_or_else(|| "by signal".into(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => {
            let body = String::from_utf8_lossy(&out.stdout);
            match crate::outside::client_address(&body) {
                Some(seen) if seen == e.source => None,
                Some(seen) => Some(format!(
                    "the router saw {seen}, not {} ({})",
                    e.source, e.why
                )),
                None => Some(format!(
                    "the answer is not `client <address>`: {:?}",
                    body.trim()
                )),
            }
        }
    })
}

/// Pods on each node ping the router's fabric address and fetch
/// http://10.10.1.200/ (an outside network); the router must see the source
/// the agent's masquerading settings say.
fn pod_to_world(env: &Env<'_>) -> std::result::Result<Vec<Action>, String> {
    let router = env.lab.router().map_err(|e| e.to_string())?.ip();
    let world = outside_address(0)?;
    let plan = plan_world(env, &[router, world])?;
    let mut actions = Vec::new();
    for (pod, expected) in plan {
        actions.push(env.ping(
            &pod.key(),
            &format!("{} ({})", pod.name, pod.node),
            router,
            "the router",
        ));
        actions.push(http_source(env, pod, world, &expected[1]));
    }
    Ok(actions)
}

/// Pods on each node fetch http://10.10.2.200/ (the other outside network).
fn to_cidr(env: &Env<'_>) -> std::result::Result<Vec<Action>, String> {
    let dest = outside_address(1)?;
    let plan = plan_world(env, &[dest])?;
    Ok(plan
        .into_iter()
        .map(|(pod, expected)| http_source(env, pod, dest, &expected[0]))
        .collect())
}

/// The router's address in its `i`-th outside network.
fn outside_address(i: usize) -> std::result::Result<Ipv4Addr, String> {
    crate::fabric::outside_networks()
        .get(i)
        .map(ipnet::Ipv4Net::addr)
        .ok_or_else(|| format!("the router has no outside network {i}"))
}

fn pod_to_host(env: &Env<'_>) -> Vec<Action> {
    let client = env.pod(CLIENT);
    env.lab
        .nodes()
        .iter()
        .map(|n| {
            let label = if n.name == client.node {
                format!("its node {}", n.name)
            } else {
                format!("node {}", n.name)
            };
            env.ping(&client.key(), CLIENT, n.ip(), &label)
        })
        .collect()
}

fn host_to_pod(env: &Env<'_>) -> Vec<Action> {
    let mut actions = Vec::new();
    for node in env.lab.nodes() {
        for echo in [ECHO_SAME, ECHO_OTHER] {
            let Some(pod) = env.pods.get(echo) else {
                continue;
            };
            let from = format!("node {}", node.name);
            actions.push(env.ping(&node.name, &from, pod.ip, echo));
            actions.push(env.http(&node.name, &from, pod.ip, HTTP_PORT, echo));
        }
    }
    actions
}

/// The fabric's own address is a host outside the cluster (etcd serves there).
fn pod_to_remote_host(env: &Env<'_>) -> Vec<Action> {
    let client = env.pod(CLIENT);
    let outside = crate::fabric::gateway(env.lab.state().fabric_cidr).addr();
    let label = "the outside host";
    vec![
        env.ping(&client.key(), CLIENT, outside, label),
        env.exec(
            format!(
                "TCP {CLIENT} -> {label} ({outside}:{}, etcd /health)",
                crate::lab::ETCD_CLIENT_PORT
            ),
            &client.key(),
            &[
                "curl",
                "-sS",
                "--max-time",
                &env.timeout_secs,
                &format!("http://{outside}:{}/health", crate::lab::ETCD_CLIENT_PORT),
            ],
            "health",
        ),
    ]
}

/// Every agent sees every other node reachable (host and health endpoint,
/// ICMP and TCP). Waits up to the health timeout for a good round.
fn health(env: &Env<'_>, options: &Options) -> std::result::Result<Vec<Action>, String> {
    let nodes = env.lab.nodes();
    let mut actions = Vec::new();
    let mut all_disabled = true;
    for node in nodes {
        let client = ciliate_api::Client::new(&node.socket);
        let name = format!(
            "{} reaches the other {} node(s)",
            node.name,
            nodes.len() - 1
        );
        let deadline = Instant::now() + options.health_timeout;
        let error = loop {
            let problem = match client.get::<Status>("/v1/status") {
                Err(e) => Some(format!("GET /v1/status: {e}")),
                Ok(s) if s.cluster_health.is_none() => {
                    if options.expect_health {
                        all_disabled = false;
                        Some("health checking disabled".to_string())
                    } else {
                        break None;
                    }
                }
                Ok(_) => {
                    all_disabled = false;
                    match client.get::<ClusterHealth>("/v1/health") {
                        Err(e) => Some(format!("GET /v1/health: {e}")),
                        Ok(h) => health_problems(&h, node.name.as_str(), nodes.len()),
                    }
                }
            };
            match problem {
                None => break None,
                Some(p) if Instant::now() >= deadline => {
                    break Some(format!(
                        "{p} (still after {} s)",
                        options.health_timeout.as_secs()
                    ))
                }
                Some(p) if p == "health checking disabled" => break Some(p),
                Some(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        };
        actions.push(Action::once(name, error));
    }
    if !options.expect_health && all_disabled {
        return Err("health checking is disabled (as asked)".into());
    }
    Ok(actions)
}

fn health_problems(h: &ClusterHealth, me: &str, nodes: usize) -> Option<String> {
    if h.probed_at == 0 {
        return Some("no probe round finished yet".into());
    }
    let mut problems = Vec::new();
    if h.nodes.len() != nodes - 1 {
        problems.push(format!(
            "probes {} node(s), not {}: {:?}",
            h.nodes.len(),
            nodes - 1,
            h.nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
        ));
    }
    for n in &h.nodes {
        if n.name == me {
            problems.push("probes itself".into());
        }
        let mut paths = vec![("host", Some(&n.host))];
        paths.push(("endpoint", n.endpoint.as_ref()));
        for (what, path) in paths {
            let Some(path) = path else {
                problems.push(format!("{}: no health endpoint known", n.name));
                continue;
            };
            for (proto, probe) in [("ICMP", &path.icmp), ("TCP", &path.tcp)] {
                if !probe.ok {
                    problems.push(format!(
                        "{} {what} {} {proto}: {}",
                        n.name,
                        path.ip,
                        probe.error.as_deref().unwrap_or("failed")
                    ));
                }
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Drop counters (reason >= 128) per node, reason and direction.
type Counters = BTreeMap<(String, u8, u8), u64>;

fn drop_counters(lab: &Lab) -> std::result::Result<Counters, String> {
    let mut counters = Counters::new();
    for node in lab.nodes() {
        let maps = ciliate_datapath::loader::Maps::open(&node.bpf_root)
            .map_err(|e| format!("opening the maps of {}: {e}", node.name))?;
        let totals = maps
            .metrics_totals()
            .map_err(|e| format!("reading the metrics of {}: {e}", node.name))?;
        for (reason, dir, packets, _) in totals {
            if reason >= 128 {
                counters.insert((node.name.clone(), reason, dir), packets);
            }
        }
    }
    Ok(counters)
}

fn no_unexpected_drops(lab: &Lab, baseline: &std::result::Result<Counters, String>) -> Vec<Action> {
    let name = "drop counters of every node did not grow".to_string();
    let error = match (baseline, drop_counters(lab)) {
        (Err(e), _) => Some(e.clone()),
        (_, Err(e)) => Some(e),
        (Ok(before), Ok(after)) => {
            let grown: Vec<String> = after
                .iter()
                .filter_map(|(key, &n)| {
                    let was = before.get(key).copied().unwrap_or(0);
                    (n > was).then(|| {
                        let (node, reason, dir) = key;
                        format!(
                            "{node}: {} ({}) +{} packets",
                            ciliate_datapath::reasons::drop_reason_name(*reason),
                            if *dir == ciliate_datapath::maps::METRIC_INGRESS {
                                "ingress"
                            } else {
                                "egress"
                            },
                            n - was
                        )
                    })
                })
                .collect();
            (!grown.is_empty()).then(|| grown.join("; "))
        }
    };
    vec![Action::once(name, error)]
}

fn pattern(offset: usize) -> u8 {
    // A prime period: reordered or repeated segments do not line up by chance.
    (offset % 251) as u8
}

fn transfer(netns: &Path, to: SocketAddr, bytes: usize) -> std::result::Result<(), String> {
    let stream = netns::run_in(netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("connecting to {to}: {e}"))?;
    let stall = Duration::from_secs(20);
    stream
        .set_read_timeout(Some(stall))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(stall))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut sent = 0;
        let mut chunk = vec![0u8; 64 << 10];
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + i);
            }
            writer.write_all(&chunk[..n])?;
            sent += n;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut received = 0;
    let mut buf = vec![0u8; 64 << 10];
    let result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Some(i) = (0..n).find(|&i| buf[i] != pattern(received + i)) {
                    break Err(format!(
                        "byte {} came back as {} instead of {}",
                        received + i,
                        buf[i],
                        pattern(received + i)
                    ));
                }
                received += n;
            }
            Err(e) => {
                break Err(format!(
                    "after {received} of {bytes} bytes came back: {e} (nothing for {} s?)",
                    stall.as_secs()
                ))
            }
        }
    };
    let _ = reader.shutdown(Shutdown::Both);
    let sent = sender
        .join()
        .map_err(|_| "the sending thread panicked".to_string())?;
    result?;
    sent.map_err(|e| format!("sending: {e}"))?;
    if received == bytes {
        Ok(())
    } else {
        Err(format!(
            "{received} of {bytes} bytes came back before the server closed"
        ))
    }
}

/// Follows one node's `GET /v1/monitor?type=drop` in a thread until stopped.
pub struct DropWatcher {
    node: String,
    state: std::result::Result<(StreamStopper, JoinHandle<Followed>), String>,
}

/// What a reader saw: the events, and what went wrong (undecodable lines, a
/// broken stream).
type Followed = (Vec<MonitorEvent>, Vec<String>);

impl DropWatcher {
    /// Starts following; once this returns, no drop of the node is missed
    /// (the agent answers the request once it has subscribed the reader).
    /// A node whose agent does not answer is reported by [`DropWatcher::stop`].
    pub fn start(node: &str, socket: &Path) -> Self {
        let state = ciliate_api::Client::new(socket)
            .open_stream("/v1/monitor?type=drop", Some(Duration::from_secs(5)))
            .map(|stream| {
                let stopper = stream.stopper();
                let node = node.to_string();
                (
                    stopper,
                    std::thread::spawn(move || read_events(stream, &node)),
                )
            })
            .map_err(|e| {
                format!(
                    "the monitor of {node} ({}) could not be followed: {}",
                    socket.display(),
                    report(&e)
                )
            });
        Self {
            node: node.to_string(),
            state,
        }
    }

    /// Stops following (after a moment for events still on their way) and
    /// returns the drops seen and what went wrong while following.
    pub fn stop(self) -> (Vec<SeenDrop>, Vec<String>) {
        let (stopper, thread) = match self.state {
            Ok(s) => s,
            Err(e) => return (Vec::new(), vec![e]),
        };
        std::thread::sleep(Duration::from_millis(300));
        stopper.stop();
        let (events, errors) = thread.join().unwrap_or_else(|_| {
            (
                Vec::new(),
                vec![format!("the monitor reader of {} panicked", self.node)],
            )
        });
        let drops = events
            .into_iter()
            .map(|event| SeenDrop {
                node: self.node.clone(),
                event,
            })
            .collect();
        (drops, errors)
    }
}

fn read_events(stream: LineStream, node: &str) -> Followed {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for line in stream {
        match line {
            Ok(line) => match serde_json::from_str::<MonitorEvent>(&line) {
                Ok(event) => events.push(event),
                Err(e) => {
                    let shown: String = line.chars().take(120).collect();
                    errors.push(format!(
                        "the monitor of {node} sent an event this CLI cannot decode ({e}): {shown}"
                    ));
                }
            },
            Err(e) => {
                errors.push(format!("the monitor of {node} broke off: {}", report(&e)));
                break;
            }
        }
    }
    (events, errors)
}

/// An error with its sources, `a: b: c`.
fn report(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt function that fails `failures` times, then succeeds.
    fn failing(failures: usize) -> impl FnMut() -> Option<String> {
        let mut calls = 0;
        move || {
            calls += 1;
            (calls <= failures).then(|| format!("try {calls} failed"))
        }
    }

    #[test]
    fn a_retried_action_passes_on_a_later_try_and_keeps_the_earlier_errors() {
        let a = Action::retried("x".into(), 3, Duration::ZERO, failing(2));
        assert_eq!(a.error, None);
        assert_eq!(a.earlier_errors, ["try 1 failed", "try 2 failed"]);
    }

    #[test]
    fn a_retried_action_fails_after_its_retries_with_the_last_error() {
        let a = Action::retried("x".into(), 2, Duration::ZERO, failing(10));
        assert_eq!(a.error.as_deref(), Some("try 3 failed"));
        assert_eq!(a.earlier_errors.len(), 2);
        let once = Action::retried("x".into(), 0, Duration::ZERO, failing(10));
        assert_eq!(once.error.as_deref(), Some("try 1 failed"));
        assert!(once.earlier_errors.is_empty());
    }

    #[test]
    fn a_passing_action_is_tried_once() {
        let a = Action::retried("x".into(), 3, Duration::ZERO, failing(0));
        assert_eq!(a.error, None);
        assert!(a.earlier_errors.is_empty());
    }
}
