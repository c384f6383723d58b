//! A real etcd for tests (and the pieces the lab needs to run one itself).
//!
//! [`EtcdServer::start`] runs Debian's `etcd` as a one-member cluster listening only on
//! `listen_ip` (loopback by default, free ports), with its data in a temporary
//! directory, waits until `/health` says true (about 1 s), and kills it and removes the
//! directory on drop. With `netns` it runs inside that network namespace via
//! `nsenter --net=PATH` (needs root). The lab, which starts long-lived processes its own
//! way, can use [`EtcdOptions::args`] and [`wait_healthy`] directly.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How to run etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `etcd` (looked up in PATH) or a path.
    pub binary: PathBuf,
    /// The member name.
    pub name: String,
    /// The only address etcd listens on (client and peer).
    pub listen_ip: IpAddr,
    /// 0: a free port, chosen in this process's namespace (so give ports with `netns`;
    /// there 0 means etcd's defaults 2379/2380).
    pub client_port: u16,
    pub peer_port: u16,
    /// None: a directory inside a temporary one, removed on drop. Some: used and kept.
    pub data_dir: Option<PathBuf>,
    /// Run inside this network namespace (`/run/netns/NAME`) via `nsenter --net=`.
    pub netns: Option<PathBuf>,
    /// How long to wait for `/health`.
    pub start_timeout: Duration,
    /// Have the kernel kill etcd when the thread that started it exits (so a killed
    /// test run leaves no etcd behind). Turn off to keep etcd beyond that thread.
    pub kill_with_parent: bool,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            binary: "etcd".into(),
            name: "ciliate".into(),
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: 0,
            peer_port: 0,
            data_dir: None,
            netns: None,
            start_timeout: Duration::from_secs(15),
            kill_with_parent: true,
        }
    }
}

