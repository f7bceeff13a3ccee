//! `adaptive-limit` — a cure, not a collapse: `concurrency_limit = aimd | gradient` limits the
//! db and cpu routes in flight to a number found from their measured latency, with no capacity
//! given (src/resilience/adaptive.rs). Past the limit a request gets 503 at once instead of
//! queueing; the limit follows the capacity when a knob changes it live (a pool resized, a CPU
//! pool's slots). resilience4j has been asked for one since 2018 (#201); Netflix's
//! concurrency-limits has Gradient2 and AIMD.
//!
//! `chokepoint repro adaptive-limit` runs db-pool's holds (pool 4, 100 ms) with
//! `concurrency_limit=gradient` on top of each profile: the fragile profile's 30 s acquire queue
//! is cut at the limit it finds, without a fail-fast timeout being set.
//!
//! Metrics: `concurrency_limit{group}`, `concurrency_limit_rtt_seconds{group,kind}`,
//! `requests_shed_total{reason="concurrency_limit"}`.

use chokepoint_repro::plan::{Plan, Prediction, Watch};
use serde_json::{json, Value};

use crate::scenarios::db_pool::{hold_plan, hold_prediction};
use crate::scenarios::{Gauge, Panel, Repro, RunConfig, Scenario};

// It limits db-pool's and cpu's routes; it has none of its own.
pub const SCENARIO: Scenario = crate::scenarios::scenario!("adaptive-limit", "an adaptive concurrency limit: the capacity found from measured latency, none given", without routes)
    .repro(Repro::new(repro_knobs, repro_plan, repro_predict))
    .gauges(&[
        Gauge {
            key: "limit_db",
            metric: "concurrency_limit",
            labels: &[("group", "db")],
            reading: crate::scenarios::Reading::Value,
        },
        Gauge {
            key: "limit_cpu",
            metric: "concurrency_limit",
            labels: &[("group", "cpu")],
            reading: crate::scenarios::Reading::Value,
        },
    ])
    .dashboard(DASHBOARD);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Adaptive concurrency limit by group",
        unit: "short",
        targets: &[("max by (group) (concurrency_limit)", "limit {{group}}"), ("sum(rate(requests_shed_total{reason=\"concurrency_limit\"}[1m]))", "shed/s")],
        description: "concurrency_limit = aimd | gradient: the limit found from latency (no capacity given), and what it refuses.",
    },
    Panel {
        title: "Adaptive limit latency",
        unit: "s",
        targets: &[("max by (group, kind) (concurrency_limit_rtt_seconds)", "{{group}} {{kind}}")],
        description: "The no-queue baseline and the last window's mean: above 1.1x the baseline the limit comes down.",
    },
];

/// The hold of each request, as `repro db-pool`'s.
const HOLD_MS: u64 = 100;

fn repro_knobs() -> Value {
    json!({"db_pool_size": 4, "db_max_overflow": 0, "concurrency_limit": "gradient"})
}

fn repro_plan(config: &RunConfig, _calibrated: Option<f64>) -> Plan {
    let mut plan = hold_plan(config, repro_knobs(), HOLD_MS);
    plan.watches.push(Watch::gauge(
        "concurrency_limit{group=\"db\"}",
        "the adaptive limit (max)",
        f64::from(config.knobs.db_pool_size + config.knobs.db_max_overflow) * 1.1,
    ));
    plan.watches.push(Watch::counter(
        "requests_shed_total{reason=\"concurrency_limit\"}",
        "shed at the limit",
        0.0,
    ));
    plan
}

fn repro_predict(config: &RunConfig, _calibrated: Option<f64>) -> Prediction {
    let base = hold_prediction(config, HOLD_MS);
    let pool = config.knobs.db_pool_size + config.knobs.db_max_overflow;
    Prediction {
        expect: format!(
            "concurrency_limit=gradient finds about {pool} in flight (the pool, never given to it) from the holds' \
             latency; past capacity the excess gets 503 at once, whatever the acquire timeout"
        ),
        ..base
    }
}
