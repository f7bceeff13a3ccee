//! `db-pool` — the DB-pool-exhaustion and burst reports: requests each hold a pooled connection
//! longer than arrivals allow, so throughput pins at `pool / hold time` (Little's law) and the rest
//! queue silently until the acquire timeout (`DB_POOL_TIMEOUT`, 30 s like the reports), then fail.
//!
//! Knobs: `DB_POOL_SIZE`, `DB_MAX_OVERFLOW`, `DB_POOL_TIMEOUT`. Metrics: `db_pool_waiting`,
//! `db_pool_acquire_wait_seconds`, `db_pool_acquire_timeouts_total`, `db_pool_connections`.
//! A held connection is a real one: `pg_sleep` on PostgreSQL; on SQLite the connection is held
//! for the same time inside an open transaction.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use serde_json::{json, Value};
use sqlx::Connection;

use crate::apidoc::{any, array_of, int, nullable, num, obj, string, Op, POOL_TIMEOUT, STORAGE_FULL};
use crate::error::{AppError, AppResult};
use crate::infra::database::Conn;
use crate::params::{Fallback, Num, Params, Text};
use crate::resilience::guard::Group;
use crate::scenarios::{
    around, Alert, Gauge, Panel, Reading, Readings, Repro, RunConfig, Saturated, Scenario, AROUND, POOL_WAITING,
};
use crate::state::AppState;

/// How long each `/api/db-pool-exhaust` query holds its connection (the seed's 5 s).
const EXHAUST_HOLD: Duration = Duration::from_secs(5);

pub const TITLE: Text = Text {
    name: "title",
    required: true,
    min_len: 1,
    max_len: 200,
    about: "the task's title",
};

pub const DESCRIPTION: Text = Text {
    name: "description",
    required: false,
    min_len: 0,
    max_len: 2000,
    about: "the task's description",
};

pub const HOLD_MS: Num<u64> = Num {
    name: "ms",
    default: Fallback::Value(1000),
    min: 1,
    max: 60_000,
    about: "milliseconds to hold one pooled connection",
};

pub const CONCURRENT_QUERIES: Num<u32> = Num {
    name: "concurrent_queries",
    default: Fallback::Value(10),
    min: 1,
    max: 50,
    about: "queries started at once, each holding a connection for 5 s",
};

pub const LIMIT: Num<i64> = Num {
    name: "limit",
    default: Fallback::Value(10),
    min: 1,
    max: 100,
    about: "tasks to return, newest first",
};

pub const QUERY_ITERATIONS: Num<i64> = Num {
    name: "iterations",
    default: Fallback::Value(1000),
    min: 1,
    max: 10_000,
    about: "size of the recursive query: 100 rows per iteration",
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tasks", get(list_tasks).post(create_task))
        .route("/api/db/hold", get(hold))
        .route("/api/db-pool-exhaust", get(db_pool_exhaust))
        .route("/api/expensive-query", get(expensive_query))
}

/// The knobs' acquire timeout and statement timeout (`None` = unlimited).
fn db_timeouts(state: &AppState) -> (Duration, Option<Duration>) {
    let k = state.knobs.current();
    let statement = (k.db_statement_timeout_ms > 0).then(|| Duration::from_millis(k.db_statement_timeout_ms));
    (Duration::from_millis(k.db_pool_timeout_ms), statement)
}

