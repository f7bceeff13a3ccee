//! `db-pool`: pool starvation on SQLite and on the real PostgreSQL. A pool of 2 with a 200 ms
//! acquire timeout serves exactly 2 of 20 concurrent holders and refuses the other 18 with 503;
//! throughput of a longer run sits at pool / hold (Little's law); and the seed's
//! `/api/db-pool-exhaust` returns every connection it takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{spawn_app, Db, TestApp};
use futures::future::join_all;
use sqlx::{Connection, PgConnection};

const SMALL_POOL: &[&str] = &[
    "--db-pool-size",
    "2",
    "--db-max-overflow",
    "0",
    "--db-pool-timeout",
    "0.2",
];

async fn starvation_refuses_exactly_the_excess(db: Db) {
    // Arrange: pool of 2, no overflow, 200 ms acquire timeout.
    let app = spawn_app(db, SMALL_POOL).await;

    // Act: 20 concurrent requests that each hold a connection for 1 s.
    let started = Instant::now();
    let results = join_all((0..20).map(|_| app.get_json("/api/db/hold?ms=1000"))).await;
    let elapsed = started.elapsed();

    // Assert: exactly 2 served, 18 refused with the pool-timeout body, and quickly.
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(refused.len(), 18, "{results:?}");
    for (_, body) in &refused {
        assert_eq!(body["error"], "db_pool_timeout");
        let waited = body["waited_ms"].as_u64().unwrap();
        assert!(
            (150..2000).contains(&waited),
            "waited {waited} ms for a 200 ms acquire timeout"
        );
    }
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(app.metric("db_pool_acquire_timeouts_total").await, 18.0);
    assert_eq!(app.metric("db_pool_max_connections").await, 2.0);
    assert_eq!(app.metric("db_pool_waiting").await, 0.0);
}

/// Runs `total` holds of `hold_ms` with `concurrency` closed-loop clients; returns requests/s.
async fn saturated_throughput(app: &TestApp, total: usize, concurrency: usize, hold_ms: u64) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let next = next.clone();
        async move {
            let mut ok = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < total {
                let (status, body) = app.get_json(&format!("/api/db/hold?ms={hold_ms}")).await;
                assert_eq!(status, 200, "{body}");
                ok += 1;
            }
            ok
        }
    });
    let served: usize = join_all(workers).await.into_iter().sum();
    assert_eq!(served, total);
    total as f64 / started.elapsed().as_secs_f64()
}

