//! The node's health endpoint: `lxc_health` in the host namespace, `eth0` in a
//! namespace of its own, an address from the node's PodCIDR, and the same BPF
//! programs as any pod. Other nodes probe it; the kernel answers their pings.

use anyhow::Context;
use ciliate_api::{EndpointCreateRequest, EndpointState, IpamAllocateRequest};
use ciliate_datapath::netlink::{format_mac, Netlink};
use ciliate_datapath::{netns, podnet};
use tracing::info;

use crate::daemon::Daemon;
use crate::endpoints::EndpointRef;

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
            let _ = daemon.release(alloc.ip);
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
    };
    if let Err(e) = daemon.create_endpoint(&req) {
        let _ = nl.del_link(made.host.index);
        let _ = daemon.release(alloc.ip);
        return Err(anyhow::anyhow!(e.chain())).context("registering the health endpoint");
    }
    info!(ip = %alloc.ip, netns = %netns_path.display(), "health endpoint ready");
    Ok(())
}
