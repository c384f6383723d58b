//! `ciliate lab ...`: the command line over [`crate::Lab`].

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::lab::{ApplyOutcome, Lab, LabSpec, LabStatus};
use crate::state::{DatapathMode, IpamMode, Masquerade, RoutingMode, TunnelProtocol};
use crate::{manifest, names};

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// The lab to act on: a lowercase letter then letters or digits.
    #[arg(long, global = true, default_value = names::DEFAULT_LAB, env = "CILIATE_LAB")]
    pub name: String,
    #[command(subcommand)]
    pub cmd: LabCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Create the lab: fabric bridge, etcd, the operator, nodes, one agent per
    /// node. Does nothing if the lab is up and healthy with the same settings.
    Up {
        /// Number of nodes (node0 at 192.168.10.100, node1 at .101, ...).
        #[arg(long, default_value_t = crate::lab::DEFAULT_NODES)]
        nodes: usize,
        /// How pods on different nodes reach each other: VXLAN, or plain
        /// routes over the fabric (autoDirectNodeRoutes).
        #[arg(long, value_enum, default_value_t = RoutingMode::Tunnel)]
        routing: RoutingMode,
        /// cluster-pool: ciliate-operator gives PodCIDRs and agents learn about
        /// each other through etcd. host-scope: the lab gives each agent its
        /// PodCIDR and agents use no store (single-node work).
        #[arg(long, value_enum, default_value_t = IpamMode::ClusterPool)]
        ipam: IpamMode,
        /// How pod traffic leaving the cluster is masqueraded to the node's
        /// IP: in BPF (bpf.masquerade: true), by the agent's iptables chain
        /// (bpf.masquerade: false), or not at all (enableIPv4Masquerade:
        /// false). With cluster-pool IPAM ip-masq-agent is on with an empty
        /// list until a ConfigMap kube-system/ip-masq-agent is applied.
        #[arg(long, value_enum, default_value_t = Masquerade::Bpf)]
        masquerade: Masquerade,
        /// The encapsulation between nodes with --routing tunnel (geneve needs
        /// a kernel with it: see `cargo xtask vm-test`).
        #[arg(long, value_enum, default_value_t = TunnelProtocol::Vxlan)]
        tunnel_protocol: TunnelProtocol,
        /// The kind of interface pods get: veth pairs, ipvlan L3 slaves of
        /// the node's eth0 (needs --routing native), or netkit pairs.
        #[arg(long, value_enum, default_value_t = DatapathMode::Veth)]
        datapath_mode: DatapathMode,
        /// Directory with ciliate-agent, ciliate-cni and ciliate-operator (default: next to this program).
        #[arg(long, env = "CILIATE_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Seconds to wait for each agent to answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Remove everything the lab made, even after a crash. Idempotent.
    Down,
    /// Create the Pods, Services, EndpointSlices and ConfigMaps of a Kubernetes
    /// YAML file ("-" for stdin). Services get a clusterIP (10.96.0.0/16) and
    /// nodePorts (30000-32767) when they have none; a Service with a selector
    /// gets its EndpointSlices from the matching pods, kept up to date as pods
    /// come and go. ConfigMaps are stored as given (the agents read
    /// kube-system/ip-masq-agent).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the Pods, Services, EndpointSlices and ConfigMaps of a file, or
    /// `delete pod|service|endpointslice|configmap NAME...`.
    Delete {
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "pods"])]
        file: Option<PathBuf>,
        /// `pod` (`pods`, `po`), `service` (`services`, `svc`), `endpointslice`
        /// or `configmap` (`configmaps`, `cm`).
        #[arg(required_unless_present = "file")]
        kind: Option<String>,
        /// Names: `name` or `namespace/name`.
        pods: Vec<String>,
    },
    /// Run a command in a node's, pod's or the outside host's network namespace.
    Exec {
        /// A node (`node0`), a pod (`client`), `namespace/pod`, or `router`
        /// (the outside host at 192.168.10.200, which knows no PodCIDR).
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Add or remove `PodCIDR via node IP` routes on the outside router, so
    /// that it can answer pods that reach it unmasqueraded (destinations in
    /// ip-masq-agent's nonMasqueradeCIDRs, or --masquerade off). Idempotent.
    RouterRoutes {
        #[arg(value_enum)]
        action: RouteAction,
    },
    /// Nodes and pods with their addresses and processes.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteAction {
    Add,
    Del,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// Runs a lab command; returns the process exit code.
pub fn run(args: LabArgs) -> anyhow::Result<i32> {
    let name = args.name;
    match args.cmd {
        LabCommand::Up {
            nodes,
            routing,
            ipam,
            masquerade,
            tunnel_protocol,
            datapath_mode,
            bin_dir,
            timeout,
        } => {
            let spec = LabSpec {
                routing,
                ipam,
                masquerade,
                tunnel_protocol,
                datapath_mode,
                bin_dir,
                agent_timeout: Duration::from_secs(timeout),
                ..LabSpec::new(&name, nodes)
            };
            let lab = Lab::up(&spec).with_context(|| format!("bringing lab {name} up"))?;
            if lab.was_already_up() {
                println!("lab {name} is up already and healthy; nothing to do");
            } else {
                println!(
                    "lab {name} is up: {} node(s), routing {}{}, datapath mode {}, IPAM {}, masquerade {}, on bridge br0 in namespace {}, state in {}",
                    lab.nodes().len(),
                    lab.state().routing,
                    tunnel_suffix(lab.state().routing, lab.state().tunnel_protocol),
                    lab.state().datapath_mode,
                    lab.state().ipam,
                    lab.state().masquerade,
                    lab.state().fabric_netns,
                    lab.dir().display()
                );
            }
            if !lab.state().kube_proxy_replacement {
                println!(
                    "note: the agents run without kubeProxyReplacement: Services are stored but not served"
                );
            }
            print_status(&lab.status());
            Ok(0)
        }
        LabCommand::Down => {
            let report = Lab::down(&name).with_context(|| format!("taking lab {name} down"))?;
            if report.found_anything() {
                println!(
                    "lab {name} is down: stopped {} process(es), deleted {} namespace(s), unmounted {} bpffs, removed {}",
                    report.processes,
                    report.namespaces.len(),
                    report.mounts,
                    if report.removed_dir { names::lab_dir(&name).display().to_string() } else { "no files".into() }
                );
            } else {
                println!("lab {name}: nothing to remove");
            }
            Ok(0)
        }
        LabCommand::Apply { file } => {
            let text = read_input(&file)?;
            let manifest =
                manifest::parse(&text).with_context(|| format!("reading {}", file.display()))?;
            for w in &manifest.warnings {
                eprintln!("warning: {w}");
            }
            let mut lab = Lab::open(&name)?;
            lab.check_nodes(&manifest)
                .with_context(|| format!("applying {}", file.display()))?;
            for object in &manifest.objects {
                match object {
                    manifest::Object::Pod(pod) => {
                        let outcome = lab
                            .apply_pod(pod)
                            .with_context(|| format!("creating pod {}", pod.key()))?;
                        println!("{outcome}");
                        if let ApplyOutcome::Created { .. } = outcome {
                            warn_exited(&lab, &pod.key());
                        }
                    }
                    manifest::Object::Service(svc) => {
                        let key = crate::services::key_of(&svc.metadata);
                        let (stored, change) = lab
                            .apply_service(svc)
                            .with_context(|| format!("applying service {key}"))?;
                        println!("{}", ApplyOutcome::for_service(&stored, change));
                    }
                    manifest::Object::EndpointSlice(slice) => {
                        let key = crate::services::key_of(&slice.metadata);
                        let change = lab
                            .apply_endpoint_slice(slice)
                            .with_context(|| format!("applying endpointslice {key}"))?;
                        println!("endpointslice/{key} {change}");
                    }
                    manifest::Object::ConfigMap(map) => {
                        let key = crate::services::key_of(&map.metadata);
                        let change = lab
                            .apply_config_map(map)
                            .with_context(|| format!("applying configmap {key}"))?;
                        println!("configmap/{key} {change}");
                    }
                    manifest::Object::Skipped { .. } => {}
                }
            }
            Ok(0)
        }
        LabCommand::Delete { file, kind, pods } => {
            let mut lab = Lab::open(&name)?;
            let targets: Vec<(&str, String)> = if let Some(file) = file {
                let text = read_input(&file)?;
                let manifest = manifest::parse(&text)
                    .with_context(|| format!("reading {}", file.display()))?;
                manifest
                    .objects
                    .iter()
                    .filter_map(|o| match o {
                        manifest::Object::Pod(p) => Some(("pod", p.key())),
                        manifest::Object::Service(s) => {
                            Some(("service", crate::services::key_of(&s.metadata)))
                        }
                        manifest::Object::EndpointSlice(s) => {
                            Some(("endpointslice", crate::services::key_of(&s.metadata)))
                        }
                        manifest::Object::ConfigMap(m) => {
                            Some(("configmap", crate::services::key_of(&m.metadata)))
                        }
                        manifest::Object::Skipped { .. } => None,
                    })
                    .collect()
            } else {
                let kind = kind.unwrap_or_default();
                let kind = match kind.as_str() {
                    "pod" | "pods" | "po" => "pod",
                    "service" | "services" | "svc" => "service",
                    "endpointslice" | "endpointslices" => "endpointslice",
                    "configmap" | "configmaps" | "cm" => "configmap",
                    _ => bail!("resource type {kind:?} is not supported: the lab deletes pod, service, endpointslice and configmap (`ciliate lab delete pod NAME`)"),
                };
                if pods.is_empty() {
                    bail!("no {kind} named: `ciliate lab delete {kind} NAME...`");
                }
                pods.into_iter().map(|p| (kind, p)).collect()
            };
            let mut missing = 0;
            for (kind, target) in targets {
                let existed = match kind {
                    "pod" => lab.delete_pod(&target),
                    "service" => lab.delete_service(&target),
                    "configmap" => lab.delete_config_map(&target),
                    _ => lab.delete_endpoint_slice(&target),
                }
                .with_context(|| format!("deleting {kind} {target}"))?;
                if existed {
                    println!("{kind}/{target} deleted");
                } else {
                    println!("{kind}/{target} not found");
                    missing += 1;
                }
            }
            Ok(i32::from(missing > 0))
        }
        LabCommand::Exec { target, cmd } => {
            let lab = Lab::open(&name)?;
            let status = lab.exec_inherit(&target, &cmd)?;
            Ok(exit_code(status))
        }
        LabCommand::RouterRoutes { action } => {
            let lab = Lab::open(&name)?;
            let add = action == RouteAction::Add;
            let routes = lab
                .router_routes(add)
                .with_context(|| format!("changing the router's routes in lab {name}"))?;
            for (cidr, via) in routes {
                println!(
                    "router: {cidr} via {via} {}",
                    if add { "present" } else { "absent" }
                );
            }
            Ok(0)
        }
        LabCommand::Status { output } => {
            let lab = Lab::open(&name)?;
            let status = lab.status();
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Format::Table => print_status(&status),
            }
            Ok(0)
        }
    }
}

