//! Masquerading with iptables (`bpf.masquerade: false`): the agent owns the
//! nat chain `CILIATE_POST_nat`, jumped to from POSTROUTING, as Cilium owns
//! `CILIUM_POST_nat`. The datapath hands pod traffic that leaves the node
//! through the FIB to the stack, so netfilter sees it here.
//!
//! The chain is rewritten whole with `iptables-restore --noflush`: declaring
//! `:CILIATE_POST_nat - [0:0]` empties it in the same transaction that
//! refills it, so no packet sees half a chain, and rewriting the same rules
//! changes nothing. The jump is added only if missing. Everything runs in
//! the agent's network namespace (the node's).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use ciliate_api::Node;
use ipnet::Ipv4Net;
use tracing::info;

use crate::ipmasq::manager::Enforcer;

pub const CHAIN: &str = "CILIATE_POST_nat";
/// The comment on the jump, so it is found and removed exactly.
pub const JUMP_COMMENT: &str = "ciliate-feeder: CILIATE_POST_nat";
pub const MASQUERADE_COMMENT: &str = "ciliate masquerade non-cluster";

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// What the chain is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    /// This node's PodCIDR: the sources masqueraded.
    pub pod_cidr: Ipv4Net,
    /// The native device traffic leaves by; `None`: any but ours.
    pub device: Option<String>,
    /// `ipv4NativeRoutingCIDR`: when set, it stands for the cluster's pods.
    pub native_routing_cidr: Option<Ipv4Net>,
}

/// The `iptables-restore` input for the chain: RETURN for ip-masq-agent's
/// list, for the cluster (the native routing CIDR, else every node's PodCIDR)
/// and the other nodes' addresses, then MASQUERADE for the rest of this
/// node's pods' traffic leaving by the native device.
pub fn rules(spec: &ChainSpec, non_masq: &[Ipv4Net], nodes: &[Node]) -> String {
    let mut out = format!("*nat\n:{CHAIN} - [0:0]\n");
    let mut ret = |net: &Ipv4Net, why: &str| {
        let _ = writeln!(
            out,
            "-A {CHAIN} -d {net} -m comment --comment \"ciliate: {why}\" -j RETURN"
        );
    };
    for net in non_masq {
        ret(net, "ip-masq-agent nonMasqueradeCIDRs");
    }
    let mut cluster: Vec<Ipv4Net> = Vec::new();
    if let Some(net) = spec.native_routing_cidr {
        cluster.push(net);
    } else {
        cluster.push(spec.pod_cidr);
        cluster.extend(nodes.iter().flat_map(|n| n.pod_cidrs.iter().copied()));
    }
    let mut seen = Vec::new();
    for net in cluster {
        if !seen.contains(&net) {
            ret(&net, "cluster pods");
            seen.push(net);
        }
    }
    for ip in nodes.iter().filter_map(|n| n.internal_ip) {
        let net = Ipv4Net::from(ip);
        if !seen.contains(&net) {
            ret(&net, "cluster node");
            seen.push(net);
        }
    }
    let out_dev = spec
        .device
        .as_ref()
        .map_or_else(|| "! -o ciliate_+".to_string(), |d| format!("-o {d}"));
    let _ = writeln!(
        out,
        "-A {CHAIN} -s {} {out_dev} -m comment --comment \"{MASQUERADE_COMMENT}\" -j MASQUERADE",
        spec.pod_cidr
    );
    out.push_str("COMMIT\n");
    out
}

fn describe(program: &str, args: &[&str]) -> String {
    format!("{program} {}", args.join(" "))
}

/// Runs a command; `Ok(false)` when it ran and failed (for checks).
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<bool, IptablesError> {
    let out = output(program, args, stdin)?;
    Ok(out.status.success())
}

