//! The load tool: a 1-byte echo server and two clients, each on threads that
//! live in a network namespace.
//!
//! - connect-request-close (TCP_CRR-style, [`Mode::Crr`]): connect, send 1
//!   byte, read 1 byte, close; the latency of one connection is the time from
//!   `connect()` to `close()`.
//! - request/response (TCP_RR-style, [`Mode::Rr`]): one connection per loop,
//!   send 1 byte, read 1 byte, again; the latency is one round trip.
//!
//! The server echoes every byte until the client closes, and closes after the
//! client did, so TIME_WAIT stays on the client, whose namespace reuses such
//! ports (`tcp_tw_reuse`).

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ciliate_datapath::netns;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::interrupt;

/// How long an accepting thread blocks before it looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(200);
/// A server connection whose client goes quiet this long is dropped.
const SERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is outside the CPU set"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning a thread to CPU {cpu}"))
}

/// A 1-byte echo server: `threads` threads accepting on one listener.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` inside the namespace at `netns` (the socket keeps that
    /// namespace; the threads need not be in it).
    pub fn start(
        netns: &Path,
        addr: SocketAddrV4,
        threads: usize,
        cpu: Option<usize>,
    ) -> Result<Self> {
        let listener = netns::run_in(netns, move || -> std::io::Result<TcpListener> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::V4(addr).into())?;
            socket.listen(4096)?;
            // accept() honours SO_RCVTIMEO: the threads wake up to see `stop`.
            socket.set_read_timeout(Some(ACCEPT_POLL))?;
            Ok(socket.into())
        })
        .with_context(|| format!("entering {}", netns.display()))?
        .with_context(|| format!("listening on {addr} in {}", netns.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..threads.max(1) {
            let listener = listener.try_clone().context("cloning the listener")?;
            let stop = stop.clone();
            handles.push(std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = pin_to(cpu) {
                        eprintln!("server: {e:#}");
                    }
                }
                accept_loop(&listener, &stop);
            }));
        }
        Ok(Self {
            stop,
            threads: handles,
        })
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => serve(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Out of descriptors or the like: back off instead of spinning.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Echoes byte by byte until the client closes (or goes quiet).
fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(SERVE_TIMEOUT));
    let mut byte = [0u8; 1];
    while matches!(stream.read(&mut byte), Ok(1)) {
        if stream.write_all(&byte).is_err() {
            return;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// What a client loop repeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Connect, 1 byte each way, close (TCP_CRR-style).
    #[default]
    Crr,
    /// 1 byte each way on one connection (TCP_RR-style).
    Rr,
}

/// One client run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub mode: Mode,
    pub netns: PathBuf,
    pub target: SocketAddrV4,
    pub concurrency: usize,
    pub duration: Duration,
    /// Connect and read timeout of one connection.
    pub timeout: Duration,
    pub cpu: Option<usize>,
}

/// What one client run saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rate_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The first error a connection met, if any did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

fn connect(target: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    socket.connect_timeout(&SocketAddr::V4(target).into(), timeout)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    Ok(socket.into())
}

/// One byte there and back.
fn round_trip(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(&[1])?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)
}

/// One connect-request-close exchange.
fn exchange(target: SocketAddrV4, timeout: Duration) -> std::io::Result<()> {
    round_trip(&mut connect(target, timeout)?)
}

fn describe(target: SocketAddrV4, timeout: Duration, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            format!("{target}: no answer within {timeout:?} ({e})")
        }
        _ => format!("{target}: {e}"),
    }
}

/// One exchange from inside `netns`: Ok, or why `target` cannot be reached.
pub fn probe(netns: &Path, target: SocketAddrV4, timeout: Duration) -> Result<Result<(), String>> {
    netns::run_in(netns, move || {
        exchange(target, timeout).map_err(|e| describe(target, timeout, &e))
    })
    .with_context(|| format!("entering {}", netns.display()))
}

/// Runs `concurrency` client loops of `spec.mode` for `duration`.
pub fn run(spec: &LoadSpec) -> Result<Sample> {
    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut handles = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        let spec = spec.clone();
        handles.push(std::thread::spawn(move || -> Result<Worker> {
            let guard = netns::enter(&spec.netns)
                .with_context(|| format!("entering {}", spec.netns.display()))?;
            if let Some(cpu) = spec.cpu {
                pin_to(cpu)?;
            }
            let worker = match spec.mode {
                Mode::Crr => client_loop(spec.target, spec.timeout, deadline),
                Mode::Rr => rr_loop(spec.target, spec.timeout, deadline),
            };
            guard.restore().context("leaving the client namespace")?;
            Ok(worker)
        }));
    }
    let mut latencies = Vec::new();
    let mut sample = Sample::default();
    for handle in handles {
        let worker = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        sample.connections += worker.latencies_ns.len() as u64;
        sample.errors += worker.errors;
        if sample.first_error.is_none() {
            sample.first_error = worker.first_error;
        }
        latencies.extend(worker.latencies_ns);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    sample.seconds = elapsed;
    sample.rate_per_s = sample.connections as f64 / elapsed;
    sample.p50_us = percentile(&latencies, 0.50) as f64 / 1000.0;
    sample.p99_us = percentile(&latencies, 0.99) as f64 / 1000.0;
    Ok(sample)
}

struct Worker {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

fn client_loop(target: SocketAddrV4, timeout: Duration, deadline: Instant) -> Worker {
    let mut worker = Worker {
        latencies_ns: Vec::with_capacity(1 << 16),
        errors: 0,
        first_error: None,
    };
    loop {
        let begin = Instant::now();
        if begin >= deadline || interrupt::interrupted() {
            return worker;
        }
        match exchange(target, timeout) {
            Ok(()) => worker.latencies_ns.push(begin.elapsed().as_nanos() as u64),
            Err(e) => {
                worker.errors += 1;
                if worker.first_error.is_none() {
                    worker.first_error = Some(describe(target, timeout, &e));
                }
                // A failing path fails fast (unreachable, reset): do not spin.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Round trips on one connection; a failed one is counted and the loop
/// connects again.
fn rr_loop(target: SocketAddrV4, timeout: Duration, deadline: Instant) -> Worker {
    let mut worker = Worker {
        latencies_ns: Vec::with_capacity(1 << 16),
        errors: 0,
        first_error: None,
    };
    let mut stream: Option<TcpStream> = None;
    let fail = |worker: &mut Worker, e: &std::io::Error| {
        worker.errors += 1;
        if worker.first_error.is_none() {
            worker.first_error = Some(describe(target, timeout, e));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    loop {
        if Instant::now() >= deadline || interrupt::interrupted() {
            return worker;
        }
        let s = match &mut stream {
            Some(s) => s,
            None => match connect(target, timeout) {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    fail(&mut worker, &e);
                    continue;
                }
            },
        };
        let begin = Instant::now();
        match round_trip(s) {
            Ok(()) => worker.latencies_ns.push(begin.elapsed().as_nanos() as u64),
            Err(e) => {
                stream = None;
                fail(&mut worker, &e);
            }
        }
    }
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), 50);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
