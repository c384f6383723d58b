//! `cargo xtask bench services`: connect-request-close rate and latency to a
//! ClusterIP with N services programmed, for ciliate and for kube-proxy-style
//! iptables rules, in one run.
//!
//! Both mechanisms get their own copy of the same topology (see
//! `topology.rs`) and the same services. For each N, each target (the pod
//! directly, the service programmed last, a random one) is measured for both
//! mechanisms back to back, alternating which goes first, for `rounds`
//! rounds; ratios are taken per pair, as the machine's load swings absolute
//! figures far more than it swings a pair.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ciliate_datapath::testing::unique;
use serde::Serialize;

use crate::catalog::{self, Service, MAX_SERVICES};
use crate::iptables::Backend;
use crate::load::{self, LoadSpec, Sample, Server};
use crate::stats::median;
use crate::topology::{flush_conntrack, Kind, Topology};
use crate::{ciliate, interrupt, report};

/// How client and server threads are placed on CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMode {
    /// Client threads on CPU 0, server threads on CPU 1.
    Split,
    /// Both on CPU 0.
    Same,
    /// Wherever the scheduler puts them.
    Free,
}

impl CpuMode {
    /// The CPU client threads are pinned to (None: not pinned).
    pub fn client_cpu(self) -> Option<usize> {
        match self {
            CpuMode::Free => None,
            CpuMode::Split | CpuMode::Same => Some(0),
        }
    }

    /// The CPU server threads are pinned to; Split falls back to CPU 0 on a
    /// one-CPU machine.
    pub fn server_cpu(self) -> Option<usize> {
        match self {
            CpuMode::Free => None,
            CpuMode::Same => Some(0),
            CpuMode::Split => Some(usize::from(cpu_count() > 1)),
        }
    }

    /// For the reports.
    pub fn describe(self) -> &'static str {
        match self {
            CpuMode::Split => "client threads on CPU 0, server threads on CPU 1",
            CpuMode::Same => "client and server threads on CPU 0",
            CpuMode::Free => "threads placed by the scheduler",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub counts: Vec<usize>,
    pub seconds: f64,
    pub rounds: usize,
    pub concurrency: usize,
    pub iptables: Backend,
    pub cpus: CpuMode,
    pub seed: u64,
    #[serde(skip)]
    pub out: PathBuf,
    /// Connect/read timeout of one connection, also the reachability probe's.
    pub timeout_ms: u64,
}

impl Options {
    /// Checks every value; the error names the option, the value and what is allowed.
    pub fn validate(&self) -> Result<()> {
        if self.counts.is_empty() {
            anyhow::bail!("--counts: empty; give one or more service counts, e.g. 1,1000");
        }
        for &count in &self.counts {
            if count == 0 || count > MAX_SERVICES {
                anyhow::bail!(
                    "--counts: {count} is not allowed: each count must be 1..={MAX_SERVICES}"
                );
            }
        }
        if !(self.seconds.is_finite() && self.seconds > 0.0 && self.seconds <= 3600.0) {
            anyhow::bail!(
                "--seconds: {} is not allowed: give 0 < seconds <= 3600",
                self.seconds
            );
        }
        if self.rounds == 0 || self.rounds > 100 {
            anyhow::bail!("--rounds: {} is not allowed: give 1..=100", self.rounds);
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            anyhow::bail!(
                "--concurrency: {} is not allowed: give 1..=256",
                self.concurrency
            );
        }
        Ok(())
    }
}

/// What a connection is aimed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The server pod's own address: the path without any service.
    PodToPod,
    /// The ClusterIP of the service programmed last (iptables' worst case).
    Last,
    /// The ClusterIP of a random service (the same one for both mechanisms).
    Random,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::PodToPod, Target::Last, Target::Random];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodToPod => "pod-to-pod",
            Self::Last => "last",
            Self::Random => "random",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    Iptables,
    Ciliate,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Ciliate => "ciliate",
        }
    }
}

/// One measurement, or why there is none.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    /// `ok`, or `unreachable` when one exchange failed before the run.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub sample: Option<Sample>,
}

