//! The seed-compatible API: every path the existing k6 scripts call answers with its documented
//! status and body shape, and every parameter outside its range gets 422 naming it.

use crate::common::{spawn_app, Db};
use futures::future::join_all;
use serde_json::Value;

/// (method, path, expected status, keys the body must have)
const SEED_CALLS: &[(&str, &str, u16, &[&str])] = &[
    ("GET", "/", 200, &["service", "endpoints"]),
    ("GET", "/health", 200, &["status"]),
    ("GET", "/ready", 200, &["status"]),
    ("GET", "/api/ping", 200, &["ping"]),
    ("GET", "/api/fast", 200, &["status", "message"]),
    (
        "GET",
        "/api/cpu-intensive",
        200,
        &["complexity", "result", "duration_ms"],
    ),
    ("GET", "/api/cpu-intensive?complexity=20", 200, &["result"]),
    ("GET", "/api/hash?iterations=100", 200, &["iterations", "hash"]),
    ("GET", "/api/json-processing?size=50", 200, &["size", "bytes", "sum"]),
    ("GET", "/api/slow?delay=1", 200, &["delay"]),
    ("GET", "/api/random-delay", 200, &["delay"]),
    ("GET", "/api/blocking?duration=1", 200, &["duration"]),
    (
        "GET",
        "/api/parallel-io?count=3",
        200,
        &["count", "results", "elapsed_seconds"],
    ),
    (
        "GET",
        "/api/memory-leak?size_mb=1",
        200,
        &["allocated_mb", "retained_mb"],
    ),
    ("GET", "/api/memory-spike?size_mb=1", 200, &["spike_mb", "held_ms"]),
    (
        "POST",
        "/api/tasks?title=t&description=d",
        200,
        &["id", "title", "description", "status", "created_at"],
    ),
    ("GET", "/api/tasks", 200, &["count", "tasks"]),
    ("GET", "/api/db/hold?ms=10", 200, &["held_ms", "wait_ms", "pool"]),
    (
        "GET",
        "/api/db-pool-exhaust?concurrent_queries=1",
        200,
        &["succeeded", "failed", "queries"],
    ),
    ("GET", "/api/expensive-query?iterations=5", 200, &["rows", "query_ms"]),
    (
        "GET",
        "/api/call-downstream?timeout=10",
        200,
        &["downstream", "elapsed_ms"],
    ),
    ("GET", "/api/cascade-failure", 200, &["calls", "results"]),
    ("GET", "/api/no-timeout", 200, &["downstream", "elapsed_ms"]),
    ("GET", "/metrics", 200, &[]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_path_answers_with_its_documented_status_and_shape() {
    // Blocking and CPU calls share 4 workers with the rest, as they would in the seed.
    let app = spawn_app(Db::Sqlite, &["--worker-count", "4"]).await;
    let calls = SEED_CALLS.iter().map(|(method, path, want, keys)| {
        let app = &app;
        async move {
            let resp = match *method {
                "POST" => app.post(path).await,
                _ => app.get(path).await,
            };
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (method, path, want, keys, status, text)
        }
    });
    for (method, path, want, keys, status, text) in join_all(calls).await {
        assert_eq!(status, *want, "{method} {path}: {text}");
        if keys.is_empty() {
            continue;
        }
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        for key in keys.iter() {
            assert!(body.get(key).is_some(), "{method} {path}: missing `{key}` in {body}");
        }
    }
    let (_, ping) = app.get_json("/api/ping").await;
    assert_eq!(ping, serde_json::json!({"ping": "pong"}));
    let (status, cleared) = app.post_json("/api/clear-memory").await;
    assert_eq!(status, 200);
    assert!(cleared["released_mb"].as_u64().unwrap() >= 1, "{cleared}");
}

/// (path, parameter named in the 422, its min, its max)
const OUT_OF_RANGE: &[(&str, &str, f64, f64)] = &[
    ("/api/cpu-intensive?complexity=0", "complexity", 1.0, 40.0),
    ("/api/cpu-intensive?complexity=41", "complexity", 1.0, 40.0),
    ("/api/cpu-intensive?complexity=abc", "complexity", 1.0, 40.0),
    ("/api/hash?iterations=0", "iterations", 1.0, 100000.0),
    ("/api/hash?iterations=100001", "iterations", 1.0, 100000.0),
    ("/api/json-processing?size=0", "size", 1.0, 10000.0),
    ("/api/json-processing?size=10001", "size", 1.0, 10000.0),
    ("/api/slow?delay=0.5", "delay", 1.0, 30.0),
    ("/api/slow?delay=31", "delay", 1.0, 30.0),
    ("/api/slow?delay=NaN", "delay", 1.0, 30.0),
    ("/api/blocking?duration=0", "duration", 1.0, 30.0),
    ("/api/blocking?duration=31", "duration", 1.0, 30.0),
    ("/api/parallel-io?count=0", "count", 1.0, 20.0),
    ("/api/parallel-io?count=21", "count", 1.0, 20.0),
    ("/api/memory-leak?size_mb=0", "size_mb", 1.0, 100.0),
    ("/api/memory-leak?size_mb=101", "size_mb", 1.0, 100.0),
    ("/api/memory-spike?size_mb=0", "size_mb", 1.0, 500.0),
    ("/api/memory-spike?size_mb=501", "size_mb", 1.0, 500.0),
    ("/api/tasks?limit=0", "limit", 1.0, 100.0),
    ("/api/tasks?limit=101", "limit", 1.0, 100.0),
    (
        "/api/db-pool-exhaust?concurrent_queries=0",
        "concurrent_queries",
        1.0,
        50.0,
    ),
    (
        "/api/db-pool-exhaust?concurrent_queries=51",
        "concurrent_queries",
        1.0,
        50.0,
    ),
    ("/api/expensive-query?iterations=0", "iterations", 1.0, 10000.0),
    ("/api/expensive-query?iterations=10001", "iterations", 1.0, 10000.0),
    ("/api/call-downstream?timeout=0", "timeout", 1.0, 60.0),
    ("/api/call-downstream?timeout=61", "timeout", 1.0, 60.0),
    ("/api/db/hold?ms=0", "ms", 1.0, 60000.0),
    ("/api/db/hold?ms=60001", "ms", 1.0, 60000.0),
    ("/api/cpu-intensive?complexity=-5", "complexity", 1.0, 40.0),
    ("/api/hash?iterations=99999999999999999999", "iterations", 1.0, 100000.0),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_parameters_get_422_naming_parameter_and_range() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    for (path, param, min, max) in OUT_OF_RANGE {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{path}: {body}");
        assert_eq!(body["parameter"], *param, "{path}: {body}");
        assert_eq!(body["range"]["min"].as_f64(), Some(*min), "{path}: {body}");
        assert_eq!(body["range"]["max"].as_f64(), Some(*max), "{path}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(param), "{path}: {body}");
    }
    // POST /api/tasks: title required and bounded.
    for path in [
        "/api/tasks",
        "/api/tasks?title=",
        &format!("/api/tasks?title={}", "x".repeat(201)),
    ] {
        let (status, body) = app.post_json(path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["parameter"], "title", "{path}: {body}");
    }
    // Nothing retained, nothing held: the refusals did no work.
    assert_eq!(app.metric("memory_retained_bytes").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (status, body) = app.get_json("/api/does-not-exist").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let (status, body) = app.post_json("/api/ping").await;
    assert_eq!(status, 405);
    assert_eq!(body["error"], "method_not_allowed");
    let (status, body) = app.get_json("/api/cpu-intensive?complexity=%ZZ").await;
    assert!(status == 422 || status == 200, "{status} {body}");
}
