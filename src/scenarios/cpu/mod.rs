//! `cpu` — the CPU-stress report: 50 req/s of fib(25..35) made *unrelated* endpoints slow and
//! failed the liveness probe.
//!
//! Knob `cpu_mode`: `inline` (fragile) runs the work on the async runtime's worker threads
//! (`WORKER_COUNT` of them): while every worker computes, `/health` and `/api/ping` wait in line.
//! `offload` (the fix) runs it on the blocking pool, at most `cpu_max_concurrency` jobs at once;
//! the excess is shed with 503 + `Retry-After`, so the workers stay free for healthy routes.
//! Knob `cpu_cost_model`: `seed` (both profiles) makes each call cost the CPU time the original
//! Python lab spent on the same parameters ([`seed_cost`]: fib(30) ~82 ms, fib(34) ~561 ms), so the
//! original's 50 req/s of fib(25..34) saturates two cores here as it did there; `native` is Rust
//! speed (~26× less for fib), which no 2-core load of the original's size can saturate.
//! Metrics that move: `http_request_duration_seconds{route="/health"}`, `process_cpu_seconds_total`,
//! `cpu_offload_jobs_running`, `requests_shed_total{reason="cpu"}`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use prometheus::{IntGauge, Registry};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::apidoc::{array_of, int, num, obj, string, Op};
use crate::error::{AppError, AppResult};
use crate::knobs::{CostModel, CpuMode};
use crate::params::{Fallback, Num, Params};
use crate::resilience::guard::Group;
use crate::scenarios::{around, Alert, Panel, Repro, RunConfig, Scenario, AROUND};
use crate::state::AppState;

pub mod seed_cost;

/// The gauge of CPU jobs running on the blocking pool (offload mode).
pub fn offload_gauge(registry: &Registry) -> IntGauge {
    crate::telemetry::register(
        registry,
        IntGauge::new(
            "cpu_offload_jobs_running",
            "CPU jobs running on the blocking pool (offload mode)",
        )
        .unwrap(),
    )
}

/// How a CPU job ran: where, and the CPU time its thread spent on it (the real computation plus
/// the seed cost model's top-up).
struct Ran<T> {
    out: T,
    mode: &'static str,
    cpu: Duration,
    model: &'static str,
    /// Wall time from the call to run_cpu, queueing included.
    elapsed: Duration,
}

impl<T> Ran<T> {
    /// `body` plus what every CPU route reports of its run (see [`with_run_fields`]).
    fn answer(&self, mut body: Value) -> Json<Value> {
        let secs = self.elapsed.as_secs_f64();
        body["duration_seconds"] = json!(secs);
        body["duration_ms"] = json!(secs * 1e3);
        body["cpu_ms"] = json!(self.cpu.as_secs_f64() * 1e3);
        body["cost_model"] = json!(self.model);
        body["mode"] = json!(self.mode);
        Json(body)
    }
}

/// The schema of a CPU route's answer: its own fields and the run's ([`Ran::answer`]).
fn with_run_fields(own: &[(&str, Value)]) -> Value {
    let mut fields = own.to_vec();
    fields.extend([
        ("duration_seconds", num()),
        ("duration_ms", num()),
        ("cpu_ms", num()),
        ("cost_model", string()),
        ("mode", string()),
    ]);
    obj(&fields)
}

