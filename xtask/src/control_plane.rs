//! `cargo xtask bench control-plane`: what the agent and the CNI plugin cost,
//! on a fresh one-node lab (real agent, etcd and operator; release binaries).
//!
//! 1. CNI ADD, run directly as a runtime runs it (`ciliate_lab::cni::add`:
//!    the plugin exec'd with the `CNI_*` environment and the conflist on
//!    stdin), for `endpoints` pods one after another; latency of each call
//!    (p50/p99) and pods per second (namespace creation included).
//! 2. The agent's RSS with those endpoints.
//! 3. `services` ClusterIP services, each with an EndpointSlice naming one
//!    pod, written into the store (etcd) as the API server would hold them;
//!    the time until the agent has all of them in its service map
//!    (`ciliate_lb4_svc`, slot 0 of each frontend), and its RSS then.
//! 4. CNI DEL of every pod: p50/p99 and pods per second.
//! 5. Through containerd: `cri_pods` sandboxes made and removed through CRI
//!    (RunPodSandbox, then StopPodSandbox + RemovePodSandbox) on a containerd
//!    running in the node, one after another: the latency a kubelet sees,
//!    and the plugin's own ADD and DEL as containerd (libcni) ran them, from
//!    the `done in N us` line each run writes to its log.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ciliate_datapath::loader::Maps;
use ciliate_datapath::maps::{Lb4Key, IPPROTO_TCP, LB_SCOPE_EXTERNAL};
use ciliate_datapath::netns;
use ciliate_lab::{cni, fabric, names, LabGuard, LabSpec};
use futures_util::stream::{self, TryStreamExt};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::catalog;
use crate::goals::Goal;
use crate::interrupt;
use crate::load::percentile;

/// Store writes in flight at once.
const WRITE_CONCURRENCY: usize = 64;
/// The namespace the benchmark's services live in.
const SERVICE_NAMESPACE: &str = "bench";

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub endpoints: usize,
    pub services: usize,
    /// Pods made and removed through containerd's CRI (0: not measured).
    pub cri_pods: usize,
    /// How long the agent may take to program the services.
    pub program_timeout_s: u64,
    #[serde(skip)]
    pub bin_dir: Option<PathBuf>,
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        if self.endpoints == 0 || self.endpoints > 4000 {
            anyhow::bail!(
                "--endpoints: {} is not allowed: give 1..=4000 (one node's /20 PodCIDR)",
                self.endpoints
            );
        }
        if self.cri_pods > 1000 {
            anyhow::bail!(
                "--cri-pods: {} is not allowed: give 0..=1000",
                self.cri_pods
            );
        }
        if self.services > catalog::MAX_SERVICES {
            anyhow::bail!(
                "--cp-services: {} is not allowed: give 0..={}",
                self.services,
                catalog::MAX_SERVICES
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Pods per second over the whole loop (namespaces included).
    pub pods_per_s: f64,
}

impl Latency {
    fn of(mut nanos: Vec<u64>, wall: Duration) -> Self {
        nanos.sort_unstable();
        let ms = |v: u64| v as f64 / 1e6;
        Self {
            calls: nanos.len(),
            p50_ms: ms(percentile(&nanos, 0.50)),
            p99_ms: ms(percentile(&nanos, 0.99)),
            max_ms: ms(nanos.last().copied().unwrap_or(0)),
            pods_per_s: nanos.len() as f64 / wall.as_secs_f64().max(1e-9),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub options: Options,
    pub add: Latency,
    pub del: Latency,
    pub rss_idle_mib: Option<f64>,
    pub rss_endpoints_mib: Option<f64>,
    pub rss_services_mib: Option<f64>,
    /// Writing the Services and EndpointSlices into etcd.
    pub store_write_s: Option<f64>,
    /// From the first write until the agent's map held every service.
    pub program_s: Option<f64>,
    /// Where the agent's part of those ADDs went, from its log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_create: Option<AgentCreate>,
    /// Through containerd (absent when `cri_pods` is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cri: Option<CriReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub total_seconds: f64,
}

/// The agent's endpoint creation (`POST /v1/endpoint`) during the ADDs, as
/// its `endpoint created` lines time it: the profile of ADD's largest part.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentCreate {
    /// The whole request, lock to answer.
    pub total: Percentiles,
    /// Programming the kernel: the device's sysctls, the TCX attach (a link
    /// creation that waits for an RCU grace period under the RTNL lock) and
    /// the endpoint map entry.
    pub plumb: Percentiles,
    /// Saving the agent's state file.
    pub persist: Percentiles,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    fn of_micros(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        Self {
            samples: micros.len(),
            p50_ms: percentile(&micros, 0.50) as f64 / 1e3,
            p99_ms: percentile(&micros, 0.99) as f64 / 1e3,
        }
    }
}

/// The agent's `endpoint created` timings for the pods whose label starts
/// with `label_prefix`; `None` when there are none.
fn agent_create_timings(log: &str, label_prefix: &str) -> Option<AgentCreate> {
    let (mut total, mut plumb, mut persist) = (Vec::new(), Vec::new(), Vec::new());
    let tag = format!(" label={label_prefix}");
    for line in log.lines() {
        if !line.contains(" endpoint created ") || !line.contains(tag.as_str()) {
            continue;
        }
        let field = |name: &str| {
            let (_, rest) = line.split_once(&format!(" {name}="))?;
            rest.split(' ').next()?.parse::<u64>().ok()
        };
        if let (Some(t), Some(p), Some(s)) =
            (field("took_us"), field("plumb_us"), field("persist_us"))
        {
            total.push(t);
            plumb.push(p);
            persist.push(s);
        }
    }
    (!total.is_empty()).then(|| AgentCreate {
        total: Percentiles::of_micros(total),
        plumb: Percentiles::of_micros(plumb),
        persist: Percentiles::of_micros(persist),
    })
}

/// Pods through containerd: what the kubelet's calls took, and ciliate's
/// plugin inside them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CriReport {
    /// RunPodSandbox (pods/s over the loop).
    pub run_sandbox: Latency,
    /// StopPodSandbox + RemovePodSandbox.
    pub remove_sandbox: Latency,
    /// The plugin's ADD as containerd ran it.
    pub add: Latency,
    /// The plugin's DEL as containerd ran it.
    pub del: Latency,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoints: 1000,
            services: 100_000,
            cri_pods: 100,
            program_timeout_s: 600,
            bin_dir: None,
        }
    }
}

fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

struct Pod {
    name: String,
    /// `default/<name>`, for messages.
    key: String,
    netns: String,
    netns_path: PathBuf,
    container_id: String,
    result: Option<serde_json::Value>,
}

impl Pod {
    /// The CNI call a runtime on `runtime_netns` makes for this pod.
    fn invocation<'a>(&'a self, cni_path: &'a str, runtime_netns: &'a Path) -> cni::Invocation<'a> {
        cni::Invocation {
            pod: &self.key,
            pod_namespace: "default",
            pod_name: &self.name,
            container_id: &self.container_id,
            netns_path: &self.netns_path,
            ifname: "eth0",
            cni_path,
            runtime_netns,
        }
    }
}

pub fn run(opts: &Options) -> Result<Report> {
    opts.validate()?;
    let started = Instant::now();
    let mut report = Report {
        options: opts.clone(),
        ..Report::default()
    };
    let lab_name = format!("xbcp{}", std::process::id());
    let mut spec = LabSpec::new(lab_name.clone(), 1);
    spec.pod_cidr_prefix = 20;
    spec.bin_dir.clone_from(&opts.bin_dir);
    eprintln!("control-plane: bringing up a one-node lab");
    let lab = LabGuard::up(&spec).context("bringing up the control-plane lab")?;
    let node = lab.node("node0")?.clone();
    let pid = node
        .agent
        .as_ref()
        .map(|p| p.pid)
        .context("the lab's agent has no process")?;
    report.rss_idle_mib = rss_mib(pid);
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&node.conflist)
            .with_context(|| format!("reading {}", node.conflist.display()))?,
    )
    .context("the lab's conflist is not JSON")?;
    let cni_path = lab.state().cni_path.clone();

    // 1. ADD: the namespaces carry the lab's prefix, so taking the lab down
    // removes whatever this loop leaves behind.
    let mut pods = Vec::with_capacity(opts.endpoints);
    let mut add_ns = Vec::with_capacity(opts.endpoints);
    let begin = Instant::now();
    for i in 0..opts.endpoints {
        interrupt::check()?;
        let name = format!("bench{i}");
        let netns_name = format!("{}cp{i}", names::netns_prefix(&lab_name));
        fabric::create_netns(&netns_name, &[])?;
        let container_id = names::container_id(&lab_name, "default", &name);
        let mut pod = Pod {
            key: format!("default/{name}"),
            name,
            netns_path: netns::named_path(&netns_name),
            netns: netns_name,
            container_id,
            result: None,
        };
        let t = Instant::now();
        let result = cni::add(&list, &pod.invocation(&cni_path, &node.netns_path));
        add_ns.push(t.elapsed().as_nanos() as u64);
        match result {
            Ok(r) => pod.result = Some(r),
            Err(e) => {
                report.errors.push(format!("CNI ADD {}: {e}", pod.key));
                pods.push(pod);
                break;
            }
        }
        pods.push(pod);
    }
    report.add = Latency::of(add_ns, begin.elapsed());
    report.rss_endpoints_mib = rss_mib(pid);
    let agent_log = node.dir.join("agent.log");
    report.agent_create = std::fs::read_to_string(&agent_log)
        .ok()
        .and_then(|log| agent_create_timings(&log, "k8s:default/bench"));
    eprintln!(
        "  {} ADDs: p50 {:.1} ms, p99 {:.1} ms, {:.0} pods/s; agent RSS {:.1} MiB",
        report.add.calls,
        report.add.p50_ms,
        report.add.p99_ms,
        report.add.pods_per_s,
        report.rss_endpoints_mib.unwrap_or(f64::NAN)
    );

    // 3. Services.
    if opts.services > 0 && report.errors.is_empty() {
        let backend = pods
            .first()
            .and_then(|p| p.result.as_ref())
            .and_then(cni::result_ipv4)
            .unwrap_or(Ipv4Addr::new(172, 20, 0, 10));
        match program_services(&lab, &node.bpf_root, opts, backend) {
            Ok((write, program)) => {
                report.store_write_s = Some(write);
                report.program_s = program;
                if program.is_none() {
                    report.errors.push(format!(
                        "the agent had not programmed {} services after {} s",
                        opts.services, opts.program_timeout_s
                    ));
                }
            }
            Err(e) => report.errors.push(format!("services: {e:#}")),
        }
        report.rss_services_mib = rss_mib(pid);
        eprintln!(
            "  {} services: written in {:.1} s, programmed after {:.1} s; agent RSS {:.1} MiB",
            opts.services,
            report.store_write_s.unwrap_or(f64::NAN),
            report.program_s.unwrap_or(f64::NAN),
            report.rss_services_mib.unwrap_or(f64::NAN)
        );
    }

    // 4. DEL.
    let mut del_ns = Vec::with_capacity(pods.len());
    let begin = Instant::now();
    for pod in &pods {
        interrupt::check()?;
        let t = Instant::now();
        let result = cni::del(
            &list,
            &pod.invocation(&cni_path, &node.netns_path),
            pod.result.as_ref(),
        );
        del_ns.push(t.elapsed().as_nanos() as u64);
        if let Err(e) = result {
            report.errors.push(format!("CNI DEL {}: {e}", pod.key));
        }
        let _ = netns::delete_named(&pod.netns);
    }
    report.del = Latency::of(del_ns, begin.elapsed());
    eprintln!(
        "  {} DELs: p50 {:.1} ms, p99 {:.1} ms, {:.0} pods/s",
        report.del.calls, report.del.p50_ms, report.del.p99_ms, report.del.pods_per_s
    );
    // 5. Through containerd.
    if opts.cri_pods > 0 {
        match through_containerd(&lab, &node, opts.cri_pods) {
            Ok(cri) => {
                eprintln!(
                    "  {} pods through containerd: RunPodSandbox p50 {:.1} ms p99 {:.1} ms \
                     (plugin ADD p50 {:.1} ms p99 {:.1} ms); Stop+Remove p50 {:.1} ms p99 {:.1} ms \
                     (plugin DEL p50 {:.1} ms p99 {:.1} ms)",
                    cri.run_sandbox.calls,
                    cri.run_sandbox.p50_ms,
                    cri.run_sandbox.p99_ms,
                    cri.add.p50_ms,
                    cri.add.p99_ms,
                    cri.remove_sandbox.p50_ms,
                    cri.remove_sandbox.p99_ms,
                    cri.del.p50_ms,
                    cri.del.p99_ms
                );
                report.cri = Some(cri);
            }
            Err(e) => report.errors.push(format!("through containerd: {e:#}")),
        }
    }
    lab.down().context("taking the control-plane lab down")?;
    report.total_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Step 5: `count` sandboxes through a containerd started in the node.
