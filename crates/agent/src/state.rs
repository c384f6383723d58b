//! What the agent keeps on disk in `stateDir`, so that a restarted agent knows
//! its endpoints and allocations. Written atomically (temp file and rename).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ciliate_api::Endpoint;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::ipam::Allocation;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The PodCIDR the node runs with: what the operator assigned (cluster-pool)
    /// or `ipv4Range`, so that a restarted agent starts with it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, Allocation>,
    #[serde(default)]
    pub endpoints: BTreeMap<u16, Endpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn load(dir: &Path) -> Result<State, StateError> {
    let file = path(dir);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|source| StateError::Corrupt { path: file, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(StateError::Io {
            what: "reading",
            path: file,
            source,
        }),
    }
}

pub fn save(dir: &Path, state: &State) -> Result<(), StateError> {
    let file = path(dir);
    let tmp = dir.join("state.json.tmp");
    let bytes = serde_json::to_vec_pretty(state).expect("state always serializes");
    std::fs::write(&tmp, bytes).map_err(|source| StateError::Io {
        what: "writing",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &file).map_err(|source| StateError::Io {
        what: "renaming into",
        path: file,
        source,
    })
}
