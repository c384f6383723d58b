//! Names the lab derives: namespaces, container ids, directories. Every name a
//! lab creates starts with `<lab>-` (namespaces) or lives under
//! `/run/ciliate-lab/<lab>/` (files), which is what lets `down` find all of it.
//! Lab names have no `-`, so one lab's prefix can never match another lab.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};

/// Where every lab keeps its state, one directory per lab.
pub const LAB_ROOT: &str = "/run/ciliate-lab";
/// The lab name used when none is given.
pub const DEFAULT_LAB: &str = "ciliate";
/// Longest lab name: namespace and device names are built from it.
pub const MAX_LAB_NAME: usize = 20;
/// Longest pod namespace name the lab makes (the kernel allows 255, people read them).
pub const MAX_POD_NETNS: usize = 60;

/// Lab names: a lowercase letter, then lowercase letters and digits.
pub fn validate_lab_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LAB_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid {
            field: "lab name".into(),
            value: name.into(),
            allowed: format!(
                "1 to {MAX_LAB_NAME} characters, a lowercase letter then lowercase letters or digits \
                 (no '-': every namespace of the lab is named `<lab>-...`)"
            ),
        })
    }
}

/// The directory of a lab.
pub fn lab_dir(lab: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(lab)
}

/// The name of node `index`.
pub fn node_name(index: usize) -> String {
    format!("node{index}")
}

/// The netns holding the fabric bridge.
pub fn fabric_netns(lab: &str) -> String {
    format!("{lab}-fabric")
}

/// The netns of the lab's outside host (a client that is not a node).
pub fn router_netns(lab: &str) -> String {
    format!("{lab}-{ROUTER}")
}

/// The outside host's name: its namespace suffix, its port on the fabric
/// bridge, and the `exec` target.
pub const ROUTER: &str = "router";

/// The netns of a node.
pub fn node_netns(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

/// The netns the node's agent creates for its `lxc_health` endpoint.
pub fn health_netns(lab: &str, node: &str) -> String {
    format!("{lab}-{node}-health")
}

/// The prefix of every namespace of a lab.
pub fn netns_prefix(lab: &str) -> String {
    format!("{lab}-")
}

/// The container id a runtime would give the pod: 64 hex digits, stable for
/// the same lab, namespace and name.
pub fn container_id(lab: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha256::digest(format!("{lab}/{namespace}/{pod}").as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The netns of a pod: `<lab>-pod-<namespace>-<pod>`. When that is longer than
/// [`MAX_POD_NETNS`], or `hashed` is set (because another pod already has the
/// plain name: `a-b`/`c` and `a`/`b-c` meet), the end is replaced by a hash of
/// the pod's identity.
pub fn pod_netns(lab: &str, namespace: &str, pod: &str, hashed: bool) -> String {
    let plain = format!("{lab}-pod-{namespace}-{pod}");
    if plain.len() <= MAX_POD_NETNS && !hashed {
        return plain;
    }
    let hash = &container_id(lab, namespace, pod)[..10];
    let head = format!("{lab}-pod-{namespace}-{pod}");
    // Names are ASCII (validated), so byte slicing is safe.
    let keep = MAX_POD_NETNS - hash.len() - 1;
    let head = head[..keep.min(head.len())].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// A pod's directory name under `pods/`.
pub fn pod_dir_name(namespace: &str, pod: &str) -> String {
    format!("{namespace}_{pod}")
}

/// Kubernetes namespace names: DNS labels (RFC 1123).
pub fn validate_namespace(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid {
            field: field.into(),
            value: value.into(),
            allowed: "a DNS label: 1 to 63 lowercase letters, digits or '-', starting and ending \
                      with a letter or digit"
                .into(),
        })
    }
}

/// Kubernetes object names: DNS subdomains (RFC 1123).
pub fn validate_object_name(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid {
            field: field.into(),
            value: value.into(),
            allowed: "a DNS subdomain: up to 253 lowercase letters, digits, '-' and '.', each \
                      part starting and ending with a letter or digit"
                .into(),
        })
    }
}
