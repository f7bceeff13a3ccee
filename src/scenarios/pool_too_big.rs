//! `pool-too-big` — the false cure: "raise the pool to 500–1000" (the burst report's Tier-1
//! advice). A pool on one PostgreSQL server is not capacity: the server's cores are. Queries
//! that need the server's CPU (`/api/expensive-query`, a recursive CTE) share those cores, so
//! past about cores × 2 connections a bigger pool only moves the queue from the app into the
//! database, where every query in it runs slower (the cores are time-sliced between them),
//! switches context, and keeps its connection longer. Throughput falls a little and p95 climbs
//! a lot as the pool grows: HikariCP's pool-sizing page (connections ≈ cores × 2 + spindles) and
//! the Oracle demo it cites (2048 → 96 connections cut response time ~50×).
//!
//! The cure: a pool near the server's cores × 2 with the queue in front of it, in the app. The
//! knob `db_cpu_query_slots` (hardened 4: the lab PostgreSQL host's 2 cores × 2) lets that many
//! CPU-bound queries run on the database at once, whatever `db_pool_size` says; the rest wait
//! in the app, in order, up to the acquire timeout, then 503 (`db_pool_timeout`).
//!
//! Metrics: `db_cpu_queries_running` (the queries sharing the server's cores),
//! `db_cpu_query_seconds{phase="wait"|"run"}` (waiting in the app; running on the database: the
//! run time is what grows with the pool), `db_pool_connections{state="in_use"}`. The alert
//! `DatabaseOversubscribed` fires when many CPU-bound queries share the database and their run
//! time climbs.
//!
//! `chokepoint repro pool-too-big` sweeps the pool (1 … 64 connections) at one offered rate,
//! 80% of what the server's cores can do, rather than sweeping the rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chokepoint_repro::plan::{Plan, Prediction, Sweep, Target, Watch};
use prometheus::{HistogramOpts, HistogramVec, IntGauge, Registry};
use serde_json::{json, Value};

use crate::error::AppError;
use crate::infra::database::Backend;
use crate::resilience::bulkhead::{Bulkhead, Permit};
use crate::scenarios::{Alert, Gauge, Panel, Repro, RunConfig, Scenario};
use crate::telemetry::register;

// Its load is db-pool's `/api/expensive-query` (the seed's CPU-bound query).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("pool-too-big", "the pool that is too big: past the database's cores × 2, a bigger pool serves less and answers slower", without routes)
    // It needs PostgreSQL.
    .k6_run_by("scripts/ci/k6-slow-link.sh")
    .repro(REPRO)
    .gauges(&[
        Gauge::value("cpu_queries_running", "db_cpu_queries_running"),
        Gauge {
            key: "db_in_use",
            metric: "db_pool_connections",
            labels: &[("state", "in_use")],
            reading: crate::scenarios::Reading::Value,
        },
    ])
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "CPU-bound queries on the database",
        unit: "short",
        targets: &[("sum(db_cpu_queries_running)", "running"), ("sum(db_pool_connections{state=\"in_use\"})", "connections in use")],
        description: "Past the server's cores x 2 a bigger pool only puts more queries on the same cores (db_cpu_query_slots caps them).",
    },
    Panel {
        title: "CPU-bound query time p95 by phase",
        unit: "s",
        targets: &[("histogram_quantile(0.95, sum by (phase, le) (rate(db_cpu_query_seconds_bucket[1m])))", "{{phase}}")],
        description: "wait: in the app for a slot; run: on the database, which grows with the queries sharing its cores.",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "DatabaseOversubscribed",
        expr: "max by (instance) (db_cpu_queries_running) > 8\nand on (instance)\nhistogram_quantile(0.95, sum by (instance, le) (rate(db_cpu_query_seconds_bucket{phase=\"run\"}[1m]))) > 0.1\n",
        for_: "2m",
        severity: "warning",
        summary: "{{ $labels.instance }} runs more CPU-bound queries at once than the database has cores for",
        description: "More than 8 CPU-bound queries share the database and their p95 run time is over 100 ms: the pool has outgrown the server's cores (HikariCP: connections = cores x 2 + spindles), so each query runs longer and everything else on the database waits behind them. A bigger pool will not help; db_cpu_query_slots = the server's cores x 2 puts the queue back in the app.",
    },
];

/// The query `repro pool-too-big` sends: 20 000 rows of recursive CTE, about 5 ms of one
/// PostgreSQL core.
pub const REPRO_PATH: &str = "/api/expensive-query?iterations=200";
/// The pool sizes the repro sweeps (PostgreSQL's default `max_connections` is 100).
pub const SWEEP: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// The share of the cores' capacity offered at every pool size: more than they can do, so the
/// pool fills and the queue is somewhere (in the app, or in the database).
const LOAD: f64 = 1.25;
/// A light query beside the load, on the same database (its latency is the collateral damage).
const CANARY: &str = "/api/tasks?limit=10";