/// Sets PostgreSQL's statement timeout for the rest of the transaction `tx` only (0 = none):
/// nothing leaks to the next user of the server connection (behind PgBouncer, another client).
async fn set_local_statement_timeout(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    statement: Option<Duration>,
) -> Result<(), sqlx::Error> {
    let ms = statement.map_or(0, |d| d.as_millis());
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .persistent(false)
        .bind(format!("{ms}ms"))
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Maps PostgreSQL's "canceling statement due to statement timeout" (57014) to its own error.
fn db_error(e: sqlx::Error, statement: Option<Duration>) -> AppError {
    match (&e, statement) {
        (sqlx::Error::Database(db), Some(after)) if db.code().as_deref() == Some("57014") => {
            AppError::StatementTimeout { after }
        }
        _ => AppError::Database(e),
    }
}

/// Keeps `conn` busy for `d`: a server-side sleep on PostgreSQL, an open transaction on SQLite.
/// The statement timeout cuts it short on both.
///
/// On PostgreSQL it runs in one transaction with unnamed statements and a transaction-local
/// statement timeout, so it is safe behind PgBouncer in transaction mode (the `db-replicas`
/// cure), where consecutive transactions may run on different server connections.
pub async fn hold_connection(conn: &mut Conn, d: Duration, statement: Option<Duration>) -> Result<(), AppError> {
    match conn {
        Conn::Pg(c) => {
            let mut tx = c.begin().await?;
            set_local_statement_timeout(&mut tx, statement).await?;
            sqlx::query("SELECT pg_sleep($1)")
                .persistent(false)
                .bind(d.as_secs_f64())
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, statement))?;
            tx.commit().await?;
        }
        Conn::Sqlite(c) => {
            let held = async {
                let mut tx = c.begin().await?;
                sqlx::query("SELECT count(*) FROM tasks")
                    .persistent(false)
                    .execute(&mut *tx)
                    .await?;
                tokio::time::sleep(d).await;
                tx.commit().await
            };
            match statement {
                None => held.await?,
                // Dropping the transaction rolls it back and returns the connection.
                Some(after) => tokio::time::timeout(after, held)
                    .await
                    .map_err(|_| AppError::StatementTimeout { after })??,
            }
        }
    }
    Ok(())
}

async fn hold(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let ms: u64 = params.get(&HOLD_MS)?;
    let (acquire, statement) = db_timeouts(&state);
    let (mut conn, waited) = state.db.acquire(acquire).await?;
    let start = Instant::now();
    hold_connection(&mut conn, Duration::from_millis(ms), statement).await?;
    Ok(Json(json!({
        "held_ms": start.elapsed().as_millis() as u64,
        "wait_ms": waited.as_secs_f64() * 1e3,
        "pool": state.db.stats(),
    })))
}

async fn db_pool_exhaust(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let n: u32 = params.get(&CONCURRENT_QUERIES)?;
    let start = Instant::now();
    let (acquire, statement) = db_timeouts(&state);
    let queries = (0..n).map(|i| {
        let db = state.db.clone();
        async move {
            // Each query acquires, holds and *returns* its connection (dropping it), success or not.
            match db.acquire(acquire).await {
                Ok((mut conn, waited)) => {
                    let held = Instant::now();
                    let result = hold_connection(&mut conn, EXHAUST_HOLD, statement).await;
                    let wait_ms = waited.as_secs_f64() * 1e3;
                    let held_ms = held.elapsed().as_secs_f64() * 1e3;
                    match result {
                        Ok(()) => json!({"query_id": i, "status": "success",
                                         "query": i, "ok": true, "wait_ms": wait_ms, "held_ms": held_ms}),
                        Err(e) => json!({"query_id": i, "status": "failed",
                                         "query": i, "ok": false, "wait_ms": wait_ms, "held_ms": held_ms,
                                         "error": e.code(), "detail": crate::error::error_chain(&e)}),
                    }
                }
                Err(AppError::PoolTimeout { waited }) => json!({
                    "query_id": i, "status": "failed",
                    "query": i, "ok": false, "wait_ms": waited.as_secs_f64() * 1e3,
                    "error": "db_pool_timeout",
                    "detail": format!("no connection within the {} ms acquire timeout", waited.as_millis()),
                }),
                Err(e) => json!({"query_id": i, "status": "failed", "query": i, "ok": false,
                                 "error": e.code(), "detail": crate::error::error_chain(&e)}),
            }
        }
    });
    let results = futures::future::join_all(queries).await;
    let succeeded = results.iter().filter(|r| r["ok"] == true).count();
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Json(json!({
        "concurrent_queries": n,
        "duration_seconds": elapsed,
        "results": results,
        "warning": "Queries beyond the pool wait for a connection; past the acquire timeout they fail",
        "hold_seconds": EXHAUST_HOLD.as_secs(),
        "succeeded": succeeded,
        "failed": n as usize - succeeded,
        "elapsed_seconds": elapsed,
        "pool": state.db.stats(),
        "queries": results,
    })))
}

#[derive(Debug, serde::Serialize, sqlx::FromRow)]
struct Task {
    id: i64,
    title: String,
    description: Option<String>,
    status: String,
    created_at: String,
}

const PG_TASK_COLUMNS: &str = r#"id, title, description, status, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at"#;
const SQLITE_TASK_COLUMNS: &str = "id, title, description, status, created_at";

