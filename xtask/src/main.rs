//! `cargo xtask ...` (alias in .cargo/config.toml).

#[path = "../launcher/src/bench_packages.rs"]
mod bench_packages;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use xtask::bench::{self, Section};
use xtask::iptables::Backend;
use xtask::pod_to_pod::Config;
use xtask::services::{self, CpuMode, Options};
use xtask::{control_plane, per_packet, pod_to_pod, vm};

#[derive(Parser)]
#[command(name = "xtask", about = "ciliate's repository tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks (run as root). Without a subcommand: every section, one
    /// report (target/bench/bench.json, bench.md, bench.svg).
    Bench {
        #[command(subcommand)]
        bench: Option<Bench>,
        #[command(flatten)]
        all: AllArgs,
    },
    /// The suites that need a newer kernel (ipvlan, geneve, netkit, the 6.12
    /// verifier), in one QEMU boot of a pinned Debian kernel; as root.
    /// Arguments after `--` go to every test executable (test name filters).
    VmTest {
        /// Where the private apt state and the unpacked kernel are kept.
        #[arg(long, env = "CILIATE_VM_CACHE", default_value = vm::DEFAULT_CACHE)]
        cache: PathBuf,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 3072)]
        memory: u32,
        /// Seconds until QEMU is killed and the run fails.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Seconds for the guest to reach its suites before it is booted again.
        #[arg(long, default_value_t = 120)]
        boot_timeout: u64,
        /// Run only these suites (PACKAGE:TEST_TARGET, repeatable or comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Added to the guest kernel's command line (repeatable), e.g. loglevel=7.
        #[arg(long = "kernel-arg")]
        kernel_args: Vec<String>,
        /// Passed to every test executable after --test-threads=1.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
}

/// The sizes of every section of `cargo xtask bench` (also accepted after
/// a section's subcommand).
#[derive(Args, Clone)]
struct AllArgs {
    /// Sections to run (default: all).
    #[arg(long, global = true, value_delimiter = ',', value_enum)]
    sections: Vec<Section>,
    /// Pod to pod: datapaths to compare.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_enum,
        default_value = "kernel,ciliate-native,flannel,ciliate-tunnel"
    )]
    configs: Vec<Config>,
    /// Pod to pod: seconds per test and datapath. Many short rounds rather
    /// than a few long ones: on a shared machine one iperf3 stream ranges
    /// from 1 to 22 Gbit/s between rounds, and a median needs rounds.
    #[arg(long, global = true, default_value_t = 3.0)]
    p2p_seconds: f64,
    /// Pod to pod: rounds (every datapath and test once per round).
    #[arg(long, global = true, default_value_t = 5)]
    p2p_rounds: usize,
    /// Services: counts (the services subcommand has its own flags).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "1,1000,10000,100000"
    )]
    service_counts: Vec<usize>,
    /// Services: seconds per measurement (3 rather than 5 takes about 1.5
    /// minutes off the whole run).
    #[arg(long, global = true, default_value_t = 3.0)]
    svc_seconds: f64,
    /// Services: rounds per target (both mechanisms each round).
    #[arg(long, global = true, default_value_t = 2)]
    svc_rounds: usize,
    /// Per packet: single calls per figure.
    #[arg(long, global = true, default_value_t = 2000)]
    packets: u32,
    /// Per packet: `repeat` of the repeated call.
    #[arg(long, global = true, default_value_t = 100_000)]
    repeat: u32,
    /// Control plane: endpoints (pods) made through CNI ADD.
    #[arg(long, global = true, default_value_t = 1000)]
    endpoints: usize,
    /// Control plane: pods made and removed through containerd's CRI (0: skip).
    #[arg(long, global = true, default_value_t = 100)]
    cri_pods: usize,
    /// Control plane: services written to the store.
    #[arg(long, global = true, default_value_t = 100_000)]
    cp_services: usize,
    /// Control plane: seconds the agent may take to program them.
    #[arg(long, global = true, default_value_t = 600)]
    program_timeout: u64,
    /// Where ciliate-agent, ciliate-cni and ciliate-operator are (default:
    /// built now with `cargo build --release`).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Output directory.
    #[arg(long = "bench-out", global = true, default_value = DEFAULT_OUT)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Bench {
    /// Pod to pod across nodes: iperf3, TCP_RR, TCP_CRR for ciliate tunnel and
    /// native, the kernel and flannel-style VXLAN.
    PodToPod,
    /// Per-packet cost of the main paths with BPF_PROG_TEST_RUN.
    PerPacket,
    /// CNI ADD/DEL latency, pods/s, agent RSS, time to program services.
    ControlPlane,
    /// Connect rate and latency to a ClusterIP with N services programmed:
    /// ciliate against kube-proxy-style iptables rules, in one run.
    Services {
        /// Service counts to measure at.
        #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
        counts: Vec<usize>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds per target; each round measures both mechanisms back to back.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Concurrent client loops (and server threads).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Which iptables backend kube-proxy's rules go through.
        #[arg(long, value_enum, default_value_t = Backend::Nft)]
        iptables: Backend,
        /// Where client and server threads run.
        #[arg(long, value_enum, default_value_t = CpuMode::Split)]
        cpus: CpuMode,
        /// Seed of the random service choice (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Connect/read timeout of one connection, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Output directory for services.json and services.md.
        #[arg(long, default_value = DEFAULT_OUT)]
        out: PathBuf,
    },
}