const REPRO: Repro = Repro {
    calibrate: true,
    unavailable: |state| {
        (state.db.backend() != Backend::Postgres).then(|| {
            "pool-too-big needs PostgreSQL: its queries load the database server's cores (start the lab with \
             DATABASE_URL=postgres://...)"
                .to_string()
        })
    },
    ..Repro::new(repro_knobs, repro_plan, repro_predict)
};

/// The sweep starts from a pool of 1 and no overflow (each stage sets `db_pool_size`).
fn repro_knobs() -> Value {
    json!({"db_pool_size": 1, "db_max_overflow": 0})
}

/// The cores of the database's host: this host's (the lab's PostgreSQL runs beside it).
pub fn server_cores() -> f64 {
    std::thread::available_parallelism().map_or(2, |n| n.get()) as f64
}

/// One query alone (`calibrated_ms`, measured) keeps one core busy for about that long: the
/// server completes `cores / query time` of them per second, whatever the pool.
fn capacity(calibrated_ms: Option<f64>) -> f64 {
    server_cores() * 1000.0 / calibrated_ms.unwrap_or(6.0).max(0.5)
}

fn repro_plan(_config: &RunConfig, calibrated_ms: Option<f64>) -> Plan {
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get(REPRO_PATH);
    let rate = (capacity(calibrated_ms) * LOAD * 10.0).round() / 10.0;
    plan.rates = vec![rate; SWEEP.len()];
    plan.sweep = Some(Sweep {
        knob: "db_pool_size",
        values: SWEEP.to_vec(),
    });
    plan.canary = Some(CANARY);
    plan.watches = vec![
        Watch::gauge(
            "db_cpu_queries_running",
            "queries sharing the server's cores (max)",
            server_cores() * 2.0,
        ),
        Watch::gauge("db_pool_waiting", "waiting for a connection (max)", 0.0),
    ];
    plan
}

fn repro_predict(config: &RunConfig, calibrated_ms: Option<f64>) -> Prediction {
    let cores = server_cores();
    let c = capacity(calibrated_ms);
    let slots = config.knobs.db_cpu_query_slots;
    Prediction {
        capacity_rps: Some(c),
        formula: format!(
            "the database's {cores} cores / {:.1} ms per query (one alone, measured) = {c:.0} req/s, whatever the pool; \
             offered {:.0} req/s ({:.0}%) at every pool size",
            calibrated_ms.unwrap_or(6.0),
            c * LOAD,
            LOAD * 100.0
        ),
        expect: if slots == 0 {
            format!(
                "past about {:.0} connections (cores × 2) a bigger pool buys no more work: the queries share the \
                 cores and each runs longer on the database, and a light query beside them waits behind them",
                cores * 2.0
            )
        } else {
            format!(
                "db_cpu_query_slots={slots}: at most {slots} queries run on the database whatever the pool; the rest \
                 wait in the app, so p95 and throughput stay flat as the pool grows"
            )
        },
    }
}

/// CPU-bound queries on the database: the slots (`db_cpu_query_slots`) and their timings.
pub struct CpuQueries {
    slots: Arc<Bulkhead>,
    running: IntGauge,
    seconds: HistogramVec,
}

/// Counts one query as running on the database while it lives.
pub struct Running(IntGauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl CpuQueries {
    pub fn new(registry: &Registry) -> Arc<Self> {
        let running = register(
            registry,
            IntGauge::new(
                "db_cpu_queries_running",
                "CPU-bound queries (/api/expensive-query) running on the database right now",
            )
            .unwrap(),
        );
        Arc::new(Self {
            slots: Bulkhead::new(None),
            running,
            seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "db_cpu_query_seconds",
                        "CPU-bound queries: time waiting in the app for a slot (wait), and running on the database (run)",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["phase"],
                )
                .unwrap(),
            ),
        })
    }

    /// A slot for one query: at once when fewer than `slots` run (0: no limit), or after waiting
    /// in the app, at most `budget` (the acquire timeout; past it 503 `db_pool_timeout`).
    /// Returns the permit and the time waited, which the caller takes off its acquire budget.
    pub async fn enter(&self, slots: u32, budget: Duration) -> Result<(Permit, Duration), AppError> {
        let start = Instant::now();
        let entered = tokio::time::timeout(budget, self.slots.enter_or_wait(slots, u32::MAX)).await;
        let waited = start.elapsed();
        self.seconds.with_label_values(&["wait"]).observe(waited.as_secs_f64());
        match entered {
            Ok(Some(permit)) => Ok((permit, waited)),
            _ => Err(AppError::PoolTimeout { waited }),
        }
    }

    /// The query has its connection and runs on the database now (until the guard drops).
    pub fn running(&self) -> Running {
        self.running.inc();
        Running(self.running.clone())
    }

    /// One query's time on the database.
    pub fn ran(&self, d: Duration) {
        self.seconds.with_label_values(&["run"]).observe(d.as_secs_f64());
    }
}