async fn create_task(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let title = params.text_of(&TITLE)?.unwrap_or_default();
    // Absent means "", as in the original lab (not NULL).
    let description = params.text_of(&DESCRIPTION)?.unwrap_or_default();
    let (mut conn, _) = state.db.acquire(db_timeouts(&state).0).await?;
    // `fetch_all`, not `fetch_one`: the statement must run to its end. With `fetch_one`, SQLite
    // hands over the RETURNING row and the commit's SQLITE_FULL (disk full) is never read, so a
    // write that was rolled back got a 200 with its id.
    let rows = match &mut *conn {
        Conn::Pg(c) => {
            let sql = format!("INSERT INTO tasks (title, description) VALUES ($1, $2) RETURNING {PG_TASK_COLUMNS}");
            crate::pg_tx!(c, tx => sqlx::query_as::<_, Task>(&sql)
                .persistent(false)
                .bind(&title)
                .bind(&description)
                .fetch_all(&mut *tx)
                .await?)
        }
        Conn::Sqlite(c) => {
            let sql = format!("INSERT INTO tasks (title, description) VALUES (?, ?) RETURNING {SQLITE_TASK_COLUMNS}");
            sqlx::query_as::<_, Task>(&sql)
                .persistent(false)
                .bind(&title)
                .bind(&description)
                .fetch_all(&mut **c)
                .await?
        }
    };
    let task = rows.into_iter().next().ok_or(sqlx::Error::RowNotFound)?;
    let mut body = serde_json::to_value(&task).map_err(AppError::internal)?;
    // The original lab's name for the new id.
    body["task_id"] = json!(task.id);
    Ok(Json(body))
}

async fn list_tasks(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let limit: i64 = params.get(&LIMIT)?;
    let (mut conn, _) = state.db.acquire(db_timeouts(&state).0).await?;
    let tasks: Vec<Task> = match &mut *conn {
        Conn::Pg(c) => {
            let sql = format!("SELECT {PG_TASK_COLUMNS} FROM tasks ORDER BY id DESC LIMIT $1");
            crate::pg_tx!(c, tx => sqlx::query_as(&sql).persistent(false).bind(limit).fetch_all(&mut *tx).await?)
        }
        Conn::Sqlite(c) => {
            let sql = format!("SELECT {SQLITE_TASK_COLUMNS} FROM tasks ORDER BY id DESC LIMIT ?");
            sqlx::query_as(&sql)
                .persistent(false)
                .bind(limit)
                .fetch_all(&mut **c)
                .await?
        }
    };
    Ok(Json(json!({"count": tasks.len(), "tasks": tasks})))
}

/// Rows the recursive query generates per iteration.
const ROWS_PER_ITERATION: i64 = 100;

