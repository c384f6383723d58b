//! The one error type of the store, shared by every backend.

use std::time::Duration;

/// A backend's own error (etcd's gRPC error, later the Kubernetes client's), kept whole
/// as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the cluster state.
///
/// `kind` is the object's Kubernetes kind (`CiliateNode`, `Pod`), `name` its name
/// (`namespace/name` for namespaced kinds), `key` the backend's key
/// (`/ciliate/ciliatenode/_/node1` in etcd).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend cannot be reached at all (connection refused, no route, timeout).
    #[error("cannot reach {backend} at {endpoints}")]
    Unreachable {
        backend: &'static str,
        endpoints: String,
        #[source]
        source: BoxError,
    },
    /// The backend answered, but the operation failed.
    #[error("{backend} {op} of {key} failed")]
    Backend {
        backend: &'static str,
        op: &'static str,
        key: String,
        #[source]
        source: BoxError,
    },
    /// The backend did not answer in time.
    #[error("{backend} {op} of {key} timed out after {timeout:?}")]
    Timeout {
        backend: &'static str,
        op: &'static str,
        key: String,
        timeout: Duration,
    },
    /// `create` of an object whose name is taken.
    #[error("{kind} {name} exists already")]
    AlreadyExists { kind: &'static str, name: String },
    /// An update with a resourceVersion of an object that is gone.
    #[error("{kind} {name} does not exist")]
    NotFound { kind: &'static str, name: String },
    /// An update with a resourceVersion that is no longer the object's.
    #[error("{kind} {name} was changed since resourceVersion {resource_version}; get it again and retry")]
    Conflict {
        kind: &'static str,
        name: String,
        resource_version: String,
    },
    /// A resourceVersion that this backend did not hand out.
    #[error(
        "{kind} {name} has resourceVersion {resource_version:?}, which is not one of this store's"
    )]
    InvalidResourceVersion {
        kind: &'static str,
        name: String,
        resource_version: String,
    },
    /// An object name (or namespace) that cannot be a key.
    #[error("{kind} name {name:?} is invalid: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A value in the store that is not a valid object of its kind.
    #[error("cannot decode the {kind} stored at {key}")]
    Decode {
        kind: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A value whose metadata names another object than its key does.
    #[error("the object stored at {key} calls itself {kind} {name}")]
    KeyMismatch {
        kind: &'static str,
        key: String,
        name: String,
    },
    /// A key under a kind's prefix that is not `<namespace or _>/<name>`.
    #[error("{key} is not a key of the form <prefix>/<kind>/<namespace or _>/<name>")]
    InvalidKey { key: String },
    /// An object that cannot be serialized (should not happen for derived types).
    #[error("cannot encode {kind} {name}")]
    Encode {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// True for errors that mean "the backend is not there right now" (worth retrying).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }
}
