//! `ciliate bpf <map> list` (endpoint, ipcache, tunnel, lb, ct, nat, ipmasq),
//! `ciliate bpf ct flush global` and `ciliate metrics list`: read the pinned
//! maps directly, with the same typed views the agent writes them through.

use std::path::PathBuf;

use anyhow::Context;
use ciliate_api::{Client, Status};
use ciliate_datapath::loader::Maps;
use ciliate_datapath::maps::{
    addr_of, Ct4Entry, Ct4Key, Lb4Backend, Lb4Key, Lb4Service, Nat4Entry, BE_STATE_TERMINATING,
    CT4_ANY_MAP, CT4_TCP_MAP, CT_F_INBOUND, CT_F_LOOPBACK, CT_F_NODEPORT, CT_F_RX_CLOSING,
    CT_F_SEEN_REPLY, CT_F_SNAT, CT_F_TX_CLOSING, CT_F_VIA_STACK, CT_KEY_MASQ, CT_KEY_SERVICE,
    IPMASQ4_MAP, IPPROTO_TCP, IPPROTO_UDP, LB_SCOPE_INTERNAL, METRIC_INGRESS, NAT_DIR_INGRESS,
    NAT_F_MASQUERADE, NAT_F_NODEPORT, SNAT4_MAP, SVC_F_AFFINITY, SVC_F_CLUSTER_IP,
    SVC_F_EXTERNAL_IP, SVC_F_LOADBALANCER, SVC_F_NODEPORT, SVC_F_TWO_SCOPES,
};
use ciliate_datapath::netlink::format_mac;
use ciliate_datapath::reasons::drop_reason_name;
use clap::Subcommand;
use serde::Serialize;

use crate::output::{print_json, print_table, Format, OutputArgs};

#[derive(Clone, Debug, clap::Args)]
pub struct MapArgs {
    /// The agent's bpf.root (default: asked from the agent).
    #[arg(long)]
    bpf_root: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Subcommand)]
pub enum BpfCommand {
    /// The local endpoint map (ciliate_lxc).
    #[command(subcommand)]
    Endpoint(ListOnly),
    /// Datapath counters per reason and direction (ciliate_metrics).
    #[command(subcommand)]
    Metrics(ListOnly),
    /// Prefixes with their identity and tunnel endpoint (ciliate_ipcache).
    #[command(subcommand)]
    Ipcache(ListOnly),
    /// Prefixes reached through a tunnel, and the node behind each (from the ipcache).
    #[command(subcommand)]
    Tunnel(ListOnly),
    /// Service frontends and their backend slots (ciliate_lb4_svc, _be, _rev).
    #[command(subcommand)]
    Lb(ListOnly),
    /// Connection tracking (ciliate_ct4_tcp and ciliate_ct4_any).
    #[command(subcommand)]
    Ct(CtCommand),
    /// Source NAT mappings (ciliate_snat4).
    #[command(subcommand)]
    Nat(ListOnly),
    /// ip-masq-agent's nonMasqueradeCIDRs in force (ciliate_ipmasq4).
    #[command(subcommand)]
    Ipmasq(ListOnly),
}

#[derive(Subcommand)]
pub enum CtCommand {
    /// List every entry of a conntrack table.
    List(CtArgs),
    /// Delete every entry of a conntrack table.
    Flush(CtArgs),
}

#[derive(Clone, Debug, clap::Args)]
pub struct CtArgs {
    /// The table: `global` (TCP and non-TCP; per-endpoint tables do not exist).
    #[arg(value_parser = ["global"])]
    table: String,
    #[command(flatten)]
    map: MapArgs,
}

#[derive(Subcommand)]
pub enum ListOnly {
    /// List every entry.
    List(MapArgs),
}

#[derive(Subcommand)]
pub enum MetricsCommand {
    /// List datapath counters.
    List(MapArgs),
}

fn open_maps(client: &Client, args: &MapArgs) -> anyhow::Result<Maps> {
    let root = if let Some(root) = &args.bpf_root {
        root.clone()
    } else {
        let status: Status = client
            .get("/v1/status")
            .context("asking the agent for its bpf.root (or pass --bpf-root)")?;
        PathBuf::from(status.datapath.bpf_root)
    };
    Maps::open(&root).with_context(|| format!("opening the maps pinned under {}", root.display()))
}

