//! `retry-storm` — the HTTP delivery report: an integration with no retry logic, so one
//! transient failure of the receiver lost the delivery; and its mirror image, naive immediate
//! retries that multiply the load on a receiver that is already struggling.
//!
//! `/api/deliver` makes one delivery to the downstream through the client's retry policy
//! (knobs `retry_max_attempts`, `retry_base_ms`, `retry_max_backoff_ms`, `retry_budget_percent`);
//! the simulator's controls (`/control/fail-first`, `/control/outage`, `/sometimes-fail`) make the
//! receiver fail. `target=malformed` makes it answer 200 with a broken body, which is a 502 with a
//! clear message, never retried. Amplification = `downstream_attempts_total` (all kinds) /
//! `downstream_attempts_total{kind="first"}`.
//!
//! From the same report: `POST /api/upload?mode=buffer|stream` (0 to 100 MiB). `buffer` holds
//! the whole body in memory before hashing it (10 concurrent 10 MiB uploads: 100 MiB resident);
//! `stream` hashes it chunk by chunk in constant memory. Buffered bytes count against the memory
//! safety cap and budget.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::apidoc::{any, boolean, downstream_failures, int, num, obj, string, Op};
use crate::error::{AppError, AppResult};
use crate::infra::http_client::CallTimeout;
use crate::params::{Choice, Fallback, Num, Params};
use crate::scenarios::{Alert, Repro, RunConfig, Scenario};
use crate::state::AppState;

/// A buffered upload without `Content-Length` is counted against the memory cap in steps of this.
const UPLOAD_COUNT_STEP: u64 = 4 * 1024 * 1024;

/// Largest upload accepted (the report's 100 MB).
pub const UPLOAD_LIMIT: u64 = 100 * 1024 * 1024;

pub const TARGET: Choice = Choice {
    name: "target",
    choices: &["receiver", "malformed"],
    about: "receiver: the flaky receiver; malformed: one that answers 200 with a truncated body",
};

pub const UPLOAD_MODE: Choice = Choice {
    name: "mode",
    choices: &["buffer", "stream"],
    about: "buffer: the whole body in memory first (counted against the memory cap); stream: hashed chunk by chunk",
};

pub const FAILURE_RATE: Num<f64> = Num {
    name: "failure_rate",
    default: Fallback::Value(0.0),
    min: 0.0,
    max: 1.0,
    about: "probability that the receiver fails each attempt (on top of the background error rate knob)",
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/deliver", get(deliver))
        .route("/api/upload", post(upload))
}

async fn deliver(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let failure_rate: f64 = params.get(&FAILURE_RATE)?;
    let (endpoint, path) = match params.choice(&TARGET)? {
        "malformed" => ("/malformed", "/malformed".to_string()),
        _ => (
            "/sometimes-fail",
            format!("/sometimes-fail?failure_rate={failure_rate}"),
        ),
    };
    let knobs = state.knobs.current();
    let ok = state
        .downstream
        .get_json(&knobs, endpoint, &path, CallTimeout::Default)
        .await?;
    Ok(Json(json!({
        "delivered": true,
        "attempts": ok.attempts,
        "elapsed_ms": ok.elapsed.as_secs_f64() * 1e3,
        "receiver": ok.body,
    })))
}

fn too_large() -> AppError {
    AppError::PayloadTooLarge { limit: UPLOAD_LIMIT }
}

