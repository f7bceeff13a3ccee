//! The verdict of one profile's run: where it broke (the knee), the measured capacity against
//! the prediction, and the watched metric that said so first.

use super::scenarios::{self, Plan, Prediction};
use super::StageResult;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// The first stage (index) where it broke: throughput below 90% of offered, over 1%
    /// failures, or p95 above 3× the first stage's (and above 50 ms).
    pub knee_stage: Option<usize>,
    pub knee_offered_rps: Option<f64>,
    pub measured_capacity_rps: f64,
    /// measured / predicted capacity.
    pub capacity_ratio: Option<f64>,
    /// The watched metric that crossed its saturation threshold first, and at which stage.
    pub first_signal: Option<(String, usize)>,
    pub summary: String,
}
pub(super) fn verdict(
    plan: &Plan,
    config: &scenarios::RunConfig,
    prediction: &Prediction,
    stages: &[StageResult],
) -> Verdict {
    // The baseline is the best stage's p95 (not the first stage's: a cold start breaks first).
    let base_p95 = stages.iter().filter_map(|s| s.p95_ms).fold(f64::INFINITY, f64::min);
    let base_p95 = if base_p95.is_finite() { base_p95 } else { 0.0 };
    let knee = stages.iter().position(|s| {
        let fail_rate = s.failed() as f64 / s.requests.max(1) as f64;
        s.throughput_rps < 0.9 * s.offered_rps
            || fail_rate > 0.01
            || s.p95_ms.is_some_and(|p| p > (3.0 * base_p95).max(50.0))
    });
    let measured = stages.iter().map(|s| s.throughput_rps).fold(0.0, f64::max);
    let ratio = prediction.capacity_rps.map(|c| measured / c);
    let first_signal = plan
        .watches
        .iter()
        .filter_map(|w| {
            let t = scenarios::threshold(w, config);
            stages
                .iter()
                .position(|s| s.metrics.get(w.series).is_some_and(|v| *v > t))
                .map(|i| (w.label.to_string(), i))
        })
        .min_by_key(|(_, i)| *i);
    let mut summary = match knee {
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
            format!(
                "the knee is at {:.1} req/s (stage {}): {}",
                s.offered_rps,
                i + 1,
                why.join(", ")
            )
        }
        None => "no knee within the stages: it held at every offered rate".to_string(),
    };
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
        knee_offered_rps: knee.map(|i| stages[i].offered_rps),
        measured_capacity_rps: measured,
        capacity_ratio: ratio.map(|r| (r * 1000.0).round() / 1000.0),
        first_signal,
        summary,
    }
}
