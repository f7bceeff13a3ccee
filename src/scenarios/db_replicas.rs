//! `db-replicas` — the replicas report: every replica opens its own pool, so replicas × (pool
//! size + overflow) passes PostgreSQL's `max_connections` and the server refuses connections
//! that no single replica's pool would ever ask for. It has no routes of its own: it is
//! `db-pool`'s routes, run on several replicas in front of one PostgreSQL (the k8s `replicas`
//! overlay, `scripts/ci/k6-replicas.sh`), and PgBouncer in transaction mode is the cure.

use chokepoint_repro::plan::{Plan, Prediction};
use serde_json::{json, Value};

use crate::scenarios::{Repro, RunConfig, Scenario};

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("db-replicas", "replicas × pool size passes the server's max_connections", without routes)
    .k6_run_by("scripts/ci/k6-replicas.sh")
    .repro(REPRO)
    .dashboard_row_with("db-pool");

/// `chokepoint repro db-replicas`: its plan and prediction.
const REPRO: Repro = Repro {
    needs_base_url: Some(
        "db-replicas needs several replicas in front of one PostgreSQL: point --base-url at their Service (the k8s `replicas` overlay) — tests/scenarios/db_replicas.rs measures it on one machine",
    ),
    ..Repro::new(repro_knobs, repro_plan, repro_predict)
};

/// The knobs `repro db-replicas` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({})
}

/// The plan: `repro db-pool`'s holds, 1 s each, on the replicas behind `--base-url`.
fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    crate::scenarios::db_pool::hold_plan(config, repro_knobs(), 1000)
}

/// The prediction from the knobs in force: one replica's pool / hold time.
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    crate::scenarios::db_pool::hold_prediction(config, 1000)
}
