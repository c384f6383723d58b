//! Kubernetes YAML as the lab reads it: multi-document files (and `kind: List`),
//! Pods, Services, EndpointSlices and ConfigMaps parsed with the k8s-openapi types and
//! checked, everything else skipped with a warning. Images are ignored: a
//! container is its `command` + `args`.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};
use crate::{names, services};

/// A pod as the lab runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodManifest {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`, not yet checked against the lab's nodes.
    pub node_name: Option<String>,
    /// `spec.hostNetwork`: the pod shares its node's namespace and gets no CNI.
    pub host_network: bool,
    pub containers: Vec<ContainerSpec>,
    /// A digest of the pod as written, to tell an unchanged re-apply from an edit.
    pub spec_hash: String,
    /// The object as written, for the store.
    pub object: Box<Pod>,
}

impl PodManifest {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// `command` followed by `args`; empty when the container has no command.
    pub argv: Vec<String>,
    /// Literal `env` values (`valueFrom` is not supported and is warned about).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
}

/// One object of a manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Pod(PodManifest),
    /// Checked as the API server would; clusterIP and nodePorts are given on apply.
    Service(Box<Service>),
    /// Stored as given (for services without a selector).
    EndpointSlice(Box<EndpointSlice>),
    /// Stored as given (e.g. `kube-system/ip-masq-agent`, which the agents read).
    ConfigMap(Box<ConfigMap>),
    /// A kind the lab does not handle yet.
    Skipped {
        kind: String,
        name: String,
    },
}

/// A parsed manifest: its objects in order and what the reader should know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    pub objects: Vec<Object>,
    pub warnings: Vec<String>,
}

impl Manifest {
    pub fn pods(&self) -> impl Iterator<Item = &PodManifest> {
        self.objects.iter().filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.objects.iter().filter_map(|o| match o {
            Object::Service(s) => Some(s.as_ref()),
            _ => None,
        })
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.objects.iter().filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(s.as_ref()),
            _ => None,
        })
    }
}

/// Parses a (multi-document) Kubernetes YAML text.
pub fn parse(text: &str) -> Result<Manifest> {
    let mut manifest = Manifest::default();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_yaml::Value::deserialize(document).map_err(|e| LabError::Manifest {
            doc,
            message: format!("not valid YAML: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        parse_object(doc, value, &mut manifest)?;
    }
    Ok(manifest)
}

fn parse_object(doc: usize, value: serde_yaml::Value, manifest: &mut Manifest) -> Result<()> {
    let bad = |message: String| LabError::Manifest { doc, message };
    if !value.is_mapping() {
        return Err(bad(format!(
            "expected a Kubernetes object (a mapping with apiVersion and kind), found {}",
            describe(&value)
        )));
    }
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_string)
    };
    let kind =
        field("kind").ok_or_else(|| bad("kind: missing (expected e.g. kind: Pod)".into()))?;
    let api_version = field("apiVersion").ok_or_else(|| {
        bad(format!(
            "apiVersion: missing for kind {kind} (expected e.g. apiVersion: v1)"
        ))
    })?;
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    match kind.as_str() {
        "Pod" => {
            if api_version != "v1" {
                return Err(bad(format!(
                    "apiVersion: {api_version:?} is not valid for kind Pod; allowed: v1"
                )));
            }
            let pod: Pod = serde_path_to_error::deserialize(value)
                .map_err(|e| bad(format!("Pod {name}: {}: {}", e.path(), e.inner())))?;
            let pod = pod_manifest(&pod, &mut manifest.warnings).map_err(|e| match e {
                LabError::Invalid {
                    field,
                    value,
                    allowed,
                } => bad(format!(
                    "Pod {name}: {field} {value:?} is not valid: {allowed}"
                )),
                other => other,
            })?;
            if manifest.pods().any(|p| p.key() == pod.key()) {
                return Err(bad(format!(
                    "Pod {} appears twice in the manifest",
                    pod.key()
                )));
            }
            manifest.objects.push(Object::Pod(pod));
        }
        "Service" => {
            if api_version != "v1" {
                return Err(bad(format!(
                    "apiVersion: {api_version:?} is not valid for kind Service; allowed: v1"
                )));
            }
            let mut svc: Service = serde_path_to_error::deserialize(value)
                .map_err(|e| bad(format!("Service {name}: {}: {}", e.path(), e.inner())))?;
            named(&mut svc.metadata)
                .and_then(|()| services::validate_service(&svc))
                .map_err(|e| in_object(&bad, "Service", &name, e))?;
            let key = services::key_of(&svc.metadata);
            if manifest
                .services()
                .any(|s| services::key_of(&s.metadata) == key)
            {
                return Err(bad(format!("Service {key} appears twice in the manifest")));
            }
            manifest.objects.push(Object::Service(Box::new(svc)));
        }
        "EndpointSlice" => {
            if api_version != "discovery.k8s.io/v1" {
                return Err(bad(format!(
                    "apiVersion: {api_version:?} is not valid for kind EndpointSlice; allowed: discovery.k8s.io/v1"
                )));
            }
            let mut slice: EndpointSlice = serde_path_to_error::deserialize(value)
                .map_err(|e| bad(format!("EndpointSlice {name}: {}: {}", e.path(), e.inner())))?;
            named(&mut slice.metadata)
                .and_then(|()| services::validate_endpoint_slice(&slice))
                .map_err(|e| in_object(&bad, "EndpointSlice", &name, e))?;
            manifest
                .objects
                .push(Object::EndpointSlice(Box::new(slice)));
        }
        "ConfigMap" => {
            if api_version != "v1" {
                return Err(bad(format!(
                    "apiVersion: {api_version:?} is not valid for kind ConfigMap; allowed: v1"
                )));
            }
            let mut map: ConfigMap = serde_path_to_error::deserialize(value)
                .map_err(|e| bad(format!("ConfigMap {name}: {}: {}", e.path(), e.inner())))?;
            named(&mut map.metadata).map_err(|e| in_object(&bad, "ConfigMap", &name, e))?;
            let key = services::key_of(&map.metadata);
            if manifest
                .objects
                .iter()
                .any(|o| matches!(o, Object::ConfigMap(m) if services::key_of(&m.metadata) == key))
            {
                return Err(bad(format!(
                    "ConfigMap {key} appears twice in the manifest"
                )));
            }
            manifest.objects.push(Object::ConfigMap(Box::new(map)));
        }
        "List" => {
            let items = match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                None | Some(serde_yaml::Value::Null) => Vec::new(),
                Some(other) => {
                    return Err(bad(format!(
                        "items: expected a list of objects, found {}",
                        describe(other)
                    )))
                }
            };
            for item in items {
                parse_object(doc, item, manifest)?;
            }
        }
        _ => {
            manifest.warnings.push(format!(
                "document {doc}: skipping {kind} {name}: the lab handles Pods, Services, EndpointSlices and ConfigMaps"
            ));
            manifest.objects.push(Object::Skipped { kind, name });
        }
    }
    Ok(())
}

