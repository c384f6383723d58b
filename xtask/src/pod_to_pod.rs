//! `cargo xtask bench pod-to-pod`: a client pod on one node and a server pod
//! on another, for four datapaths built side by side and measured in turn:
//!
//! - `ciliate-tunnel`, `ciliate-native`: a fresh two-node lab each
//!   (`ciliate_lab`: real agents, etcd, operator, the CNI plugin), in
//!   `routingMode: tunnel` (VXLAN) and `native`;
//! - `kernel`: the same topology with plain kernel routing, no BPF;
//! - `flannel`: the same with flannel-style kernel VXLAN, no BPF
//!   (see `kernel_net.rs`).
//!
//! Three tests per datapath: one iperf3 stream (throughput), 1-byte
//! request/response on one connection (TCP_RR-style) and
//! connect-request-close (TCP_CRR-style), the latter two with `load.rs`.
//! Rounds interleave the datapaths (the order rotates every round) so the
//! machine's swings spread over all of them; ratios are medians of the
//! per-round ratios against the kernel (and flannel) of the same round.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ciliate_lab::{LabGuard, LabSpec, RoutingMode};
use serde::Serialize;

use crate::goals::Goal;
use crate::kernel_net::{Baseline, KernelNet};
use crate::load::{self, LoadSpec, Mode};
use crate::services::CpuMode;
use crate::stats::{median, Spread};
use crate::{interrupt, iperf};

/// The echo server's port in the server pod.
const ECHO_PORT: u16 = 8080;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    CiliateTunnel,
    CiliateNative,
    Kernel,
    Flannel,
}

impl Config {
    pub const ALL: [Config; 4] = [
        Config::Kernel,
        Config::CiliateNative,
        Config::Flannel,
        Config::CiliateTunnel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CiliateTunnel => "ciliate-tunnel",
            Self::CiliateNative => "ciliate-native",
            Self::Kernel => "kernel",
            Self::Flannel => "flannel",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Test {
    Throughput,
    Rr,
    Crr,
}

impl Test {
    pub const ALL: [Test; 3] = [Test::Throughput, Test::Rr, Test::Crr];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::Rr => "TCP_RR",
            Self::Crr => "TCP_CRR",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::Throughput => "Gbit/s",
            Self::Rr => "trans/s",
            Self::Crr => "conn/s",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub configs: Vec<Config>,
    pub seconds: f64,
    pub rounds: usize,
    pub cpus: CpuMode,
    pub timeout_ms: u64,
    /// Where ciliate-agent, ciliate-cni and ciliate-operator are (None: the lab looks).
    #[serde(skip)]
    pub bin_dir: Option<PathBuf>,
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        if self.configs.is_empty() {
            anyhow::bail!("--configs: empty; give one or more of kernel, flannel, ciliate-native, ciliate-tunnel");
        }
        if !(self.seconds.is_finite() && self.seconds >= 1.0 && self.seconds <= 600.0) {
            anyhow::bail!(
                "--p2p-seconds: {} is not allowed: give 1 <= seconds <= 600 (iperf3 counts whole seconds)",
                self.seconds
            );
        }
        if self.rounds == 0 || self.rounds > 50 {
            anyhow::bail!("--p2p-rounds: {} is not allowed: give 1..=50", self.rounds);
        }
        Ok(())
    }
}

/// One measurement of one test on one datapath.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub round: usize,
    /// In the test's unit; None when it failed.
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
    /// Failed connections during the run (load tool), if any.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub config: Config,
    pub test: Test,
    pub unit: &'static str,
    pub spread: Option<Spread>,
    /// Median of this/kernel over the rounds (same round, same test).
    pub vs_kernel: Option<f64>,
    /// Median of this/flannel over the rounds.
    pub vs_flannel: Option<f64>,
    pub rounds: Vec<Measurement>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: Options,
    pub rows: Vec<Row>,
    pub setup_seconds: f64,
    pub total_seconds: f64,
}

