//! `pool-too-big`: a pool far above the database's cores × 2 under CPU-bound queries
//! (`/api/expensive-query`, a recursive CTE on the real PostgreSQL). The collapse: with 32
//! connections and more queries offered than the server's cores can run, they all run on the
//! database at once, each time-sliced with the rest, and a light query beside them (`/api/tasks`)
//! is slowed by the same factor. The cure, `db_cpu_query_slots=4` (cores × 2) set live on the
//! same pool: at most 4 run at once, the rest wait in the app, the light query stays fast, and
//! the heavy ones complete nearly as many per second (here 92-95%: see the page).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chokepoint::scenarios::pool_too_big::{server_cores, REPRO_PATH};
use chokepoint_repro::lab::LabClient;
use chokepoint_repro::load::{run_stage, StageResult};
use chokepoint_repro::plan::{Plan, Target, Watch};
use serde_json::json;

use crate::common::{spawn_app_alone, Db, TestApp};

/// The median latency of `n` requests to `path`, one at a time.
async fn alone_ms(app: &TestApp, path: &str, n: usize) -> f64 {
    let mut xs = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
        xs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    xs.sort_by(f64::total_cmp);
    xs[n / 2]
}

async fn stage(app: &TestApp, rate: f64) -> StageResult {
    let lab = LabClient {
        client: app.client.clone(),
        base: app.base.clone(),
        token: None,
    };
    let mut plan = Plan::new(json!({}));
    plan.target = Target::get(REPRO_PATH);
    plan.canary = Some("/api/tasks?limit=10");
    plan.watches = vec![Watch::gauge("db_cpu_queries_running", "running", 0.0)];
    let stop = Arc::new(AtomicBool::new(false));
    run_stage(&lab, &plan, rate, Duration::from_secs(4), &stop, "pool-too-big", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_far_above_the_cores_runs_every_query_at_once_and_slots_in_the_app_cure_it() {
    // Alone: nothing else in the test process competes for the cores.
    let app = spawn_app_alone(Db::Postgres, &["--db-pool-size", "32", "--db-max-overflow", "0"]).await;
    let query_ms = alone_ms(&app, REPRO_PATH, 15).await;
    let canary_alone = alone_ms(&app, "/api/tasks?limit=10", 15).await;
    // More than the cores can run: the pool fills, and the queue is somewhere.
    let rate = (server_cores() * 1000.0 / query_ms * 1.25).round();

    let fragile = stage(&app, rate).await;
    let running = fragile.metrics["db_cpu_queries_running"];
    let canary_fragile = fragile.canary_p95_ms.expect("canary measured");
    assert!(
        running >= 16.0,
        "the pool of 32 should put most queries on the database at once: {running} ({fragile:?})"
    );
    assert!(
        canary_fragile >= 4.0 * canary_alone.max(1.0),
        "a light query beside them should be slowed with them: p95 {canary_fragile} ms vs {canary_alone} ms alone"
    );

    // The cure, live, on the same pool of 32.
    app.set_knobs(json!({"db_cpu_query_slots": 4})).await;
    let cured = stage(&app, rate).await;
    let running_cured = cured.metrics["db_cpu_queries_running"];
    let canary_cured = cured.canary_p95_ms.expect("canary measured");
    eprintln!(
        "pool-too-big: query alone {query_ms:.1} ms, canary alone {canary_alone:.1} ms, offered {rate}/s; \
         pool 32: {running} running, canary p95 {canary_fragile} ms, {} completed/s, p95 {:?} ms; \
         slots 4: {running_cured} running, canary p95 {canary_cured} ms, {} completed/s, p95 {:?} ms",
        fragile.goodput_rps, fragile.p95_ms, cured.goodput_rps, cured.p95_ms
    );
    assert!(running_cured <= 4.0, "at most 4 on the database: {running_cured}");
    assert!(
        canary_cured * 2.0 <= canary_fragile,
        "the light query should stay fast: p95 {canary_cured} ms cured vs {canary_fragile} ms"
    );
    // Not more: on these 2 cores the app and the load share the cores with PostgreSQL, and the
    // slots cost 5-8% of the heavy queries (docs/scenarios/pool-too-big.md says so, measured).
    assert!(
        cured.goodput_rps >= 0.85 * fragile.goodput_rps,
        "the cure completes about as many heavy queries: {} vs {} /s",
        cured.goodput_rps,
        fragile.goodput_rps
    );
    assert_eq!(
        cured.failed(),
        0,
        "nothing shed at a 30 s acquire timeout: {:?}",
        cured.failures
    );

    // The wait moved into the app: its histogram has the waits, the run phase the queries.
    let text = app.metrics_text().await;
    let waited = crate::common::metric_in(&text, "db_cpu_query_seconds_count{phase=\"wait\"}").unwrap_or(0.0);
    let ran = crate::common::metric_in(&text, "db_cpu_query_seconds_count{phase=\"run\"}").unwrap_or(0.0);
    assert!(
        ran >= (fragile.ok + cured.ok) as f64,
        "every served query ran once: {ran}"
    );
    assert!(waited >= ran, "every query passed the gate: {waited} vs {ran}");
}

/// The knob is validated like every knob: out of range is a 422 naming it and its range.
#[tokio::test]
async fn db_cpu_query_slots_out_of_range_is_refused_by_name() {
    let app = crate::common::spawn_app(Db::Sqlite, &[]).await;
    let (status, body) = app.patch_config(json!({"db_cpu_query_slots": 1001}), None).await;
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(text.contains("db_cpu_query_slots") && text.contains("1000"), "{text}");
    let (status, body) = app.patch_config(json!({"cpu_queue_max": 10001}), None).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("cpu_queue_max"), "{body}");
}

/// On SQLite the scenario says why it cannot run (its queries need a database server's cores).
#[tokio::test]
async fn on_sqlite_the_repro_says_it_needs_postgresql() {
    let app = crate::common::spawn_app(Db::Sqlite, &[]).await;
    let (status, body) = app.get_json("/lab/scenarios.json").await;
    assert_eq!(status, 200);
    let card = body
        .as_array()
        .or_else(|| body["scenarios"].as_array())
        .and_then(|a| a.iter().find(|s| s["id"] == "pool-too-big").cloned())
        .unwrap_or_else(|| panic!("pool-too-big in /lab/scenarios.json: {body}"));
    assert!(card.to_string().contains("needs PostgreSQL"), "{card}");
}