/// Runs CPU work the way the `cpu_mode` knob says. With `cpu_cost_model = seed`, `seed` is what the
/// original spent on the same parameters: the thread burns the difference after the real work.
async fn run_cpu<T, F>(state: &AppState, seed: Option<Duration>, work: F) -> AppResult<Ran<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let started = Instant::now();
    let knobs = state.knobs.current();
    let (seed, model) = match knobs.cpu_cost_model {
        CostModel::Seed => (seed, "seed"),
        CostModel::Native => (None, "native"),
    };
    let job = move || {
        let start = thread_cpu_time();
        let out = work();
        if let Some(seed) = seed {
            let used = thread_cpu_time().saturating_sub(start);
            if seed > used {
                burn_cpu(seed - used);
            }
        }
        (out, thread_cpu_time().saturating_sub(start))
    };
    let ((out, cpu), mode) = match knobs.cpu_mode {
        CpuMode::Inline => (job(), "inline"),
        CpuMode::Offload => {
            let entered = state
                .cpu_pool
                .enter_or_wait(knobs.cpu_max_concurrency, knobs.cpu_queue_max)
                .await;
            let Some(permit) = entered else {
                state.guard.count_shed("cpu");
                return Err(AppError::Shed {
                    retry_after: crate::error::RETRY_SOON,
                    detail: format!(
                        "{} CPU jobs already running (cpu_max_concurrency) and {} waiting (cpu_queue_max)",
                        knobs.cpu_max_concurrency, knobs.cpu_queue_max
                    ),
                });
            };
            let out = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                job()
            })
            .await
            .map_err(AppError::internal)?;
            (out, "offload")
        }
    };
    Ok(Ran {
        out,
        mode,
        cpu,
        model,
        elapsed: started.elapsed(),
    })
}

pub const COMPLEXITY: Num<u32> = Num {
    name: "complexity",
    default: Fallback::Value(30),
    min: 1,
    max: 40,
    about: "Fibonacci index: fib(30) is 2.7 million calls, ~82 ms at cpu_cost_model=seed; each step costs 1.618x the one before",
};

pub const ITERATIONS: Num<u32> = Num {
    name: "iterations",
    default: Fallback::Value(10_000),
    min: 1,
    max: 100_000,
    about: "SHA-256 rounds, each hashing the previous digest",
};

pub const SIZE: Num<u32> = Num {
    name: "size",
    default: Fallback::Value(1000),
    min: 1,
    max: 10_000,
    about: "records to serialize, parse and aggregate",
};

pub const BURN_MS: Num<u64> = Num {
    name: "ms",
    default: Fallback::Value(100),
    min: 1,
    max: 10_000,
    about: "milliseconds of CPU time to burn (the thread's own CPU clock, so preemption does not shorten it)",
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/cpu-intensive", get(cpu_intensive))
        .route("/api/hash", get(hash))
        .route("/api/json-processing", get(json_processing))
        .route("/api/cpu/burn", get(burn))
}

/// Recursive fibonacci: exponential on purpose, `fib(30)` is about 1.6 million calls.
#[inline(never)]
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(black_box(n - 1)) + fib(black_box(n - 2))
    }
}

/// SHA-256 applied `iterations` times, each round hashing the previous digest.
pub fn chained_sha256(seed: &[u8], iterations: u32) -> [u8; 32] {
    let mut digest: [u8; 32] = Sha256::digest(seed).into();
    for _ in 1..iterations {
        digest = Sha256::digest(digest).into();
    }
    digest
}

async fn cpu_intensive(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let complexity: u32 = params.get(&COMPLEXITY)?;
    let ran = run_cpu(&state, Some(seed_cost::fib(complexity)), move || fib(complexity)).await?;
    Ok(ran.answer(json!({
        "complexity": complexity,
        "result": ran.out,
        "warning": "This endpoint is CPU-intensive and blocks the worker that runs it",
    })))
}

async fn hash(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let iterations: u32 = params.get(&ITERATIONS)?;
    let ran = run_cpu(&state, Some(seed_cost::hash(iterations)), move || {
        chained_sha256(b"chokepoint", iterations)
    })
    .await?;
    Ok(ran.answer(json!({"iterations": iterations, "hash": hex::encode(ran.out)})))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: u32,
    name: String,
    value: f64,
    tags: Vec<String>,
}

async fn json_processing(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let size: u32 = params.get(&SIZE)?;
    let mut ran = run_cpu(&state, Some(seed_cost::json(size)), move || process_json(size)).await?;
    let mut body = std::mem::replace(&mut ran.out, Ok(Value::Null)).map_err(AppError::internal)?;
    // The original's names: items processed and the serialized size.
    body["processed_items"] = body["size"].clone();
    body["data_size_bytes"] = body["bytes"].clone();
    Ok(ran.answer(body))
}

