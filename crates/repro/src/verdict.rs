//! The verdict of one profile's run: where it broke (the knee), the measured capacity against
//! the prediction, and the watched metric that said so first.

use crate::load::StageResult;
use crate::plan::{Plan, Prediction};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// The first stage (index) where it broke: throughput below 90% of offered, over 1%
    /// failures, or p95 above 3× the first stage's (and above 50 ms).
    pub knee_stage: Option<usize>,
    /// The knee's place on the x axis: its offered rate, or in a sweep the knob's value.
    pub knee_offered_rps: Option<f64>,
    pub measured_capacity_rps: f64,
    /// measured / predicted capacity.
    pub capacity_ratio: Option<f64>,
    /// The watched metric that crossed its saturation threshold first, and at which stage.
    pub first_signal: Option<(String, usize)>,
    pub summary: String,
}

/// Judges one profile's stages against the plan's watches and the prediction.
pub fn verdict(plan: &Plan, prediction: &Prediction, stages: &[StageResult]) -> Verdict {
    // The baseline is the best stage's p95 (not the first stage's: a cold start breaks first).
    let base_p95 = stages.iter().filter_map(|s| s.p95_ms).fold(f64::INFINITY, f64::min);
    let base_p95 = if base_p95.is_finite() { base_p95 } else { 0.0 };
    let best_goodput = stages.iter().map(|s| s.goodput_rps).fold(0.0, f64::max);
    let knee = if plan.sweep.is_some() {
        // A sweep at one offered rate: the knee is where the knob stops buying work, the first
        // value that completes 95% of the best.
        stages
            .iter()
            .position(|s| s.goodput_rps >= 0.95 * best_goodput && best_goodput > 0.0)
    } else {
        stages.iter().position(|s| {
            let fail_rate = s.failed() as f64 / s.requests.max(1) as f64;
            s.throughput_rps < 0.9 * s.offered_rps
                || fail_rate > 0.01
                || s.p95_ms.is_some_and(|p| p > (3.0 * base_p95).max(50.0))
        })
    };
    // Where a stage sits, in words: `40.0 req/s`, or `db_pool_size=16` in a sweep.
    let at = |s: &StageResult| match &plan.sweep {
        Some(sweep) => format!("{}={}", sweep.knob, s.x()),
        None => format!("{:.1} req/s", s.offered_rps),
    };
    let measured = stages.iter().map(|s| s.throughput_rps).fold(0.0, f64::max);
    let ratio = prediction.capacity_rps.map(|c| measured / c);
    let first_signal = plan
        .watches
        .iter()
        .filter_map(|w| {
            let t = w.saturated_above;
            stages
                .iter()
                .position(|s| s.metrics.get(w.series).is_some_and(|v| *v > t))
                .map(|i| (w.label.to_string(), i))
        })
        .min_by_key(|(_, i)| *i);
    let mut summary =
        match knee {
            Some(i) if plan.sweep.is_some() => {
                let s = &stages[i];
                let last = stages.last().unwrap_or(s);
                format!(
                "the knee is at {} (stage {}): {:.1} req/s completed, {:.0}% of the best; past it the knob buys at \
                 most {:.0}% more{}",
                at(s),
                i + 1,
                s.goodput_rps,
                100.0 * s.goodput_rps / best_goodput,
                100.0 * (best_goodput / s.goodput_rps.max(1e-9) - 1.0),
                if last.goodput_rps < 0.97 * best_goodput {
                    format!(", and at {} it completes {:.1} req/s, less than the best", at(last), last.goodput_rps)
                } else {
                    String::new()
                }
            )
            }
            Some(i) => {
                let s = &stages[i];
                let mut why = Vec::new();
                if s.throughput_rps < 0.9 * s.offered_rps {
                    why.push(format!(
                        "throughput {:.1} of {:.1} req/s offered",
                        s.throughput_rps, s.offered_rps
                    ));
                }
                if s.failed() > 0 {
                    let top = s
                        .failures
                        .iter()
                        .max_by_key(|(_, n)| **n)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default();
                    why.push(format!("{} failed (mostly {top})", s.failed()));
                }
                if let Some(p) = s.p95_ms.filter(|p| *p > (3.0 * base_p95).max(50.0)) {
                    why.push(format!("p95 {p:.0} ms vs {base_p95:.0} ms at the best stage"));
                }
                format!("the knee is at {} (stage {}): {}", at(s), i + 1, why.join(", "))
            }
            None if plan.sweep.is_some() => "no knee within the sweep: every value served as well".to_string(),
            None => "no knee within the stages: it held at every offered rate".to_string(),
        };
    if plan.sweep.is_some() {
        if let Some(best) = stages.iter().max_by(|a, b| a.goodput_rps.total_cmp(&b.goodput_rps)) {
            summary.push_str(&format!(
                "; the most work was done at {}: {:.1} req/s completed, p95 {} ms",
                at(best),
                best.goodput_rps,
                best.p95_ms.map_or("–".into(), |p| format!("{p:.0}"))
            ));
        }
    }
    if let (Some(c), Some(r)) = (prediction.capacity_rps, ratio) {
        summary.push_str(&format!(
            "; measured capacity {measured:.1} req/s = {:.0}% of the predicted {c:.1}",
            r * 100.0
        ));
    }
    if let Some((label, i)) = &first_signal {
        summary.push_str(&format!("; the first metric to show it: {label} (stage {})", i + 1));
    }
    Verdict {
        knee_stage: knee,
        knee_offered_rps: knee.map(|i| stages[i].x()),
        measured_capacity_rps: measured,
        capacity_ratio: ratio.map(|r| (r * 1000.0).round() / 1000.0),
        first_signal,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::{Target, Watch};

    fn stage(offered: f64, served: f64, p95: f64, waiting: f64) -> StageResult {
        StageResult {
            offered_rps: offered,
            seconds: 5.0,
            requests: (offered * 5.0) as u64,
            ok: (served * 5.0) as u64,
            failures: BTreeMap::from([("503 shed".to_string(), ((offered - served) * 5.0) as u64)]),
            p50_ms: Some(p95 / 2.0),
            p95_ms: Some(p95),
            p99_ms: Some(p95 * 1.2),
            max_ms: Some(p95 * 1.5),
            throughput_rps: served,
            goodput_rps: served,
            canary_p95_ms: None,
            metrics: BTreeMap::from([("db_pool_waiting".to_string(), waiting)]),
            interrupted: false,
            swept: None,
        }
    }

    /// The knee is the first stage that serves < 90% of its offered load (or fails > 1%, or
    /// whose p95 passes 3× the best); the watched metric
    /// that crossed its threshold first is named with its stage; the capacity is compared with
    /// the prediction.
    #[test]
    fn finds_the_knee_the_first_signal_and_the_capacity_ratio() {
        let plan = Plan {
            target: Target::get("/api/db/hold"),
            knobs: serde_json::json!({}),
            rates: vec![10.0, 20.0, 40.0],
            watches: vec![Watch::gauge("db_pool_waiting", "waiting", 0.0)],
            canary: None,
            before_stage: None,
            settle: std::time::Duration::ZERO,
            after_run: None,
            max_in_flight: 10,
            completed: None,
            sweep: None,
        };
        let prediction = Prediction {
            capacity_rps: Some(20.0),
            formula: String::new(),
            expect: String::new(),
        };
        let stages = [
            stage(10.0, 10.0, 20.0, 0.0),
            stage(20.0, 20.0, 25.0, 3.0),
            stage(40.0, 21.0, 900.0, 30.0),
        ];
        let v = verdict(&plan, &prediction, &stages);
        assert_eq!(v.knee_stage, Some(2));
        assert_eq!(v.knee_offered_rps, Some(40.0));
        assert_eq!(v.measured_capacity_rps, 21.0);
        assert!((v.capacity_ratio.unwrap() - 1.05).abs() < 1e-9);
        assert_eq!(v.first_signal, Some(("waiting".to_string(), 1)));
    }

    /// A sweep at one rate: the knee is the first value completing 95% of the best, named by
    /// the knob, and a largest value serving less than the best is said.
    #[test]
    fn a_sweeps_knee_is_where_the_knob_stops_buying_work() {
        let mut plan = Plan::new(serde_json::json!({}));
        plan.sweep = Some(crate::plan::Sweep {
            knob: "db_pool_size",
            values: vec![1.0, 4.0, 16.0, 64.0],
        });
        let prediction = Prediction {
            capacity_rps: None,
            formula: String::new(),
            expect: String::new(),
        };
        let stages: Vec<StageResult> = [(1.0, 180.0), (4.0, 356.0), (16.0, 373.0), (64.0, 300.0)]
            .iter()
            .map(|&(pool, done)| StageResult {
                swept: Some(pool),
                ..stage(480.0, done, 1000.0, 0.0)
            })
            .collect();
        let v = verdict(&plan, &prediction, &stages);
        assert_eq!(v.knee_stage, Some(1));
        assert_eq!(v.knee_offered_rps, Some(4.0));
        assert!(v.summary.contains("db_pool_size=4"), "{}", v.summary);
        assert!(
            v.summary.contains("at db_pool_size=64 it completes 300.0"),
            "{}",
            v.summary
        );
    }
}
