//! `chart.svg` of `chokepoint repro`, drawn with plotters (SVG backend): three panels against
//! offered load — successful and failed throughput, latency percentiles (log scale) and the
//! error share — each profile in its own colour *and* marker and line style, p50/p95/p99 each in
//! its own line style, the predicted capacity and each profile's knee marked and labelled, round
//! ticks, and the command, version and key knobs written under the title.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::run::{Report, Run};

/// Fragile red with filled circles and solid lines; hardened blue with hollow squares and
/// dashed lines; any further profile grey.
#[derive(Clone, Copy)]
struct Look {
    color: RGBColor,
    dashed: bool,
    square: bool,
}

fn look(i: usize, profile: &str) -> Look {
    match profile {
        "fragile" => Look {
            color: RGBColor(0xd6, 0x27, 0x28),
            dashed: false,
            square: false,
        },
        "hardened" => Look {
            color: RGBColor(0x1f, 0x77, 0xb4),
            dashed: true,
            square: true,
        },
        _ => Look {
            color: RGBColor(0x55, 0x55, 0x55),
            dashed: i % 2 == 1,
            square: i % 2 == 1,
        },
    }
}

/// A tick label: integers without decimals.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The smallest 1/2/2.5/5 × 10ⁿ at or above `v`: an axis end whose ticks are round.
pub fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// One percentile's line: its name, points, width and dash.
type Percentile = (&'static str, Vec<(f64, f64)>, u32, Option<(u32, u32)>);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A series of points in `look`'s line style, with its markers, labelled in the legend.
fn draw_series<'a, DB: DrawingBackend + 'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, DB, CT>,
    points: &[(f64, f64)],
    style: ShapeStyle,
    dash: Option<(u32, u32)>,
    square: bool,
    label: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let legend_style = style;
    let series = match dash {
        Some((size, spacing)) => {
            chart.draw_series(DashedLineSeries::new(points.iter().copied(), size, spacing, style))?
        }
        None => chart.draw_series(LineSeries::new(points.iter().copied(), style))?,
    };
    series
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], legend_style));
    if square {
        chart.draw_series(
            points
                .iter()
                .map(|&p| EmptyElement::at(p) + Rectangle::new([(-3, -3), (3, 3)], style)),
        )?;
    } else {
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
    }
    Ok(())
}

/// The legend, top left, over a translucent white.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xcc, 0xcc, 0xcc))
        .label_font(("sans-serif", 12))
        .draw()
}

fn runs_max(report: &Report, f: impl Fn(&Run) -> Vec<f64>) -> f64 {
    report.runs.iter().flat_map(f).fold(0.0, f64::max)
}