pub fn run(client: &Client, cmd: BpfCommand) -> anyhow::Result<()> {
    match cmd {
        BpfCommand::Endpoint(ListOnly::List(args)) => endpoint_list(client, &args),
        BpfCommand::Metrics(ListOnly::List(args)) => metrics_list(client, &args),
        BpfCommand::Ipcache(ListOnly::List(args)) => ipcache_list(client, &args, false),
        BpfCommand::Tunnel(ListOnly::List(args)) => ipcache_list(client, &args, true),
        BpfCommand::Lb(ListOnly::List(args)) => lb_list(&open_maps(client, &args)?, &args.output),
        BpfCommand::Ct(CtCommand::List(args)) => {
            ct_list(&open_maps(client, &args.map)?, &args.map.output)
        }
        BpfCommand::Ct(CtCommand::Flush(args)) => {
            ct_flush(&mut open_maps(client, &args.map)?, &args.map.output)
        }
        BpfCommand::Nat(ListOnly::List(args)) => nat_list(&open_maps(client, &args)?, &args.output),
        BpfCommand::Ipmasq(ListOnly::List(args)) => {
            ipmasq_list(&open_maps(client, &args)?, &args.output)
        }
    }
}

pub fn run_metrics(client: &Client, cmd: MetricsCommand) -> anyhow::Result<()> {
    let MetricsCommand::List(args) = cmd;
    metrics_list(client, &args)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointEntry {
    ip: String,
    id: u16,
    flags: u16,
    ifindex: u32,
    mac: String,
    node_mac: String,
    identity: u32,
}

fn endpoint_list(client: &Client, args: &MapArgs) -> anyhow::Result<()> {
    let maps = open_maps(client, args)?;
    let mut entries: Vec<EndpointEntry> = maps
        .endpoint_entries()?
        .into_iter()
        .map(|(k, v)| EndpointEntry {
            ip: k.ip().to_string(),
            id: v.lxc_id,
            flags: v.flags,
            ifindex: v.ifindex,
            mac: format_mac(v.mac),
            node_mac: format_mac(v.node_mac),
            identity: v.sec_identity,
        })
        .collect();
    entries.sort_by_key(|e| e.id);
    if args.output.format == Format::Json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.ip.clone(),
                format!(
                    "id={:<5} flags=0x{:04x} ifindex={:<4} mac={} nodemac={}",
                    e.id, e.flags, e.ifindex, e.mac, e.node_mac
                ),
            ]
        })
        .collect();
    print_table(&["IP ADDRESS", "LOCAL ENDPOINT INFO"], &rows);
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricEntry {
    reason_code: u8,
    reason: String,
    direction: String,
    packets: u64,
    bytes: u64,
}

fn metrics_list(client: &Client, args: &MapArgs) -> anyhow::Result<()> {
    let maps = open_maps(client, args)?;
    let entries: Vec<MetricEntry> = maps
        .metrics_totals()?
        .into_iter()
        .map(|(reason, dir, packets, bytes)| MetricEntry {
            reason_code: reason,
            reason: drop_reason_name(reason),
            direction: if dir == METRIC_INGRESS {
                "INGRESS"
            } else {
                "EGRESS"
            }
            .to_string(),
            packets,
            bytes,
        })
        .collect();
    if args.output.format == Format::Json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.reason.clone(),
                e.direction.clone(),
                e.packets.to_string(),
                e.bytes.to_string(),
            ]
        })
        .collect();
    print_table(&["REASON", "DIRECTION", "PACKETS", "BYTES"], &rows);
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IpcacheEntry {
    prefix: String,
    identity: u32,
    tunnel_endpoint: Option<String>,
    flags: u16,
}

fn ipcache_list(client: &Client, args: &MapArgs, tunnels_only: bool) -> anyhow::Result<()> {
    let maps = open_maps(client, args)?;
    let mut entries = Vec::new();
    for item in &maps.ipcache {
        let (key, value) = item.context("reading the ipcache")?;
        let ip = std::net::Ipv4Addr::from(key.data().to_ne_bytes());
        let endpoint = value.tunnel_endpoint();
        if tunnels_only && endpoint.is_none() {
            continue;
        }
        entries.push(IpcacheEntry {
            prefix: format!("{ip}/{}", key.prefix_len()),
            identity: value.sec_identity,
            tunnel_endpoint: endpoint.map(|e| e.to_string()),
            flags: value.flags,
        });
    }
    entries.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    if args.output.format == Format::Json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let tunnel = e
                .tunnel_endpoint
                .clone()
                .unwrap_or_else(|| "0.0.0.0".into());
            if tunnels_only {
                vec![e.prefix.clone(), tunnel]
            } else {
                vec![
                    e.prefix.clone(),
                    format!(
                        "identity={} encryptkey=0 tunnelendpoint={tunnel} flags=0x{:x}",
                        e.identity, e.flags
                    ),
                ]
            }
        })
        .collect();
    if tunnels_only {
        print_table(&["TUNNEL", "VALUE"], &rows);
    } else {
        print_table(&["IP PREFIX/ADDRESS", "IDENTITY"], &rows);
    }
    Ok(())
}

