//! The lab's errors. Every variant names what was wrong, the value, and what
//! would have been accepted or what to do next.

use std::path::PathBuf;

use ciliate_api::ClientError;
use ciliate_datapath::netlink::NetlinkError;
use ciliate_datapath::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (it creates network namespaces and mounts bpffs); run it as root")]
    NotRoot,

    #[error("{field} {value:?} is not valid: {allowed}")]
    Invalid {
        field: String,
        value: String,
        allowed: String,
    },

    #[error("lab {name:?} does not exist (no {}); create it with `ciliate lab up --name {name}`", state.display())]
    NoLab { name: String, state: PathBuf },

    #[error("lab {name:?} exists already but {detail}; remove it with `ciliate lab down --name {name}` first")]
    Exists { name: String, detail: String },

    #[error("{field} {value:?} is not a node of lab {lab:?}; its nodes are: {}", nodes.join(", "))]
    UnknownNode {
        lab: String,
        field: String,
        value: String,
        nodes: Vec<String>,
    },

    #[error(
        "{value:?} is neither a node nor a pod of lab {lab:?}; nodes: {}; pods: {}",
        list_or_none(nodes),
        list_or_none(pods)
    )]
    UnknownTarget {
        lab: String,
        value: String,
        nodes: Vec<String>,
        pods: Vec<String>,
    },

    #[error("{value:?} is ambiguous in lab {lab:?}: it matches {}; say namespace/name", matches.join(", "))]
    Ambiguous {
        lab: String,
        value: String,
        matches: Vec<String>,
    },

    #[error("manifest document {doc}: {message}")]
    Manifest { doc: usize, message: String },

    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: `{}` failed: {detail}", argv.join(" "))]
    Command {
        what: String,
        argv: Vec<String>,
        detail: String,
    },

    #[error("cannot start {what} (`{}`)", argv.join(" "))]
    Spawn {
        what: String,
        argv: Vec<String>,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Netns(#[from] NetnsError),

    #[error(transparent)]
    Netlink(#[from] NetlinkError),

    #[error("cannot find {binary} in {}; build the workspace (`cargo build --workspace`) or set CILIATE_BIN_DIR", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    BinaryMissing {
        binary: String,
        searched: Vec<PathBuf>,
    },

    #[error("the agent of node {node} {problem}; last lines of {}:\n{log_tail}", log.display())]
    AgentNotReady {
        node: String,
        /// What went wrong, naming the socket.
        problem: String,
        log: PathBuf,
        log_tail: String,
        #[source]
        source: Option<Box<ClientError>>,
    },

    #[error("{what} {problem}; last lines of {}:\n{log_tail}", log.display())]
    ServiceNotReady {
        what: String,
        problem: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("the lab's store (etcd at {endpoint})")]
    Store {
        endpoint: String,
        #[source]
        source: ciliate_store::Error,
    },

    #[error("CNI {command} for pod {pod} with plugin {plugin:?} failed: {message}")]
    Cni {
        pod: String,
        command: String,
        plugin: String,
        message: String,
    },

    /// A CRI call the runtime refused or did not answer; the status's code
    /// and message are the runtime's words (a failed CNI ADD shows here).
    #[error("CRI {call} on {}: {}: {}", socket.display(), source.code(), source.message())]
    Cri {
        call: String,
        socket: PathBuf,
        source: Box<tonic::Status>,
    },

    #[error("state file {} is not valid", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("lab {name:?} was not removed completely; still there: {}", leftovers.join("; "))]
    Leftovers {
        name: String,
        leftovers: Vec<String>,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.into();
    move |source| LabError::Io {
        action,
        path,
        source,
    }
}
