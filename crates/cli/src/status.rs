use std::time::{Duration, SystemTime};

use ciliate_api::{
    Client, ClusterHealth, HealthSummary, KubeProxyReplacementStatus, MasqueradingStatus,
    NodeHealth, PathHealth, ProbeResult, Status,
};

use crate::output::{print_json, Format, OutputArgs};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Also list every allocated address and its owner, and every other
    /// node's health probes (like `cilium-health status`).
    #[arg(long)]
    verbose: bool,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn run(client: &Client, args: &StatusArgs) -> anyhow::Result<()> {
    let uri = if args.verbose {
        "/v1/status?verbose=true"
    } else {
        "/v1/status"
    };
    let status: Status = client.get(uri)?;
    if args.output.format == Format::Json {
        return print_json(&status);
    }
    let row = |k: &str, v: String| println!("{:<24}{v}", format!("{k}:"));
    row("Node", status.node_name.clone());
    row(
        "Agent",
        format!("Ok   {} (up {}s)", status.version, status.uptime_seconds),
    );
    row("Kernel", status.kernel.clone());
    row(
        "KVStore",
        status.kvstore.as_ref().map_or_else(
            || "Disabled".into(),
            |k| format!("{}   {}", k.state, k.message),
        ),
    );
    row("Kubernetes", "Disabled".into());
    row(
        "KubeProxyReplacement",
        kube_proxy_replacement_line(&status.kube_proxy_replacement),
    );
    row("Masquerading", masquerading_line(&status.masquerading));
    row(
        "Host device",
        format!(
            "{} with router IP {} (pod MTU {})",
            status.host_device, status.router_ip, status.mtu
        ),
    );
    let d = &status.datapath;
    row("Datapath mode", d.datapath_mode.clone());
    row("Routing", format!("Mode: {}", d.routing_mode));
    let progs: Vec<String> = d
        .programs
        .iter()
        .map(|p| format!("{} (id {})", p.name, p.id))
        .collect();
    row(
        "BPF programs",
        format!("{} [{}]", progs.join(", "), d.object),
    );
    row("BPF root", d.bpf_root.clone());
    let ipam = &status.ipam;
    row(
        "IPAM",
        format!(
            "IPv4: {}/{} allocated from {} ({})",
            ipam.allocated, ipam.capacity, ipam.cidr, ipam.mode
        ),
    );
    if args.verbose {
        println!("Allocated addresses:");
        println!("  {} (router)", ipam.router);
        for a in &ipam.allocations {
            println!("  {} ({})", a.ip, a.owner);
        }
    }
    row(
        "Endpoints",
        format!("{} ({} ready)", status.endpoints, status.endpoints_ready),
    );
    row("Monitor", format!("{} listeners", status.monitor_listeners));
    row("Cluster health", summary_line(status.cluster_health));
    let Some(summary) = status.cluster_health else {
        return Ok(());
    };
    if !args.verbose && summary.reachable == summary.total {
        return Ok(());
    }
    match client.get::<ClusterHealth>("/v1/health") {
        Ok(health) if args.verbose => {
            for line in health_report(&health, unix_now()) {
                println!("{line}");
            }
        }
        Ok(health) => {
            for line in unreachable_table(&health) {
                println!("{line}");
            }
        }
        Err(e) => println!("  probes unavailable: {e}"),
    }
    Ok(())
}

/// `True [eth0 192.168.10.100]` or `False`, as `cilium status` shows it.
fn kube_proxy_replacement_line(kpr: &KubeProxyReplacementStatus) -> String {
    if !kpr.enabled {
        return "False".into();
    }
    let devices: Vec<String> = kpr
        .devices
        .iter()
        .map(|d| format!("{} {}", d.name, d.ip))
        .collect();
    format!("True [{}]", devices.join(", "))
}

