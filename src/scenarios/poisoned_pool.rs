//! `poisoned-pool` — the incident class behind sqlx #4393, where one pod failed every query for
//! 20 minutes. A request cancelled while sqlx's `BEGIN` round trip is in flight (its client gave
//! up, `request_timeout_db_ms` cut it; a degraded database widens that window from microseconds
//! to the link's latency) leaves its connection inside a transaction sqlx does not know about.
//! Back in the pool, the next borrower's plain statements run inside it: their writes are
//! acknowledged but never committed, and the first error there (here: claiming a name twice)
//! aborts the transaction, after which *every* query on that connection, on every route, fails
//! with `25P02` (500 `db_connection_poisoned`, `db_poisoned_errors_total`) until the connection
//! is recycled (sqlx's `max_lifetime`, 30 min by default).
//!
//! The lab guards every released connection ([`crate::infra::database`]'s release-time check),
//! so this only happens with the knob `db_skip_release_check` on: off by default in both
//! profiles, never to be turned on outside the lab. The cure is the guard: the connection is
//! rolled back on release (`db_connections_recovered_total{action="rolled_back"}`).
//!
//! Its routes are the way most code talks to a pool: plain statements, no transaction of
//! their own. `POST /api/claims?name=` inserts a unique name (409 `already_claimed` the second
//! time); `GET /api/claims?name=` reads it.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::apidoc::{boolean, nullable, obj, string, Op, POOL_TIMEOUT};
use crate::error::{AppError, AppResult};
use crate::params::{Params, Text};
use crate::resilience::guard::Group;
use crate::scenarios::{Alert, Gauge, Panel, Readings, Saturated, Scenario};
use crate::state::AppState;

pub const NAME: Text = Text {
    name: "name",
    required: true,
    min_len: 1,
    max_len: 200,
    about: "the name to claim (unique)",
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/claims", get(read_claim).post(claim))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// PostgreSQL's and SQLite's unique violation.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

async fn claim(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let name = params.text_of(&NAME)?.unwrap_or_default();
    let acquire = std::time::Duration::from_millis(state.knobs.current().db_pool_timeout_ms);
    let (mut conn, _) = state.db.acquire(acquire).await?;
    // A plain autocommit statement: no transaction of its own (on a poisoned connection it
    // runs inside the stale one and is never committed).
    let sql = "INSERT INTO claims (name, claimed_ms) VALUES ($1, $2)";
    let at = now_ms();
    let result = crate::on_conn!(&mut *conn, c => sqlx::query(sql)
        .persistent(false)
        .bind(&name)
        .bind(at)
        .execute(&mut **c)
        .await
        .map(|_| ()));
    match result {
        Ok(_) => Ok(Json(json!({"name": name, "claimed": true, "claimed_ms": at}))),
        Err(e) if is_unique_violation(&e) => Err(AppError::Conflict {
            code: "already_claimed",
            detail: format!("the name {name:?} is claimed already"),
        }),
        Err(e) => Err(AppError::Database(e)),
    }
}

async fn read_claim(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let name = params.text_of(&NAME)?.unwrap_or_default();
    let acquire = std::time::Duration::from_millis(state.knobs.current().db_pool_timeout_ms);
    let (mut conn, _) = state.db.acquire(acquire).await?;
    let sql = "SELECT claimed_ms FROM claims WHERE name = $1";
    let at: Option<i64> = crate::on_conn!(&mut *conn, c => sqlx::query_scalar(sql)
        .persistent(false)
        .bind(&name)
        .fetch_optional(&mut **c)
        .await?);
    Ok(Json(json!({"name": name, "claimed": at.is_some(), "claimed_ms": at})))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!(
    "poisoned-pool",
    "a cancelled BEGIN poisons a pooled connection: every query on it fails"
)
// It needs PostgreSQL and LINK_PROXY=true.
.k6_run_by("scripts/ci/k6-slow-link.sh")
.no_repro(
    "its collapse is one connection poisoned by a BEGIN cancelled on a slow \
                 PostgreSQL link, not a rate past a capacity: it needs PostgreSQL behind the link \
                 proxy (LINK_PROXY=true) and the guard off; load-tests/poisoned-pool.js \
                 (scripts/ci/k6-slow-link.sh) shows it and the cure",
)
.gauges(&[
    Gauge::value("db_poisoned_errors", "db_poisoned_errors_total"),
    Gauge {
        key: "db_rolled_back_at_release",
        metric: "db_connections_recovered_total",
        labels: &[("action", "rolled_back")],
        reading: crate::scenarios::Reading::Value,
    },
])
.saturation(saturation)
.dashboard(DASHBOARD)
.alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Poisoned answers/s",
        unit: "short",
        targets: &[("sum(rate(db_poisoned_errors_total[1m]))", "25P02/s")],
        description:
            "Requests failed on a connection inside an aborted transaction: never, with the release-time guard on.",
    },
    Panel {
        title: "Connections rolled back at release/s",
        unit: "short",
        targets: &[(
            "sum by (action) (rate(db_connections_recovered_total[1m]))",
            "{{action}}",
        )],
        description: "The release-time guard at work: each one was a poisoned connection in waiting.",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "PoisonedConnection",
        expr: "sum by (instance) (increase(db_poisoned_errors_total[5m])) > 0",
        for_: "0m",
        severity: "critical",
        summary: "{{ $labels.instance }} serves requests on a poisoned database connection",
        description: "Queries failed with 25P02 (current transaction is aborted): a pooled connection is inside a transaction an earlier, cancelled request left open, and fails every route it serves until it is recycled. The release-time guard prevents it: check db_skip_release_check is false.",
    },
];

/// Its saturation banner: requests failed on a connection inside an aborted transaction.
fn saturation(r: &Readings) -> Option<Saturated> {
    (r.n("db_poisoned_errors") > 0.0).then(|| {
        Saturated::new("DB connections (poisoned)").because(
            &["db_poisoned_errors"],
            format!(
                "{} requests failed on a connection inside an aborted transaction (db_skip_release_check is on)",
                r.n("db_poisoned_errors")
            ),
        )
    })
}

fn operations() -> Vec<Op> {
    let claim = obj(&[
        ("name", string()),
        ("claimed", boolean()),
        ("claimed_ms", nullable("integer")),
    ]);
    vec![
        Op::new(
            "post",
            "/api/claims",
            "Claim a unique name with a plain autocommit INSERT",
        )
        .guard(Group::Db)
        .query(&[&NAME])
        .ok(200, "claimed", claim.clone())
        .fails(409, "the name is claimed already (already_claimed)")
        .fails(422, "invalid_parameter")
        .fails(
            500,
            "the connection is poisoned: inside an aborted transaction (db_connection_poisoned)",
        )
        .fails(503, POOL_TIMEOUT),
        Op::new("get", "/api/claims", "Read a claim with a plain autocommit SELECT")
            .guard(Group::Db)
            .query(&[&NAME])
            .ok(200, "whether the name is claimed", claim)
            .fails(422, "invalid_parameter")
            .fails(
                500,
                "the connection is poisoned: inside an aborted transaction (db_connection_poisoned)",
            )
            .fails(503, POOL_TIMEOUT),
    ]
}
