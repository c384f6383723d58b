//! Objects of any kind, their keys, and their JSON encoding.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, Metadata, NamespaceResourceScope, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Where every key of ours lives in etcd: `/ciliate/<kind lowercase>/<namespace or _>/<name>`.
pub const DEFAULT_PREFIX: &str = "/ciliate";

/// Stands for "no namespace" (cluster-scoped kinds) in a key.
pub const NO_NAMESPACE: &str = "_";

/// What a backend needs to know about a kind: enough to build etcd keys, and enough
/// for a Kubernetes API source to build its URLs (`api_version` + `plural`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceKind {
    /// `Node`, `Pod`, `CiliateNode`.
    pub kind: &'static str,
    /// `v1`, `ciliate.io/v2`.
    pub api_version: &'static str,
    /// `nodes`, `pods`, `ciliatenodes`.
    pub plural: &'static str,
    /// Pods are, Nodes are not.
    pub namespaced: bool,
}

impl ResourceKind {
    /// The key segment of this kind: the kind in lower case (`ciliatenode`).
    pub fn segment(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    /// The key prefix of all objects of this kind, with a trailing slash:
    /// `/ciliate/ciliatenode/`.
    pub fn prefix(&self, root: &str) -> String {
        format!("{}/{}/", root.trim_end_matches('/'), self.segment())
    }
}

/// Tells whether a k8s-openapi scope is namespaced.
pub trait Scope {
    const NAMESPACED: bool;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

/// An object kept in the store: any k8s-openapi resource with `ObjectMeta`
/// (`Node`, `Pod`, `Service`, `EndpointSlice`, ... all qualify as they are) and our
/// CRD-shaped types, which implement k8s-openapi's `Resource` and `Metadata` too
/// (see [`crate::CiliateNode`]) so that a Kubernetes API client can use them unchanged.
///
/// Implemented for every such type by a blanket impl; there is nothing to write
/// for a new kind beyond its `Resource`/`Metadata` impls.
pub trait Object:
    Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
    /// This kind, for backends.
    const RESOURCE: ResourceKind;

    /// `metadata.name`, or "" when unset.
    fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`.
    fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// `metadata.resourceVersion`, as the store last saw it.
    fn resource_version(&self) -> Option<&str> {
        self.metadata().resource_version.as_deref()
    }
}

impl<T> Object for T
where
    T: Resource
        + Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + 'static,
    T::Scope: Scope,
{
    const RESOURCE: ResourceKind = ResourceKind {
        kind: T::KIND,
        api_version: T::API_VERSION,
        plural: T::URL_PATH_SEGMENT,
        namespaced: <T::Scope as Scope>::NAMESPACED,
    };
}

/// Names one object: kind, namespace (None for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub kind: ResourceKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// Checks the name and that a namespace is given exactly when the kind is namespaced.
    pub fn new(kind: ResourceKind, namespace: Option<&str>, name: &str) -> Result<Self> {
        let invalid = |name: &str, reason| Error::InvalidName {
            kind: kind.kind,
            name: name.to_string(),
            reason,
        };
        check_segment(name).map_err(|reason| invalid(name, reason))?;
        match (kind.namespaced, namespace) {
            (true, None) => return Err(invalid(name, "this kind is namespaced: give a namespace")),
            (false, Some(_)) => {
                return Err(invalid(
                    name,
                    "this kind is cluster-scoped: give no namespace",
                ))
            }
            (true, Some(ns)) => check_segment(ns).map_err(|reason| invalid(ns, reason))?,
            (false, None) => {}
        }
        Ok(Self {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        })
    }

    /// The key of an object, from its metadata.
    pub fn of<T: Object>(object: &T) -> Result<Self> {
        Self::new(T::RESOURCE, object.namespace(), object.name())
    }

    /// `name` or `namespace/name`, as people write it.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The full key under `root`: `/ciliate/pod/default/web`, `/ciliate/node/_/node1`.
    pub fn path(&self, root: &str) -> String {
        format!(
            "{}{}/{}",
            self.kind.prefix(root),
            self.namespace.as_deref().unwrap_or(NO_NAMESPACE),
            self.name
        )
    }

    /// The inverse of [`ObjectKey::path`] for keys under `kind`'s prefix.
    pub fn parse(kind: ResourceKind, root: &str, path: &str) -> Result<Self> {
        let invalid = || Error::InvalidKey {
            key: path.to_string(),
        };
        let rest = path.strip_prefix(&kind.prefix(root)).ok_or_else(invalid)?;
        let (ns, name) = rest.split_once('/').ok_or_else(invalid)?;
        let ns = (ns != NO_NAMESPACE).then_some(ns);
        Self::new(kind, ns, name).map_err(|_| invalid())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.kind, self.display_name())
    }
}

fn check_segment(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() {
        Err("it is empty")
    } else if s == NO_NAMESPACE {
        Err("\"_\" stands for \"no namespace\" in keys")
    } else if s.contains('/') {
        Err("it contains '/'")
    } else if s.len() > 253 {
        Err("it is longer than 253 characters")
    } else if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Err("it contains whitespace or control characters")
    } else {
        Ok(())
    }
}

/// The value stored for an object: its JSON without `resourceVersion` (the backend's
/// revision is the resource version).
pub(crate) fn encode<T: Object>(object: &T, key: &ObjectKey) -> Result<Vec<u8>> {
    let mut object = object.clone();
    object.metadata_mut().resource_version = None;
    serde_json::to_vec(&object).map_err(|source| Error::Encode {
        kind: T::KIND,
        name: key.display_name(),
        source,
    })
}

/// An object from its stored value; fills in name/namespace if the value lacks them,
/// refuses a value that names another object, and sets `resourceVersion`.
pub(crate) fn decode<T: Object>(raw: &RawObject, root: &str) -> Result<T> {
    let path = || raw.key.path(root);
    let mut object: T = serde_json::from_slice(&raw.value).map_err(|source| Error::Decode {
        kind: T::KIND,
        key: path(),
        source,
    })?;
    let meta = object.metadata_mut();
    match meta.name.as_deref() {
        None | Some("") => meta.name = Some(raw.key.name.clone()),
        Some(n) if n == raw.key.name => {}
        Some(n) => {
            return Err(Error::KeyMismatch {
                kind: T::KIND,
                key: path(),
                name: n.to_string(),
            })
        }
    }
    match (meta.namespace.as_deref(), raw.key.namespace.as_deref()) {
        (None | Some(""), ns) => meta.namespace = ns.map(str::to_string),
        (Some(a), Some(b)) if a == b => {}
        (Some(a), _) => {
            return Err(Error::KeyMismatch {
                kind: T::KIND,
                key: path(),
                name: format!("{a}/{}", raw.key.name),
            })
        }
    }
    meta.resource_version = Some(raw.resource_version.clone());
    Ok(object)
}

/// An object as a backend keeps it: key, JSON value, resource version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawObject {
    pub key: ObjectKey,
    pub value: Vec<u8>,
    pub resource_version: String,
}
