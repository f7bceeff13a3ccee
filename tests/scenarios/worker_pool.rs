//! `worker-pool`: 2 worker threads, 40 concurrent jobs of 200 ms, a 500 ms deadline. Fragile:
//! 4 succeed, 36 get DEADLINE_EXCEEDED, and all 40 still run (36 finish for nobody). Hardened
//! knobs: what cannot finish before its deadline is refused at once (deadline-aware admission),
//! the 4 that can are served, and 40 workers (resized live) serve everyone within the deadline.

use std::time::{Duration, Instant};

use crate::common::{spawn_app, Db, TestApp};
use futures::future::join_all;
use serde_json::json;

const BURST: &str = "/api/worker-pool?work_ms=200&deadline_ms=500";

/// Fires 40 concurrent jobs: returns (status, latency) per request.
async fn burst(app: &TestApp) -> Vec<(u16, Duration)> {
    join_all((0..40).map(|_| async {
        let start = Instant::now();
        let status = app.get(BURST).await.status().as_u16();
        (status, start.elapsed())
    }))
    .await
}

fn count(results: &[(u16, Duration)], status: u16) -> usize {
    results.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_queue_collapses_goodput_and_the_fix_restores_it() {
    let app = spawn_app(Db::Sqlite, &["--worker-pool-size", "2"]).await;
    assert_eq!(app.metric("worker_pool_threads").await, 2.0);

    // Fragile: unbounded queue, no deadline check.
    let results = burst(&app).await;
    let ok = count(&results, 200);
    let late = count(&results, 504);
    assert!((3..=5).contains(&ok), "fragile: {ok} succeeded: {results:?}");
    assert_eq!(ok + late, 40, "{results:?}");
    // Every abandoned job still runs to the end: 18 more waves of 200 ms.
    let all_wasted = crate::common::eventually(Duration::from_secs(8), || async {
        app.metric("worker_pool_wasted_work_total").await == late as f64
    })
    .await;
    assert!(
        all_wasted,
        "wasted work {} != {late}",
        app.metric("worker_pool_wasted_work_total").await
    );
    assert_eq!(
        app.metric(r#"worker_pool_deadline_exceeded_total{stage="client"}"#)
            .await,
        late as f64
    );

    // Fix 1: bounded queue + deadline checked before work starts. Admission knows the work
    // queued ahead: 2 start now, 2 at 200 ms (done at 400 ms), and a fifth would end at 600 ms,
    // past its 500 ms deadline, so it and the rest are refused at once instead of failing late.
    app.set_knobs(json!({"worker_queue_max": 10, "worker_deadline_check": true}))
        .await;
    let wasted_before = app.metric("worker_pool_wasted_work_total").await;
    let rejected_before = app.metric("worker_pool_rejected_total").await;
    let results = burst(&app).await;
    let rejected_fast = results
        .iter()
        .filter(|(s, d)| *s == 503 && *d < Duration::from_millis(150))
        .count();
    let ok = count(&results, 200);
    assert_eq!(
        (ok, rejected_fast, count(&results, 504)),
        (4, 36, 0),
        "2 running + 2 that start in time; the rest refused at once: {results:?}"
    );
    // Goodput kept: as many served as fragile's best, none late, nothing run for nobody.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stopped = 0.0;
    for stage in ["queued", "running", "abandoned"] {
        stopped += app
            .metric(&format!(r#"worker_pool_deadline_exceeded_total{{stage="{stage}"}}"#))
            .await;
    }
    assert_eq!(stopped, 0.0, "late jobs were accepted");
    assert_eq!(app.metric("worker_pool_wasted_work_total").await - wasted_before, 0.0);
    assert_eq!(app.metric("worker_pool_rejected_total").await - rejected_before, 36.0);
    let (status, body) = app.get_json(BURST).await;
    assert_eq!(status, 200, "{body}");
    let refusals: Vec<_> = join_all((0..6).map(|_| app.get_json(BURST))).await;
    let refusal = refusals.iter().find(|r| r.0 == 503).expect("a refusal");
    assert!(
        refusal.1["detail"].as_str().unwrap().contains("deadline"),
        "{}",
        refusal.1
    );

    // Fix 2: more workers, resized live.
    app.set_knobs(json!({"worker_pool_size": 40})).await;
    assert_eq!(app.metric("worker_pool_threads").await, 40.0);
    let results = burst(&app).await;
    assert_eq!(count(&results, 200), 40, "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_comes_from_knob_header_or_parameter() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    // The grpc-timeout header sets the deadline.
    let start = Instant::now();
    let resp = app
        .client
        .get(app.url("/api/worker-pool?work_ms=2000"))
        .header("grpc-timeout", "300m")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(start.elapsed() < Duration::from_millis(1000), "{:?}", start.elapsed());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "deadline_exceeded");

    // The knob sets the default.
    app.set_knobs(json!({"request_deadline_ms": 200})).await;
    let (status, _) = app.get_json("/api/worker-pool?work_ms=600").await;
    assert_eq!(status, 504);
    let (status, body) = app.get_json("/api/worker-pool?work_ms=50&mode=burn").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "burn");

    // Bad input: 422 naming the parameter.
    for (path, param) in [
        ("/api/worker-pool?work_ms=0", "work_ms"),
        ("/api/worker-pool?work_ms=60001", "work_ms"),
        ("/api/worker-pool?mode=spin", "mode"),
        ("/api/worker-pool?deadline_ms=0", "deadline_ms"),
    ] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["parameter"], param, "{path}: {body}");
    }
    let resp = app
        .client
        .get(app.url("/api/worker-pool"))
        .header("grpc-timeout", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
}
