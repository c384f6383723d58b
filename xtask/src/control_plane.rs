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

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub total_seconds: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            endpoints: 1000,
            services: 100_000,
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
    netns: String,
    container_id: String,
    result: Option<serde_json::Value>,
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
            name,
            netns: netns_name,
            container_id,
            result: None,
        };
        let path = netns::named_path(&pod.netns);
        let key = format!("default/{}", pod.name);
        let inv = cni::Invocation {
            pod: &key,
            pod_namespace: "default",
            pod_name: &pod.name,
            container_id: &pod.container_id,
            netns_path: &path,
            ifname: "eth0",
            cni_path: &cni_path,
            runtime_netns: &node.netns_path,
        };
        let t = Instant::now();
        let result = cni::add(&list, &inv);
        add_ns.push(t.elapsed().as_nanos() as u64);
        match result {
            Ok(r) => pod.result = Some(r),
            Err(e) => {
                report.errors.push(format!("CNI ADD {key}: {e}"));
                pods.push(pod);
                break;
            }
        }
        pods.push(pod);
    }
    report.add = Latency::of(add_ns, begin.elapsed());
    report.rss_endpoints_mib = rss_mib(pid);
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
        let path = netns::named_path(&pod.netns);
        let key = format!("default/{}", pod.name);
        let inv = cni::Invocation {
            pod: &key,
            pod_namespace: "default",
            pod_name: &pod.name,
            container_id: &pod.container_id,
            netns_path: &path,
            ifname: "eth0",
            cni_path: &cni_path,
            runtime_netns: &node.netns_path,
        };
        let t = Instant::now();
        let result = cni::del(&list, &inv, pod.result.as_ref());
        del_ns.push(t.elapsed().as_nanos() as u64);
        if let Err(e) = result {
            report.errors.push(format!("CNI DEL {key}: {e}"));
        }
        let _ = netns::delete_named(&pod.netns);
    }
    report.del = Latency::of(del_ns, begin.elapsed());
    eprintln!(
        "  {} DELs: p50 {:.1} ms, p99 {:.1} ms, {:.0} pods/s",
        report.del.calls, report.del.p50_ms, report.del.p99_ms, report.del.pods_per_s
    );
    lab.down().context("taking the control-plane lab down")?;
    report.total_seconds = started.elapsed().as_secs_f64();
    Ok(report)
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
    bpf_root: &std::path::Path,
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
    let rows = [
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
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    for e in &report.errors {
        let _ = write!(md, "\n- {e}");
    }
    md.push('\n');
    md
}