/// What a datapath's two pods run on; dropped servers first, then the network.
struct Bed {
    config: Config,
    client: PathBuf,
    server_ip: Ipv4Addr,
    _iperf: iperf::Server,
    _echo: load::Server,
    _net: Net,
}

/// Held only to be dropped: dropping takes the lab or the namespaces down.
#[allow(dead_code)]
enum Net {
    Lab(Box<LabGuard>),
    Kernel(Box<KernelNet>),
}

const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {nodeName: node0, containers: [{name: c, image: none}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: server}}
spec: {nodeName: node1, containers: [{name: s, image: none}]}
";

fn lab_name(config: Config) -> String {
    let tag = if config == Config::CiliateTunnel {
        't'
    } else {
        'n'
    };
    // Lab names: lowercase letters and digits, at most 20.
    format!("xb{tag}{}", std::process::id())
}

impl Bed {
    fn build(config: Config, opts: &Options) -> Result<Self> {
        let (net, client, server, server_ip) = match config {
            Config::Kernel | Config::Flannel => {
                let baseline = if config == Config::Kernel {
                    Baseline::Kernel
                } else {
                    Baseline::Flannel
                };
                let net = KernelNet::build(baseline)?;
                let client = net.nodes[0].pod.path();
                let server = net.nodes[1].pod.path();
                let ip = net.nodes[1].pod_ip;
                (Net::Kernel(Box::new(net)), client, server, ip)
            }
            Config::CiliateTunnel | Config::CiliateNative => {
                let mut spec = LabSpec::new(lab_name(config), 2);
                spec.routing = if config == Config::CiliateTunnel {
                    RoutingMode::Tunnel
                } else {
                    RoutingMode::Native
                };
                spec.bin_dir.clone_from(&opts.bin_dir);
                let mut lab = LabGuard::up(&spec)
                    .with_context(|| format!("bringing up the {} lab", config.as_str()))?;
                lab.apply_yaml(PODS)
                    .context("creating the client and server pods")?;
                let client = lab.pod("client")?.netns_path.clone();
                let server = lab.pod("server")?;
                let (server_path, ip) = (server.netns_path.clone(), server.ip);
                ciliate_lab::sys::sysctls_in(
                    &client,
                    &[
                        ("net.ipv4.tcp_tw_reuse", "1"),
                        ("net.ipv4.ip_local_port_range", "1024 65535"),
                    ],
                )?;
                (Net::Lab(Box::new(lab)), client, server_path, ip)
            }
        };
        let echo = load::Server::start(
            &server,
            SocketAddrV4::new(server_ip, ECHO_PORT),
            1,
            opts.cpus.server_cpu(),
        )?;
        let iperf = iperf::Server::start(&server, server_ip, opts.cpus.server_cpu())?;
        let bed = Self {
            config,
            client,
            server_ip,
            _iperf: iperf,
            _echo: echo,
            _net: net,
        };
        let probe = load::probe(&bed.client, bed.echo_addr(), Duration::from_secs(2))?;
        if let Err(e) = probe {
            anyhow::bail!(
                "{}: the client pod cannot reach the server pod: {e}",
                config.as_str()
            );
        }
        Ok(bed)
    }

    fn echo_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.server_ip, ECHO_PORT)
    }

    fn measure(&self, test: Test, round: usize, opts: &Options) -> Measurement {
        let mut m = Measurement {
            round,
            value: None,
            p50_us: None,
            p99_us: None,
            retransmits: None,
            errors: 0,
            error: None,
        };
        match test {
            Test::Throughput => {
                match iperf::run(
                    &self.client,
                    self.server_ip,
                    opts.seconds,
                    opts.cpus.client_cpu(),
                ) {
                    Ok(t) => {
                        m.value = Some(t.bits_per_second / 1e9);
                        m.retransmits = Some(t.retransmits);
                    }
                    Err(e) => m.error = Some(format!("{e:#}")),
                }
            }
            Test::Rr | Test::Crr => {
                let spec = LoadSpec {
                    mode: if test == Test::Rr {
                        Mode::Rr
                    } else {
                        Mode::Crr
                    },
                    netns: self.client.clone(),
                    target: self.echo_addr(),
                    concurrency: 1,
                    duration: Duration::from_secs_f64(opts.seconds),
                    timeout: Duration::from_millis(opts.timeout_ms),
                    cpu: opts.cpus.client_cpu(),
                };
                match load::run(&spec) {
                    Ok(s) => {
                        m.value = Some(s.rate_per_s);
                        m.p50_us = Some(s.p50_us);
                        m.p99_us = Some(s.p99_us);
                        m.errors = s.errors;
                        m.error = s.first_error;
                    }
                    Err(e) => m.error = Some(format!("{e:#}")),
                }
            }
        }
        m
    }
}

