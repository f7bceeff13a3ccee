//! `cold-start` — the serverless report: 30 requests at concurrency 15, workers provisioned on
//! demand, each new one paying a cold start; requests queued behind cold starts passed the
//! 2-minute gateway timeout and the run ended at 93.3% success.
//!
//! `/api/cold-start?work_ms=` runs on a simulated elastic pool, with time scaled down from
//! minutes to milliseconds. A request takes an idle warm worker if there is one; otherwise it
//! queues, and a new worker is started (ready after `cold_start_ms`) while fewer than
//! `max_workers` exist. The gateway answers 504 `gateway_timeout` once a request has taken
//! `gateway_timeout_ms`; like a serverless function, its work still runs. Idle workers above
//! `min_warm_workers` are retired after `idle_timeout_ms` (checked whenever the pool is used).
//! The fix: `min_warm_workers` (provisioned concurrency) — warm workers absorb the burst while
//! the others start.
//!
//! Metrics: `cold_start_workers{state="warm_idle"|"busy"|"starting"}`,
//! `cold_start_queue_depth`, `cold_start_cold_starts_total`, `cold_start_gateway_timeouts_total`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::apidoc::{int, num, obj, Op};
use crate::error::{AppError, AppResult};
use crate::knobs::Knobs;
use crate::params::{Fallback, Num, Params};
use crate::scenarios::{around, Alert, Gauge, Panel, Readings, Repro, RunConfig, Saturated, Scenario, AROUND};
use crate::state::AppState;
use crate::telemetry::register;

pub const WORK_MS: Num<u64> = Num {
    name: "work_ms",
    default: Fallback::Value(100),
    min: 1,
    max: 60_000,
    about: "milliseconds of work once a worker is warm",
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/cold-start", get(invoke))
}

#[derive(Default)]
struct Pool {
    /// Idle warm workers, by the instant each became idle (most recent last).
    idle_since: Vec<Instant>,
    busy: usize,
    starting: usize,
    /// Requests waiting for a worker; a worker is handed over by sending on the channel.
    queue: VecDeque<oneshot::Sender<()>>,
}

impl Pool {
    fn total(&self) -> usize {
        self.idle_since.len() + self.busy + self.starting
    }
}

#[derive(Clone)]
struct Metrics {
    workers: IntGaugeVec,
    queue_depth: IntGauge,
    cold_starts: IntCounter,
    gateway_timeouts: IntCounter,
}

/// The simulated elastic pool.
pub struct ElasticPool {
    inner: Mutex<Pool>,
    metrics: Metrics,
    /// Runs the cold-start timers (background work: they end with the app).
    lifecycle: crate::lifecycle::Lifecycle,
}

