//! Slow I/O and blocked threads. `/api/slow` and `/api/random-delay` wait asynchronously (cheap:
//! thousands can wait at once). `/api/blocking` calls a blocking sleep on the async worker it runs
//! on: that worker serves nothing else meanwhile, so `WORKER_COUNT` blocking calls freeze every
//! route, probes included. That is the lesson of the thread-pool-exhaustion reports.
//! Metrics that move: `http_requests_in_flight`, `/health` latency in `http_request_duration_seconds`.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

use crate::apidoc::{array_of, int, num, obj, string, Op};
use crate::error::AppResult;
use crate::params::{Fallback, Num, Params};
use crate::resilience::guard::Group;
use crate::scenarios::{seed_number, Scenario};
use crate::state::AppState;

pub const DELAY: Num<f64> = Num {
    name: "delay",
    default: Fallback::Value(5.0),
    min: 1.0,
    max: 30.0,
    about: "seconds to sleep (asynchronously)",
};

pub const DURATION: Num<f64> = Num {
    name: "duration",
    default: Fallback::Value(5.0),
    min: 1.0,
    max: 30.0,
    about: "seconds to block the async worker thread",
};

pub const COUNT: Num<u32> = Num {
    name: "count",
    default: Fallback::Value(5),
    min: 1,
    max: 20,
    about: "concurrent simulated I/O operations of 0.1-0.5 s each",
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/slow", get(slow))
        .route("/api/random-delay", get(random_delay))
        .route("/api/blocking", get(blocking))
        .route("/api/parallel-io", get(parallel_io))
}

async fn slow(params: Params) -> AppResult<Json<Value>> {
    let delay: f64 = params.get(&DELAY)?;
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    Ok(Json(json!({
        "status": "completed",
        "requested_delay": seed_number(delay),
        "actual_duration": start.elapsed().as_secs_f64(),
        "delay": delay,
        "message": format!("responded after {delay} s"),
    })))
}

async fn random_delay() -> Json<Value> {
    let delay = rand::rng().random_range(0.5..=5.0);
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    Json(json!({"status": "completed", "delay_seconds": delay, "delay": delay,
                "message": "responded after a random delay"}))
}

async fn blocking(params: Params) -> AppResult<Json<Value>> {
    let duration: f64 = params.get(&DURATION)?;
    // Deliberately blocking: this parks the async worker thread itself.
    std::thread::sleep(Duration::from_secs_f64(duration));
    Ok(Json(json!({
        "status": "completed",
        "blocked_for": seed_number(duration),
        "warning": "This endpoint blocks the worker thread",
        "duration": duration,
        "message": "blocked an async worker thread; nothing else ran on it meanwhile",
    })))
}

async fn parallel_io(params: Params) -> AppResult<Json<Value>> {
    let count: u32 = params.get(&COUNT)?;
    let delays: Vec<f64> = {
        let mut rng = rand::rng();
        (0..count).map(|_| rng.random_range(0.1..=0.5)).collect()
    };
    let start = Instant::now();
    let ops = delays.iter().enumerate().map(|(i, d)| async move {
        tokio::time::sleep(Duration::from_secs_f64(*d)).await;
        json!({"task_id": i, "operation": i, "delay": d})
    });
    let results = futures::future::join_all(ops).await;
    let sequential: f64 = delays.iter().sum();
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Json(json!({
        "total_tasks": count,
        "total_duration": elapsed,
        "count": count,
        "results": results,
        "elapsed_seconds": elapsed,
        "sequential_seconds": sequential,
    })))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("io", "a blocked thread freezes every route it serves")
    .no_repro(
        "its collapse is a blocked worker thread, not a rate past a capacity, and no knob \
                 cures it (the cure is in the code: await, or move the work off the workers); \
                 load-tests/io.js shows both",
    )
    .dashboard_row_with("cpu");

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        Op::new("get", "/api/slow", "Asynchronous sleep")
            .guard(Group::Io)
            .query(&[&DELAY])
            .ok(
                200,
                "slept",
                obj(&[
                    ("status", string()),
                    ("requested_delay", num()),
                    ("actual_duration", num()),
                    ("delay", num()),
                    ("message", string()),
                ]),
            )
            .fails(422, "invalid_parameter"),
        Op::new("get", "/api/random-delay", "Asynchronous sleep of 0.5-5 s")
            .guard(Group::Io)
            .ok(
                200,
                "slept",
                obj(&[
                    ("status", string()),
                    ("delay_seconds", num()),
                    ("delay", num()),
                    ("message", string()),
                ]),
            ),
        Op::new("get", "/api/blocking", "Blocks the async worker thread it runs on")
            .guard(Group::Io)
            .query(&[&DURATION])
            .ok(
                200,
                "blocked",
                obj(&[
                    ("status", string()),
                    ("blocked_for", num()),
                    ("warning", string()),
                    ("duration", num()),
                    ("message", string()),
                ]),
            )
            .fails(422, "invalid_parameter"),
        Op::new("get", "/api/parallel-io", "Concurrent simulated I/O")
            .guard(Group::Io)
            .query(&[&COUNT])
            .ok(
                200,
                "done",
                obj(&[
                    ("total_tasks", int()),
                    ("total_duration", num()),
                    ("count", int()),
                    (
                        "results",
                        array_of(obj(&[("task_id", int()), ("operation", int()), ("delay", num())])),
                    ),
                    ("elapsed_seconds", num()),
                    ("sequential_seconds", num()),
                ]),
            )
            .fails(422, "invalid_parameter"),
    ]
}
