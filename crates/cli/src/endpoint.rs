use anyhow::Context;
use ciliate_api::{Client, Endpoint};
use clap::Subcommand;

use crate::output::{print_json, print_table, Format, OutputArgs};

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// List all endpoints of this node.
    List(OutputArgs),
    /// Show one endpoint: by id, or by `container-id:<id>`.
    Get {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

pub fn run(client: &Client, cmd: EndpointCommand) -> anyhow::Result<()> {
    match cmd {
        EndpointCommand::List(output) => {
            let endpoints: Vec<Endpoint> = client.get("/v1/endpoint")?;
            if output.format == Format::Json {
                return print_json(&endpoints);
            }
            let rows: Vec<Vec<String>> = endpoints
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        e.ip.to_string(),
                        e.state.to_string(),
                        e.host_ifname.clone(),
                        e.label(),
                    ]
                })
                .collect();
            print_table(
                &["ENDPOINT", "IPv4", "STATUS", "INTERFACE", "LABELS"],
                &rows,
            );
        }
        EndpointCommand::Get { id, output } => {
            let ep: Endpoint = client
                .get(&format!("/v1/endpoint/{id}"))
                .with_context(|| format!("getting endpoint {id}"))?;
            if output.format == Format::Json {
                return print_json(&ep);
            }
            println!("Endpoint {}", ep.id);
            println!("  State:          {}", ep.state);
            println!("  Labels:         {}", ep.label());
            println!("  Container ID:   {}", ep.container_id);
            println!("  Networking:");
            println!(
                "    Interface:    {} (index {})",
                ep.host_ifname, ep.host_ifindex
            );
            println!("    MAC:          {}", ep.mac);
            println!("    Host MAC:     {}", ep.host_mac);
            println!("    Addressing:   IPv4 {}", ep.ip);
            println!("    Pod device:   {} in {}", ep.ifname, ep.netns);
        }
    }
    Ok(())
}