impl ElasticPool {
    pub fn new(registry: &Registry, lifecycle: crate::lifecycle::Lifecycle) -> Arc<Self> {
        let metrics = Metrics {
            workers: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "cold_start_workers",
                        "Simulated elastic workers by state (warm_idle, busy, starting)",
                    ),
                    &["state"],
                )
                .unwrap(),
            ),
            queue_depth: register(
                registry,
                IntGauge::new("cold_start_queue_depth", "Requests waiting for a simulated worker").unwrap(),
            ),
            cold_starts: register(
                registry,
                IntCounter::new(
                    "cold_start_cold_starts_total",
                    "Simulated workers started (each pays a cold start)",
                )
                .unwrap(),
            ),
            gateway_timeouts: register(
                registry,
                IntCounter::new(
                    "cold_start_gateway_timeouts_total",
                    "Requests answered 504 by the gateway timeout",
                )
                .unwrap(),
            ),
        };
        let pool = Arc::new(Self {
            inner: Mutex::new(Pool::default()),
            metrics,
            lifecycle,
        });
        pool.export(&pool.lock());
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn export(&self, p: &Pool) {
        self.metrics
            .workers
            .with_label_values(&["warm_idle"])
            .set(p.idle_since.len() as i64);
        self.metrics.workers.with_label_values(&["busy"]).set(p.busy as i64);
        self.metrics
            .workers
            .with_label_values(&["starting"])
            .set(p.starting as i64);
        self.metrics.queue_depth.set(p.queue.len() as i64);
    }

    /// Retires idle workers above the warm minimum that idled past the timeout.
    fn reap(p: &mut Pool, k: &Knobs) {
        let now = Instant::now();
        let timeout = Duration::from_millis(k.idle_timeout_ms);
        while p.total() > k.min_warm_workers as usize
            && p.idle_since.first().is_some_and(|t| now.duration_since(*t) >= timeout)
        {
            p.idle_since.remove(0);
        }
    }

    /// Starts workers until every queued request has one coming and the warm minimum is met,
    /// within `max_workers`.
    fn scale(self: &Arc<Self>, p: &mut Pool, k: &Knobs) {
        let max = (k.max_workers as usize).max(k.min_warm_workers as usize);
        while p.total() < max && (p.queue.len() > p.starting || p.total() < k.min_warm_workers as usize) {
            p.starting += 1;
            self.metrics.cold_starts.inc();
            let pool = self.clone();
            let cold = Duration::from_millis(k.cold_start_ms);
            self.lifecycle.spawn_background(async move {
                tokio::time::sleep(cold).await;
                let mut p = pool.lock();
                p.starting -= 1;
                pool.hand_over(&mut p);
                pool.export(&p);
            });
        }
    }

    /// A worker became free: give it to the oldest waiting request still there, or idle it.
    fn hand_over(&self, p: &mut Pool) {
        while let Some(waiter) = p.queue.pop_front() {
            if waiter.send(()).is_ok() {
                p.busy += 1;
                return;
            }
        }
        p.idle_since.push(Instant::now());
    }

    /// `Some((warm, wanted))` while fewer than `min_warm_workers` workers have finished their
    /// cold start: `/ready` answers 503 until then, so the first burst after ready finds them
    /// warm (the cold-start fix is only a fix once the provisioned workers exist).
    pub fn warming(&self, k: &Knobs) -> Option<(usize, usize)> {
        let p = self.lock();
        let warm = p.idle_since.len() + p.busy;
        let wanted = k.min_warm_workers as usize;
        (warm < wanted).then_some((warm, wanted))
    }

    /// Applies knob changes: provisions the warm minimum.
    pub fn apply(self: &Arc<Self>, k: &Knobs) {
        let mut p = self.lock();
        Self::reap(&mut p, k);
        self.scale(&mut p, k);
        self.export(&p);
    }

    /// Runs `work` on a worker, waiting (and scaling) as needed.
    async fn run(self: Arc<Self>, k: Arc<Knobs>, work: Duration) -> Duration {
        let start = Instant::now();
        let waiting = {
            let mut p = self.lock();
            Self::reap(&mut p, &k);
            let w = if p.idle_since.pop().is_some() {
                p.busy += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                p.queue.push_back(tx);
                self.scale(&mut p, &k);
                Some(rx)
            };
            self.export(&p);
            w
        };
        if let Some(rx) = waiting {
            // The sender lives in the queue until a worker takes it; it is never dropped unsent.
            let _ = rx.await;
        }
        let waited = start.elapsed();
        tokio::time::sleep(work).await;
        let mut p = self.lock();
        p.busy -= 1;
        self.hand_over(&mut p);
        self.export(&p);
        waited
    }
}

async fn invoke(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let work_ms: u64 = params.get(&WORK_MS)?;
    let knobs = state.knobs.current();
    let gateway = Duration::from_millis(knobs.gateway_timeout_ms);
    let start = Instant::now();
    // The invocation runs to the end even when the gateway gives up, like a serverless function.
    let invocation = state
        .lifecycle
        .spawn(state.elastic.clone().run(knobs.clone(), Duration::from_millis(work_ms)));
    match tokio::time::timeout(gateway, invocation).await {
        Ok(Ok(waited)) => Ok(Json(json!({
            "work_ms": work_ms,
            "waited_ms": waited.as_secs_f64() * 1e3,
            "total_ms": start.elapsed().as_secs_f64() * 1e3,
        }))),
        Ok(Err(join)) => Err(AppError::internal(join)),
        Err(_) => {
            state.elastic.metrics.gateway_timeouts.inc();
            Err(AppError::GatewayTimeout { after: gateway })
        }
    }
}

