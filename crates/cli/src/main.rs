//! `ciliate`: the command line for people. Talks to the node's agent over its
//! socket (`$CILIATE_SOCKET` or the default) and reads pinned maps directly.

mod bpf;
mod connectivity;
mod endpoint;
mod monitor;
mod node;
mod output;
mod service;
mod status;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ciliate",
    version,
    about = "ciliate: eBPF pod networking for Kubernetes"
)]
struct Cli {
    /// The agent's API socket (default: $CILIATE_SOCKET, else /var/run/ciliate/ciliate.sock).
    #[arg(long, global = true)]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the agent's status (like `cilium-dbg status`).
    Status(status::StatusArgs),
    /// Inspect endpoints.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// The cluster's nodes as this node's agent knows them.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// The services the agent programmed (like `cilium-dbg service list`).
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Inspect the datapath's BPF maps.
    #[command(subcommand)]
    Bpf(bpf::BpfCommand),
    /// Datapath counters per drop reason and direction.
    #[command(subcommand)]
    Metrics(bpf::MetricsCommand),
    /// Print datapath events (drops and traces) as they happen.
    Monitor(monitor::MonitorArgs),
    /// A ciliate cluster in network namespaces on this machine.
    Lab(ciliate_lab::cli::LabArgs),
    /// Check a lab's connectivity end to end, like `cilium connectivity test`.
    #[command(subcommand)]
    Connectivity(connectivity::ConnectivityCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let client = || {
        cli.socket
            .clone()
            .map_or_else(ciliate_api::Client::from_env, ciliate_api::Client::new)
    };
    let result = match cli.command {
        Command::Status(args) => status::run(&client(), &args).map(|()| 0),
        Command::Endpoint(cmd) => endpoint::run(&client(), cmd).map(|()| 0),
        Command::Node(cmd) => node::run(&client(), cmd).map(|()| 0),
        Command::Service(cmd) => service::run(&client(), cmd).map(|()| 0),
        Command::Bpf(cmd) => bpf::run(&client(), cmd).map(|()| 0),
        Command::Metrics(cmd) => bpf::run_metrics(&client(), cmd).map(|()| 0),
        Command::Monitor(args) => monitor::run(&client(), &args).map(|()| 0),
        Command::Lab(args) => ciliate_lab::cli::run(args),
        Command::Connectivity(cmd) => connectivity::run(cmd),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
