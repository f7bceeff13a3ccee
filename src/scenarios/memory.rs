//! `memory` — the memory-stress report: 20 VUs each retaining 10-30 MB until the pod is
//! OOMKilled and restarts into the same load.
//!
//! Allocations are anonymous mappings with every page written, so RSS really grows by the amount
//! requested (an untouched allocation would only reserve address space), and clearing unmaps them,
//! so RSS really falls. A safety cap (`MEMORY_LEAK_LIMIT_MB`, default 1024) bounds what the
//! memory endpoints may hold at once (retained + in-flight spikes); past it they answer 507 with
//! a body saying how to lift it. The runtime knob `memory_budget_mb` (the fix) refuses earlier,
//! below the container limit, so the process stays flat instead of being OOMKilled. Metrics: `memory_retained_bytes`, `memory_spike_bytes`,
//! `memory_cap_refusals_total`, `process_resident_memory_bytes`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use memmap2::MmapMut;
use prometheus::{IntCounter, IntGauge, Registry};
use serde_json::{json, Value};

use crate::apidoc::{int, num, obj, string, Op};
use crate::error::{AppError, AppResult};
use crate::params::{Fallback, Num, Params};
use crate::scenarios::{Alert, Gauge, Panel, Reading, Repro, RunConfig, Scenario};
use crate::state::AppState;
use crate::telemetry::register;

const MIB: u64 = 1024 * 1024;
/// Touch stride: the smallest page size we run on, so every page gets written.
const PAGE: usize = 4096;
/// How long `/api/memory-spike` holds its allocation.
const SPIKE_HOLD: Duration = Duration::from_secs(1);

pub const LEAK_MB: Num<u64> = Num {
    name: "size_mb",
    default: Fallback::Value(10),
    min: 1,
    max: 100,
    about: "MiB to allocate and retain until POST /api/clear-memory",
};

pub const SPIKE_MB: Num<u64> = Num {
    name: "size_mb",
    default: Fallback::Value(50),
    min: 1,
    max: 500,
    about: "MiB to allocate, hold for about a second, then free",
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/memory-leak", get(memory_leak))
        .route("/api/memory-spike", get(memory_spike))
        .route("/api/clear-memory", post(clear_memory))
}

pub struct MemoryStore {
    retained: Mutex<Vec<MmapMut>>,
    /// Bytes held by the memory endpoints (retained + spikes), checked against `limit`.
    reserved: AtomicU64,
    limit: u64,
    retained_gauge: IntGauge,
    spike_gauge: IntGauge,
    refusals: IntCounter,
}

impl MemoryStore {
    pub fn new(limit_bytes: u64, registry: &Registry) -> Self {
        let limit_gauge = register(
            registry,
            IntGauge::new(
                "memory_limit_bytes",
                "Safety cap on memory the memory endpoints may hold",
            )
            .unwrap(),
        );
        limit_gauge.set(limit_bytes as i64);
        Self {
            retained: Mutex::new(Vec::new()),
            reserved: AtomicU64::new(0),
            limit: limit_bytes,
            retained_gauge: register(
                registry,
                IntGauge::new(
                    "memory_retained_bytes",
                    "Bytes retained by /api/memory-leak until cleared",
                )
                .unwrap(),
            ),
            spike_gauge: register(
                registry,
                IntGauge::new(
                    "memory_spike_bytes",
                    "Bytes held right now by in-flight /api/memory-spike calls",
                )
                .unwrap(),
            ),
            refusals: register(
                registry,
                IntCounter::new(
                    "memory_cap_refusals_total",
                    "Allocations refused by the memory safety cap",
                )
                .unwrap(),
            ),
        }
    }

    pub fn retained_bytes(&self) -> u64 {
        self.retained_gauge.get().max(0) as u64
    }