/// Builds `size` records, serializes, parses back and aggregates them.
fn process_json(size: u32) -> Result<Value, serde_json::Error> {
    let records: Vec<Record> = (0..size)
        .map(|i| Record {
            id: i,
            name: format!("item-{i}"),
            value: f64::from((i * 7919) % 1000) / 10.0,
            tags: vec![format!("group-{}", i % 10), "chokepoint".to_string()],
        })
        .collect();
    let encoded = serde_json::to_vec(&records)?;
    let mut decoded: Vec<Record> = serde_json::from_slice(&encoded)?;
    decoded.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.id.cmp(&b.id)));
    let sum: f64 = decoded.iter().map(|r| r.value).sum();
    let top: Vec<u32> = decoded.iter().take(5).map(|r| r.id).collect();
    Ok(json!({
        "size": size,
        "bytes": encoded.len(),
        "sum": sum,
        "average": sum / f64::from(size),
        "top_ids": top,
    }))
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs no other input.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins until the thread has used `target` of CPU time (calibrated by the thread's CPU clock,
/// not the wall clock: time spent preempted does not count). Returns the CPU time used.
pub fn burn_cpu(target: Duration) -> Duration {
    let start = thread_cpu_time();
    if start.is_zero() {
        // No thread CPU clock (it never reads zero once a thread has run): burn nothing rather
        // than spin forever.
        return Duration::ZERO;
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        for _ in 0..10_000 {
            x = black_box(x.rotate_left(5) ^ x.wrapping_mul(0x2545_F491_4F6C_DD1D));
        }
        let used = thread_cpu_time().saturating_sub(start);
        if used >= target {
            return used;
        }
    }
}

async fn burn(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let ms = params.get(&BURN_MS)?;
    let ran = run_cpu(&state, None, move || burn_cpu(Duration::from_millis(ms))).await?;
    Ok(Json(json!({
        "ms": ms,
        "cpu_ms": ran.out.as_secs_f64() * 1e3,
        "wall_ms": ran.elapsed.as_secs_f64() * 1e3,
        "mode": ran.mode,
    })))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("cpu", "inline CPU work starves unrelated routes")
    .repro(REPRO)
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Canary latency p95 (/api/ping, /health)",
        unit: "s",
        targets: &[("histogram_quantile(0.95, sum by (route, le) (rate(http_request_duration_seconds_bucket{route=~\"/api/ping|/health\"}[1m])))", "{{route}}")],
        description: "Fast routes slowed by CPU work on the async workers: the collapse shows here first.",
    },
    Panel {
        title: "Process CPU (cores)",
        unit: "short",
        targets: &[("rate(process_cpu_seconds_total[1m])", "{{instance}}")],
        description: "",
    },
    Panel {
        title: "Offloaded CPU jobs running",
        unit: "short",
        targets: &[("sum(cpu_offload_jobs_running)", "running")],
        description: "cpu_mode=offload: bounded by cpu_max_concurrency.",
    },
    Panel {
        title: "Shed / rate-limited / timed out",
        unit: "reqps",
        targets: &[("sum by (reason) (rate(requests_shed_total[1m]))", "shed {{reason}}"), ("sum(rate(requests_rate_limited_total[1m]))", "rate limited"), ("sum by (group) (rate(request_timeouts_total[1m]))", "timeout {{group}}")],
        description: "The fixes at work: refused fast instead of queued.",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "LoadShedding",
        expr: "sum by (instance, reason) (rate(requests_shed_total[1m])) > 0",
        for_: "30s",
        severity: "warning",
        summary: "Requests shed ({{ $labels.reason }}) on {{ $labels.instance }}",
        description: "{{ $value | humanize }}/s requests refused with 503 instead of queued: the fix is working, and the service is over capacity.",
    },
];

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        Op::new(
            "get",
            "/api/cpu-intensive",
            "Recursive fibonacci (inline or offloaded: cpu_mode)",
        )
        .guard(Group::Cpu)
        .query(&[&COMPLEXITY])
        .ok(
            200,
            "computed",
            with_run_fields(&[("complexity", int()), ("result", int()), ("warning", string())]),
        )
        .fails(422, "invalid_parameter")
        .fails(503, "the CPU bulkhead is full (shed)"),
        Op::new("get", "/api/hash", "Chained SHA-256")
            .guard(Group::Cpu)
            .query(&[&ITERATIONS])
            .ok(
                200,
                "computed",
                with_run_fields(&[("iterations", int()), ("hash", string())]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, "the CPU bulkhead is full (shed)"),
        Op::new("get", "/api/json-processing", "Serialize, parse and aggregate records")
            .guard(Group::Cpu)
            .query(&[&SIZE])
            .ok(
                200,
                "computed",
                with_run_fields(&[
                    ("size", int()),
                    ("bytes", int()),
                    ("sum", num()),
                    ("average", num()),
                    ("top_ids", array_of(int())),
                    ("processed_items", int()),
                    ("data_size_bytes", int()),
                ]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, "the CPU bulkhead is full (shed)"),
        Op::new(
            "get",
            "/api/cpu/burn",
            "Burn a calibrated amount of CPU time (thread CPU clock)",
        )
        .guard(Group::Cpu)
        .query(&[&BURN_MS])
        .ok(
            200,
            "burned",
            obj(&[("ms", int()), ("cpu_ms", num()), ("wall_ms", num()), ("mode", string())]),
        )
        .fails(422, "invalid_parameter")
        .fails(503, "the CPU bulkhead is full (shed)"),
    ]
}

