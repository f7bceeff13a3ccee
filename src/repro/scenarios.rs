//! What `chokepoint repro` runs for each catalog row: the request, the knobs that make the
//! numbers small enough for a short run, the stages of offered load, the prediction from the
//! knobs, and the metrics that show the saturation.

use crate::knobs::{CpuMode, DeployMode, Knobs};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use serde_json::{json, Value};

/// The catalog rows `repro` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioId {
    Cpu,
    Memory,
    DbPool,
    DbReplicas,
    Downstream,
    WorkerPool,
    RetryStorm,
    ColdStart,
    Burst,
    CacheStampede,
}

impl ScenarioId {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioId::Cpu => "cpu",
            ScenarioId::Memory => "memory",
            ScenarioId::DbPool => "db-pool",
            ScenarioId::DbReplicas => "db-replicas",
            ScenarioId::Downstream => "downstream",
            ScenarioId::WorkerPool => "worker-pool",
            ScenarioId::RetryStorm => "retry-storm",
            ScenarioId::ColdStart => "cold-start",
            ScenarioId::Burst => "burst",
            ScenarioId::CacheStampede => "cache-stampede",
        }
    }
}

/// Requests waiting for a database connection: the pool's first sign of saturation.
const POOL_WAITING: Watch = Watch {
    series: "db_pool_waiting",
    label: "waiting for a connection (max)",
    counter: false,
    saturated_above: 0.0,
};

/// The lab's configuration in force for a run, typed (read once from `GET /admin/config`).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub knobs: Knobs,
    /// The safety cap, `MEMORY_LEAK_LIMIT_MB`.
    pub memory_leak_limit_mb: f64,
}

impl RunConfig {
    pub fn from_view(view: &crate::admin::ConfigView) -> anyhow::Result<Self> {
        let knobs = view
            .current()
            .map_err(|e| anyhow::anyhow!("the lab's /admin/config has unexpected knobs: {e}"))?;
        let memory_leak_limit_mb = view
            .startup_only
            .get("memory_leak_limit_mb")
            .and_then(|s| s.value.as_f64())
            .unwrap_or(f64::NAN);
        Ok(RunConfig {
            knobs,
            memory_leak_limit_mb,
        })
    }
}

/// Multiples of a capacity.
fn around(capacity: f64, multiples: &[f64]) -> Vec<f64> {
    multiples.iter().map(|m| (capacity * m * 10.0).round() / 10.0).collect()
}

const AROUND: &[f64] = &[0.5, 0.8, 1.0, 1.25, 1.5, 2.0];

