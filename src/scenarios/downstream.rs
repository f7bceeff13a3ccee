//! `downstream` — the cascade-failure report: a slow dependency (2-30 s), no timeout and
//! unbounded concurrency, so in-flight requests pile up behind it.
//!
//! `/api/call-downstream` calls `/slow?delay=3` with the caller's timeout (504 when it expires,
//! 502 on an error answer); `/api/cascade-failure` fans out 5 parallel calls (delay 2 s, timeout
//! 5 s each) and reports each one; `/api/no-timeout` waits 30 s with no timeout at all.
//! Metrics: `downstream_calls_total{endpoint,outcome}`, `downstream_call_duration_seconds`,
//! `downstream_calls_in_flight`, `http_requests_in_flight`.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use serde_json::{json, Value};

use crate::apidoc::{any, array_of, boolean, downstream_failures, int, num, obj, string, Op};
use crate::error::AppResult;
use crate::infra::http_client::CallTimeout;
use crate::params::{Fallback, Num, Params};
use crate::resilience::guard::Group;
use crate::scenarios::{seed_number, Alert, Gauge, Panel, Reading, Readings, Repro, RunConfig, Saturated, Scenario};
use crate::state::AppState;

/// The seed's fixed downstream delays and fan-out.
const CALL_DELAY_S: u32 = 3;
const CASCADE_CALLS: usize = 5;
const CASCADE_DELAY_S: u32 = 2;
const CASCADE_TIMEOUT: Duration = Duration::from_secs(5);
const NO_TIMEOUT_DELAY_S: u32 = 30;

pub const TIMEOUT: Num<f64> = Num {
    name: "timeout",
    default: Fallback::Value(5.0),
    min: 1.0,
    max: 60.0,
    about: "seconds to wait for the downstream (which takes 3 s)",
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/call-downstream", get(call_downstream))
        .route("/api/cascade-failure", get(cascade_failure))
        .route("/api/no-timeout", get(no_timeout))
}

async fn call_downstream(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let timeout: f64 = params.get(&TIMEOUT)?;
    let start = std::time::Instant::now();
    let ok = state
        .downstream
        .get_json(
            &state.knobs.current(),
            "/slow",
            &format!("/slow?delay={CALL_DELAY_S}"),
            CallTimeout::After(Duration::from_secs_f64(timeout)),
        )
        .await?;
    Ok(Json(json!({
        "status": "success",
        "downstream_response": ok.body,
        "duration_seconds": start.elapsed().as_secs_f64(),
        "timeout_configured": seed_number(timeout),
        "timeout": timeout,
        "elapsed_ms": ok.elapsed.as_secs_f64() * 1e3,
        "downstream": ok.body,
    })))
}

