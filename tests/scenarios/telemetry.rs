//! Telemetry: `/metrics` is valid Prometheus text (checked by the real `promtool`), routes are
//! labelled by template (unmatched paths share one label), and every request carries an id.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{spawn_app, Db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    // Move every family so each has samples.
    app.get("/api/ping").await;
    app.get("/api/db/hold?ms=5").await;
    app.get("/api/memory-spike?size_mb=1").await;
    app.get("/api/call-downstream?timeout=1").await;
    let resp = app.get("/metrics").await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/ensure-services.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for family in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
        "db_pool_max_connections",
        "db_pool_connections",
        "db_pool_waiting",
        "db_pool_acquire_wait_seconds_bucket",
        "db_pool_acquire_timeouts_total",
        "memory_retained_bytes",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "downstream_calls_total",
        "knob_value",
        "config_changes_total",
        "requests_shed_total",
        "requests_rate_limited_total",
        "request_timeouts_total",
        "circuit_breaker_state",
        "circuit_breaker_transitions_total",
        "downstream_attempts_total",
        "downstream_attempts_per_call_bucket",
        "cpu_offload_jobs_running",
        "memory_cap_refusals_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} missing from /metrics"
        );
    }
    assert!(text.contains(
        r#"http_request_duration_seconds_bucket{endpoint="/api/ping",method="GET",route="/api/ping",le="60"}"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_labelled_by_template_never_raw_path() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    app.get("/api/tasks?limit=3").await;
    for i in 0..3 {
        app.get(&format!("/scanner/probe/{i}")).await;
    }
    let text = app.metrics_text().await;
    assert_eq!(
        crate::common::metric_in(
            &text,
            r#"http_requests_total{method="GET",route="/api/tasks",status="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        crate::common::metric_in(
            &text,
            r#"http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(3.0)
    );
    assert!(!text.contains("/scanner/probe"), "raw paths leaked into labels");
    assert!(!text.contains("limit=3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_an_id() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let resp = app.get("/api/ping").await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "{generated}");
    let resp = app
        .client
        .get(app.url("/api/ping"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    // Every answer carries one, the router's own 404 and 405 and the probes included, and each
    // generated id is new.
    for path in ["/no/such/route", "/health", "/metrics"] {
        let resp = app.get(path).await;
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36, "{path}: {id}");
        assert_ne!(id, generated, "{path}");
    }
    let resp = app.client.delete(app.url("/api/ping")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers().contains_key("x-request-id"));
}

/// A client that gives up before the answer is counted: 499 with its duration (nginx's
/// convention), so a collapse that makes clients leave shows on the request panels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_gives_up_is_counted_as_499() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..3 {
        let err = impatient.get(app.url("/api/slow?delay=3")).send().await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
    let series = r#"http_requests_total{route="/api/slow",status="499"}"#;
    let counted = crate::common::eventually(std::time::Duration::from_secs(3), || async {
        crate::common::metric_in(&app.metrics_text().await, series) == Some(3.0)
    })
    .await;
    let text = app.metrics_text().await;
    assert!(counted, "{series} = {:?}", crate::common::metric_in(&text, series));
    // With their duration: three observations of at least 0.25 s, none past a second.
    let count = crate::common::metric_in(&text, r#"http_request_duration_seconds_count{route="/api/slow"}"#);
    assert_eq!(count, Some(3.0));
    let fast = crate::common::metric_in(
        &text,
        r#"http_request_duration_seconds_bucket{route="/api/slow",le="0.1"}"#,
    );
    let within = crate::common::metric_in(
        &text,
        r#"http_request_duration_seconds_bucket{route="/api/slow",le="1"}"#,
    );
    assert_eq!((fast, within), (Some(0.0), Some(3.0)));
    // Nothing is left in flight.
    assert_eq!(
        app.metric("http_requests_in_flight").await,
        1.0,
        "only the /metrics scrape itself"
    );
}

/// The original lab's neighbours: its metric names, `X-Process-Time`, and CORS for any origin
/// (a knob; on by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_labs_metric_names_headers_and_cors() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let resp = app
        .client
        .get(app.url("/api/fast"))
        .header("origin", "http://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let secs: f64 = resp.headers()["x-process-time"].to_str().unwrap().parse().unwrap();
    assert!((0.0..1.0).contains(&secs), "{secs}");
    // A browser's preflight is answered without reaching the route.
    let pre = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/tasks"))
        .header("origin", "http://elsewhere.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 200);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert_eq!(pre.headers()["access-control-allow-headers"], "content-type");

    let text = app.metrics_text().await;
    assert_eq!(
        crate::common::metric_in(
            &text,
            r#"http_requests_total{endpoint="/api/fast",method="GET",status="200"}"#
        ),
        Some(1.0)
    );
    assert!(crate::common::metric_in(&text, "http_requests_active").is_some());
    assert!(crate::common::metric_in(&text, "app_memory_bytes").unwrap() > 1e6);
    assert!(crate::common::metric_in(&text, "app_cpu_percent").is_some());

    // The knob turns CORS off.
    app.set_knobs(serde_json::json!({"cors_allow_any_origin": false})).await;
    let resp = app.get("/api/fast").await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let pre = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/tasks"))
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 405, "no preflight answer without the knob");
}
