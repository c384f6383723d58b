//! `ciliate-agent`: one per node, as root, in the node's network namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ciliate_agent::addressing::{NodeAddressing, PodNetwork};
use ciliate_agent::config::{Config, IpamMode, Overrides};
use ciliate_agent::daemon::Daemon;
use ciliate_agent::kvstore::{self, Cluster};
use ciliate_agent::server::{self, Api};
use ciliate_agent::{devices, ipmasq, iptables, monitor, nodes, services, state};
use ciliate_api::Node;
use ciliate_datapath::loader::Maps;
use ciliate_datapath::netlink::Netlink;
use ciliate_store::Store;
use clap::Parser;
use tokio::sync::{broadcast, watch};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "ciliate-agent", version, about = "The ciliate per-node agent")]
struct Args {
    /// YAML configuration file (Cilium's Helm-style keys: nodeName, ipam.mode,
    /// ipv4Range, etcd.endpoints, bpf.root, routingMode, devices, mtu, stateDir,
    /// socketPath, healthNetns, kubeProxyReplacement, nodePort.range,
    /// bpfCTTimeoutRegular*, conntrackGCInterval, enableIPv4Masquerade,
    /// bpf.masquerade, ipMasqAgent.*, ...).
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
    info!(node = %config.node_name, ipam = ?config.ipam_mode, routing = ?config.routing_mode, "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (stop_tx, stop_rx) = watch::channel(false);

    // Device and datapath setup happen on this thread, outside the runtime's
    // workers (netns switches must never happen on one).
    let nl = Netlink::new().context("opening netlink")?;
    let native = devices::resolve_native_device(&nl, &config)?;
    ciliate_agent::kernel_features::require(&nl, &config, native.as_ref())?;
    let saved = state::load(&config.state_dir).context("reading the saved state")?;
    let cluster = Cluster::new(
        Node {
            name: config.node_name.clone(),
            internal_ip: native.as_ref().map(|n| n.ip),
            ciliate_internal_ip: None,
            health_ip: None,
            pod_cidrs: Vec::new(),
            local: true,
        },
        &config.etcd_endpoints,
    );

    // The PodCIDR: ipv4Range (host-scope), else the one this node ran with
    // before (cluster-pool), else the operator's, once it assigns one.
    let known = match config.ipam_mode {
        IpamMode::ClusterPool => saved.pod_cidr.and_then(|cidr| {
            match PodNetwork::new(cidr, "the PodCIDR saved in stateDir") {
                Ok(pod) => Some(pod),
                Err(e) => {
                    warn!(error = %e, "ignoring the saved PodCIDR");
                    None
                }
            }
        }),
        _ => config
            .pod_cidr
            .map(|cidr| PodNetwork::new(cidr, "config key ipv4Range"))
            .transpose()?,
    };
    if let Some(pod) = known {
        if config.pod_cidr.is_none() {
            info!(cidr = %pod.cidr, "starting with the PodCIDR saved in stateDir");
        }
        set_pod_network(&cluster, pod);
        // The health endpoint the daemon is about to restore: registered
        // with it from the start, so other nodes keep probing it.
        let health_ip = saved
            .endpoints
            .values()
            .find(|e| e.health && pod.cidr.contains(&e.ip))
            .map(|e| e.ip);
        cluster
            .local
            .send_modify(|local| local.health_ip = health_ip);
    }
    let store = if config.has_store() {
        let store = runtime.block_on(kvstore::connect(&config.etcd_endpoints, &cluster));
        // Registered before the PodCIDR is known: that is how the operator
        // learns about the node. With a known CIDR it is pre-filled.
        runtime.spawn(kvstore::run_registration(
            store.clone(),
            cluster.clone(),
            config.etcd_endpoints.clone(),
            config.kvstore_lease_ttl,
            stop_rx.clone(),
        ));
        Some(store)
    } else {
        None
    };
    let pod = if let Some(pod) = known {
        pod
    } else {
        let pod = runtime.block_on(wait_for_pod_cidr(&cluster, &config))?;
        set_pod_network(&cluster, pod);
        pod
    };
    info!(cidr = %pod.cidr, router = %pod.router, node_ip = ?native.as_ref().map(|n| n.ip), "node addressing");

    let host_ifindex =
        devices::ensure_host_devices(&nl, &config, &pod).context("setting up the host devices")?;
    let addressing = NodeAddressing { pod, native };
    let daemon = Arc::new(Daemon::start(
        config.clone(),
        addressing,
        host_ifindex,
        cluster,
    )?);
    ciliate_agent::health::ensure(&daemon).context("setting up the health endpoint")?;

    runtime.block_on(serve(daemon, config, store, stop_tx, stop_rx))
}

/// Removes what another masquerading mode left (the iptables chain, the
/// ip-masq-agent map's entries) and starts the manager of this mode's.
fn start_masquerading(
    daemon: &Arc<Daemon>,
    config: &Config,
    store: Option<&Store>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    use ciliate_agent::config::MasqueradeMode;
    use ipmasq::manager::{Enforcer as _, Manager, MapEnforcer, Settings};
    if config.masquerade != MasqueradeMode::Iptables {
        match tokio::task::block_in_place(iptables::remove) {
            Ok(true) => info!(
                chain = iptables::CHAIN,
                "removed the iptables masquerading chain of an earlier run"
            ),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %services::chain(&e), "cannot remove the iptables masquerading chain of an earlier run");
            }
        }
    }
    let mut map = MapEnforcer {
        map: Maps::open(&config.bpf_root)
            .context("opening ciliate_ipmasq4")?
            .ipmasq4,
    };
    if config.masquerade != MasqueradeMode::Bpf {
        tokio::task::block_in_place(|| map.enforce(&[], &[]))
            .map_err(anyhow::Error::msg)
            .context("emptying ciliate_ipmasq4")?;
    }
    let settings = Settings {
        agent: config.ip_masq_agent.clone(),
        has_store: store.is_some(),
    };
    let publisher = daemon.ipmasq_publisher();
    let task = match config.masquerade {
        MasqueradeMode::Off => return Ok(None),
        MasqueradeMode::Bpf => tokio::spawn(ipmasq::manager::run(
            Manager::new(settings, map, publisher),
            store.cloned(),
            None,
            stop_rx.clone(),
        )),
        MasqueradeMode::Iptables => {
            let enforcer = iptables::IptablesEnforcer {
                spec: iptables::ChainSpec {
                    pod_cidr: daemon.addressing.pod.cidr,
                    device: daemon.addressing.native.as_ref().map(|n| n.name.clone()),
                    native_routing_cidr: config.native_routing_cidr,
                },
            };
            tokio::spawn(ipmasq::manager::run(
                Manager::new(settings, enforcer, publisher),
                store.cloned(),
                Some(daemon.nodes_watch()),
                stop_rx.clone(),
            ))
        }
    };
    Ok(Some(task))
}

