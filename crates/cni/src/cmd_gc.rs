//! GC (CNI 1.1): remove every endpoint the runtime no longer knows, with its
//! host device. The node's health endpoint is never touched.

use ciliate_api::{Client, Endpoint};
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
    match failures.first() {
        None => Ok(()),
        Some(first) => {
            let all: Vec<_> = failures.iter().map(|f| f.msg.clone()).collect();
            Err(CniError::new(first.code, format!("GC: {}", all.join("; "))))
        }
    }
}
