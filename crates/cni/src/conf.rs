//! What the runtime hands the plugin: the `CNI_*` environment and the network
//! configuration on stdin (one plugin entry of a conflist, as libcni passes it).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{code, CniError, CniResult};
use crate::result::{self, CniOutput};

/// The plugin's `type` in a conflist.
pub const PLUGIN_TYPE: &str = "ciliate";
/// Linux's limit on interface names, without the terminating NUL.
pub const IFNAME_MAX: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub const ALL: &'static str = "ADD, DEL, CHECK, GC, STATUS, VERSION";

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }
}

/// `CNI_ARGS`: `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;IgnoreUnknown=1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// Keys we do not know, accepted because `IgnoreUnknown` was set.
    pub ignored: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(text: &str) -> CniResult<Self> {
        let mut args = Self::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS entry {pair:?} is invalid: must be KEY=VALUE, entries separated by ';'"),
                ));
            };
            let value = value.to_string();
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value),
                "K8S_POD_NAME" => args.pod_name = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = Some(value),
                "K8S_POD_UID" => args.pod_uid = Some(value),
                "IgnoreUnknown" => {
                    ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" | "" => false,
                        _ => {
                            return Err(CniError::new(
                                code::INVALID_ENV,
                                format!("CNI_ARGS IgnoreUnknown={value:?} is invalid: must be 1, true, 0 or false"),
                            ))
                        }
                    }
                }
                _ => unknown.push((key.to_string(), value)),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            let keys: Vec<_> = unknown.iter().map(|(k, _)| k.as_str()).collect();
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "CNI_ARGS key {} is not supported: known keys are K8S_POD_NAMESPACE, K8S_POD_NAME, \
                     K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID (set IgnoreUnknown=1 to ignore others)",
                    keys.join(", ")
                ),
            ));
        }
        args.ignored = unknown;
        Ok(args)
    }

    /// `namespace/name` when both are known.
    pub fn pod(&self) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
                Some(format!("{ns}/{name}"))
            }
            _ => None,
        }
    }
}

/// The `CNI_*` environment. Presence is checked per command by the `require_*` methods.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: Option<Command>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: CniArgs,
}

impl Env {
    /// Reads the environment through `var` (the process's, or a test's map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> CniResult<Self> {
        let command = match var("CNI_COMMAND") {
            None => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND is not set: must be one of {}", Command::ALL),
                ))
            }
            Some(value) => Command::parse(&value).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "CNI_COMMAND {value:?} is invalid: must be one of {}",
                        Command::ALL
                    ),
                )
            })?,
        };
        let non_empty = |k: &str| var(k).filter(|v| !v.is_empty());
        Ok(Self {
            command: Some(command),
            container_id: var("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            // CNI_PATH is not read: this plugin delegates to no other plugin.
            args: CniArgs::parse(&var("CNI_ARGS").unwrap_or_default())?,
        })
    }

    pub fn command(&self) -> Command {
        self.command.unwrap_or(Command::Version)
    }

    /// `CNI_CONTAINERID`: set, and shaped as the spec requires.
    pub fn require_container_id(&self) -> CniResult<&str> {
        let id = self.container_id.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID is not set: {} needs it",
                    self.command().as_str()
                ),
            )
        })?;
        validate_container_id(id)?;
        Ok(id)
    }

    /// `CNI_IFNAME`: set and a valid Linux interface name.
    pub fn require_ifname(&self) -> CniResult<&str> {
        let name = self.ifname.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME is not set: {} needs it",
                    self.command().as_str()
                ),
            )
        })?;
        validate_ifname(name)?;
        Ok(name)
    }

    /// `CNI_NETNS`: set and an absolute path (whether it exists is checked on use).
    pub fn require_netns(&self) -> CniResult<&Path> {
        let path = self.netns.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_NETNS is not set: {} needs the container's network namespace path",
                    self.command().as_str()
                ),
            )
        })?;
        if !path.starts_with('/') {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {path:?} is invalid: must be an absolute path such as /var/run/netns/NAME"),
            ));
        }
        Ok(Path::new(path))
    }
}

/// The spec: non-empty, starting with a letter or digit, then letters, digits, `_`, `.`, `-`.
pub fn validate_container_id(id: &str) -> CniResult<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID {id:?} is invalid: must be non-empty, start with a letter or digit \
                 and contain only letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

/// What Linux accepts as an interface name.
pub fn validate_ifname(name: &str) -> CniResult<()> {
    let reason = if name.is_empty() || name.len() > IFNAME_MAX {
        Some("must be 1-15 characters")
    } else if name == "." || name == ".." {
        Some("must not be \".\" or \"..\"")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {name:?} is invalid: {reason}"),
        )),
    }
}

