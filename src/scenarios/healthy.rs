//! Healthy routes: the service index, liveness (`/health`), readiness (`/ready`) and the fast
//! endpoints (`/api/ping`, `/api/fast`). They do no work of their own, so their latency is the
//! canary: when CPU work runs inline or a handler blocks a worker thread, these slow down too.

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::apidoc::{any, nullable, num, obj, string, Op};
use crate::error::AppError;
use crate::scenarios::{Gauge, Scenario};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/ping", get(ping))
        .route("/api/fast", get(fast))
}

async fn index(State(state): State<AppState>) -> Json<Value> {
    // From the OpenAPI operations (built once with the app): the index cannot miss a route.
    let endpoints = state.endpoints.clone();
    Json(json!({
        "service": "chokepoint",
        "version": env!("CARGO_PKG_VERSION"),
        "status": "healthy",
        "description": "a deliberately fragile backend that reproduces production collapses on demand",
        "database": state.db.backend(),
        "downstream": state.downstream.base_url(),
        // The gRPC service (GRPC_PORT): `chokepoint.worker.v1.WorkerPool`, with reflection.
        "grpc": state.grpc_addr.map(|a| a.to_string()),
        "endpoints": *endpoints,
    }))
}

/// Seconds since the Unix epoch, as Python's `time.time()` gives them (the original's timestamps).
pub fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy", "timestamp": epoch_seconds()}))
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        return AppError::Unavailable {
            code: "not_ready",
            detail: "shutting down: draining in-flight requests".into(),
        }
        .into_response();
    }
    if let Some(status) = state.db.starting() {
        return AppError::Unavailable {
            code: "not_ready",
            detail: status,
        }
        .into_response();
    }
    if let Some((warm, wanted)) = state.elastic.warming(&state.knobs.current()) {
        return AppError::Unavailable {
            code: "not_ready",
            detail: format!(
                "warming up: {warm} of {wanted} warm workers (min_warm_workers) have finished their cold start"
            ),
        }
        .into_response();
    }
    if state.db.is_down() {
        return AppError::Unavailable {
            code: "not_ready",
            detail: "database unreachable".into(),
        }
        .into_response();
    }
    match state.db.ping().await {
        Ok(()) => Json(json!({"status": "ready", "database": state.db.backend()})).into_response(),
        Err(e) => {
            tracing::warn!(error = %crate::error::error_chain(&e), "readiness: database unreachable");
            AppError::Unavailable {
                code: "not_ready",
                detail: "database unreachable".into(),
            }
            .into_response()
        }
    }
}

async fn ping() -> Json<Value> {
    Json(json!({"ping": "pong"}))
}

async fn fast() -> Json<Value> {
    Json(json!({"status": "success", "message": "fast response", "timestamp": epoch_seconds()}))
}

/// Fallback for unknown paths: the same JSON error shape as everything else, with the original
/// lab's (FastAPI's) `detail` word for word and our sentence in `message`.
pub async fn not_found(uri: Uri) -> Response {
    let message = format!("no route for {}", uri.path());
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "detail": "Not Found", "message": message})),
    )
        .into_response()
}

/// A known path called with the wrong method (FastAPI's `detail`, our `message`).
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{method} is not allowed on {}", uri.path());
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"error": "method_not_allowed", "detail": "Method Not Allowed", "message": message})),
    )
        .into_response()
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("healthy", "the baseline: probes and fast routes, the canaries of every collapse", k6: "baseline")
    .test_file("tests/scenarios/api_surface.rs")
    .no_repro("the healthy reference: nothing collapses, so there is no capacity to sweep; \
                 load-tests/baseline.js is the canary beside every other run")
    .gauges(&[Gauge::value("http_in_flight", "http_requests_in_flight")]);

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        Op::new("get", "/", "Service index: version, backends and the endpoint table").ok(
            200,
            "the index",
            obj(&[
                ("service", string()),
                ("version", string()),
                ("status", string()),
                ("database", string()),
                ("grpc", nullable("string")),
                ("endpoints", any()),
            ]),
        ),
        Op::new("get", "/health", "Liveness").ok(200, "alive", obj(&[("status", string()), ("timestamp", num())])),
        Op::new(
            "get",
            "/ready",
            "Readiness: database reachable, the warm minimum (min_warm_workers) started, not draining",
        )
        .ok(200, "ready", obj(&[("status", string()), ("database", string())]))
        .fails(503, "draining for shutdown or database unreachable (not_ready)"),
        Op::new("get", "/api/ping", "The canary for unrelated-route latency").ok(
            200,
            "pong",
            obj(&[("ping", string())]),
        ),
        Op::new("get", "/api/fast", "A fast response").ok(
            200,
            "ok",
            obj(&[("status", string()), ("message", string()), ("timestamp", num())]),
        ),
    ]
}