/// Records the PodCIDR in the node's registration.
fn set_pod_network(cluster: &Cluster, pod: PodNetwork) {
    cluster.local.send_modify(|local| {
        local.pod_cidrs = vec![pod.cidr];
        local.ciliate_internal_ip = Some(pod.router);
    });
}

/// Waits until the operator assigns this node a PodCIDR, saying what it waits for.
async fn wait_for_pod_cidr(cluster: &Cluster, config: &Config) -> anyhow::Result<PodNetwork> {
    let mut assigned = cluster.assigned_pod_cidr.subscribe();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let cidr = *assigned.borrow_and_update();
        if let Some(cidr) = cidr {
            let origin = format!("spec.ipam.podCIDRs of CiliateNode {}", config.node_name);
            match PodNetwork::new(cidr, &origin) {
                Ok(pod) => {
                    info!(cidr = %pod.cidr, "the operator assigned this node's PodCIDR");
                    return Ok(pod);
                }
                Err(e) => {
                    error!(error = %e, "the store holds a PodCIDR this agent cannot use; waiting for another");
                }
            }
        }
        tokio::select! {
            changed = assigned.changed() => {
                changed.context("the registration stopped")?;
            }
            _ = tick.tick() => {
                let store = cluster.kvstore.borrow().clone();
                info!(
                    node = %config.node_name,
                    store = ?store.map(|s| format!("{}: {}", s.state, s.message)),
                    "waiting for the operator to assign a PodCIDR (spec.ipam.podCIDRs of CiliateNode {})",
                    config.node_name
                );
            }
            _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped while waiting for a PodCIDR"),
            _ = term.recv() => anyhow::bail!("stopped while waiting for a PodCIDR"),
        }
    }
}

