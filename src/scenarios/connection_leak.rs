//! `connection-leak` — the original lab's unclosed database sessions, on purpose: in fragile,
//! `GET /api/db/session` answers but keeps its pooled connection, inside its open transaction,
//! for `db_leak_ms` (60 s; up to a day, "forever"), as a session nobody closes waits for the
//! garbage collector. Each request takes one connection out of the pool for that long, so the
//! pool drains after `pool` requests, and at a steady rate it serves at most `pool / leak time`
//! (Little's law, the hold being the leak); everything else queues to the acquire timeout. In
//! PostgreSQL the leaked sessions show as `idle in transaction` in `pg_stat_activity`, holding
//! their locks and their snapshot.
//!
//! Cures, each with its knob: scoped release (`db_leak_ms` 0: the connection goes back with the
//! answer); PostgreSQL's `idle_in_transaction_session_timeout` (`db_idle_in_transaction_timeout_ms`:
//! the server ends the idle session, freeing locks and its slot, though not the app's pool slot);
//! a leak detector (`db_leak_detect_ms`) that logs the route and request id holding a connection
//! too long. Metrics: `db_connections_leaked`, `db_connections_held{over}`,
//! `db_connection_oldest_hold_seconds`, `db_connection_leaks_detected_total{route}`.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use serde_json::{json, Value};
use sqlx::Executor;

use crate::apidoc::{int, num, obj, Op, POOL_TIMEOUT};
use crate::error::{AppError, AppResult};
use crate::infra::checkout::Checkout;
use crate::infra::database::Conn;
use crate::resilience::guard::Group;
use crate::scenarios::{around, Alert, Gauge, Panel, Readings, Repro, RunConfig, Saturated, Scenario, POOL_WAITING};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/db/session", get(session))
}

/// Opens the session's transaction and reads in it: `BEGIN`, the idle-in-transaction timeout
/// (PostgreSQL, transaction-local), `SELECT count(*) FROM tasks`. The transaction is opened with
/// a plain `BEGIN` (sqlx's own transaction type borrows the connection, which a leak outlives);
/// a request cut off in between returns its connection dirty, and the release-time guard
/// rolls it back.
async fn open_session(conn: &mut Conn, idle_timeout: Duration) -> Result<i64, sqlx::Error> {
    crate::on_conn!(&mut *conn, c => c.execute(sqlx::raw_sql("BEGIN")).await.map(|_| ())?);
    if let Conn::Pg(c) = conn {
        sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
            .persistent(false)
            .bind(format!("{}ms", idle_timeout.as_millis()))
            .execute(&mut **c)
            .await?;
    }
    crate::on_conn!(conn, c => sqlx::query_scalar("SELECT count(*) FROM tasks")
        .persistent(false)
        .fetch_one(&mut **c)
        .await)
}

/// Ends the session's transaction (it only read: a rollback, as a pool's reset-on-return does).
async fn end_session(conn: &mut Conn) -> Result<(), sqlx::Error> {
    crate::on_conn!(conn, c => c.execute(sqlx::raw_sql("ROLLBACK")).await.map(|_| ()))
}

/// The end of a leak: roll back and go back to the pool; a session the server already ended
/// (`idle_in_transaction_session_timeout`) is closed, and the pool opens a replacement.
async fn give_back(mut checkout: Checkout) {
    if let Err(e) = end_session(&mut checkout).await {
        tracing::info!(error = %e, "a leaked session was ended by the server meanwhile; closing its connection");
        checkout.close().await;
    }
}

