//! `cargo xtask bench`: every section in one run, one report.
//!
//! Sections run one after another (pod-to-pod, services, per-packet,
//! control plane), each building and removing its own labs; a section that
//! fails is reported with its error and the others still run. Outputs in
//! `out`: `bench.json` (everything), `bench.md` (the tables and the issue's
//! goals, printed too) and `bench.svg` (a chart); the services section also
//! keeps its own `services.json`/`services.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::goals::{self, Goal};
use crate::{control_plane, interrupt, per_packet, pod_to_pod, services, svg};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    PodToPod,
    Services,
    PerPacket,
    ControlPlane,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::PodToPod,
        Section::Services,
        Section::PerPacket,
        Section::ControlPlane,
    ];
}

#[derive(Clone, Debug)]
pub struct Options {
    pub sections: Vec<Section>,
    pub out: PathBuf,
    pub pod_to_pod: pod_to_pod::Options,
    pub services: services::Options,
    pub per_packet: per_packet::Options,
    pub control_plane: control_plane::Options,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub kernel: String,
    pub cpus: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_to_pod: Option<pod_to_pod::Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<services::Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_packet: Option<per_packet::Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<control_plane::Report>,
    pub goals: Vec<Goal>,
    /// Sections that failed, with why.
    pub failed: Vec<String>,
    pub total_seconds: f64,
}

/// The services goal: ciliate's connect rate at the largest N within 10% of N=smallest.
pub fn services_goals(report: &services::Report) -> Vec<Goal> {
    let largest = report.options.counts.iter().max().copied().unwrap_or(1);
    let smallest = report.options.counts.iter().min().copied().unwrap_or(1);
    report
        .rows
        .iter()
        .filter(|r| {
            r.mechanism == services::Mechanism::Ciliate
                && r.services == largest
                && r.target != services::Target::PodToPod
        })
        .map(|r| {
            Goal::at_least(
                format!(
                    "ciliate ClusterIP ({}) connect rate at N={largest} / N={smallest}",
                    r.target.as_str()
                ),
                r.vs_smallest_n,
                0.9,
                "x",
            )
        })
        .collect()
}

fn section<T>(
    name: &str,
    failed: &mut Vec<String>,
    f: impl FnOnce() -> Result<T>,
) -> Result<Option<T>> {
    match f() {
        Ok(r) => Ok(Some(r)),
        // Ctrl-C ends the whole run (after the section's guards cleaned up).
        Err(e) if interrupt::interrupted() => Err(e),
        Err(e) => {
            eprintln!("{name} failed: {e:#}");
            failed.push(format!("{name}: {e:#}"));
            Ok(None)
        }
    }
}

/// Runs the sections and writes bench.json, bench.md and bench.svg.
pub fn run(opts: &Options) -> Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the benchmarks need root (network namespaces, BPF, iptables)");
    }
    interrupt::install()?;
    let started = std::time::Instant::now();
    let mut report = Report {
        kernel: nix::sys::utsname::uname().map_or_else(
            |_| "unknown".to_string(),
            |u| u.release().to_string_lossy().into_owned(),
        ),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        ..Report::default()
    };
    let mut failed = Vec::new();
    for s in &opts.sections {
        interrupt::check()?;
        match s {
            Section::PodToPod => {
                report.pod_to_pod = section("pod-to-pod", &mut failed, || {
                    pod_to_pod::run(&opts.pod_to_pod)
                })?;
            }
            Section::Services => {
                let services = services::Options {
                    out: opts.out.clone(),
                    ..opts.services.clone()
                };
                report.services = section("services", &mut failed, || services::run(&services))?;
            }
            Section::PerPacket => {
                report.per_packet = section("per-packet", &mut failed, || {
                    per_packet::run(&opts.per_packet)
                })?;
            }
            Section::ControlPlane => {
                report.control_plane = section("control-plane", &mut failed, || {
                    control_plane::run(&opts.control_plane)
                })?;
            }
        }
    }
    if let Some(r) = &report.pod_to_pod {
        report.goals.extend(pod_to_pod::goals(r));
    }
    if let Some(r) = &report.services {
        report.goals.extend(services_goals(r));
    }
    if let Some(r) = &report.control_plane {
        report.goals.extend(control_plane::goals(r));
    }
    if let Some(r) = &report.per_packet {
        report.goals.extend(per_packet::goals(r));
    }
    report.failed = failed;
    report.total_seconds = started.elapsed().as_secs_f64();
    write(&report, &opts.out)?;
    if !report.failed.is_empty() {
        anyhow::bail!("sections failed: {}", report.failed.join("; "));
    }
    Ok(report)
}

pub fn markdown(report: &Report) -> String {
    let mut md = String::from("# ciliate benchmarks\n\n");
    let _ = writeln!(
        md,
        "Kernel {}, {} CPUs, whole run {:.0} s.\n",
        report.kernel, report.cpus, report.total_seconds
    );
    md.push_str("## Goals (issue 8; per-packet: DESIGN.md)\n\n");
    md.push_str(&goals::markdown(&report.goals));
    md.push('\n');
    if let Some(r) = &report.pod_to_pod {
        md.push_str(&pod_to_pod::markdown(r));
        md.push('\n');
    }
    if let Some(r) = &report.services {
        md.push_str(&crate::report::markdown(r));
        md.push('\n');
    }
    if let Some(r) = &report.per_packet {
        md.push_str(&per_packet::markdown(r));
        md.push('\n');
    }
    if let Some(r) = &report.control_plane {
        md.push_str(&control_plane::markdown(r));
        md.push('\n');
    }
    for f in &report.failed {
        let _ = writeln!(md, "- FAILED {f}");
    }
    md
}

/// Writes the three files into `dir` and prints the markdown.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = &dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    let md = markdown(report);
    let chart = svg::chart(report);
    for (name, text) in [
        ("bench.json", json + "\n"),
        ("bench.md", md.clone()),
        ("bench.svg", chart),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{md}");
    eprintln!(
        "wrote bench.json, bench.md and bench.svg in {}",
        dir.display()
    );
    Ok(())
}