async fn upload(
    State(state): State<AppState>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Json<Value>> {
    let buffer = params.choice(&UPLOAD_MODE)? == "buffer";
    let declared: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > UPLOAD_LIMIT) {
        return Err(too_large());
    }
    let mut hasher = Sha256::new();
    let bytes = if buffer {
        // The fragile way: the whole body in memory first, counted against the memory cap as
        // it really is held. The chunks are kept as they arrive (no growing buffer that doubles
        // and copies: `to_bytes` peaked at 2.1x the body), and a body without a length is
        // counted in steps as it grows instead of being trusted to stay small.
        let budget = state.knobs.current().memory_budget_mb * 1024 * 1024;
        let mut holds = Vec::new();
        let mut counted: u64 = 0;
        if let Some(n) = declared {
            holds.push(state.memory.hold(n, budget)?);
            counted = n;
        }
        let mut chunks: Vec<axum::body::Bytes> = Vec::new();
        let mut n: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| AppError::invalid("body", format!("the upload was interrupted: {e}")))?;
            n += chunk.len() as u64;
            if n > UPLOAD_LIMIT {
                return Err(too_large());
            }
            while n > counted {
                holds.push(state.memory.hold(UPLOAD_COUNT_STEP, budget)?);
                counted += UPLOAD_COUNT_STEP;
            }
            chunks.push(chunk);
        }
        for c in &chunks {
            hasher.update(c);
        }
        drop(chunks);
        drop(holds);
        n
    } else {
        let mut stream = body.into_data_stream();
        let mut n: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| AppError::invalid("body", format!("the upload was interrupted: {e}")))?;
            n += chunk.len() as u64;
            if n > UPLOAD_LIMIT {
                return Err(too_large());
            }
            hasher.update(&chunk);
        }
        n
    };
    Ok(Json(json!({
        "mode": if buffer { "buffer" } else { "stream" },
        "bytes": bytes,
        "sha256": hex::encode(hasher.finalize()),
    })))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!(
    "retry-storm",
    "no retry loses deliveries; naive retries multiply the load"
)
.repro(REPRO)
.dashboard_row_with("downstream")
.alerts(ALERTS);

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "RetryAmplification",
        expr: "sum by (instance) (rate(downstream_attempts_total[1m]))\n  / sum by (instance) (rate(downstream_calls_total[1m])) > 2\n",
        for_: "1m",
        severity: "warning",
        summary: "Each downstream call makes more than 2 attempts on {{ $labels.instance }}",
        description: "Retries multiply the load on a struggling dependency (×{{ $value | humanize }}): add backoff, jitter and a retry budget.",
    },
];

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        downstream_failures(
            Op::new("get", "/api/deliver", "One delivery through the retry policy")
                .query(&[&FAILURE_RATE, &TARGET])
                .ok(
                    200,
                    "delivered",
                    obj(&[
                        ("delivered", boolean()),
                        ("attempts", int()),
                        ("elapsed_ms", num()),
                        ("receiver", any()),
                    ]),
                )
                .fails(422, "invalid_parameter"),
        ),
        Op::new("post", "/api/upload", "Upload 0-100 MiB, buffered or streamed")
            .query(&[&UPLOAD_MODE])
            .body(
                "application/octet-stream",
                json!({"type": "string", "format": "binary"}),
                false,
            )
            .ok(
                200,
                "hashed",
                obj(&[("mode", string()), ("bytes", int()), ("sha256", string())]),
            )
            .fails(413, "above 100 MiB (payload_too_large)")
            .fails(422, "invalid_parameter")
            .fails(507, "buffering would exceed the memory cap or budget (memory_cap)"),
    ]
}

/// `chokepoint repro retry-storm`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro retry-storm` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({})
}

/// The plan: what `repro retry-storm` sends, at which rates, watching what.
fn repro_plan(_config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/deliver?failure_rate=0.2");
    plan.rates = vec![10.0, 20.0, 40.0];
    plan.watches = vec![Watch::counter(
        "circuit_breaker_rejections_total",
        "breaker rejections",
        0.0,
    )];
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let attempts = (knobs.retry_max_attempts as f64).max(1.0);
    let lost = 0.2f64.powf(attempts);
    Prediction {
        capacity_rps: None,
        formula: format!(
            "receiver fails 20% of calls; {attempts} attempt(s): lost ≈ 0.2^{attempts} = {:.1}%",
            lost * 100.0
        ),
        expect: format!("about {:.1}% of deliveries fail with 502", lost * 100.0),
    }
}