async fn session(State(state): State<AppState>) -> AppResult<Json<Value>> {
    let k = state.knobs.current();
    let leak = Duration::from_millis(k.db_leak_ms);
    let idle_timeout = Duration::from_millis(k.db_idle_in_transaction_timeout_ms);
    let (mut conn, waited) = state.db.acquire(Duration::from_millis(k.db_pool_timeout_ms)).await?;
    drop(k);
    let tasks = open_session(&mut conn, idle_timeout)
        .await
        .map_err(AppError::Database)?;
    let released = leak.is_zero();
    if released {
        end_session(&mut conn).await?;
        drop(conn);
    } else {
        state.db.leak(conn, leak, give_back);
    }
    Ok(Json(json!({
        "tasks": tasks,
        "released": released,
        "leak_ms": leak.as_millis() as u64,
        "wait_ms": waited.as_secs_f64() * 1e3,
        "leaked_connections": state.db.checkouts().leaked(),
        "pool": state.db.stats(),
    })))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario =
    crate::scenarios::scenario!("connection-leak", "sessions nobody closes drain the database pool")
        .repro(REPRO)
        .gauges(&[
            Gauge::value("db_leaked", "db_connections_leaked"),
            Gauge {
                key: "db_held_over_10s",
                metric: "db_connections_held",
                labels: &[("over", "10s")],
                reading: crate::scenarios::Reading::Value,
            },
            Gauge::value("db_oldest_hold_s", "db_connection_oldest_hold_seconds"),
            Gauge::value("db_leaks_detected", "db_connection_leaks_detected_total"),
        ])
        .saturation(saturation)
        .dashboard(DASHBOARD)
        .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Leaked and long-held connections",
        unit: "short",
        targets: &[
            ("sum(db_connections_leaked)", "leaked"),
            ("sum by (over) (db_connections_held)", "held over {{over}}"),
        ],
        description:
            "Connections kept past their request (db_leak_ms), and checkouts open longer than 1 s / 10 s / 60 s.",
    },
    Panel {
        title: "Oldest hold",
        unit: "s",
        targets: &[("max(db_connection_oldest_hold_seconds)", "oldest")],
        description: "The age of the longest-held pooled connection: a leak climbs without bound.",
    },
    Panel {
        title: "Leaks detected/s by route",
        unit: "short",
        targets: &[(
            "sum by (route) (rate(db_connection_leaks_detected_total[1m]))",
            "{{route}}",
        )],
        description: "The leak detector (db_leak_detect_ms) names the route that took the connection.",
    },
    Panel {
        title: "Connection hold p95",
        unit: "s",
        targets: &[(
            "histogram_quantile(0.95, sum by (le) (rate(db_connection_hold_seconds_bucket[1m])))",
            "p95",
        )],
        description: "Checkout to release: the pool's service time, the denominator of its capacity.",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "ConnectionLeak",
        expr: "max by (instance) (db_connections_held{over=\"60s\"}) > 0",
        for_: "2m",
        severity: "warning",
        summary: "{{ $labels.instance }} holds {{ $value }} pooled connection(s) for over a minute",
        description: "A connection checked out for more than 60 s is a leak or a runaway query: the pool loses a slot for as long (capacity = pool / hold). db_connection_leaks_detected_total{route} and the WARN log name the route and request id that took it (db_leak_detect_ms); POST /admin/reset releases the lab's leaked sessions.",
    },
];

/// Its saturation banner: connections kept past their request.
fn saturation(r: &Readings) -> Option<Saturated> {
    (r.n("db_leaked") > 0.0).then(|| {
        Saturated::new("DB pool (leaked sessions)").because(
            &["db_leaked", "db_oldest_hold_s"],
            format!(
                "{} connections kept past their request (db_leak_ms; POST /admin/reset lets them go)",
                r.n("db_leaked")
            ),
        )
    })
}

fn operations() -> Vec<Op> {
    vec![Op::new(
        "get",
        "/api/db/session",
        "Open a database session (a transaction) and read in it; in fragile it is not closed for db_leak_ms",
    )
    .guard(Group::Db)
    .ok(
        200,
        "the read, and whether the connection went back with the answer",
        obj(&[
            ("tasks", int()),
            ("released", crate::apidoc::boolean()),
            ("leak_ms", int()),
            ("wait_ms", num()),
            ("leaked_connections", int()),
            (
                "pool",
                obj(&[
                    ("max_connections", int()),
                    ("open", int()),
                    ("idle", int()),
                    ("in_use", int()),
                    ("waiting", int()),
                ]),
            ),
        ]),
    )
    .fails(503, POOL_TIMEOUT)]
}

/// `chokepoint repro connection-leak`: sessions leaked for 1 s on a pool of 4: capacity 4/s.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// A short leak and a small pool, so the run is short and the numbers small. The leak is set in
/// both profiles (`--compare` shows what the hardened acquire timeout changes: past capacity,
/// a fast 503 instead of a queue); scoped release, the cure itself, is the test's and k6's.
fn repro_knobs() -> Value {
    json!({"db_pool_size": 4, "db_max_overflow": 0, "db_leak_ms": 1000})
}

fn pool_and_leak(config: &RunConfig) -> (f64, f64) {
    let k = &config.knobs;
    (
        f64::from(k.db_pool_size + k.db_max_overflow),
        k.db_leak_ms as f64 / 1000.0,
    )
}

fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let (pool, leak) = pool_and_leak(config);
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/db/session".to_string());
    plan.rates = around(pool / leak.max(0.001), &[0.5, 0.8, 1.0, 1.5, 2.0]);
    plan.watches = vec![
        POOL_WAITING,
        Watch::gauge("db_connections_leaked", "connections leaked (max)", pool - 0.5),
        Watch::counter("db_pool_acquire_timeouts_total", "acquire timeouts", 0.0),
    ];
    plan
}

fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let (pool, leak) = pool_and_leak(config);
    if leak == 0.0 {
        return Prediction {
            capacity_rps: None,
            formula: "db_leak_ms is 0: every session is released with its answer (no leak)".into(),
            expect: "no request waits for a connection because of a leak".into(),
        };
    }
    Prediction {
        capacity_rps: Some(pool / leak),
        formula: format!(
            "pool {pool} connections / {leak} s leak = {:.1} sessions/s",
            pool / leak
        ),
        expect: format!(
            "past capacity the pool is empty: requests wait for a leaked connection to come back and fail with 503 db_pool_timeout after the {} ms acquire timeout",
            config.knobs.db_pool_timeout_ms
        ),
    }
}
