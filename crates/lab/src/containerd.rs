//! containerd on a lab node: the real runtime path, where containerd's CRI
//! plugin (through libcni) runs ciliate's CNI plugin, chained with Debian's
//! reference plugins, for every pod sandbox.
//!
//! One containerd per node, started inside the node's network namespace
//! (setns on the network namespace only, like `nsenter --net`; `ip netns exec`
//! would remount /sys and break runc's cgroup lookup), with its root, state,
//! sockets, configuration, CNI directories, runc root and network namespace
//! mounts all under `<lab dir>/<node>/containerd/`, and its pods' cgroups
//! under `/ciliate-lab-<lab>/<node>`. What containerd 1.6 insists on putting
//! elsewhere is named by sandbox id and removed by id: the shims' sockets in
//! `/run/containerd/s` and libcni's result cache in `/var/lib/cni/results`.
//! [`cleanup_lab`] (run by `Lab::down`) removes all of it, so a failed test
//! leaves nothing behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_cri::v1::{LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cri::CriClient;
use crate::error::{io_err, LabError, Result};
use crate::lab::{Lab, CNI_BIN, CNI_TYPE};
use crate::pause_image;
use crate::state::ProcessRecord;
use crate::sys;

/// The directory under each node's directory.
pub const DIR_NAME: &str = "containerd";
/// The containerd namespace CRI works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The conflist's file name in containerd's `conf_dir`.
pub const CONFLIST_NAME: &str = "10-ciliate.conflist";
/// Where Debian's reference plugins live (containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Where containerd 1.6 puts its shims' sockets, whatever its state dir.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// libcni's cache of ADD results (containerd 1.6 cannot move it).
pub const CNI_CACHE_DIR: &str = "/var/lib/cni/results";
/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long containerd may take to serve CRI with its network ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running containerd of a lab node.
#[derive(Debug)]
pub struct Containerd {
    pub node: String,
    /// The node's network namespace, where containerd and every CNI call run.
    pub node_netns: PathBuf,
    pub dir: PathBuf,
    /// CRI and containerd's own API.
    pub socket: PathBuf,
    pub config: PathBuf,
    /// `conf_dir`: holds the one conflist.
    pub conf_dir: PathBuf,
    /// `bin_dir`: ciliate's plugin and the reference plugins, as links.
    pub bin_dir: PathBuf,
    pub log: PathBuf,
    /// The cgroup parent given to every sandbox ([`Containerd::sandbox_config`]).
    pub cgroup_parent: String,
    /// The conflist's network name.
    pub network: String,
    /// The plugin's fault hooks (`CILIATE_CNI_FAULTS`, which containerd
    /// passes on): a file named after a point makes it abort or pause there.
    pub faults_dir: PathBuf,
    pub process: ProcessRecord,
}

/// A runtime's record of one attachment, from libcni's cache file.
#[derive(Clone, Debug)]
pub struct CachedAttachment {
    /// The network list ADD ran.
    pub list: Value,
    /// The last plugin's result.
    pub result: Value,
    /// `portMappings`, `bandwidth`, ... as the runtime passed them.
    pub capability_args: Value,
    pub ifname: String,
}

/// The conflist containerd is given: ciliate alone, or ciliate followed by
/// `portmap` (hostPort, from CRI's port mappings) and `bandwidth` (from the
/// pod's `kubernetes.io/{ingress,egress}-bandwidth` annotations). cniVersion
/// 1.0.0: containerd 1.6's libcni and Debian's plugins know no later one.
pub fn conflist(socket: &Path, log_file: &Path, chained: bool) -> Value {
    let mut list = crate::cni::conflist(socket, log_file);
    list["cniVersion"] = "1.0.0".into();
    if chained {
        if let Some(plugins) = list["plugins"].as_array_mut() {
            plugins.push(json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
                "snat": true,
            }));
            plugins.push(json!({
                "type": "bandwidth",
                "capabilities": {"bandwidth": true},
            }));
        }
    }
    list
}

/// containerd's config.toml: everything under `dir`.
pub fn config_toml(dir: &Path, bin_dir: &Path, conf_dir: &Path) -> String {
    let d = |sub: &str| dir.join(sub).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Plugins that would look at or create paths outside the lab.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # The machine lacks CAP_SYS_RESOURCE: never lower a process's OOM score adj.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
        SystemdCgroup = false
"#,
        root = d("root"),
        state = d("state"),
        socket = dir.join("containerd.sock").display(),
        opt = d("opt"),
        image = pause_image::IMAGE,
        bin_dir = bin_dir.display(),
        conf_dir = conf_dir.display(),
        runc = d("runc"),
    )
}

