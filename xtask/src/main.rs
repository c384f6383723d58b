//! `cargo xtask ...` (alias in .cargo/config.toml).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::iptables::Backend;
use xtask::services::{self, CpuMode, Options};

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
    }
    Ok(())
}
