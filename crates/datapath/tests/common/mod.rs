//! Shared by the datapath tests: a private bpffs per test and packet builders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// True when running as root; otherwise prints loudly why the test is skipped.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: loading BPF programs needs root (CI runs as root)");
    false
}

/// A bpffs mounted on a fresh temporary directory, unmounted on drop.
pub struct TestBpffs {
    dir: tempfile::TempDir,
}

impl TestBpffs {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ciliate-test-bpffs-")
            .tempdir()
            .unwrap();
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting a private bpffs");
        Self { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestBpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
pub const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
pub const LXC_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa2];
pub const LXC_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];

pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&proto.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ipv4(src: [u8; 4], dst: [u8; 4], ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        0x40,
        0,
        ttl,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn tcp_ports(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x02; // SYN
    t
}

pub fn icmp_echo() -> Vec<u8> {
    let mut i = vec![8, 0, 0, 0, 0, 1, 0, 1];
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    i
}

/// An Ethernet/IPv4 ARP message.
pub fn arp(op: u16, sha: [u8; 6], sip: [u8; 4], tha: [u8; 6], tip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&sip);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tip);
    a
}
