//! `cargo xtask ...` (alias in .cargo/config.toml).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::iptables::Backend;
use xtask::services::{self, CpuMode, Options};
use xtask::vm;

#[derive(Parser)]
#[command(name = "xtask", about = "ciliate's repository tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks (run as root).
    Bench {
        #[command(subcommand)]
        bench: Bench,
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

#[derive(Subcommand)]
enum Bench {
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bench {
            bench:
                Bench::Services {
                    counts,
                    seconds,
                    rounds,
                    concurrency,
                    iptables,
                    cpus,
                    seed,
                    timeout_ms,
                    out,
                },
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
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