fn proto_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

/// The names of the bits set in `flags`, in table order.
fn flag_names(flags: u16, table: &[(u16, &str)]) -> Vec<String> {
    table
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect()
}

fn svc_flag_names(flags: u16) -> Vec<String> {
    flag_names(
        flags,
        &[
            (SVC_F_CLUSTER_IP, "ClusterIP"),
            (SVC_F_NODEPORT, "NodePort"),
            (SVC_F_EXTERNAL_IP, "ExternalIPs"),
            (SVC_F_LOADBALANCER, "LoadBalancer"),
            (SVC_F_AFFINITY, "sessionAffinity"),
            (SVC_F_TWO_SCOPES, "two-scopes"),
        ],
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LbEntry {
    /// `10.96.0.10:80/TCP`; NodePort's wildcard is `0.0.0.0:30080/TCP`.
    service: String,
    /// `external` or `internal`.
    scope: String,
    slot: u16,
    rev_nat_index: u32,
    /// Slot 0: active backends and flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity_timeout: Option<u32>,
    /// Slots 1..count: the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_state: Option<String>,
}

fn lb_list(maps: &Maps, output: &OutputArgs) -> anyhow::Result<()> {
    let services: std::collections::BTreeMap<Lb4Key, Lb4Service> = maps
        .lb4_services
        .iter()
        .collect::<Result<_, _>>()
        .context("reading ciliate_lb4_svc")?;
    let backends: std::collections::BTreeMap<u32, Lb4Backend> = maps
        .lb4_backends
        .iter()
        .collect::<Result<_, _>>()
        .context("reading ciliate_lb4_be")?;
    let mut keys: Vec<&Lb4Key> = services.keys().collect();
    keys.sort_by_key(|k| (k.ip(), k.port(), k.proto, k.scope, k.backend_slot));
    let entries: Vec<LbEntry> = keys
        .into_iter()
        .map(|k| {
            let v = services[k];
            let head = services
                .get(&Lb4Key {
                    backend_slot: 0,
                    ..*k
                })
                .copied()
                .unwrap_or_default();
            let mut e = LbEntry {
                service: format!("{}:{}/{}", k.ip(), k.port(), proto_name(k.proto)),
                scope: if k.scope == LB_SCOPE_INTERNAL {
                    "internal"
                } else {
                    "external"
                }
                .into(),
                slot: k.backend_slot,
                rev_nat_index: head.rev_nat_index,
                count: None,
                flags: Vec::new(),
                affinity_timeout: None,
                backend_id: None,
                backend: None,
                backend_state: None,
            };
            if k.backend_slot == 0 {
                e.count = Some(v.count);
                e.flags = svc_flag_names(v.flags);
                e.affinity_timeout = (v.flags & SVC_F_AFFINITY != 0).then_some(v.affinity_timeout);
            } else {
                e.backend_id = Some(v.backend_id);
                if let Some(b) = backends.get(&v.backend_id) {
                    e.backend = Some(format!("{}:{}/{}", b.ip(), b.port(), proto_name(b.proto)));
                    e.backend_state = Some(
                        if b.state == BE_STATE_TERMINATING {
                            "terminating"
                        } else {
                            "active"
                        }
                        .into(),
                    );
                }
            }
            e
        })
        .collect();
    if output.format == Format::Json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let scope = if e.scope == "internal" { "/i" } else { "" };
            let service = format!("{}{scope} ({})", e.service, e.slot);
            let value = if e.slot == 0 {
                let mut tags = e.flags.clone();
                if let Some(t) = e.affinity_timeout {
                    tags.push(format!("affinity {t}s"));
                }
                format!(
                    "0.0.0.0:0 ({}) (0) [{}] count={}",
                    e.rev_nat_index,
                    tags.join(", "),
                    e.count.unwrap_or(0)
                )
            } else {
                let backend = e
                    .backend
                    .clone()
                    .unwrap_or_else(|| format!("<unknown backend {}>", e.backend_id.unwrap_or(0)));
                format!("{backend} ({}) ({})", e.rev_nat_index, e.slot)
            };
            vec![service, value]
        })
        .collect();
    print_table(
        &["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"],
        &rows,
    );
    Ok(())
}