async fn cascade_failure(State(state): State<AppState>) -> Json<Value> {
    let start = std::time::Instant::now();
    let knobs = state.knobs.current();
    let calls = (0..CASCADE_CALLS).map(|i| {
        let client = state.downstream.clone();
        let knobs = knobs.clone();
        async move {
            let path = format!("/slow?delay={CASCADE_DELAY_S}");
            match client
                .get_json(&knobs, "/slow", &path, CallTimeout::After(CASCADE_TIMEOUT))
                .await
            {
                Ok(ok) => json!({"service": i, "status": "success", "data": ok.body,
                                 "call": i, "ok": true, "http_status": 200,
                                 "elapsed_ms": ok.elapsed.as_secs_f64() * 1e3}),
                Err(e) => json!({"service": i, "status": "failed", "error": e.to_string(),
                                 "call": i, "ok": false, "http_status": e.status().as_u16(), "code": e.code()}),
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    let succeeded = results.iter().filter(|r| r["ok"] == true).count();
    Json(json!({
        "total_calls": CASCADE_CALLS,
        "duration_seconds": start.elapsed().as_secs_f64(),
        "calls": CASCADE_CALLS,
        "succeeded": succeeded,
        "failed": CASCADE_CALLS - succeeded,
        "timeout_seconds": CASCADE_TIMEOUT.as_secs(),
        "results": results,
    }))
}

async fn no_timeout(State(state): State<AppState>) -> AppResult<Json<Value>> {
    let ok = state
        .downstream
        .get_json(
            &state.knobs.current(),
            "/slow",
            &format!("/slow?delay={NO_TIMEOUT_DELAY_S}"),
            CallTimeout::Never,
        )
        .await?;
    Ok(Json(json!({
        "elapsed_ms": ok.elapsed.as_secs_f64() * 1e3,
        "message": "waited for the downstream with no timeout",
        "downstream": ok.body,
    })))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario =
    crate::scenarios::scenario!("downstream", "a slow dependency piles requests up behind it")
        .repro(REPRO)
        .gauges(&[Gauge {
            key: "breaker",
            metric: "circuit_breaker_state",
            labels: &[],
            reading: Reading::BreakerState,
        }])
        .saturation(saturation)
        .dashboard(DASHBOARD)
        .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Downstream calls in flight",
        unit: "short",
        targets: &[("sum(downstream_calls_in_flight)", "in flight")],
        description: "A slow dependency without timeouts piles calls up here.",
    },
    Panel {
        title: "Calls by outcome",
        unit: "reqps",
        targets: &[("sum by (outcome) (rate(downstream_calls_total[1m]))", "{{outcome}}")],
        description: "",
    },
    Panel {
        title: "Connection pool: in use and waiting",
        unit: "short",
        targets: &[
            ("sum(downstream_pool_connections_in_use)", "in use"),
            ("sum(downstream_pool_waiting)", "waiting for a connection"),
            ("sum(rate(downstream_pool_timeouts_total[1m]))", "gave up waiting/s"),
        ],
        description: "downstream_pool_size connections; past them calls queue (fragile: without limit, the cascade).",
    },
    Panel {
        title: "Attempts per call (retry amplification)",
        unit: "short",
        targets: &[(
            "sum(rate(downstream_attempts_total[1m])) / sum(rate(downstream_calls_total[1m]))",
            "attempts / call",
        )],
        description: "Naive retries multiply the load on the struggling dependency.",
    },
    Panel {
        title: "Breaker state and rejections",
        unit: "short",
        targets: &[
            ("max(circuit_breaker_state)", "state (0 closed, 1 open, 2 half-open)"),
            ("sum(rate(circuit_breaker_rejections_total[1m]))", "rejections/s"),
            (
                "sum(rate(downstream_bulkhead_rejections_total[1m]))",
                "bulkhead rejections/s",
            ),
            (
                "sum(rate(downstream_retries_denied_total[1m]))",
                "retries denied by budget/s",
            ),
        ],
        description: "",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "CircuitBreakerOpen",
        expr: "max by (instance) (circuit_breaker_state) == 1",
        for_: "30s",
        severity: "warning",
        summary: "Downstream circuit breaker open on {{ $labels.instance }}",
        description: "Downstream calls fail fast with 503 circuit_open while the dependency recovers.",
    },
    Alert {
        name: "DownstreamConnectionQueue",
        expr: "max by (instance) (downstream_pool_waiting) > 10",
        for_: "1m",
        severity: "warning",
        summary: "{{ $value }} downstream calls waiting for a connection on {{ $labels.instance }}",
        description: "The downstream client's pool (downstream_pool_size) is exhausted and calls queue behind it: the cascade. Cap the wait with downstream_pool_wait_ms.",
    },
];

/// Its saturation banner: the breaker open.
fn saturation(r: &Readings) -> Option<Saturated> {
    (r.text("breaker") == Some("open"))
        .then(|| Saturated::new("downstream breaker").because(&["breaker"], "open: calls fail fast".into()))
}

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        downstream_failures(
            Op::new("get", "/api/call-downstream", "Downstream /slow?delay=3 with a timeout")
                .guard(Group::Downstream)
                .query(&[&TIMEOUT])
                .ok(
                    200,
                    "answered",
                    obj(&[
                        ("status", string()),
                        ("downstream_response", any()),
                        ("duration_seconds", num()),
                        ("timeout_configured", num()),
                        ("timeout", num()),
                        ("elapsed_ms", num()),
                        ("downstream", any()),
                    ]),
                )
                .fails(422, "invalid_parameter"),
        ),
        Op::new("get", "/api/cascade-failure", "Five parallel downstream calls")
            .guard(Group::Downstream)
            .ok(
                200,
                "the outcome of every call (failures included)",
                obj(&[
                    ("total_calls", int()),
                    ("duration_seconds", num()),
                    ("calls", int()),
                    ("succeeded", int()),
                    ("failed", int()),
                    ("timeout_seconds", int()),
                    (
                        "results",
                        array_of(obj(&[
                            ("service", int()),
                            ("status", string()),
                            ("call", int()),
                            ("ok", boolean()),
                            ("http_status", int()),
                        ])),
                    ),
                ]),
            ),
        downstream_failures(
            Op::new(
                "get",
                "/api/no-timeout",
                "Downstream delay of 30 s, waited for without a timeout",
            )
            .guard(Group::Downstream)
            .ok(
                200,
                "answered",
                obj(&[("elapsed_ms", num()), ("message", string()), ("downstream", any())]),
            ),
        ),
    ]
}

/// `chokepoint repro downstream`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro downstream` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({})
}