/// Median over rounds of `row / base` for the rounds both measured.
fn pair_ratio(row: &[Measurement], base: &[Measurement]) -> Option<f64> {
    let mut ratios: Vec<f64> = row
        .iter()
        .filter_map(|m| {
            let b = base.iter().find(|b| b.round == m.round)?.value?;
            Some(m.value? / b)
        })
        .filter(|r| r.is_finite())
        .collect();
    median(&mut ratios)
}

pub fn rows(measured: &[(Config, Test, Vec<Measurement>)]) -> Vec<Row> {
    let find = |c: Config, t: Test| {
        measured
            .iter()
            .find(|(mc, mt, _)| *mc == c && *mt == t)
            .map(|(_, _, m)| m)
    };
    measured
        .iter()
        .map(|(config, test, rounds)| {
            let values: Vec<f64> = rounds.iter().filter_map(|m| m.value).collect();
            Row {
                config: *config,
                test: *test,
                unit: test.unit(),
                spread: Spread::of(&values),
                vs_kernel: find(Config::Kernel, *test).and_then(|b| pair_ratio(rounds, b)),
                vs_flannel: find(Config::Flannel, *test).and_then(|b| pair_ratio(rounds, b)),
                rounds: rounds.clone(),
            }
        })
        .collect()
}

