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
    pub knobs: Value,
    pub stages: Vec<StageResult>,
    pub verdict: Verdict,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub generated_at: String,
    pub stage_seconds: u64,
    pub request: String,
    pub runs: Vec<Run>,
    pub interrupted: bool,
}
