//! `ciliate-operator`: one per cluster. Gives nodes their PodCIDRs (cluster-pool IPAM).

use std::path::PathBuf;

use anyhow::Context;
use ciliate_operator::config::{Config, Overrides};
use ciliate_operator::controller;
use ciliate_store::{report, EtcdBackend, EtcdConfig, Store};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "ciliate-operator",
    version,
    about = "The ciliate operator: PodCIDRs for nodes from the cluster pool"
)]
struct Args {
    /// YAML configuration file (keys: etcd.endpoints, clusterPoolIPv4PodCIDRList,
    /// clusterPoolIPv4MaskSize, debug).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ciliate-operator: invalid configuration: {}", report(&e));
            return std::process::ExitCode::from(2);
        }
    };
    let default_level = if config.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(config)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr, whatever the log filter says.
            eprintln!("ciliate-operator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let allocator = config.allocator();
    info!(
        pools = ?config.pools.iter().map(ToString::to_string).collect::<Vec<_>>(),
        mask = config.mask_size,
        capacity = allocator.capacity(),
        etcd = %config.etcd_endpoints.join(","),
        "starting"
    );
    // Lazy: an etcd that is not there yet is waited for (the watch retries), not fatal.
    let backend = EtcdBackend::connect_lazy(EtcdConfig {
        endpoints: config.etcd_endpoints.clone(),
        ..EtcdConfig::default()
    })
    .await
    .context("setting up the etcd client")?;
    if let Err(e) = backend.check().await {
        warn!(error = %report(&e), "etcd is not reachable yet; retrying until it is");
    }
    controller::run(Store::new(backend), allocator, shutdown).await;
    Ok(())
}