/// One attachment the runtime still holds (GC's `cni.dev/valid-attachments`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The parts of the network configuration we use; the rest is ignored.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub socket_path: PathBuf,
    pub log_file: Option<PathBuf>,
    /// Parsed on demand by [`NetConf::prev_result`]: DEL must not fail on it.
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Parses stdin. JSON errors are code 6, missing or wrong fields code 7,
    /// an unsupported `cniVersion` code 1.
    pub fn parse(stdin: &[u8]) -> CniResult<Self> {
        let map = parse_object(stdin)?;
        let cni_version = required_str(&map, "cniVersion", "a version such as \"1.1.0\"")?;
        if !result::is_supported(&cni_version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {cni_version:?} is not supported: ciliate supports {}",
                    result::SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = required_str(&map, "name", "the network's name")?;
        if !valid_network_name(&name) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "name {name:?} is invalid: must start with a letter or digit and contain only \
                     letters, digits, '_', '.' and '-'"
                ),
            ));
        }
        let kind = required_str(&map, "type", "\"ciliate\"")?;
        if kind != PLUGIN_TYPE {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("type {kind:?} is invalid: this plugin is {PLUGIN_TYPE:?}"),
            ));
        }
        let socket_path =
            optional_path(&map, "socketPath")?.unwrap_or_else(ciliate_api::socket_path);
        let log_file = optional_path(&map, "logFile")?;
        let prev_result = match map.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("prevResult {other} is invalid: must be an object (a CNI result)"),
                ))
            }
        };
        let valid_attachments = match map.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_attachments(v)?),
        };
        Ok(Self {
            cni_version,
            name,
            socket_path,
            log_file,
            prev_result,
            valid_attachments,
        })
    }

    /// The previous plugin's result, decoded.
    pub fn prev_result(&self) -> CniResult<Option<CniOutput>> {
        let Some(v) = &self.prev_result else {
            return Ok(None);
        };
        serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!(
                    "prevResult is not a valid CNI result: {}: {e}",
                    locate_error(v)
                ),
            )
        })
    }
}

/// The first list entry under `ips`, `interfaces`, `routes` that fails to decode.
fn locate_error(v: &Value) -> String {
    for (key, check) in [
        (
            "interfaces",
            (|e: &Value| serde_json::from_value::<result::Interface>(e.clone()).is_ok())
                as fn(&Value) -> bool,
        ),
        ("ips", |e: &Value| {
            serde_json::from_value::<result::IpConfig>(e.clone()).is_ok()
        }),
        ("routes", |e: &Value| {
            serde_json::from_value::<result::RouteEntry>(e.clone()).is_ok()
        }),
    ] {
        match v.get(key) {
            Some(Value::Array(items)) => {
                if let Some(i) = items.iter().position(|e| !check(e)) {
                    return format!("{key}[{i}]");
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => return key.to_string(),
        }
    }
    "prevResult".to_string()
}

fn parse_object(stdin: &[u8]) -> CniResult<Map<String, Value>> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            code::DECODE,
            "the network configuration on stdin is empty: expected a JSON object with cniVersion, name and type",
        ));
    }
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(CniError::new(
            code::DECODE,
            format!(
                "the network configuration on stdin must be a JSON object, not {}",
                json_kind(&other)
            ),
        )),
        Err(e) => Err(CniError::new(
            code::DECODE,
            format!("cannot decode the network configuration on stdin: {e}"),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_str(map: &Map<String, Value>, key: &str, expected: &str) -> CniResult<String> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{key} is missing from the network configuration: expected {expected}"),
        )),
        Some(other) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{key} {other} is invalid: expected {expected}"),
        )),
    }
}

fn optional_path(map: &Map<String, Value>, key: &str) -> CniResult<Option<PathBuf>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.starts_with('/') => Ok(Some(PathBuf::from(s))),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(other) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{key} {other} is invalid: expected an absolute path"),
        )),
    }
}

fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_attachments(v: &Value) -> CniResult<Vec<Attachment>> {
    let invalid = |detail: String| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("cni.dev/valid-attachments is invalid: {detail}"),
        )
    };
    let Value::Array(items) = v else {
        return Err(invalid(format!(
            "expected a list of {{\"containerID\", \"ifname\"}}, got {}",
            json_kind(v)
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |key: &str| match item.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(invalid(format!("entry {i} ({item}) has no string {key:?}"))),
            };
            Ok(Attachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> CniResult<Env> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn cni_args() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;FOO=bar").unwrap();
        assert_eq!(a.pod().as_deref(), Some("default/web-0"));
        assert_eq!(a.pod_infra_container_id.as_deref(), Some("abc"));
        assert_eq!(a.ignored, vec![("FOO".to_string(), "bar".to_string())]);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("K8S_POD_NAME=x;").unwrap().pod(), None);

        let e = CniArgs::parse("K8S_POD_NAME=x;FOO=bar").unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        assert!(
            e.msg.contains("FOO") && e.msg.contains("IgnoreUnknown=1"),
            "{}",
            e.msg
        );
        let e = CniArgs::parse("K8S_POD_NAME").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("\"K8S_POD_NAME\"") && e.msg.contains("KEY=VALUE"),
            "{}",
            e.msg
        );
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=maybe").unwrap_err().code,
            code::INVALID_ENV
        );
    }

    #[test]
    fn environment() {
        let e = env(&[]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_COMMAND is not set"), "{}", e.msg);
        let e = env(&[("CNI_COMMAND", "ADDD")]).unwrap_err();
        assert!(
            e.msg.contains("\"ADDD\"") && e.msg.contains("ADD, DEL"),
            "{}",
            e.msg
        );

        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"),
        ])
        .unwrap();
        assert_eq!(ok.command(), Command::Add);
        assert_eq!(ok.require_container_id().unwrap(), "abc-123");
        assert_eq!(ok.require_ifname().unwrap(), "eth0");
        assert_eq!(ok.require_netns().unwrap(), Path::new("/var/run/netns/x"));

        let missing = env(&[("CNI_COMMAND", "DEL")]).unwrap();
        let e = missing.require_container_id().unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                code::INVALID_ENV,
                "CNI_CONTAINERID is not set: DEL needs it"
            )
        );
        assert!(missing
            .require_netns()
            .unwrap_err()
            .msg
            .starts_with("CNI_NETNS is not set"));
        let rel = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "netns/x")]).unwrap();
        assert!(rel
            .require_netns()
            .unwrap_err()
            .msg
            .contains("absolute path"));
    }

    #[test]
    fn names() {
        assert!(validate_container_id("a").is_ok());
        assert!(validate_container_id("0af3_b.c-d").is_ok());
        for bad in ["", "-a", "a b", "a/b", "é"] {
            let e = validate_container_id(bad).unwrap_err();
            assert!(
                e.msg
                    .starts_with(&format!("CNI_CONTAINERID {bad:?} is invalid")),
                "{}",
                e.msg
            );
        }
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        assert_eq!(
            validate_ifname("").unwrap_err().msg,
            "CNI_IFNAME \"\" is invalid: must be 1-15 characters"
        );
        assert!(validate_ifname("abcdefghijklmnop").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a/b").unwrap_err().msg.contains("'/'"));
        assert!(validate_ifname("a b").is_err());
    }

    #[test]
    fn network_config() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ciliate","socketPath":"/tmp/a.sock",
                "logFile":"/tmp/cni.log","runtimeConfig":{"x":1},"args":{},"somethingElse":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.socket_path, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.log_file, Some(PathBuf::from("/tmp/cni.log")));
        assert!(c.prev_result().unwrap().is_none());

        let c = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"ciliate"}"#).unwrap();
        assert_eq!(c.socket_path, ciliate_api::socket_path());

        let cases: &[(&[u8], u32, &str)] = &[
            (b"", code::DECODE, "empty"),
            (b"{not json", code::DECODE, "cannot decode the network configuration"),
            (b"[1]", code::DECODE, "not an array"),
            (br#"{"name":"n","type":"ciliate"}"#, code::INVALID_CONFIG, "cniVersion is missing"),
            (br#"{"cniVersion":1,"name":"n","type":"ciliate"}"#, code::INVALID_CONFIG, "cniVersion 1 is invalid"),
            (br#"{"cniVersion":"0.2.0","name":"n","type":"ciliate"}"#, code::INCOMPATIBLE_VERSION, "\"0.2.0\" is not supported: ciliate supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
            (br#"{"cniVersion":"1.1.0","type":"ciliate"}"#, code::INVALID_CONFIG, "name is missing"),
            (br#"{"cniVersion":"1.1.0","name":"a b","type":"ciliate"}"#, code::INVALID_CONFIG, "name \"a b\" is invalid"),
            (br#"{"cniVersion":"1.1.0","name":"n","type":"bridge"}"#, code::INVALID_CONFIG, "type \"bridge\" is invalid: this plugin is \"ciliate\""),
            (br#"{"cniVersion":"1.1.0","name":"n","type":"ciliate","socketPath":"rel.sock"}"#, code::INVALID_CONFIG, "socketPath \"rel.sock\" is invalid: expected an absolute path"),
            (br#"{"cniVersion":"1.1.0","name":"n","type":"ciliate","prevResult":[]}"#, code::INVALID_CONFIG, "prevResult [] is invalid"),
            (br#"{"cniVersion":"1.1.0","name":"n","type":"ciliate","cni.dev/valid-attachments":[{"containerID":"a"}]}"#, code::INVALID_CONFIG, "has no string \"ifname\""),
        ];
        for (input, want_code, want_text) in cases {
            let e = NetConf::parse(input).unwrap_err();
            assert_eq!(
                e.code,
                *want_code,
                "{}: {}",
                String::from_utf8_lossy(input),
                e.msg
            );
            assert!(
                e.msg.contains(want_text),
                "{}: {}",
                String::from_utf8_lossy(input),
                e.msg
            );
        }
    }

    #[test]
    fn gc_attachments_and_prev_result() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"ciliate",
                 "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
                 "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.5/32","interface":0}],
                               "interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.as_deref(),
            Some(
                &[Attachment {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                }][..]
            )
        );
        let prev = c.prev_result().unwrap().unwrap();
        assert_eq!(prev.ips[0].address, "10.0.0.5/32");

        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"ciliate",
                 "prevResult":{"ips":[{"address":"10.0.0.5/32"},{"gateway":"10.0.0.1"}]}}"#,
        )
        .unwrap();
        let e = c.prev_result().unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert!(
            e.msg.contains("ips[1]") && e.msg.contains("address"),
            "{}",
            e.msg
        );
    }
}
