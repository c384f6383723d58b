//! CNI result types, shaped for the configuration's `cniVersion`.
//!
//! One model serves every supported version: 0.3.x and 0.4.0 results carry
//! `"version": "4"` on each IP, 1.x results do not. Fields we do not know (from
//! a previous plugin's result) are kept as they were, so chaining loses nothing.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";

pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// `(major, minor, patch)` of a version string; unparsable parts count as 0.
pub fn version_tuple(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Whether `version` is at least `min`.
pub fn at_least(version: &str, min: &str) -> bool {
    version_tuple(version) >= version_tuple(min)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IpConfig {
    /// Only in 0.3.x/0.4.0 results: "4" or "6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ip/prefix`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteEntry {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A CNI result (ADD's output, CHECK's and the next plugin's `prevResult`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CniOutput {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub interfaces: Vec<Interface>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ips: Vec<IpConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub routes: Vec<RouteEntry>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl CniOutput {
    /// Sets the version and shapes the IPs for it.
    pub fn for_version(mut self, version: &str) -> Self {
        self.cni_version = version.to_string();
        let legacy = !at_least(version, "1.0.0");
        for ip in &mut self.ips {
            ip.version =
                legacy.then(|| if ip.address.contains(':') { "6" } else { "4" }.to_string());
        }
        self
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("results always serialize")
    }

    /// The IPv4 address (without prefix) given to the interface called
    /// `ifname` in `sandbox`; when no entry says which interface, the first IPv4.
    pub fn ipv4_for(
        &self,
        ifname: &str,
        sandbox: &str,
    ) -> Option<(std::net::Ipv4Addr, Option<String>)> {
        let on_iface = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|iface| {
                    iface.name == ifname && iface.sandbox.as_deref().is_none_or(|s| s == sandbox)
                })
        };
        let parse = |ip: &IpConfig| {
            let addr = ip.address.split('/').next()?.parse().ok()?;
            Some((addr, ip.gateway.clone()))
        };
        self.ips
            .iter()
            .filter(on_iface)
            .find_map(parse)
            .or_else(|| {
                self.ips
                    .iter()
                    .filter(|ip| ip.interface.is_none())
                    .find_map(parse)
            })
    }
}

/// VERSION's answer.
pub fn version_info() -> Value {
    serde_json::json!({ "cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> CniOutput {
        CniOutput {
            interfaces: vec![
                Interface {
                    name: "lxc1".into(),
                    mac: Some("aa:aa:aa:aa:aa:aa".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("bb:bb:bb:bb:bb:bb".into()),
                    sandbox: Some("/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.0.5/32".into(),
                gateway: Some("10.0.0.1".into()),
                interface: Some(1),
                ..Default::default()
            }],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.0.0.1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn shapes_per_version() {
        let v1 = sample().for_version("1.1.0").to_json();
        assert_eq!(
            v1,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "lxc1", "mac": "aa:aa:aa:aa:aa:aa"},
                    {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/p"}
                ],
                "ips": [{"address": "10.0.0.5/32", "gateway": "10.0.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
                "dns": {}
            })
        );
        let v03 = sample().for_version("0.3.1").to_json();
        assert_eq!(v03["cniVersion"], "0.3.1");
        assert_eq!(v03["ips"][0]["version"], "4");
        // Back to 1.x drops it again.
        let back: CniOutput = serde_json::from_value(v03).unwrap();
        assert!(back.for_version("1.0.0").to_json()["ips"][0]
            .get("version")
            .is_none());
    }

    #[test]
    fn keeps_unknown_fields_of_previous_plugins() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "mtu": 1400, "pciID": "0000:00:01.0"}],
            "ips": [{"address": "10.1.0.2/24", "interface": 0, "custom": true}],
            "routes": [{"dst": "10.9.0.0/16", "priority": 5}],
            "dns": {"nameservers": ["10.96.0.10"]},
            "extraTop": 1
        });
        let parsed: CniOutput = serde_json::from_value(prev.clone()).unwrap();
        assert_eq!(parsed.to_json(), prev);
        let nulls: CniOutput =
            serde_json::from_value(json!({"cniVersion": "0.4.0", "interfaces": null, "dns": null}))
                .unwrap();
        assert!(nulls.interfaces.is_empty());
    }

    #[test]
    fn finds_the_pods_address() {
        let out = sample();
        let (ip, gw) = out.ipv4_for("eth0", "/run/netns/p").unwrap();
        assert_eq!(ip, std::net::Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(gw.as_deref(), Some("10.0.0.1"));
        assert!(out.ipv4_for("eth1", "/run/netns/p").is_none());
        assert!(out.ipv4_for("eth0", "/run/netns/other").is_none());
    }

    #[test]
    fn versions() {
        assert!(is_supported("0.4.0") && !is_supported("0.2.0") && !is_supported("1.2.0"));
        assert!(
            at_least("1.1.0", "1.0.0") && at_least("0.4.0", "0.4.0") && !at_least("0.3.1", "0.4.0")
        );
        assert_eq!(
            version_info()["supportedVersions"]
                .as_array()
                .unwrap()
                .len(),
            5
        );
    }
}
