//! ip-masq-agent: the destinations pod traffic reaches with its own address
//! (`nonMasqueradeCIDRs`), as Cilium's ip-masq-agent reads them.
//!
//! The list in force comes from the first source that exists: the store's
//! ConfigMap `kube-system/ip-masq-agent` (`data.config`), the file at
//! `ipMasqAgent.configPath`, the agent's own `ipMasqAgent.config`, else
//! Cilium's default set. Link-local 169.254.0.0/16 is added unless
//! `masqLinkLocal`. This module is pure: parsing and choosing;
//! [`manager`] follows the sources and puts the list in force.

pub mod manager;

use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP_NAME: &str = "ip-masq-agent";
/// The key of the ConfigMap's `data` holding the configuration.
pub const CONFIGMAP_KEY: &str = "config";

/// Cilium's (and the Kubernetes ip-masq-agent's) default nonMasqueradeCIDRs:
/// the private and reserved ranges.
pub const DEFAULT_NON_MASQ_CIDRS: [&str; 11] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
];

/// Never masqueraded unless `masqLinkLocal`.
pub const LINK_LOCAL: &str = "169.254.0.0/16";

/// Where the list in force came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    ConfigMap,
    File(std::path::PathBuf),
    /// `ipMasqAgent.config` of the agent's own file.
    Config,
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConfigMap => write!(f, "configmap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Config => f.write_str("config"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// What is wrong with a source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("nonMasqueradeCIDRs[{index}] {value:?}: {allowed}")]
    Entry {
        index: usize,
        value: String,
        allowed: String,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("the ConfigMap has no data.{CONFIGMAP_KEY} (a JSON or YAML text like {{\"nonMasqueradeCIDRs\":[\"10.10.1.0/24\"]}})")]
    NoConfigKey,
    #[error("cannot read the file: {0}")]
    Read(String),
}

/// A source that cannot be used; the previous list stays in force.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ip-masq-agent: {problem} (in {source_name})")]
pub struct IpMasqError {
    pub source_name: String,
    pub problem: Problem,
}

/// One configuration: `{"nonMasqueradeCIDRs": [...], "masqLinkLocal": false}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqConfig {
    pub non_masquerade_cidrs: Vec<Ipv4Net>,
    pub masq_link_local: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "nonMasqueradeCIDRs", default)]
    non_masquerade_cidrs: Vec<String>,
    #[serde(default)]
    masq_link_local: bool,
    /// Read by Cilium for IPv6, which ciliate does not route.
    #[serde(rename = "masqLinkLocalIPv6", default)]
    _masq_link_local_ipv6: Option<bool>,
    /// The Kubernetes ip-masq-agent's; ciliate follows changes as they come.
    #[serde(rename = "resyncInterval", default)]
    _resync_interval: Option<serde_yaml::Value>,
}

/// One `nonMasqueradeCIDRs` entry; the error says what is allowed.
pub fn parse_entry(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text.trim().parse().map_err(|_| {
        if text.trim().parse::<ipnet::Ipv6Net>().is_ok() {
            "an IPv4 CIDR (ciliate does not route IPv6)".to_string()
        } else {
            "an IPv4 CIDR such as 10.10.1.0/24 (prefix length /0 to /32)".to_string()
        }
    })?;
    crate::config::check_cidr(net, &(0..=32))
}

/// Parses a configuration text (JSON or YAML). Empty text says nothing
/// (`None`), as an absent source: Cilium treats an empty file so.
pub fn parse_text(text: &str) -> Result<Option<MasqConfig>, Problem> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        Problem::Syntax(if path == "." {
            message
        } else {
            format!("{path}: {message}")
        })
    })?;
    let mut cidrs: Vec<Ipv4Net> = Vec::with_capacity(raw.non_masquerade_cidrs.len());
    for (index, value) in raw.non_masquerade_cidrs.iter().enumerate() {
        let net = parse_entry(value).map_err(|allowed| Problem::Entry {
            index,
            value: value.clone(),
            allowed,
        })?;
        if !cidrs.contains(&net) {
            cidrs.push(net);
        }
    }
    Ok(Some(MasqConfig {
        non_masquerade_cidrs: cidrs,
        masq_link_local: raw.masq_link_local,
    }))
}

