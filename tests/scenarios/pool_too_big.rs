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

/// The latencies of `n` requests to `path`, one at a time, sorted (ms).
async fn alone_ms(app: &TestApp, path: &str, n: usize) -> Vec<f64> {
    let mut xs = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
        xs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    xs.sort_by(f64::total_cmp);
    xs
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
    run_stage(&lab, &plan, rate, Duration::from_secs(3), &stop, "pool-too-big", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_far_above_the_cores_runs_every_query_at_once_and_slots_in_the_app_cure_it() {
    // Alone: nothing else in the test process competes for the cores.
    let app = spawn_app_alone(Db::Postgres, &["--db-pool-size", "32", "--db-max-overflow", "0"]).await;
    // The fastest of 15: a neighbour's moment on the cores must not make the load too light.
    let query_ms = alone_ms(&app, REPRO_PATH, 15).await[0];
    let canary_alone = alone_ms(&app, "/api/tasks?limit=10", 15).await[7];
    // More than the cores can run: the pool fills, and the queue is somewhere.
    let rate = (server_cores() * 1000.0 / query_ms * 1.4).round();

    // Fragile (no slots) and the cure (`db_cpu_query_slots=4`, live, on the same pool of 32),
    // alternating under the same load, so a neighbour on the shared cores costs both alike.
    let (mut fragile, mut cured) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        app.set_knobs(json!({"db_cpu_query_slots": 0})).await;
        fragile.push(stage(&app, rate).await);
        app.set_knobs(json!({"db_cpu_query_slots": 4})).await;
        cured.push(stage(&app, rate).await);
    }
    let max = |v: &[StageResult], f: &dyn Fn(&StageResult) -> f64| v.iter().map(f).fold(f64::MIN, f64::max);
    let min = |v: &[StageResult], f: &dyn Fn(&StageResult) -> f64| v.iter().map(f).fold(f64::MAX, f64::min);
    let running = max(&fragile, &|s| s.metrics["db_cpu_queries_running"]);
    let running_cured = max(&cured, &|s| s.metrics["db_cpu_queries_running"]);
    let canary_fragile = min(&fragile, &|s| s.canary_p95_ms.unwrap_or(0.0));
    let canary_cured = max(&cured, &|s| s.canary_p95_ms.unwrap_or(f64::MAX));
    let done = |v: &[StageResult]| v.iter().map(|s| s.goodput_rps).sum::<f64>() / v.len() as f64;
    let (done_fragile, done_cured) = (done(&fragile), done(&cured));
    eprintln!(
        "pool-too-big: query alone {query_ms:.1} ms, canary alone {canary_alone:.1} ms, offered {rate}/s; \
         pool 32: {running} running, canary p95 >= {canary_fragile} ms, {done_fragile:.1} completed/s; \
         slots 4: {running_cured} running, canary p95 <= {canary_cured} ms, {done_cured:.1} completed/s"
    );
    assert!(
        running >= 16.0,
        "the pool of 32 should put most queries on the database at once: {running} ({fragile:?})"
    );
    assert!(
        canary_fragile >= 4.0 * canary_alone.max(1.0),
        "a light query beside them should be slowed with them: p95 {canary_fragile} ms vs {canary_alone} ms alone"
    );
    assert!(running_cured <= 4.0, "at most 4 on the database: {running_cured}");
    assert!(
        canary_cured * 2.0 <= canary_fragile,
        "the light query should stay fast: p95 {canary_cured} ms cured vs {canary_fragile} ms"
    );
    // Not more: on these 2 cores the app and the load share the cores with PostgreSQL, and the
    // slots cost 5-9% of the heavy queries on a quiet machine, more beside a busy neighbour
    // (docs/scenarios/pool-too-big.md says so, measured).
    assert!(
        done_cured >= 0.7 * done_fragile,
        "the cure completes most of the heavy queries: {done_cured} vs {done_fragile} /s"
    );
    for s in &cured {
        assert_eq!(
            s.failed(),
            0,
            "nothing shed at a 30 s acquire timeout: {:?}",
            s.failures
        );
    }
    let (fragile_ok, cured_ok): (u64, u64) = (fragile.iter().map(|s| s.ok).sum(), cured.iter().map(|s| s.ok).sum());

    // The wait moved into the app: its histogram has the waits, the run phase the queries.
    let text = app.metrics_text().await;
    let waited = crate::common::metric_in(&text, "db_cpu_query_seconds_count{phase=\"wait\"}").unwrap_or(0.0);
    let ran = crate::common::metric_in(&text, "db_cpu_query_seconds_count{phase=\"run\"}").unwrap_or(0.0);
    assert!(
        ran >= (fragile_ok + cured_ok) as f64,
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
