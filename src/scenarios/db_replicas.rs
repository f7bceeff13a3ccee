//! `db-replicas` — the replicas report: every replica opens its own pool, so replicas × (pool
//! size + overflow) passes PostgreSQL's `max_connections` and the server refuses connections
//! that no single replica's pool would ever ask for. It has no routes of its own: it is
//! `db-pool`'s routes, run on several replicas in front of one PostgreSQL (the k8s `replicas`
//! overlay, `scripts/k6-replicas.sh`), and PgBouncer in transaction mode is the cure.

use axum::Router;

use crate::scenarios::{around, Repro, RunConfig, AROUND, POOL_WAITING};
use crate::scenarios::{K6Script, Scenario};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use serde_json::{json, Value};

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = Scenario {
    id: "db-replicas",
    title: "replicas × pool size passes the server's max_connections",
    doc: "docs/scenarios/db-replicas.md",
    k6: K6Script {
        path: "load-tests/db-replicas.js",
        source: include_str!("../../load-tests/db-replicas.js"),
        smoke: false,
    },
    test: "tests/scenarios/db_replicas.rs",
    router: Router::new,
    operations: Vec::new,
    repro: Some(REPRO),
    gauges: &[],
};

/// `chokepoint repro db-replicas`: its plan and prediction.
const REPRO: Repro = Repro {
    knobs: repro_knobs,
    plan: repro_plan,
    predict: repro_predict,
    calibrate: false,
    needs_base_url: Some(
        "db-replicas needs several replicas in front of one PostgreSQL: point --base-url at their Service (the k8s `replicas` overlay) — tests/scenarios/db_replicas.rs measures it on one machine",
    ),
};

/// The knobs `repro db-replicas` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({})
}

/// The plan: what `repro db-replicas` sends, at which rates, watching what.
fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let knobs = &config.knobs;
    let pool = || f64::from(knobs.db_pool_size + knobs.db_max_overflow);
    let mut plan = Plan::new(repro_knobs());
    let hold = 1000.0;
    plan.target = Target::get(format!("/api/db/hold?ms={hold}"));
    plan.rates = around(pool() / (hold / 1000.0), AROUND);
    plan.watches = vec![
        POOL_WAITING,
        Watch {
            series: "db_pool_connections{state=\"in_use\"}",
            label: "connections in use (max)",
            counter: false,
            saturated_above: f64::from(knobs.db_pool_size + knobs.db_max_overflow) - 0.5,
        },
        Watch {
            series: "db_pool_acquire_timeouts_total",
            label: "acquire timeouts",
            counter: true,
            saturated_above: 0.0,
        },
    ];
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let pool = f64::from(knobs.db_pool_size + knobs.db_max_overflow);
    let acquire = knobs.db_pool_timeout_ms as f64;
    let hold = 1.0;
    Prediction {
        capacity_rps: Some(pool / hold),
        formula: format!("pool {pool} connections / {hold} s hold = {:.1} req/s", pool / hold),
        expect: format!(
            "past capacity requests queue for a connection; they fail with 503 db_pool_timeout once the wait passes the {acquire} ms acquire timeout"
        ),
    }
}
