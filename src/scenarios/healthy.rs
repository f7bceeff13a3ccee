//! Healthy routes: the service index, liveness (`/health`), readiness (`/ready`) and the fast
//! endpoints (`/api/ping`, `/api/fast`). They do no work of their own, so their latency is the
//! canary: when CPU work runs inline or a handler blocks a worker thread, these slow down too.

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::AppError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/ping", get(ping))
        .route("/api/fast", get(fast))
}

/// The seed's endpoint table, grouped by the collapse each one shows.
const ENDPOINTS: &[(&str, &str, &str)] = &[
    (
        "GET /health",
        "healthy",
        "liveness; slows down when workers are starved",
    ),
    (
        "GET /ready",
        "healthy",
        "readiness: database reachable and not draining",
    ),
    ("GET /api/ping", "healthy", "the canary for unrelated-route latency"),
    ("GET /api/fast", "healthy", "fast response"),
    (
        "GET /api/cpu-intensive?complexity=30",
        "cpu",
        "recursive fibonacci, inline on the async workers",
    ),
    ("GET /api/hash?iterations=10000", "cpu", "chained SHA-256"),
    (
        "GET /api/json-processing?size=1000",
        "cpu",
        "serialize + parse + aggregate",
    ),
    ("GET /api/slow?delay=5", "io", "async sleep"),
    ("GET /api/random-delay", "io", "async sleep of 0.5-5 s"),
    (
        "GET /api/blocking?duration=5",
        "io",
        "blocks the worker thread it runs on",
    ),
    ("GET /api/parallel-io?count=5", "io", "concurrent simulated I/O"),
    ("GET /api/memory-leak?size_mb=10", "memory", "retained until cleared"),
    ("GET /api/memory-spike?size_mb=50", "memory", "held ~1 s then freed"),
    ("POST /api/clear-memory", "memory", "frees retained memory"),
    ("POST /api/tasks?title=..&description=..", "db-pool", "insert a task"),
    ("GET /api/tasks?limit=10", "db-pool", "list tasks"),
    ("GET /api/db/hold?ms=1000", "db-pool", "holds one pooled connection"),
    (
        "GET /api/db-pool-exhaust?concurrent_queries=10",
        "db-pool",
        "each query holds a connection 5 s",
    ),
    ("GET /api/expensive-query?iterations=1000", "db-pool", "heavy SQL"),
    (
        "GET /api/call-downstream?timeout=5",
        "downstream",
        "downstream /slow?delay=3 with a timeout",
    ),
    ("GET /api/cascade-failure", "downstream", "5 parallel downstream calls"),
    ("GET /api/no-timeout", "downstream", "downstream delay 30 s, no timeout"),
    (
        "GET /api/worker-pool?work_ms=100",
        "worker-pool",
        "work on a fixed OS-thread pool, within a deadline",
    ),
    (
        "GET /api/deliver",
        "retry-storm",
        "one delivery through the retry policy",
    ),
    (
        "POST /api/upload?mode=buffer",
        "retry-storm",
        "upload 0-100 MiB, buffered or streamed",
    ),
    (
        "GET /api/cold-start?work_ms=100",
        "cold-start",
        "work on a simulated pool provisioned on demand",
    ),
    (
        "POST /api/v1/deployments/",
        "burst",
        "create a deployment (sync 201 or async 202 + Location; Idempotency-Key)",
    ),
    ("GET /api/v1/deployments/{id}", "burst", "read a deployment back"),
    (
        "GET /api/cache/items/{id}",
        "cache-stampede",
        "read-through Redis cache over a slow query (needs REDIS_URL)",
    ),
    (
        "POST /admin/cache/flush",
        "cache-stampede",
        "delete the lab's cache keys",
    ),
    ("GET /metrics", "telemetry", "Prometheus metrics"),
];

async fn index(State(state): State<AppState>) -> Json<Value> {
    let endpoints: Vec<Value> = ENDPOINTS
        .iter()
        .map(|(path, scenario, what)| json!({"endpoint": path, "scenario": scenario, "description": what}))
        .collect();
    Json(json!({
        "service": "chokepoint",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "a deliberately fragile backend that reproduces production collapses on demand",
        "database": state.db.backend(),
        "downstream": state.downstream.base_url(),
        "endpoints": endpoints,
    }))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        return AppError::Unavailable {
            code: "not_ready",
            detail: "shutting down: draining in-flight requests".into(),
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
    Json(json!({"status": "ok", "message": "fast response", "timestamp": chrono::Utc::now().to_rfc3339()}))
}

/// Fallback for unknown paths: the same JSON error shape as everything else.
pub async fn not_found(uri: Uri) -> AppError {
    AppError::NotFound {
        detail: format!("no route for {}", uri.path()),
    }
}

/// A known path called with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let detail = format!("{method} is not allowed on {}", uri.path());
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"error": "method_not_allowed", "detail": detail})),
    )
        .into_response()
}