fn through_containerd(
    lab: &ciliate_lab::Lab,
    node: &ciliate_lab::NodeInfo,
    count: usize,
) -> Result<CriReport> {
    use ciliate_lab::containerd::{self, Containerd};
    let log = node.dir.join("cni-containerd.log");
    let list = containerd::conflist(&node.socket, &log, false);
    eprintln!("control-plane: starting containerd in {}", node.name);
    let runtime = Containerd::start(lab, &node.name, &list).context("starting containerd")?;
    let measured = (|| -> Result<CriReport> {
        let client = runtime.client()?;
        let mut ids = Vec::with_capacity(count);
        let mut run_ns = Vec::with_capacity(count);
        let begin = Instant::now();
        for i in 0..count {
            interrupt::check()?;
            let config = runtime.sandbox_config(SERVICE_NAMESPACE, &format!("cri{i}"));
            let t = Instant::now();
            let id = client
                .run_pod_sandbox(config)
                .with_context(|| format!("RunPodSandbox {SERVICE_NAMESPACE}/cri{i}"))?;
            run_ns.push(t.elapsed().as_nanos() as u64);
            ids.push(id);
        }
        let run_wall = begin.elapsed();
        let mut remove_ns = Vec::with_capacity(count);
        let begin = Instant::now();
        for id in &ids {
            interrupt::check()?;
            let t = Instant::now();
            client
                .stop_pod_sandbox(id)
                .with_context(|| format!("StopPodSandbox {id}"))?;
            client
                .remove_pod_sandbox(id)
                .with_context(|| format!("RemovePodSandbox {id}"))?;
            remove_ns.push(t.elapsed().as_nanos() as u64);
        }
        let remove_wall = begin.elapsed();
        let text = std::fs::read_to_string(&log)
            .with_context(|| format!("reading the plugin's log {}", log.display()))?;
        let plugin = |command: &str, wall: Duration| -> Result<Latency> {
            let took = plugin_durations(&text, command);
            let nanos = ids
                .iter()
                .map(|id| {
                    took.get(id.as_str()).copied().with_context(|| {
                        format!(
                            "{} has no `{command} ... done in` line for sandbox {id}",
                            log.display()
                        )
                    })
                })
                .collect::<Result<Vec<u64>>>()?;
            Ok(Latency::of(nanos, wall))
        };
        Ok(CriReport {
            add: plugin("ADD", run_wall)?,
            del: plugin("DEL", remove_wall)?,
            run_sandbox: Latency::of(run_ns, run_wall),
            remove_sandbox: Latency::of(remove_ns, remove_wall),
        })
    })();
    let stopped = runtime.stop().context("stopping containerd");
    let report = measured?;
    stopped?;
    Ok(report)
}

