//! DEL: idempotent. Removes the host device (the pod end goes with it, for a
//! veth as for a netkit pair, whose primary has the same name), or in ipvlan
//! mode the pod's interface itself, and the agent's endpoint, which releases
//! the address. Missing pieces are fine. Then the container's addresses no
//! endpoint uses go too: an ADD that died between allocating and
//! registering its endpoint (the runtime's DEL after a failed ADD).

use ciliate_api::{Client, Endpoint, IpamOrphansRequest, IpamReleased};
use ciliate_datapath::netlink::Netlink;

use crate::conf::{Env, NetConf};
use crate::error::{CniError, CniResult};
use crate::{fault, info};
use crate::{ipvlan, veth};

pub fn run(env: &Env, conf: &NetConf) -> CniResult<()> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    fault::at("del");
    // CNI_NETNS may be empty or gone: the host device is found by name.
    let host_name = veth::host_ifname(container_id, ifname);
    let host_nl = Netlink::new().map_err(|e| CniError::io("opening netlink", &e))?;
    if veth::teardown(&host_nl, &host_name)? {
        info!("deleted {host_name}");
    } else {
        info!("{host_name} was already gone");
    }
    // An ipvlan slave has no node-side device to take it along.
    if let Some(netns) = env.netns.as_deref().filter(|n| !n.is_empty()) {
        if ipvlan::teardown(std::path::Path::new(netns), ifname)? {
            info!("deleted {ifname} (ipvlan) in {netns}");
        }
    }
    let client = Client::new(&conf.socket_path);
    let agent_error = |e| {
        CniError::agent(
            &format!("deleting the endpoint of container {container_id}"),
            &e,
        )
    };
    // One endpoint per container: only this attachment's (same interface) goes.
    let uri = format!("/v1/endpoint/container-id:{container_id}");
    match client.get::<Endpoint>(&uri) {
        Ok(endpoint) if endpoint.ifname != ifname => info!(
            "endpoint {} of container {container_id} is for {}, not {ifname}: kept",
            endpoint.id, endpoint.ifname
        ),
        Ok(endpoint) => match client.delete(&format!("/v1/endpoint/{}", endpoint.id)) {
            Ok(()) => info!("endpoint {} deleted", endpoint.id),
            Err(e) if e.status() == Some(404) => {
                info!("endpoint {} was already gone", endpoint.id);
            }
            Err(e) => return Err(agent_error(e)),
        },
        Err(e) if e.status() == Some(404) => {
            info!("the agent has no endpoint for container {container_id}");
        }
        Err(e) => return Err(agent_error(e)),
    }
    let request = IpamOrphansRequest {
        container_id: Some(container_id.to_string()),
        keep_container_ids: None,
    };
    let released: Vec<IpamReleased> = client.post("/v1/ipam/orphans", &request).map_err(|e| {
        CniError::agent(
            &format!("releasing the addresses of container {container_id} no endpoint uses"),
            &e,
        )
    })?;
    for r in released {
        info!("released {} (no endpoint used it)", r.ip);
    }
    Ok(())
}