    /// Reserves `bytes` under the safety cap and the runtime budget (`budget == 0`: no budget),
    /// or refuses with 507.
    fn reserve(&self, bytes: u64, budget: u64) -> AppResult<()> {
        let by_budget = budget > 0 && budget < self.limit;
        let limit = if by_budget { budget } else { self.limit };
        let res = self.reserved.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
            cur.checked_add(bytes).filter(|n| *n <= limit)
        });
        match res {
            Ok(_) => Ok(()),
            Err(current) => {
                self.refusals.inc();
                let (what, lift_with) = if by_budget {
                    (
                        "memory budget",
                        "memory_budget_mb (PATCH /admin/config) or MEMORY_BUDGET_MB",
                    )
                } else {
                    ("safety cap", "MEMORY_LEAK_LIMIT_MB")
                };
                Err(AppError::MemoryCap {
                    detail: format!(
                        "allocating {} MiB would exceed the {} MiB {what} ({} MiB already held); \
                         clear with POST /api/clear-memory or raise {lift_with}",
                        bytes / MIB,
                        limit / MIB,
                        current / MIB
                    ),
                    limit_mb: limit / MIB,
                    lift_with,
                })
            }
        }
    }

    fn release(&self, bytes: u64) {
        self.reserved.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Reserves and allocates `bytes` of resident memory off the async workers.
    async fn allocate(self: &Arc<Self>, bytes: u64, budget: u64) -> AppResult<MmapMut> {
        self.reserve(bytes, budget)?;
        let len = bytes as usize;
        match tokio::task::spawn_blocking(move || allocate_touched(len)).await {
            Ok(Ok(map)) => Ok(map),
            Ok(Err(e)) => {
                self.release(bytes);
                Err(AppError::internal(e))
            }
            Err(join) => {
                self.release(bytes);
                Err(AppError::internal(join))
            }
        }
    }

    /// Counts `bytes` held by another scenario (a buffered upload) against the cap and budget
    /// until the returned guard drops.
    pub fn hold(self: &Arc<Self>, bytes: u64, budget: u64) -> AppResult<MemoryHold> {
        self.reserve(bytes, budget)?;
        Ok(MemoryHold {
            store: self.clone(),
            bytes,
        })
    }

    /// Drops every retained chunk; returns (bytes, chunks) released.
    pub fn clear(&self) -> (u64, usize) {
        let chunks: Vec<MmapMut> = std::mem::take(&mut *self.retained.lock().unwrap_or_else(|p| p.into_inner()));
        let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let n = chunks.len();
        drop(chunks);
        self.release(bytes);
        self.retained_gauge.sub(bytes as i64);
        (bytes, n)
    }
}

/// Hands the heap's free pages back to the OS (glibc's `malloc_trim`). glibc keeps memory freed
/// by buffers and connection state in its arenas, so without this RSS stays at its peak after
/// the load is gone (5,000 closed connections: 95 MB against a 13 MB baseline), and the lab's
/// RSS chart would show a "leak" that is not the scenario's. Elsewhere: nothing to do.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and madvises the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls [`give_back`] every `memory_trim_interval_ms` (read each time; 0 = never) on the
/// blocking pool (background work: it ends with the app).
pub async fn trim_periodically(knobs: Arc<crate::knobs::KnobStore>) {
    loop {
        let every = knobs.current().memory_trim_interval_ms;
        let wait = if every == 0 { 1_000 } else { every };
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        if every > 0 {
            let _ = tokio::task::spawn_blocking(give_back).await;
        }
    }
}

/// An anonymous mapping of `len` bytes with every page written, so it is resident.
fn allocate_touched(len: usize) -> std::io::Result<MmapMut> {
    let mut map = MmapMut::map_anon(len)?;
    for i in (0..len).step_by(PAGE) {
        map[i] = 0xA5;
    }
    Ok(map)
}

