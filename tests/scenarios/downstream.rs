//! `downstream`: a slow dependency. A caller's timeout turns a 3 s dependency into a 504 after
//! about 1 s; an error answer becomes 502; the cascade fan-out reports every call; and the
//! embedded simulator's fault controls drive all of it.

use std::time::{Duration, Instant};

use crate::common::{spawn_app, Db};

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

    // Arrange: the simulator fails the next 2 calls.
    app.sim_control("fail-first?n=2").await;

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
    app.sim_control("outage?duration_ms=3000").await;
    let (status, body) = app.get_json("/api/cascade-failure").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failed"], 5, "{body}");
    for r in body["results"].as_array().unwrap() {
        // The original's fields: status success|failed and the error as text.
        assert_eq!(r["status"], "failed", "{r}");
        assert!(r["error"].as_str().unwrap().contains("downstream"), "{r}");
        assert_eq!(r["http_status"], 502, "{r}");
        assert_eq!(r["code"], "downstream_error", "{r}");
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
    app.sim_control("outage?duration_ms=300").await;
    assert_eq!(get("/slow?delay=0").await.0, 503);
    assert_eq!(get("/health").await.0, 200, "faults never touch /health");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get("/slow?delay=0").await.0, 200);
}

/// `n` concurrent `/api/call-downstream?timeout=10` against the 3 s dependency: returns
/// (statuses with latencies, the peak of `gauge` sampled every 100 ms for 2 s meanwhile).
async fn concurrent_calls(app: &crate::common::TestApp, n: usize, gauge: &str) -> (Vec<(u16, Duration)>, f64) {
    let calls = futures::future::join_all((0..n).map(|_| async {
        let start = Instant::now();
        let status = app.get("/api/call-downstream?timeout=10").await.status().as_u16();
        (status, start.elapsed())
    }));
    let sampler = async {
        let mut peak: f64 = 0.0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(app.metric(gauge).await);
        }
        peak
    };
    tokio::join!(calls, sampler)
}

