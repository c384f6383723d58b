//! `cargo xtask bench per-packet`: what one packet costs on each main path
//! of the datapath, timed by the kernel with `BPF_PROG_TEST_RUN`.
//!
//! The programs are loaded on a private bpffs with the maps written as the
//! agent writes them (two local pods, a remote PodCIDR behind a tunnel
//! endpoint, a ClusterIP and a NodePort service, BPF masquerading), and the
//! packets are the datapath tests' (`ciliate_datapath::packets`). Three
//! figures per path, each the kernel's own `duration`:
//!
//! - `new`: single calls, each with a fresh source port, so every packet is
//!   the first of its flow (conntrack, NAT port choice);
//! - `established`: single calls with the same packet, after a first one
//!   created the flow's state;
//! - `repeat`: one call with `repeat = N` on the established packet. The
//!   kernel reuses one buffer for all N runs, so a path that rewrites the
//!   packet (DNAT, SNAT) sees its own output from the second run on: a lower
//!   bound, shown because it is the classic way to time a program.
//!
//! A path whose first verdict is not the expected one is reported as an
//! error instead of being timed.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use ciliate_datapath::loader::{Datapath, Maps};
use ciliate_datapath::maps::{
    be_addr, ipcache_key, DatapathConfig, EndpointInfo, EndpointKey, IpcacheValue, Lb4Backend,
    Lb4Key, Lb4ReverseNat, Lb4Service, BE_STATE_ACTIVE, IPPROTO_TCP, LB_SCOPE_EXTERNAL, MASQ_F_BPF,
    SVC_F_CLUSTER_IP, SVC_F_NODEPORT,
};
use ciliate_datapath::packets::{tcp_frame, TCP_SYN};
use serde::Serialize;

use crate::ciliate::Bpffs;
use crate::goals::Goal;
use crate::interrupt;

const ROUTER: [u8; 4] = [10, 77, 0, 1];
const POD_A: [u8; 4] = [10, 77, 0, 10];
const POD_B: [u8; 4] = [10, 77, 0, 11];
const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa1];
const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
const LXC_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa2];
const LXC_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
const DEV_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd1];
const NET_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const NODE_IP: [u8; 4] = [192, 168, 10, 1];
const REMOTE_NODE: [u8; 4] = [192, 168, 10, 2];
const REMOTE_POD: [u8; 4] = [10, 78, 0, 20];
const OUTSIDE: [u8; 4] = [192, 168, 10, 100];
const WORLD: [u8; 4] = [10, 10, 1, 200];
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const NODE_PORT: u16 = 30080;
const BE_PORT: u16 = 8080;
/// `BPF_PROG_TEST_RUN` runs a tc program on the loopback: pod A "sends" there.
const TEST_IFINDEX: u32 = 1;
const POD_B_IFINDEX: u32 = 4242;
const TUNNEL_IFINDEX: u32 = 777;
/// Source ports of new flows count up from here (below the NAT range).
const FIRST_PORT: u16 = 20000;

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Single calls per figure (new flows: at most 20,000, one source port each).
    pub packets: u32,
    /// `repeat` of the one repeated call.
    pub repeat: u32,
}

impl Options {
    pub fn validate(&self) -> Result<()> {
        if self.packets == 0 || self.packets > 20_000 {
            anyhow::bail!("--packets: {} is not allowed: give 1..=20000", self.packets);
        }
        if self.repeat == 0 || self.repeat > 10_000_000 {
            anyhow::bail!(
                "--repeat: {} is not allowed: give 1..=10000000",
                self.repeat
            );
        }
        Ok(())
    }
}

/// One path: which program, the packet of flow `sport`, the verdict it must give.
struct Path {
    name: &'static str,
    program: &'static str,
    packet: fn(u16) -> Vec<u8>,
    verdict: u32,
    /// Cilium's cost here for (established, new) in ns (DESIGN.md), if measured.
    cilium: Option<(f64, f64)>,
}

fn from_pod_a(sport: u16, dst: ([u8; 4], u16)) -> Vec<u8> {
    tcp_frame((LXC_A_MAC, POD_A_MAC), (POD_A, sport), dst, TCP_SYN)
}

