//! ConfigMaps in the lab's store, written as given: the agents read
//! `kube-system/ip-masq-agent` (its `data.config`, the nonMasqueradeCIDRs)
//! from there, as Cilium's agent reads the ConfigMap of that name.

use k8s_openapi::api::core::v1::ConfigMap;

use crate::error::Result;
use crate::lab::Lab;
use crate::services::{key_of, Change};
use crate::state::LabLock;

/// The ConfigMap ip-masq-agent reads, `namespace/name`.
pub const IP_MASQ_AGENT: &str = "kube-system/ip-masq-agent";

/// A ConfigMap `kube-system/ip-masq-agent` whose `data.config` lists
/// `cidrs` as nonMasqueradeCIDRs (JSON, as `kubectl create configmap
/// --from-file=config` would hold it).
pub fn ip_masq_agent_yaml(cidrs: &[&str]) -> String {
    let list = cidrs
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ip-masq-agent, namespace: kube-system}}\n\
         data:\n  config: '{{\"nonMasqueradeCIDRs\":[{list}]}}'\n"
    )
}

/// `namespace/name`, or `default/name` for a bare name.
fn split(name: &str) -> (String, String) {
    let (ns, name) = name.split_once('/').unwrap_or(("default", name));
    (ns.to_string(), name.to_string())
}

impl Lab {
    /// Writes a ConfigMap (namespace defaulted by the manifest reader) as given.
    pub fn apply_config_map(&mut self, map: &ConfigMap) -> Result<Change> {
        let _lock = LabLock::acquire(self.dir())?;
        let (ns, name) = split(&key_of(&map.metadata));
        let mut object = map.clone();
        object.metadata.namespace = Some(ns.clone());
        object.metadata.resource_version = None;
        self.with_store(move |store| async move {
            let change = match store.get::<ConfigMap>(Some(&ns), &name).await? {
                None => Change::Created,
                Some(b) if b.data == object.data && b.binary_data == object.binary_data => {
                    return Ok(Change::Unchanged)
                }
                Some(_) => Change::Updated,
            };
            store.put(&object).await?;
            Ok(change)
        })
    }

    /// A ConfigMap from the store by `namespace/name` (or `name` in `default`).
    pub fn config_map(&self, name: &str) -> Result<Option<ConfigMap>> {
        let (ns, name) = split(name);
        self.with_store(move |store| async move { store.get::<ConfigMap>(Some(&ns), &name).await })
    }

    /// Deletes a ConfigMap; false if it did not exist.
    pub fn delete_config_map(&mut self, name: &str) -> Result<bool> {
        let _lock = LabLock::acquire(self.dir())?;
        let (ns, name) = split(name);
        self.with_store(
            move |store| async move { store.delete::<ConfigMap>(Some(&ns), &name).await },
        )
    }
}