impl ScenarioId {
    /// Why the scenario cannot run against an in-process lab, when it cannot.
    pub fn needs_base_url(self) -> Option<&'static str> {
        (self == ScenarioId::DbReplicas).then_some(
            "db-replicas needs several replicas in front of one PostgreSQL: point --base-url at their Service (the k8s `replicas` overlay) — tests/scenarios/db_replicas.rs measures it on one machine",
        )
    }

    /// The request the scenario sends (it does not depend on the knobs).
    pub fn target(self) -> Target {
        let defaults = RunConfig {
            knobs: Knobs::for_profile(crate::knobs::Profile::Fragile),
            memory_leak_limit_mb: f64::NAN,
        };
        self.plan(&defaults, None).target
    }

    /// The knobs the run sets on top of the profile.
    pub fn run_knobs(self) -> Value {
        match self {
            ScenarioId::DbPool => json!({"db_pool_size": 4, "db_max_overflow": 0}),
            ScenarioId::WorkerPool => json!({"worker_pool_size": 4}),
            ScenarioId::Burst => {
                json!({"db_pool_size": 4, "db_max_overflow": 0, "deploy_work_ms": 200, "deploy_timeout_ms": 5000})
            }
            ScenarioId::ColdStart => json!({"max_workers": 4}),
            ScenarioId::Memory => json!({}),
            _ => json!({}),
        }
    }

    /// The plan, given the configuration in force after the profile and the run knobs.
    pub fn plan(self, config: &RunConfig, cpu_ms: Option<f64>) -> Plan {
        let knobs = &config.knobs;
        let mut plan = Plan {
            target: Target::get("/api/ping"),
            knobs: self.run_knobs(),
            rates: vec![],
            watches: vec![],
            canary: None,
            before_stage: None,
        };
        let pool = || (knobs.db_pool_size as f64) + (knobs.db_max_overflow as f64);
        match self {
            ScenarioId::DbPool | ScenarioId::DbReplicas => {
                let hold = if self == ScenarioId::DbPool { 100.0 } else { 1000.0 };
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
            }
            ScenarioId::WorkerPool => {
                plan.target = Target::get("/api/worker-pool?work_ms=100");
                plan.rates = around((knobs.worker_pool_size as f64) / 0.1, AROUND);
                plan.watches = vec![
                    Watch {
                        series: "worker_pool_queue_depth",
                        label: "queue depth (max)",
                        counter: false,
                        saturated_above: 0.0,
                    },
                    Watch {
                        series: "worker_pool_busy",
                        label: "busy threads (max)",
                        counter: false,
                        saturated_above: f64::from(knobs.worker_pool_size) - 0.5,
                    },
                    Watch {
                        series: "worker_pool_deadline_exceeded_total",
                        label: "deadline exceeded",
                        counter: true,
                        saturated_above: 0.0,
                    },
                ];
            }
            ScenarioId::Burst => {
                plan.target = Target {
                    method: reqwest::Method::POST,
                    path: "/api/v1/deployments/".into(),
                    body: Some("{}"),
                };
                let work = (knobs.deploy_work_ms as f64) / 1000.0;
                let cap = if knobs.deploy_mode == DeployMode::Async {
                    (knobs.deploy_workers as f64).min(pool()) / work
                } else {
                    pool() / work
                };
                plan.rates = around(cap, AROUND);
                plan.watches = vec![
                    POOL_WAITING,
                    Watch {
                        series: "deploy_queue_depth",
                        label: "async queue depth (max)",
                        counter: false,
                        saturated_above: 0.0,
                    },
                ];
            }
            ScenarioId::Cpu => {
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
                    Watch {
                        series: "http_requests_in_flight",
                        label: "requests in flight (max)",
                        counter: false,
                        saturated_above: cores,
                    },
                    Watch {
                        series: "requests_shed_total",
                        label: "shed",
                        counter: true,
                        saturated_above: 0.0,
                    },
                ];
            }
            ScenarioId::ColdStart => {
                plan.target = Target::get("/api/cold-start?work_ms=100");
                plan.rates = around((knobs.max_workers as f64) / 0.1, AROUND);
                plan.watches = vec![
                    Watch {
                        series: "cold_start_queue_depth",
                        label: "queue depth (max)",
                        counter: false,
                        saturated_above: 0.0,
                    },
                    Watch {
                        series: "cold_start_cold_starts_total",
                        label: "cold starts",
                        counter: true,
                        saturated_above: 0.0,
                    },
                    Watch {
                        series: "cold_start_gateway_timeouts_total",
                        label: "gateway timeouts",
                        counter: true,
                        saturated_above: 0.0,
                    },
                ];
            }
            ScenarioId::Downstream => {
                plan.target = Target::get("/api/call-downstream?timeout=5");
                plan.rates = vec![2.0, 5.0, 10.0, 20.0];
                plan.canary = Some("/api/ping");
                plan.watches = vec![
                    Watch {
                        series: "http_requests_in_flight",
                        label: "requests in flight (max)",
                        counter: false,
                        saturated_above: 16.0,
                    },
                    Watch {
                        series: "downstream_calls_in_flight",
                        label: "downstream calls in flight (max)",
                        counter: false,
                        saturated_above: f64::from(knobs.downstream_max_concurrency) - 0.5,
                    },
                    Watch {
                        series: "circuit_breaker_rejections_total",
                        label: "breaker rejections",
                        counter: true,
                        saturated_above: 0.0,
                    },
                ];
            }
            ScenarioId::Memory => {
                plan.target = Target::get("/api/memory-leak?size_mb=8");
                plan.rates = vec![4.0, 4.0, 4.0, 4.0, 4.0];
                plan.watches = vec![
                    Watch {
                        series: "memory_retained_bytes",
                        label: "retained bytes (max)",
                        counter: false,
                        saturated_above: 0.0,
                    },
                    Watch {
                        series: "memory_cap_refusals_total",
                        label: "cap refusals",
                        counter: true,
                        saturated_above: 0.0,
                    },
                    Watch {
                        series: "process_resident_memory_bytes",
                        label: "RSS (max)",
                        counter: false,
                        saturated_above: f64::INFINITY,
                    },
                ];
            }
            ScenarioId::RetryStorm => {
                plan.target = Target::get("/api/deliver?failure_rate=0.2");
                plan.rates = vec![10.0, 20.0, 40.0];
                plan.watches = vec![Watch {
                    series: "circuit_breaker_rejections_total",
                    label: "breaker rejections",
                    counter: true,
                    saturated_above: 0.0,
                }];
            }
            ScenarioId::CacheStampede => {
                plan.target = Target::get("/api/cache/items/1");
                plan.rates = vec![20.0, 50.0, 100.0];
                plan.before_stage = Some((reqwest::Method::POST, "/admin/cache/flush"));
                plan.watches = vec![
                    Watch {
                        series: "cache_db_loads_total",
                        label: "database loads",
                        counter: true,
                        saturated_above: 1.0,
                    },
                    Watch {
                        series: "cache_loads_in_flight",
                        label: "loads in flight (max)",
                        counter: false,
                        saturated_above: 1.0,
                    },
                ];
            }
        }
        plan
    }

    /// The prediction from the knobs in force (after the profile and the run knobs).
    pub fn predict(self, config: &RunConfig, cpu_ms: Option<f64>) -> Prediction {
        let knobs = &config.knobs;
        let pool = (knobs.db_pool_size as f64) + (knobs.db_max_overflow as f64);
        let acquire = knobs.db_pool_timeout_ms as f64;
        match self {
            ScenarioId::DbPool | ScenarioId::DbReplicas => {
                let hold = if self == ScenarioId::DbPool { 0.1 } else { 1.0 };
                Prediction {
                    capacity_rps: Some(pool / hold),
                    formula: format!("pool {pool} connections / {hold} s hold = {:.1} req/s", pool / hold),
                    expect: format!(
                        "past capacity requests queue for a connection; they fail with 503 db_pool_timeout once the wait passes the {acquire} ms acquire timeout"
                    ),
                }
            }
            ScenarioId::WorkerPool => {
                let w = knobs.worker_pool_size as f64;
                Prediction {
                    capacity_rps: Some(w / 0.1),
                    formula: format!("{w} worker threads / 0.1 s work = {:.1} req/s", w / 0.1),
                    expect: format!(
                        "past capacity the queue grows (bound {}); requests whose wait passes the {} ms deadline fail with 504",
                        if (knobs.worker_queue_max as f64) == 0.0 { "none".to_string() } else { (knobs.worker_queue_max as f64).to_string() },
                        (knobs.request_deadline_ms as f64)
                    ),
                }
            }
            ScenarioId::Burst => {
                let work = (knobs.deploy_work_ms as f64) / 1000.0;
                if knobs.deploy_mode == DeployMode::Async {
                    let c = (knobs.deploy_workers as f64).min(pool) / work;
                    Prediction {
                        // Acceptance is not bounded by it: no capacity line for the answers.
                        capacity_rps: None,
                        formula: format!("min({} workers, {pool} connections) / {work} s work = {c:.1} deployments/s drained in the background", (knobs.deploy_workers as f64)),
                        expect: "every POST is accepted at once (202); the queue absorbs the excess".into(),
                    }
                } else {
                    Prediction {
                        capacity_rps: Some(pool / work),
                        formula: format!(
                            "pool {pool} connections / {work} s work = {:.1} creations/s",
                            pool / work
                        ),
                        expect: format!(
                            "past capacity creations queue for a connection and fail at the {} ms request timeout",
                            (knobs.deploy_timeout_ms as f64)
                        ),
                    }
                }
            }
            ScenarioId::Cpu => {
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
                        format!("CPU work runs on a bounded pool ({}); the excess is shed with 503 and /api/ping stays fast", (knobs.cpu_max_concurrency as f64))
                    } else {
                        "CPU work runs inline on the async workers: past capacity everything queues, /api/ping included"
                            .into()
                    },
                }
            }
            ScenarioId::ColdStart => {
                let w = knobs.max_workers as f64;
                Prediction {
                    capacity_rps: Some(w / 0.1),
                    formula: format!("{w} workers / 0.1 s work = {:.1} req/s once warm; each new worker takes {} ms to start ({} kept warm)", w / 0.1, (knobs.cold_start_ms as f64), (knobs.min_warm_workers as f64)),
                    expect: format!("requests queued behind a cold start longer than the {} ms gateway timeout fail with 504", (knobs.gateway_timeout_ms as f64)),
                }
            }
            ScenarioId::Downstream => {
                let bulkhead = knobs.downstream_max_concurrency as f64;
                let cap = knobs.downstream_timeout_cap_ms as f64;
                if cap > 0.0 && cap < 3000.0 {
                    Prediction {
                        capacity_rps: None,
                        formula: format!("every call is cut at the {cap} ms timeout cap, before the dependency's 3 s: no call can succeed"),
                        expect: "nothing waits past the cap; once the breaker opens, calls fail at once with 503 circuit_open instead of piling up".into(),
                    }
                } else if bulkhead > 0.0 {
                    Prediction {
                        capacity_rps: Some(bulkhead / 3.0),
                        formula: format!("bulkhead {bulkhead} calls / 3 s per call = {:.1} req/s", bulkhead / 3.0),
                        expect: "past capacity calls are refused at once (503), in-flight requests stay bounded".into(),
                    }
                } else {
                    Prediction {
                        capacity_rps: None,
                        formula: "no bulkhead: in flight = offered rate × 3 s (Little's law), without bound".into(),
                        expect: "every request waits the dependency out: latency ≥ 3 s at any rate, in-flight requests pile up".into(),
                    }
                }
            }
            ScenarioId::Memory => {
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
            ScenarioId::RetryStorm => {
                let attempts = (knobs.retry_max_attempts as f64).max(1.0);
                let lost = 0.2f64.powf(attempts);
                Prediction {
                    capacity_rps: None,
                    formula: format!(
                        "receiver fails 20% of calls; {attempts} attempt(s): lost ≈ 0.2^{attempts} = {:.1}%",
                        lost * 100.0
                    ),
                    expect: format!("about {:.1}% of deliveries fail with 502", lost * 100.0),
                }
            }
            ScenarioId::CacheStampede => {
                let sf = knobs.cache_single_flight;
                Prediction {
                    capacity_rps: None,
                    formula: format!(
                        "after a flush, every reader that misses during the {} ms load goes to the database{}",
                        (knobs.cache_query_ms as f64),
                        if sf { " — single-flight: one load per key" } else { "" }
                    ),
                    expect: if sf {
                        "about 1 database load per stage".into()
                    } else {
                        "database loads ≈ offered rate × load time per stage".into()
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::ScenarioId;

    /// `repro`'s scenario ids are catalog ids, and its CLI spells them the catalog's way.
    #[test]
    fn repro_ids_are_catalog_ids() {
        for id in ScenarioId::value_variants() {
            assert!(
                crate::scenarios::find(id.as_str()).is_some(),
                "{} is not in scenarios::ALL",
                id.as_str()
            );
            let cli = id.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), id.as_str());
        }
    }
}
