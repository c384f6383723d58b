//! Calling CNI plugins the way a container runtime (libcni) does: the plugin
//! found by its `type` in `CNI_PATH`, the `CNI_*` environment, the plugin's
//! entry of the conflist on stdin with `name`, `cniVersion` and `prevResult`
//! injected, plugins in order for ADD and in reverse order for DEL.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::error::{LabError, Result};
use crate::sys;

/// The conflist the lab writes for each node.
pub fn conflist(socket: &Path, log_file: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "ciliate",
        "plugins": [{
            "type": "ciliate",
            "socketPath": socket,
            "logFile": log_file,
        }],
    })
}

/// The file name of the conflist in each node's `net.d`.
pub const CONFLIST_NAME: &str = "05-ciliate.conflist";

/// How long one plugin call may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_mins(1);

/// One call of a network list for one pod.
pub struct Invocation<'a> {
    /// `namespace/name`, for messages.
    pub pod: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub container_id: &'a str,
    /// `CNI_NETNS`.
    pub netns_path: &'a Path,
    pub ifname: &'a str,
    /// `CNI_PATH`.
    pub cni_path: &'a str,
    /// The namespace the plugin process runs in (the node's, as the runtime's).
    pub runtime_netns: &'a Path,
}

impl Invocation<'_> {
    /// `CNI_ARGS` as kubelet/containerd set it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.pod_namespace, self.pod_name, self.container_id
        )
    }
}

/// ADD through every plugin of the list; returns the last plugin's result.
pub fn add(list: &Value, inv: &Invocation<'_>) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for plugin in plugins(list, inv)? {
        let config = plugin_config(list, &plugin, prev.as_ref());
        let out = exec_plugin(inv, "ADD", &plugin, &config)?;
        let result: Value = serde_json::from_slice(&out).map_err(|e| LabError::Cni {
            pod: inv.pod.to_string(),
            command: "ADD".into(),
            plugin: plugin_type(&plugin),
            message: format!(
                "its result is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ),
        })?;
        prev = Some(result);
    }
    prev.ok_or_else(|| LabError::Cni {
        pod: inv.pod.to_string(),
        command: "ADD".into(),
        plugin: String::new(),
        message: "the network list has no plugins".into(),
    })
}

/// DEL through every plugin of the list in reverse order, each given the
/// cached result of ADD as `prevResult` (if there is one).
pub fn del(list: &Value, inv: &Invocation<'_>, prev_result: Option<&Value>) -> Result<()> {
    let mut plugins = plugins(list, inv)?;
    plugins.reverse();
    let mut first_error = None;
    for plugin in plugins {
        let config = plugin_config(list, &plugin, prev_result);
        if let Err(e) = exec_plugin(inv, "DEL", &plugin, &config) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// GC (CNI 1.1) through every plugin of the list, as libcni 1.2 runs it:
/// cniVersion 1.1.0 and the attachments to keep, `(container id, ifname)`,
/// as `cni.dev/valid-attachments`. `inv` gives the plugin path and the
/// runtime's namespace; its container fields are not used by GC.
pub fn gc(list: &Value, inv: &Invocation<'_>, keep: &[(String, String)]) -> Result<()> {
    let valid: Vec<Value> = keep
        .iter()
        .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
        .collect();
    for plugin in plugins(list, inv)? {
        let mut config = plugin_config(list, &plugin, None);
        config["cniVersion"] = "1.1.0".into();
        config["cni.dev/valid-attachments"] = Value::Array(valid.clone());
        config["cni.dev/attachments"] = Value::Array(valid.clone());
        exec_plugin(inv, "GC", &plugin, &config)?;
    }
    Ok(())
}

/// CHECK through every plugin of the list in order, each given the cached
/// result of ADD as `prevResult` and, as `runtimeConfig`, the cached
/// capability arguments it declares (libcni's CheckNetworkList does both).
pub fn check(
    list: &Value,
    inv: &Invocation<'_>,
    prev_result: &Value,
    capability_args: &Value,
) -> Result<()> {
    for plugin in plugins(list, inv)? {
        let mut config = plugin_config(list, &plugin, Some(prev_result));
        inject_runtime_config(&mut config, &plugin, capability_args);
        exec_plugin(inv, "CHECK", &plugin, &config)?;
    }
    Ok(())
}

/// Sets `runtimeConfig.<cap>` for each capability the plugin declares
/// (`"capabilities": {"portMappings": true}`) that the runtime has an argument for.
pub fn inject_runtime_config(config: &mut Value, plugin: &Value, capability_args: &Value) {
    let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) else {
        return;
    };
    for (cap, on) in caps {
        if on.as_bool() != Some(true) {
            continue;
        }
        if let Some(arg) = capability_args.get(cap) {
            if let Some(obj) = config.as_object_mut() {
                let rc = obj.entry("runtimeConfig").or_insert_with(|| json!({}));
                rc[cap] = arg.clone();
            }
        }
    }
}

/// The pod's IPv4 address from a CNI result (`ips[].address`).
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let addr = ip.get("address")?.as_str()?;
        addr.parse::<Ipv4Net>()
            .ok()
            .map(|n| n.addr())
            .or_else(|| addr.parse().ok())
    })
}

