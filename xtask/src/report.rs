//! The benchmark's outputs: `services.json` (everything, every round) and
//! `services.md` (the tables people read), also printed on stdout.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::services::{Mechanism, Report, Round, Row, Target};

/// One line for the progress log.
pub fn describe_round(round: &Round) -> String {
    match (&round.sample, &round.error) {
        (Some(s), _) => format!(
            "{:.0} conn/s, p50 {:.0} µs, p99 {:.0} µs, {} errors",
            s.rate_per_s, s.p50_us, s.p99_us, s.errors
        ),
        (None, Some(e)) => format!("{}: {e}", round.status),
        (None, None) => round.status.to_string(),
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}"))
}

fn rate_cell(row: &Row) -> String {
    match row.rate_per_s {
        Some(rate) if row.status == "ok" => thousands(rate),
        Some(rate) => format!("{} ({})", thousands(rate), row.status),
        None => row.status.to_string(),
    }
}

fn latency_cell(row: &Row) -> String {
    match (row.p50_us, row.p99_us) {
        (Some(p50), Some(p99)) => format!("{p50:.0} / {p99:.0}"),
        _ => "-".to_string(),
    }
}

fn target_cell(row: &Row) -> String {
    match (row.target, row.service_index) {
        (Target::PodToPod, _) => format!("pod-to-pod ({})", row.address),
        (t, Some(i)) => format!("{} (#{}, {})", t.as_str(), i + 1, row.address),
        (t, None) => t.as_str().to_string(),
    }
}

/// The markdown tables.
pub fn markdown(report: &Report) -> String {
    let o = &report.options;
    let smallest = o.counts.iter().min().copied().unwrap_or(1);
    let placement = o.cpus.describe();
    let mut md = String::new();
    let _ = writeln!(md, "## Services: connect-request-close to a ClusterIP\n");
    let _ = writeln!(
        md,
        "Kernel {}, {} CPUs; {} concurrent connect/send 1 byte/read 1 byte/close loops, \
         {} s per measurement, {} rounds (mechanisms alternate within each round); {placement}. \
         iptables: kube-proxy's layout loaded with `{}` ({}). Rates and latencies are \
         medians over rounds; `ciliate/iptables` is the median of the per-round pair ratios; \
         `vs N={smallest}` compares with the same mechanism and target at N={smallest}.\n",
        report.kernel,
        report.cpus,
        o.concurrency,
        o.seconds,
        o.rounds,
        o.iptables.restore_command(),
        report.iptables_version,
    );
    let _ = writeln!(
        md,
        "| services | target | iptables conn/s | p50 / p99 µs | vs N={smallest} | ciliate conn/s | p50 / p99 µs | vs N={smallest} | ciliate/iptables |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
    for ipt in report
        .rows
        .iter()
        .filter(|r| r.mechanism == Mechanism::Iptables)
    {
        let Some(cil) = report.rows.iter().find(|r| {
            r.mechanism == Mechanism::Ciliate
                && r.services == ipt.services
                && r.target == ipt.target
        }) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(ipt.services as f64),
            target_cell(ipt),
            rate_cell(ipt),
            latency_cell(ipt),
            ratio(ipt.vs_smallest_n),
            rate_cell(cil),
            latency_cell(cil),
            ratio(cil.vs_smallest_n),
            ratio(cil.vs_iptables),
        );
        for row in [ipt, cil] {
            if let Some(error) = &row.error {
                // One note per distinct reason, naming every address it hit.
                let reason = error
                    .strip_prefix(&format!("{}: ", row.address))
                    .unwrap_or(error);
                let head = format!("{} {}: {reason}", row.mechanism.as_str(), row.status);
                match reasons.iter_mut().find(|(h, _)| *h == head) {
                    Some((_, addresses)) if !addresses.contains(&row.address) => {
                        addresses.push(row.address.clone());
                    }
                    Some(_) => {}
                    None => reasons.push((head, vec![row.address.clone()])),
                }
            }
            if row.errors > 0 {
                notes.push(format!(
                    "{} N={} {}: {} failed connections during the runs",
                    row.mechanism.as_str(),
                    row.services,
                    row.target.as_str(),
                    row.errors
                ));
            }
        }
    }
    let mut notes: Vec<String> = reasons
        .into_iter()
        .map(|(head, addresses)| format!("{head} ({})", addresses.join(", ")))
        .chain(notes)
        .collect();
    notes.dedup();
    if !notes.is_empty() {
        let _ = writeln!(md);
        for note in notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    let _ = writeln!(md, "\n### Time to program N services\n");
    let _ = writeln!(
        md,
        "| services | iptables-restore (rules) | s | ciliate map writes (entries) | s |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
    for ipt in report
        .programming
        .iter()
        .filter(|p| p.mechanism == Mechanism::Iptables)
    {
        let cil = report
            .programming
            .iter()
            .find(|p| p.mechanism == Mechanism::Ciliate && p.services == ipt.services);
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {} | {} |",
            thousands(ipt.services as f64),
            thousands(ipt.entries as f64),
            ipt.seconds,
            cil.map_or("-".to_string(), |c| thousands(c.entries as f64)),
            cil.map_or("-".to_string(), |c| format!("{:.3}", c.seconds)),
        );
    }
    let _ = writeln!(md, "\nWhole run: {:.0} s.", report.total_seconds);
    md
}

/// Writes `services.json` and `services.md` into `dir` and prints the tables.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = &dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    let json_path = dir.join("services.json");
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md = markdown(report);
    let md_path = dir.join("services.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("{md}");
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(100_000.0), "100,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