async fn expensive_query(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let iterations: i64 = params.get(&QUERY_ITERATIONS)?;
    let rows = iterations * ROWS_PER_ITERATION;
    let (acquire, statement) = db_timeouts(&state);
    // pool-too-big's cure: at most `db_cpu_query_slots` of these on the database at once; the
    // wait for a slot comes out of the acquire budget.
    let slots = state.knobs.current().db_cpu_query_slots;
    let (_slot, slot_wait) = state.db_cpu_queries.enter(slots, acquire).await?;
    let (mut conn, waited) = state.db.acquire(acquire.saturating_sub(slot_wait)).await?;
    let waited = waited + slot_wait;
    let _running = state.db_cpu_queries.running();
    let start = Instant::now();
    let (count, checksum): (i64, i64) = match &mut *conn {
        Conn::Pg(c) => crate::pg_tx!(c, tx => {
            set_local_statement_timeout(&mut tx, statement).await?;
            sqlx::query_as(
                "WITH RECURSIVE cnt(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM cnt WHERE x < $1) \
                 SELECT count(*)::bigint, coalesce(sum(x % 7), 0)::bigint FROM cnt",
            )
            .persistent(false)
            .bind(rows as i32)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, statement))?
        }),
        Conn::Sqlite(c) => {
            sqlx::query_as(
                "WITH RECURSIVE cnt(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM cnt WHERE x < ?) \
                 SELECT count(*), coalesce(sum(x % 7), 0) FROM cnt",
            )
            .persistent(false)
            .bind(rows)
            .fetch_one(&mut **c)
            .await?
        }
    };
    state.db_cpu_queries.ran(start.elapsed());
    Ok(Json(json!({
        "created_tasks": iterations,
        "total_tasks": count,
        "duration_seconds": start.elapsed().as_secs_f64(),
        "iterations": iterations,
        "rows": count,
        "checksum": checksum,
        "query_ms": start.elapsed().as_secs_f64() * 1e3,
        "wait_ms": waited.as_secs_f64() * 1e3,
    })))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("db-pool", "requests queue for pooled connections")
    .repro(REPRO)
    .gauges(&[
        Gauge {
            key: "db_in_use",
            metric: "db_pool_connections",
            labels: &[("state", "in_use")],
            reading: Reading::Value,
        },
        Gauge {
            key: "db_idle",
            metric: "db_pool_connections",
            labels: &[("state", "idle")],
            reading: Reading::Value,
        },
        Gauge::value("db_waiting", "db_pool_waiting"),
        Gauge::value("db_max", "db_pool_max_connections"),
    ])
    .saturation(saturation)
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Waiting for a connection",
        unit: "short",
        targets: &[("sum by (instance) (db_pool_waiting)", "{{instance}}")],
        description: "The first sign: waiters > 0 means throughput is pinned at pool / hold time.",
    },
    Panel {
        title: "Connections",
        unit: "short",
        targets: &[
            ("sum by (state) (db_pool_connections)", "{{state}}"),
            ("sum(db_pool_max_connections)", "max"),
        ],
        description:
            "in_use at max with waiters: starved. in_use below max with timeouts: the server refuses (db-replicas).",
    },
    Panel {
        title: "Acquire wait p95",
        unit: "s",
        targets: &[(
            "histogram_quantile(0.95, sum by (instance, le) (rate(db_pool_acquire_wait_seconds_bucket[1m])))",
            "{{instance}}",
        )],
        description: "Near the acquire timeout (30 s fragile) the waiters start failing.",
    },
    Panel {
        title: "Acquire timeouts/s by replica",
        unit: "reqps",
        targets: &[(
            "sum by (instance) (rate(db_pool_acquire_timeouts_total[1m]))",
            "{{instance}}",
        )],
        description: "503 db_pool_timeout. Growing with the replica count: db-replicas.",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "DBPoolWaiters",
        expr: "max by (instance) (db_pool_waiting) > 0",
        for_: "1m",
        severity: "warning",
        summary: "Requests queue for database connections on {{ $labels.instance }}",
        description: "{{ $value }} requests have waited for a pooled connection for 1 minute: throughput is pinned at pool size / hold time (docs/scenarios/db-pool.md).",
    },
    Alert {
        name: "DBPoolAcquireTimeouts",
        expr: "sum by (instance) (rate(db_pool_acquire_timeouts_total[1m])) > 0",
        for_: "30s",
        severity: "critical",
        summary: "Database pool acquire timeouts on {{ $labels.instance }}",
        description: "{{ $value | humanize }}/s requests gave up waiting for a connection (503 db_pool_timeout). With several replicas, check the pools against max_connections (docs/scenarios/db-replicas.md).",
    },
    Alert {
        name: "DatabaseUnreachable",
        expr: "min by (instance) (db_up) == 0",
        for_: "30s",
        severity: "critical",
        summary: "The database is unreachable from {{ $labels.instance }}",
        description: "The monitor's ping has failed for 30 s: DB routes answer 503 db_unavailable and /ready fails. Not pool exhaustion: check the database itself (docs/reliability.md).",
    },
];

