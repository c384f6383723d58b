//! `bench.svg`: a small hand-written bar chart (no plotting crate to build).
//! Left: pod to pod, each datapath against the kernel baseline of the same
//! run (1.0 = the kernel), per test. Right: per-packet ns, new and
//! established flow, per path.

use std::fmt::Write as _;

use crate::bench::Report;
use crate::pod_to_pod::{Config, Test};

const COLORS: [&str; 4] = ["#888888", "#2b7bba", "#e6a03b", "#d9534f"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel of grouped bars: groups of (label, values); values scaled to `max`.
struct Panel<'a> {
    title: &'a str,
    x: f64,
    width: f64,
    series: &'a [&'a str],
    groups: Vec<(String, Vec<Option<f64>>)>,
    /// A horizontal reference line (e.g. 1.0 = the kernel).
    reference: Option<f64>,
    decimals: usize,
}

const TOP: f64 = 50.0;
const HEIGHT: f64 = 260.0;

fn panel(svg: &mut String, p: &Panel<'_>) {
    let max = p
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .chain(p.reference)
        .fold(0.0_f64, f64::max)
        * 1.15;
    let max = if max > 0.0 { max } else { 1.0 };
    let _ = writeln!(
        svg,
        r#"<text x="{:.0}" y="30" font-size="15" font-weight="bold">{}</text>"#,
        p.x,
        escape(p.title)
    );
    let base = TOP + HEIGHT;
    let _ = writeln!(
        svg,
        r##"<line x1="{:.0}" y1="{base}" x2="{:.0}" y2="{base}" stroke="#000"/>"##,
        p.x,
        p.x + p.width
    );
    let groups = p.groups.len().max(1) as f64;
    let group_w = p.width / groups;
    let bar_w = (group_w * 0.8) / p.series.len().max(1) as f64;
    for (g, (label, values)) in p.groups.iter().enumerate() {
        let gx = p.x + g as f64 * group_w + group_w * 0.1;
        for (i, value) in values.iter().enumerate() {
            let Some(v) = value else { continue };
            let h = v / max * HEIGHT;
            let x = gx + i as f64 * bar_w;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {v:.3}</title></rect>"#,
                base - h,
                bar_w * 0.9,
                COLORS[i % COLORS.len()],
                escape(p.series[i])
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{v:.prec$}</text>"#,
                x + bar_w * 0.45,
                base - h - 3.0,
                prec = p.decimals
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            gx + group_w * 0.4,
            base + 16.0,
            escape(label)
        );
    }
    if let Some(r) = p.reference {
        let y = base - r / max * HEIGHT;
        let _ = writeln!(
            svg,
            r##"<line x1="{:.0}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#000" stroke-dasharray="4 3"/>"##,
            p.x,
            p.x + p.width
        );
    }
    for (i, name) in p.series.iter().enumerate() {
        let y = base + 36.0 + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.0}" y="{:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{:.0}" font-size="11">{}</text>"#,
            p.x,
            y - 9.0,
            COLORS[i % COLORS.len()],
            p.x + 15.0,
            y,
            escape(name)
        );
    }
}

pub fn chart(report: &Report) -> String {
    let mut svg = String::from(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="460" font-family="sans-serif">
<rect width="100%" height="100%" fill="#fff"/>
"##,
    );
    let configs = [
        Config::Kernel,
        Config::CiliateNative,
        Config::Flannel,
        Config::CiliateTunnel,
    ];
    let names: Vec<&str> = configs.iter().map(|c| c.as_str()).collect();
    let groups: Vec<(String, Vec<Option<f64>>)> = Test::ALL
        .iter()
        .map(|t| {
            let values = configs
                .iter()
                .map(|c| {
                    report.pod_to_pod.as_ref().and_then(|r| {
                        r.rows
                            .iter()
                            .find(|row| row.config == *c && row.test == *t)
                            .and_then(|row| row.vs_kernel)
                    })
                })
                .collect();
            (t.as_str().to_string(), values)
        })
        .collect();
    panel(
        &mut svg,
        &Panel {
            title: "Pod to pod across nodes / kernel (same run)",
            x: 30.0,
            width: 440.0,
            series: &names,
            groups,
            reference: Some(1.0),
            decimals: 2,
        },
    );
    let groups: Vec<(String, Vec<Option<f64>>)> = report
        .per_packet
        .as_ref()
        .map(|r| {
            r.rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    (
                        format!("path {}", i + 1),
                        vec![row.new_ns, row.established_ns],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    panel(
        &mut svg,
        &Panel {
            title: "Per packet, ns (BPF_PROG_TEST_RUN)",
            x: 530.0,
            width: 440.0,
            series: &["new flow", "established"],
            groups,
            reference: None,
            decimals: 0,
        },
    );
    // The path names go under the series legend: long names beside it ran
    // past the right edge.
    if let Some(r) = &report.per_packet {
        for (i, row) in r.rows.iter().enumerate() {
            let _ = writeln!(
                svg,
                r#"<text x="530" y="{}" font-size="10">path {}: {}</text>"#,
                TOP + HEIGHT + 72.0 + i as f64 * 13.0,
                i + 1,
                escape(row.path)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}
