//! kube-proxy's iptables mode, reproduced: the rule layout it writes for
//! ClusterIP services with one endpoint each, loaded with `iptables-restore`
//! inside the node namespace, the way kube-proxy syncs (one restore of the
//! whole table).
//!
//! The nat table's `KUBE-SERVICES` chain holds one rule per service port,
//! matched in order: a new connection to the last service walks all of them.
//! That linear walk is what the benchmark measures against ciliate's hash lookup.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::catalog::{Service, POD_CIDR};

/// Which iptables kube-proxy's rules go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// iptables-nft (nf_tables): this host's `iptables`, and what
    /// kube-proxy's iptables-wrapper picks on a node without legacy rules.
    Nft,
    /// iptables-legacy (x_tables).
    Legacy,
}

impl Backend {
    pub fn restore_command(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft-restore",
            Self::Legacy => "iptables-legacy-restore",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        }
    }

    /// `iptables v1.8.9 (nf_tables)`: the version line of the backend's iptables.
    pub fn version(self) -> Result<String> {
        let binary = match self {
            Self::Nft => "iptables-nft",
            Self::Legacy => "iptables-legacy",
        };
        let out = Command::new(binary)
            .arg("--version")
            .output()
            .with_context(|| format!("running {binary} --version (is iptables installed?)"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The `filter` and `nat` tables as kube-proxy (1.30, iptables mode, with
/// `--cluster-cidr`) writes them for `services`, each with one ready endpoint.
pub fn ruleset(services: &[Service]) -> String {
    let mut r = String::with_capacity(400 + services.len() * 800);
    r.push_str(FILTER_TABLE);
    r.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-POSTROUTING",
        "KUBE-NODEPORTS",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(r, ":{chain} - [0:0]");
    }
    for svc in services {
        let _ = write!(
            r,
            ":{} - [0:0]\n:{} - [0:0]\n",
            svc.svc_chain(),
            svc.sep_chain()
        );
    }
    r.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for svc in services {
        let _ = writeln!(
            r,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j {chain}",
            vip = svc.vip,
            name = svc.port_name(),
            port = svc.port,
            chain = svc.svc_chain(),
        );
    }
    r.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for svc in services {
        let (svc_chain, sep_chain, name) = (svc.svc_chain(), svc.sep_chain(), svc.port_name());
        let _ = write!(
            r,
            "-A {svc_chain} ! -s {POD_CIDR} -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ\n\
             -A {svc_chain} -m comment --comment \"{name} -> {backend}\" -j {sep_chain}\n\
             -A {sep_chain} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
             -A {sep_chain} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {backend}\n",
            vip = svc.vip,
            port = svc.port,
            backend = svc.backend,
            ip = svc.backend.ip(),
        );
    }
    r.push_str("COMMIT\n");
    r
}

/// kube-proxy's filter table: nothing per service while every service has
/// endpoints, but the hooks that send each new connection through it.
const FILTER_TABLE: &str = "*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m comment --comment \"kubernetes forwarding rules\" -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
";

/// Replaces the filter and nat tables in namespace `netns` with `rules`
/// (`ip netns exec NETNS iptables-*-restore`); returns how long it took.
pub fn restore(netns: &str, backend: Backend, rules: &str) -> Result<Duration> {
    let command = backend.restore_command();
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, command])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command} in {netns}"))?;
    let written = child
        .stdin
        .take()
        .context("the restore's stdin")?
        .write_all(rules.as_bytes());
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {command}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        anyhow::bail!(
            "{command} in {netns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    written.with_context(|| format!("writing the rules to {command}"))?;
    Ok(elapsed)
}

/// Loads kube-proxy's rules for `services` into an emptied table; the
/// returned time covers only loading them.
pub fn program(netns: &str, backend: Backend, services: &[Service]) -> Result<Duration> {
    restore(netns, backend, &ruleset(&[]))?;
    restore(netns, backend, &ruleset(services))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::services;

    #[test]
    fn kube_services_holds_one_rule_per_service_in_order_then_nodeports() {
        let rules = ruleset(&services(3));
        let portals: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(portals.len(), 4, "{rules}");
        assert!(portals[0].contains("-d 10.96.0.1/32") && portals[0].contains("--dport 80"));
        assert!(portals[2].contains("-d 10.96.0.3/32"));
        assert!(portals[3].contains("KUBE-NODEPORTS"), "nodeports last");
        let svc = Service::new(2);
        assert!(rules.contains(&format!(
            "-A {} -m comment --comment \"bench/svc-2:http -> 10.200.0.20:8080\" -j {}",
            svc.svc_chain(),
            svc.sep_chain()
        )));
        assert!(rules.contains(&format!(
            "-A {} -p tcp -m comment --comment \"bench/svc-2:http\" -m tcp -j DNAT --to-destination 10.200.0.20:8080",
            svc.sep_chain()
        )));
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }
}
