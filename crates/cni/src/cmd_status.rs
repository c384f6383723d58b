//! STATUS (CNI 1.1): ready for ADD when the agent answers and has addresses left.

use ciliate_api::{Client, Status};

use crate::conf::NetConf;
use crate::error::{chain, code, CniError, CniResult};
use crate::result::at_least;

pub fn run(conf: &NetConf) -> CniResult<()> {
    if !at_least(&conf.cni_version, "1.1.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "STATUS needs cniVersion 1.1.0 or later; the configuration has {:?}",
                conf.cni_version
            ),
        ));
    }
    let client = Client::new(&conf.socket_path);
    let status: Status = client.get("/v1/status").map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("the ciliate agent is not available: {}", chain(&e)),
        )
    })?;
    if status.ipam.allocated >= status.ipam.capacity {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "PodCIDR {} of node {} is exhausted: {} of {} addresses are allocated",
                status.ipam.cidr, status.node_name, status.ipam.allocated, status.ipam.capacity
            ),
        ));
    }
    Ok(())
}
