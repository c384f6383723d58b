//! The operator's configuration: one YAML file with Cilium's Helm-style keys,
//! overridden by flags. Unknown keys and bad values are refused at start with the
//! key, the value and what is allowed.
//!
//! ```yaml
//! etcd: {endpoints: ["http://192.168.10.1:2379"]}
//! clusterPoolIPv4PodCIDRList: [172.20.0.0/16]
//! clusterPoolIPv4MaskSize: 24
//! debug: false
//! ```

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::allocator::{Allocator, PoolError, MAX_MASK};

pub const DEFAULT_MASK_SIZE: u8 = 24;

const POOLS: &str = "clusterPoolIPv4PodCIDRList";
const MASK: &str = "clusterPoolIPv4MaskSize";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config key `{key}`: {message}")]
    Parse { key: String, message: String },
    #[error("config key `{key}`: value {value:?} is not allowed: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

/// The file as written by people; every key optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub etcd: EtcdFile,
    #[serde(rename = "clusterPoolIPv4PodCIDRList")]
    pub cluster_pool_ipv4_pod_cidr_list: Option<Vec<String>>,
    #[serde(rename = "clusterPoolIPv4MaskSize")]
    pub cluster_pool_ipv4_mask_size: Option<u32>,
    pub debug: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EtcdFile {
    pub endpoints: Option<Vec<String>>,
}

/// Flags that override the file (all optional).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// etcd endpoints, comma-separated (`etcd.endpoints`).
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Pools of PodCIDRs, comma-separated (`clusterPoolIPv4PodCIDRList`).
    #[arg(
        long = "cluster-pool-ipv4-cidr",
        value_delimiter = ',',
        value_name = "CIDRS"
    )]
    pub cluster_pool_ipv4_cidr: Option<Vec<String>>,
    /// Prefix length of each node's PodCIDR (`clusterPoolIPv4MaskSize`, default 24).
    #[arg(long, value_name = "BITS")]
    pub cluster_pool_ipv4_mask_size: Option<u32>,
}

/// The validated configuration the operator runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    pub pools: Vec<Ipv4Net>,
    pub mask_size: u8,
    pub debug: bool,
}

