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
        assert!(body["message"].as_str().unwrap().contains(param), "{path}: {body}");
        // FastAPI's list, as the original lab answered.
        let entry = &body["detail"][0];
        assert_eq!(entry["loc"], serde_json::json!(["query", param]), "{path}: {body}");
        assert!(entry["msg"].is_string() && entry["type"].is_string(), "{path}: {body}");
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

/// The JSON type a field of the original lab's body had.
#[derive(Clone, Copy, Debug)]
enum T {
    Int,
    Num,
    Str,
    Arr,
    Obj,
    Is(&'static str),
}

fn has_type(v: &Value, t: T) -> bool {
    match t {
        T::Int => v.is_i64() || v.is_u64(),
        T::Num => v.is_number(),
        T::Str => v.is_string(),
        T::Arr => v.is_array(),
        T::Obj => v.is_object(),
        T::Is(s) => v == s,
    }
}

/// The original's fields of one body with their types; `a.0.b` reads the first item of `a`.
type Fields = &'static [(&'static str, T)];

/// (method, path, fields)
const ORIGINAL_BODIES: &[(&str, &str, Fields)] = &[
    (
        "GET",
        "/",
        &[("service", T::Str), ("version", T::Str), ("status", T::Str)],
    ),
    ("GET", "/health", &[("status", T::Is("healthy")), ("timestamp", T::Num)]),
    (
        "GET",
        "/api/fast",
        &[("status", T::Is("success")), ("message", T::Str), ("timestamp", T::Num)],
    ),
    ("GET", "/api/ping", &[("ping", T::Is("pong"))]),
    (
        "GET",
        "/api/cpu-intensive?complexity=20.0",
        &[
            ("result", T::Int),
            ("complexity", T::Int),
            ("duration_seconds", T::Num),
            ("warning", T::Str),
        ],
    ),
    (
        "GET",
        "/api/hash?iterations=100",
        &[("hash", T::Str), ("iterations", T::Int), ("duration_seconds", T::Num)],
    ),
    (
        "GET",
        "/api/json-processing?size=50",
        &[
            ("processed_items", T::Int),
            ("duration_seconds", T::Num),
            ("data_size_bytes", T::Int),
        ],
    ),
    (
        "GET",
        "/api/slow?delay=1",
        &[
            ("status", T::Str),
            ("requested_delay", T::Int),
            ("actual_duration", T::Num),
            ("message", T::Str),
        ],
    ),
    (
        "GET",
        "/api/random-delay",
        &[("status", T::Str), ("delay_seconds", T::Num)],
    ),
    (
        "GET",
        "/api/blocking?duration=1",
        &[("status", T::Str), ("blocked_for", T::Int), ("warning", T::Str)],
    ),
    (
        "GET",
        "/api/parallel-io?count=3",
        &[
            ("total_tasks", T::Int),
            ("total_duration", T::Num),
            ("results.0.task_id", T::Int),
            ("results.0.delay", T::Num),
        ],
    ),
    (
        "GET",
        "/api/memory-leak?size_mb=1",
        &[
            ("allocated_mb", T::Int),
            ("total_allocations", T::Int),
            ("warning", T::Str),
        ],
    ),
    (
        "GET",
        "/api/memory-spike?size_mb=1",
        &[("allocated_mb", T::Int), ("duration_seconds", T::Num), ("note", T::Str)],
    ),
    (
        "POST",
        "/api/tasks?title=t",
        &[("task_id", T::Int), ("title", T::Is("t")), ("description", T::Is(""))],
    ),
    ("GET", "/api/tasks", &[("count", T::Int), ("tasks", T::Arr)]),
    (
        "GET",
        "/api/db-pool-exhaust?concurrent_queries=1",
        &[
            ("concurrent_queries", T::Int),
            ("duration_seconds", T::Num),
            ("results.0.query_id", T::Int),
            ("results.0.status", T::Is("success")),
            ("warning", T::Str),
        ],
    ),
    (
        "GET",
        "/api/expensive-query?iterations=5",
        &[
            ("created_tasks", T::Int),
            ("total_tasks", T::Int),
            ("duration_seconds", T::Num),
        ],
    ),
    (
        "GET",
        "/api/call-downstream?timeout=10",
        &[
            ("status", T::Is("success")),
            ("downstream_response", T::Obj),
            ("duration_seconds", T::Num),
            ("timeout_configured", T::Int),
        ],
    ),
    (
        "GET",
        "/api/cascade-failure",
        &[
            ("total_calls", T::Int),
            ("duration_seconds", T::Num),
            ("results.0.service", T::Int),
            ("results.0.status", T::Is("success")),
            ("results.0.data", T::Obj),
        ],
    ),
    (
        "POST",
        "/api/clear-memory",
        &[("cleared_allocations", T::Int), ("status", T::Str)],
    ),
    ("GET", "/api/nope", &[("detail", T::Is("Not Found"))]),
    ("POST", "/api/ping", &[("detail", T::Is("Method Not Allowed"))]),
    (
        "GET",
        "/api/cpu-intensive?complexity=41",
        &[
            ("detail.0.type", T::Is("less_than_equal")),
            ("detail.0.loc", T::Arr),
            ("detail.0.msg", T::Is("Input should be less than or equal to 40")),
            ("detail.0.input", T::Is("41")),
            ("detail.0.ctx.le", T::Int),
        ],
    ),
    (
        "GET",
        "/api/slow?delay=abc",
        &[
            ("detail.0.type", T::Is("float_parsing")),
            ("detail.0.loc.1", T::Is("delay")),
        ],
    ),
];

/// A path like `results.0.status` into a body.
fn at<'a>(body: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(body, |v, key| match key.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[key],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_carry_the_original_labs_fields_with_its_types() {
    let app = spawn_app(Db::Sqlite, &["--worker-count", "4"]).await;
    let mut missing = Vec::new();
    for (method, path, fields) in ORIGINAL_BODIES {
        let resp = match *method {
            "POST" => app.post(path).await,
            _ => app.get(path).await,
        };
        let body: Value = resp.json().await.unwrap();
        for (field, t) in fields.iter() {
            let v = at(&body, field);
            if !has_type(v, *t) {
                missing.push(format!("{method} {path}: `{field}` should be {t:?}, is {v}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