/// Checks an object's name and namespace, defaulting the namespace.
fn named(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<()> {
    let name = meta.name.clone().unwrap_or_default();
    names::validate_object_name("metadata.name", &name)?;
    let namespace = meta.namespace.get_or_insert_with(|| "default".to_string());
    names::validate_namespace("metadata.namespace", namespace)
}

/// An invalid field, told as part of its object.
fn in_object(bad: &dyn Fn(String) -> LabError, kind: &str, name: &str, e: LabError) -> LabError {
    match e {
        LabError::Invalid {
            field,
            value,
            allowed,
        } => bad(format!(
            "{kind} {name}: {field} {value:?} is not valid: {allowed}"
        )),
        other => other,
    }
}

fn describe(value: &serde_yaml::Value) -> &'static str {
    match value {
        serde_yaml::Value::Null => "nothing",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a mapping",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

fn pod_manifest(pod: &Pod, warnings: &mut Vec<String>) -> Result<PodManifest> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    names::validate_object_name("metadata.name", &name)?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    names::validate_namespace("metadata.namespace", &namespace)?;
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.containers.is_empty() {
        return Err(LabError::Invalid {
            field: "spec.containers".into(),
            value: "[]".into(),
            allowed: "at least one container".into(),
        });
    }
    let mut containers = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        names::validate_namespace(&format!("spec.containers[{i}].name"), &c.name)?;
        if containers.iter().any(|o: &ContainerSpec| o.name == c.name) {
            return Err(LabError::Invalid {
                field: format!("spec.containers[{i}].name"),
                value: c.name.clone(),
                allowed: "a name no other container of the pod has".into(),
            });
        }
        let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
        if argv.is_empty() {
            warnings.push(format!(
                "pod {namespace}/{name}: container {} has no command (images are ignored), nothing runs for it",
                c.name
            ));
        } else {
            argv.extend(c.args.clone().unwrap_or_default());
        }
        let mut env = Vec::new();
        for var in c.env.iter().flatten() {
            if var.value_from.is_some() {
                warnings.push(format!(
                    "pod {namespace}/{name}: container {}: env {} uses valueFrom, which the lab ignores",
                    c.name, var.name
                ));
                continue;
            }
            env.push((var.name.clone(), var.value.clone().unwrap_or_default()));
        }
        let argv = argv.iter().map(|a| expand(a, &env)).collect();
        containers.push(ContainerSpec {
            name: c.name.clone(),
            argv,
            env,
            working_dir: c.working_dir.clone(),
        });
    }
    let json = serde_json::to_vec(pod).expect("Pods always serialize");
    let spec_hash = Sha256::digest(&json)
        .iter()
        .take(16)
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
    Ok(PodManifest {
        namespace,
        name,
        node_name: spec.node_name.clone(),
        host_network: spec.host_network.unwrap_or(false),
        containers,
        spec_hash,
        object: Box::new(pod.clone()),
    })
}

/// Kubernetes' `$(VAR)` expansion in command and args, from the container's
/// env; `$$(VAR)` stays literal `$(VAR)` and unknown names are left as written.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(") {
            if let Some(end) = inner.find(')') {
                let var = &inner[..end];
                match env.iter().rev().find(|(k, _)| k == var) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&tail[..end + 3]),
                }
                rest = &inner[end + 1..];
            } else {
                out.push_str(tail);
                rest = "";
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_kubernetes() {
        let env = vec![("PORT".to_string(), "8080".to_string())];
        assert_eq!(expand("listen:$(PORT)", &env), "listen:8080");
        assert_eq!(expand("$$(PORT)", &env), "$(PORT)");
        assert_eq!(expand("$(NOPE) $HOME $", &env), "$(NOPE) $HOME $");
        assert_eq!(expand("$(PORT", &env), "$(PORT");
    }
}
