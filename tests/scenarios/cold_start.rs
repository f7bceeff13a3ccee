//! `cold-start`: 30 requests at concurrency 15 on workers started on demand (at most 10, 1 s
//! cold start, 100 ms of work, a 1.15 s gateway timeout — the report's minutes scaled to
//! milliseconds). With no warm workers, the 5 requests queued behind the cold starts pass the
//! gateway timeout: success below 100%. With 3 warm workers, everyone is served.

use std::time::{Duration, Instant};

use crate::common::{spawn_app, Db, TestApp};
use futures::future::join_all;
use serde_json::json;

/// 15 clients, 2 requests each, one after the other: (succeeded, gateway timeouts).
async fn serverless_run(app: &TestApp) -> (usize, usize) {
    let clients = (0..15).map(|_| async {
        let mut statuses = vec![];
        for _ in 0..2 {
            statuses.push(app.get("/api/cold-start?work_ms=100").await.status().as_u16());
        }
        statuses
    });
    let statuses: Vec<u16> = join_all(clients).await.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 30);
    assert!(statuses.iter().all(|s| *s == 200 || *s == 504), "{statuses:?}");
    let ok = statuses.iter().filter(|s| **s == 200).count();
    (ok, 30 - ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_workers_cure_the_cold_start_timeouts() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    assert_eq!(app.metric(r#"cold_start_workers{state="warm_idle"}"#).await, 0.0);

    // Fragile: no warm workers. 10 start cold; 5 requests wait behind them past the gateway.
    let (ok, timeouts) = serverless_run(&app).await;
    eprintln!("min warm 0: {ok}/30 succeeded");
    assert!(
        (20..30).contains(&ok),
        "expected a success rate below 100%, got {ok}/30"
    );
    assert_eq!(app.metric("cold_start_gateway_timeouts_total").await, timeouts as f64);
    assert_eq!(
        app.metric("cold_start_cold_starts_total").await,
        10.0,
        "max_workers bounds the cold starts"
    );

    // Fix: 3 warm workers (the idle ones beyond them retire after 100 ms).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.set_knobs(json!({"min_warm_workers": 3, "idle_timeout_ms": 100}))
        .await;
    assert_eq!(app.metric(r#"cold_start_workers{state="warm_idle"}"#).await, 3.0);
    let (ok, _) = serverless_run(&app).await;
    eprintln!("min warm 3: {ok}/30 succeeded");
    assert_eq!(ok, 30);

    // Back to none warm: the same run collapses again once the pool has shrunk to zero.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.set_knobs(json!({"min_warm_workers": 0})).await;
    assert_eq!(app.metric(r#"cold_start_workers{state="warm_idle"}"#).await, 0.0);
    let (ok, _) = serverless_run(&app).await;
    assert!(ok < 30, "cold again: {ok}/30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_parameters_are_validated() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    for path in [
        "/api/cold-start?work_ms=0",
        "/api/cold-start?work_ms=60001",
        "/api/cold-start?work_ms=x",
    ] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 422, "{path}");
        assert_eq!(body["parameter"], "work_ms");
    }
    let (status, _) = app.patch_config(json!({"max_workers": 0}), None).await;
    assert_eq!(status, 422);
}

/// Hardened: `/ready` answers 503 until the warm minimum has finished its cold start, so the
/// serverless burst sent as soon as `/ready` says 200 is served 30 of 30, in every run (each a
/// fresh process, the burst sent the moment readiness flips).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_warm_minimum_and_the_first_burst_is_served() {
    for run in 1..=3 {
        let app = spawn_app(Db::Sqlite, &["--profile", "hardened"]).await;
        let started = Instant::now();
        let mut warming = 0;
        loop {
            let (status, body) = app.get_json("/ready").await;
            if status == 200 {
                break;
            }
            assert_eq!((status, body["error"].as_str()), (503, Some("not_ready")), "{body}");
            if body["detail"].as_str().is_some_and(|d| d.contains("min_warm_workers")) {
                warming += 1;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never ready: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready_after = started.elapsed();
        assert_eq!(app.metric(r#"cold_start_workers{state="warm_idle"}"#).await, 3.0);
        let (ok, timeouts) = serverless_run(&app).await;
        eprintln!("run {run}: ready after {ready_after:?} ({warming} answers 'warming up'), {ok}/30 succeeded");
        assert!(warming > 0, "/ready said ready before the warm workers were warm");
        // The cold start is 1 s: readiness waited for it.
        assert!(ready_after >= Duration::from_millis(900), "ready after {ready_after:?}");
        assert_eq!((ok, timeouts), (30, 0), "run {run}");
    }
}