const PATHS: [Path; 5] = [
    Path {
        name: "pod to pod, same node",
        program: "from_container",
        packet: |sport| from_pod_a(sport, (POD_B, BE_PORT)),
        verdict: TC_ACT_REDIRECT,
        cilium: Some((910.0, 1860.0)),
    },
    Path {
        name: "pod to pod, other node (VXLAN encapsulation)",
        program: "from_container",
        packet: |sport| from_pod_a(sport, (REMOTE_POD, BE_PORT)),
        verdict: TC_ACT_REDIRECT,
        cilium: None,
    },
    Path {
        name: "pod to ClusterIP, local backend",
        program: "from_container",
        packet: |sport| from_pod_a(sport, (CLUSTER_IP, 80)),
        verdict: TC_ACT_REDIRECT,
        cilium: Some((1420.0, 3020.0)),
    },
    Path {
        name: "outside to NodePort, remote backend (DNAT + SNAT + tunnel)",
        program: "from_netdev",
        packet: |sport| {
            tcp_frame(
                (DEV_MAC, NET_MAC),
                (OUTSIDE, sport),
                (NODE_IP, NODE_PORT),
                TCP_SYN,
            )
        },
        verdict: TC_ACT_REDIRECT,
        cilium: Some((1770.0, 3340.0)),
    },
    Path {
        name: "pod to outside (SNAT to the node IP)",
        program: "to_netdev",
        packet: |sport| tcp_frame((NET_MAC, DEV_MAC), (POD_B, sport), (WORLD, 80), TCP_SYN),
        verdict: TC_ACT_OK,
        cilium: Some((1380.0, 2770.0)),
    },
];

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub path: &'static str,
    pub program: &'static str,
    pub new_ns: Option<f64>,
    pub established_ns: Option<f64>,
    pub repeat_ns: Option<f64>,
    /// Cilium's (established, new) on this machine, from DESIGN.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cilium_ns: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: Options,
    pub rows: Vec<Row>,
}

/// The loaded datapath with every map the paths need.
struct Bench {
    datapath: Datapath,
    // Map handles go before the bpffs.
    _maps: Maps,
    _bpffs: Bpffs,
}

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

impl Bench {
    fn load() -> Result<Self> {
        let bpffs = Bpffs::mount()?;
        let root = bpffs.root();
        let datapath = Datapath::open(&root).context("loading ciliate's datapath")?;
        let mut maps = Maps::open(&root).context("opening the pinned maps")?;
        let mut cfg = DatapathConfig::new(ip(ROUTER), false);
        cfg.node_ip = be_addr(ip(NODE_IP));
        cfg.tunnel_ifindex = TUNNEL_IFINDEX;
        cfg.masquerade = MASQ_F_BPF;
        cfg.native_routing_cidr = be_addr(Ipv4Addr::new(172, 20, 0, 0));
        cfg.native_routing_prefixlen = 16;
        maps.config.set(0, cfg, 0).context("writing the config")?;
        for (addr, ifindex, lxc_id, mac, node_mac) in [
            (POD_A, TEST_IFINDEX, 101, POD_A_MAC, LXC_A_MAC),
            (POD_B, POD_B_IFINDEX, 202, POD_B_MAC, LXC_B_MAC),
        ] {
            let info = EndpointInfo {
                ifindex,
                lxc_id,
                flags: 0,
                mac,
                node_mac,
                sec_identity: 0,
            };
            maps.endpoints
                .insert(EndpointKey::new(ip(addr)), info, 0)
                .context("writing an endpoint")?;
        }
        let remote = IpcacheValue {
            sec_identity: 5151,
            tunnel_endpoint: be_addr(ip(REMOTE_NODE)),
            ..IpcacheValue::default()
        };
        let remote_cidr = "10.78.0.0/24".parse().expect("a valid CIDR");
        maps.ipcache
            .insert(&ipcache_key(remote_cidr), remote, 0)
            .context("writing the remote PodCIDR")?;
        // Backend 1: pod B (local); backend 2: the remote pod.
        for (id, addr) in [(1, POD_B), (2, REMOTE_POD)] {
            maps.lb4_backends
                .insert(
                    id,
                    Lb4Backend::new(ip(addr), BE_PORT, IPPROTO_TCP, BE_STATE_ACTIVE),
                    0,
                )
                .context("writing a backend")?;
        }
        for (addr, port, flags, rev, backend) in [
            (CLUSTER_IP, 80, SVC_F_CLUSTER_IP, 1, 1),
            ([0, 0, 0, 0], NODE_PORT, SVC_F_NODEPORT, 2, 2),
        ] {
            let key = |slot| Lb4Key::new(ip(addr), port, IPPROTO_TCP, LB_SCOPE_EXTERNAL, slot);
            let slot = Lb4Service {
                backend_id: backend,
                ..Lb4Service::default()
            };
            maps.lb4_services
                .insert(key(1), slot, 0)
                .context("writing slot 1")?;
            let entry = Lb4Service {
                backend_id: 0,
                rev_nat_index: rev,
                count: 1,
                flags,
                affinity_timeout: 0,
            };
            maps.lb4_services
                .insert(key(0), entry, 0)
                .context("writing slot 0")?;
            maps.lb4_reverse_nat
                .insert(rev, Lb4ReverseNat::new(ip(addr), port), 0)
                .context("writing a reverse NAT")?;
        }
        Ok(Self {
            datapath,
            _maps: maps,
            _bpffs: bpffs,
        })
    }

