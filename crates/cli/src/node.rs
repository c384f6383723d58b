//! `ciliate node list`: the cluster's nodes as this node's agent knows them
//! (`GET /v1/node`), like `kubectl get ciliumnodes` / `cilium node list`.

use anyhow::Context;
use ciliate_api::{Client, Node};
use clap::Subcommand;

use crate::output::{print_json, print_table, Format, OutputArgs};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List the nodes of the cluster (this node marked with *).
    List(OutputArgs),
}

pub fn run(client: &Client, cmd: NodeCommand) -> anyhow::Result<()> {
    let NodeCommand::List(output) = cmd;
    let mut nodes: Vec<Node> = client
        .get("/v1/node")
        .context("asking the agent for the nodes it knows")?;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if output.format == Format::Json {
        return print_json(&nodes);
    }
    print_table(&HEADER, &rows(&nodes));
    Ok(())
}

const HEADER: [&str; 5] = [
    "NAME",
    "INTERNAL-IP",
    "CILIATE-INTERNAL-IP",
    "PODCIDRS",
    "HEALTH-IP",
];

fn rows(nodes: &[Node]) -> Vec<Vec<String>> {
    let ip = |ip: Option<std::net::Ipv4Addr>| ip.map_or_else(|| "<none>".into(), |i| i.to_string());
    nodes
        .iter()
        .map(|n| {
            let cidrs = if n.pod_cidrs.is_empty() {
                "<none>".to_string()
            } else {
                n.pod_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            vec![
                if n.local {
                    format!("{}*", n.name)
                } else {
                    n.name.clone()
                },
                ip(n.internal_ip),
                ip(n.ciliate_internal_ip),
                cidrs,
                ip(n.health_ip),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_every_column_and_mark_the_local_node() {
        let nodes = vec![
            Node {
                name: "node0".into(),
                internal_ip: Some("192.168.10.100".parse().unwrap()),
                ciliate_internal_ip: Some("172.20.0.1".parse().unwrap()),
                health_ip: Some("172.20.0.2".parse().unwrap()),
                pod_cidrs: vec!["172.20.0.0/24".parse().unwrap()],
                local: true,
            },
            Node {
                name: "node1".into(),
                internal_ip: Some("192.168.10.101".parse().unwrap()),
                ciliate_internal_ip: None,
                health_ip: None,
                pod_cidrs: vec![],
                local: false,
            },
        ];
        assert_eq!(
            rows(&nodes),
            [
                vec![
                    "node0*",
                    "192.168.10.100",
                    "172.20.0.1",
                    "172.20.0.0/24",
                    "172.20.0.2"
                ],
                vec!["node1", "192.168.10.101", "<none>", "<none>", "<none>"],
            ]
        );
    }
}
