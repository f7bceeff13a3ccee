//! What a repro run produced: one [`Run`] per profile, and the whole [`Report`].

use serde_json::Value;

use crate::load::StageResult;
use crate::plan::Prediction;
use crate::verdict::Verdict;

/// One profile's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub profile: String,
    pub prediction: Prediction,
    /// Every knob in force.
    pub knobs: Value,
    /// The knobs that decide this scenario (its own, and those the run set), for the report's
    /// and the chart's captions.
    pub key_knobs: std::collections::BTreeMap<String, Value>,
    pub stages: Vec<StageResult>,
    pub verdict: Verdict,
    /// The knob its stages sweep (each stage's `swept` value), when it sweeps one.
    pub sweep_knob: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The command line that produced it.
    pub command: String,
    /// The lab's version (`chokepoint --version`).
    pub version: String,
    pub scenario: String,
    pub target: String,
    pub generated_at: String,
    pub stage_seconds: u64,
    pub request: String,
    pub runs: Vec<Run>,
    pub interrupted: bool,
}
