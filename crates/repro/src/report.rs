//! The report of `chokepoint repro`: the terminal text, `report.md`, `report.json` and
//! `chart.svg` (drawn by [`super::chart`]), ready to paste into a post.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::load::StageResult;
pub use crate::run::{Report, Run};

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    })
}

fn failures(s: &StageResult) -> String {
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
    if let Some(knob) = &run.sweep_knob {
        let _ = write!(out, "| {knob} ");
    }
    let _ = write!(
        out,
        "| offered req/s | requests | ok | failed | p50 ms | p95 ms | p99 ms | max ms | answered ok/s | failed/s | completed/s |"
    );
    if has_canary {
        out.push_str(" canary p95 ms |");
    }
    for m in &metric_names {
        let _ = write!(out, " {m} |");
    }
    out.push('\n');
    out.push_str(
        &"|---".repeat(11 + usize::from(has_canary) + usize::from(run.sweep_knob.is_some()) + metric_names.len()),
    );
    out.push_str("|\n");
    for s in &run.stages {
        if let Some(v) = s.swept {
            let _ = write!(out, "| {v} ");
        }
        let _ = write!(
            out,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            s.offered_rps,
            if s.interrupted { " (interrupted)" } else { "" },
            s.requests,
            s.ok,
            failures(s),
            ms(s.p50_ms),
            ms(s.p95_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
            s.throughput_rps,
            s.failed() as f64 / s.seconds.max(1e-3),
            s.goodput_rps
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
    let knobs: Vec<String> = run.key_knobs.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
    let _ = writeln!(out, "**Knobs:** {}\n", knobs.join(", "));
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
    let knob = report.runs.iter().find_map(|r| r.sweep_knob.clone());
    let mut out = format!("### Side by side\n\n| {} |", knob.as_deref().unwrap_or("offered req/s"));
    for r in &report.runs {
        let _ = write!(
            out,
            " {0} ok | {0} failed | {0} p95 ms | {0} ok/s | {0} completed/s |",
            r.profile
        );
    }
    out.push('\n');
    out.push_str(&"|---".repeat(1 + 5 * report.runs.len()));
    out.push_str("|\n");
    let n = report.runs.iter().map(|r| r.stages.len()).max().unwrap_or(0);
    for i in 0..n {
        let offered = report.runs.iter().find_map(|r| r.stages.get(i)).map_or(0.0, |s| s.x());
        let _ = write!(out, "| {offered} |");
        for r in &report.runs {
            match r.stages.get(i) {
                Some(s) => {
                    let _ = write!(
                        out,
                        " {} | {} | {} | {:.1} | {:.1} |",
                        s.ok,
                        s.failed(),
                        ms(s.p95_ms),
                        s.throughput_rps,
                        s.goodput_rps
                    );
                }
                None => out.push_str(" – | – | – | – | – |"),
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
    let _ = writeln!(out, "Command: `{}` · chokepoint {}\n", report.command, report.version);
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
        "{}\n![throughput and latency against offered load (or the swept knob)](chart.svg)\n",
        text(report)
    );
    std::fs::write(dir.join("report.md"), md).context("writing report.md")?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(report)?).context("writing report.json")?;
    std::fs::write(dir.join("chart.svg"), crate::chart::svg(report)).context("writing chart.svg")?;
    Ok(())
}