fn plugins(list: &Value, inv: &Invocation<'_>) -> Result<Vec<Value>> {
    match list.get("plugins").and_then(Value::as_array) {
        Some(p) if !p.is_empty() => Ok(p.clone()),
        _ => Err(LabError::Cni {
            pod: inv.pod.to_string(),
            command: "ADD".into(),
            plugin: String::new(),
            message: "the conflist has no \"plugins\" list".into(),
        }),
    }
}

fn plugin_type(plugin: &Value) -> String {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The plugin's stdin: its conflist entry with the list's `name` and
/// `cniVersion`, and `prevResult` when there is one.
pub fn plugin_config(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut config = plugin.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "name".into(),
            list.get("name").cloned().unwrap_or(Value::Null),
        );
        obj.insert(
            "cniVersion".into(),
            list.get("cniVersion").cloned().unwrap_or(Value::Null),
        );
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
    }
    config
}

/// Finds the plugin binary named `type` in the directories of `CNI_PATH`.
pub fn find_plugin(cni_path: &str, kind: &str) -> Option<PathBuf> {
    if kind.is_empty() || kind.contains('/') {
        return None;
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
}

fn exec_plugin(
    inv: &Invocation<'_>,
    command: &str,
    plugin: &Value,
    config: &Value,
) -> Result<Vec<u8>> {
    let kind = plugin_type(plugin);
    let fail = |message: String| LabError::Cni {
        pod: inv.pod.to_string(),
        command: command.to_string(),
        plugin: kind.clone(),
        message,
    };
    let binary = find_plugin(inv.cni_path, &kind).ok_or_else(|| {
        fail(format!(
            "no executable {kind:?} in CNI_PATH {}",
            inv.cni_path
        ))
    })?;
    let binary_str = binary.to_string_lossy().into_owned();
    let mut cmd = sys::command_in(inv.runtime_netns, &binary_str)?;
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns_path)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.cni_path)
        .env("CNI_ARGS", inv.cni_args())
        .env_remove(ciliate_api::SOCKET_ENV)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
    let stdin_bytes = serde_json::to_vec(config).expect("JSON values serialize");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&stdin_bytes);
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "no answer within {} s; killed it",
                    PLUGIN_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(fail(format!("waiting for it: {e}"))),
        }
    };
    let _ = writer.join();
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    // A spec-shaped error: {"cniVersion", "code", "msg", "details"} on stdout.
    let mut message = match serde_json::from_slice::<Value>(&out) {
        Ok(v) if v.get("code").is_some() => {
            let code = v.get("code").map(ToString::to_string).unwrap_or_default();
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
            let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
            if details.is_empty() {
                format!("error code {code}: {msg}")
            } else {
                format!("error code {code}: {msg} ({details})")
            }
        }
        _ => format!(
            "exited with {status}; stdout: {:?}",
            String::from_utf8_lossy(&out).trim()
        ),
    };
    let err = String::from_utf8_lossy(&err);
    if !err.trim().is_empty() {
        let _ = write!(message, "; stderr: {}", err.trim());
    }
    Err(fail(message))
}