/// `chokepoint repro cpu`: its plan and prediction.
const REPRO: Repro = Repro {
    calibrate: true,
    ..Repro::new(repro_knobs, repro_plan, repro_predict)
};

/// The knobs `repro cpu` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({})
}

/// The plan: what `repro cpu` sends, at which rates, watching what.
fn repro_plan(config: &RunConfig, cpu_ms: Option<f64>) -> Plan {
    let knobs = &config.knobs;
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/cpu-intensive?complexity=30");
    let single = cpu_ms.unwrap_or(10.0) / 1000.0;
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let lanes = if knobs.cpu_mode == CpuMode::Offload {
        (knobs.cpu_max_concurrency as f64).min(cores)
    } else {
        cores
    };
    plan.rates = around(lanes / single, AROUND);
    plan.canary = Some("/api/ping");
    plan.watches = vec![
        Watch::gauge("http_requests_in_flight", "requests in flight (max)", cores),
        Watch::counter("requests_shed_total", "shed", 0.0),
    ];
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let single = cpu_ms.unwrap_or(f64::NAN);
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let offload = knobs.cpu_mode == CpuMode::Offload;
    let lanes = if offload {
        (knobs.cpu_max_concurrency as f64).min(cores)
    } else {
        cores
    };
    Prediction {
        capacity_rps: Some(lanes * 1000.0 / single),
        formula: format!(
            "{lanes} {} / {single:.1} ms per fib(30) (measured alone) = {:.1} req/s",
            if offload { "offload slots" } else { "cores" },
            lanes * 1000.0 / single
        ),
        expect: if knobs.cpu_mode == CpuMode::Offload {
            format!(
                "CPU work runs on a bounded pool ({}); the excess is shed with 503 and /api/ping stays fast",
                (knobs.cpu_max_concurrency as f64)
            )
        } else {
            "CPU work runs inline on the async workers: past capacity everything queues, /api/ping included".into()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_uses_the_cpu_time_asked_for() {
        // Measured on the thread's CPU clock: a busy machine makes it take longer, never less.
        let used = burn_cpu(Duration::from_millis(30));
        assert!(
            used >= Duration::from_millis(30) && used < Duration::from_millis(60),
            "{used:?}"
        );
    }

    #[test]
    fn fib_is_right() {
        assert_eq!(fib(0), 0);
        assert_eq!(fib(1), 1);
        assert_eq!(fib(20), 6765);
    }

    #[test]
    fn hash_chain_differs_per_iteration() {
        assert_ne!(chained_sha256(b"x", 1), chained_sha256(b"x", 2));
        assert_eq!(chained_sha256(b"x", 1), <[u8; 32]>::from(Sha256::digest(b"x")));
    }
}