/// The workspace's target/bench, wherever cargo was run from.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");

/// Builds the binaries a lab runs, in this workspace's release profile, and
/// returns their directory (`--bin-dir` skips this). xtask is in the same
/// build so that cargo resolves the features the launcher's build did and
/// finds everything fresh (a different set of packages rebuilds shared crates).
fn lab_binaries(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    eprintln!(
        "building {} (release)",
        bench_packages::BENCH_PACKAGES.join(", ")
    );
    let mut build = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    build
        .current_dir(workspace)
        .args(["build", "--release", "-p", "xtask"]);
    for package in bench_packages::BENCH_PACKAGES {
        build.args(["-p", package]);
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        anyhow::bail!("cargo build of the lab's binaries failed ({status})");
    }
    // The workspace's target dir (CARGO_TARGET_DIR is honoured by cargo too).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(workspace).join("target"), PathBuf::from);
    Ok(target.join("release"))
}

fn run_sections(sections: Vec<Section>, a: AllArgs) -> Result<()> {
    let needs_lab = sections
        .iter()
        .any(|s| matches!(s, Section::PodToPod | Section::ControlPlane));
    let bin_dir = if needs_lab {
        Some(lab_binaries(a.bin_dir)?)
    } else {
        a.bin_dir
    };
    bench::run(&bench::Options {
        sections,
        out: a.out.clone(),
        pod_to_pod: pod_to_pod::Options {
            configs: a.configs,
            seconds: a.p2p_seconds,
            rounds: a.p2p_rounds,
            cpus: CpuMode::Split,
            timeout_ms: 1000,
            bin_dir: bin_dir.clone(),
        },
        services: Options {
            counts: a.service_counts,
            seconds: a.svc_seconds,
            rounds: a.svc_rounds,
            concurrency: 4,
            iptables: Backend::Nft,
            cpus: CpuMode::Split,
            seed: seed_or_clock(None),
            out: a.out,
            timeout_ms: 1000,
        },
        per_packet: per_packet::Options {
            packets: a.packets,
            repeat: a.repeat,
        },
        control_plane: control_plane::Options {
            endpoints: a.endpoints,
            services: a.cp_services,
            cri_pods: a.cri_pods,
            program_timeout_s: a.program_timeout,
            bin_dir,
        },
    })?;
    Ok(())
}

fn seed_or_clock(given: Option<u64>) -> u64 {
    given.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bench { bench: None, all } => {
            let sections = if all.sections.is_empty() {
                Section::ALL.to_vec()
            } else {
                all.sections.clone()
            };
            run_sections(sections, all)?;
        }
        Command::Bench {
            bench: Some(Bench::PodToPod),
            all,
        } => run_sections(vec![Section::PodToPod], all)?,
        Command::Bench {
            bench: Some(Bench::PerPacket),
            all,
        } => run_sections(vec![Section::PerPacket], all)?,
        Command::Bench {
            bench: Some(Bench::ControlPlane),
            all,
        } => run_sections(vec![Section::ControlPlane], all)?,
        Command::Bench {
            bench:
                Some(Bench::Services {
                    counts,
                    seconds,
                    rounds,
                    concurrency,
                    iptables,
                    cpus,
                    seed,
                    timeout_ms,
                    out,
                }),
            all: _,
        } => {
            let seed = seed_or_clock(seed);
            services::run(&Options {
                counts,
                seconds,
                rounds,
                concurrency,
                iptables,
                cpus,
                seed,
                out,
                timeout_ms,
            })?;
        }
        Command::VmTest {
            cache,
            memory,
            timeout,
            boot_timeout,
            only,
            kernel_args,
            test_args,
        } => {
            let passed = vm::run(&vm::Options {
                cache,
                memory_mib: memory,
                timeout: std::time::Duration::from_secs(timeout),
                boot_timeout: std::time::Duration::from_secs(boot_timeout),
                only,
                test_args,
                kernel_args,
            })?;
            if !passed {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