/// The shell's convention: the exit code, or 128 + the signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// Tells about containers that exited right after starting, with their logs.
fn warn_exited(lab: &Lab, key: &str) {
    std::thread::sleep(Duration::from_millis(150));
    let Ok(pod) = lab.pod(key) else { return };
    for (container, log) in Lab::exited_containers(pod) {
        eprintln!("warning: container {container} of pod {key} exited right after starting");
        if let Some(log) = log {
            eprintln!("{}:\n{}", log.display(), crate::sys::tail(&log, 10));
        }
    }
}

/// ` (geneve)` after "tunnel"; nothing for native routing.
fn tunnel_suffix(routing: RoutingMode, protocol: TunnelProtocol) -> String {
    match routing {
        RoutingMode::Tunnel => format!(" ({protocol})"),
        RoutingMode::Native => String::new(),
    }
}

pub fn print_status(status: &LabStatus) {
    println!(
        "lab {} ({}): routing {}{}, datapath mode {}, IPAM {}",
        status.name,
        status.dir.display(),
        status.routing,
        tunnel_suffix(status.routing, status.tunnel_protocol),
        status.datapath_mode,
        status.ipam
    );
    let mut rows = vec![vec![
        "PROCESS".to_string(),
        "ADDRESS".into(),
        "PID".into(),
        "NETNS".into(),
        "LOG".into(),
    ]];
    for p in &status.processes {
        let pid = match (p.pid, p.alive) {
            (Some(pid), true) => format!("{pid} running"),
            (Some(pid), false) => format!("{pid} dead"),
            (None, _) => "not started".into(),
        };
        rows.push(vec![
            p.name.clone(),
            p.address.clone().unwrap_or_else(|| "-".into()),
            pid,
            status.fabric_netns.clone(),
            p.log
                .as_ref()
                .map_or_else(|| "-".into(), |l| l.display().to_string()),
        ]);
    }
    print_table(&rows);
    if let Some(router) = &status.router {
        println!(
            "outside host: router at {} (namespace {}; `ciliate lab exec router -- CMD`)",
            router.ip, router.netns
        );
        let networks: Vec<String> = router.networks.iter().map(ToString::to_string).collect();
        let server = match (router.server_pid, router.server_alive) {
            (Some(pid), true) => format!("HTTP :80 pid {pid} running"),
            (Some(pid), false) => format!("HTTP :80 pid {pid} dead"),
            (None, _) => "no HTTP server".into(),
        };
        let routes = if router.pod_cidr_routes.is_empty() {
            "no PodCIDR routes (`ciliate lab router-routes add`)".to_string()
        } else {
            let r: Vec<String> = router
                .pod_cidr_routes
                .iter()
                .map(|(c, v)| format!("{c} via {v}"))
                .collect();
            format!("routes {}", r.join(", "))
        };
        println!(
            "  networks {} on lo, {server}, {routes}; masquerade {}",
            networks.join(", "),
            status.masquerade
        );
    }
    let mut rows = vec![vec![
        "NODE".to_string(),
        "IP".into(),
        "PODCIDR".into(),
        "AGENT".into(),
        "NETNS".into(),
        "SOCKET".into(),
    ]];
    for n in &status.nodes {
        let agent = match (n.agent_pid, n.agent_alive, n.agent_ready) {
            (Some(pid), true, true) => format!("{pid} ready"),
            (Some(pid), true, false) => format!("{pid} not answering"),
            (Some(pid), false, _) => format!("{pid} dead"),
            (None, _, _) => "not started".into(),
        };
        rows.push(vec![
            n.name.clone(),
            n.ip.to_string(),
            n.pod_cidr
                .map_or_else(|| "(not yet known)".into(), |c| c.to_string()),
            agent,
            n.netns.clone(),
            n.socket.display().to_string(),
        ]);
    }
    print_table(&rows);
    if status.pods.is_empty() {
        println!("no pods (add some with `ciliate lab apply -f FILE`)");
        return;
    }
    let mut rows = vec![vec![
        "POD".to_string(),
        "NODE".into(),
        "IP".into(),
        "NETNS".into(),
        "PROCESSES".into(),
    ]];
    for p in &status.pods {
        let procs = p
            .containers
            .iter()
            .map(|c| match c.pid {
                Some(pid) => format!(
                    "{}:{pid} {}",
                    c.name,
                    if c.alive { "running" } else { "exited" }
                ),
                None => format!("{}:no command", c.name),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let netns = if p.host_network {
            format!("{} (host network)", p.netns)
        } else {
            p.netns.clone()
        };
        rows.push(vec![
            format!("{}/{}", p.namespace, p.name),
            p.node.clone(),
            p.ip.to_string(),
            netns,
            procs,
        ]);
    }
    print_table(&rows);
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