/// The plugin's run time per container id for one command, from its log's
/// `<COMMAND> container=<id> ...: done in <N> us` lines, in nanoseconds.
/// A container run more than once keeps its last.
fn plugin_durations<'a>(log: &'a str, command: &str) -> std::collections::BTreeMap<&'a str, u64> {
    let tag = format!(" {command} container=");
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(tag.as_str())?;
            let (id, _) = rest.split_once(' ')?;
            let (_, us) = rest.rsplit_once(": done in ")?;
            let us: u64 = us.strip_suffix(" us")?.trim().parse().ok()?;
            Some((id, us * 1000))
        })
        .collect()
}

fn service_objects(index: usize, backend: Ipv4Addr) -> (Service, EndpointSlice) {
    let svc = catalog::Service::new(index);
    let name = format!("svc{index}");
    let service = Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(SERVICE_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(svc.vip.to_string()),
            cluster_ips: Some(vec![svc.vip.to_string()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(svc.port),
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(i32::from(catalog::TARGET_PORT))),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-1")),
            namespace: Some(SERVICE_NAMESPACE.into()),
            labels: Some(
                [(
                    ciliate_lab::services::LABEL_SERVICE_NAME.to_string(),
                    name.clone(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![backend.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(catalog::TARGET_PORT)),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    };
    (service, slice)
}

/// How many of the benchmark's services, in index order, the node's service
/// map holds (slot 0, external scope, as the agent writes a ClusterIP).
/// Resumes from `from`: each poll looks up only the services not yet seen,
/// where walking all 100,000 keys every poll took a core from the agent
/// being timed.
fn programmed(maps: &Maps, from: usize, count: usize) -> usize {
    (from..count)
        .find(|&i| {
            let svc = catalog::Service::new(i);
            let key = Lb4Key::new(svc.vip, svc.port, IPPROTO_TCP, LB_SCOPE_EXTERNAL, 0);
            maps.lb4_services.get(&key, 0).is_err()
        })
        .unwrap_or(count)
}

/// Writes the services; returns (seconds writing, seconds until programmed).
fn program_services(
    lab: &ciliate_lab::Lab,
    bpf_root: &Path,
    opts: &Options,
    backend: Ipv4Addr,
) -> Result<(f64, Option<f64>)> {
    let maps = Maps::open(bpf_root).context("opening the node's pinned maps")?;
    let count = opts.services;
    let start = Instant::now();
    lab.with_store(move |store| async move {
        stream::iter((0..count).map(Ok::<usize, ciliate_store::Error>))
            .map_ok(|i| {
                let store = &store;
                async move {
                    let (svc, slice) = service_objects(i, backend);
                    store.put(&svc).await?;
                    store.put(&slice).await?;
                    Ok::<(), ciliate_store::Error>(())
                }
            })
            .try_buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    })
    .context("writing services into the store")?;
    let write = start.elapsed().as_secs_f64();
    let deadline = start + Duration::from_secs(opts.program_timeout_s);
    let mut seen = 0;
    loop {
        interrupt::check()?;
        seen = programmed(&maps, seen, count);
        if seen >= count {
            return Ok((write, Some(start.elapsed().as_secs_f64())));
        }
        if Instant::now() >= deadline {
            return Ok((write, None));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The control-plane goals.
pub fn goals(report: &Report) -> Vec<Goal> {
    let measured = |v: f64, calls: usize| (calls > 0).then_some(v);
    vec![
        Goal::below(
            "CNI ADD p99, direct",
            measured(report.add.p99_ms, report.add.calls),
            50.0,
            "ms",
        ),
        Goal::below(
            format!("agent RSS with {} endpoints", report.options.endpoints),
            report.rss_endpoints_mib,
            64.0,
            "MiB",
        ),
    ]
}

pub fn markdown(report: &Report) -> String {
    let o = &report.options;
    let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.d$}"));
    let mut md = format!(
        "## Control plane\n\nOne-node lab (release agent, etcd, operator). CNI calls run \
         directly, one after another, as a runtime runs the plugin; pods/s includes creating \
         (deleting) the pod's namespace. Services: ClusterIP + one EndpointSlice each, \
         written to etcd {WRITE_CONCURRENCY} at a time; programmed = every frontend in the \
         agent's service map. Section: {:.0} s.\n\n\
         | measure | value |\n|---|---:|\n",
        report.total_seconds
    );
    let mut rows = vec![
        (
            format!("CNI ADD p50 / p99 / max ({} calls)", report.add.calls),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                report.add.p50_ms, report.add.p99_ms, report.add.max_ms
            ),
        ),
        (
            format!("CNI DEL p50 / p99 / max ({} calls)", report.del.calls),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                report.del.p50_ms, report.del.p99_ms, report.del.max_ms
            ),
        ),
        (
            "pods created / deleted per second".to_string(),
            format!(
                "{:.1} / {:.1}",
                report.add.pods_per_s, report.del.pods_per_s
            ),
        ),
        (
            "agent RSS, idle".to_string(),
            format!("{} MiB", f(report.rss_idle_mib, 1)),
        ),
        (
            format!("agent RSS, {} endpoints", o.endpoints),
            format!("{} MiB", f(report.rss_endpoints_mib, 1)),
        ),
        (
            format!(
                "agent RSS, {} endpoints + {} services",
                o.endpoints, o.services
            ),
            format!("{} MiB", f(report.rss_services_mib, 1)),
        ),
        (
            format!("writing {} services + slices to etcd", o.services),
            format!("{} s", f(report.store_write_s, 1)),
        ),
        (
            format!("time to program {} services (from first write)", o.services),
            format!("{} s", f(report.program_s, 1)),
        ),
    ];
    if let Some(a) = &report.agent_create {
        let pct = |p: &Percentiles| format!("{:.1} / {:.1} ms", p.p50_ms, p.p99_ms);
        rows.splice(
            1..1,
            [
                (
                    "  of which the agent's endpoint creation, p50 / p99".to_string(),
                    pct(&a.total),
                ),
                (
                    "    programming the kernel (sysctls, TCX attach, map entry)".to_string(),
                    pct(&a.plumb),
                ),
                ("    saving its state file".to_string(), pct(&a.persist)),
            ],
        );
    }
    if let Some(cri) = &report.cri {
        let lat = |l: &Latency| format!("{:.1} / {:.1} / {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms);
        rows.extend([
            (
                format!(
                    "containerd RunPodSandbox p50 / p99 / max ({} pods)",
                    cri.run_sandbox.calls
                ),
                lat(&cri.run_sandbox),
            ),
            (
                "  of which CNI ADD (the plugin as containerd ran it)".to_string(),
                lat(&cri.add),
            ),
            (
                format!(
                    "containerd StopPodSandbox + RemovePodSandbox ({} pods)",
                    cri.remove_sandbox.calls
                ),
                lat(&cri.remove_sandbox),
            ),
            (
                "  of which CNI DEL (the plugin as containerd ran it)".to_string(),
                lat(&cri.del),
            ),
            (
                "pods created / removed per second through containerd".to_string(),
                format!(
                    "{:.1} / {:.1}",
                    cri.run_sandbox.pods_per_s, cri.remove_sandbox.pods_per_s
                ),
            ),
        ]);
    }
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    for e in &report.errors {
        let _ = write!(md, "\n- {e}");
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::{agent_create_timings, plugin_durations};

    #[test]
    fn agent_create_timings_take_the_benchmarks_pods_only() {
        let log = "\
2026-11-22T10:56:34.193037Z  INFO ciliate_agent::daemon: endpoint created id=1 ip=172.20.0.2 device=lxc_health label=reserved:health lock_us=14 plumb_us=28594 persist_us=447 took_us=29089
2026-11-22T10:57:23.748429Z  INFO ciliate_agent::daemon: endpoint created id=2 ip=172.20.3.233 device=lxca05134c4d8e label=k8s:default/bench0 lock_us=14 plumb_us=26964 persist_us=6891 took_us=34878
2026-11-22T10:57:23.797740Z  INFO ciliate_agent::daemon: endpoint created id=3 ip=172.20.3.234 device=lxcd30f4626308 label=k8s:default/bench1 lock_us=17 plumb_us=17774 persist_us=5151 took_us=23616
2026-11-22T10:57:23.797741Z  INFO ciliate_agent::daemon: endpoint deleted id=3 ip=172.20.3.234
";
        let a = agent_create_timings(log, "k8s:default/bench").expect("two endpoints");
        assert_eq!(a.total.samples, 2);
        assert!((a.plumb.p50_ms - 17.774).abs() < 1e-9, "{a:?}");
        assert!((a.plumb.p99_ms - 26.964).abs() < 1e-9, "{a:?}");
        assert!((a.persist.p99_ms - 6.891).abs() < 1e-9, "{a:?}");
        assert!(agent_create_timings(log, "k8s:other/").is_none());
    }

    #[test]
    fn plugin_durations_are_read_per_container_and_command() {
        let log = "\
2026-11-22T08:00:00.000Z INFO ciliate-cni[10] ADD container=abc ifname=eth0: network n cniVersion 1.0.0
2026-11-22T08:00:00.010Z INFO ciliate-cni[10] ADD container=abc ifname=eth0: done in 12345 us
2026-11-22T08:00:00.020Z INFO ciliate-cni[11] DEL container=abc ifname=eth0: done in 800 us
2026-11-22T08:00:00.030Z WARN ciliate-cni[12] ADD container=def ifname=eth0: no address left
2026-11-22T08:00:00.040Z INFO ciliate-cni[13] ADD container=ghi ifname=eth0: done in 7 us
";
        let add = plugin_durations(log, "ADD");
        assert_eq!(add.len(), 2, "{add:?}");
        assert_eq!(add["abc"], 12_345_000);
        assert_eq!(add["ghi"], 7_000);
        assert!(!add.contains_key("def"), "a failed ADD has no duration");
        assert_eq!(plugin_durations(log, "DEL")["abc"], 800_000);
        assert!(plugin_durations(log, "CHECK").is_empty());
    }
}
