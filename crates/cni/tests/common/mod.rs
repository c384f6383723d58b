//! Shared by the plugin's integration tests: namespaces that clean up after
//! themselves, running the built plugin as a runtime would, and an agent in a
//! namespace of its own.
#![allow(dead_code)] // each test crate uses a different part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ciliate_datapath::netlink::Link;
use ciliate_datapath::netns;
use ciliate_datapath::testing::TestNetns;
use serde_json::Value;

pub const CNI: &str = env!("CARGO_BIN_EXE_ciliate-cni");

pub use ciliate_datapath::testing::unique;

/// A named network namespace, deleted on drop, with what the plugin's tests ask of it.
pub struct Ns(TestNetns);

impl std::ops::Deref for Ns {
    type Target = TestNetns;

    fn deref(&self) -> &TestNetns {
        &self.0
    }
}

impl Ns {
    pub fn new(tag: &str) -> Self {
        Self(TestNetns::new(tag))
    }

    pub fn path_str(&self) -> String {
        self.path().display().to_string()
    }

    pub fn links(&self) -> Vec<Link> {
        self.netlink().links().expect("list links")
    }

    pub fn link_names(&self) -> Vec<String> {
        self.links().into_iter().map(|l| l.name).collect()
    }

    /// Deletes it now (for "the netns is gone" cases); drop is then a no-op.
    pub fn delete(&self) {
        netns::delete_named(&self.name).expect("delete namespace");
    }
}

/// What one run of the plugin gave.
#[derive(Debug)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// stdout as the one JSON document it must be.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {:?}", self.stdout))
    }

    pub fn code(&self) -> u64 {
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {}", self.stdout))
    }

    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_string()
    }

    /// Asserts a spec-shaped error with `code` whose message contains every one of `parts`.
    #[track_caller]
    pub fn assert_error(&self, code: u64, parts: &[&str]) {
        assert_ne!(self.status, 0, "expected failure, got success: {self:?}");
        let json = self.json();
        assert_eq!(
            json["code"].as_u64(),
            Some(code),
            "wrong code: {json}\nstderr: {}",
            self.stderr
        );
        assert!(json["cniVersion"].is_string(), "{json}");
        let msg = self.msg();
        for part in parts {
            assert!(
                msg.contains(part),
                "message {msg:?} does not contain {part:?}"
            );
        }
    }

    #[track_caller]
    pub fn assert_ok(&self) {
        assert_eq!(
            self.status, 0,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
    }
}

/// One plugin invocation. Runs inside `node` (as a runtime on that node would).
pub struct Run<'a> {
    pub node: Option<&'a Ns>,
    pub env: Vec<(String, String)>,
    pub stdin: String,
}

impl<'a> Run<'a> {
    pub fn new(node: Option<&'a Ns>, command: &str) -> Self {
        Self {
            node,
            env: vec![("CNI_COMMAND".into(), command.into())],
            stdin: String::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn pod(self, container_id: &str, netns: &str, ifname: &str) -> Self {
        self.env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/opt/cni/bin")
    }

    pub fn args(self, namespace: &str, name: &str) -> Self {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=x"
        );
        self.env("CNI_ARGS", &args)
    }

    pub fn stdin(mut self, stdin: impl Into<String>) -> Self {
        self.stdin = stdin.into();
        self
    }

    pub fn run(self) -> Outcome {
        let mut cmd = match self.node {
            Some(node) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", node.path().display())).arg(CNI);
                c
            }
            None => Command::new(CNI),
        };
        for (key, _) in std::env::vars() {
            if key.starts_with("CNI_") || key == ciliate_api::SOCKET_ENV {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run ciliate-cni");
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(self.stdin.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().expect("wait for ciliate-cni");
        Outcome {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A network configuration as libcni passes it for one plugin.
pub fn conf(version: &str, socket: &Path) -> Value {
    serde_json::json!({
        "cniVersion": version,
        "name": "ciliate-test",
        "type": "ciliate",
        "socketPath": socket,
    })
}

/// The host device name the plugin derives (mirrors `veth::host_ifname`).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("lxc{}", &hex.concat()[..11])
}

/// A running `ciliate-agent` in its own node namespace with its own bpffs,
/// state and socket. Everything is removed on drop.
pub struct Agent {
    pub node: Ns,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub health_netns: String,
    pub log: PathBuf,
    pub bpf: PathBuf,
    child: Option<Child>,
}

impl Agent {
    pub fn binary() -> PathBuf {
        Path::new(CNI).with_file_name("ciliate-agent")
    }

    /// Starts an agent for `pod_cidr` and waits until its API answers.
    pub fn start(pod_cidr: &str) -> Self {
        Self::start_with(pod_cidr, "", |_| {})
    }

    /// Starts an agent with `extra` lines in its config, after `prepare`
    /// has set up its node namespace (e.g. a native device).
    pub fn start_with(pod_cidr: &str, extra: &str, prepare: impl FnOnce(&Ns)) -> Self {
        let bin = Self::binary();
        assert!(
            bin.exists(),
            "{} is missing: build it first with `cargo build -p ciliate-agent` (or run `cargo test --workspace`)",
            bin.display()
        );
        let node = Ns::new("cninode");
        prepare(&node);
        let dir = tempfile::tempdir().expect("tempdir");
        let bpf = dir.path().join("bpf");
        std::fs::create_dir(&bpf).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpf)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a bpffs on {}", bpf.display());
        let socket = dir.path().join("ciliate.sock");
        let health_netns = unique("cnihealth");
        let config = dir.path().join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "nodeName: {}\nipv4Range: {pod_cidr}\nbpf:\n  root: {}\nstateDir: {}\nsocketPath: {}\nhealthNetns: {health_netns}\n{extra}",
                node.name,
                bpf.display(),
                dir.path().join("state").display(),
                socket.display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg(&bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start ciliate-agent");
        let mut agent = Self {
            node,
            dir,
            socket,
            health_netns,
            log,
            bpf,
            child: Some(child),
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if client.get::<ciliate_api::Status>("/v1/status").is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("ciliate-agent exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "ciliate-agent did not answer in 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn client(&self) -> ciliate_api::Client {
        ciliate_api::Client::new(&self.socket)
    }

    pub fn status(&self) -> ciliate_api::Status {
        self.client().get("/v1/status").expect("agent status")
    }

    pub fn endpoints(&self) -> Vec<ciliate_api::Endpoint> {
        self.client().get("/v1/endpoint").expect("agent endpoints")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn conf(&self, version: &str) -> Value {
        conf(version, &self.socket)
    }

    /// A plugin run on this agent's node.
    pub fn run(&self, command: &str) -> Run<'_> {
        Run::new(Some(&self.node), command)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first (a clean stop), then SIGKILL.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log_text());
        }
        let _ = netns::delete_named(&self.health_netns);
        // The node namespace goes with `self.node`; its devices take their links with them.
        let _ = nix::mount::umount2(&self.bpf, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// ADD of `container` into `pod` as `ifname`, with the pod's Kubernetes names.
pub fn add(agent: &Agent, conf: &Value, container: &str, pod: &Ns, ifname: &str) -> Outcome {
    agent
        .run("ADD")
        .pod(container, &pod.path_str(), ifname)
        .args("default", container)
        .stdin(conf.to_string())
        .run()
}

pub fn del(agent: &Agent, conf: &Value, container: &str, netns: &str, ifname: &str) -> Outcome {
    agent
        .run("DEL")
        .pod(container, netns, ifname)
        .stdin(conf.to_string())
        .run()
}
