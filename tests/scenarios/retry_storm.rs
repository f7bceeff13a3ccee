//! `retry-storm`: during a receiver outage, no retry loses every delivery at once; naive
//! immediate retries multiply the attempts (×5) and still lose them; backoff with jitter rides
//! out a short outage, and the retry budget bounds amplification during a long one. Uploads:
//! buffering 10 concurrent 10 MiB bodies costs their size in RSS; streaming does not.

use std::time::{Duration, Instant};

use crate::common::{spawn_app, Binary, Db, TestApp};
use futures::future::join_all;
use serde_json::json;

async fn outage(app: &TestApp, ms: u64) {
    app.sim_control(&format!("outage?duration_ms={ms}")).await;
}

/// 20 concurrent deliveries: (delivered, attempts sent, first attempts sent).
async fn deliveries(app: &TestApp) -> (usize, f64, f64) {
    let first0 = app.metric(r#"downstream_attempts_total{kind="first"}"#).await;
    let retry0 = app.metric(r#"downstream_attempts_total{kind="retry"}"#).await;
    let statuses = join_all((0..20).map(|_| async { app.get("/api/deliver").await.status().as_u16() })).await;
    let first = app.metric(r#"downstream_attempts_total{kind="first"}"#).await - first0;
    let retry = app.metric(r#"downstream_attempts_total{kind="retry"}"#).await - retry0;
    (statuses.iter().filter(|s| **s == 200).count(), first + retry, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_retries_multiply_load_and_the_budget_bounds_it() {
    // A long outage: nothing can succeed; what differs is how hard we hit the receiver.
    let app = spawn_app(Db::Sqlite, &[]).await;
    outage(&app, 60_000).await;

    // No retry (fragile): one attempt per delivery, all lost at once.
    let start = Instant::now();
    let (ok, attempts, first) = deliveries(&app).await;
    assert_eq!((ok, attempts, first), (0, 20.0, 20.0));
    assert!(start.elapsed() < Duration::from_secs(1));

    // Naive immediate retries: 5 attempts per delivery, amplification 5, still all lost.
    app.set_knobs(json!({"retry_max_attempts": 5, "retry_base_ms": 0, "retry_budget_percent": 0}))
        .await;
    let (ok, attempts, first) = deliveries(&app).await;
    assert_eq!(ok, 0);
    assert_eq!(attempts / first, 5.0, "naive amplification");
    drop(app);

    // Backoff + jitter + a 20% budget (fresh app, so the budget's window is empty):
    // at most 20% of 20 first attempts + the floor of 10 may be retried.
    let app = spawn_app(Db::Sqlite, &[]).await;
    outage(&app, 60_000).await;
    app.set_knobs(
        json!({"retry_max_attempts": 5, "retry_base_ms": 20, "retry_max_backoff_ms": 200,
                         "retry_budget_percent": 20}),
    )
    .await;
    let (ok, attempts, first) = deliveries(&app).await;
    assert_eq!(ok, 0);
    let amplification = attempts / first;
    assert!(
        amplification <= (20.0 + 4.0 + 10.0) / 20.0,
        "budgeted amplification {amplification}"
    );
    assert!(app.metric("downstream_retries_denied_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_with_jitter_rides_out_a_short_outage() {
    let app = spawn_app(Db::Sqlite, &[]).await;

    // No retry: a 400 ms outage loses every delivery made during it.
    outage(&app, 400).await;
    let (ok, _, _) = deliveries(&app).await;
    assert_eq!(ok, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Naive immediate retries burn their 5 attempts inside the outage: still all lost.
    app.set_knobs(json!({"retry_max_attempts": 5, "retry_base_ms": 0}))
        .await;
    outage(&app, 400).await;
    let (ok, attempts, first) = deliveries(&app).await;
    assert_eq!(ok, 0);
    assert_eq!(attempts / first, 5.0);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Backoff (100 ms base, doubling, full jitter), a generous budget: most deliveries retry
    // past the end of the outage and succeed.
    app.set_knobs(
        json!({"retry_max_attempts": 6, "retry_base_ms": 100, "retry_max_backoff_ms": 1000,
                         "retry_budget_percent": 300}),
    )
    .await;
    outage(&app, 400).await;
    let (ok, attempts, first) = deliveries(&app).await;
    eprintln!("backoff: {ok}/20 delivered, amplification {:.2}", attempts / first);
    assert!(ok >= 14, "only {ok} of 20 delivered");
    assert!(attempts / first <= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_a_clear_502_never_retried() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    app.set_knobs(json!({"retry_max_attempts": 5})).await;
    let (status, body) = app.get_json("/api/deliver?target=malformed").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "downstream_error");
    assert!(body["detail"].as_str().unwrap().contains("malformed JSON"), "{body}");
    assert_eq!(app.metric(r#"downstream_attempts_total{kind="retry"}"#).await, 0.0);
    assert_eq!(
        app.metric(r#"downstream_calls_total{endpoint="/malformed",outcome="bad_body"}"#)
            .await,
        1.0
    );
    for (path, param) in [
        ("/api/deliver?target=x", "target"),
        ("/api/deliver?failure_rate=2", "failure_rate"),
    ] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 422, "{path}");
        assert_eq!(body["parameter"], param);
    }
}

const MIB: u64 = 1024 * 1024;

/// 10 concurrent uploads of 10 MiB, each body generated in 64 KiB chunks (the client holds
/// none of it), to a binary of its own started for this measurement; returns its peak RSS
/// growth (`VmHWM` after the uploads minus its RSS before them).
async fn peak_rss_of_uploads(mode: &str) -> u64 {
    let lab = Binary::start().await;
    let client = reqwest::Client::new();
    lab.reset_peak();
    let base = lab.status_kib("VmHWM") * 1024;
    // Every upload holds back its last chunk until all ten have sent the rest, so the ten bodies
    // are in flight at the same moment (the report's concurrent uploads).
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(10));
    let uploads = (0..10).map(|i| {
        let barrier = barrier.clone();
        let chunks = futures::stream::unfold(0u32, move |c| {
            let barrier = barrier.clone();
            async move {
                if c == 160 {
                    return None;
                }
                if c == 159 {
                    barrier.wait().await;
                }
                Some((Ok::<_, std::io::Error>(vec![(i + c) as u8; 64 * 1024]), c + 1))
            }
        });
        let req = client
            .post(format!("{}/api/upload?mode={mode}", lab.base))
            .header("content-length", (10 * MIB).to_string())
            .body(reqwest::Body::wrap_stream(chunks));
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["bytes"], 10 * MIB);
        }
    });
    join_all(uploads).await;
    (lab.status_kib("VmHWM") * 1024).saturating_sub(base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_uploads_cost_their_size_in_memory_streamed_ones_do_not() {
    let streamed = peak_rss_of_uploads("stream").await;
    let buffered = peak_rss_of_uploads("buffer").await;
    eprintln!(
        "peak RSS growth: buffer {} MiB, stream {} MiB",
        buffered / MIB,
        streamed / MIB
    );
    assert!(
        buffered >= 70 * MIB,
        "buffering 100 MiB grew RSS by only {} MiB",
        buffered / MIB
    );
    assert!(streamed <= 30 * MIB, "streaming grew RSS by {} MiB", streamed / MIB);

    // Limits: a body past 100 MiB is refused (413) once the count passes it; buffers count
    // against the memory cap.
    let app = spawn_app(Db::Sqlite, &[]).await;
    let over = futures::stream::iter((0..1617).map(|_| Ok::<_, std::io::Error>(vec![0u8; 64 * 1024])));
    // Refused uploads leave their connection unusable: a client of their own keeps it out of
    // the shared pool.
    let throwaway = reqwest::Client::new();
    let resp = throwaway
        .post(app.url("/api/upload?mode=stream"))
        .body(reqwest::Body::wrap_stream(over))
        .send()
        .await;
    // The server answers before reading the body, so the client may see the reply or a broken
    // pipe; the server's own count says what it answered.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    let route = r#"http_requests_total{method="POST",route="/api/upload",status="413"}"#;
    assert_eq!(app.metric(route).await, 1.0);
    app.set_knobs(json!({"memory_budget_mb": 5})).await;
    let resp = throwaway
        .post(app.url("/api/upload?mode=buffer"))
        .body(vec![1u8; 6 * MIB as usize])
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 507);
    }
    assert_eq!(app.metric("memory_cap_refusals_total").await, 1.0);
    let resp = app
        .client
        .post(app.url("/api/upload?mode=stream"))
        .body(vec![1u8; 6 * MIB as usize])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = app.post_json("/api/upload?mode=zip").await;
    assert_eq!(status, 422);
}