async fn serve(
    daemon: Arc<Daemon>,
    config: Config,
    store: Option<Store>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (events, _) = broadcast::channel(monitor::LISTENER_BUFFER);
    let ring = Maps::open_events(&config.bpf_root).context("opening the event ring buffer")?;
    let monitor_task = tokio::spawn(monitor::run(ring, events.clone()));

    let masquerading = start_masquerading(&daemon, &config, store.as_ref(), &stop_rx)
        .context("setting up masquerading")?;

    // Expired conntrack and NAT entries go whatever else runs (masquerading's
    // mappings included).
    let gc_maps = services::gc::GcMaps::from_maps(
        Maps::open(&config.bpf_root).context("opening the conntrack maps")?,
    );
    tokio::spawn(services::gc::run(
        gc_maps,
        config.conntrack_gc_interval,
        stop_rx.clone(),
    ));
    let tables = services::lbmap::PinnedTables::from_maps(
        Maps::open(&config.bpf_root).context("opening the service maps")?,
    );
    let mut sync = tokio::task::block_in_place(|| services::lbmap::LbSync::adopt(tables))
        .context("reading back the service maps")?;
    if !config.kube_proxy_replacement {
        // Frontends an earlier run with kubeProxyReplacement wrote would
        // go on translating: nothing is wanted now.
        let removed =
            tokio::task::block_in_place(|| sync.apply(&std::collections::BTreeMap::new(), true));
        if removed.frontends_removed > 0 {
            info!(
                frontends = removed.frontends_removed,
                "kubeProxyReplacement is off: removed the frontends of an earlier run"
            );
        }
    } else if let Some(store) = &store {
        let settings = services::model::Settings {
            node_name: config.node_name.clone(),
            node_port_range: config.node_port_range,
        };
        let manager = services::ServiceManager::new(settings, sync, daemon.services_publisher());
        tokio::spawn(services::run(
            store.clone(),
            manager,
            daemon.cluster().clone(),
            config.etcd_endpoints.clone(),
            stop_rx.clone(),
        ));
    } else {
        warn!("kubeProxyReplacement is on but no cluster store is configured (etcd.endpoints): no Services will be programmed");
    }
    if let Some(store) = store {
        let settings = nodes::Settings {
            local_name: config.node_name.clone(),
            routing_mode: config.routing_mode,
            auto_direct_node_routes: config.auto_direct_node_routes,
            pod: daemon.addressing.pod,
            pod_mtu: devices::pod_mtu(&config),
            host_ifindex: daemon.host_ifindex(),
            native: daemon.addressing.native.clone(),
            state_dir: config.state_dir.clone(),
        };
        let ipcache = Maps::open(&config.bpf_root)
            .context("opening the ipcache")?
            .ipcache;
        let manager = nodes::NodeManager::new(
            settings,
            ipcache,
            Netlink::new().context("opening netlink")?,
            daemon.cluster().clone(),
        );
        tokio::spawn(nodes::run(
            store,
            manager,
            config.etcd_endpoints.clone(),
            stop_rx.clone(),
        ));
    }

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

    let health = ciliate_agent::health::start(&config, daemon.nodes_watch(), &stop_rx)
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
    if let Some(task) = masquerading {
        // iptables mode removes its chain on the way out.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    }
    monitor_task.abort();
    let _ = std::fs::remove_file(socket);
    Ok(())
}