/// What a source holds, as the manager last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// The text (`data.config`, or the file).
    Present(String),
    /// The ConfigMap exists without `data.config`.
    NoConfigKey,
    /// The file exists but cannot be read.
    Unreadable(String),
}

/// The sources, highest priority first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// `None`: no such ConfigMap.
    pub configmap: Option<Text>,
    /// `None`: no path configured, or no file there.
    pub file: Option<Text>,
    /// `ipMasqAgent.config.nonMasqueradeCIDRs`.
    pub inline: Option<Vec<Ipv4Net>>,
    /// `ipMasqAgent.config.masqLinkLocal`, for the inline and the default list.
    pub inline_masq_link_local: bool,
}

/// A list put in force: the CIDRs the datapath leaves alone, link-local included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    pub source: Source,
    pub cidrs: Vec<Ipv4Net>,
    pub masq_link_local: bool,
}

impl InForce {
    fn new(source: Source, config: MasqConfig) -> Self {
        let mut cidrs = config.non_masquerade_cidrs;
        if !config.masq_link_local {
            let link_local: Ipv4Net = LINK_LOCAL.parse().expect("valid CIDR");
            if !cidrs.contains(&link_local) {
                cidrs.push(link_local);
            }
        }
        Self {
            source,
            cidrs,
            masq_link_local: config.masq_link_local,
        }
    }
}

/// Cilium's defaults, as networks.
pub fn default_cidrs() -> Vec<Ipv4Net> {
    DEFAULT_NON_MASQ_CIDRS
        .iter()
        .map(|c| c.parse().expect("valid default CIDR"))
        .collect()
}

/// The list the sources ask for: the first that exists wins; if it cannot be
/// used the whole update is refused (the caller keeps the previous list).
pub fn effective(inputs: &Inputs, config_path: Option<&Path>) -> Result<InForce, IpMasqError> {
    let candidates = [
        (Source::ConfigMap, inputs.configmap.as_ref()),
        (
            Source::File(config_path.unwrap_or(Path::new("")).to_path_buf()),
            inputs.file.as_ref(),
        ),
    ];
    for (source, text) in candidates {
        let Some(text) = text else { continue };
        let fail = |problem| IpMasqError {
            source_name: source.to_string(),
            problem,
        };
        let parsed = match text {
            Text::Present(text) => parse_text(text).map_err(fail)?,
            Text::NoConfigKey => return Err(fail(Problem::NoConfigKey)),
            Text::Unreadable(why) => return Err(fail(Problem::Read(why.clone()))),
        };
        if let Some(config) = parsed {
            return Ok(InForce::new(source, config));
        }
    }
    let (source, cidrs) = match &inputs.inline {
        Some(list) => (Source::Config, list.clone()),
        None => (Source::Default, default_cidrs()),
    };
    Ok(InForce::new(
        source,
        MasqConfig {
            non_masquerade_cidrs: cidrs,
            masq_link_local: inputs.inline_masq_link_local,
        },
    ))
}

