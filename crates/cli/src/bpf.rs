//! `ciliate bpf <map> list` and `ciliate metrics list`: read the pinned maps
//! directly, with the same typed views the agent writes them through.

use std::path::PathBuf;

use anyhow::Context;
use ciliate_api::{Client, Status};
use ciliate_datapath::loader::Maps;
use ciliate_datapath::maps::METRIC_INGRESS;
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