/// Its saturation banner: every connection in use, or requests waiting for one.
fn saturation(r: &Readings) -> Option<Saturated> {
    let mut s = Saturated::new("DB pool");
    if r.n("db_max") > 0.0 && r.n("db_in_use") >= r.n("db_max") {
        s = s.because(
            &["db_in_use", "db_max"],
            format!("{} of {} connections in use", r.n("db_in_use"), r.n("db_max")),
        );
    }
    if r.n("db_waiting") > 0.0 {
        s = s.because(
            &["db_waiting"],
            format!("{} requests waiting for a connection", r.n("db_waiting")),
        );
    }
    s.if_any()
}

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    let pool = obj(&[
        ("max_connections", int()),
        ("open", int()),
        ("idle", int()),
        ("in_use", int()),
        ("waiting", int()),
    ]);
    let task = obj(&[
        ("id", int()),
        ("title", string()),
        ("description", nullable("string")),
        ("status", string()),
        ("created_at", string()),
    ]);
    vec![
        Op::new("get", "/api/tasks", "List tasks, newest first")
            .guard(Group::Db)
            .query(&[&LIMIT])
            .ok(
                200,
                "the tasks",
                obj(&[("count", int()), ("tasks", array_of(task.clone()))]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, POOL_TIMEOUT),
        Op::new("post", "/api/tasks", "Insert a task")
            .guard(Group::Db)
            .query(&[&TITLE, &DESCRIPTION])
            .ok(200, "the new task (`task_id` = `id`)", {
                let mut t = task;
                t["properties"]["task_id"] = int();
                if let Some(r) = t["required"].as_array_mut() {
                    r.push(json!("task_id"));
                }
                t
            })
            .fails(422, "invalid_parameter")
            .fails(503, POOL_TIMEOUT)
            .fails(507, STORAGE_FULL),
        Op::new("get", "/api/db/hold", "Hold one pooled connection")
            .guard(Group::Db)
            .query(&[&HOLD_MS])
            .ok(
                200,
                "held",
                obj(&[("held_ms", int()), ("wait_ms", num()), ("pool", pool.clone())]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, POOL_TIMEOUT)
            .fails(503, "db_statement_timeout_ms cut the hold short (db_statement_timeout)"),
        Op::new(
            "get",
            "/api/db-pool-exhaust",
            "Concurrent queries, each holding a connection 5 s",
        )
        .guard(Group::Db)
        .query(&[&CONCURRENT_QUERIES])
        .ok(
            200,
            "the outcome of every query (failures included)",
            obj(&[
                ("concurrent_queries", int()),
                ("duration_seconds", num()),
                ("results", array_of(obj(&[("query_id", int()), ("status", string())]))),
                ("warning", string()),
                ("succeeded", int()),
                ("failed", int()),
                ("elapsed_seconds", num()),
                ("pool", pool),
                ("queries", array_of(any())),
            ]),
        )
        .fails(422, "invalid_parameter"),
        Op::new("get", "/api/expensive-query", "A heavy recursive SQL query")
            .guard(Group::Db)
            .query(&[&QUERY_ITERATIONS])
            .ok(
                200,
                "counted",
                obj(&[
                    ("created_tasks", int()),
                    ("total_tasks", int()),
                    ("duration_seconds", num()),
                    ("iterations", int()),
                    ("rows", int()),
                    ("checksum", any()),
                    ("query_ms", num()),
                    ("wait_ms", num()),
                ]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, POOL_TIMEOUT)
            .fails(503, "the query ran past db_statement_timeout_ms (db_statement_timeout)"),
    ]
}

/// `chokepoint repro db-pool`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro db-pool` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({"db_pool_size": 4, "db_max_overflow": 0})
}

/// The plan: what `repro db-pool` sends, at which rates, watching what.
fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    hold_plan(config, repro_knobs(), 100)
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    hold_prediction(config, 100)
}

/// Holds of `hold_ms` on `/api/db/hold`, at rates around the pool's capacity (pool / hold
/// time), watching the waiters, the connections in use and the acquire timeouts. Shared with
/// db-replicas, which runs the same holds on several replicas.
pub(crate) fn hold_plan(config: &RunConfig, knobs_set: Value, hold_ms: u64) -> Plan {
    let knobs = &config.knobs;
    let pool = f64::from(knobs.db_pool_size + knobs.db_max_overflow);
    let mut plan = Plan::new(knobs_set);
    plan.target = Target::get(format!("/api/db/hold?ms={hold_ms}"));
    plan.rates = around(pool / (hold_ms as f64 / 1000.0), AROUND);
    plan.watches = vec![
        POOL_WAITING,
        Watch::gauge(
            "db_pool_connections{state=\"in_use\"}",
            "connections in use (max)",
            pool - 0.5,
        ),
        Watch::counter("db_pool_acquire_timeouts_total", "acquire timeouts", 0.0),
    ];
    plan
}

/// Little's law on the pool: capacity = pool / hold time.
pub(crate) fn hold_prediction(config: &RunConfig, hold_ms: u64) -> Prediction {
    let knobs = &config.knobs;
    let pool = f64::from(knobs.db_pool_size + knobs.db_max_overflow);
    let acquire = knobs.db_pool_timeout_ms as f64;
    let hold = hold_ms as f64 / 1000.0;
    Prediction {
        capacity_rps: Some(pool / hold),
        formula: format!("pool {pool} connections / {hold} s hold = {:.1} req/s", pool / hold),
        expect: format!(
            "past capacity requests queue for a connection; they fail with 503 db_pool_timeout once the wait passes the {acquire} ms acquire timeout"
        ),
    }
}