impl Config {
    /// Reads `path` (if any), applies the flags and validates the result.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                parse_file(&text)?
            }
            None => FileConfig::default(),
        };
        Self::resolve(file, overrides)
    }

    pub fn resolve(file: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let etcd_endpoints = o
            .etcd_endpoints
            .clone()
            .or(file.etcd.endpoints)
            .unwrap_or_default();
        if etcd_endpoints.is_empty() {
            return Err(ConfigError::Invalid {
                key: "etcd.endpoints",
                value: String::new(),
                allowed: "at least one URL such as http://192.168.10.1:2379 is required".into(),
            });
        }
        if let Some(bad) = etcd_endpoints.iter().find(|e| !valid_endpoint(e)) {
            return Err(ConfigError::Invalid {
                key: "etcd.endpoints",
                value: bad.clone(),
                allowed: "URLs of the form http://HOST:PORT or https://HOST:PORT".into(),
            });
        }

        let pool_texts = o
            .cluster_pool_ipv4_cidr
            .clone()
            .or(file.cluster_pool_ipv4_pod_cidr_list)
            .unwrap_or_default();
        let pools = pool_texts
            .iter()
            .map(|text| {
                text.trim()
                    .parse::<Ipv4Net>()
                    .map_err(|_| ConfigError::Invalid {
                        key: POOLS,
                        value: text.clone(),
                        allowed: "IPv4 CIDRs such as 172.20.0.0/16".into(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mask = o
            .cluster_pool_ipv4_mask_size
            .or(file.cluster_pool_ipv4_mask_size)
            .unwrap_or(u32::from(DEFAULT_MASK_SIZE));
        let longest_pool = pools.iter().map(Ipv4Net::prefix_len).max().unwrap_or(0);
        let mask_allowed = || {
            format!("a prefix length from {longest_pool} (the longest pool prefix) to {MAX_MASK} (a PodCIDR needs room for the router IP, the health endpoint and at least one pod)")
        };
        let mask_size = u8::try_from(mask)
            .ok()
            .filter(|m| *m <= MAX_MASK)
            .ok_or_else(|| ConfigError::Invalid {
                key: MASK,
                value: mask.to_string(),
                allowed: mask_allowed(),
            })?;

        // The allocator owns the rules for pools and mask; name the key here.
        Allocator::new(&pools, mask_size).map_err(|e| match e {
            PoolError::NoPools => ConfigError::Invalid {
                key: POOLS,
                value: String::new(),
                allowed: "at least one IPv4 CIDR such as 172.20.0.0/16 is required".into(),
            },
            PoolError::NotNetwork { pool } => ConfigError::Invalid {
                key: POOLS,
                value: pool.to_string(),
                allowed: format!("network addresses (did you mean {}?)", pool.trunc()),
            },
            PoolError::Overlap { a, b } => ConfigError::Invalid {
                key: POOLS,
                value: format!("{a}, {b}"),
                allowed: format!("pools that do not overlap ({a} and {b} do)"),
            },
            PoolError::MaskShorterThanPool { .. } | PoolError::MaskTooLong { .. } => {
                ConfigError::Invalid {
                    key: MASK,
                    value: mask.to_string(),
                    allowed: mask_allowed(),
                }
            }
        })?;

        Ok(Self {
            etcd_endpoints,
            pools,
            mask_size,
            debug: file.debug.unwrap_or(false),
        })
    }

    /// The allocator for these (validated) pools.
    pub fn allocator(&self) -> Allocator {
        Allocator::new(&self.pools, self.mask_size).expect("validated in resolve")
    }
}

/// Parses the YAML file; errors carry the dotted path of the offending key.
pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError::Parse {
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message,
        }
    })
}

/// `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/` allowed).
fn valid_endpoint(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains(|c: char| c == '/' || c == '@' || c.is_whitespace())
        && port.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "etcd:\n  endpoints: [\"http://127.0.0.1:2379\"]\n";

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::resolve(parse_file(yaml)?, &Overrides::default())
    }

    fn refused(yaml: &str) -> String {
        load(yaml).unwrap_err().to_string()
    }

    #[test]
    fn full_file_is_read_with_defaults() {
        let c = load(&format!(
            "{BASE}clusterPoolIPv4PodCIDRList: [172.20.0.0/16, 10.9.0.0/24]\ndebug: true\n"
        ))
        .unwrap();
        assert_eq!(c.etcd_endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(
            c.pools,
            vec![
                "172.20.0.0/16".parse::<Ipv4Net>().unwrap(),
                "10.9.0.0/24".parse().unwrap()
            ]
        );
        assert_eq!(c.mask_size, 24);
        assert!(c.debug);
    }

    #[test]
    fn flags_override_the_file() {
        let file = parse_file(&format!(
            "{BASE}clusterPoolIPv4PodCIDRList: [172.20.0.0/16]\n"
        ))
        .unwrap();
        let o = Overrides {
            etcd_endpoints: Some(vec!["http://10.0.0.1:2379".into(), "https://h:1".into()]),
            cluster_pool_ipv4_cidr: Some(vec!["10.9.0.0/28".into()]),
            cluster_pool_ipv4_mask_size: Some(29),
        };
        let c = Config::resolve(file, &o).unwrap();
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert_eq!(c.pools, vec!["10.9.0.0/28".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(c.mask_size, 29);
    }

    #[test]
    fn required_keys_are_named() {
        let err = refused("clusterPoolIPv4PodCIDRList: [172.20.0.0/16]\n");
        assert!(
            err.contains("etcd.endpoints") && err.contains("required"),
            "{err}"
        );
        let err = refused(BASE);
        assert!(
            err.contains("clusterPoolIPv4PodCIDRList") && err.contains("required"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = refused(&format!("{BASE}clusterPoolIPv4PodCIDR: [172.20.0.0/16]\n"));
        assert!(
            err.contains("clusterPoolIPv4PodCIDR") && err.contains("clusterPoolIPv4PodCIDRList"),
            "{err}"
        );
        let err = refused("etcd:\n  endpoint: [\"http://127.0.0.1:2379\"]\n");
        assert!(err.contains("etcd") && err.contains("endpoints"), "{err}");
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_allowed() {
        let err = refused(
            "etcd:\n  endpoints: [\"127.0.0.1\"]\nclusterPoolIPv4PodCIDRList: [172.20.0.0/16]\n",
        );
        assert!(
            err.contains("etcd.endpoints") && err.contains("127.0.0.1") && err.contains("http://"),
            "{err}"
        );
        let err = refused(&format!(
            "{BASE}clusterPoolIPv4PodCIDRList: [172.20.0.0/33]\n"
        ));
        assert!(
            err.contains("clusterPoolIPv4PodCIDRList")
                && err.contains("172.20.0.0/33")
                && err.contains("IPv4 CIDR"),
            "{err}"
        );
        let err = refused(&format!("{BASE}clusterPoolIPv4PodCIDRList: [fd00::/64]\n"));
        assert!(err.contains("fd00::/64"), "{err}");
        let err = refused(&format!(
            "{BASE}clusterPoolIPv4PodCIDRList: [172.20.3.0/16]\n"
        ));
        assert!(err.contains("did you mean 172.20.0.0/16"), "{err}");
        let err = refused(&format!(
            "{BASE}clusterPoolIPv4PodCIDRList: [172.20.0.0/16]\nclusterPoolIPv4MaskSize: 30\n"
        ));
        assert!(
            err.contains("clusterPoolIPv4MaskSize")
                && err.contains("\"30\"")
                && err.contains("16")
                && err.contains("to 29")
                && err.contains("health endpoint"),
            "{err}"
        );
        let err = refused(&format!(
            "{BASE}clusterPoolIPv4PodCIDRList: [10.0.0.0/8, 172.20.0.0/16]\nclusterPoolIPv4MaskSize: 12\n"
        ));
        assert!(
            err.contains("clusterPoolIPv4MaskSize") && err.contains("from 16"),
            "{err}"
        );
        let err = refused(&format!("{BASE}clusterPoolIPv4MaskSize: -1\n"));
        assert!(err.contains("clusterPoolIPv4MaskSize"), "{err}");
    }

    #[test]
    fn overlapping_pools_are_refused() {
        let err = refused(&format!(
            "{BASE}clusterPoolIPv4PodCIDRList: [172.20.0.0/16, 172.20.128.0/17]\n"
        ));
        assert!(
            err.contains("clusterPoolIPv4PodCIDRList")
                && err.contains("172.20.0.0/16")
                && err.contains("172.20.128.0/17")
                && err.contains("overlap"),
            "{err}"
        );
    }
}
