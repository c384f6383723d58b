//! Helpers shared by the lab's integration tests. Each test file uses some.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ciliate_datapath::netns;

/// How long a VM suite's lab waits for each agent. In the guest (QEMU without
/// KVM) the kernel verifies the datapath's programs in minutes, not a second,
/// and both nodes' agents verify at once on two emulated CPUs.
pub const VM_AGENT_TIMEOUT: Duration = Duration::from_mins(5);

/// A TCP stream from a socket in `netns` to an echo server: sends 1 KiB
/// every millisecond and reads the echo, counting both.
pub struct Stream {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    writer: std::thread::JoinHandle<std::io::Result<u64>>,
    reader: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Stream {
    pub fn start(netns: &std::path::Path, to: SocketAddr) -> Self {
        let stream = netns::run_in(netns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .unwrap()
        .expect("connecting the stream");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut tx = stream.try_clone().unwrap();
        let mut rx = stream;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let writer = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let chunk = [0x5au8; 1024];
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tx.write_all(&chunk)?;
                    sent += chunk.len() as u64;
                    std::thread::sleep(Duration::from_millis(1));
                }
                tx.shutdown(std::net::Shutdown::Write)?;
                Ok(sent)
            })
        };
        let reader = {
            let received = Arc::clone(&received);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = rx.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        };
        Self {
            stop,
            received,
            writer,
            reader,
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops sending; returns (sent, echoed back).
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .writer
            .join()
            .unwrap()
            .expect("the sender never saw a reset or error");
        self.reader
            .join()
            .unwrap()
            .expect("the reader never saw a reset or error");
        (sent, self.received.load(Ordering::Relaxed))
    }
}

/// Runs a command in a node, pod or the router; the exit status is unchecked.
pub fn run(lab: &ciliate_lab::Lab, target: &str, argv: &[&str]) -> std::process::Output {
    lab.exec(target, argv).unwrap()
}

/// Runs a command in a node, pod or the router and returns its stdout;
/// panics with both outputs when it fails.
pub fn ok(lab: &ciliate_lab::Lab, target: &str, argv: &[&str]) -> String {
    let out = run(lab, target, argv);
    assert!(
        out.status.success(),
        "`{}` in {target} failed ({:?}): {}{}",
        argv.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One packet as `tcpdump -n` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub sport: Option<u16>,
    pub dst: Ipv4Addr,
    pub dport: Option<u16>,
    /// What follows `src > dst: `, e.g. `Flags [S], seq ...` or `ICMP echo request, ...`.
    pub info: String,
}

impl Packet {
    /// `12:00:00.000000 IP 192.168.10.100.61000 > 10.10.1.200.80: Flags [S], ...`
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let _time = words.next()?;
        if words.next()? != "IP" {
            return None;
        }
        let (src, sport) = endpoint(words.next()?)?;
        if words.next()? != ">" {
            return None;
        }
        let (dst, dport) = endpoint(words.next()?.strip_suffix(':')?)?;
        Some(Self {
            src,
            sport,
            dst,
            dport,
            info: words.collect::<Vec<_>>().join(" "),
        })
    }

    pub fn is_syn(&self) -> bool {
        self.info.starts_with("Flags [S],")
    }

    pub fn is_syn_ack(&self) -> bool {
        self.info.starts_with("Flags [S.]")
    }
}

/// `a.b.c.d` or `a.b.c.d.port`.
fn endpoint(text: &str) -> Option<(Ipv4Addr, Option<u16>)> {
    if let Ok(ip) = text.parse() {
        return Some((ip, None));
    }
    let (ip, port) = text.rsplit_once('.')?;
    Some((ip.parse().ok()?, Some(port.parse().ok()?)))
}

/// tcpdump on a device of a node, pod or the router, from when it listens
/// until [`Capture::stop`]; killed if dropped.
pub struct Capture {
    child: Option<Child>,
    lines: Option<std::thread::JoinHandle<Vec<String>>>,
    /// What tcpdump says when it stops (packets captured, dropped by the kernel).
    summary: Option<std::thread::JoinHandle<String>>,
}

impl Capture {
    /// On the router's `eth0`, the fabric side.
    pub fn start(lab: &ciliate_lab::Lab, filter: &str) -> Self {
        Self::start_on(lab, "router", "eth0", filter)
    }

    /// On `device` of `target` (a node, pod or the router).
    pub fn start_on(lab: &ciliate_lab::Lab, target: &str, device: &str, filter: &str) -> Self {
        let argv: Vec<String> = [
            "tcpdump",
            "-n",
            "-l",
            "--immediate-mode",
            // A ring big enough for bursts (150 SYNs at once): no kernel drops.
            "-B",
            "32768",
            "-i",
            device,
            filter,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let mut child = lab
            .command(target, &argv)
            .unwrap()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump runs (scripts/install-deps.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        // It says "listening on eth0" on stderr once it captures.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).unwrap_or(0);
            said.push_str(&line);
            if line.contains("listening on") {
                break;
            }
            assert!(n > 0, "tcpdump in {target} did not start: {said}");
        }
        let summary = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            rest
        });
        Self {
            child: Some(child),
            lines: Some(lines),
            summary: Some(summary),
        }
    }

    /// Stops capturing (after a moment for packets on their way) and returns
    /// the packets seen.
    pub fn stop(mut self) -> Vec<Packet> {
        std::thread::sleep(Duration::from_millis(300));
        self.kill();
        let lines = self.lines.take().unwrap().join().unwrap();
        let summary = self.summary.take().unwrap().join().unwrap();
        assert!(
            summary
                .lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump lost packets: {summary}"
        );
        lines.iter().filter_map(|l| Packet::parse(l)).collect()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signals the tcpdump this capture started; SIGINT makes it flush.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pod on `node` that only sleeps: a client to run commands in.
pub fn client_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, command: [sleep, infinity]}}]}}\n"
    )
}

/// `curl` from `from`: the body (the answering pod's name, or the router's
/// `client <address>`) or the failure.
pub fn http(lab: &ciliate_lab::Lab, from: &str, url: &str) -> Result<String, String> {
    let out = run(lab, from, &["curl", "-sS", "--max-time", "5", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`curl {url}` in {from}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