async fn memory_leak(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let size_mb: u64 = params.get(&LEAK_MB)?;
    let store = &state.memory;
    let budget = state.knobs.current().memory_budget_mb * MIB;
    let map = store.allocate(size_mb * MIB, budget).await?;
    let chunks = {
        let mut retained = store.retained.lock().unwrap_or_else(|p| p.into_inner());
        retained.push(map);
        retained.len()
    };
    store.retained_gauge.add((size_mb * MIB) as i64);
    Ok(Json(json!({
        "allocated_mb": size_mb,
        "retained_mb": store.retained_bytes() / MIB,
        "chunks": chunks,
        "total_allocations": chunks,
        "limit_mb": store.limit / MIB,
        "message": "retained until POST /api/clear-memory",
        "warning": "Memory will not be freed until POST /api/clear-memory or a restart",
    })))
}

async fn memory_spike(State(state): State<AppState>, params: Params) -> AppResult<Json<Value>> {
    let size_mb: u64 = params.get(&SPIKE_MB)?;
    let bytes = size_mb * MIB;
    let store = &state.memory;
    let budget = state.knobs.current().memory_budget_mb * MIB;
    let map = store.allocate(bytes, budget).await?;
    store.spike_gauge.add(bytes as i64);
    // Released even if the client goes away mid-hold.
    let start = std::time::Instant::now();
    let _held = SpikeGuard {
        store: store.clone(),
        bytes,
        map: Some(map),
    };
    tokio::time::sleep(SPIKE_HOLD).await;
    Ok(Json(json!({
        "allocated_mb": size_mb,
        "duration_seconds": start.elapsed().as_secs_f64(),
        "note": "Memory is freed when the request ends",
        "spike_mb": size_mb,
        "held_ms": SPIKE_HOLD.as_millis() as u64,
        "message": "allocated, held, then freed",
    })))
}

/// Memory counted against the cap while held.
pub struct MemoryHold {
    store: Arc<MemoryStore>,
    bytes: u64,
}

impl Drop for MemoryHold {
    fn drop(&mut self) {
        self.store.release(self.bytes);
    }
}

struct SpikeGuard {
    store: Arc<MemoryStore>,
    bytes: u64,
    map: Option<MmapMut>,
}

impl Drop for SpikeGuard {
    fn drop(&mut self) {
        drop(self.map.take());
        self.store.spike_gauge.sub(self.bytes as i64);
        self.store.release(self.bytes);
    }
}

