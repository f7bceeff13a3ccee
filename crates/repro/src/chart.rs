//! `chart.svg` of `chokepoint repro`: throughput and latency percentiles against offered load,
//! the predicted capacity as a line.

use std::fmt::Write as _;

use crate::run::Report;

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
