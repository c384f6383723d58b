//! The node's health endpoint: `lxc_health` in the host namespace, `eth0` in a
//! namespace of its own, an address from the node's PodCIDR, and the same BPF
//! programs as any pod. Other nodes probe it; the kernel answers their pings.
//!
//! [`start`] runs the rest of cilium-health: the responders on the health port
//! (in the host namespace and inside the health endpoint's) and the prober of
//! the other nodes.

use anyhow::Context;
use ciliate_api::{EndpointCreateRequest, EndpointState, IpamAllocateRequest, Node};
use ciliate_datapath::netlink::{format_mac, Netlink};
use ciliate_datapath::{netns, podnet};
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::endpoints::EndpointRef;
use crate::health_server;
use crate::prober::{HealthState, Prober, ProberConfig};

pub const HEALTH_DEVICE: &str = "lxc_health";
pub const HEALTH_OWNER: &str = "health";

/// Makes sure a ready health endpoint exists, recreating it if it was lost.
pub fn ensure(daemon: &Daemon) -> anyhow::Result<()> {
    if !daemon.config.enable_health_checking {
        return Ok(());
    }
    let container_id = format!("health-{}", daemon.config.node_name);
    if let Some(ep) = daemon.endpoints().into_iter().find(|e| e.health) {
        if ep.state == EndpointState::Ready {
            return Ok(());
        }
        daemon
            .delete_endpoint(&EndpointRef::Id(ep.id))
            .context("removing the broken health endpoint")?;
    }
    let nl = Netlink::new()?;
    nl.del_link_by_name(HEALTH_DEVICE)?;
    let name = &daemon.config.health_netns;
    netns::delete_named(name)?;
    let netns_path = netns::create_named(name)?;

    let alloc = daemon.allocate(&IpamAllocateRequest {
        owner: HEALTH_OWNER.into(),
        container_id: Some(container_id.clone()),
    })?;
    let spec = podnet::PodNetSpec {
        host_ifname: HEALTH_DEVICE,
        ifname: "eth0",
        netns: &netns_path,
        ip: alloc.ip,
        router: alloc.router,
        mtu: alloc.mtu,
    };
    let made = match podnet::create(&nl, &spec) {
        Ok(made) => made,
        Err(e) => {
            let _ = daemon.release(alloc.ip, None);
            return Err(e).context("creating the health endpoint's devices");
        }
    };
    let req = EndpointCreateRequest {
        container_id,
        netns: netns_path.display().to_string(),
        ifname: "eth0".into(),
        host_ifname: HEALTH_DEVICE.into(),
        host_ifindex: made.host.index,
        ip: alloc.ip,
        mac: format_mac(made.pod.mac.unwrap_or_default()),
        host_mac: format_mac(made.host.mac.unwrap_or_default()),
        pod_namespace: None,
        pod_name: None,
        health: true,
        // The health endpoint is the agent's own veth in every mode.
        datapath_mode: ciliate_api::DatapathMode::Veth,
    };
    if let Err(e) = daemon.create_endpoint(&req) {
        let _ = nl.del_link(made.host.index);
        let _ = daemon.release(alloc.ip, None);
        return Err(anyhow::anyhow!(e.chain())).context("registering the health endpoint");
    }
    info!(ip = %alloc.ip, netns = %netns_path.display(), "health endpoint ready");
    Ok(())
}

/// Starts the health responders (host namespace and the health endpoint's
/// namespace, both on the health port) and the prober of the nodes that
/// `nodes` lists, all stopping when `stopping` turns true. Returns the state
/// `GET /v1/health` serves, or `None` when health checking is off.
///
/// Must be called inside the tokio runtime, on a thread in the host namespace,
/// after [`ensure`] made the health endpoint.
pub fn start(
    config: &Config,
    nodes: watch::Receiver<Vec<Node>>,
    stopping: &watch::Receiver<bool>,
) -> anyhow::Result<Option<HealthState>> {
    if !config.enable_health_checking {
        return Ok(None);
    }
    let port = health_server::port(config);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let host = health_server::bind(port).with_context(|| format!("clusterHealthPort {port}"))?;
    let netns_path = netns::named_path(&config.health_netns);
    let endpoint = health_server::bind_in_netns(&netns_path, port)
        .with_context(|| format!("clusterHealthPort {port}"))?;
    for (what, listener) in [("host", host), ("health endpoint", endpoint)] {
        let shutdown = stopped(stopping.clone());
        tokio::spawn(async move {
            if let Err(e) = health_server::run(listener, shutdown).await {
                error!(
                    responder = what,
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "health responder stopped"
                );
            }
        });
    }

    let prober_config = ProberConfig {
        port,
        ..ProberConfig::default()
    };
    let state = HealthState::new(prober_config.interval);
    let prober = Prober::new(prober_config, state.clone())?;
    tokio::spawn(prober.run(nodes, stopped(stopping.clone())));
    info!(port, netns = %netns_path.display(), "health responders and prober running");
    Ok(Some(state))
}
