//! The OpenAPI document, the docs page and the live lab panel's event stream, against a running
//! app. (schemathesis fuzzes the whole spec in CI — scripts/ci/api-fuzz.sh — and a real Chromium
//! opens both pages — scripts/ci/browser-test.sh.)

use std::time::{Duration, Instant};

use crate::common::{spawn_app, Db};
use futures::StreamExt;
use serde_json::Value;

#[tokio::test]
async fn every_documented_range_is_the_one_the_handler_enforces() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (status, spec) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.1.0");
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        if path.contains('{') {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let schema = &p["schema"];
                let Some(max) = schema["maximum"].as_f64() else {
                    continue;
                };
                // One past the documented maximum must be refused, naming the parameter and
                // the same range.
                let over = if schema["type"] == "integer" {
                    format!("{}", max as i64 + 1)
                } else {
                    format!("{}", max + 0.5)
                };
                let url = app.url(&format!("{path}?{}={over}", p["name"].as_str().unwrap()));
                let resp = match method.as_str() {
                    "get" => app.client.get(&url).send().await,
                    "post" => app.client.post(&url).send().await,
                    _ => continue,
                }
                .unwrap();
                assert_eq!(resp.status().as_u16(), 422, "{method} {path} {} = {over}", p["name"]);
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["parameter"], p["name"], "{method} {path}");
                assert_eq!(
                    body["range"]["max"].as_f64(),
                    Some(max),
                    "{method} {path} {}",
                    p["name"]
                );
                assert_eq!(
                    body["range"]["min"].as_f64(),
                    schema["minimum"].as_f64(),
                    "{method} {path} {}",
                    p["name"]
                );
                // And every documented failure status is one the spec lists for that operation.
                assert!(
                    op["responses"].get("422").is_some(),
                    "{method} {path} does not document 422"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} ranged parameters found");
}

#[tokio::test]
async fn the_index_lists_exactly_the_spec_operations() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (_, spec) = app.get_json("/openapi.json").await;
    let (_, index) = app.get_json("/").await;
    let ops: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i.as_object().unwrap().len())
        .sum();
    let endpoints = index["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), ops);
    assert!(endpoints
        .iter()
        .any(|e| e["endpoint"] == "GET /api/cpu-intensive?complexity=30"));
}

#[tokio::test]
async fn docs_and_lab_pages_are_served_with_their_embedded_assets() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    for (path, content_type, needle) in [
        ("/docs", "text/html", "/docs/swagger-ui-bundle.js"),
        ("/docs/swagger-ui-bundle.js", "text/javascript", "SwaggerUIBundle"),
        ("/docs/swagger-ui.css", "text/css", ".swagger-ui"),
        ("/lab", "text/html", "/lab/lab.js"),
        ("/lab/lab.js", "text/javascript", "EventSource('/lab/events')"),
        (
            "/lab/scenarios.json",
            "application/json",
            "k6 run load-tests/db-pool.js",
        ),
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(content_type), "{path}: {ct}");
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle}");
        assert!(
            !body.contains("https://cdn") && !body.contains("unpkg.com"),
            "{path} loads from a CDN"
        );
    }
}

/// Reads server-sent events until `done` accepts one snapshot or `limit` passes.
async fn watch_until(
    app: &crate::common::TestApp,
    limit: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Option<Value> {
    let resp = app.get("/lab/events").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let Ok(Some(chunk)) = tokio::time::timeout(end - Instant::now(), stream.next()).await else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                let snap: Value = serde_json::from_str(data).unwrap();
                if done(&snap) {
                    return Some(snap);
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_events_carry_live_numbers_and_knob_changes() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    // The first snapshot comes at once and describes the whole lab.
    let first = watch_until(&app, Duration::from_secs(3), |_| true)
        .await
        .expect("a first snapshot");
    assert_eq!(first["profile"], "fragile");
    assert_eq!(first["gauges"]["db_max"], 15.0);
    assert!(first["knobs"]["db_pool_timeout_ms"].is_number());
    assert!(first["groups"]["db-pool"].is_object() && first["groups"].get("admin").is_none());

    // Load on /api/ping shows up as healthy requests/s with percentiles.
    let load = {
        let (client, url) = (app.client.clone(), app.url("/api/ping"));
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(4);
            let mut n = 0;
            while Instant::now() < end && n < 20_000 {
                client.get(&url).send().await.unwrap();
                n += 1;
            }
        })
    };
    let busy = watch_until(&app, Duration::from_secs(6), |s| {
        s["groups"]["healthy"]["rps"].as_f64() > Some(50.0)
    })
    .await
    .expect("healthy traffic in a snapshot");
    assert!(busy["groups"]["healthy"]["p95_ms"].as_f64().is_some());
    // Every ping did its work: the completed/s (goodput) series counts them.
    let done = busy["groups"]["healthy"]["completed_rps"].as_f64().unwrap_or(0.0);
    let answered = busy["groups"]["healthy"]["rps"].as_f64().unwrap();
    assert!(
        done > 0.9 * answered && done <= answered + 0.01,
        "completed {done}/s of {answered}/s answered"
    );
    load.await.unwrap();

    // The percentiles are exact: on a fixed-latency route the panel's p50 is the client's.
    let mut measured = Vec::new();
    for _ in 0..5 {
        let batch: Vec<_> = (0..4)
            .map(|_| {
                let (client, url) = (app.client.clone(), app.url("/api/db/hold?ms=120"));
                tokio::spawn(async move {
                    let t = Instant::now();
                    let resp = client.get(&url).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    t.elapsed()
                })
            })
            .collect();
        for b in batch {
            measured.push(b.await.unwrap());
        }
    }
    let client_p50 = crate::common::median(measured).as_secs_f64() * 1e3;
    let snap = watch_until(&app, Duration::from_secs(4), |s| {
        s["groups"]["db-pool"]["window_requests"].as_u64() >= Some(20)
    })
    .await
    .expect("the 20 requests in the window");
    let panel_p50 = snap["groups"]["db-pool"]["p50_ms"].as_f64().unwrap();
    assert!(
        (panel_p50 / client_p50 - 1.0).abs() < 0.10,
        "panel p50 {panel_p50} ms, client p50 {client_p50:.1} ms"
    );

    // A knob change is reported once, as a change with before and after, in the next snapshot.
    app.set_knobs(serde_json::json!({"db_pool_timeout_ms": 4321})).await;
    let changed = watch_until(&app, Duration::from_secs(4), |s| {
        s["changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "db_pool_timeout_ms 30000 → 4321"))
    })
    .await
    .expect("the change in a snapshot");
    assert_eq!(changed["profile"], "custom");
    // A profile switch reads as one marker, not as the list of every knob it changed.
    app.switch_profile("hardened").await;
    let switched = watch_until(&app, Duration::from_secs(4), |s| s["profile"] == "hardened")
        .await
        .expect("the switch in a snapshot");
    assert_eq!(switched["changes"], serde_json::json!(["profile → hardened"]));
    assert_eq!(switched["profile"], "hardened");
}