/// The cgroup parent of the pods of `node` in lab `lab`.
pub fn cgroup_parent(lab: &str, node: &str) -> String {
    format!("/{}/{node}", lab_cgroup(lab))
}

fn lab_cgroup(lab: &str) -> String {
    format!("ciliate-lab-{lab}")
}

impl Containerd {
    /// Starts containerd on `node` with `conflist`, imports the pause image
    /// and waits until CRI answers with the network ready.
    pub fn start(lab: &Lab, node: &str, conflist: &Value) -> Result<Self> {
        let info = lab.node(node)?.clone();
        let dir = info.dir.join(DIR_NAME);
        if dir.exists() {
            return Err(LabError::Exists {
                name: lab.name().to_string(),
                detail: format!(
                    "node {node} has a containerd directory already ({}); stop that one first",
                    dir.display()
                ),
            });
        }
        let bin_dir = dir.join("cni-bin");
        let conf_dir = dir.join("net.d");
        let faults_dir = dir.join("cni-faults");
        for d in [&dir, &bin_dir, &conf_dir, &dir.join("logs"), &faults_dir] {
            std::fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        link_plugins(&bin_dir, &lab.state().bin_dir.join(CNI_BIN))?;
        let conflist_path = conf_dir.join(CONFLIST_NAME);
        let text = serde_json::to_string_pretty(conflist).expect("JSON values serialize");
        std::fs::write(&conflist_path, text).map_err(io_err("writing", &conflist_path))?;
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(&dir, &bin_dir, &conf_dir))
            .map_err(io_err("writing", &config))?;

        let socket = dir.join("containerd.sock");
        let log = dir.join("containerd.log");
        let binary =
            sys::find_program(Path::new("containerd")).ok_or_else(|| LabError::BinaryMissing {
                binary: "containerd (install it with scripts/install-deps.sh)".into(),
                searched: std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .collect(),
            })?;
        let argv = vec![
            binary.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        let process = sys::spawn_detached(&sys::Detached {
            what: format!("containerd of node {node}"),
            netns: &info.netns_path,
            argv: &argv,
            env: &[(
                "CILIATE_CNI_FAULTS".to_string(),
                faults_dir.display().to_string(),
            )],
            env_remove: &[],
            cwd: Some(&dir),
            log: &log,
        })?;
        let me = Self {
            node: node.to_string(),
            node_netns: info.netns_path.clone(),
            dir,
            socket,
            config,
            conf_dir,
            bin_dir,
            log,
            cgroup_parent: cgroup_parent(lab.name(), node),
            network: conflist["name"].as_str().unwrap_or_default().to_string(),
            faults_dir,
            process,
        };
        match me.get_ready(lab.dir()) {
            Ok(()) => Ok(me),
            Err(e) => {
                let _ = me.stop();
                Err(e)
            }
        }
    }

    fn get_ready(&self, lab_dir: &Path) -> Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + START_TIMEOUT;
        let not_ready = |problem: String| LabError::ServiceNotReady {
            what: format!("containerd of node {}", self.node),
            problem,
            log: self.log.clone(),
            log_tail: sys::tail(&self.log, 20),
        };
        loop {
            if !sys::alive(&self.process) {
                return Err(not_ready("exited".into()));
            }
            match client.condition("NetworkReady") {
                Ok((true, _)) => break,
                Ok((false, why)) if Instant::now() >= deadline => {
                    return Err(not_ready(format!("reports the network not ready ({why})")))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(not_ready(format!("does not answer CRI: {e}")))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let archive = pause_image::build(lab_dir)?;
        sys::run_checked(
            "importing the pause image into containerd",
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--namespace", CRI_NAMESPACE, "images", "import"])
                .arg(&archive),
        )?;
        // CRI learns of the image from containerd's events.
        loop {
            match client.image_present(pause_image::IMAGE) {
                Ok(true) => return Ok(()),
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(false) => {
                    return Err(not_ready(format!(
                        "does not list the imported image {}",
                        pause_image::IMAGE
                    )))
                }
                Err(e) => return Err(not_ready(format!("ImageStatus: {e}"))),
            }
        }
    }

    /// A CRI client of this containerd.
    pub fn client(&self) -> Result<CriClient> {
        CriClient::new(&self.socket)
    }

    /// A sandbox config as kubelet would send for pod `namespace/name`,
    /// with this node's cgroup parent and a log directory under ours.
    pub fn sandbox_config(&self, namespace: &str, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{namespace}.{name}.{}", std::process::id()),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self
                .dir
                .join("logs")
                .join(format!("{namespace}_{name}"))
                .display()
                .to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        }
    }

    /// What libcni cached of a sandbox's ADD: what a runtime gives CHECK and DEL.
    pub fn cached_attachment(&self, sandbox_id: &str) -> Result<CachedAttachment> {
        // containerd also caches its loopback network (`cni-loopback-<id>-lo`).
        let prefix = format!("{}-{sandbox_id}-", self.network);
        let path = cni_cache_files(&[sandbox_id])
            .into_iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .ok_or_else(|| LabError::Io {
                action: "finding libcni's cached result in",
                path: PathBuf::from(CNI_CACHE_DIR),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no entry for sandbox {sandbox_id}"),
                ),
            })?;
        let text = std::fs::read(&path).map_err(io_err("reading", &path))?;
        let cached: Value = serde_json::from_slice(&text).map_err(|e| LabError::Io {
            action: "parsing",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        // libcni stores the network list as Go's []byte: standard base64.
        let config: Value = cached["config"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Value::Null);
        Ok(CachedAttachment {
            list: config,
            result: cached["result"].clone(),
            capability_args: cached
                .get("capabilityArgs")
                .cloned()
                .unwrap_or_else(|| json!({})),
            ifname: cached["ifName"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Stops every sandbox through CRI (so CNI DEL runs), then containerd,
    /// and removes everything it made. The first error is returned after
    /// all of it was tried.
    pub fn stop(&self) -> Result<()> {
        let mut first_error = None;
        if sys::alive(&self.process) {
            if let Ok(client) = self.client() {
                for pod in client.list_pod_sandboxes().unwrap_or_default() {
                    let outcome = client
                        .stop_pod_sandbox(&pod.id)
                        .and_then(|()| client.remove_pod_sandbox(&pod.id));
                    if let Err(e) = outcome {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        sys::kill_recorded(&self.process);
        let failures = cleanup(&self.dir, Some(&self.cgroup_parent));
        if let Some(e) = first_error {
            return Err(e);
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(LabError::Leftovers {
                name: format!("containerd of node {}", self.node),
                leftovers: failures,
            })
        }
    }
}

/// Links ciliate's plugin (under its type) and every reference plugin into
/// `bin_dir`: containerd 1.6 takes one plugin directory, and also runs
/// `loopback` from it for every pod.
fn link_plugins(bin_dir: &Path, ciliate_cni: &Path) -> Result<()> {
    let link = |target: &Path, name: &str| {
        let path = bin_dir.join(name);
        std::os::unix::fs::symlink(target, &path).map_err(io_err("linking", path))
    };
    link(ciliate_cni, CNI_TYPE)?;
    let reference = Path::new(REFERENCE_PLUGINS);
    let entries = std::fs::read_dir(reference).map_err(|e| LabError::Io {
        action: "listing the reference CNI plugins (containernetworking-plugins: scripts/install-deps.sh) in",
        path: reference.to_owned(),
        source: e,
    })?;
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str() {
            if name != CNI_TYPE {
                link(&entry.path(), name)?;
            }
        }
    }
    Ok(())
}

/// Removes what the containerd in `dir` made, whether or not it still runs:
/// its processes (containerd, shims, pause processes, found by socket
/// argument, cgroup and network namespace), mounts, the shim sockets and
/// libcni cache entries of its sandboxes, its cgroups and `dir` itself.
/// Returns what could not be removed.
pub fn cleanup(dir: &Path, cgroup_parent: Option<&str>) -> Vec<String> {
    let mut failures = Vec::new();
    let socket = dir.join("containerd.sock");
    let ids: Vec<String> = sandbox_ids(dir).into_iter().collect();
    for _ in 0..3 {
        let mut pids = pids_with_arg(&socket.display().to_string());
        pids.extend(pids_in_netns_mounts(dir));
        if let Some(parent) = cgroup_parent {
            pids.extend(pids_in_cgroup(parent));
        }
        if pids.is_empty() {
            break;
        }
        let left = sys::terminate(&pids, Duration::from_secs(3));
        failures = left.iter().map(|p| format!("process {p}")).collect();
    }
    failures.extend(sys::unmount_all_under(dir));
    for id in &ids {
        let shim = shim_socket(&socket, id);
        remove_file_if_there(&shim, &mut failures);
    }
    for path in cni_cache_files(&ids) {
        remove_file_if_there(&path, &mut failures);
    }
    if let Some(parent) = cgroup_parent {
        failures.extend(remove_cgroups(parent));
    }
    if dir.exists() && sys::mounts_under(dir).is_empty() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            failures.push(format!("{}: {e}", dir.display()));
        }
    }
    failures
}

/// [`cleanup`] for every node's containerd of a lab, and the lab's cgroup.
pub fn cleanup_lab(lab_dir: &Path, lab: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(lab_dir).into_iter().flatten().flatten() {
        let dir = entry.path().join(DIR_NAME);
        if dir.is_dir() {
            let node = entry.file_name().to_string_lossy().into_owned();
            failures.extend(cleanup(&dir, Some(&cgroup_parent(lab, &node))));
        }
    }
    let top = format!("/{}", lab_cgroup(lab));
    for pid in pids_in_cgroup(&top) {
        failures.push(format!("process {pid} in cgroup {top}"));
    }
    failures.extend(remove_cgroups(&top));
    failures
}

/// What of a lab's containerds outlives `Lab::down`'s other checks: its cgroups.
pub fn leftovers(lab: &str) -> Vec<String> {
    cgroup_dirs(&format!("/{}", lab_cgroup(lab)))
        .iter()
        .map(|d| format!("cgroup {}", d.display()))
        .collect()
}

/// The sandbox ids containerd in `dir` knows of (CRI's sandbox directories
/// and the runtime's task bundles).
fn sandbox_ids(dir: &Path) -> BTreeSet<String> {
    let places = [
        dir.join("root/io.containerd.grpc.v1.cri/sandboxes"),
        dir.join("state/io.containerd.grpc.v1.cri/sandboxes"),
        dir.join("state/io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE),
    ];
    places
        .iter()
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// containerd 1.6's shim socket for a task: `/run/containerd/s/` and the
/// SHA-256 of `<containerd address>/<namespace>/<id>`.
pub fn shim_socket(socket: &Path, id: &str) -> PathBuf {
    let key = format!("{}/{CRI_NAMESPACE}/{id}", socket.display());
    Path::new(SHIM_SOCKET_DIR).join(format!("{:x}", Sha256::digest(key.as_bytes())))
}

/// libcni's cache files of these containers: `<network>-<id>-<ifname>`.
fn cni_cache_files<S: AsRef<str>>(ids: &[S]) -> Vec<PathBuf> {
    std::fs::read_dir(CNI_CACHE_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            ids.iter()
                .any(|id| name.contains(&format!("-{}-", id.as_ref())))
        })
        .map(|e| e.path())
        .collect()
}

fn remove_file_if_there(path: &Path, failures: &mut Vec<String>) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => failures.push(format!("{}: {e}", path.display())),
    }
}

/// Processes with `arg` as one of their arguments (shims get `-address <socket>`).
fn pids_with_arg(arg: &str) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// Processes in the network namespaces mounted under `dir` (the pods').
fn pids_in_netns_mounts(dir: &Path) -> BTreeSet<i32> {
    let ids: BTreeSet<sys::NsId> = sys::mounts_under(dir)
        .iter()
        .filter(|m| m.components().any(|c| c.as_os_str() == "netns"))
        .filter_map(|m| sys::ns_id(m))
        .collect();
    sys::pids_in_namespaces(&ids)
}

/// Every directory of cgroup `path` and below, in every hierarchy, deepest first.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir(CGROUP_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        let top = hierarchy.path().join(relative);
        if top.is_dir() {
            walk_dirs(&top, &mut found);
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk_dirs(&entry.path(), out);
        }
    }
}

fn pids_in_cgroup(path: &str) -> BTreeSet<i32> {
    cgroup_dirs(path)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn remove_cgroups(path: &str) -> Vec<String> {
    cgroup_dirs(path)
        .iter()
        .filter_map(|d| match std::fs::remove_dir(d) {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("cgroup {}: {e}", d.display())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_conflist_puts_ciliate_first() {
        let list = conflist(Path::new("/s.sock"), Path::new("/l.log"), true);
        let types: Vec<_> = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ciliate", "portmap", "bandwidth"]);
        assert_eq!(list["cniVersion"], "1.0.0");
    }
}