fn draw(report: &Report, root: &Area) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let (title_area, body) = root.split_vertically(96);
    title_area.draw(&Text::new(
        format!("chokepoint repro {} — {}", report.scenario, report.request),
        (16, 10),
        ("sans-serif", 20).into_font().color(&BLACK),
    ))?;
    let mut caption = vec![format!(
        "{} · chokepoint {} · {} s per stage, open model{}",
        report.command,
        report.version,
        report.stage_seconds,
        if report.interrupted {
            " · interrupted: partial"
        } else {
            ""
        }
    )];
    for run in &report.runs {
        let knobs: Vec<String> = run.key_knobs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        caption.push(format!("{}: {}", run.profile, knobs.join(", ")));
    }
    for (i, line) in caption.iter().enumerate() {
        title_area.draw(&Text::new(
            line.clone(),
            (16, 38 + 17 * i as i32),
            ("sans-serif", 13).into_font().color(&RGBColor(0x44, 0x44, 0x44)),
        ))?;
    }
    let panels = body.split_evenly((1, 3));
    // A sweep's x axis is the knob (pool-too-big: the pool size), not the offered rate.
    let sweep = report.runs.iter().find_map(|r| r.sweep_knob.clone());
    let x_desc = sweep.clone().unwrap_or_else(|| "offered load (req/s)".to_string());
    let x_desc = x_desc.as_str();
    let x_unit = if sweep.is_some() { "" } else { " req/s" };
    let offered_max = runs_max(report, |r| {
        r.stages
            .iter()
            .map(|s| s.x())
            .chain(r.prediction.capacity_rps.filter(|_| sweep.is_none()))
            .collect()
    });
    let capacity_max = runs_max(report, |r| r.prediction.capacity_rps.into_iter().collect());
    let x_max = nice_ceil(offered_max * 1.05);
    let predicted: Vec<f64> = {
        let mut p: Vec<f64> = report.runs.iter().filter_map(|r| r.prediction.capacity_rps).collect();
        p.sort_by(f64::total_cmp);
        p.dedup();
        p
    };
    let grey = RGBColor(0x66, 0x66, 0x66);
    let label_font = ("sans-serif", 12).into_font();

    // 1. Throughput: successful (lines) and failed (thin) per second, y = x, the prediction.
    {
        let y_max = nice_ceil(
            runs_max(report, |r| {
                r.stages
                    .iter()
                    .map(|s| {
                        s.throughput_rps
                            .max(s.goodput_rps)
                            .max(s.failed() as f64 / s.seconds.max(1e-3))
                    })
                    .collect()
            })
            .max(if sweep.is_some() { capacity_max } else { offered_max })
                * 1.05,
        );
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("throughput (req/s)", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_labels(6)
            .x_label_formatter(&|v| tick(*v))
            .y_labels(6)
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if sweep.is_none() {
            chart.draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (x_max.min(y_max), x_max.min(y_max))],
                3,
                4,
                RGBColor(0xbb, 0xbb, 0xbb).into(),
            ))?;
        }
        for &c in &predicted {
            chart.draw_series(DashedLineSeries::new(
                [(0.0, c), (x_max, c)],
                6,
                4,
                grey.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("predicted capacity {c:.0} req/s"),
                (x_max * 0.02, c),
                label_font.clone().color(&grey).pos(Pos::new(HPos::Left, VPos::Bottom)),
            )))?;
        }
        for (i, run) in report.runs.iter().enumerate() {
            let l = look(i, &run.profile);
            let ok: Vec<(f64, f64)> = run.stages.iter().map(|s| (s.x(), s.throughput_rps)).collect();
            let failed: Vec<(f64, f64)> = run
                .stages
                .iter()
                .map(|s| (s.x(), s.failed() as f64 / s.seconds.max(1e-3)))
                .collect();
            let dash = l.dashed.then_some((8, 5));
            draw_series(
                &mut chart,
                &ok,
                l.color.stroke_width(3),
                dash,
                l.square,
                &format!("{} succeeded", run.profile),
            )?;
            // Goodput, where the answer only promises the work (an async 202): its own line.
            if run
                .stages
                .iter()
                .any(|s| (s.goodput_rps - s.throughput_rps).abs() > 0.05)
            {
                let completed: Vec<(f64, f64)> = run.stages.iter().map(|s| (s.x(), s.goodput_rps)).collect();
                draw_series(
                    &mut chart,
                    &completed,
                    l.color.mix(0.8).stroke_width(2),
                    Some((1, 4)),
                    l.square,
                    &format!("{} completed", run.profile),
                )?;
            }
            if failed.iter().any(|p| p.1 > 0.0) {
                draw_series(
                    &mut chart,
                    &failed,
                    l.color.mix(0.55).stroke_width(1),
                    Some((2, 3)),
                    l.square,
                    &format!("{} failed", run.profile),
                )?;
            }
            if let Some(knee) = run.verdict.knee_offered_rps {
                chart.draw_series(DashedLineSeries::new(
                    [(knee, 0.0), (knee, y_max)],
                    2,
                    3,
                    l.color.stroke_width(1),
                ))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{} knee: {knee:.0}{x_unit} ", run.profile),
                    (knee, y_max * (0.5 - 0.07 * i as f64)),
                    label_font
                        .clone()
                        .color(&l.color)
                        .pos(Pos::new(HPos::Right, VPos::Center)),
                )))?;
            }
        }
        legend(&mut chart)?;
    }

    // 2. Latency percentiles, log scale: colour and marker by profile, line style by percentile.
    {
        let values: Vec<f64> = report
            .runs
            .iter()
            .flat_map(|r| r.stages.iter().flat_map(|s| [s.p50_ms, s.p95_ms, s.p99_ms]))
            .flatten()
            .filter(|v| *v > 0.0)
            .collect();
        let lo = 10f64.powf(
            values
                .iter()
                .copied()
                .fold(f64::MAX, f64::min)
                .clamp(0.01, 1e6)
                .log10()
                .floor(),
        );
        let hi = 10f64
            .powf(values.iter().copied().fold(1.0, f64::max).log10().ceil())
            .max(lo * 10.0);
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("latency (ms, log scale)", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_labels(6)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for &c in &predicted {
            chart.draw_series(DashedLineSeries::new([(c, lo), (c, hi)], 6, 4, grey.stroke_width(1)))?;
            chart.draw_series(std::iter::once(Text::new(
                format!(" predicted capacity {c:.0} req/s"),
                (c, lo * 1.15),
                label_font.clone().color(&grey).pos(Pos::new(HPos::Left, VPos::Bottom)),
            )))?;
        }
        for (i, run) in report.runs.iter().enumerate() {
            let l = look(i, &run.profile);
            let pick = |f: fn(&crate::load::StageResult) -> Option<f64>| -> Vec<(f64, f64)> {
                run.stages
                    .iter()
                    .filter_map(|s| f(s).filter(|v| *v > 0.0).map(|v| (s.x(), v)))
                    .collect()
            };
            let lines: [Percentile; 3] = [
                ("p50", pick(|s| s.p50_ms), 3, None),
                ("p95", pick(|s| s.p95_ms), 2, Some((8, 4))),
                ("p99", pick(|s| s.p99_ms), 1, Some((2, 3))),
            ];
            for (name, points, width, dash) in lines {
                draw_series(
                    &mut chart,
                    &points,
                    l.color.stroke_width(width),
                    dash,
                    l.square,
                    &format!("{} {name}", run.profile),
                )?;
            }
        }
        legend(&mut chart)?;
    }

    // 3. The share of requests that failed: shedding made visible.
    {
        let mut chart = ChartBuilder::on(&panels[2])
            .caption("failed (% of requests)", ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_max, 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_labels(6)
            .x_label_formatter(&|v| tick(*v))
            .y_labels(6)
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, run) in report.runs.iter().enumerate() {
            let l = look(i, &run.profile);
            let points: Vec<(f64, f64)> = run
                .stages
                .iter()
                .map(|s| (s.x(), 100.0 * s.failed() as f64 / s.requests.max(1) as f64))
                .collect();
            draw_series(
                &mut chart,
                &points,
                l.color.stroke_width(2),
                l.dashed.then_some((8, 5)),
                l.square,
                &format!("{} failed %", run.profile),
            )?;
        }
        legend(&mut chart)?;
    }
    root.present()?;
    Ok(())
}

/// The chart as an SVG document.
pub fn svg(report: &Report) -> String {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1500, 560)).into_drawing_area();
        if let Err(e) = draw(report, &root) {
            // Drawing into a string cannot fail for want of space; say so in the picture if it does.
            drop(root);
            return format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="600" height="40"><text x="10" y="25">chart failed: {}</text></svg>"#,
                e.to_string().replace('<', "&lt;").replace('&', "&amp;")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::nice_ceil;

    #[test]
    fn axis_ends_are_round() {
        assert_eq!(nice_ceil(88.0), 100.0);
        assert_eq!(nice_ceil(42.0), 50.0);
        assert_eq!(nice_ceil(21.0), 25.0);
        assert_eq!(nice_ceil(40.0), 50.0);
        assert_eq!(nice_ceil(100.0), 100.0);
        assert_eq!(nice_ceil(0.0), 1.0);
    }
}
