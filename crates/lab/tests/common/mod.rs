//! Helpers shared by the lab's integration tests. Each test file uses some.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ciliate_datapath::netns;

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
