//! `CiliateNode` (`ciliate.io/v2`): what an agent tells the cluster about its node, and
//! what the operator tells the agent back (its PodCIDRs). Shaped like Cilium's CiliumNode.
//!
//! ```yaml
//! apiVersion: ciliate.io/v2
//! kind: CiliateNode
//! metadata: {name: node1}
//! spec:
//!   addresses:
//!   - {type: InternalIP, ip: 192.168.10.100}
//!   - {type: CiliumInternalIP, ip: 172.20.0.1}
//!   health: {ipv4: 172.20.0.2}
//!   ipam: {podCIDRs: [172.20.0.0/24]}
//! status:
//!   ipam: {operatorStatus: {error: "..."}}
//! ```

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node as ciliate sees it. Cluster-scoped; the name is the node's name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CiliateNode {
    pub metadata: ObjectMeta,
    pub spec: CiliateNodeSpec,
    pub status: CiliateNodeStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliateNodeSpec {
    /// The node's addresses by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: HealthAddressing,
    #[serde(default, skip_serializing_if = "is_default")]
    pub ipam: IpamSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub address_type: AddressType,
    pub ip: IpAddr,
}

/// Cilium's address types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressType {
    /// The node's address on the network between nodes (the tunnel endpoint).
    #[serde(rename = "InternalIP")]
    InternalIp,
    #[serde(rename = "ExternalIP")]
    ExternalIp,
    /// The router address on `ciliate_host` (first address of the PodCIDR).
    #[serde(rename = "CiliumInternalIP")]
    CiliumInternalIp,
}

/// The node's health endpoint (`lxc_health`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthAddressing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
}

/// Written by the operator (cluster-pool IPAM).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamSpec {
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<IpNet>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliateNodeStatus {
    #[serde(default, skip_serializing_if = "is_default")]
    pub ipam: IpamStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamStatus {
    #[serde(default, skip_serializing_if = "is_default")]
    pub operator_status: OperatorStatus,
}

/// Set by the operator when it cannot give the node a PodCIDR (pool exhausted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

// serde passes skip_serializing_if a reference to the field, here itself a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_default_ref<T: Default + PartialEq>(value: &&T) -> bool {
    **value == T::default()
}

impl CiliateNode {
    /// An empty node object with this name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Self::default()
        }
    }

    /// The first address of this type.
    pub fn address(&self, address_type: AddressType) -> Option<IpAddr> {
        self.spec
            .addresses
            .iter()
            .find(|a| a.address_type == address_type)
            .map(|a| a.ip)
    }

    /// Replaces the addresses of this type with `ip`.
    pub fn set_address(&mut self, address_type: AddressType, ip: IpAddr) {
        self.spec
            .addresses
            .retain(|a| a.address_type != address_type);
        self.spec.addresses.push(NodeAddress { address_type, ip });
    }

    pub fn internal_ip(&self) -> Option<IpAddr> {
        self.address(AddressType::InternalIp)
    }

    pub fn ciliate_internal_ip(&self) -> Option<IpAddr> {
        self.address(AddressType::CiliumInternalIp)
    }
}

impl k8s_openapi::Resource for CiliateNode {
    const API_VERSION: &'static str = "ciliate.io/v2";
    const GROUP: &'static str = "ciliate.io";
    const KIND: &'static str = "CiliateNode";
    const VERSION: &'static str = "v2";
    const URL_PATH_SEGMENT: &'static str = "ciliatenodes";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::ListableResource for CiliateNode {
    const LIST_KIND: &'static str = "CiliateNodeList";
}

impl k8s_openapi::Metadata for CiliateNode {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// apiVersion and kind are written always and checked when present, as k8s-openapi
// does for its own types.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRef<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    spec: &'a CiliateNodeSpec,
    #[serde(skip_serializing_if = "is_default_ref")]
    status: &'a CiliateNodeStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: CiliateNodeSpec,
    #[serde(default)]
    status: CiliateNodeStatus,
}

impl Serialize for CiliateNode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use k8s_openapi::Resource;
        WireRef {
            api_version: Self::API_VERSION,
            kind: Self::KIND,
            metadata: &self.metadata,
            spec: &self.spec,
            status: &self.status,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CiliateNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use k8s_openapi::Resource;
        use serde::de::Error;
        let wire = Wire::deserialize(deserializer)?;
        if let Some(v) = wire
            .api_version
            .as_deref()
            .filter(|v| *v != Self::API_VERSION)
        {
            return Err(D::Error::custom(format!(
                "apiVersion is {v:?}, expected {:?}",
                Self::API_VERSION
            )));
        }
        if let Some(k) = wire.kind.as_deref().filter(|k| *k != Self::KIND) {
            return Err(D::Error::custom(format!(
                "kind is {k:?}, expected {:?}",
                Self::KIND
            )));
        }
        Ok(Self {
            metadata: wire.metadata,
            spec: wire.spec,
            status: wire.status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_cilium_shaped() {
        let mut node = CiliateNode::new("node1");
        node.set_address(AddressType::InternalIp, "192.168.10.100".parse().unwrap());
        node.set_address(AddressType::CiliumInternalIp, "172.20.0.1".parse().unwrap());
        node.spec.health.ipv4 = Some("172.20.0.2".parse().unwrap());
        node.spec.ipam.pod_cidrs = vec!["172.20.0.0/24".parse().unwrap()];
        node.status.ipam.operator_status.error = Some("pool exhausted".into());
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "ciliate.io/v2",
                "kind": "CiliateNode",
                "metadata": {"name": "node1"},
                "spec": {
                    "addresses": [
                        {"type": "InternalIP", "ip": "192.168.10.100"},
                        {"type": "CiliumInternalIP", "ip": "172.20.0.1"}
                    ],
                    "health": {"ipv4": "172.20.0.2"},
                    "ipam": {"podCIDRs": ["172.20.0.0/24"]}
                },
                "status": {"ipam": {"operatorStatus": {"error": "pool exhausted"}}}
            })
        );
        let back: CiliateNode = serde_json::from_value(json).unwrap();
        assert_eq!(back, node);
        assert_eq!(back.internal_ip(), Some("192.168.10.100".parse().unwrap()));
    }

    #[test]
    fn minimal_and_wrong_kind() {
        let n: CiliateNode = serde_json::from_str(r#"{"metadata":{"name":"a"}}"#).unwrap();
        assert_eq!(n, CiliateNode::new("a"));
        let err = serde_json::from_str::<CiliateNode>(r#"{"kind":"Node"}"#).unwrap_err();
        assert!(
            err.to_string().contains("expected \"CiliateNode\""),
            "{err}"
        );
    }
}