fn ct_flag_names(flags: u16) -> Vec<String> {
    flag_names(
        flags,
        &[
            (CT_F_TX_CLOSING, "tx-closing"),
            (CT_F_RX_CLOSING, "rx-closing"),
            (CT_F_SEEN_REPLY, "seen-reply"),
            (CT_F_NODEPORT, "nodeport"),
            (CT_F_LOOPBACK, "loopback"),
            (CT_F_SNAT, "snat"),
            (CT_F_INBOUND, "inbound"),
            (CT_F_VIA_STACK, "via-stack"),
        ],
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CtEntry {
    proto: String,
    source: String,
    destination: String,
    /// The service entry (client to frontend, naming the backend) rather
    /// than the connection entry.
    service: bool,
    /// A masqueraded connection (the pod's tuple before SNAT) or, with the
    /// `inbound` flag, a connection from outside whose replies leave as they are.
    masquerade: bool,
    /// CLOCK_MONOTONIC second of expiry, and seconds left (negative: expired,
    /// waiting for the GC).
    lifetime: u32,
    remaining: i64,
    flags: Vec<String>,
    rev_nat_index: u32,
    backend_id: u32,
    frontend: String,
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
}

fn ct_entries(maps: &Maps) -> anyhow::Result<Vec<CtEntry>> {
    let now = i64::from(ciliate_datapath::maps::monotonic_seconds());
    let mut raw: Vec<(Ct4Key, Ct4Entry)> = Vec::new();
    for (name, map) in [(CT4_TCP_MAP, &maps.ct4_tcp), (CT4_ANY_MAP, &maps.ct4_any)] {
        for item in map {
            raw.push(item.with_context(|| format!("reading {name}"))?);
        }
    }
    raw.sort_by_key(|(k, _)| (k.proto, k.src(), k.dst(), k.flags));
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let (sip, sport) = k.src();
            let (dip, dport) = k.dst();
            CtEntry {
                proto: proto_name(k.proto),
                source: format!("{sip}:{sport}"),
                destination: format!("{dip}:{dport}"),
                service: k.flags & CT_KEY_SERVICE != 0,
                masquerade: k.flags & CT_KEY_MASQ != 0,
                lifetime: v.lifetime,
                remaining: i64::from(v.lifetime) - now,
                flags: ct_flag_names(v.flags),
                rev_nat_index: v.rev_nat_index,
                backend_id: v.backend_id,
                frontend: addr_of(v.frontend_addr).to_string(),
                tx_packets: v.tx_packets,
                tx_bytes: v.tx_bytes,
                rx_packets: v.rx_packets,
                rx_bytes: v.rx_bytes,
            }
        })
        .collect())
}

fn ct_list(maps: &Maps, output: &OutputArgs) -> anyhow::Result<()> {
    let entries = ct_entries(maps)?;
    if output.format == Format::Json {
        return print_json(&entries);
    }
    // One line per entry, as `cilium-dbg bpf ct list global` prints them.
    for e in &entries {
        let kind = match (e.service, e.masquerade) {
            (true, _) => " service",
            (false, true) => " masquerade",
            (false, false) => "",
        };
        println!(
            "{} OUT {} -> {}{kind} expires={} remaining={}s RxPackets={} RxBytes={} TxPackets={} TxBytes={} Flags=[{}] RevNatIndex={} BackendID={} Frontend={}",
            e.proto,
            e.source,
            e.destination,
            e.lifetime,
            e.remaining,
            e.rx_packets,
            e.rx_bytes,
            e.tx_packets,
            e.tx_bytes,
            e.flags.join(","),
            e.rev_nat_index,
            e.backend_id,
            e.frontend,
        );
    }
    Ok(())
}

