//! `ciliate service list`: the frontends the agent programmed
//! (`GET /v1/service`), as `cilium-dbg service list` prints them.

use anyhow::Context;
use ciliate_api::{Client, ServiceEntry};
use clap::Subcommand;

use crate::output::{print_json, print_table, Format, OutputArgs};

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// List every frontend with its backends and their state.
    List(OutputArgs),
}

pub fn run(client: &Client, cmd: ServiceCommand) -> anyhow::Result<()> {
    let ServiceCommand::List(output) = cmd;
    let mut services: Vec<ServiceEntry> = client
        .get("/v1/service")
        .context("asking the agent for its services")?;
    services.sort_by_key(|s| s.id);
    if output.format == Format::Json {
        return print_json(&services);
    }
    print_table(&HEADER, &rows(&services));
    Ok(())
}

const HEADER: [&str; 4] = ["ID", "Frontend", "Service Type", "Backend"];

/// One row per backend; the first carries the frontend, like cilium-dbg.
fn rows(services: &[ServiceEntry]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for s in services {
        let kind = if s.traffic_policy == "Local" {
            format!("{} (Local)", s.kind)
        } else {
            s.kind.clone()
        };
        let mut first = vec![s.id.to_string(), s.frontend.clone(), kind];
        if s.backends.is_empty() {
            first.push(String::new());
            rows.push(first);
            continue;
        }
        for (i, b) in s.backends.iter().enumerate() {
            let backend = format!("{} => {} ({})", i + 1, b.address, b.state);
            if i == 0 {
                first.push(backend);
                rows.push(std::mem::take(&mut first));
            } else {
                rows.push(vec![String::new(), String::new(), String::new(), backend]);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_api::BackendEntry;

    fn entry(
        id: u32,
        frontend: &str,
        kind: &str,
        policy: &str,
        backends: &[(&str, &str)],
    ) -> ServiceEntry {
        ServiceEntry {
            id,
            frontend: frontend.into(),
            kind: kind.into(),
            service: "shop/web".into(),
            traffic_policy: policy.into(),
            session_affinity: false,
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (address, state))| BackendEntry {
                    id: u32::try_from(i).unwrap() + 10,
                    address: (*address).into(),
                    state: (*state).into(),
                    node_name: None,
                })
                .collect(),
        }
    }

    #[test]
    fn one_row_per_backend_like_cilium_dbg() {
        let rows = rows(&[
            entry(
                1,
                "10.96.0.10:80/TCP",
                "ClusterIP",
                "Cluster",
                &[
                    ("172.20.1.5:8080/TCP", "active"),
                    ("172.20.2.5:8080/TCP", "terminating"),
                ],
            ),
            entry(2, "0.0.0.0:30080/TCP", "NodePort", "Local", &[]),
        ]);
        assert_eq!(
            rows,
            vec![
                vec![
                    "1",
                    "10.96.0.10:80/TCP",
                    "ClusterIP",
                    "1 => 172.20.1.5:8080/TCP (active)"
                ],
                vec!["", "", "", "2 => 172.20.2.5:8080/TCP (terminating)"],
                vec!["2", "0.0.0.0:30080/TCP", "NodePort (Local)", ""],
            ]
        );
    }
}