/// `data.config` of the ConfigMap, as a [`Text`].
pub fn configmap_text(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Text {
    cm.data
        .as_ref()
        .and_then(|d| d.get(CONFIGMAP_KEY))
        .map_or(Text::NoConfigKey, |t| Text::Present(t.clone()))
}

/// Reads the file: `None` when it does not exist.
pub fn read_file(path: &Path) -> Option<Text> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(Text::Present(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Text::Unreadable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Ipv4Net> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn json_and_yaml_are_read() {
        let json = parse_text(
            r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24"],"masqLinkLocal":true}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            json.non_masquerade_cidrs,
            nets(&["10.10.1.0/24", "10.10.2.0/24"])
        );
        assert!(json.masq_link_local);
        let yaml = parse_text(
            "nonMasqueradeCIDRs:\n- 10.10.1.0/24\n- 10.10.1.0/24\nresyncInterval: 60s\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(yaml.non_masquerade_cidrs, nets(&["10.10.1.0/24"]));
        assert!(!yaml.masq_link_local);
        assert_eq!(parse_text("  \n").unwrap(), None);
        assert_eq!(
            parse_text("masqLinkLocal: false\n")
                .unwrap()
                .unwrap()
                .non_masquerade_cidrs,
            []
        );
    }

    #[test]
    fn a_bad_entry_is_named_by_index_and_value() {
        let err =
            parse_text(r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24","10.10.1.0/33"]}"#)
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "nonMasqueradeCIDRs[2] \"10.10.1.0/33\": an IPv4 CIDR such as 10.10.1.0/24 (prefix length /0 to /32)"
        );
        let err = parse_text("nonMasqueradeCIDRs: [10.10.1.5/24]").unwrap_err();
        assert!(err.to_string().contains("10.10.1.0/24?"), "{err}");
        let err = parse_text("nonMasqueradeCIDRs: [\"fd00::/8\"]").unwrap_err();
        assert!(err.to_string().contains("IPv6"), "{err}");
        let err = parse_text("nonMasqueradeCIDR: [10.0.0.0/8]").unwrap_err();
        assert!(err.to_string().contains("nonMasqueradeCIDR"), "{err}");
        let err = parse_text("nonMasqueradeCIDRs: [[1]]").unwrap_err();
        assert!(err.to_string().contains("nonMasqueradeCIDRs[0]"), "{err}");
    }

    #[test]
    fn the_first_source_that_exists_wins() {
        let path = Path::new("/etc/ip-masq/config");
        let mut inputs = Inputs {
            inline: Some(nets(&["10.1.0.0/16"])),
            ..Inputs::default()
        };
        let got = effective(&inputs, Some(path)).unwrap();
        assert_eq!(got.source, Source::Config);
        assert_eq!(got.cidrs, nets(&["10.1.0.0/16", "169.254.0.0/16"]));

        inputs.file = Some(Text::Present("nonMasqueradeCIDRs: [10.2.0.0/16]".into()));
        let got = effective(&inputs, Some(path)).unwrap();
        assert_eq!(got.source.to_string(), "file /etc/ip-masq/config");
        assert_eq!(got.cidrs, nets(&["10.2.0.0/16", "169.254.0.0/16"]));

        inputs.configmap = Some(Text::Present(
            r#"{"nonMasqueradeCIDRs":["10.3.0.0/16"],"masqLinkLocal":true}"#.into(),
        ));
        let got = effective(&inputs, Some(path)).unwrap();
        assert_eq!(
            got.source.to_string(),
            "configmap kube-system/ip-masq-agent"
        );
        assert_eq!(got.cidrs, nets(&["10.3.0.0/16"]));
        assert!(got.masq_link_local);

        // An empty ConfigMap text counts as absent.
        inputs.configmap = Some(Text::Present(String::new()));
        assert_eq!(
            effective(&inputs, Some(path)).unwrap().cidrs[0],
            nets(&["10.2.0.0/16"])[0]
        );

        let defaults = effective(&Inputs::default(), None).unwrap();
        assert_eq!(defaults.source, Source::Default);
        assert_eq!(defaults.cidrs.len(), 12);
        assert_eq!(defaults.cidrs[11].to_string(), LINK_LOCAL);
        let with_link_local = effective(
            &Inputs {
                inline_masq_link_local: true,
                ..Inputs::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(with_link_local.cidrs, default_cidrs());
    }

    #[test]
    fn a_broken_source_refuses_the_update() {
        let inputs = Inputs {
            configmap: Some(Text::Present(
                r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24","10.10.1.0/33"]}"#.into(),
            )),
            file: Some(Text::Present("nonMasqueradeCIDRs: [10.2.0.0/16]".into())),
            ..Inputs::default()
        };
        let err = effective(&inputs, None).unwrap_err().to_string();
        assert!(
            err.starts_with("ip-masq-agent: nonMasqueradeCIDRs[2] \"10.10.1.0/33\": ")
                && err.ends_with("(in configmap kube-system/ip-masq-agent)"),
            "{err}"
        );
        let inputs = Inputs {
            configmap: Some(Text::NoConfigKey),
            ..Inputs::default()
        };
        assert!(effective(&inputs, None)
            .unwrap_err()
            .to_string()
            .contains("data.config"));
        let inputs = Inputs {
            file: Some(Text::Unreadable("Permission denied".into())),
            ..Inputs::default()
        };
        let err = effective(&inputs, Some(Path::new("/x")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Permission denied") && err.contains("file /x"),
            "{err}"
        );
    }
}