/// Runs every configuration and test, interleaved, for `opts.rounds` rounds.
pub fn run(opts: &Options) -> Result<Report> {
    opts.validate()?;
    let started = std::time::Instant::now();
    let mut beds = Vec::new();
    for &config in &opts.configs {
        interrupt::check()?;
        eprintln!("pod-to-pod: setting up {}", config.as_str());
        beds.push(Bed::build(config, opts)?);
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    let mut measured: Vec<(Config, Test, Vec<Measurement>)> = beds
        .iter()
        .flat_map(|b| Test::ALL.map(|t| (b.config, t, Vec::new())))
        .collect();
    for round in 0..opts.rounds {
        for test in Test::ALL {
            // Rotate who goes first, so no datapath always follows the same one.
            for i in 0..beds.len() {
                interrupt::check()?;
                let bed = &beds[(i + round) % beds.len()];
                let m = bed.measure(test, round, opts);
                eprintln!(
                    "  round {} {} {}: {}",
                    round + 1,
                    bed.config.as_str(),
                    test.as_str(),
                    m.value.map_or_else(
                        || m.error.clone().unwrap_or_default(),
                        |v| format!("{v:.2} {}", test.unit())
                    )
                );
                if let Some((_, _, list)) = measured
                    .iter_mut()
                    .find(|(c, t, _)| *c == bed.config && *t == test)
                {
                    list.push(m);
                }
            }
        }
    }
    drop(beds);
    Ok(Report {
        options: opts.clone(),
        rows: rows(&measured),
        setup_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

fn find(report: &Report, config: Config, test: Test) -> Option<&Row> {
    report
        .rows
        .iter()
        .find(|r| r.config == config && r.test == test)
}

/// The pod-to-pod goals.
pub fn goals(report: &Report) -> Vec<Goal> {
    let native = |t| find(report, Config::CiliateNative, t).and_then(|r| r.vs_kernel);
    let tunnel = |t| find(report, Config::CiliateTunnel, t).and_then(|r| r.vs_flannel);
    let mut goals = vec![
        Goal::at_least(
            "ciliate native / kernel, TCP_RR",
            native(Test::Rr),
            0.97,
            "x",
        ),
        Goal::at_least(
            "ciliate native / kernel, throughput",
            native(Test::Throughput),
            0.99,
            "x",
        ),
    ];
    for test in Test::ALL {
        goals.push(Goal::at_least(
            format!("ciliate tunnel / flannel, {}", test.as_str()),
            tunnel(test),
            1.0,
            "x",
        ));
    }
    goals
}

/// The table: one line per datapath and test.
pub fn markdown(report: &Report) -> String {
    let o = &report.options;
    let mut md = format!(
        "## Pod to pod across nodes\n\n{} rounds of {} s per test, datapaths interleaved \
         (order rotating); TCP_RR and TCP_CRR with 1 client loop and 1-byte messages; \
         throughput is one iperf3 stream; {}. Median [min - max] over rounds; \
         ratios are medians of per-round ratios against the same round's kernel / flannel. \
         Setup {:.0} s, whole section {:.0} s.\n\n",
        o.rounds,
        o.seconds,
        o.cpus.describe(),
        report.setup_seconds,
        report.total_seconds
    );
    md.push_str(
        "| datapath | test | median | [min - max] | p50 / p99 µs | vs kernel | vs flannel |\n",
    );
    md.push_str("|---|---|---:|---|---:|---:|---:|\n");
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.3}"));
    let mut notes = Vec::new();
    for test in Test::ALL {
        for row in report.rows.iter().filter(|r| r.test == test) {
            let decimals = usize::from(test == Test::Throughput) * 2;
            let (med, range) = row.spread.map_or_else(
                || ("failed".to_string(), String::new()),
                |s| {
                    (
                        format!("{:.decimals$} {}", s.median, row.unit),
                        format!("[{:.decimals$} - {:.decimals$}]", s.min, s.max),
                    )
                },
            );
            let mut p50: Vec<f64> = row.rounds.iter().filter_map(|m| m.p50_us).collect();
            let mut p99: Vec<f64> = row.rounds.iter().filter_map(|m| m.p99_us).collect();
            let lat = match (median(&mut p50), median(&mut p99)) {
                (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {med} | {range} | {lat} | {} | {} |",
                row.config.as_str(),
                test.as_str(),
                ratio(row.vs_kernel),
                ratio(row.vs_flannel)
            );
            for m in &row.rounds {
                if let Some(e) = &m.error {
                    notes.push(format!(
                        "{} {} round {}: {e}",
                        row.config.as_str(),
                        test.as_str(),
                        m.round + 1
                    ));
                }
            }
        }
    }
    notes.dedup();
    for note in notes.iter().take(10) {
        let _ = write!(md, "\n- {note}");
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(round: usize, value: Option<f64>) -> Measurement {
        Measurement {
            round,
            value,
            p50_us: None,
            p99_us: None,
            retransmits: None,
            errors: 0,
            error: None,
        }
    }

    #[test]
    fn ratios_pair_rounds_and_skip_failures() {
        let rows = rows(&[
            (
                Config::Kernel,
                Test::Rr,
                vec![m(0, Some(100.0)), m(1, Some(200.0)), m(2, Some(50.0))],
            ),
            (
                Config::CiliateNative,
                Test::Rr,
                vec![m(0, Some(90.0)), m(1, Some(210.0)), m(2, None)],
            ),
        ]);
        let native = &rows[1];
        // Pairs 0.9 and 1.05 (round 2 failed): median 0.975.
        assert!((native.vs_kernel.unwrap() - 0.975).abs() < 1e-9);
        assert_eq!(native.vs_flannel, None);
        assert!((native.spread.unwrap().median - 150.0).abs() < 1e-9);
        assert_eq!(rows[0].vs_kernel, Some(1.0));
    }
}