async fn throughput_matches_littles_law(db: Db) {
    // Arrange: pool of 2, generous acquire timeout so every request is eventually served.
    let app = spawn_app(
        db,
        &[
            "--db-pool-size",
            "2",
            "--db-max-overflow",
            "0",
            "--db-pool-timeout",
            "30",
        ],
    )
    .await;
    let (pool, hold_ms) = (2.0, 250u64);
    let predicted = pool / (hold_ms as f64 / 1000.0); // 8 req/s

    // Act: 32 holds from 8 clients, 4x more clients than connections.
    let measured = saturated_throughput(&app, 32, 8, hold_ms).await;

    eprintln!("{db:?}: measured {measured:.2} req/s, predicted {predicted:.2}");
    // Assert: within ±15% of pool / hold.
    let ratio = measured / predicted;
    assert!(
        (0.85..=1.15).contains(&ratio),
        "measured {measured:.2} req/s, predicted {predicted:.2} (ratio {ratio:.3})"
    );
    // The wait histogram saw the queueing: 24 of 32 waited at least one hold.
    let waited_long = app.metric("db_pool_acquire_wait_seconds_count").await
        - app.metric("db_pool_acquire_wait_seconds_bucket{le=\"0.1\"}").await;
    assert!(waited_long >= 20.0, "only {waited_long} acquires waited > 100 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pool_of_two_refuses_exactly_the_excess() {
    starvation_refuses_exactly_the_excess(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pool_of_two_refuses_exactly_the_excess() {
    starvation_refuses_exactly_the_excess(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_throughput_is_pool_over_hold() {
    throughput_matches_littles_law(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_throughput_is_pool_over_hold() {
    throughput_matches_littles_law(Db::Postgres).await;
}

/// Connections of the app's pool in the test database, by state.
async fn pg_pool_connections(app: &TestApp) -> (i64, i64) {
    let pg = app.pg.as_ref().unwrap();
    let mut admin = PgConnection::connect(&crate::common::pg_admin_url()).await.unwrap();
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'chokepoint'",
    )
    .bind(&pg.name)
    .fetch_one(&mut admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_db_pool_exhaust_returns_every_connection() {
    // Arrange: the seed's defaults (5 kept + 10 overflow).
    let app = spawn_app(Db::Postgres, &[]).await;

    // Act: the seed endpoint twice in a row (a leak of 10 would starve the second run).
    for run in 0..2 {
        let (status, body) = app.get_json("/api/db-pool-exhaust?concurrent_queries=10").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["succeeded"], 10, "run {run}: {body}");
        assert_eq!(body["queries"].as_array().unwrap().len(), 10);
        let elapsed = body["elapsed_seconds"].as_f64().unwrap();
        assert!(
            elapsed < 8.0,
            "run {run} took {elapsed} s: queries waited for leaked connections"
        );
    }

    // Assert: nothing checked out, every server connection of the pool idle, and the server's
    // view matches the pool's own count.
    let settled = crate::common::eventually(Duration::from_secs(3), || async {
        let (total, busy) = pg_pool_connections(&app).await;
        let open = app.metric("db_pool_connections{state=\"idle\"}").await;
        busy == 0 && total as f64 == open && app.metric("db_pool_connections{state=\"in_use\"}").await == 0.0
    })
    .await;
    let (total, busy) = pg_pool_connections(&app).await;
    assert!(settled, "pg_stat_activity: {total} connections, {busy} not idle");
    assert!(total <= 15, "{total} connections exceed pool size + overflow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_pool_exhaust_reports_per_query_pool_errors() {
    // Arrange: pool of 2, 200 ms acquire timeout; 4 queries of 5 s each.
    let app = spawn_app(Db::Sqlite, SMALL_POOL).await;

    // Act
    let (status, body) = app.get_json("/api/db-pool-exhaust?concurrent_queries=4").await;

    // Assert: 2 held their connection, 2 report the pool's timeout with their wait.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["succeeded"], 2, "{body}");
    assert_eq!(body["failed"], 2, "{body}");
    let failures: Vec<_> = body["queries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["ok"] == false)
        .collect();
    for q in failures {
        assert_eq!(q["error"], "db_pool_timeout", "{q}");
        assert!(q["wait_ms"].as_f64().unwrap() >= 150.0, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tasks_and_expensive_query_work() {
    let app = spawn_app(Db::Postgres, &[]).await;
    let (status, task) = app
        .post_json("/api/tasks?title=write%20tests&description=real%20pg")
        .await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["title"], "write tests");
    assert_eq!(task["status"], "pending");
    let (status, list) = app.get_json("/api/tasks?limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(list["tasks"][0]["id"], task["id"]);
    let (status, q) = app.get_json("/api/expensive-query?iterations=10").await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["rows"], 1000);
    // sum of x % 7 for x in 1..=1000
    assert_eq!(q["checksum"], (1..=1000).map(|x| x % 7).sum::<i64>());
}

/// 10 concurrent 500 ms holds on a pool of 2: (ok, refused, slowest latency, slowest refusal).
async fn burst_of_holds(app: &TestApp) -> (usize, usize, Duration, Duration) {
    let timed = (0..10).map(|_| async {
        let start = Instant::now();
        let (status, _) = app.get_json("/api/db/hold?ms=500").await;
        (status, start.elapsed())
    });
    let results = join_all(timed).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused = results.iter().filter(|(s, _)| *s == 503).count();
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap();
    let slowest_refusal = results
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    (ok, refused, slowest, slowest_refusal)
}

async fn fail_fast_replaces_the_silent_queue(db: Db) {
    // Arrange: a pool of 2 (no overflow) under the fragile profile's 30 s acquire timeout.
    let app = spawn_app(db, &["--db-pool-size", "2", "--db-max-overflow", "0"]).await;

    // Act 1 (fragile): the 8 excess requests queue silently; the last waits ~2 s.
    let (ok, refused, slowest, _) = burst_of_holds(&app).await;
    assert_eq!((ok, refused), (10, 0));
    assert!(slowest >= Duration::from_millis(2300), "fragile slowest {slowest:?}");

    // Act 2: switch to hardened at runtime, keeping the same small pool.
    app.switch_profile("hardened").await;
    app.set_knobs(serde_json::json!({"db_pool_size": 2, "db_max_overflow": 0}))
        .await;
    let (ok, refused, slowest, slowest_refusal) = burst_of_holds(&app).await;

    // Assert: the excess is refused within milliseconds of the 250 ms acquire timeout.
    eprintln!("{db:?} hardened: {ok} ok, {refused} refused, slowest refusal {slowest_refusal:?}, slowest {slowest:?}");
    assert_eq!((ok, refused), (2, 8));
    assert!(
        slowest_refusal < Duration::from_millis(800),
        "refusals took {slowest_refusal:?}"
    );
    assert!(slowest < Duration::from_millis(1200), "hardened slowest {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hardened_fails_fast_instead_of_queueing() {
    fail_fast_replaces_the_silent_queue(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hardened_fails_fast_instead_of_queueing() {
    fail_fast_replaces_the_silent_queue(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_cuts_long_holds_on_both_backends() {
    for db in [Db::Sqlite, Db::Postgres] {
        let app = spawn_app(db, &[]).await;
        app.set_knobs(serde_json::json!({"db_statement_timeout_ms": 300})).await;
        let start = Instant::now();
        let (status, body) = app.get_json("/api/db/hold?ms=3000").await;
        assert_eq!(status, 503, "{db:?}: {body}");
        assert_eq!(body["error"], "db_statement_timeout", "{db:?}: {body}");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{db:?}: {:?}",
            start.elapsed()
        );
        // The connection is healthy afterwards.
        app.set_knobs(serde_json::json!({"db_statement_timeout_ms": 0})).await;
        assert_eq!(app.get_json("/api/db/hold?ms=50").await.0, 200, "{db:?}");
    }
}
