//! iperf3 in the benchmark's namespaces: a server kept for the whole run and
//! one client run per measurement (`-J`, read back as JSON). Both are entered
//! into a namespace with `nsenter --net=`, which (unlike `ip netns exec`)
//! leaves the mount namespace alone.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// The port iperf3 listens on in the server pod (its default).
pub const PORT: u16 = 5201;
/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

fn in_netns(netns: &Path, cpu: Option<usize>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg("iperf3");
    if let Some(cpu) = cpu {
        cmd.args(["-A", &cpu.to_string()]);
    }
    cmd
}

/// `iperf3 -s` in a namespace, killed on drop.
pub struct Server {
    child: Child,
}

impl Server {
    pub fn start(netns: &Path, bind: Ipv4Addr, cpu: Option<usize>) -> Result<Self> {
        let child = in_netns(netns, cpu)
            .args(["-s", "-B", &bind.to_string(), "-p", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (is iperf3 installed? scripts/install-deps.sh)")?;
        let mut server = Self { child };
        let addr = SocketAddrV4::new(bind, PORT);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let listening = ciliate_datapath::netns::run_in(netns, move || {
                std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200))
                    .is_ok()
            })
            .with_context(|| format!("entering {}", netns.display()))?;
            if listening {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("iperf3 -s on {addr} exited at once ({status})");
            }
            if Instant::now() >= deadline {
                anyhow::bail!("iperf3 -s is not listening on {addr} after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client run reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    /// Received by the server, over the whole run.
    pub bits_per_second: f64,
    /// TCP retransmits the sender counted (on veth mostly reordering).
    pub retransmits: u64,
}

/// One stream from `netns` to `server` for `seconds`.
pub fn run(netns: &Path, server: Ipv4Addr, seconds: f64, cpu: Option<usize>) -> Result<Throughput> {
    let secs = seconds.ceil().max(1.0) as u64;
    let out = in_netns(netns, cpu)
        .args(["-c", &server.to_string(), "-p", &PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J"])
        .stdin(Stdio::null())
        .output()
        .context("running iperf3 -c")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 -c {server} printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(error) = json["error"].as_str() {
        anyhow::bail!("iperf3 -c {server}: {error}");
    }
    let bits_per_second = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 -c {server}: no end.sum_received in its JSON"))?;
    Ok(Throughput {
        bits_per_second,
        retransmits: json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}
