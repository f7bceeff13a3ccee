//! `downstream`: a slow dependency. A caller's timeout turns a 3 s dependency into a 504 after
//! about 1 s; an error answer becomes 502; the cascade fan-out reports every call; and the
//! embedded simulator's fault controls drive all of it.

mod common;

use std::time::{Duration, Instant};

use common::{spawn_app, Db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_timeout_turns_a_slow_dependency_into_a_fast_504() {
    let app = spawn_app(Db::Sqlite, &[]).await;

    // Act: the dependency takes 3 s, the caller allows 1 s.
    let start = Instant::now();
    let (status, body) = app.get_json("/api/call-downstream?timeout=1").await;
    let elapsed = start.elapsed();

    // Assert: 504 in about 1 s, with the downstream timeout body and metric.
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "downstream_timeout");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "took {elapsed:?}"
    );
    assert_eq!(
        app.metric("downstream_calls_total{endpoint=\"/slow\",outcome=\"timeout\"}")
            .await,
        1.0
    );

    // With a timeout longer than the dependency, the call succeeds after ~3 s.
    let start = Instant::now();
    let (status, body) = app.get_json("/api/call-downstream?timeout=5").await;
    assert_eq!(status, 200, "{body}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(5),
        "took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_dependency_gives_502_and_recovers() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let sim = app.downstream_url().await;

    // Arrange: the simulator fails the next 2 calls.
    let resp = app
        .client
        .post(format!("{sim}/control/fail-first?n=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Act + assert: 2 x 502 naming the upstream status, then success.
    for _ in 0..2 {
        let (status, body) = app.get_json("/api/call-downstream?timeout=5").await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"], "downstream_error");
        assert_eq!(body["upstream_status"], 503);
    }
    assert_eq!(app.get_json("/api/call-downstream?timeout=5").await.0, 200);
    assert_eq!(
        app.metric("downstream_calls_total{endpoint=\"/slow\",outcome=\"http_error\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_reports_each_call() {
    let app = spawn_app(Db::Sqlite, &[]).await;

    // Healthy dependency: 5 calls of 2 s in parallel, all fine, in ~2 s not 10 s.
    let start = Instant::now();
    let (status, body) = app.get_json("/api/cascade-failure").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "calls were not parallel: {:?}",
        start.elapsed()
    );
    assert_eq!(body["succeeded"], 5, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 5);

    // During an outage every call reports its 502.
    let sim = app.downstream_url().await;
    app.client
        .post(format!("{sim}/control/outage?duration_ms=3000"))
        .send()
        .await
        .unwrap();
    let (status, body) = app.get_json("/api/cascade-failure").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failed"], 5, "{body}");
    for r in body["results"].as_array().unwrap() {
        assert_eq!(r["status"], 502, "{r}");
        assert_eq!(r["error"], "downstream_error", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_endpoints_and_controls() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let sim = app.downstream_url().await;
    let get = |path: &str| {
        let url = format!("{sim}{path}");
        let client = app.client.clone();
        async move {
            let resp = client.get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    assert_eq!(get("/health").await.0, 200);
    assert_eq!(get("/slow?delay=0").await.0, 200);
    assert_eq!(get("/random?min_delay=0&max_delay=0.01").await.0, 200);
    assert_eq!(get("/random?min_delay=1&max_delay=0.5").await.0, 422);
    assert_eq!(get("/sometimes-fail?failure_rate=1").await.0, 500);
    assert_eq!(get("/sometimes-fail?failure_rate=0").await.0, 200);
    assert_eq!(get("/sometimes-fail?failure_rate=2").await.0, 422);
    assert_eq!(
        get("/timeout-trap?duration=1").await,
        (200, serde_json::json!({"trap": true}))
    );
    // burst-error: of every 4 calls the first 2 fail.
    let mut statuses = vec![];
    for _ in 0..8 {
        statuses.push(get("/burst-error?every=4&burst=2").await.0);
    }
    assert_eq!(statuses, vec![503, 503, 200, 200, 503, 503, 200, 200]);
    let (status, body) = get("/cascade?levels=2&delay=0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["inner"]["inner"]["level"], 0);
    let (_, stats) = get("/stats").await;
    assert!(stats["total_calls"].as_u64().unwrap() >= 14, "{stats}");
    assert!(stats["injected_failures"].as_u64().unwrap() >= 5, "{stats}");
    // fail-first needs n; the outage window ends by itself.
    let resp = app
        .client
        .post(format!("{sim}/control/fail-first"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    app.client
        .post(format!("{sim}/control/outage?duration_ms=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(get("/slow?delay=0").await.0, 503);
    assert_eq!(get("/health").await.0, 200, "faults never touch /health");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get("/slow?delay=0").await.0, 200);
}