/// `BPF (ip-masq-agent) [eth0 192.168.10.100] 10.200.0.0/16 [IPv4: Enabled]`
/// or `Disabled`, as `cilium status` shows it.
fn masquerading_line(m: &MasqueradingStatus) -> String {
    if !m.enabled {
        return "Disabled".into();
    }
    let agent = if m.ip_masq_agent {
        " (ip-masq-agent)"
    } else {
        ""
    };
    let line = format!("{}{agent}", m.mode);
    let devices: Vec<String> = m
        .devices
        .iter()
        .map(|d| format!("{} {}", d.name, d.ip))
        .collect();
    let cidr = m
        .snat_exclusion_cidr
        .as_ref()
        .map(|c| format!(" {c}"))
        .unwrap_or_default();
    format!("{line} [{}]{cidr} [IPv4: Enabled]", devices.join(", "))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2/3 reachable`, as `cilium status` shows it.
fn summary_line(summary: Option<HealthSummary>) -> String {
    summary.map_or_else(
        || "Disabled".into(),
        |s| format!("{}/{} reachable", s.reachable, s.total),
    )
}

fn probe_ok(p: &PathHealth) -> usize {
    usize::from(p.icmp.ok) + usize::from(p.tcp.ok)
}

fn node_reachable(n: &NodeHealth) -> bool {
    probe_ok(&n.host) == 2 && n.endpoint.as_ref().is_none_or(|e| probe_ok(e) == 2)
}

/// The nodes that failed a probe, with how many of their host's and health
/// endpoint's probes passed, under the summary line (as `cilium status`).
fn unreachable_table(health: &ClusterHealth) -> Vec<String> {
    let rows: Vec<[String; 4]> = health
        .nodes
        .iter()
        .filter(|n| !node_reachable(n))
        .map(|n| {
            [
                n.name.clone(),
                n.host.ip.to_string(),
                format!("{}/2", probe_ok(&n.host)),
                n.endpoint
                    .as_ref()
                    .map_or_else(|| "-".into(), |e| format!("{}/2", probe_ok(e))),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Vec::new();
    }
    let header = ["Name", "IP", "Node", "Endpoints"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 4]| {
        format!(
            "  {:<w0$}   {:<w1$}   {:<w2$}   {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    let mut out = vec![line(header)];
    out.extend(rows.iter().map(|r| line([&r[0], &r[1], &r[2], &r[3]])));
    out
}

/// One probe as `cilium-health status` shows it: `OK, RTT=85µs` or the error.
fn describe(r: &ProbeResult) -> String {
    let failures = match r.failures {
        0 => String::new(),
        1 => " (1 failure)".into(),
        n => format!(" ({n} failures)"),
    };
    if r.ok {
        let rtt = r
            .latency_us
            .map(|us| format!(", RTT={:?}", Duration::from_micros(us)))
            .unwrap_or_default();
        format!("OK{rtt}{failures}")
    } else {
        let error = r.error.as_deref().unwrap_or("failed");
        format!("Failed: {error}{failures}")
    }
}

/// Every other node's probes, like `cilium-health status`.
fn health_report(health: &ClusterHealth, now: u64) -> Vec<String> {
    let when = if health.probed_at == 0 {
        "not probed yet".to_string()
    } else {
        format!("probed {}s ago", now.saturating_sub(health.probed_at))
    };
    let mut out = vec![format!(
        "Cluster health probes ({when}, every {}s):",
        health.interval_seconds
    )];
    if health.nodes.is_empty() {
        out.push("  no other nodes".into());
    }
    let path = |out: &mut Vec<String>, what: &str, p: &PathHealth| {
        out.push(format!("    {what} connectivity to {}:", p.ip));
        out.push(format!("      ICMP to stack:   {}", describe(&p.icmp)));
        out.push(format!("      HTTP to agent:   {}", describe(&p.tcp)));
    };
    for n in &health.nodes {
        let state = if node_reachable(n) {
            "reachable"
        } else {
            "unreachable"
        };
        out.push(format!("  {} ({state}):", n.name));
        path(&mut out, "Host", &n.host);
        match &n.endpoint {
            Some(e) => path(&mut out, "Endpoint", e),
            None => out.push("    Endpoint connectivity: no health endpoint announced".into()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn kube_proxy_replacement_line_like_cilium() {
        let mut kpr = KubeProxyReplacementStatus::default();
        assert_eq!(kube_proxy_replacement_line(&kpr), "False");
        kpr.enabled = true;
        kpr.devices.push(ciliate_api::KprDevice {
            name: "eth0".into(),
            ip: "192.168.10.100".parse().unwrap(),
        });
        assert_eq!(
            kube_proxy_replacement_line(&kpr),
            "True [eth0 192.168.10.100]"
        );
    }

    #[test]
    fn masquerading_line_like_cilium() {
        let mut m = MasqueradingStatus::default();
        assert_eq!(masquerading_line(&m), "Disabled");
        m = MasqueradingStatus {
            enabled: true,
            mode: "BPF".into(),
            devices: vec![ciliate_api::KprDevice {
                name: "eth0".into(),
                ip: "192.168.10.100".parse().unwrap(),
            }],
            snat_exclusion_cidr: Some("10.200.0.0/16".into()),
            ip_masq_agent: true,
        };
        assert_eq!(
            masquerading_line(&m),
            "BPF (ip-masq-agent) [eth0 192.168.10.100] 10.200.0.0/16 [IPv4: Enabled]"
        );
        m.mode = "IPTables".into();
        m.ip_masq_agent = false;
        m.devices.clear();
        m.snat_exclusion_cidr = None;
        assert_eq!(masquerading_line(&m), "IPTables [] [IPv4: Enabled]");
    }

    fn ok(us: u64) -> ProbeResult {
        ProbeResult {
            ok: true,
            latency_us: Some(us),
            error: None,
            failures: 0,
        }
    }

    fn failed(error: &str, failures: u64) -> ProbeResult {
        ProbeResult {
            ok: false,
            latency_us: None,
            error: Some(error.into()),
            failures,
        }
    }

    fn path(ip: [u8; 4], icmp: ProbeResult, tcp: ProbeResult) -> PathHealth {
        PathHealth {
            ip: Ipv4Addr::from(ip),
            icmp,
            tcp,
        }
    }

    fn sample() -> ClusterHealth {
        ClusterHealth {
            probed_at: 1000,
            interval_seconds: 5,
            nodes: vec![
                NodeHealth {
                    name: "node1".into(),
                    host: path([192, 168, 10, 101], ok(85), ok(1234)),
                    endpoint: Some(path([172, 20, 1, 7], ok(90), ok(300))),
                },
                NodeHealth {
                    name: "node2".into(),
                    host: path(
                        [192, 168, 10, 102],
                        ok(70),
                        failed(
                            "connecting to 192.168.10.102:4240: Connection refused (os error 111)",
                            3,
                        ),
                    ),
                    endpoint: None,
                },
            ],
        }
    }

    #[test]
    fn summary_line_reads_like_cilium_status() {
        assert_eq!(
            summary_line(Some(HealthSummary {
                reachable: 2,
                total: 2
            })),
            "2/2 reachable"
        );
        assert_eq!(summary_line(None), "Disabled");
    }

    #[test]
    fn unreachable_table_lists_only_failing_nodes() {
        let lines = unreachable_table(&sample());
        assert_eq!(
            lines,
            [
                "  Name    IP               Node   Endpoints",
                "  node2   192.168.10.102   1/2    -",
            ]
        );
        let mut all_good = sample();
        all_good.nodes.truncate(1);
        assert!(unreachable_table(&all_good).is_empty());
    }

    #[test]
    fn report_reads_like_cilium_health_status() {
        let text = health_report(&sample(), 1003).join("\n");
        assert_eq!(
            text,
            "Cluster health probes (probed 3s ago, every 5s):
  node1 (reachable):
    Host connectivity to 192.168.10.101:
      ICMP to stack:   OK, RTT=85µs
      HTTP to agent:   OK, RTT=1.234ms
    Endpoint connectivity to 172.20.1.7:
      ICMP to stack:   OK, RTT=90µs
      HTTP to agent:   OK, RTT=300µs
  node2 (unreachable):
    Host connectivity to 192.168.10.102:
      ICMP to stack:   OK, RTT=70µs
      HTTP to agent:   Failed: connecting to 192.168.10.102:4240: Connection refused (os error 111) (3 failures)
    Endpoint connectivity: no health endpoint announced"
        );
        let empty = ClusterHealth::default();
        assert_eq!(
            health_report(&empty, 5),
            [
                "Cluster health probes (not probed yet, every 0s):",
                "  no other nodes"
            ]
        );
    }
}