/// One (mechanism, N, target) over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mechanism: Mechanism,
    pub services: usize,
    pub target: Target,
    /// The address connected to.
    pub address: String,
    /// Which service (0-based, in programming order) the address belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_index: Option<usize>,
    /// `ok` when every round measured; `unreachable` when none could.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Medians over the measured rounds.
    pub rate_per_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub errors: u64,
    /// This rate over the same mechanism's and target's rate at the smallest N.
    pub vs_smallest_n: Option<f64>,
    /// ciliate rows: the median of ciliate/iptables over the rounds' pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_iptables: Option<f64>,
    pub rounds: Vec<Round>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Programming {
    pub mechanism: Mechanism,
    pub services: usize,
    pub seconds: f64,
    /// What was written: iptables rules, or BPF map entries.
    pub entries: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub benchmark: &'static str,
    pub kernel: String,
    pub cpus: usize,
    pub iptables_version: String,
    pub options: Options,
    pub programming: Vec<Programming>,
    pub rows: Vec<Row>,
    pub total_seconds: f64,
}

/// A mechanism's topology, server and (for ciliate) datapath.
struct Bed {
    mechanism: Mechanism,
    // Dropped in order: server threads, datapath, then the namespaces.
    _server: Server,
    datapath: Option<ciliate::Node>,
    topo: Topology,
}

impl Bed {
    fn build(mechanism: Mechanism, opts: &Options) -> Result<Self> {
        let (tag, kind) = match mechanism {
            Mechanism::Iptables => ("xbi", Kind::Kernel),
            Mechanism::Ciliate => ("xbc", Kind::Ciliate),
        };
        let topo = Topology::build(&unique(tag), kind)?;
        let datapath = match mechanism {
            Mechanism::Iptables => None,
            Mechanism::Ciliate => Some(ciliate::Node::load(&topo)?),
        };
        let server = Server::start(
            &topo.server.path(),
            SocketAddrV4::new(catalog::SERVER_IP, catalog::TARGET_PORT),
            opts.concurrency,
            opts.cpus.server_cpu(),
        )?;
        Ok(Self {
            mechanism,
            _server: server,
            datapath,
            topo,
        })
    }

    /// Writes `services`; returns (seconds, entries written).
    fn program(&mut self, opts: &Options, services: &[Service]) -> Result<(f64, usize)> {
        match &mut self.datapath {
            None => {
                let took = crate::iptables::program(self.topo.node.name(), opts.iptables, services)
                    .with_context(|| {
                        format!("loading {} services as iptables rules", services.len())
                    })?;
                // KUBE-SERVICES + KUBE-SVC (2) + KUBE-SEP (2) per service.
                Ok((took.as_secs_f64(), services.len() * 5))
            }
            Some(node) => {
                let took = node.program(services).with_context(|| {
                    format!("writing {} services into the maps", services.len())
                })?;
                // slot 0, slot 1, reverse NAT per service; one shared backend.
                Ok((took.as_secs_f64(), services.len() * 3 + 1))
            }
        }
    }

    fn flush_conntrack(&mut self) -> Result<()> {
        match &mut self.datapath {
            None => flush_conntrack(&self.topo.node.path()),
            Some(node) => node.flush_conntrack().map(drop),
        }
    }

    fn measure(&mut self, opts: &Options, target: SocketAddrV4) -> Result<Round> {
        self.flush_conntrack()
            .with_context(|| format!("flushing {}'s conntrack", self.mechanism.as_str()))?;
        let client = self.topo.client.path();
        let timeout = Duration::from_millis(opts.timeout_ms);
        if let Err(mut error) = load::probe(&client, target, timeout)? {
            if let Some(node) = &self.datapath {
                if node.conntrack_entries() == 0 {
                    // Say where it stopped: a translated connection leaves entries.
                    error.push_str(
                        "; ciliate's datapath made no conntrack entry for it \
                         (no BPF service translation in this build?)",
                    );
                }
            }
            return Ok(Round {
                status: "unreachable",
                error: Some(error),
                sample: None,
            });
        }
        let sample = load::run(&LoadSpec {
            mode: load::Mode::Crr,
            netns: client,
            target,
            concurrency: opts.concurrency,
            duration: Duration::from_secs_f64(opts.seconds),
            timeout,
            cpu: opts.cpus.client_cpu(),
        })?;
        Ok(Round {
            status: "ok",
            error: None,
            sample: Some(sample),
        })
    }
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// A small deterministic generator (splitmix64): the random service is
/// reproducible from the seed in the report.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn row(
    mechanism: Mechanism,
    services: usize,
    target: Target,
    address: SocketAddrV4,
    service_index: Option<usize>,
    rounds: Vec<Round>,
) -> Row {
    let measured: Vec<&Sample> = rounds.iter().filter_map(|r| r.sample.as_ref()).collect();
    let pick =
        |f: fn(&Sample) -> f64| median(&mut measured.iter().map(|s| f(s)).collect::<Vec<_>>());
    let status = if measured.len() == rounds.len() {
        "ok"
    } else if measured.is_empty() {
        "unreachable"
    } else {
        "partly unreachable"
    };
    Row {
        mechanism,
        services,
        target,
        address: address.to_string(),
        service_index,
        status,
        error: rounds.iter().find_map(|r| r.error.clone()),
        rate_per_s: pick(|s| s.rate_per_s),
        p50_us: pick(|s| s.p50_us),
        p99_us: pick(|s| s.p99_us),
        errors: measured.iter().map(|s| s.errors).sum(),
        vs_smallest_n: None,
        vs_iptables: None,
        rounds,
    }
}