impl crate::knobs::ApplyKnobs for Arc<ElasticPool> {
    fn apply_knobs(&self, knobs: &Knobs) {
        self.apply(knobs);
    }
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("cold-start", "requests wait behind cold starts")
    .repro(REPRO)
    .gauges(&[Gauge::value("cold_start_queue", "cold_start_queue_depth")])
    .saturation(saturation)
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Workers by state",
        unit: "short",
        targets: &[("sum by (state) (cold_start_workers)", "{{state}}")],
        description: "",
    },
    Panel {
        title: "Queue and gateway timeouts",
        unit: "short",
        targets: &[
            ("sum(cold_start_queue_depth)", "queued"),
            ("sum(rate(cold_start_gateway_timeouts_total[1m]))", "gateway timeouts/s"),
            ("sum(rate(cold_start_cold_starts_total[1m]))", "cold starts/s"),
        ],
        description: "",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[Alert {
    name: "ColdStartGatewayTimeouts",
    expr: "sum by (instance) (rate(cold_start_gateway_timeouts_total[1m])) > 0",
    for_: "30s",
    severity: "warning",
    summary: "Cold-start requests pass the gateway timeout on {{ $labels.instance }}",
    description: "Requests queued behind cold starts: keep workers warm (min_warm_workers).",
}];

/// Its saturation banner: requests queued for a warm worker.
fn saturation(r: &Readings) -> Option<Saturated> {
    (r.n("cold_start_queue") > 0.0).then(|| {
        Saturated::new("cold-start queue").because(
            &["cold_start_queue"],
            format!("{} requests queued for a warm worker", r.n("cold_start_queue")),
        )
    })
}

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![Op::new(
        "get",
        "/api/cold-start",
        "Work on a simulated pool provisioned on demand",
    )
    .query(&[&WORK_MS])
    .ok(
        200,
        "done",
        obj(&[("work_ms", int()), ("waited_ms", num()), ("total_ms", num())]),
    )
    .fails(422, "invalid_parameter")
    .fails(503, "no worker could be provisioned (shed)")
    .fails(504, "gateway_timeout_ms passed (gateway_timeout)")]
}

/// `chokepoint repro cold-start`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro cold-start` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({"max_workers": 4})
}

/// The plan: what `repro cold-start` sends, at which rates, watching what.
fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let knobs = &config.knobs;
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/cold-start?work_ms=100");
    plan.rates = around((knobs.max_workers as f64) / 0.1, AROUND);
    plan.watches = vec![
        Watch::gauge("cold_start_queue_depth", "queue depth (max)", 0.0),
        Watch::counter("cold_start_cold_starts_total", "cold starts", 0.0),
        Watch::counter("cold_start_gateway_timeouts_total", "gateway timeouts", 0.0),
    ];
    // Let the profile's warm workers (min_warm_workers) finish their own cold start.
    plan.settle = std::time::Duration::from_millis(knobs.cold_start_ms + 250);
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let w = knobs.max_workers as f64;
    Prediction {
        capacity_rps: Some(w / 0.1),
        formula: format!(
            "{w} workers / 0.1 s work = {:.1} req/s once warm; each new worker takes {} ms to start ({} kept warm)",
            w / 0.1,
            (knobs.cold_start_ms as f64),
            (knobs.min_warm_workers as f64)
        ),
        expect: format!(
            "requests queued behind a cold start longer than the {} ms gateway timeout fail with 504",
            (knobs.gateway_timeout_ms as f64)
        ),
    }
}
