//! A one-node cluster for the agent's tests, everything real and removed on
//! drop: a fabric namespace running etcd on 192.168.77.1, a node namespace
//! whose `eth0` (192.168.77.2/24) is a veth to the fabric, the built
//! `ciliate-agent` in the node namespace with its own bpffs, state and
//! socket, and a store client (on a thread inside the fabric namespace) to
//! play the operator and the other nodes.
#![allow(dead_code)] // each test crate uses a different part

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ciliate_datapath::loader::Maps;
use ciliate_datapath::maps::IpcacheValue;
use ciliate_datapath::netlink::Route;
use ciliate_datapath::netns;
use ciliate_datapath::testing::TestNetns;
use ciliate_store::testing::{EtcdOptions, EtcdServer};
use ciliate_store::{CiliateNode, EtcdBackend, EtcdConfig, Object, ObjectKey, Store, WriteMode};
use ipnet::Ipv4Net;

pub const AGENT: &str = env!("CARGO_BIN_EXE_ciliate-agent");
pub const FABRIC_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
pub const WAIT: Duration = Duration::from_mins(1);

pub use ciliate_datapath::testing::unique;

/// A named network namespace, deleted on drop, with what the agent's tests ask of it.
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

    /// `ip netns exec NAME cat /proc/sys/...`: a sysctl as the namespace sees it.
    pub fn sysctl(&self, key: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat"])
            .arg(Path::new("/proc/sys").join(key))
            .output()
            .expect("run ip netns exec");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `ip -n NAME link show DEV`.
    pub fn ip_link(&self, device: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name, "link", "show", device])
            .output()
            .expect("run ip link");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn routes(&self) -> Vec<Route> {
        self.netlink().routes().expect("list routes")
    }

    pub fn route_to(&self, dst: &str) -> Option<Route> {
        let dst: Ipv4Net = dst.parse().unwrap();
        self.routes().into_iter().find(|r| r.dst == dst)
    }
}

/// Runs store calls on a thread that lives in the fabric namespace (where
/// etcd listens), so that the client's connections are made there.
pub struct StoreClient {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &Store) + Send>;