async fn clear_memory(State(state): State<AppState>) -> Json<Value> {
    let (bytes, chunks) = state.memory.clear();
    if state.knobs.current().memory_trim_interval_ms > 0 {
        // Now, not at the next tick: the RSS chart should fall when the button is pressed.
        let _ = tokio::task::spawn_blocking(give_back).await;
    }
    Json(json!({"cleared_allocations": chunks, "status": "memory cleared",
                "released_mb": bytes / MIB, "chunks": chunks, "retained_mb": state.memory.retained_bytes() / MIB}))
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("memory", "RSS climbs towards the container limit")
    .repro(REPRO)
    .gauges(&[
        Gauge {
            key: "retained_mb",
            metric: "memory_retained_bytes",
            labels: &[],
            reading: Reading::MiB,
        },
        Gauge {
            key: "rss_mb",
            metric: "process_resident_memory_bytes",
            labels: &[],
            reading: Reading::MiB,
        },
    ])
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "RSS vs limits",
        unit: "bytes",
        targets: &[
            ("process_resident_memory_bytes", "RSS {{instance}}"),
            ("process_memory_limit_bytes > 0", "container limit {{instance}}"),
            ("memory_limit_bytes", "safety cap {{instance}}"),
        ],
        description: "RSS climbing linearly to the cgroup limit ends in an OOMKill.",
    },
    Panel {
        title: "Held by the memory endpoints",
        unit: "bytes",
        targets: &[
            ("sum(memory_retained_bytes)", "retained (leak)"),
            ("sum(memory_spike_bytes)", "spikes"),
        ],
        description: "",
    },
    Panel {
        title: "Refused at the cap (507)",
        unit: "reqps",
        targets: &[("sum(rate(memory_cap_refusals_total[1m]))", "refusals")],
        description: "",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "RSSNearMemoryLimit",
        expr: "max by (instance) (process_resident_memory_bytes) > 0.9 * max by (instance) (process_memory_limit_bytes > 0)",
        for_: "1m",
        severity: "critical",
        summary: "RSS above 90% of the container memory limit on {{ $labels.instance }}",
        description: "The next allocation may be an OOMKill. Retained memory: memory_retained_bytes; clear it with POST /api/clear-memory.",
    },
];

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        Op::new("get", "/api/memory-leak", "Allocate and retain memory until cleared")
            .query(&[&LEAK_MB])
            .ok(
                200,
                "retained",
                obj(&[
                    ("allocated_mb", int()),
                    ("retained_mb", int()),
                    ("chunks", int()),
                    ("total_allocations", int()),
                    ("limit_mb", int()),
                    ("message", string()),
                    ("warning", string()),
                ]),
            )
            .fails(422, "invalid_parameter")
            .fails(507, "the memory cap or budget would be exceeded (memory_cap)"),
        Op::new("get", "/api/memory-spike", "Allocate, hold about a second, free")
            .query(&[&SPIKE_MB])
            .ok(
                200,
                "done",
                obj(&[
                    ("allocated_mb", int()),
                    ("duration_seconds", num()),
                    ("note", string()),
                    ("spike_mb", int()),
                    ("held_ms", int()),
                    ("message", string()),
                ]),
            )
            .fails(422, "invalid_parameter")
            .fails(507, "the memory cap or budget would be exceeded (memory_cap)"),
        Op::new("post", "/api/clear-memory", "Free the retained memory").ok(
            200,
            "freed",
            obj(&[
                ("cleared_allocations", int()),
                ("status", string()),
                ("released_mb", int()),
                ("chunks", int()),
                ("retained_mb", int()),
            ]),
        ),
    ]
}

/// `chokepoint repro memory`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro memory` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({})
}

/// The plan: what `repro memory` sends, at which rates, watching what.
fn repro_plan(_config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/memory-leak?size_mb=8");
    plan.rates = vec![4.0, 4.0, 4.0, 4.0, 4.0];
    plan.watches = vec![
        Watch::gauge("memory_retained_bytes", "retained bytes (max)", 0.0),
        Watch::counter("memory_cap_refusals_total", "cap refusals", 0.0),
        Watch::gauge("process_resident_memory_bytes", "RSS (max)", f64::INFINITY),
    ];
    // Free what the run retained, so the next profile starts from the same memory.
    plan.after_run = Some((reqwest::Method::POST, "/api/clear-memory"));
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let budget = knobs.memory_budget_mb as f64;
    let cap = config.memory_leak_limit_mb;
    let (limit, what) = if budget > 0.0 && budget < cap {
        (budget, "budget (memory_budget_mb)")
    } else {
        (cap, "safety cap (MEMORY_LEAK_LIMIT_MB)")
    };
    Prediction {
        capacity_rps: None,
        formula: format!(
            "8 MiB retained per success: {:.0} successes until the {limit} MiB {what}",
            (limit / 8.0).floor()
        ),
        expect: "then 507 memory_cap, at once".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_refuses_and_release_restores() {
        let store = MemoryStore::new(10 * MIB, &Registry::new());
        store.reserve(8 * MIB, 0).unwrap();
        let err = store.reserve(4 * MIB, 0).unwrap_err();
        assert_eq!(err.status().as_u16(), 507);
        store.release(8 * MIB);
        store.reserve(10 * MIB, 0).unwrap();
        store.release(10 * MIB);
        // A budget below the cap refuses first, and says which knob to change.
        let err = store.reserve(6 * MIB, 5 * MIB).unwrap_err();
        assert!(matches!(err, AppError::MemoryCap { lift_with, .. } if lift_with.contains("memory_budget_mb")));
    }
}
