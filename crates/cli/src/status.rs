use ciliate_api::{Client, Status};

use crate::output::{print_json, Format, OutputArgs};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Also list every allocated address and its owner.
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
    row("KVStore", "Disabled".into());
    row("Kubernetes", "Disabled".into());
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
    Ok(())
}