/// Deletes every key of a map; keys are collected first (deleting while
/// walking a hash map restarts the walk).
fn flush<V: aya::Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, Ct4Key, V>,
    name: &str,
) -> anyhow::Result<usize> {
    let keys: Vec<Ct4Key> = map
        .keys()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {name}"))?;
    let mut deleted = 0;
    for key in keys {
        // The datapath or the LRU may have removed it meanwhile.
        if map.remove(&key).is_ok() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Flushed {
    map: String,
    entries: usize,
}

fn ct_flush(maps: &mut Maps, output: &OutputArgs) -> anyhow::Result<()> {
    let flushed = vec![
        Flushed {
            map: CT4_TCP_MAP.into(),
            entries: flush(&mut maps.ct4_tcp, CT4_TCP_MAP)?,
        },
        Flushed {
            map: CT4_ANY_MAP.into(),
            entries: flush(&mut maps.ct4_any, CT4_ANY_MAP)?,
        },
    ];
    if output.format == Format::Json {
        return print_json(&flushed);
    }
    for f in &flushed {
        println!("Flushed {} entries from {}", f.entries, f.map);
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NatEntry {
    proto: String,
    /// `egress` (source translated) or `ingress` (replies: destination restored).
    direction: String,
    source: String,
    destination: String,
    /// The translated source (egress) or the restored destination (ingress).
    to: String,
    flags: Vec<String>,
    lifetime: u32,
    remaining: i64,
    created_seconds_ago: i64,
}

fn nat_list(maps: &Maps, output: &OutputArgs) -> anyhow::Result<()> {
    let now = i64::from(ciliate_datapath::maps::monotonic_seconds());
    let mut raw: Vec<(Ct4Key, Nat4Entry)> = maps
        .snat4
        .iter()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {SNAT4_MAP}"))?;
    raw.sort_by_key(|(k, _)| (k.proto, k.flags, k.src(), k.dst()));
    let entries: Vec<NatEntry> = raw
        .into_iter()
        .map(|(k, v)| {
            let (sip, sport) = k.src();
            let (dip, dport) = k.dst();
            let (tip, tport) = v.to();
            let flags = flag_names(
                v.flags,
                &[
                    (NAT_F_NODEPORT, "nodeport"),
                    (NAT_F_MASQUERADE, "masquerade"),
                ],
            );
            NatEntry {
                proto: proto_name(k.proto),
                direction: if k.flags == NAT_DIR_INGRESS {
                    "ingress"
                } else {
                    "egress"
                }
                .into(),
                source: format!("{sip}:{sport}"),
                destination: format!("{dip}:{dport}"),
                to: format!("{tip}:{tport}"),
                flags,
                lifetime: v.lifetime,
                remaining: i64::from(v.lifetime) - now,
                created_seconds_ago: now - i64::from(v.created),
            }
        })
        .collect();
    if output.format == Format::Json {
        return print_json(&entries);
    }
    for e in &entries {
        let (dir, xlate) = if e.direction == "ingress" {
            ("IN", "XLATE_DST")
        } else {
            ("OUT", "XLATE_SRC")
        };
        println!(
            "{} {dir} {} -> {} {xlate} {} Created={}sec ago Expires={} remaining={}s Flags=[{}]",
            e.proto,
            e.source,
            e.destination,
            e.to,
            e.created_seconds_ago,
            e.lifetime,
            e.remaining,
            e.flags.join(","),
        );
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IpmasqEntry {
    prefix: String,
}

/// Every prefix of ciliate_ipmasq4, by address then prefix length, as
/// `cilium-dbg bpf ipmasq list` prints them.
fn ipmasq_list(maps: &Maps, output: &OutputArgs) -> anyhow::Result<()> {
    let mut prefixes = Vec::new();
    for key in maps.ipmasq4.keys() {
        let key = key.with_context(|| format!("reading {IPMASQ4_MAP}"))?;
        let ip = std::net::Ipv4Addr::from(key.data().to_ne_bytes());
        prefixes.push((ip, key.prefix_len()));
    }
    prefixes.sort_unstable();
    let entries: Vec<IpmasqEntry> = prefixes
        .into_iter()
        .map(|(ip, len)| IpmasqEntry {
            prefix: format!("{ip}/{len}"),
        })
        .collect();
    if output.format == Format::Json {
        return print_json(&entries);
    }
    let rows: Vec<Vec<String>> = entries.iter().map(|e| vec![e.prefix.clone()]).collect();
    print_table(&["IP PREFIX/ADDRESS"], &rows);
    Ok(())
}
