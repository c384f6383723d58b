//! GC (CNI 1.1): remove every endpoint the runtime no longer knows, with its
//! host device; release every address allocated for a container the runtime
//! no longer knows that no endpoint uses (an ADD died after allocating); and
//! delete `lxc` devices neither an endpoint nor a valid attachment owns (an
//! ADD died after making it), unless an ADD is running, whose device that
//! may be. The node's health endpoint is never touched.

use ciliate_api::{add_lock, Client, Endpoint, IpamOrphansRequest, IpamReleased};
use ciliate_datapath::netlink::Netlink;

use crate::conf::NetConf;
use crate::error::{code, CniError, CniResult};
use crate::result::at_least;
use crate::{info, veth, warn};

pub fn run(conf: &NetConf) -> CniResult<()> {
    if !at_least(&conf.cni_version, "1.1.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "GC needs cniVersion 1.1.0 or later; the configuration has {:?}",
                conf.cni_version
            ),
        ));
    }
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "cni.dev/valid-attachments is missing: GC needs the list of attachments to keep",
        )
    })?;
    let client = Client::new(&conf.socket_path);
    let endpoints: Vec<Endpoint> = client
        .get("/v1/endpoint")
        .map_err(|e| CniError::agent("listing the agent's endpoints", &e))?;
    let host_nl = Netlink::new().map_err(|e| CniError::io("opening netlink", &e))?;

    let mut failures: Vec<CniError> = Vec::new();
    for ep in endpoints.iter().filter(|ep| !ep.health) {
        let kept = valid
            .iter()
            .any(|a| a.container_id == ep.container_id && a.ifname == ep.ifname);
        if kept {
            continue;
        }
        info!(
            "collecting endpoint {} of container {} ({} on {})",
            ep.id, ep.container_id, ep.ip, ep.host_ifname
        );
        if ep.host_ifname.starts_with("lxc") {
            if let Err(e) = veth::teardown(&host_nl, &ep.host_ifname) {
                failures.push(e);
            }
        } else {
            warn!(
                "not deleting device {:?} of endpoint {}: not one of ours (lxc...)",
                ep.host_ifname, ep.id
            );
        }
        match client.delete(&format!("/v1/endpoint/{}", ep.id)) {
            Ok(()) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => failures.push(CniError::agent(&format!("deleting endpoint {}", ep.id), &e)),
        }
    }
    let request = IpamOrphansRequest {
        container_id: None,
        keep_container_ids: Some(valid.iter().map(|a| a.container_id.clone()).collect()),
    };
    match client.post::<_, Vec<IpamReleased>>("/v1/ipam/orphans", &request) {
        Ok(released) => {
            for r in released {
                info!(
                    "released {} of container {} (no endpoint used it)",
                    r.ip, r.container_id
                );
            }
        }
        Err(e) => failures.push(CniError::agent("releasing addresses no endpoint uses", &e)),
    }
    if let Err(e) = delete_stray_devices(conf, &client, valid, &host_nl) {
        failures.push(e);
    }
    match failures.first() {
        None => Ok(()),
        Some(first) => {
            let all: Vec<_> = failures.iter().map(|f| f.msg.clone()).collect();
            Err(CniError::new(first.code, format!("GC: {}", all.join("; "))))
        }
    }
}

/// `lxc` devices no endpoint and no valid attachment owns. Skipped while an
/// ADD runs: its device exists before its endpoint does.
fn delete_stray_devices(
    conf: &NetConf,
    client: &Client,
    valid: &[crate::conf::Attachment],
    host_nl: &Netlink,
) -> CniResult<()> {
    if add_lock::any_in_flight(&conf.socket_path) {
        info!("an ADD is running: stray devices are left for the next GC");
        return Ok(());
    }
    // Listed again: endpoints made since the first listing own their devices.
    let endpoints: Vec<Endpoint> = client
        .get("/v1/endpoint")
        .map_err(|e| CniError::agent("listing the agent's endpoints", &e))?;
    let owned: Vec<String> = endpoints
        .iter()
        .map(|ep| ep.host_ifname.clone())
        .chain(
            valid
                .iter()
                .map(|a| veth::host_ifname(&a.container_id, &a.ifname)),
        )
        .collect();
    let links = host_nl
        .links()
        .map_err(|e| CniError::io("listing the node's devices", &e))?;
    for link in links {
        if !link.name.starts_with("lxc") || owned.contains(&link.name) {
            continue;
        }
        info!(
            "deleting {} (index {}): no endpoint or attachment owns it",
            link.name, link.index
        );
        veth::teardown(host_nl, &link.name)?;
    }
    Ok(())
}