impl EtcdOptions {
    /// etcd's command line (without the binary) for these options, ports and data dir.
    pub fn args(&self, client_port: u16, peer_port: u16, data_dir: &Path) -> Vec<OsString> {
        let client = format!("http://{}", SocketAddr::new(self.listen_ip, client_port));
        let peer = format!("http://{}", SocketAddr::new(self.listen_ip, peer_port));
        let mut args: Vec<OsString> = vec!["--data-dir".into(), data_dir.into()];
        for (flag, value) in [
            ("--name", self.name.clone()),
            ("--listen-client-urls", client.clone()),
            ("--advertise-client-urls", client),
            ("--listen-peer-urls", peer.clone()),
            ("--initial-advertise-peer-urls", peer.clone()),
            ("--initial-cluster", format!("{}={peer}", self.name)),
            ("--initial-cluster-state", "new".into()),
            ("--initial-cluster-token", "ciliate".into()),
            ("--logger", "zap".into()),
            ("--log-outputs", "stderr".into()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    #[error("etcd is not installed ({binary} is neither in PATH nor a file): run scripts/install-deps.sh")]
    NotInstalled { binary: PathBuf },
    #[error("cannot find a free port on {ip}")]
    NoPort {
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd exited ({status}) before it was healthy; its log {log} ends with:\n{tail}")]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "etcd at {endpoint} was not healthy after {timeout:?}; its log {log} ends with:\n{tail}"
    )]
    Unhealthy {
        endpoint: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot enter the network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running etcd; stopped (and its temporary directory removed) on drop.
#[derive(Debug)]
pub struct EtcdServer {
    options: EtcdOptions,
    binary: PathBuf,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    _workdir: tempfile::TempDir,
}

impl EtcdServer {
    /// Loopback, free ports, temporary data.
    pub fn start_local() -> Result<Self, EtcdServerError> {
        Self::start(EtcdOptions::default())
    }

    pub fn start(options: EtcdOptions) -> Result<Self, EtcdServerError> {
        let binary = find_binary(&options.binary)?;
        let workdir = tempfile::Builder::new()
            .prefix("ciliate-etcd-")
            .tempdir()
            .map_err(|source| EtcdServerError::Io {
                what: "create a temporary directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| workdir.path().join("data"));
        let log = workdir.path().join("etcd.log");
        let (client_port, peer_port) = if options.netns.is_some() {
            (
                nonzero_or(options.client_port, 2379),
                nonzero_or(options.peer_port, 2380),
            )
        } else {
            let client = port_or_free(options.listen_ip, options.client_port)?;
            let mut peer = port_or_free(options.listen_ip, options.peer_port)?;
            while peer == client {
                peer = port_or_free(options.listen_ip, 0)?;
            }
            (client, peer)
        };
        let mut server = Self {
            options,
            binary,
            child: None,
            client_port,
            peer_port,
            data_dir,
            log,
            _workdir: workdir,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`, for [`crate::EtcdConfig::new`].
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client_addr())
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.options.listen_ip, self.client_port)
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// etcd's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops etcd (SIGTERM, SIGKILL after 5 s) and keeps its data. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills etcd at once (SIGKILL), as a crash would. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data (after `stop` or `kill`).
    pub fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), EtcdServerError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| EtcdServerError::Io {
                what: "open",
                path: self.log.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| EtcdServerError::Io {
            what: "open",
            path: self.log.clone(),
            source,
        })?;
        let mut cmd = match &self.options.netns {
            Some(netns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", netns.display()))
                    .arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        cmd.args(
            self.options
                .args(self.client_port, self.peer_port, &self.data_dir),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(name);
            }
        }
        if self.options.kill_with_parent {
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd.spawn().map_err(|source| EtcdServerError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        self.child = Some(child);
        let addr = self.client_addr();
        let child = self.child.as_mut().expect("just set");
        let result = wait_healthy_or_exit(
            addr,
            self.options.netns.as_deref(),
            self.options.start_timeout,
            Some(child),
        );
        match result {
            Ok(()) => Ok(()),
            Err(Waited::Exited(status)) => {
                self.child = None;
                Err(EtcdServerError::Exited {
                    status,
                    log: self.log.clone(),
                    tail: tail(&self.log),
                })
            }
            Err(Waited::Timeout) => {
                self.kill();
                Err(EtcdServerError::Unhealthy {
                    endpoint: self.endpoint(),
                    timeout: self.options.start_timeout,
                    log: self.log.clone(),
                    tail: tail(&self.log),
                })
            }
            Err(Waited::Netns(path, source)) => {
                self.kill();
                Err(EtcdServerError::Netns { path, source })
            }
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until etcd at `addr` (inside `netns` if given) reports `{"health":"true"}`.
pub fn wait_healthy(
    addr: SocketAddr,
    netns: Option<&Path>,
    timeout: Duration,
) -> Result<(), EtcdServerError> {
    wait_healthy_or_exit(addr, netns, timeout, None).map_err(|e| match e {
        Waited::Netns(path, source) => EtcdServerError::Netns { path, source },
        Waited::Timeout | Waited::Exited(_) => EtcdServerError::Unhealthy {
            endpoint: format!("http://{addr}"),
            timeout,
            log: PathBuf::new(),
            tail: String::new(),
        },
    })
}

enum Waited {
    Timeout,
    Exited(ExitStatus),
    Netns(PathBuf, std::io::Error),
}

fn wait_healthy_or_exit(
    addr: SocketAddr,
    netns: Option<&Path>,
    timeout: Duration,
    mut child: Option<&mut Child>,
) -> Result<(), Waited> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Waited::Exited(status));
            }
        }
        let healthy = match netns {
            None => probe(addr),
            Some(path) => probe_in(path, addr).map_err(|e| Waited::Netns(path.to_owned(), e))?,
        };
        if healthy {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Waited::Timeout);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `GET /health` on etcd's client port.
fn probe(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains(r#""health":"true""#)
}

/// [`probe`] from a short-lived thread that entered `netns` (the thread ends with it,
/// so nothing else runs in the namespace).
fn probe_in(netns: &Path, addr: SocketAddr) -> std::io::Result<bool> {
    let file = File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(probe(addr))
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("health probe thread panicked")))
}

fn find_binary(binary: &Path) -> Result<PathBuf, EtcdServerError> {
    let not_installed = || EtcdServerError::NotInstalled {
        binary: binary.to_owned(),
    };
    if binary.components().count() > 1 {
        return if binary.is_file() {
            Ok(binary.to_owned())
        } else {
            Err(not_installed())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or_else(not_installed)
}

fn nonzero_or(port: u16, default: u16) -> u16 {
    if port == 0 {
        default
    } else {
        port
    }
}

fn port_or_free(ip: IpAddr, port: u16) -> Result<u16, EtcdServerError> {
    if port != 0 {
        return Ok(port);
    }
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| EtcdServerError::NoPort { ip, source })
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
