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
use serde_json::{json, Value};
use sqlx::Connection;

use crate::error::{AppError, AppResult};
use crate::infra::database::Conn;
use crate::params::Params;
use crate::AppState;

/// How long each `/api/db-pool-exhaust` query holds its connection (the seed's 5 s).
const EXHAUST_HOLD: Duration = Duration::from_secs(5);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tasks", get(list_tasks).post(create_task))
        .route("/api/db/hold", get(hold))
        .route("/api/db-pool-exhaust", get(db_pool_exhaust))
        .route("/api/expensive-query", get(expensive_query))
}

/// Keeps `conn` busy for `d`: a server-side sleep on PostgreSQL, an open transaction on SQLite.
pub async fn hold_connection(conn: &mut Conn, d: Duration) -> Result<(), sqlx::Error> {
    match conn {
        Conn::Pg(c) => {
            sqlx::query("SELECT pg_sleep($1)")
                .bind(d.as_secs_f64())
                .execute(&mut **c)
                .await?;
        }
        Conn::Sqlite(c) => {
            let mut tx = c.begin().await?;
            sqlx::query("SELECT count(*) FROM tasks").execute(&mut *tx).await?;
            tokio::time::sleep(d).await;
            tx.commit().await?;
        }
    }
    Ok(())
}

async fn hold(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let ms: u64 = params.num("ms", 1000, 1..=60_000)?;
    let (mut conn, waited) = state.db.acquire().await?;
    let start = Instant::now();
    hold_connection(&mut conn, Duration::from_millis(ms)).await?;
    Ok(Json(json!({
        "held_ms": start.elapsed().as_millis() as u64,
        "wait_ms": waited.as_secs_f64() * 1e3,
        "pool": state.db.stats(),
    })))
}

async fn db_pool_exhaust(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let n: u32 = params.num("concurrent_queries", 10, 1..=50)?;
    let start = Instant::now();
    let queries = (0..n).map(|i| {
        let db = state.db.clone();
        async move {
            // Each query acquires, holds and *returns* its connection (dropping it), success or not.
            match db.acquire().await {
                Ok((mut conn, waited)) => {
                    let held = Instant::now();
                    let result = hold_connection(&mut conn, EXHAUST_HOLD).await;
                    let wait_ms = waited.as_secs_f64() * 1e3;
                    let held_ms = held.elapsed().as_secs_f64() * 1e3;
                    match result {
                        Ok(()) => json!({"query": i, "ok": true, "wait_ms": wait_ms, "held_ms": held_ms}),
                        Err(e) => json!({"query": i, "ok": false, "wait_ms": wait_ms, "held_ms": held_ms,
                                         "error": "database_error", "detail": e.to_string()}),
                    }
                }
                Err(AppError::PoolTimeout { waited }) => json!({
                    "query": i, "ok": false, "wait_ms": waited.as_secs_f64() * 1e3,
                    "error": "db_pool_timeout",
                    "detail": format!("no connection within the {} ms acquire timeout", waited.as_millis()),
                }),
                Err(e) => json!({"query": i, "ok": false, "error": e.code(), "detail": crate::error::error_chain(&e)}),
            }
        }
    });
    let results = futures::future::join_all(queries).await;
    let succeeded = results.iter().filter(|r| r["ok"] == true).count();
    Ok(Json(json!({
        "concurrent_queries": n,
        "hold_seconds": EXHAUST_HOLD.as_secs(),
        "succeeded": succeeded,
        "failed": n as usize - succeeded,
        "elapsed_seconds": start.elapsed().as_secs_f64(),
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

async fn create_task(State(state): State<AppState>, params: Params) -> AppResult<Json<Task>> {
    let title = params.text("title", true, 1..=200)?.unwrap_or_default();
    let description = params.text("description", false, 0..=2000)?;
    let (mut conn, _) = state.db.acquire().await?;
    let task = match &mut conn {
        Conn::Pg(c) => {
            let sql = format!("INSERT INTO tasks (title, description) VALUES ($1, $2) RETURNING {PG_TASK_COLUMNS}");
            sqlx::query_as::<_, Task>(&sql)
                .bind(&title)
                .bind(&description)
                .fetch_one(&mut **c)
                .await?
        }
        Conn::Sqlite(c) => {
            let sql = format!("INSERT INTO tasks (title, description) VALUES (?, ?) RETURNING {SQLITE_TASK_COLUMNS}");
            sqlx::query_as::<_, Task>(&sql)
                .bind(&title)
                .bind(&description)
                .fetch_one(&mut **c)
                .await?
        }
    };
    Ok(Json(task))
}

async fn list_tasks(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let limit: i64 = params.num("limit", 10, 1..=100)?;
    let (mut conn, _) = state.db.acquire().await?;
    let tasks: Vec<Task> = match &mut conn {
        Conn::Pg(c) => {
            let sql = format!("SELECT {PG_TASK_COLUMNS} FROM tasks ORDER BY id DESC LIMIT $1");
            sqlx::query_as(&sql).bind(limit).fetch_all(&mut **c).await?
        }
        Conn::Sqlite(c) => {
            let sql = format!("SELECT {SQLITE_TASK_COLUMNS} FROM tasks ORDER BY id DESC LIMIT ?");
            sqlx::query_as(&sql).bind(limit).fetch_all(&mut **c).await?
        }
    };
    Ok(Json(json!({"count": tasks.len(), "tasks": tasks})))
}

/// Rows the recursive query generates per iteration.
const ROWS_PER_ITERATION: i64 = 100;

async fn expensive_query(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let iterations: i64 = params.num("iterations", 1000, 1..=10_000)?;
    let rows = iterations * ROWS_PER_ITERATION;
    let (mut conn, waited) = state.db.acquire().await?;
    let start = Instant::now();
    let (count, checksum): (i64, i64) = match &mut conn {
        Conn::Pg(c) => {
            sqlx::query_as(
                "WITH RECURSIVE cnt(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM cnt WHERE x < $1) \
                 SELECT count(*)::bigint, coalesce(sum(x % 7), 0)::bigint FROM cnt",
            )
            .bind(rows as i32)
            .fetch_one(&mut **c)
            .await?
        }
        Conn::Sqlite(c) => {
            sqlx::query_as(
                "WITH RECURSIVE cnt(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM cnt WHERE x < ?) \
                 SELECT count(*), coalesce(sum(x % 7), 0) FROM cnt",
            )
            .bind(rows)
            .fetch_one(&mut **c)
            .await?
        }
    };
    Ok(Json(json!({
        "iterations": iterations,
        "rows": count,
        "checksum": checksum,
        "query_ms": start.elapsed().as_secs_f64() * 1e3,
        "wait_ms": waited.as_secs_f64() * 1e3,
    })))
}
