//! connection-leak: `GET /api/db/session` keeps its connection, inside its open transaction,
//! for `db_leak_ms` after answering. Measured: the pool drains after exactly `pool` sessions,
//! PostgreSQL shows them `idle in transaction`, a steady leak caps throughput at pool / leak
//! time; the cures (scoped release, the server's idle-in-transaction timeout, the leak
//! detector, /admin/reset) each change that.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::common::{eventually, spawn_app, Db, TestApp};

/// Sessions left `idle in transaction` by the app in its own test database.
async fn idle_in_transaction(app: &TestApp) -> i64 {
    let url = &app.pg.as_ref().expect("a PostgreSQL app").url;
    let mut fresh = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'chokepoint' AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&mut fresh)
    .await
    .unwrap()
}

/// `n` sessions one after the other: (answered 200, refused 503 db_pool_timeout).
async fn sessions(app: &TestApp, n: usize) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..n {
        let (status, body) = app.get_json("/api/db/session").await;
        match status {
            200 => ok += 1,
            503 if body["error"] == "db_pool_timeout" => refused += 1,
            other => panic!("GET /api/db/session: {other} {body}"),
        }
    }
    (ok, refused)
}

const SMALL_POOL: &[&str] = &[
    "--db-pool-size",
    "4",
    "--db-max-overflow",
    "0",
    "--db-pool-timeout",
    "0.3",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_sessions_drain_the_pool_and_scoped_release_cures_it() {
    for db in [Db::Postgres, Db::Sqlite] {
        let app = spawn_app(db, SMALL_POOL).await;
        assert_eq!(app.knobs().await.db_leak_ms, 60_000, "fragile leaks for 60 s");

        // Fragile: the first 4 sessions take the pool's 4 connections with them; the rest wait
        // the 300 ms acquire timeout and fail.
        let (ok, refused) = sessions(&app, 10).await;
        assert_eq!((ok, refused), (4, 6), "{db:?}");
        assert_eq!(app.metric("db_connections_leaked").await, 4.0);
        assert_eq!(app.metric("db_pool_acquire_timeouts_total").await, 6.0);
        if db == Db::Postgres {
            assert_eq!(
                idle_in_transaction(&app).await,
                4,
                "leaked sessions idle in transaction"
            );
        }
        // Unrelated DB routes starve too.
        let (status, body) = app.get_json("/api/tasks").await;
        assert_eq!((status, body["error"].as_str()), (503, Some("db_pool_timeout")));

        // /admin/reset lets the leaked connections go: the pool serves again.
        let resp = app.post("/admin/reset").await;
        assert_eq!(resp.status(), 200);
        assert!(
            eventually(Duration::from_secs(3), || async {
                app.metric("db_connections_leaked").await == 0.0
            })
            .await,
            "leaks released by /admin/reset"
        );
        if db == Db::Postgres {
            assert!(
                eventually(Duration::from_secs(3), || async {
                    idle_in_transaction(&app).await == 0
                })
                .await,
                "the released sessions were rolled back"
            );
        }

        // The cure: scoped release. Twenty sessions in a row on the same 4 connections.
        app.set_knobs(json!({"db_leak_ms": 0})).await;
        let (ok, refused) = sessions(&app, 20).await;
        assert_eq!((ok, refused), (20, 0), "{db:?}");
        assert_eq!(app.metric("db_connections_leaked").await, 0.0);
        if db == Db::Postgres {
            assert_eq!(idle_in_transaction(&app).await, 0);
        }
        eprintln!("connection-leak {db:?}: pool 4, 10 leaked sessions: 4 served, 6 refused; scoped release: 20/20");
    }
}

/// Closed-loop clients for `secs`: sessions answered per second within `window` (seconds from
/// the start), and the failures.
async fn session_rate(app: &TestApp, clients: usize, secs: f64, window: (f64, f64)) -> (f64, usize) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let loops = (0..clients).map(|_| async {
        let (mut done, mut failed) = (Vec::new(), 0usize);
        // Bounded in count and time.
        for _ in 0..10_000 {
            if Instant::now() >= until {
                break;
            }
            match app.get("/api/db/session").await.status().as_u16() {
                200 => done.push(start.elapsed().as_secs_f64()),
                _ => failed += 1,
            }
        }
        (done, failed)
    });
    let counts = futures::future::join_all(loops).await;
    let ok = counts
        .iter()
        .flat_map(|c| c.0.iter())
        .filter(|t| (window.0..window.1).contains(*t))
        .count();
    let failed: usize = counts.iter().map(|c| c.1).sum();
    (ok as f64 / (window.1 - window.0), failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_leak_caps_throughput_at_pool_over_leak_time() {
    // Pool 4, leaked 500 ms each, clients that wait up to 3 s: Little's law with the leak as
    // the hold gives 4 / 0.5 s = 8 sessions/s whatever the demand.
    let app = spawn_app(
        Db::Postgres,
        &[
            "--db-pool-size",
            "4",
            "--db-max-overflow",
            "0",
            "--db-pool-timeout",
            "3",
            "--db-leak-ms",
            "500",
        ],
    )
    .await;
    let predicted = 4.0 / 0.5;
    // Leaks end in batches of 4 every 0.5 s: the window [0.75 s, 3.75 s) holds whole periods,
    // away from the batch instants.
    let (leaky, failed) = session_rate(&app, 16, 4.0, (0.75, 3.75)).await;
    assert_eq!(failed, 0, "every client got its session within the 3 s acquire timeout");
    assert!(
        (leaky / predicted - 1.0).abs() <= 0.15,
        "predicted {predicted:.1} sessions/s, measured {leaky:.2}"
    );
    // The cure: released with the answer, the same pool serves many times more.
    app.set_knobs(json!({"db_leak_ms": 0})).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            app.metric("db_connections_leaked").await == 0.0
        })
        .await
    );
    let (scoped, _) = session_rate(&app, 16, 2.0, (0.0, 2.0)).await;
    assert!(scoped > leaky * 5.0, "scoped {scoped:.1}/s vs leaky {leaky:.1}/s");
    eprintln!(
        "connection-leak: pool 4, 500 ms leak: predicted {predicted:.1}/s, measured {leaky:.2}/s (ratio {:.3}); scoped release {scoped:.1}/s",
        leaky / predicted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_idle_sessions_and_the_detector_names_the_holder() {
    let app = spawn_app(
        Db::Postgres,
        &[
            "--db-pool-size",
            "2",
            "--db-max-overflow",
            "0",
            "--db-pool-timeout",
            "0.3",
            "--db-idle-in-transaction-timeout-ms",
            "300",
            "--db-leak-detect-ms",
            "200",
        ],
    )
    .await;
    assert_eq!(sessions(&app, 2).await, (2, 0));
    let t = Instant::now();
    assert_eq!(idle_in_transaction(&app).await, 2);
    // PostgreSQL ends both sessions after 300 ms idle: their locks and server slots are free.
    assert!(
        eventually(Duration::from_secs(5), || async {
            idle_in_transaction(&app).await == 0
        })
        .await,
        "idle_in_transaction_session_timeout did not end the leaked sessions"
    );
    let server_freed = t.elapsed();
    // The detector reported both, naming the route that holds them.
    assert!(
        eventually(Duration::from_secs(2), || async {
            app.metric("db_connection_leaks_detected_total{route=\"/api/db/session\"}")
                .await
                == 2.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.metric("db_connections_held{over=\"1s\"}").await, 2.0);
    assert!(app.metric("db_connection_oldest_hold_seconds").await >= 1.0);
    // The server's timeout does not give the app its pool slots back: still starved.
    let (status, body) = app.get_json("/api/tasks").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("db_pool_timeout")));

    // Releasing the leaks: their sessions are gone, so they are closed and replaced.
    assert_eq!(app.post("/admin/reset").await.status(), 200);
    app.set_knobs(json!({"db_leak_ms": 0})).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.get("/api/tasks").await.status() == 200
        })
        .await,
        "the pool did not recover after the leaks were released"
    );
    assert_eq!(sessions(&app, 6).await, (6, 0));
    assert_eq!(app.metric("db_connections_held{over=\"1s\"}").await, 0.0);
    eprintln!(
        "connection-leak: idle_in_transaction_session_timeout 300 ms ended both sessions within {server_freed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_knobs_refuse_bad_values() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    for (body, knob) in [
        (json!({"db_leak_ms": -1}), "db_leak_ms"),
        (json!({"db_leak_ms": 86_400_001u64}), "db_leak_ms"),
        (json!({"db_leak_detect_ms": "10s"}), "db_leak_detect_ms"),
        (
            json!({"db_idle_in_transaction_timeout_ms": 3_600_001u64}),
            "db_idle_in_transaction_timeout_ms",
        ),
        (json!({"db_skip_release_check": "yes"}), "db_skip_release_check"),
    ] {
        let (status, resp) = app.patch_config(body.clone(), None).await;
        assert_eq!(status, 422, "{body}: {resp}");
        assert!(resp.to_string().contains(knob), "{body}: {resp}");
    }
    let hardened = chokepoint::knobs::Knobs::for_profile(chokepoint::knobs::Profile::Hardened);
    assert_eq!((hardened.db_leak_ms, hardened.db_skip_release_check), (0, false));
}
