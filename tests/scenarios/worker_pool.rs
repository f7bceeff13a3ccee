//! `worker-pool`: 2 worker threads, 40 concurrent jobs of 200 ms, a 500 ms deadline. Fragile:
//! 4 succeed, 36 get DEADLINE_EXCEEDED, and all 40 still run (36 finish for nobody). Hardened
//! knobs: the excess is refused at once, late jobs are skipped or cut at their deadline instead of
//! run to the end, and 40 workers (resized live) serve everyone within the deadline.

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

    // Fix 1: bounded queue + deadline checked before work starts.
    app.set_knobs(json!({"worker_queue_max": 10, "worker_deadline_check": true}))
        .await;
    let wasted_before = app.metric("worker_pool_wasted_work_total").await;
    let results = burst(&app).await;
    let rejected_fast = results
        .iter()
        .filter(|(s, d)| *s == 503 && *d < Duration::from_millis(150))
        .count();
    assert_eq!(
        rejected_fast, 28,
        "2 running + 10 queued, the rest refused at once: {results:?}"
    );
    let ok = count(&results, 200);
    assert!((3..=5).contains(&ok), "{results:?}");
    // The 12 accepted jobs that did not answer in time are stopped: skipped when a worker takes
    // them past their deadline (`queued`), or cut at it with the deadline propagated (`running`)
    // — which of the two depends on whether a worker wakes just before or just after a queued
    // job's deadline, so the test counts both. At most the odd job finishes for nobody.
    let stopped = || async {
        let mut n = 0.0;
        for stage in ["queued", "running", "abandoned"] {
            n += app
                .metric(&format!(r#"worker_pool_deadline_exceeded_total{{stage="{stage}"}}"#))
                .await;
        }
        n
    };
    let wasted = || async { app.metric("worker_pool_wasted_work_total").await - wasted_before };
    let all_accounted = crate::common::eventually(Duration::from_secs(5), || async {
        stopped().await + wasted().await == (12 - ok) as f64
    })
    .await;
    let (stopped, wasted) = (stopped().await, wasted().await);
    assert!(
        all_accounted,
        "{ok} answered, {stopped} stopped, {wasted} wasted: not the 12 accepted"
    );
    assert!(stopped >= 5.0, "only {stopped} late jobs stopped");
    assert!(wasted <= 2.0, "{wasted} jobs still ran for nobody");
    assert!(app.metric("worker_pool_rejected_total").await >= 28.0);

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
