//! `ciliate-agent`: one per node, as root, in the node's network namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ciliate_agent::config::{Config, Overrides};
use ciliate_agent::daemon::Daemon;
use ciliate_agent::server::{self, Api};
use ciliate_agent::{devices, monitor};
use ciliate_datapath::loader::Maps;
use ciliate_datapath::netlink::Netlink;
use clap::Parser;
use tokio::sync::{broadcast, watch};
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "ciliate-agent", version, about = "The ciliate per-node agent")]
struct Args {
    /// YAML configuration file (Cilium's Helm-style keys: nodeName, ipv4Range,
    /// bpf.root, routingMode, mtu, stateDir, socketPath, healthNetns, ...).
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
            eprintln!("ciliate-agent: invalid configuration: {e}");
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
        .init();
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("ciliate-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    info!(node = %config.node_name, cidr = %config.pod_cidr, router = %config.router_ip, "starting");
    // Device and datapath setup happen before the runtime starts, on this thread.
    let nl = Netlink::new().context("opening netlink")?;
    devices::ensure_host_devices(&nl, &config).context("setting up the host devices")?;
    let daemon = Arc::new(Daemon::start(config.clone())?);
    ciliate_agent::health::ensure(&daemon).context("setting up the health endpoint")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(daemon, config))
}

async fn serve(daemon: Arc<Daemon>, config: Config) -> anyhow::Result<()> {
    let (events, _) = broadcast::channel(monitor::LISTENER_BUFFER);
    let ring = Maps::open_events(&config.bpf_root).context("opening the event ring buffer")?;
    let monitor_task = tokio::spawn(monitor::run(ring, events.clone()));

    let socket = &config.socket_path;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", socket.display()))
        }
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    // Root-only: the API hands out addresses and rewires pods.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // The other nodes to probe; the node manager becomes this list's sender.
    let (_nodes_tx, nodes_rx) = watch::channel(Vec::new());
    let health = ciliate_agent::health::start(&config, nodes_rx, &stop_rx)
        .context("starting cluster health checking")?;
    let api = Api {
        daemon,
        events,
        stopping: stop_rx.clone(),
        health,
    };
    let mut stopped = stop_rx;
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    info!(socket = %socket.display(), "serving the local API");
    let server = tokio::spawn(server::run(listener, api, shutdown));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("stopping: pinned programs, maps and links stay, traffic keeps flowing");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    monitor_task.abort();
    let _ = std::fs::remove_file(socket);
    Ok(())
}
