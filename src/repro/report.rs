//! The report of `chokepoint repro`: the terminal text, `report.md`, `report.json` and
//! `chart.svg` (throughput and latency percentiles against offered load, the predicted capacity
//! as a line), ready to paste into a post.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::{Report, Run};

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    })
}

fn failures(s: &super::StageResult) -> String {
    if s.failures.is_empty() {
        "0".into()
    } else {
        s.failures
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One profile's stage table in Markdown (also readable in a terminal).
fn stage_table(run: &Run) -> String {
    let mut out = String::new();
    let has_canary = run.stages.iter().any(|s| s.canary_p95_ms.is_some());
    let metric_names: Vec<&String> = run
        .stages
        .first()
        .map(|s| s.metrics.keys().collect())
        .unwrap_or_default();
    let _ = write!(
        out,
        "| offered req/s | requests | ok | failed | p50 ms | p95 ms | p99 ms | max ms | throughput req/s |"
    );
    if has_canary {
        out.push_str(" canary p95 ms |");
    }
    for m in &metric_names {
        let _ = write!(out, " {m} |");
    }
    out.push('\n');
    out.push_str(&"|---".repeat(9 + usize::from(has_canary) + metric_names.len()));
    out.push_str("|\n");
    for s in &run.stages {
        let _ = write!(
            out,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            s.offered_rps,
            if s.interrupted { " (interrupted)" } else { "" },
            s.requests,
            s.ok,
            failures(s),
            ms(s.p50_ms),
            ms(s.p95_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
            s.throughput_rps
        );
        if has_canary {
            let _ = write!(out, " {} |", ms(s.canary_p95_ms));
        }
        for m in &metric_names {
            let v = s.metrics.get(*m).copied().unwrap_or(0.0);
            let _ = write!(
                out,
                " {} |",
                if v.abs() >= 1e6 {
                    format!("{:.1} MiB", v / 1048576.0)
                } else {
                    format!("{v}")
                }
            );
        }
        out.push('\n');
    }
    out
}

fn run_section(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {} profile\n", run.profile);
    let _ = writeln!(
        out,
        "**Prediction from the knobs:** {}. {}.\n",
        run.prediction.formula, run.prediction.expect
    );
    out.push_str(&stage_table(run));
    let _ = writeln!(out, "\n**Verdict:** {}.\n", run.verdict.summary);
    out
}

fn side_by_side(report: &Report) -> String {
    let mut out = String::from("### Side by side\n\n| offered req/s |");
    for r in &report.runs {
        let _ = write!(out, " {0} ok | {0} failed | {0} p95 ms | {0} req/s |", r.profile);
    }
    out.push('\n');
    out.push_str(&"|---".repeat(1 + 4 * report.runs.len()));
    out.push_str("|\n");
    let n = report.runs.iter().map(|r| r.stages.len()).max().unwrap_or(0);
    for i in 0..n {
        let offered = report
            .runs
            .iter()
            .find_map(|r| r.stages.get(i))
            .map_or(0.0, |s| s.offered_rps);
        let _ = write!(out, "| {offered} |");
        for r in &report.runs {
            match r.stages.get(i) {
                Some(s) => {
                    let _ = write!(
                        out,
                        " {} | {} | {} | {:.1} |",
                        s.ok,
                        s.failed(),
                        ms(s.p95_ms),
                        s.throughput_rps
                    );
                }
                None => out.push_str(" – | – | – | – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The report as Markdown: what the terminal prints and what `report.md` holds.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## chokepoint repro {}\n", report.scenario);
    let _ = writeln!(
        out,
        "Target: {} · request: `{}` · {} s per stage, open model (constant arrival rate; latency from the intended send time){}\n",
        report.target,
        report.request,
        report.stage_seconds,
        if report.interrupted { " · **interrupted: partial results**" } else { "" }
    );
    for run in &report.runs {
        out.push_str(&run_section(run));
    }
    if report.runs.len() > 1 {
        out.push_str(&side_by_side(report));
    }
    out
}

/// Writes report.md, report.json and chart.svg into `dir` (created if missing).
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = format!(
        "{}\n![throughput and latency against offered load](chart.svg)\n",
        text(report)
    );
    std::fs::write(dir.join("report.md"), md).context("writing report.md")?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(report)?).context("writing report.json")?;
    std::fs::write(dir.join("chart.svg"), svg(report)).context("writing chart.svg")?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 2] = ["#d62728", "#1f77b4"];

/// Two panels: throughput against offered load (with y = x and the predicted capacity), and
/// p50/p95/p99 against offered load (log scale, with the predicted capacity as a vertical line).
pub fn svg(report: &Report) -> String {
    let (w, h) = (960.0, 400.0);
    let panel_w = 400.0;
    let (top, bottom) = (50.0, 340.0);
    let max_x = report
        .runs
        .iter()
        .flat_map(|r| r.stages.iter().map(|s| s.offered_rps))
        .chain(report.runs.iter().filter_map(|r| r.prediction.capacity_rps))
        .fold(1.0, f64::max)
        * 1.1;
    let max_tp = report
        .runs
        .iter()
        .flat_map(|r| r.stages.iter().map(|s| s.throughput_rps))
        .fold(max_x, f64::max);
    let lat: Vec<f64> = report
        .runs
        .iter()
        .flat_map(|r| r.stages.iter().flat_map(|s| [s.p50_ms, s.p95_ms, s.p99_ms]))
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let (lat_lo, lat_hi) = (
        lat.iter()
            .copied()
            .fold(f64::MAX, f64::min)
            .clamp(0.1, 1.0)
            .log10()
            .floor(),
        lat.iter().copied().fold(1.0, f64::max).log10().ceil().max(1.0),
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">chokepoint repro {} — {}</text>"#,
        w / 2.0,
        esc(&report.scenario),
        esc(&report.request)
    );
    for (panel, x0) in [(0, 60.0), (1, 540.0)] {
        let x = |v: f64| x0 + v / max_x * panel_w;
        let y = |v: f64| {
            if panel == 0 {
                bottom - v / max_tp * (bottom - top)
            } else {
                let l = v.max(10f64.powf(lat_lo)).log10();
                bottom - (l - lat_lo) / (lat_hi - lat_lo) * (bottom - top)
            }
        };
        // Axes, ticks, titles.
        let _ = writeln!(
            s,
            r##"<path d="M{x0},{top} V{bottom} H{}" stroke="#333" fill="none"/>"##,
            x0 + panel_w
        );
        for i in 0..=4 {
            let v = max_x * f64::from(i) / 4.0;
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#333">{:.0}</text>"##,
                x(v),
                bottom + 16.0,
                v
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">offered load (req/s)</text>"#,
            x0 + panel_w / 2.0,
            bottom + 34.0
        );
        if panel == 0 {
            for i in 0..=4 {
                let v = max_tp * f64::from(i) / 4.0;
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#333">{:.0}</text>"##,
                    x0 - 6.0,
                    y(v) + 4.0,
                    v
                );
            }
            let _ = writeln!(s, r#"<text x="{x0}" y="{}">throughput (req/s)</text>"#, top - 8.0);
            let _ = writeln!(
                s,
                r##"<path d="M{x0},{bottom} L{:.1},{:.1}" stroke="#bbb" stroke-dasharray="2 3"/>"##,
                x(max_x.min(max_tp)),
                y(max_x.min(max_tp))
            );
        } else {
            let mut e = lat_lo as i32;
            while f64::from(e) <= lat_hi {
                let v = 10f64.powi(e);
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
                    x0 - 6.0,
                    y(v) + 4.0,
                    if v < 1.0 { format!("{v}") } else { format!("{v:.0}") }
                );
                let _ = writeln!(s, r##"<path d="M{x0},{:.1} H{}" stroke="#eee"/>"##, y(v), x0 + panel_w);
                e += 1;
            }
            let _ = writeln!(
                s,
                r#"<text x="{x0}" y="{}">latency ms (log): p50 · p95 - - p99 ···</text>"#,
                top - 8.0
            );
        }
        for (ri, run) in report.runs.iter().enumerate() {
            let color = COLORS[ri % COLORS.len()];
            // One line per distinct prediction (both profiles often predict the same capacity).
            let repeated = report.runs[..ri]
                .iter()
                .any(|r| r.prediction.capacity_rps == run.prediction.capacity_rps);
            if let Some(c) = run.prediction.capacity_rps.filter(|_| !repeated) {
                if panel == 0 {
                    let _ = writeln!(
                        s,
                        r#"<path d="M{x0},{:.1} H{}" stroke="{color}" stroke-dasharray="6 4" opacity="0.6"/>"#,
                        y(c),
                        x0 + panel_w
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{}" y="{:.1}" text-anchor="end" fill="{color}">predicted capacity {:.1}</text>"#,
                        x0 + panel_w,
                        y(c) - 4.0,
                        c
                    );
                } else {
                    let _ = writeln!(
                        s,
                        r#"<path d="M{:.1},{top} V{bottom}" stroke="{color}" stroke-dasharray="6 4" opacity="0.6"/>"#,
                        x(c)
                    );
                }
            }
            let series: Vec<(Vec<(f64, f64)>, &str)> = if panel == 0 {
                vec![(
                    run.stages
                        .iter()
                        .map(|st| (st.offered_rps, st.throughput_rps))
                        .collect(),
                    "",
                )]
            } else {
                vec![
                    (
                        run.stages
                            .iter()
                            .filter_map(|st| st.p50_ms.map(|v| (st.offered_rps, v)))
                            .collect(),
                        "",
                    ),
                    (
                        run.stages
                            .iter()
                            .filter_map(|st| st.p95_ms.map(|v| (st.offered_rps, v)))
                            .collect(),
                        r#" stroke-dasharray="6 3""#,
                    ),
                    (
                        run.stages
                            .iter()
                            .filter_map(|st| st.p99_ms.map(|v| (st.offered_rps, v)))
                            .collect(),
                        r#" stroke-dasharray="1 3""#,
                    ),
                ]
            };
            for (points, dash) in series {
                if points.is_empty() {
                    continue;
                }
                let d: Vec<String> = points
                    .iter()
                    .enumerate()
                    .map(|(i, (a, b))| format!("{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, x(*a), y(*b)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<path d="{}" stroke="{color}" stroke-width="2" fill="none"{dash}/>"#,
                    d.join(" ")
                );
                for (a, b) in &points {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                        x(*a),
                        y(*b)
                    );
                }
            }
        }
    }
    // Legend: one colour per profile.
    for (ri, run) in report.runs.iter().enumerate() {
        let color = COLORS[ri % COLORS.len()];
        let lx = 60.0 + ri as f64 * 140.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{color}"/>"#,
            h - 18.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 16.0,
            h - 8.0,
            esc(&run.profile)
        );
    }
    s.push_str("</svg>\n");
    s
}