/// 30 concurrent calls: (statuses with latencies, peak downstream calls in flight).
async fn pile_up(app: &crate::common::TestApp) -> (Vec<(u16, Duration)>, f64) {
    concurrent_calls(app, 30, "downstream_calls_in_flight").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_bounds_the_pile_up_behind_a_slow_dependency() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    // Calls completed per second: the successes over the time the last of them took.
    let goodput = |results: &[(u16, Duration)]| {
        let ok: Vec<Duration> = results.iter().filter(|(s, _)| *s == 200).map(|(_, d)| *d).collect();
        let last = ok.iter().max().copied().unwrap_or(Duration::from_secs(1));
        ok.len() as f64 / last.as_secs_f64()
    };

    // Fragile: every request waits its turn for one of the 10 connections (3 waves of 3 s);
    // all 30 pile up on the dependency.
    let (results, peak) = pile_up(&app).await;
    assert!(
        results
            .iter()
            .all(|(s, d)| *s == 200 && *d >= Duration::from_millis(2900)),
        "{results:?}"
    );
    assert!(peak >= 25.0, "fragile peak in flight {peak}");
    let fragile = goodput(&results);

    // Hardened at runtime: bulkhead 16, 250 ms wait for a connection taken from the deadline,
    // timeout cap 5 s (above the dependency's 3 s, so what is admitted completes), breaker.
    app.switch_profile("hardened").await;
    let (results, peak) = pile_up(&app).await;
    let fast_refusals = results
        .iter()
        .filter(|(s, d)| *s == 503 && *d < Duration::from_millis(600))
        .count();
    let served: Vec<Duration> = results.iter().filter(|(s, _)| *s == 200).map(|(_, d)| *d).collect();
    let hardened = goodput(&results);
    eprintln!(
        "hardened: peak {peak}, {} served (slowest {:?}), {fast_refusals} fast refusals; goodput {hardened:.2}/s vs fragile {fragile:.2}/s",
        served.len(),
        served.iter().max()
    );
    assert!(peak <= 16.0, "bulkhead let {peak} calls through");
    assert_eq!(served.len(), 10, "one call per connection is served: {results:?}");
    assert!(
        served.iter().all(|d| *d < Duration::from_millis(4500)),
        "served calls wait for no one: {results:?}"
    );
    assert_eq!(fast_refusals, 20, "the excess is refused fast: {results:?}");
    assert!(
        hardened >= 0.9 * fragile,
        "the cure completes {hardened:.2}/s against fragile's {fragile:.2}/s"
    );
    assert!(app.metric("downstream_bulkhead_rejections_total").await >= 14.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_failures_and_half_opens_after_the_open_duration() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    app.set_knobs(serde_json::json!({
        "breaker_enabled": true, "breaker_min_calls": 3, "breaker_window_calls": 5,
        "breaker_failure_rate": 0.5, "breaker_open_ms": 800
    }))
    .await;
    // The simulator's outage window drives the failures.
    app.sim_control("outage?duration_ms=60000").await;

    // 3 failures reach the threshold: the breaker opens.
    for _ in 0..3 {
        assert_eq!(app.get_json("/api/call-downstream?timeout=5").await.0, 502);
    }
    assert_eq!(app.metric("circuit_breaker_state").await, 1.0);
    let calls_before = app
        .metric(r#"downstream_calls_total{endpoint="/slow",outcome="http_error"}"#)
        .await;
    let start = Instant::now();
    let resp = app.get("/api/call-downstream?timeout=5").await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "open breaker answered in {:?}",
        start.elapsed()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "circuit_open");
    let calls_after = app
        .metric(r#"downstream_calls_total{endpoint="/slow",outcome="http_error"}"#)
        .await;
    assert_eq!(
        calls_before, calls_after,
        "an open breaker must not call the dependency"
    );

    // Still failing after the open duration: the half-open trial fails and it opens again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(app.get_json("/api/call-downstream?timeout=5").await.0, 502);
    assert_eq!(app.metric("circuit_breaker_state").await, 1.0);

    // The outage ends; after the open duration the trial succeeds and the breaker closes.
    app.sim_control("reset").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(app.get_json("/api/call-downstream?timeout=5").await.0, 200);
    assert_eq!(app.metric("circuit_breaker_state").await, 0.0);
    let text = app.metrics_text().await;
    for (from, to, n) in [
        ("closed", "open", 1.0),
        ("open", "half_open", 2.0),
        ("half_open", "open", 1.0),
        ("half_open", "closed", 1.0),
    ] {
        let series = format!(r#"circuit_breaker_transitions_total{{from="{from}",to="{to}"}}"#);
        assert_eq!(crate::common::metric_in(&text, &series), Some(n), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_ride_out_transient_failures() {
    let app = spawn_app(Db::Sqlite, &[]).await;

    // Fragile (no retry): the first transient failure aborts the call, at once.
    app.sim_control("fail-first?n=5").await;
    let start = Instant::now();
    assert_eq!(app.get_json("/api/call-downstream?timeout=5").await.0, 502);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(app.metric(r#"downstream_attempts_total{kind="retry"}"#).await, 0.0);

    // Backoff retries (6 attempts, 20 ms base, full jitter): the call rides out the 5 failures.
    app.sim_control("reset").await;
    app.set_knobs(serde_json::json!({"retry_max_attempts": 6, "retry_base_ms": 20, "retry_budget_percent": 0}))
        .await;
    app.sim_control("fail-first?n=5").await;
    let (status, body) = app.get_json("/api/call-downstream?timeout=5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.metric(r#"downstream_attempts_total{kind="first"}"#).await, 2.0);
    assert_eq!(app.metric(r#"downstream_attempts_total{kind="retry"}"#).await, 5.0);
    // Amplification: that one logical call took 6 attempts.
    assert_eq!(app.metric(r#"downstream_attempts_per_call_bucket{le="5"}"#).await, 1.0);
    assert_eq!(app.metric(r#"downstream_attempts_per_call_bucket{le="6"}"#).await, 2.0);

    // Too few attempts still fail, after exactly the allowed attempts.
    app.set_knobs(serde_json::json!({"retry_max_attempts": 3})).await;
    app.sim_control("fail-first?n=5").await;
    assert_eq!(app.get_json("/api/call-downstream?timeout=5").await.0, 502);
    assert_eq!(app.metric(r#"downstream_attempts_total{kind="retry"}"#).await, 7.0);
}

/// 12 concurrent calls through a pool of 4 connections: (statuses with latencies, peak calls
/// waiting for a connection).
async fn through_a_small_pool(app: &crate::common::TestApp) -> (Vec<(u16, Duration)>, f64) {
    concurrent_calls(app, 12, "downstream_pool_waiting").await
}

/// The cascade's cause: the client's connection pool. Fragile queues for a connection without
/// limit (each wave of 4 adds 3 s); a capped wait that counts against the deadline fails the
/// excess fast instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_pool_queues_calls_until_its_wait_is_capped() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    app.set_knobs(serde_json::json!({"downstream_pool_size": 4})).await;

    // Fragile: three waves of 4; the last waits 6 s for a connection, then 3 s for the answer.
    let (results, waiting) = through_a_small_pool(&app).await;
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    eprintln!("fragile: peak waiting {waiting}, latencies {latencies:?}");
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert!(latencies[11] >= Duration::from_millis(8_500), "{latencies:?}");
    assert!(latencies[0] < Duration::from_millis(4_500), "{latencies:?}");
    assert!(waiting >= 7.0, "peak waiting {waiting}");

    // The cure: wait at most 200 ms for a connection, taken from the call's deadline.
    app.set_knobs(serde_json::json!({"downstream_pool_wait_ms": 200, "downstream_deadline_includes_wait": true}))
        .await;
    let (results, _) = through_a_small_pool(&app).await;
    let served = results.iter().filter(|(s, _)| *s == 200).count();
    let fast_refusals = results
        .iter()
        .filter(|(s, d)| *s == 503 && *d < Duration::from_millis(700))
        .count();
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap();
    eprintln!("capped: {served} served, {fast_refusals} refused fast, slowest {slowest:?}");
    assert_eq!(served, 4, "{results:?}");
    assert_eq!(fast_refusals, 8, "{results:?}");
    assert!(slowest < Duration::from_millis(4_500), "{slowest:?}");
    assert!(app.metric("downstream_pool_timeouts_total").await >= 8.0);
    assert_eq!(app.metric("downstream_pool_waiting").await, 0.0);
}