    /// One call; (verdict, kernel-measured duration per run).
    fn call(&self, program: &str, packet: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let prog = self
            .datapath
            .program(program)
            .with_context(|| format!("program {program} is not loaded"))?;
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        Ok((result.return_value, result.duration))
    }

    fn measure(&self, path: &Path, opts: &Options, flow_base: u16) -> Result<Row> {
        let mut row = Row {
            path: path.name,
            program: path.program,
            new_ns: None,
            established_ns: None,
            repeat_ns: None,
            cilium_ns: path.cilium,
            error: None,
        };
        let check = |verdict: u32, what: &str| -> Result<()> {
            if verdict != path.verdict {
                anyhow::bail!(
                    "{}: {what} gave verdict {verdict}, expected {}: the path is not what it claims",
                    path.name,
                    path.verdict
                );
            }
            Ok(())
        };
        let mut total = Duration::ZERO;
        for i in 0..opts.packets {
            let sport = flow_base.wrapping_add(i as u16);
            let (verdict, took) = self.call(path.program, &(path.packet)(sport), 1)?;
            check(verdict, "a new flow")?;
            total += took;
        }
        row.new_ns = Some(total.as_nanos() as f64 / f64::from(opts.packets));
        // The flow of `flow_base` exists now: its packets are established.
        let packet = (path.packet)(flow_base);
        let mut total = Duration::ZERO;
        for _ in 0..opts.packets {
            let (verdict, took) = self.call(path.program, &packet, 1)?;
            check(verdict, "an established flow")?;
            total += took;
        }
        row.established_ns = Some(total.as_nanos() as f64 / f64::from(opts.packets));
        // No verdict check: after the first run the reused buffer holds the
        // rewritten packet, which may take another path (see the module doc).
        let (_, took) = self.call(path.program, &packet, opts.repeat)?;
        row.repeat_ns = Some(took.as_nanos() as f64);
        Ok(row)
    }
}

pub fn run(opts: &Options) -> Result<Report> {
    opts.validate()?;
    let bench = Bench::load()?;
    let mut rows = Vec::new();
    for path in &PATHS {
        interrupt::check()?;
        // Paths differ in destination, so they share no flow even with the same ports.
        let row = bench
            .measure(path, opts, FIRST_PORT)
            .unwrap_or_else(|e| Row {
                path: path.name,
                program: path.program,
                new_ns: None,
                established_ns: None,
                repeat_ns: None,
                cilium_ns: path.cilium,
                error: Some(format!("{e:#}")),
            });
        eprintln!(
            "per-packet: {}: new {:.0} ns, established {:.0} ns{}",
            row.path,
            row.new_ns.unwrap_or(f64::NAN),
            row.established_ns.unwrap_or(f64::NAN),
            row.error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
        rows.push(row);
    }
    Ok(Report {
        options: opts.clone(),
        rows,
    })
}

/// DESIGN.md's target: at most 0.8x of Cilium's cost, where it was measured.
pub fn goals(report: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    for row in &report.rows {
        if let Some((est, new)) = row.cilium_ns {
            goals.push(Goal::at_most(
                format!("{} / Cilium, established (DESIGN)", row.path),
                row.established_ns.map(|v| v / est),
                0.8,
                "x",
            ));
            goals.push(Goal::at_most(
                format!("{} / Cilium, new flow (DESIGN)", row.path),
                row.new_ns.map(|v| v / new),
                0.8,
                "x",
            ));
        }
    }
    goals
}

pub fn markdown(report: &Report) -> String {
    let o = &report.options;
    let mut md = format!(
        "## Per-packet cost (BPF_PROG_TEST_RUN)\n\nns per packet as the kernel times it: \
         `new` and `established` average {} single calls (a fresh flow each, or the same \
         flow again); `repeat` is one call with repeat={} on the established packet (one \
         reused buffer: a rewriting path sees its own output after the first run). The \
         empty-program floor here is about 95 ns. Cilium's figures (established / new) \
         are from DESIGN.md, measured the same way on this kind of machine.\n\n\
         | path | program | new ns | established ns | repeat ns | Cilium est. / new ns |\n\
         |---|---|---:|---:|---:|---:|\n",
        o.packets, o.repeat
    );
    let ns = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
    for r in &report.rows {
        let cilium = r
            .cilium_ns
            .map_or_else(|| "-".to_string(), |(e, n)| format!("{e:.0} / {n:.0}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {cilium} |",
            r.path,
            r.program,
            ns(r.new_ns),
            ns(r.established_ns),
            ns(r.repeat_ns)
        );
    }
    for r in &report.rows {
        if let Some(e) = &r.error {
            let _ = write!(md, "\n- {}: {e}", r.path);
        }
    }
    md.push('\n');
    md
}