fn output(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, IptablesError> {
    let spawn = |source| IptablesError::Spawn {
        command: describe(program, args),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    child.wait_with_output().map_err(spawn)
}

fn must(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), IptablesError> {
    let out = output(program, args, stdin)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IptablesError::Failed {
            command: describe(program, args),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

const JUMP: [&str; 6] = ["-m", "comment", "--comment", JUMP_COMMENT, "-j", CHAIN];

fn jump_args<'a>(action: &'a str, position: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec!["-w", "-t", "nat", action, "POSTROUTING"];
    args.extend(position);
    args.extend(JUMP);
    args
}

/// Writes the chain (atomically) and makes sure POSTROUTING jumps to it once.
pub fn install(rules: &str) -> Result<(), IptablesError> {
    must("iptables-restore", &["-w", "--noflush"], Some(rules))?;
    if !run("iptables", &jump_args("-C", None), None)? {
        must("iptables", &jump_args("-I", Some("1")), None)?;
    }
    Ok(())
}

/// Removes the jump and the chain; `Ok(false)` when there was none (or no
/// iptables at all: then nothing of ours can be there).
pub fn remove() -> Result<bool, IptablesError> {
    match run("iptables", &["-w", "-t", "nat", "-S", CHAIN], None) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(IptablesError::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(false)
        }
        Err(e) => return Err(e),
    }
    // A crash between an -I and its check could leave two.
    for _ in 0..16 {
        if !run("iptables", &jump_args("-D", None), None)? {
            break;
        }
    }
    must("iptables", &["-w", "-t", "nat", "-F", CHAIN], None)?;
    must("iptables", &["-w", "-t", "nat", "-X", CHAIN], None)?;
    Ok(true)
}

/// iptables mode's [`Enforcer`]: rewrites the chain when the list or the
/// nodes change; removes it when the agent stops.
pub struct IptablesEnforcer {
    pub spec: ChainSpec,
}

impl Enforcer for IptablesEnforcer {
    fn enforce(&mut self, non_masq: &[Ipv4Net], nodes: &[Node]) -> Result<(), String> {
        let text = rules(&self.spec, non_masq, nodes);
        install(&text).map_err(|e| crate::services::chain(&e))?;
        info!(
            chain = CHAIN,
            rules = text.lines().count() - 3,
            "masquerading rules written"
        );
        Ok(())
    }

    fn shutdown(&mut self) {
        match remove() {
            Ok(_) => info!(chain = CHAIN, "removed the masquerading chain"),
            Err(e) => {
                tracing::warn!(error = %crate::services::chain(&e), "cannot remove the masquerading chain");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: &str) -> Node {
        Node {
            name: name.into(),
            internal_ip: Some(ip.parse().unwrap()),
            ciliate_internal_ip: None,
            health_ip: None,
            pod_cidrs: vec![cidr.parse().unwrap()],
            local: false,
        }
    }

    #[test]
    fn rules_return_for_the_cluster_then_masquerade() {
        let spec = ChainSpec {
            pod_cidr: "172.20.0.0/24".parse().unwrap(),
            device: Some("eth0".into()),
            native_routing_cidr: None,
        };
        let text = rules(
            &spec,
            &[
                "10.10.1.0/24".parse().unwrap(),
                "169.254.0.0/16".parse().unwrap(),
            ],
            &[node("node1", "192.168.10.101", "172.20.1.0/24")],
        );
        assert_eq!(
            text,
            "*nat
:CILIATE_POST_nat - [0:0]
-A CILIATE_POST_nat -d 10.10.1.0/24 -m comment --comment \"ciliate: ip-masq-agent nonMasqueradeCIDRs\" -j RETURN
-A CILIATE_POST_nat -d 169.254.0.0/16 -m comment --comment \"ciliate: ip-masq-agent nonMasqueradeCIDRs\" -j RETURN
-A CILIATE_POST_nat -d 172.20.0.0/24 -m comment --comment \"ciliate: cluster pods\" -j RETURN
-A CILIATE_POST_nat -d 172.20.1.0/24 -m comment --comment \"ciliate: cluster pods\" -j RETURN
-A CILIATE_POST_nat -d 192.168.10.101/32 -m comment --comment \"ciliate: cluster node\" -j RETURN
-A CILIATE_POST_nat -s 172.20.0.0/24 -o eth0 -m comment --comment \"ciliate masquerade non-cluster\" -j MASQUERADE
COMMIT
"
        );
    }

    #[test]
    fn the_native_routing_cidr_stands_for_the_pods() {
        let spec = ChainSpec {
            pod_cidr: "172.20.0.0/24".parse().unwrap(),
            device: None,
            native_routing_cidr: Some("172.20.0.0/16".parse().unwrap()),
        };
        let text = rules(
            &spec,
            &[],
            &[node("node1", "192.168.10.101", "172.20.1.0/24")],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[2].contains("-d 172.20.0.0/16 "), "{text}");
        assert!(lines[3].contains("-d 192.168.10.101/32 "), "{text}");
        assert!(
            lines[4].contains("-s 172.20.0.0/24 ! -o ciliate_+ "),
            "{text}"
        );
    }
}