/// The plan: what `repro downstream` sends, at which rates, watching what.
fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let knobs = &config.knobs;
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/call-downstream?timeout=5");
    plan.rates = vec![2.0, 5.0, 10.0, 20.0];
    plan.canary = Some("/api/ping");
    plan.watches = vec![
        Watch::gauge("http_requests_in_flight", "requests in flight (max)", 16.0),
        Watch::gauge(
            "downstream_calls_in_flight",
            "downstream calls in flight (max)",
            f64::from(knobs.downstream_max_concurrency) - 0.5,
        ),
        Watch::gauge("downstream_pool_waiting", "calls waiting for a connection (max)", 0.5),
        Watch::counter("circuit_breaker_rejections_total", "breaker rejections", 0.0),
    ];
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let cap = knobs.downstream_timeout_cap_ms as f64;
    let (bulkhead, pool) = (knobs.downstream_max_concurrency, knobs.downstream_pool_size);
    let lanes = [bulkhead, pool].into_iter().filter(|&n| n > 0).min();
    if cap > 0.0 && cap < 3000.0 {
        return Prediction {
            capacity_rps: None,
            formula: format!("every call is cut at the {cap} ms timeout cap, before the dependency's 3 s: no call can succeed"),
            expect: "nothing waits past the cap; once the breaker opens, calls fail at once with 503 circuit_open instead of piling up".into(),
        };
    }
    let Some(lanes) = lanes else {
        return Prediction {
            capacity_rps: None,
            formula: "no bulkhead, no pool limit: in flight = offered rate × 3 s (Little's law), without bound".into(),
            expect: "every request waits the dependency out: latency ≥ 3 s at any rate, in-flight requests pile up"
                .into(),
        };
    };
    let capacity = f64::from(lanes) / 3.0;
    let what = if bulkhead > 0 && bulkhead <= pool || pool == 0 {
        format!("bulkhead {bulkhead}")
    } else {
        format!("pool {pool} connections")
    };
    let queues = (bulkhead == 0 || bulkhead > pool) && pool > 0 && knobs.downstream_pool_wait_ms == 0;
    Prediction {
        capacity_rps: Some(capacity),
        formula: format!("{what} / 3 s per call = {capacity:.1} req/s"),
        expect: if queues {
            format!(
                "past capacity calls wait for a connection without limit: each {pool} queued calls add 3 s, \
                 downstream_pool_waiting grows until callers time out"
            )
        } else {
            "past capacity calls are refused at once (503), in-flight requests stay bounded".into()
        },
    }
}