/// Fills the ratios once every row is in.
fn add_ratios(rows: &mut [Row], smallest: usize) {
    let snapshot = rows.to_vec();
    let find = |m: Mechanism, n: usize, t: Target| {
        snapshot
            .iter()
            .find(|r| r.mechanism == m && r.services == n && r.target == t)
    };
    for row in rows.iter_mut() {
        if let (Some(rate), Some(base)) = (
            row.rate_per_s,
            find(row.mechanism, smallest, row.target).and_then(|r| r.rate_per_s),
        ) {
            row.vs_smallest_n = Some(rate / base);
        }
        if row.mechanism == Mechanism::Ciliate {
            if let Some(ipt) = find(Mechanism::Iptables, row.services, row.target) {
                let mut pairs: Vec<f64> = row
                    .rounds
                    .iter()
                    .zip(&ipt.rounds)
                    .filter_map(|(c, i)| {
                        Some(c.sample.as_ref()?.rate_per_s / i.sample.as_ref()?.rate_per_s)
                    })
                    .filter(|r| r.is_finite())
                    .collect();
                row.vs_iptables = median(&mut pairs);
            }
        }
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname().map_or_else(
        |_| "unknown".to_string(),
        |u| u.release().to_string_lossy().into_owned(),
    )
}

/// Runs the benchmark and writes `services.json` and `services.md` to `opts.out`.
pub fn run(opts: &Options) -> Result<Report> {
    opts.validate()?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("the services benchmark needs root (network namespaces, iptables, BPF)");
    }
    interrupt::install()?;
    let started = std::time::Instant::now();
    let iptables_version = opts.iptables.version()?;
    let mut counts = opts.counts.clone();
    counts.sort_unstable();
    counts.dedup();
    let smallest = counts[0];

    eprintln!(
        "setting up: two nodes with a client and a server pod each (iptables: {iptables_version})"
    );
    let mut beds = [
        Bed::build(Mechanism::Iptables, opts)?,
        Bed::build(Mechanism::Ciliate, opts)?,
    ];
    let mut rng = opts.seed;
    let mut programming = Vec::new();
    let mut rows = Vec::new();
    for &count in &counts {
        interrupt::check()?;
        let services = catalog::services(count);
        for bed in &mut beds {
            eprintln!("programming {count} services: {}", bed.mechanism.as_str());
            let (seconds, entries) = bed.program(opts, &services)?;
            eprintln!("  took {seconds:.2} s");
            programming.push(Programming {
                mechanism: bed.mechanism,
                services: count,
                seconds,
                entries,
            });
        }
        let random = (splitmix(&mut rng) % count as u64) as usize;
        let aims = Target::ALL.map(|target| match target {
            Target::PodToPod => (target, services[0].backend, None),
            Target::Last => (target, services[count - 1].frontend(), Some(count - 1)),
            Target::Random => (target, services[random].frontend(), Some(random)),
        });
        let mut rounds: Vec<[Vec<Round>; 2]> =
            aims.iter().map(|_| [Vec::new(), Vec::new()]).collect();
        for round in 0..opts.rounds {
            for (aim, (target, address, _)) in aims.iter().enumerate() {
                // Alternate which mechanism goes first, so neither always
                // inherits the other's leftovers (caches, timers, TIME_WAIT).
                let order = if (round + aim) % 2 == 0 {
                    [0, 1]
                } else {
                    [1, 0]
                };
                for b in order {
                    interrupt::check()?;
                    let bed = &mut beds[b];
                    let result = bed.measure(opts, *address)?;
                    eprintln!(
                        "  N={count} {} {} round {}: {}",
                        target.as_str(),
                        bed.mechanism.as_str(),
                        round + 1,
                        report::describe_round(&result)
                    );
                    rounds[aim][b].push(result);
                }
            }
        }
        for ((target, address, index), [ipt, cil]) in aims.into_iter().zip(rounds) {
            rows.push(row(Mechanism::Iptables, count, target, address, index, ipt));
            rows.push(row(Mechanism::Ciliate, count, target, address, index, cil));
        }
    }
    add_ratios(&mut rows, smallest);
    let report = Report {
        benchmark: "services",
        kernel: kernel_release(),
        cpus: cpu_count(),
        iptables_version,
        options: opts.clone(),
        programming,
        rows,
        total_seconds: 0.0,
    };
    // The beds (namespaces, rules, datapath) go before the report is written.
    drop(beds);
    let report = Report {
        total_seconds: started.elapsed().as_secs_f64(),
        ..report
    };
    report::write(&report, &opts.out)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(rate: f64) -> Round {
        Round {
            status: "ok",
            error: None,
            sample: Some(Sample {
                rate_per_s: rate,
                ..Sample::default()
            }),
        }
    }

    fn unreachable() -> Round {
        Round {
            status: "unreachable",
            error: Some("10.96.0.1:80: no answer".into()),
            sample: None,
        }
    }

    #[test]
    fn ratios_compare_pairs_and_the_smallest_count() {
        let addr = SocketAddrV4::new(catalog::SERVER_IP, 80);
        let mut rows = vec![
            row(
                Mechanism::Iptables,
                1,
                Target::Last,
                addr,
                None,
                vec![sampled(100.0), sampled(200.0)],
            ),
            row(
                Mechanism::Ciliate,
                1,
                Target::Last,
                addr,
                None,
                vec![sampled(110.0), sampled(180.0)],
            ),
            row(
                Mechanism::Iptables,
                10,
                Target::Last,
                addr,
                None,
                vec![sampled(50.0), sampled(100.0)],
            ),
            row(
                Mechanism::Ciliate,
                10,
                Target::Last,
                addr,
                None,
                vec![unreachable(), unreachable()],
            ),
        ];
        add_ratios(&mut rows, 1);
        assert_eq!(rows[0].rate_per_s, Some(150.0));
        assert_eq!(rows[0].vs_smallest_n, Some(1.0));
        assert_eq!(rows[2].vs_smallest_n, Some(0.5));
        // Pairs 1.1 and 0.9: median 1.0, not 145/150.
        assert!((rows[1].vs_iptables.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(rows[3].status, "unreachable");
        assert_eq!(rows[3].rate_per_s, None);
        assert_eq!(rows[3].vs_iptables, None);
        assert!(rows[3].error.as_deref().unwrap().contains("no answer"));
    }

    #[test]
    fn bad_options_name_the_option() {
        let good = Options {
            counts: vec![1],
            seconds: 1.0,
            rounds: 1,
            concurrency: 1,
            iptables: Backend::Nft,
            cpus: CpuMode::Split,
            seed: 1,
            out: PathBuf::new(),
            timeout_ms: 1000,
        };
        good.validate().unwrap();
        for (opts, name) in [
            (
                Options {
                    counts: vec![0],
                    ..good.clone()
                },
                "--counts",
            ),
            (
                Options {
                    counts: vec![],
                    ..good.clone()
                },
                "--counts",
            ),
            (
                Options {
                    seconds: 0.0,
                    ..good.clone()
                },
                "--seconds",
            ),
            (
                Options {
                    rounds: 0,
                    ..good.clone()
                },
                "--rounds",
            ),
            (
                Options {
                    concurrency: 0,
                    ..good.clone()
                },
                "--concurrency",
            ),
        ] {
            let err = opts.validate().unwrap_err().to_string();
            assert!(err.starts_with(name), "{err}");
        }
    }
}