impl StoreClient {
    pub fn new(netns: &Path, endpoint: String) -> Self {
        let file = File::open(netns).expect("open the fabric namespace");
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the fabric namespace");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let store = runtime.block_on(async {
                Store::new(
                    EtcdBackend::connect_lazy(EtcdConfig::new(endpoint))
                        .await
                        .expect("etcd client"),
                )
            });
            for job in rx {
                job(&runtime, &store);
            }
        });
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &Store) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send(Box::new(move |runtime, store| {
                let _ = tx.send(f(runtime, store));
            }))
            .expect("store thread alive");
        rx.recv().expect("store call panicked")
    }

    pub fn get(&self, name: &str) -> ciliate_store::Result<Option<CiliateNode>> {
        let name = name.to_string();
        self.call(move |rt, store| rt.block_on(store.get::<CiliateNode>(None, &name)))
    }

    pub fn put(&self, node: &CiliateNode) -> ciliate_store::Result<CiliateNode> {
        let node = node.clone();
        self.call(move |rt, store| rt.block_on(store.put(&node)))
    }

    pub fn delete(&self, name: &str) -> ciliate_store::Result<bool> {
        let name = name.to_string();
        self.call(move |rt, store| rt.block_on(store.delete::<CiliateNode>(None, &name)))
    }

    /// Writes `value` as it is under the key of CiliateNode `name`.
    pub fn put_raw(&self, name: &str, value: &[u8]) -> ciliate_store::Result<String> {
        let key = ObjectKey::new(CiliateNode::RESOURCE, None, name).unwrap();
        let value = value.to_vec();
        self.call(move |rt, store| rt.block_on(store.backend().write(key, value, WriteMode::Put)))
    }

    /// Plays the operator: sets `spec.ipam.podCIDRs` of the node with a
    /// compare-and-swap update, as the operator does (keeping the agent's lease).
    pub fn assign_pod_cidr(&self, name: &str, cidr: &str) {
        let cidr: ipnet::IpNet = cidr.parse().unwrap();
        wait_for(
            &format!("assigning {cidr} to {name}"),
            WAIT,
            String::new,
            || {
                let mut node = self.get(name).ok()??;
                node.spec.ipam.pod_cidrs = vec![cidr];
                self.put(&node).ok()
            },
        );
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The fabric namespace with etcd, and a node namespace wired to it.
pub struct Net {
    pub client: StoreClient,
    pub etcd: EtcdServer,
    pub node: Ns,
    pub fabric: Ns,
}

impl Net {
    pub fn new() -> Self {
        let fabric = Ns::new("agfab");
        let node = Ns::new("agnode");
        let fnl = fabric.netlink();
        let nnl = node.netlink();
        let fabric_file = File::open(fabric.path()).unwrap();
        nnl.create_veth_with_peer_in("eth0", "fab0", None, fabric_file.as_fd())
            .expect("create the node's eth0");
        for (nl, device, ip) in [(&nnl, "eth0", NODE_IP), (&fnl, "fab0", FABRIC_IP)] {
            let link = nl.link_by_name(device).unwrap().unwrap();
            nl.add_address(link.index, ip, 24).unwrap();
            nl.set_up(link.index).unwrap();
            let lo = nl.link_by_name("lo").unwrap().unwrap();
            nl.set_up(lo.index).unwrap();
        }
        let etcd = EtcdServer::start(EtcdOptions {
            name: unique("agetcd"),
            listen_ip: FABRIC_IP.into(),
            client_port: 2379,
            peer_port: 2380,
            netns: Some(fabric.path()),
            ..EtcdOptions::default()
        })
        .unwrap_or_else(|e| panic!("starting etcd: {}", ciliate_store::report(&e)));
        let client = StoreClient::new(&fabric.path(), etcd.endpoint());
        Self {
            client,
            etcd,
            node,
            fabric,
        }
    }

    pub fn endpoint(&self) -> String {
        self.etcd.endpoint()
    }
}

/// Polls `f` every 100 ms until it gives a value; panics after `timeout`
/// with `context()` (an agent log, say).
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bpffs mounted by a test, unmounted on drop.
pub struct BpffsMount {
    pub path: PathBuf,
}

impl BpffsMount {
    pub fn new(path: &Path) -> Self {
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(path)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a bpffs on {}", path.display());
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A `ciliate-agent` process in a node namespace, with its own bpffs, state
/// and socket (kept across restarts). Killed and cleaned up on drop.
pub struct Agent {
    /// First, so that it is unmounted before `dir` is removed.
    bpffs: BpffsMount,
    pub name: String,
    pub dir: tempfile::TempDir,
    pub bpf: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub health_netns: String,
    netns: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Prepares an agent for the node namespace; `extra` is YAML appended to
    /// the paths and names the harness sets.
    pub fn new(node: &Ns, extra: &str) -> Self {
        let name = unique("node");
        let dir = tempfile::tempdir().expect("tempdir");
        let bpf = dir.path().join("bpf");
        std::fs::create_dir(&bpf).unwrap();
        // Unmounted by its guard from here on, whatever fails next.
        let bpffs = BpffsMount::new(&bpf);
        let socket = dir.path().join("ciliate.sock");
        let health_netns = unique("aghealth");
        let config = dir.path().join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "nodeName: {name}\nbpf:\n  root: {}\nstateDir: {}\nsocketPath: {}\nhealthNetns: {health_netns}\n{extra}",
                bpf.display(),
                dir.path().join("state").display(),
                socket.display(),
            ),
        )
        .unwrap();
        Self {
            bpffs,
            name,
            log: dir.path().join("agent.log"),
            dir,
            bpf,
            socket,
            config,
            health_netns,
            netns: node.path(),
            child: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts the process (without waiting for anything).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(AGENT)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ciliate-agent");
        self.child = Some(child);
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until the API answers.
    pub fn wait_ready(&mut self) -> ciliate_api::Status {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(status) = self.client().get::<ciliate_api::Status>("/v1/status") {
                return status;
            }
            if let Some(status) = self.exited() {
                panic!("ciliate-agent exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "ciliate-agent did not answer in {WAIT:?}:\n{}",
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

    pub fn nodes(&self) -> Vec<ciliate_api::Node> {
        self.client().get("/v1/node").expect("agent nodes")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn maps(&self) -> Maps {
        Maps::open(&self.bpf).expect("open the agent's pinned maps")
    }

    /// Every ipcache entry, exactly (a lookup would match the longest prefix).
    pub fn ipcache(&self) -> BTreeMap<Ipv4Net, IpcacheValue> {
        let maps = self.maps();
        let mut out = BTreeMap::new();
        for item in &maps.ipcache {
            let (key, value) = item.expect("read the ipcache");
            let ip = Ipv4Addr::from(key.data().to_ne_bytes());
            out.insert(Ipv4Net::new(ip, key.prefix_len() as u8).unwrap(), value);
        }
        out
    }

    /// Stops the process: SIGTERM (a clean stop) or SIGKILL (a crash).
    pub fn stop(&mut self, crash: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if !crash {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(true);
        if std::thread::panicking() || std::env::var_os("CILIATE_TEST_AGENT_LOG").is_some() {
            eprintln!("--- agent log ---\n{}", self.log_text());
        }
        let _ = netns::delete_named(&self.health_netns);
        // The bpffs guard (the first field) unmounts next.
    }
}
